//! Domain names: building, comparing (ASCII case ignored), printing, and reading them with
//! compression pointers that may only point backwards.

use std::fmt;

use super::{MAX_LABEL_LEN, MAX_NAME_LEN, WireError};

/// A domain name: labels as raw bytes, case preserved; comparisons ignore ASCII case.
#[derive(Debug, Clone, Default)]
pub struct Name {
    pub(super) labels: Vec<Vec<u8>>,
}

impl Name {
    /// The root name (`.`).
    pub fn root() -> Self {
        Name::default()
    }

    /// Builds a name from dotted text (`www.example.com`, a trailing dot optional; `.` or the
    /// empty string is the root). Labels must be 1–63 bytes and the whole name fit 255 bytes.
    pub fn from_ascii(text: &str) -> Result<Self, WireError> {
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Ok(Name::root());
        }
        let mut labels = Vec::new();
        for l in text.split('.') {
            if l.is_empty() || l.len() > MAX_LABEL_LEN {
                return Err(WireError::BadLabel { label: l.into() });
            }
            labels.push(l.as_bytes().to_vec());
        }
        let name = Name { labels };
        if name.wire_len() > MAX_NAME_LEN {
            return Err(WireError::NameTooLong { offset: 0 });
        }
        Ok(name)
    }

    /// The labels, most specific first.
    pub fn labels(&self) -> &[Vec<u8>] {
        &self.labels
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.labels.is_empty()
    }

    /// Length on the wire, uncompressed.
    pub fn wire_len(&self) -> usize {
        1 + self.labels.iter().map(|l| l.len() + 1).sum::<usize>()
    }

    /// Whether this name equals `other` or lies below it (ASCII case ignored).
    pub fn is_subdomain_of(&self, other: &Name) -> bool {
        let (n, m) = (self.labels.len(), other.labels.len());
        n >= m
            && self.labels[n - m..]
                .iter()
                .zip(&other.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The name as lower-case dotted text without the trailing dot, or `None` when a label
    /// holds bytes outside printable ASCII or a `.` (such a name cannot be a table key).
    pub fn to_lowercase_key(&self) -> Option<String> {
        let mut out = String::with_capacity(self.wire_len());
        for (i, l) in self.labels.iter().enumerate() {
            if l.iter().any(|b| !b.is_ascii_graphic() || *b == b'.') {
                return None;
            }
            if i > 0 {
                out.push('.');
            }
            out.extend(l.iter().map(|b| b.to_ascii_lowercase() as char));
        }
        Some(out)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.labels.len() == other.labels.len()
            && self
                .labels
                .iter()
                .zip(&other.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

impl Eq for Name {}

impl fmt::Display for Name {
    /// Dotted, with a trailing dot; `.`, `\` and non-printable bytes escaped as `\DDD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.labels.is_empty() {
            return f.write_str(".");
        }
        for l in &self.labels {
            for &b in l {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    write!(f, "{}", b as char)?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
            f.write_str(".")?;
        }
        Ok(())
    }
}

/// Reads the name at `start`; returns it and the offset just after it (after the first
/// pointer when compressed).
pub(super) fn read_name(buf: &[u8], start: usize) -> Result<(Name, usize), WireError> {
    let mut labels = Vec::new();
    let mut pos = start;
    // Pointers must point before the start of the run they appear in: strictly decreasing
    // targets, so every name read terminates.
    let mut run_start = start;
    let mut end = None;
    let mut wire_len = 1;
    loop {
        let len = *buf.get(pos).ok_or(WireError::Truncated {
            what: "name",
            offset: pos,
        })?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((Name { labels }, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let l = usize::from(len);
                let label = buf.get(pos + 1..pos + 1 + l).ok_or(WireError::Truncated {
                    what: "label",
                    offset: pos + 1,
                })?;
                wire_len += l + 1;
                if wire_len > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong { offset: start });
                }
                labels.push(label.to_vec());
                pos += 1 + l;
            }
            0xc0 => {
                let low = *buf.get(pos + 1).ok_or(WireError::Truncated {
                    what: "compression pointer",
                    offset: pos + 1,
                })?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                if target >= run_start {
                    return Err(WireError::BadPointer {
                        offset: pos,
                        target,
                    });
                }
                end.get_or_insert(pos + 2);
                run_start = target;
                pos = target;
            }
            bits => {
                return Err(WireError::BadLabelType { offset: pos, bits });
            }
        }
    }
}
