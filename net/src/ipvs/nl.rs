//! A small synchronous netlink transport shared by the IPVS client (generic netlink) and the
//! dummy-link code (rtnetlink): message building with nested attributes, attribute parsing, and
//! request/ack, query and dump exchanges on one socket (one request at a time).

use std::io;

use netlink_sys::{Socket, SocketAddr};

/// `NLMSG_ERROR`: an error or (code 0) an acknowledgement.
pub(super) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const HDR: usize = 16;

/// One netlink message being built: the 16-byte header (length and sequence filled in when
/// sent), the family header, then attributes.
#[derive(Debug, Clone)]
pub(super) struct Msg(Vec<u8>);

impl Msg {
    /// A message of `kind` with `flags` (`NLM_F_REQUEST` is always added).
    pub(super) fn new(kind: u16, flags: u16) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // seq
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Msg(b)
    }

    /// Appends raw bytes (the family header: genlmsghdr, ifinfomsg, ifaddrmsg).
    pub(super) fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        self.pad();
    }

    /// Appends one attribute.
    pub(super) fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.pad();
    }

    /// Opens a nested attribute; close it with [`Msg::end`].
    pub(super) fn begin(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Closes the nested attribute opened at `at`.
    pub(super) fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    /// The finished bytes with sequence number `seq`.
    pub(super) fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }

    /// The message bytes so far (unit tests).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The attributes of `buf` as (type without flag bits, payload); stops at the first malformed
/// one.
pub(super) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let payload = &buf[off + 4..off + len];
        off += (len + 3) & !3;
        Some((kind, payload))
    })
}

/// The payload of attribute `kind` in `buf`.
pub(super) fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// A `u16` attribute in host order.
pub(super) fn u16_ne(p: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(p.get(..2)?.try_into().ok()?))
}

/// A `u32` attribute in host order.
pub(super) fn u32_ne(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

/// One received message: type and payload (after the 16-byte header).
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) kind: u16,
    pub(super) payload: Vec<u8>,
}

/// A netlink socket with a sequence counter.
#[derive(Debug)]
pub(super) struct Conn {
    sock: Socket,
    seq: u32,
}

impl Conn {
    /// Opens and binds a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_GENERIC`) in the
    /// calling thread's network namespace; it stays bound to that namespace.
    pub(super) fn open(protocol: isize) -> io::Result<Self> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.set_ext_ack(true).ok();
        Ok(Self { sock, seq: 0 })
    }

    fn send(&mut self, msg: Msg) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        self.sock.send_to(&bytes, &SocketAddr::new(0, 0), 0)?;
        Ok(seq)
    }

    /// Reads messages answering `seq` until `done` says stop; the kernel's error code becomes
    /// an `io::Error`.
    fn collect(
        &mut self,
        seq: u32,
        mut each: impl FnMut(Reply) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let (buf, _) = self.sock.recv_from_full()?;
            let mut off = 0usize;
            while off + HDR <= buf.len() {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes"));
                let len = len as usize;
                if len < HDR || off + len > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
                let payload = buf[off + HDR..off + len].to_vec();
                off += (len + 3) & !3;
                if mseq != seq {
                    continue; // a late answer to an earlier request
                }
                if kind == NLMSG_ERROR {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(-libc::EPROTO);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(()); // the acknowledgement ends every exchange
                }
                if kind == NLMSG_DONE {
                    return Ok(());
                }
                if !each(Reply { kind, payload })? {
                    return Ok(());
                }
            }
        }
    }

    /// Sends a request with `NLM_F_ACK` and waits for the acknowledgement.
    pub(super) fn request(&mut self, mut msg: Msg) -> io::Result<()> {
        let flags = u16::from_ne_bytes([msg.0[6], msg.0[7]]) | NLM_F_ACK;
        msg.0[6..8].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.send(msg)?;
        self.collect(seq, |_| Ok(true))
    }

    /// Sends a request whose answer is one message (or an error) and returns that message.
    pub(super) fn query(&mut self, msg: Msg) -> io::Result<Reply> {
        let seq = self.send(msg)?;
        let mut got = None;
        self.collect(seq, |r| {
            got = Some(r);
            Ok(false)
        })?;
        got.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no netlink reply"))
    }

    /// Sends a dump request (`NLM_F_DUMP` must be in its flags) and returns every message.
    pub(super) fn dump(&mut self, msg: Msg) -> io::Result<Vec<Reply>> {
        let seq = self.send(msg)?;
        let mut out = Vec::new();
        self.collect(seq, |r| {
            out.push(r);
            Ok(true)
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_attributes_and_parses_them_back() {
        let mut m = Msg::new(0x20, NLM_F_ACK);
        m.raw(&[1, 1, 0, 0]);
        let n = m.begin(1);
        m.attr(2, &[0xaa, 0xbb, 0xcc]);
        m.attr(3, &7u32.to_ne_bytes());
        m.end(n);
        let bytes = m.clone().finish(9);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        let body = &m.bytes()[HDR + 4..];
        let nested = attr(body, 1).expect("nested attribute, flag bit masked");
        assert_eq!(attr(nested, 2), Some(&[0xaa, 0xbb, 0xcc][..]));
        assert_eq!(attr(nested, 3).and_then(u32_ne), Some(7));
        assert_eq!(attr(nested, 4), None);
        // A truncated attribute ends the iteration instead of reading past the buffer.
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
    }
}
