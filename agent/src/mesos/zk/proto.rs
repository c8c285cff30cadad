//! The ZooKeeper client wire format ("jute"): the records berth sends and reads.
//!
//! Every packet is a 4-byte big-endian length followed by the record bytes. Integers are
//! big-endian; `boolean` is one byte; `ustring` and `buffer` are an `int` length (`-1` = null)
//! followed by the bytes; `vector<T>` is an `int` count (`-1` = null) followed by the elements.
//! Field order follows `zookeeper-jute/src/main/resources/zookeeper.jute` of Apache ZooKeeper.

use thiserror::Error;

/// Largest packet berth accepts from a server (ZooKeeper's default `jute.maxbuffer` is 1 MiB,
/// plus headroom for the headers of a reply carrying a full-size node).
pub const MAX_PACKET: usize = 4 * 1024 * 1024;

/// A record that does not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JuteError {
    /// The record ends before a field.
    #[error("record truncated: {field} needs {needed} bytes at offset {offset}, {left} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Where it starts.
        offset: usize,
        /// Bytes left in the record.
        left: usize,
    },
    /// A length prefix is negative (other than null) or larger than the packet.
    #[error("bad length {length} for {field}")]
    BadLength {
        /// The field being read.
        field: &'static str,
        /// The length read.
        length: i32,
    },
    /// A string is not UTF-8.
    #[error("{field} is not UTF-8")]
    NotUtf8 {
        /// The field being read.
        field: &'static str,
    },
}

/// Operation codes (`ZooDefs.OpCode`).
#[allow(missing_docs)]
pub mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const GET_CHILDREN2: i32 = 12;
    pub const PING: i32 = 11;
    pub const AUTH: i32 = 100;
    pub const CLOSE_SESSION: i32 = -11;
}

/// Special transaction ids in reply headers.
#[allow(missing_docs)]
pub mod xid {
    pub const NOTIFICATION: i32 = -1;
    pub const PING: i32 = -2;
    pub const AUTH: i32 = -4;
}

/// Create flags (`CreateMode`).
#[allow(missing_docs)]
pub mod create_flags {
    pub const PERSISTENT: i32 = 0;
    pub const EPHEMERAL: i32 = 1;
    pub const SEQUENTIAL: i32 = 2;
    pub const EPHEMERAL_SEQUENTIAL: i32 = 3;
}

/// ACL permission bits (`ZooDefs.Perms`).
#[allow(missing_docs)]
pub mod perms {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const CREATE: i32 = 4;
    pub const DELETE: i32 = 8;
    pub const ADMIN: i32 = 16;
    pub const ALL: i32 = 31;
}

/// Appends jute fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// `int`.
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `long`.
    pub fn long(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `boolean`.
    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.buf.push(u8::from(v));
        self
    }

    /// `buffer` (None = null).
    pub fn buffer(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.int(-1),
            Some(b) => {
                self.int(len_i32(b.len()));
                self.buf.extend_from_slice(b);
                self
            }
        }
    }

    /// `ustring`.
    pub fn string(&mut self, v: &str) -> &mut Self {
        self.buffer(Some(v.as_bytes()))
    }

    /// `vector<ACL>`.
    pub fn acls(&mut self, acls: &[Acl]) -> &mut Self {
        self.int(len_i32(acls.len()));
        for a in acls {
            self.int(a.perms).string(&a.scheme).string(&a.id);
        }
        self
    }

    /// The record bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The record framed for the wire: length prefix + bytes.
    pub fn into_frame(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + 4);
        out.extend_from_slice(&len_i32(self.buf.len()).to_be_bytes());
        out.extend_from_slice(&self.buf);
        out
    }
}

fn len_i32(len: usize) -> i32 {
    // Records berth writes are paths, small node data and ACLs: far below 2 GiB.
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// Reads jute fields from a record.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], JuteError> {
        if self.remaining() < n {
            return Err(JuteError::Truncated {
                field,
                needed: n,
                offset: self.pos,
                left: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// `int`.
    pub fn int(&mut self, field: &'static str) -> Result<i32, JuteError> {
        let b = self.take(field, 4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `long`.
    pub fn long(&mut self, field: &'static str) -> Result<i64, JuteError> {
        let b = self.take(field, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// `boolean`.
    pub fn boolean(&mut self, field: &'static str) -> Result<bool, JuteError> {
        Ok(self.take(field, 1)?[0] != 0)
    }

    /// `buffer` (None = null).
    pub fn buffer(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, JuteError> {
        let length = self.int(field)?;
        if length == -1 {
            return Ok(None);
        }
        let n = usize::try_from(length).map_err(|_| JuteError::BadLength { field, length })?;
        if n > self.remaining() {
            return Err(JuteError::BadLength { field, length });
        }
        self.take(field, n).map(Some)
    }

    /// `ustring` (null reads as empty).
    pub fn string(&mut self, field: &'static str) -> Result<String, JuteError> {
        let b = self.buffer(field)?.unwrap_or_default();
        String::from_utf8(b.to_vec()).map_err(|_| JuteError::NotUtf8 { field })
    }

    /// `vector<ustring>` (null reads as empty).
    pub fn strings(&mut self, field: &'static str) -> Result<Vec<String>, JuteError> {
        let count = self.int(field)?;
        if count == -1 {
            return Ok(Vec::new());
        }
        let n = usize::try_from(count).map_err(|_| JuteError::BadLength {
            field,
            length: count,
        })?;
        // Each element takes at least its 4-byte length: bound the count by the bytes left.
        if n > self.remaining() / 4 {
            return Err(JuteError::BadLength {
                field,
                length: count,
            });
        }
        (0..n).map(|_| self.string(field)).collect()
    }
}

/// `ConnectRequest` (plus the trailing `readOnly` flag servers since 3.4 read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Always 0.
    pub protocol_version: i32,
    /// Highest zxid this client saw (a server that is behind refuses the session).
    pub last_zxid_seen: i64,
    /// Requested session timeout, ms.
    pub timeout_ms: i32,
    /// 0 for a new session.
    pub session_id: i64,
    /// Session password (16 zero bytes for a new session).
    pub passwd: Vec<u8>,
    /// Accept a read-only server.
    pub read_only: bool,
}

impl ConnectRequest {
    /// The framed packet.
    pub fn frame(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.int(self.protocol_version)
            .long(self.last_zxid_seen)
            .int(self.timeout_ms)
            .long(self.session_id)
            .buffer(Some(&self.passwd))
            .boolean(self.read_only);
        w.into_frame()
    }

    /// Decodes a request body (used by tests).
    #[cfg(test)]
    pub fn decode(body: &[u8]) -> Result<Self, JuteError> {
        let mut r = Reader::new(body);
        Ok(Self {
            protocol_version: r.int("protocolVersion")?,
            last_zxid_seen: r.long("lastZxidSeen")?,
            timeout_ms: r.int("timeOut")?,
            session_id: r.long("sessionId")?,
            passwd: r.buffer("passwd")?.unwrap_or_default().to_vec(),
            read_only: if r.remaining() > 0 {
                r.boolean("readOnly")?
            } else {
                false
            },
        })
    }
}

/// `ConnectResponse`. A `timeout_ms` of 0 means the server refused the session (expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// Protocol version.
    pub protocol_version: i32,
    /// Negotiated session timeout, ms.
    pub timeout_ms: i32,
    /// Session id.
    pub session_id: i64,
    /// Session password.
    pub passwd: Vec<u8>,
    /// The server is read-only.
    pub read_only: bool,
}

impl ConnectResponse {
    /// Decodes the response body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, JuteError> {
        let mut r = Reader::new(body);
        Ok(Self {
            protocol_version: r.int("protocolVersion")?,
            timeout_ms: r.int("timeOut")?,
            session_id: r.long("sessionId")?,
            passwd: r.buffer("passwd")?.unwrap_or_default().to_vec(),
            read_only: if r.remaining() > 0 {
                r.boolean("readOnly")?
            } else {
                false
            },
        })
    }

    /// Encodes the body (used by tests).
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.int(self.protocol_version)
            .int(self.timeout_ms)
            .long(self.session_id)
            .buffer(Some(&self.passwd))
            .boolean(self.read_only);
        w.into_bytes()
    }
}

/// `ReplyHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    /// Request xid, or one of [`xid`].
    pub xid: i32,
    /// Zxid of the server when it answered.
    pub zxid: i64,
    /// 0 or a ZooKeeper error code.
    pub err: i32,
}

impl ReplyHeader {
    /// Reads the header at the start of a reply.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        Ok(Self {
            xid: r.int("xid")?,
            zxid: r.long("zxid")?,
            err: r.int("err")?,
        })
    }

    /// Encodes the header (used by tests).
    #[cfg(test)]
    pub fn encode(&self, w: &mut Writer) {
        w.int(self.xid).long(self.zxid).int(self.err);
    }
}

/// A request packet: `RequestHeader{xid, type}` followed by the body.
pub fn request_frame(xid: i32, opcode: i32, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.int(xid).int(opcode);
    w.buf.extend_from_slice(body);
    w.into_frame()
}

/// `Stat` of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Stat {
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    /// Session that owns an ephemeral node, else 0.
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
    pub pzxid: i64,
}

impl Stat {
    /// Reads a `Stat`.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        Ok(Self {
            czxid: r.long("stat.czxid")?,
            mzxid: r.long("stat.mzxid")?,
            ctime: r.long("stat.ctime")?,
            mtime: r.long("stat.mtime")?,
            version: r.int("stat.version")?,
            cversion: r.int("stat.cversion")?,
            aversion: r.int("stat.aversion")?,
            ephemeral_owner: r.long("stat.ephemeralOwner")?,
            data_length: r.int("stat.dataLength")?,
            num_children: r.int("stat.numChildren")?,
            pzxid: r.long("stat.pzxid")?,
        })
    }

    /// Encodes a `Stat` (used by tests).
    #[cfg(test)]
    pub fn encode(&self, w: &mut Writer) {
        w.long(self.czxid)
            .long(self.mzxid)
            .long(self.ctime)
            .long(self.mtime)
            .int(self.version)
            .int(self.cversion)
            .int(self.aversion)
            .long(self.ephemeral_owner)
            .int(self.data_length)
            .int(self.num_children)
            .long(self.pzxid);
    }
}

/// An ACL entry (`ACL{perms, Id{scheme, id}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// [`perms`] bits.
    pub perms: i32,
    /// `world`, `auth`, `digest`, `ip`...
    pub scheme: String,
    /// Identity within the scheme.
    pub id: String,
}

impl Acl {
    /// `world:anyone` with every permission (`OPEN_ACL_UNSAFE`).
    pub fn open_unsafe() -> Vec<Acl> {
        vec![Acl {
            perms: perms::ALL,
            scheme: "world".into(),
            id: "anyone".into(),
        }]
    }

    /// Everyone reads, the authenticated creator has every permission
    /// (Mesos' `EVERYONE_READ_CREATOR_ALL`).
    pub fn everyone_read_creator_all() -> Vec<Acl> {
        vec![
            Acl {
                perms: perms::READ,
                scheme: "world".into(),
                id: "anyone".into(),
            },
            Acl {
                perms: perms::ALL,
                scheme: "auth".into(),
                id: String::new(),
            },
        ]
    }
}

/// `WatcherEvent`, delivered with xid [`xid::NOTIFICATION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherEvent {
    /// Event type (1 created, 2 deleted, 3 data changed, 4 children changed).
    pub event_type: i32,
    /// Keeper state (3 = SyncConnected).
    pub state: i32,
    /// The watched path.
    pub path: String,
}

impl WatcherEvent {
    /// Reads the event after its reply header.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, JuteError> {
        Ok(Self {
            event_type: r.int("event.type")?,
            state: r.int("event.state")?,
            path: r.string("event.path")?,
        })
    }

    /// Encodes the event (used by tests).
    #[cfg(test)]
    pub fn encode(&self, w: &mut Writer) {
        w.int(self.event_type).int(self.state).string(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request_layout_and_round_trip() {
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0x0102_0304_0506_0708,
            timeout_ms: 10_000,
            session_id: -2,
            passwd: vec![0; 16],
            read_only: false,
        };
        let frame = req.frame();
        // 4 (len) + 4 + 8 + 4 + 8 + 4 + 16 + 1
        assert_eq!(frame.len(), 4 + 45);
        assert_eq!(&frame[..4], &45i32.to_be_bytes());
        assert_eq!(&frame[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&frame[16..20], &10_000i32.to_be_bytes());
        assert_eq!(ConnectRequest::decode(&frame[4..]).unwrap(), req);
    }

    #[test]
    fn connect_response_round_trip_with_and_without_read_only() {
        let rsp = ConnectResponse {
            protocol_version: 0,
            timeout_ms: 4000,
            session_id: 0x1234_5678_9abc,
            passwd: (0..16).collect(),
            read_only: true,
        };
        let body = rsp.encode();
        assert_eq!(ConnectResponse::decode(&body).unwrap(), rsp);
        // Servers before 3.4 do not send the read-only byte.
        let old = ConnectResponse::decode(&body[..body.len() - 1]).unwrap();
        assert!(!old.read_only);
        assert_eq!(old.session_id, rsp.session_id);
    }

    #[test]
    fn reply_stat_and_children_decode() {
        let stat = Stat {
            czxid: 5,
            mzxid: 6,
            ctime: 7,
            mtime: 8,
            version: 1,
            cversion: 2,
            aversion: 3,
            ephemeral_owner: 0x55,
            data_length: 10,
            num_children: 2,
            pzxid: 9,
        };
        let mut w = Writer::new();
        ReplyHeader {
            xid: 7,
            zxid: 42,
            err: 0,
        }
        .encode(&mut w);
        w.int(2)
            .string("json.info_0000000001")
            .string("log_replicas");
        stat.encode(&mut w);
        let bytes = w.into_bytes();

        let mut r = Reader::new(&bytes);
        assert_eq!(
            ReplyHeader::read(&mut r).unwrap(),
            ReplyHeader {
                xid: 7,
                zxid: 42,
                err: 0
            }
        );
        assert_eq!(
            r.strings("children").unwrap(),
            vec!["json.info_0000000001", "log_replicas"]
        );
        assert_eq!(Stat::read(&mut r).unwrap(), stat);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn watcher_event_round_trip() {
        let ev = WatcherEvent {
            event_type: 4,
            state: 3,
            path: "/mesos".into(),
        };
        let mut w = Writer::new();
        ev.encode(&mut w);
        let bytes = w.into_bytes();
        assert_eq!(WatcherEvent::read(&mut Reader::new(&bytes)).unwrap(), ev);
    }

    #[test]
    fn request_frame_has_header_then_body() {
        let mut body = Writer::new();
        body.string("/mesos").boolean(true);
        let frame = request_frame(3, op::GET_CHILDREN2, &body.into_bytes());
        assert_eq!(&frame[..4], &(4 + 4 + 4 + 6 + 1i32).to_be_bytes());
        assert_eq!(&frame[4..8], &3i32.to_be_bytes());
        assert_eq!(&frame[8..12], &12i32.to_be_bytes());
        assert_eq!(&frame[12..16], &6i32.to_be_bytes());
        assert_eq!(&frame[16..22], b"/mesos");
        assert_eq!(frame[22], 1);
    }

    #[test]
    fn create_request_acl_encoding() {
        let mut w = Writer::new();
        w.acls(&Acl::open_unsafe());
        let b = w.into_bytes();
        let mut r = Reader::new(&b);
        assert_eq!(r.int("n").unwrap(), 1);
        assert_eq!(r.int("perms").unwrap(), perms::ALL);
        assert_eq!(r.string("scheme").unwrap(), "world");
        assert_eq!(r.string("id").unwrap(), "anyone");
    }

    #[test]
    fn null_and_bad_lengths() {
        let mut w = Writer::new();
        w.buffer(None).int(-1);
        let b = w.into_bytes();
        let mut r = Reader::new(&b);
        assert_eq!(r.buffer("data").unwrap(), None);
        assert_eq!(r.strings("children").unwrap(), Vec::<String>::new());

        let mut w = Writer::new();
        w.int(100).int(0);
        let b = w.into_bytes();
        assert_eq!(
            Reader::new(&b).buffer("data"),
            Err(JuteError::BadLength {
                field: "data",
                length: 100
            })
        );
        let mut w = Writer::new();
        w.int(-7);
        let b = w.into_bytes();
        assert!(matches!(
            Reader::new(&b).string("path"),
            Err(JuteError::BadLength { .. })
        ));
        // A huge vector count is refused before allocating.
        let mut w = Writer::new();
        w.int(i32::MAX);
        let b = w.into_bytes();
        assert!(matches!(
            Reader::new(&b).strings("c"),
            Err(JuteError::BadLength { .. })
        ));
        assert!(matches!(
            Reader::new(&[0, 0]).int("xid"),
            Err(JuteError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&[0, 0, 0, 1, 0xff]).string("p"),
            Err(JuteError::NotUtf8 { .. })
        ));
    }
}
