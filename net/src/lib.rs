//! # berth-net
//!
//! Container networking for berth. It will own IPAM, the per-node bridge and veth pairs, the
//! VXLAN overlay (reconciled through rtnetlink) and the L4 load balancer (nftables), as laid out in
//! DESIGN.md. Today berth supports two network modes, both realised by the namespaces isolator:
//! `host` (the host's network namespace) and `none` (a private network namespace with loopback
//! only). This crate holds the parsing of network modes so every later mode lands here.
#![warn(missing_docs)]

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A network a task can ask for by name (`--network NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkName {
    /// The host's network namespace.
    Host,
    /// A private network namespace with loopback only.
    None,
}

/// Errors of network selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// The named network does not exist (yet).
    #[error(
        "unknown network {0:?}: berth supports 'host' and 'none' (bridge and overlay are not built yet)"
    )]
    UnknownNetwork(String),
}

impl FromStr for NetworkName {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(NetworkName::Host),
            "none" | "" => Ok(NetworkName::None),
            other => Err(NetError::UnknownNetwork(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_networks_and_rejects_others() {
        assert_eq!("host".parse::<NetworkName>(), Ok(NetworkName::Host));
        assert_eq!("none".parse::<NetworkName>(), Ok(NetworkName::None));
        assert!(matches!(
            "overlay".parse::<NetworkName>(),
            Err(NetError::UnknownNetwork(_))
        ));
    }
}
