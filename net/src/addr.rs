//! IPv4 prefixes (`9.0.1.0/24`) and the addresses derived from them.
//!
//! A small, dependency-free type: berth only needs IPv4 prefixes for its node subnets, the
//! overlay range, VTEP addresses and the VIP range.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors of parsing an IPv4 prefix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    /// The text is not `A.B.C.D/LEN` with LEN in 0..=32.
    #[error("invalid IPv4 prefix {0:?}: expected A.B.C.D/LEN with LEN 0..=32")]
    Parse(String),
    /// Host bits are set where a network address was expected (`9.0.1.5/24`).
    #[error("invalid IPv4 prefix {0:?}: host bits set (did you mean {1}?)")]
    HostBits(String, Ipv4Net),
}

/// An IPv4 network: address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A network from its address and prefix length; host bits are cleared.
    ///
    /// # Panics
    /// If `prefix > 32` (a programming error, parsed input goes through `FromStr`).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        assert!(prefix <= 32, "prefix {prefix} > 32");
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the network (2^(32-prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The `n`th address of the network (0 = the network address), if inside it.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }

    /// The first usable host address, by berth's convention the gateway (`.1` of a /24).
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }

    /// The broadcast (last) address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The `index`th subnet of length `prefix` inside this network.
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Ipv4Net> {
        if prefix < self.prefix || prefix > 32 || index >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let base = u32::from(self.addr) as u64 + (index << (32 - prefix));
        Some(Ipv4Net::new(Ipv4Addr::from(base as u32), prefix))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| AddrError::Parse(s.to_string()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| AddrError::Parse(s.to_string()))?;
        let prefix: u8 = p.parse().map_err(|_| AddrError::Parse(s.to_string()))?;
        if prefix > 32 {
            return Err(AddrError::Parse(s.to_string()));
        }
        let net = Ipv4Net::new(addr, prefix);
        if net.addr != addr {
            return Err(AddrError::HostBits(s.to_string(), net));
        }
        Ok(net)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The VTEP MAC address berth derives from a VTEP IP: locally administered unicast
/// `0e:be:` followed by the four address bytes, so every node computes a peer's MAC itself.
pub fn vtep_mac(vtep_ip: Ipv4Addr) -> [u8; 6] {
    let o = vtep_ip.octets();
    [0x0e, 0xbe, o[0], o[1], o[2], o[3]]
}

/// `aa:bb:cc:dd:ee:ff` text of a MAC address.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_prefixes() {
        let n: Ipv4Net = "9.0.1.0/24".parse().unwrap();
        assert_eq!(n.network(), Ipv4Addr::new(9, 0, 1, 0));
        assert_eq!(n.gateway(), Ipv4Addr::new(9, 0, 1, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(9, 0, 1, 255));
        assert_eq!(n.to_string(), "9.0.1.0/24");
        assert!(matches!(
            "9.0.1.5/24".parse::<Ipv4Net>(),
            Err(AddrError::HostBits(..))
        ));
        assert!(matches!(
            "9.0.1.0/33".parse::<Ipv4Net>(),
            Err(AddrError::Parse(_))
        ));
        assert!(matches!(
            "9.0.1.0".parse::<Ipv4Net>(),
            Err(AddrError::Parse(_))
        ));
        assert!(matches!(
            "nine/8".parse::<Ipv4Net>(),
            Err(AddrError::Parse(_))
        ));
    }

    #[test]
    fn overlap_containment_and_subnets() {
        let overlay: Ipv4Net = "9.0.0.0/8".parse().unwrap();
        let a: Ipv4Net = "9.0.1.0/24".parse().unwrap();
        let b: Ipv4Net = "9.0.2.0/24".parse().unwrap();
        assert!(overlay.overlaps(&a) && a.overlaps(&overlay));
        assert!(!a.overlaps(&b));
        assert!(overlay.contains_net(&a) && !a.contains_net(&overlay));
        assert_eq!(overlay.subnet(24, 258), Some("9.1.2.0/24".parse().unwrap()));
        assert_eq!(overlay.subnet(24, 1 << 16), None);
        assert_eq!(a.nth(255), Some(Ipv4Addr::new(9, 0, 1, 255)));
        assert_eq!(a.nth(256), None);
    }

    #[test]
    fn vtep_mac_is_derived_from_the_ip() {
        assert_eq!(
            format_mac(&vtep_mac(Ipv4Addr::new(44, 128, 0, 3))),
            "0e:be:2c:80:00:03"
        );
    }
}
