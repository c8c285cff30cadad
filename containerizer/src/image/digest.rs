//! SHA-256 content digests: parsing (`sha256:<64 lowercase hex>` only), hashing readers and
//! writers, and verification with an error naming the object and both digests.

use std::{fmt, io, str::FromStr};

use sha2::Digest as _;

/// A verified-syntax SHA-256 digest (`sha256:<hex>`). Other algorithms are refused: every blob in
/// the store is addressed by SHA-256, the only algorithm registries and tools use for images.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(String);

/// A digest string that is not `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
pub struct InvalidDigest(pub String);

impl Sha256 {
    /// Parses `sha256:<hex>`.
    pub fn parse(text: &str) -> Result<Self, InvalidDigest> {
        match text.strip_prefix("sha256:") {
            Some(hex) if is_hex64(hex) => Ok(Self(hex.to_string())),
            _ => Err(InvalidDigest(text.to_string())),
        }
    }

    /// From the 64 hex digits alone (a blob's file name).
    pub fn from_hex(hex: &str) -> Result<Self, InvalidDigest> {
        if is_hex64(hex) {
            Ok(Self(hex.to_string()))
        } else {
            Err(InvalidDigest(hex.to_string()))
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut hasher = sha2::Sha256::new();
        hasher.update(data);
        Self::from_hasher(hasher)
    }

    fn from_hasher(hasher: sha2::Sha256) -> Self {
        let bytes = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for byte in bytes {
            use fmt::Write;
            let _ = write!(hex, "{byte:02x}");
        }
        Self(hex)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits (for progress lines and logs).
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    /// Errors with [`DigestMismatch`] unless `actual` equals `self`.
    pub fn verify(&self, what: &str, actual: &Sha256) -> Result<(), DigestMismatch> {
        if self == actual {
            Ok(())
        } else {
            Err(DigestMismatch {
                what: what.to_string(),
                expected: self.clone(),
                actual: actual.clone(),
            })
        }
    }
}

fn is_hex64(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl FromStr for Sha256 {
    type Err = InvalidDigest;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Sha256 {
    type Error = InvalidDigest;

    fn try_from(digest: &oci_spec::image::Digest) -> Result<Self, Self::Error> {
        Self::parse(digest.as_ref())
    }
}

impl From<&Sha256> for oci_spec::image::Digest {
    fn from(digest: &Sha256) -> Self {
        // A Sha256 always holds 64 lowercase hex digits, which oci-spec accepts.
        oci_spec::image::Digest::from_str(&digest.to_string())
            .unwrap_or_else(|_| unreachable!("sha256 digest {digest} rejected by oci-spec"))
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Content whose digest is not the one it was asked for by.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: digest mismatch: expected {expected}, got {actual}")]
pub struct DigestMismatch {
    /// What was checked (a blob, a layer's uncompressed tar, a manifest).
    pub what: String,
    /// The digest that was asked for.
    pub expected: Sha256,
    /// The digest of what arrived.
    pub actual: Sha256,
}

/// An incremental SHA-256 with a byte count.
#[derive(Clone, Default)]
pub struct Hasher {
    hasher: sha2::Sha256,
    bytes: u64,
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Sha256 {
        Sha256::from_hasher(self.hasher)
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.hasher.bytes()
    }

    /// The inner reader and the digest of what was read.
    pub fn finish(self) -> (R, Sha256, u64) {
        let bytes = self.hasher.bytes();
        (self.inner, self.hasher.finish(), bytes)
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display() {
        let d = Sha256::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(d.hex(), EMPTY);
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
        assert_eq!(d.short(), &EMPTY[..12]);
        assert!(Sha256::parse(EMPTY).is_err());
        assert!(Sha256::parse(&format!("sha512:{EMPTY}")).is_err());
        assert!(Sha256::parse(&format!("sha256:{}", EMPTY.to_uppercase())).is_err());
        assert!(Sha256::parse("sha256:abc").is_err());
        assert!(Sha256::parse(&format!("sha256:{EMPTY}/../x")).is_err());
        assert!(Sha256::from_hex("../../etc/passwd").is_err());
    }

    #[test]
    fn hashing_and_verification() {
        assert_eq!(Sha256::of(b"").hex(), EMPTY);
        let mut reader = HashingReader::new(&b"hello"[..]);
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        let (_, digest, bytes) = reader.finish();
        assert_eq!(bytes, 5);
        assert_eq!(digest, Sha256::of(b"hello"));
        let expected = Sha256::of(b"hullo");
        let err = expected.verify("blob x", &digest).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("blob x"), "{text}");
        assert!(
            text.contains(expected.hex()) && text.contains(digest.hex()),
            "{text}"
        );
        assert!(digest.verify("blob x", &Sha256::of(b"hello")).is_ok());
    }

    #[test]
    fn oci_digest_round_trip() {
        let d = Sha256::of(b"x");
        let oci: oci_spec::image::Digest = (&d).into();
        assert_eq!(Sha256::try_from(&oci).unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), d);
    }
}
