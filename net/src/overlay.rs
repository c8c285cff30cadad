//! The VXLAN overlay, flannel-style L3 with learning off.
//!
//! One VXLAN device per node (`berth.vx`, VNI 1024, UDP 4789, the node's VTEP address as
//! source, MAC derived from the VTEP address, MTU = underlay − 50) holding the node subnet's
//! network address as a /32. For every peer node (subnet, VTEP address, VTEP MAC):
//!
//! ```text
//! route      PEER_SUBNET via PEER_GW dev berth.vx onlink     (PEER_GW = the subnet's .0)
//! neighbour  PEER_GW lladdr PEER_MAC dev berth.vx permanent
//! fdb        PEER_MAC dst PEER_VTEP dev berth.vx self permanent
//! ```
//!
//! [`Overlay::apply`] is the reconcile loop's step: it ensures the device, reads the kernel's
//! routes, neighbours and FDB entries on it, diffs them against the desired peers and applies
//! the difference (deletes first, then adds; each group sent as one concurrent netlink batch).
//! Anything on the device that is not desired (a dead peer's entries, entries planted by hand)
//! is deleted. Applying the same state twice changes nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;

use crate::addr::{Ipv4Net, format_mac, vtep_mac};
use crate::link::LinkError;

mod rtnl;
#[cfg(test)]
mod tests;

pub use rtnl::RtnlOverlay;

/// Bytes VXLAN adds to every packet (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Errors of the overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A link operation (device creation, lookup) failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A netlink request on an overlay entry failed.
    #[error("{op} {entry} on {device}: {source}")]
    Entry {
        /// The operation.
        op: &'static str,
        /// The entry, as `ip` would print it.
        entry: String,
        /// The VXLAN device.
        device: String,
        /// The netlink error.
        source: Box<rtnetlink::Error>,
    },
    /// Dumping kernel state failed.
    #[error("dump {what} of {device}: {source}")]
    Dump {
        /// Routes, neighbours or fdb.
        what: &'static str,
        /// The device.
        device: String,
        /// The netlink error.
        source: Box<rtnetlink::Error>,
    },
    /// After applying the diff the kernel still differs (an entry the kernel would not delete).
    #[error("overlay did not converge; still to change: {0}")]
    NotConverged(String),
    /// The desired state is inconsistent.
    #[error("overlay peers: {0}")]
    BadPeers(String),
    /// The underlay MTU is too small for VXLAN.
    #[error("underlay {device} MTU {mtu} leaves no room for VXLAN's {VXLAN_OVERHEAD} bytes")]
    MtuTooSmall {
        /// The underlay device.
        device: String,
        /// Its MTU.
        mtu: u32,
    },
}

/// This node's side of the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    /// VXLAN device name (`berth.vx`).
    pub device: String,
    /// VXLAN network identifier (1024).
    pub vni: u32,
    /// UDP destination port (4789).
    pub port: u16,
    /// The underlay device the VTEP address is on.
    pub underlay_dev: String,
    /// This node's VTEP address.
    pub vtep_ip: Ipv4Addr,
    /// This node's subnet (its network address goes on the VXLAN device).
    pub subnet: Ipv4Net,
    /// Underlay MTU; `None` reads it from `underlay_dev`.
    pub underlay_mtu: Option<u32>,
}

impl OverlayConfig {
    /// The DESIGN defaults (`berth.vx`, VNI 1024, port 4789) for a node.
    pub fn new(underlay_dev: &str, vtep_ip: Ipv4Addr, subnet: Ipv4Net) -> Self {
        Self {
            device: "berth.vx".into(),
            vni: 1024,
            port: 4789,
            underlay_dev: underlay_dev.into(),
            vtep_ip,
            subnet,
            underlay_mtu: None,
        }
    }
}

/// The overlay MTU for an underlay MTU (the bridge and containers use it too).
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
}

/// A peer node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The peer's subnet.
    pub subnet: Ipv4Net,
    /// The peer's VTEP address.
    pub vtep_ip: Ipv4Addr,
    /// The peer's VTEP MAC.
    pub vtep_mac: [u8; 6],
}

impl Peer {
    /// A peer with the MAC derived from its VTEP address (see [`vtep_mac`]).
    pub fn new(subnet: Ipv4Net, vtep_ip: Ipv4Addr) -> Self {
        Self {
            subnet,
            vtep_ip,
            vtep_mac: vtep_mac(vtep_ip),
        }
    }

    /// The peer's overlay gateway: its subnet's network address, held by its VXLAN device.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// The desired overlay: every other node of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayState {
    /// The peers (this node itself may be listed; it is skipped).
    pub peers: Vec<Peer>,
}

/// Routes, neighbours and FDB entries on the VXLAN device, as read from or wanted in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayEntries {
    /// Destination subnet → gateway.
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// Neighbour address → MAC.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// FDB: MAC → VTEP destination.
    pub fdb: BTreeMap<[u8; 6], Ipv4Addr>,
}

/// One change to the kernel's overlay entries. Adds replace an existing entry with the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayOp {
    /// `ip route replace DST via VIA dev DEV onlink`.
    AddRoute {
        /// Destination.
        dst: Ipv4Net,
        /// Gateway.
        via: Ipv4Addr,
    },
    /// `ip route del DST via VIA dev DEV`.
    DelRoute {
        /// Destination.
        dst: Ipv4Net,
        /// Gateway.
        via: Ipv4Addr,
    },
    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    AddNeighbour {
        /// Address.
        ip: Ipv4Addr,
        /// MAC.
        mac: [u8; 6],
    },
    /// `ip neigh del IP dev DEV`.
    DelNeighbour {
        /// Address.
        ip: Ipv4Addr,
    },
    /// `bridge fdb replace MAC dst DST dev DEV self permanent`.
    AddFdb {
        /// MAC.
        mac: [u8; 6],
        /// VTEP destination.
        dst: Ipv4Addr,
    },
    /// `bridge fdb del MAC dst DST dev DEV self`.
    DelFdb {
        /// MAC.
        mac: [u8; 6],
        /// VTEP destination.
        dst: Ipv4Addr,
    },
}

impl std::fmt::Display for OverlayOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverlayOp::AddRoute { dst, via } => write!(f, "route {dst} via {via} onlink"),
            OverlayOp::DelRoute { dst, via } => write!(f, "route {dst} via {via}"),
            OverlayOp::AddNeighbour { ip, mac } => {
                write!(f, "neighbour {ip} lladdr {}", format_mac(mac))
            }
            OverlayOp::DelNeighbour { ip } => write!(f, "neighbour {ip}"),
            OverlayOp::AddFdb { mac, dst } | OverlayOp::DelFdb { mac, dst } => {
                write!(f, "fdb {} dst {dst}", format_mac(mac))
            }
        }
    }
}

/// The entries `state` needs on this node (`own` = this node's subnet and VTEP); checks that
/// peer subnets do not overlap each other or this node's.
pub fn desired_entries(
    own_subnet: Ipv4Net,
    own_vtep: Ipv4Addr,
    state: &OverlayState,
) -> Result<OverlayEntries, OverlayError> {
    let mut e = OverlayEntries::default();
    let mut peers: Vec<&Peer> = state
        .peers
        .iter()
        .filter(|p| !(p.subnet == own_subnet && p.vtep_ip == own_vtep))
        .collect();
    peers.sort();
    peers.dedup();
    for (i, p) in peers.iter().enumerate() {
        if p.subnet.overlaps(&own_subnet) {
            return Err(OverlayError::BadPeers(format!(
                "peer {} (VTEP {}) overlaps this node's subnet {own_subnet}",
                p.subnet, p.vtep_ip
            )));
        }
        if p.vtep_ip == own_vtep {
            return Err(OverlayError::BadPeers(format!(
                "peer {} claims this node's VTEP address {own_vtep}",
                p.subnet
            )));
        }
        for q in &peers[i + 1..] {
            if p.subnet.overlaps(&q.subnet) {
                return Err(OverlayError::BadPeers(format!(
                    "peers {} (VTEP {}) and {} (VTEP {}) overlap",
                    p.subnet, p.vtep_ip, q.subnet, q.vtep_ip
                )));
            }
            if p.vtep_ip == q.vtep_ip || p.vtep_mac == q.vtep_mac {
                return Err(OverlayError::BadPeers(format!(
                    "peers {} and {} share VTEP {}",
                    p.subnet, q.subnet, p.vtep_ip
                )));
            }
        }
        e.routes.insert(p.subnet, p.gateway());
        e.neighbours.insert(p.gateway(), p.vtep_mac);
        e.fdb.insert(p.vtep_mac, p.vtep_ip);
    }
    Ok(e)
}

/// The changes that turn `actual` into `desired`: deletes of routes, neighbours, FDB entries,
/// then adds of FDB entries, neighbours, routes. Pure.
pub fn diff(desired: &OverlayEntries, actual: &OverlayEntries) -> Vec<OverlayOp> {
    let mut ops = Vec::new();
    for (dst, via) in &actual.routes {
        if desired.routes.get(dst) != Some(via) {
            ops.push(OverlayOp::DelRoute {
                dst: *dst,
                via: *via,
            });
        }
    }
    for (ip, mac) in &actual.neighbours {
        if desired.neighbours.get(ip).is_none_or(|m| m != mac) {
            ops.push(OverlayOp::DelNeighbour { ip: *ip });
        }
    }
    for (mac, dst) in &actual.fdb {
        if desired.fdb.get(mac) != Some(dst) {
            ops.push(OverlayOp::DelFdb {
                mac: *mac,
                dst: *dst,
            });
        }
    }
    for (mac, dst) in &desired.fdb {
        if actual.fdb.get(mac) != Some(dst) {
            ops.push(OverlayOp::AddFdb {
                mac: *mac,
                dst: *dst,
            });
        }
    }
    for (ip, mac) in &desired.neighbours {
        if actual.neighbours.get(ip) != Some(mac) {
            ops.push(OverlayOp::AddNeighbour { ip: *ip, mac: *mac });
        }
    }
    for (dst, via) in &desired.routes {
        if actual.routes.get(dst) != Some(via) {
            ops.push(OverlayOp::AddRoute {
                dst: *dst,
                via: *via,
            });
        }
    }
    ops
}

/// The kernel seam of the overlay: [`RtnlOverlay`] talks rtnetlink; tests use a double that
/// keeps entries in memory and records operations.
pub trait OverlayKernel {
    /// Ensures the VXLAN device matches `cfg` (creating or recreating it), is up with the
    /// overlay MTU and holds the subnet's network address; returns its index.
    fn ensure_device(
        &self,
        cfg: &OverlayConfig,
    ) -> impl Future<Output = Result<u32, OverlayError>> + Send;
    /// Reads the routes (main table), neighbours and FDB entries on device `index`.
    fn read(&self, index: u32)
    -> impl Future<Output = Result<OverlayEntries, OverlayError>> + Send;
    /// Applies `ops` (in order of their groups) on device `index`.
    fn write(
        &self,
        index: u32,
        ops: &[OverlayOp],
    ) -> impl Future<Output = Result<(), OverlayError>> + Send;
    /// Deletes the device; `false` if it did not exist.
    fn delete_device(&self, name: &str) -> impl Future<Output = Result<bool, OverlayError>> + Send;
}

/// What one [`Overlay::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayReport {
    /// Operations applied (empty when the kernel already matched).
    pub ops: Vec<OverlayOp>,
}

/// The node's overlay, reconciled by [`Overlay::apply`].
#[derive(Debug)]
pub struct Overlay<K: OverlayKernel> {
    kernel: K,
    cfg: OverlayConfig,
}

impl<K: OverlayKernel> Overlay<K> {
    /// An overlay for this node over `kernel`. Nothing happens until `apply`.
    pub fn new(kernel: K, cfg: OverlayConfig) -> Self {
        Self { kernel, cfg }
    }

    /// The configuration.
    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }

    /// Reconciles the kernel with `desired`: device, then routes/neighbours/FDB (see module
    /// docs). Idempotent; call on every membership change and periodically.
    pub async fn apply(&self, desired: &OverlayState) -> Result<OverlayReport, OverlayError> {
        let want = desired_entries(self.cfg.subnet, self.cfg.vtep_ip, desired)?;
        let index = self.kernel.ensure_device(&self.cfg).await?;
        let have = self.kernel.read(index).await?;
        let ops = diff(&want, &have);
        if !ops.is_empty() {
            self.kernel.write(index, &ops).await?;
            // A delete the kernel did not match is reported as ENOENT and ignored; check that
            // the kernel really converged instead of trusting it.
            let left = diff(&want, &self.kernel.read(index).await?);
            if !left.is_empty() {
                let left: Vec<String> = left.iter().map(ToString::to_string).collect();
                return Err(OverlayError::NotConverged(left.join(", ")));
            }
            tracing::info!(device = %self.cfg.device, peers = want.routes.len(), changes = ops.len(),
                "overlay reconciled");
        }
        Ok(OverlayReport { ops })
    }

    /// Removes the VXLAN device (and with it every route, neighbour and FDB entry on it).
    pub async fn teardown(&self) -> Result<bool, OverlayError> {
        self.kernel.delete_device(&self.cfg.device).await
    }
}
