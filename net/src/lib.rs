//! # berth-net
//!
//! Container networking for berth, as a library the agent drives:
//!
//! - [`ipam`]: container addresses from the node subnet and node subnets from the overlay
//!   range, leases checkpointed atomically under a root directory.
//! - [`netns`]: naming a network namespace (path, pid or fd) and running code inside one.
//! - [`link`]: an rtnetlink connection opened in a chosen namespace.
//! - [`bridge`]: the per-node bridge (`berth0`) and a container's veth pair (`eth0` inside),
//!   plus the `resolv.conf`/`hosts` text a container gets.
//! - [`isolator`]: the `network/bridge` isolator putting `NetworkMode::Bridge` containers on
//!   the node bridge.
//! - [`overlay`]: the flannel-style L3 VXLAN overlay (`berth.vx`): `apply(desired)` reads the
//!   kernel's routes, neighbours and FDB entries, diffs and corrects them, deleting stale ones.
//! - [`nft`], [`lb`], [`portmap`]: one nftables table `ip berth` holding the L4 load balancer's
//!   slot map (VIP . proto . port . slot → backend) and the port mappings, changed by one atomic
//!   transaction per change.
//! - [`ipvs`]: the IPVS backend of the load balancer (where the kernel has `ip_vs`): a generic
//!   netlink IPVS client, VIP addresses on the dummy link `berth-ipvs0`; both balancers
//!   implement [`lb::VipBalancer`].
//!
//! Modes: `host` (the host's network namespace) and `none` (loopback only) are realised by the
//! namespaces isolator; `bridge` and `overlay` put the container on the node bridge, the latter
//! with the bridge subnet routed across nodes over VXLAN.
#![warn(missing_docs)]

use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod addr;
pub mod bridge;
pub mod dns;
pub mod ipam;
pub mod ipvs;
pub mod isolator;
pub mod lb;
pub mod link;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod portmap;

pub use addr::Ipv4Net;

/// A network a task can ask for by name (`--network NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkName {
    /// The host's network namespace.
    Host,
    /// A private network namespace with loopback only.
    None,
    /// A private network namespace on the node bridge (an address from the node subnet).
    Bridge,
    /// The cluster overlay (`berth`): the node bridge, its subnet routed across nodes.
    Overlay,
}

impl NetworkName {
    /// Whether containers of this network get a veth pair on the node bridge.
    pub fn uses_bridge(self) -> bool {
        matches!(self, NetworkName::Bridge | NetworkName::Overlay)
    }
}

/// Errors of network selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// The named network does not exist (yet).
    #[error(
        "unknown network {0:?}: berth supports 'host', 'none', 'bridge' and 'overlay' (alias 'berth')"
    )]
    UnknownNetwork(String),
}

impl FromStr for NetworkName {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(NetworkName::Host),
            "none" | "" => Ok(NetworkName::None),
            "bridge" => Ok(NetworkName::Bridge),
            // "berth" is the overlay's name in the scheduler API's NetworkInfo.
            "overlay" | "berth" => Ok(NetworkName::Overlay),
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
        assert_eq!("bridge".parse::<NetworkName>(), Ok(NetworkName::Bridge));
        assert_eq!("overlay".parse::<NetworkName>(), Ok(NetworkName::Overlay));
        assert_eq!("berth".parse::<NetworkName>(), Ok(NetworkName::Overlay));
        assert!(NetworkName::Overlay.uses_bridge() && !NetworkName::Host.uses_bridge());
        assert!(matches!(
            "ovrelay".parse::<NetworkName>(),
            Err(NetError::UnknownNetwork(_))
        ));
    }
}
