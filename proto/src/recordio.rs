//! Mesos RecordIO framing.
//!
//! Streaming responses of the v1 APIs (the scheduler event stream, agent
//! `ATTACH_*`/`LAUNCH_NESTED_CONTAINER_SESSION` outputs, ...) carry a
//! sequence of records, each encoded as
//!
//! ```text
//! <decimal length of payload in bytes>\n<payload>
//! ```
//!
//! with no other separators. [`encode_record`] frames one payload;
//! [`Decoder`] splits an incoming byte stream back into payloads,
//! incrementally (feed chunks as they arrive, take records as they complete).

use thiserror::Error;

/// Default upper bound on a record's length accepted by [`Decoder`]: 64 MiB.
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;

/// Frames `payload` as one RecordIO record.
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 21);
    encode_record_into(payload, &mut out);
    out
}

/// Appends `payload` framed as one RecordIO record to `out`.
pub fn encode_record_into(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
}

/// A malformed RecordIO stream. Once a [`Decoder`] has returned an error it
/// keeps returning it: the stream cannot be resynchronized.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordIoError {
    /// The length header is empty or contains something other than ASCII
    /// digits before its `\n`.
    #[error("invalid RecordIO header {header:?}: expected decimal digits followed by '\\n'")]
    InvalidHeader {
        /// The offending header bytes seen so far (lossily decoded, at most
        /// a few dozen bytes).
        header: String,
    },
    /// The announced length is larger than the decoder's limit.
    #[error("RecordIO record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length (saturated at `u64::MAX` if it does not even fit).
        len: u64,
        /// The decoder's limit.
        max: usize,
    },
}

/// Incremental RecordIO decoder.
///
/// ```
/// use berth_proto::recordio::{encode_record, Decoder};
///
/// let mut stream = encode_record(b"hello");
/// stream.extend(encode_record(b""));
/// let mut decoder = Decoder::new();
/// decoder.feed(&stream[..3]);
/// assert_eq!(decoder.next_record().unwrap(), None); // incomplete
/// decoder.feed(&stream[3..]);
/// assert_eq!(decoder.next_record().unwrap(), Some(b"hello".to_vec()));
/// assert_eq!(decoder.next_record().unwrap(), Some(Vec::new()));
/// assert_eq!(decoder.next_record().unwrap(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// Length of the record being read, once its header has been parsed.
    pending: Option<usize>,
    max_len: usize,
    error: Option<RecordIoError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest header accepted: enough digits for any `u64` (20) plus slack for
/// leading zeros would still be absurd; anything longer is rejected.
const MAX_HEADER_DIGITS: usize = 20;

impl Decoder {
    /// A decoder accepting records up to [`MAX_RECORD_LEN`] bytes.
    pub fn new() -> Self {
        Self::with_max_len(MAX_RECORD_LEN)
    }

    /// A decoder accepting records up to `max_len` bytes.
    pub fn with_max_len(max_len: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            pending: None,
            max_len,
            error: None,
        }
    }

    /// Appends bytes received from the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        // Drop consumed bytes before growing, so the buffer stays bounded by
        // one record plus one chunk.
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos >= self.buf.len() / 2) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete record, `Ok(None)` if more bytes are needed.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordIoError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match self.try_next() {
            Ok(record) => Ok(record),
            Err(err) => {
                self.error = Some(err.clone());
                self.buf = Vec::new();
                self.pos = 0;
                Err(err)
            }
        }
    }

    fn try_next(&mut self) -> Result<Option<Vec<u8>>, RecordIoError> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                let rest = &self.buf[self.pos..];
                let newline = rest.iter().position(|&b| b == b'\n');
                let header = &rest[..newline.unwrap_or(rest.len())];
                if !header.iter().all(u8::is_ascii_digit)
                    || header.len() > MAX_HEADER_DIGITS
                    || (newline.is_some() && header.is_empty())
                {
                    return Err(RecordIoError::InvalidHeader {
                        header: String::from_utf8_lossy(&header[..header.len().min(40)])
                            .into_owned(),
                    });
                }
                let Some(newline) = newline else {
                    return Ok(None);
                };
                // All digits and at most 20 of them: only overflow can fail.
                let len = std::str::from_utf8(header)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                if len > self.max_len as u64 {
                    return Err(RecordIoError::TooLarge {
                        len,
                        max: self.max_len,
                    });
                }
                self.pos += newline + 1;
                let len = len as usize;
                self.pending = Some(len);
                len
            }
        };
        if self.buf.len() - self.pos < len {
            return Ok(None);
        }
        let record = self.buf[self.pos..self.pos + len].to_vec();
        self.pos += len;
        self.pending = None;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(record))
    }

    /// Number of buffered bytes not yet returned as records (including a
    /// partially received header). Zero at a clean record boundary.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether the decoder sits at a record boundary with nothing buffered,
    /// i.e. the stream may end here without truncating a record.
    pub fn is_at_boundary(&self) -> bool {
        self.pending.is_none() && self.buffered_len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_format() {
        assert_eq!(encode_record(b"hello"), b"5\nhello");
        assert_eq!(encode_record(b""), b"0\n");
        let mut out = b"x".to_vec();
        encode_record_into(b"ab", &mut out);
        assert_eq!(out, b"x2\nab");
    }

    #[test]
    fn records_split_across_feeds() {
        let payloads: Vec<Vec<u8>> = vec![
            b"{\"type\":\"SUBSCRIBED\"}".to_vec(),
            Vec::new(),
            vec![b'\n'; 12],
            (0..=255u8).cycle().take(5000).collect(),
        ];
        let stream: Vec<u8> = payloads.iter().flat_map(|p| encode_record(p)).collect();
        for chunk in [1, 2, 3, 7, 100, stream.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.feed(piece);
                while let Some(rec) = d.next_record().unwrap() {
                    got.push(rec);
                }
            }
            assert_eq!(got, payloads, "chunk size {chunk}");
            assert!(d.is_at_boundary());
            assert_eq!(d.buffered_len(), 0);
        }
    }

    #[test]
    fn partial_state_is_reported() {
        let mut d = Decoder::new();
        d.feed(b"10\nabc");
        assert_eq!(d.next_record().unwrap(), None);
        assert!(!d.is_at_boundary());
        d.feed(b"defghij3\nxyz");
        assert_eq!(d.next_record().unwrap(), Some(b"abcdefghij".to_vec()));
        assert_eq!(d.next_record().unwrap(), Some(b"xyz".to_vec()));
        assert_eq!(d.next_record().unwrap(), None);
        assert!(d.is_at_boundary());
    }

    #[test]
    fn bad_headers() {
        for bad in [
            &b"abc\n"[..],
            b"\n",
            b"12x\nfoo",
            b"-1\n",
            b" 5\nhello",
            b"5\r\nhello",
        ] {
            let mut d = Decoder::new();
            d.feed(bad);
            let err = d.next_record().unwrap_err();
            assert!(
                matches!(err, RecordIoError::InvalidHeader { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(bad)
            );
            // The decoder stays failed.
            d.feed(b"1\na");
            assert_eq!(d.next_record().unwrap_err(), err);
        }
        // A non-digit is caught before the newline arrives.
        let mut d = Decoder::new();
        d.feed(b"{\"type\"");
        assert!(matches!(
            d.next_record(),
            Err(RecordIoError::InvalidHeader { .. })
        ));
        // So is an endless run of digits.
        let mut d = Decoder::new();
        d.feed(&[b'1'; 64]);
        assert!(matches!(
            d.next_record(),
            Err(RecordIoError::InvalidHeader { .. })
        ));
    }

    #[test]
    fn huge_lengths() {
        let mut d = Decoder::new();
        d.feed(format!("{}\n", MAX_RECORD_LEN + 1).as_bytes());
        assert_eq!(
            d.next_record(),
            Err(RecordIoError::TooLarge {
                len: MAX_RECORD_LEN as u64 + 1,
                max: MAX_RECORD_LEN
            })
        );
        // Exactly the limit is fine (just incomplete here).
        let mut d = Decoder::new();
        d.feed(format!("{MAX_RECORD_LEN}\n").as_bytes());
        assert_eq!(d.next_record(), Ok(None));
        // Larger than u64.
        let mut d = Decoder::new();
        d.feed(b"99999999999999999999\n");
        assert!(matches!(
            d.next_record(),
            Err(RecordIoError::TooLarge { len: u64::MAX, .. })
        ));
        // A custom limit.
        let mut d = Decoder::with_max_len(4);
        d.feed(b"4\nabcd5\nabcde");
        assert_eq!(d.next_record(), Ok(Some(b"abcd".to_vec())));
        assert!(matches!(
            d.next_record(),
            Err(RecordIoError::TooLarge { len: 5, max: 4 })
        ));
    }
}
