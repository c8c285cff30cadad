//! DNS messages on the wire: RFC 1035 §4 (header, question, resource records, name
//! compression), RFC 3596 (AAAA), RFC 2782 (SRV) and RFC 6891 (the EDNS0 OPT pseudo-record).
//!
//! Reading follows compression pointers but only strictly backwards (each pointer must point
//! before the start of the label run that contains it), so a pointer loop or a forward pointer
//! is an error, never a hang. Writing compresses names against every name already written.
//! Record types berth does not interpret are kept as raw bytes; the ones whose data carries a
//! (possibly compressed) name in RFC 1035 (NS, CNAME, PTR, MX, SOA) are decoded so that a
//! re-encoded message stays valid.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use name::Name;
use name::read_name;

mod name;

/// Length of the fixed message header.
pub const HEADER_LEN: usize = 12;
/// Largest UDP message without EDNS0 (RFC 1035 §4.2.1).
pub const MAX_UDP_LEN: usize = 512;
/// Largest encoded name, length bytes and the root included.
pub const MAX_NAME_LEN: usize = 255;
/// Largest label.
pub const MAX_LABEL_LEN: usize = 63;
/// The Internet class.
pub const CLASS_IN: u16 = 1;
/// The "any class" query class.
pub const CLASS_ANY: u16 = 255;
/// The standard query opcode.
pub const OPCODE_QUERY: u8 = 0;

/// Errors reading or writing a DNS message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The message ends in the middle of something.
    #[error("DNS message truncated at byte {offset} while reading {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where the missing bytes start.
        offset: usize,
    },
    /// A compression pointer that does not point strictly backwards (a loop or a forward jump).
    #[error(
        "DNS compression pointer at byte {offset} points to byte {target}, not before its label run"
    )]
    BadPointer {
        /// Where the pointer is.
        offset: usize,
        /// Where it points.
        target: usize,
    },
    /// A name longer than 255 bytes on the wire.
    #[error("DNS name starting at byte {offset} is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong {
        /// Where the name starts (0 when encoding).
        offset: usize,
    },
    /// The reserved label types 0x40 / 0x80 (RFC 6891 retired the extended label types).
    #[error("DNS label at byte {offset} has unsupported type bits {bits:#04x}")]
    BadLabelType {
        /// Where the label is.
        offset: usize,
        /// The two top bits of the length byte.
        bits: u8,
    },
    /// A label that is empty or longer than 63 bytes (building or encoding a name).
    #[error("DNS label {label:?} is empty or longer than {MAX_LABEL_LEN} bytes")]
    BadLabel {
        /// The label, lossily.
        label: String,
    },
    /// Record data whose length does not fit its type.
    #[error("DNS record of type {rtype} at byte {offset}: data length {len} is invalid")]
    BadRdata {
        /// The record type.
        rtype: RType,
        /// Where the data starts.
        offset: usize,
        /// Its declared length.
        len: usize,
    },
    /// An encoded message (or record data) over 65535 bytes.
    #[error("DNS message or record data of {len} bytes exceeds 65535")]
    TooLong {
        /// The length.
        len: usize,
    },
}

/// A record (or query) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RType(pub u16);

impl RType {
    /// IPv4 address.
    pub const A: RType = RType(1);
    /// Name server.
    pub const NS: RType = RType(2);
    /// Canonical name.
    pub const CNAME: RType = RType(5);
    /// Start of authority.
    pub const SOA: RType = RType(6);
    /// Domain name pointer.
    pub const PTR: RType = RType(12);
    /// Mail exchange.
    pub const MX: RType = RType(15);
    /// Text.
    pub const TXT: RType = RType(16);
    /// IPv6 address.
    pub const AAAA: RType = RType(28);
    /// Service location.
    pub const SRV: RType = RType(33);
    /// EDNS0 pseudo-record.
    pub const OPT: RType = RType(41);
    /// Any type (query only).
    pub const ANY: RType = RType(255);
}

impl fmt::Display for RType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            RType::A => "A",
            RType::NS => "NS",
            RType::CNAME => "CNAME",
            RType::SOA => "SOA",
            RType::PTR => "PTR",
            RType::MX => "MX",
            RType::TXT => "TXT",
            RType::AAAA => "AAAA",
            RType::SRV => "SRV",
            RType::OPT => "OPT",
            RType::ANY => "ANY",
            RType(n) => return write!(f, "TYPE{n}"),
        };
        f.write_str(name)
    }
}

/// A response code (the 4 header bits; extended EDNS codes are not produced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rcode {
    /// No error.
    #[default]
    NoError,
    /// The query could not be interpreted.
    FormErr,
    /// The server failed (here: upstream timeout or failure).
    ServFail,
    /// The name does not exist.
    NxDomain,
    /// The opcode is not implemented.
    NotImp,
    /// The server refuses to answer.
    Refused,
    /// Any other value.
    Other(u8),
}

impl Rcode {
    /// From the 4 header bits.
    pub fn from_u8(v: u8) -> Self {
        match v & 0x0f {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            2 => Rcode::ServFail,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            n => Rcode::Other(n),
        }
    }

    /// To the 4 header bits.
    pub fn to_u8(self) -> u8 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::Other(n) => n & 0x0f,
        }
    }
}

/// The message header without the section counts (those follow from the sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Query id, copied into the response.
    pub id: u16,
    /// QR: this is a response.
    pub response: bool,
    /// The opcode (0 = standard query).
    pub opcode: u8,
    /// AA: authoritative answer.
    pub authoritative: bool,
    /// TC: truncated, retry over TCP.
    pub truncated: bool,
    /// RD: recursion desired.
    pub recursion_desired: bool,
    /// RA: recursion available.
    pub recursion_available: bool,
    /// AD: authentic data.
    pub authentic_data: bool,
    /// CD: checking disabled.
    pub checking_disabled: bool,
    /// The response code.
    pub rcode: Rcode,
}

impl Header {
    /// Reads the first 4 bytes of a message (id and flags).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                what: "header",
                offset: buf.len(),
            });
        }
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        let (a, b) = (buf[2], buf[3]);
        Ok(Header {
            id,
            response: a & 0x80 != 0,
            opcode: (a >> 3) & 0x0f,
            authoritative: a & 0x04 != 0,
            truncated: a & 0x02 != 0,
            recursion_desired: a & 0x01 != 0,
            recursion_available: b & 0x80 != 0,
            authentic_data: b & 0x20 != 0,
            checking_disabled: b & 0x10 != 0,
            rcode: Rcode::from_u8(b),
        })
    }

    fn flags(&self) -> [u8; 2] {
        let a = (u8::from(self.response) << 7)
            | ((self.opcode & 0x0f) << 3)
            | (u8::from(self.authoritative) << 2)
            | (u8::from(self.truncated) << 1)
            | u8::from(self.recursion_desired);
        let b = (u8::from(self.recursion_available) << 7)
            | (u8::from(self.authentic_data) << 5)
            | (u8::from(self.checking_disabled) << 4)
            | self.rcode.to_u8();
        [a, b]
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name asked about.
    pub name: Name,
    /// The type asked for.
    pub qtype: RType,
    /// The class (1 = IN).
    pub qclass: u16,
}

/// SOA record data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// Primary name server.
    pub mname: Name,
    /// Responsible mailbox.
    pub rname: Name,
    /// Serial.
    pub serial: u32,
    /// Refresh interval (s).
    pub refresh: u32,
    /// Retry interval (s).
    pub retry: u32,
    /// Expiry (s).
    pub expire: u32,
    /// Negative-caching TTL (s, RFC 2308).
    pub minimum: u32,
}

/// Record data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Service location.
    Srv {
        /// Priority (lower first).
        priority: u16,
        /// Weight among equal priorities.
        weight: u16,
        /// Port.
        port: u16,
        /// Host name serving it.
        target: Name,
    },
    /// Start of authority.
    Soa(Soa),
    /// NS, CNAME or PTR: one name (the record's type says which).
    Name(RType, Name),
    /// Mail exchange.
    Mx {
        /// Preference.
        preference: u16,
        /// Host.
        exchange: Name,
    },
    /// Any other type, raw.
    Other(RType, Vec<u8>),
}

impl RData {
    /// The record type of this data.
    pub fn rtype(&self) -> RType {
        match self {
            RData::A(_) => RType::A,
            RData::Aaaa(_) => RType::AAAA,
            RData::Srv { .. } => RType::SRV,
            RData::Soa(_) => RType::SOA,
            RData::Name(t, _) | RData::Other(t, _) => *t,
            RData::Mx { .. } => RType::MX,
        }
    }
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Owner name.
    pub name: Name,
    /// Class.
    pub class: u16,
    /// Time to live (s).
    pub ttl: u32,
    /// Data (carries the type).
    pub data: RData,
}

/// The EDNS0 parameters of a message (its OPT pseudo-record; options are not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The sender's UDP payload size.
    pub udp_payload: u16,
    /// EDNS version.
    pub version: u8,
    /// The DO bit.
    pub dnssec_ok: bool,
}

/// A whole message. The OPT record, if any, is lifted out of the additional section into
/// `edns` when reading and appended to it when writing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Header.
    pub header: Header,
    /// Question section.
    pub questions: Vec<Question>,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
    /// Additional section (without OPT).
    pub additional: Vec<Record>,
    /// EDNS0 parameters.
    pub edns: Option<Edns>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(WireError::Truncated {
                what,
                offset: self.pos,
            })?;
        self.pos += n;
        Ok(s)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&mut self) -> Result<Name, WireError> {
        let (name, next) = read_name(self.buf, self.pos)?;
        self.pos = next;
        Ok(name)
    }

    fn question(&mut self) -> Result<Question, WireError> {
        let name = self.name()?;
        let qtype = RType(self.u16("question type")?);
        let qclass = self.u16("question class")?;
        Ok(Question {
            name,
            qtype,
            qclass,
        })
    }
}

fn read_record(r: &mut Reader<'_>) -> Result<Record, WireError> {
    let name = r.name()?;
    let rtype = RType(r.u16("record type")?);
    let class = r.u16("record class")?;
    let ttl = r.u32("record ttl")?;
    let len = usize::from(r.u16("record data length")?);
    let start = r.pos;
    let raw = r.take(len, "record data")?;
    let bad = || WireError::BadRdata {
        rtype,
        offset: start,
        len,
    };
    // Names inside the data may point anywhere before them in the whole message.
    let mut sub = Reader {
        buf: &r.buf[..start + len],
        pos: start,
    };
    let data = match rtype {
        RType::A => RData::A(<[u8; 4]>::try_from(raw).map_err(|_| bad())?.into()),
        RType::AAAA => RData::Aaaa(<[u8; 16]>::try_from(raw).map_err(|_| bad())?.into()),
        RType::SRV => RData::Srv {
            priority: sub.u16("SRV priority")?,
            weight: sub.u16("SRV weight")?,
            port: sub.u16("SRV port")?,
            target: sub.name()?,
        },
        RType::NS | RType::CNAME | RType::PTR => RData::Name(rtype, sub.name()?),
        RType::MX => RData::Mx {
            preference: sub.u16("MX preference")?,
            exchange: sub.name()?,
        },
        RType::SOA => RData::Soa(Soa {
            mname: sub.name()?,
            rname: sub.name()?,
            serial: sub.u32("SOA serial")?,
            refresh: sub.u32("SOA refresh")?,
            retry: sub.u32("SOA retry")?,
            expire: sub.u32("SOA expire")?,
            minimum: sub.u32("SOA minimum")?,
        }),
        _ => RData::Other(rtype, raw.to_vec()),
    };
    if !matches!(data, RData::Other(..) | RData::A(_) | RData::Aaaa(_)) && sub.pos != start + len {
        return Err(bad());
    }
    Ok(Record {
        name,
        class,
        ttl,
        data,
    })
}

/// Reads the header and the first question only (cheap check of a relayed answer); the
/// question is `None` when the message has none.
pub fn peek_question(buf: &[u8]) -> Result<(Header, Option<Question>), WireError> {
    let header = Header::parse(buf)?;
    let qdcount = u16::from_be_bytes([buf[4], buf[5]]);
    if qdcount == 0 {
        return Ok((header, None));
    }
    let mut r = Reader {
        buf,
        pos: HEADER_LEN,
    };
    Ok((header, Some(r.question()?)))
}

struct Writer {
    buf: Vec<u8>,
    /// Lower-cased wire form of every name suffix written so far → its offset.
    names: HashMap<Vec<u8>, u16>,
}

impl Writer {
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn name(&mut self, name: &Name) -> Result<(), WireError> {
        if name.wire_len() > MAX_NAME_LEN {
            return Err(WireError::NameTooLong { offset: 0 });
        }
        for i in 0..name.labels.len() {
            let mut key = Vec::new();
            for l in &name.labels[i..] {
                key.push(l.len() as u8);
                key.extend(l.iter().map(u8::to_ascii_lowercase));
            }
            if let Some(&off) = self.names.get(&key) {
                self.u16(0xc000 | off);
                return Ok(());
            }
            if self.buf.len() < 0x4000 {
                self.names.insert(key, self.buf.len() as u16);
            }
            let l = &name.labels[i];
            if l.is_empty() || l.len() > MAX_LABEL_LEN {
                return Err(WireError::BadLabel {
                    label: String::from_utf8_lossy(l).into_owned(),
                });
            }
            self.buf.push(l.len() as u8);
            self.buf.extend_from_slice(l);
        }
        self.buf.push(0);
        Ok(())
    }

    fn record(&mut self, rec: &Record) -> Result<(), WireError> {
        self.name(&rec.name)?;
        self.u16(rec.data.rtype().0);
        self.u16(rec.class);
        self.u32(rec.ttl);
        let len_at = self.buf.len();
        self.u16(0);
        match &rec.data {
            RData::A(a) => self.buf.extend_from_slice(&a.octets()),
            RData::Aaaa(a) => self.buf.extend_from_slice(&a.octets()),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                self.u16(*priority);
                self.u16(*weight);
                self.u16(*port);
                // RFC 2782: the target is not compressed.
                self.name_uncompressed(target)?;
            }
            RData::Soa(s) => {
                self.name(&s.mname)?;
                self.name(&s.rname)?;
                for v in [s.serial, s.refresh, s.retry, s.expire, s.minimum] {
                    self.u32(v);
                }
            }
            RData::Name(_, n) => self.name(n)?,
            RData::Mx {
                preference,
                exchange,
            } => {
                self.u16(*preference);
                self.name(exchange)?;
            }
            RData::Other(_, raw) => self.buf.extend_from_slice(raw),
        }
        let len = self.buf.len() - len_at - 2;
        let len16 = u16::try_from(len).map_err(|_| WireError::TooLong { len })?;
        self.buf[len_at..len_at + 2].copy_from_slice(&len16.to_be_bytes());
        Ok(())
    }

    fn name_uncompressed(&mut self, name: &Name) -> Result<(), WireError> {
        if name.wire_len() > MAX_NAME_LEN {
            return Err(WireError::NameTooLong { offset: 0 });
        }
        for l in &name.labels {
            if l.is_empty() || l.len() > MAX_LABEL_LEN {
                return Err(WireError::BadLabel {
                    label: String::from_utf8_lossy(l).into_owned(),
                });
            }
            self.buf.push(l.len() as u8);
            self.buf.extend_from_slice(l);
        }
        self.buf.push(0);
        Ok(())
    }
}

fn count(n: usize) -> Result<u16, WireError> {
    u16::try_from(n).map_err(|_| WireError::TooLong { len: n })
}

impl Message {
    /// Reads a whole message. Bytes after the last counted record are ignored.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let header = Header::parse(buf)?;
        let c = |i: usize| u16::from_be_bytes([buf[4 + 2 * i], buf[5 + 2 * i]]);
        let (qd, an, ns, ar) = (c(0), c(1), c(2), c(3));
        let mut r = Reader {
            buf,
            pos: HEADER_LEN,
        };
        let mut msg = Message {
            header,
            ..Message::default()
        };
        // Counts are untrusted: no pre-allocation from them; a short buffer ends the loop.
        for _ in 0..qd {
            msg.questions.push(r.question()?);
        }
        for _ in 0..an {
            msg.answers.push(read_record(&mut r)?);
        }
        for _ in 0..ns {
            msg.authority.push(read_record(&mut r)?);
        }
        for _ in 0..ar {
            let rec = read_record(&mut r)?;
            if rec.data.rtype() == RType::OPT && rec.name.is_root() {
                if msg.edns.is_none() {
                    msg.edns = Some(Edns {
                        udp_payload: rec.class,
                        version: (rec.ttl >> 16) as u8,
                        dnssec_ok: rec.ttl & 0x8000 != 0,
                    });
                }
                continue;
            }
            msg.additional.push(rec);
        }
        Ok(msg)
    }

    /// Writes the message, compressing names.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer {
            buf: Vec::with_capacity(MAX_UDP_LEN),
            names: HashMap::new(),
        };
        w.u16(self.header.id);
        w.buf.extend_from_slice(&self.header.flags());
        w.u16(count(self.questions.len())?);
        w.u16(count(self.answers.len())?);
        w.u16(count(self.authority.len())?);
        w.u16(count(
            self.additional.len() + usize::from(self.edns.is_some()),
        )?);
        for q in &self.questions {
            w.name(&q.name)?;
            w.u16(q.qtype.0);
            w.u16(q.qclass);
        }
        for rec in self
            .answers
            .iter()
            .chain(&self.authority)
            .chain(&self.additional)
        {
            w.record(rec)?;
        }
        if let Some(e) = &self.edns {
            w.buf.push(0);
            w.u16(RType::OPT.0);
            w.u16(e.udp_payload);
            w.u32((u32::from(e.version) << 16) | if e.dnssec_ok { 0x8000 } else { 0 });
            w.u16(0);
        }
        if w.buf.len() > usize::from(u16::MAX) {
            return Err(WireError::TooLong { len: w.buf.len() });
        }
        Ok(w.buf)
    }

    /// Writes the message so that it fits `max` bytes (a UDP answer): the additional
    /// section is dropped first (no TC, RFC 2181 §9), then answers and authority with the TC
    /// bit set so the client retries over TCP.
    pub fn encode_within(&self, max: usize) -> Result<Vec<u8>, WireError> {
        let full = self.encode()?;
        if full.len() <= max {
            return Ok(full);
        }
        let mut m = self.clone();
        m.additional.clear();
        let out = m.encode()?;
        if out.len() <= max {
            return Ok(out);
        }
        m.answers.clear();
        m.authority.clear();
        m.header.truncated = true;
        m.encode()
    }

    /// The largest UDP answer the sender of this query accepts: 512, or its EDNS0 payload
    /// size (capped at `cap`, at least 512).
    pub fn udp_limit(&self, cap: usize) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_payload).clamp(MAX_UDP_LEN, cap.max(MAX_UDP_LEN)),
            None => MAX_UDP_LEN,
        }
    }
}

#[cfg(test)]
mod tests;
