//! The node's place on the VXLAN overlay (`--overlay`): its subnet lease and its peers, and the
//! kernel state reconciled from them by `berth_net::overlay`.
//!
//! Membership lives in one of two places ([`Membership`]):
//! - ZooKeeper ([`zk`]), in cluster mode: one EPHEMERAL znode per node, named after its subnet;
//!   a dead node's session expires and its znode disappears by itself.
//! - The master ([`master`]; `--dev`, or a `berth master` named by a host:port `--master`):
//!   leases the master grants and the node renews; one not renewed expires.
//!
//! Either way the subnet is remembered in `<work-dir>/meta/overlay.json`, so a node that comes
//! back asks for the same one first, and the members are published on a watch channel that the
//! reconcile loop follows: on every change, and every [`RECONCILE_EVERY`] (which repairs hand-made
//! damage and missed events), the kernel's routes, neighbours and FDB entries are read, diffed
//! and corrected, stale ones deleted.

pub mod master;
pub mod zk;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use berth_net::{
    Ipv4Net,
    link::Netlink,
    overlay::{Overlay, OverlayConfig, OverlayState, Peer, RtnlOverlay, overlay_mtu},
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{checkpoint, mesos::detector::MasterLeader};

/// How often the kernel is reconciled without a membership change.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// Where the node's membership is kept.
#[derive(Debug, Clone)]
pub enum Membership {
    /// ZooKeeper (`zk://host:port,.../path`; the path part is ignored, members live under
    /// [`zk::MEMBERS_PATH`]); a dead node's lease lasts one session timeout.
    ZooKeeper {
        /// The URL.
        url: String,
        /// Session timeout.
        session_timeout: Duration,
    },
    /// The leading master (its `/overlay/v1` endpoints).
    Master {
        /// The leading master, from the agent's detector.
        leader: watch::Receiver<Option<MasterLeader>>,
        /// How long to wait for a master that does not answer before giving up joining.
        join_timeout: Duration,
    },
}

/// How the node joins.
#[derive(Debug, Clone)]
pub struct OverlaySettings {
    /// Where membership is kept.
    pub membership: Membership,
    /// This node's VTEP (underlay) address.
    pub vtep_ip: Ipv4Addr,
    /// The device holding it.
    pub underlay_dev: String,
    /// The overlay range node subnets come from (9.0.0.0/8).
    pub pool: Ipv4Net,
    /// Node subnet prefix length (24).
    pub prefix: u8,
    /// `<work-dir>/meta/overlay.json`.
    pub state_file: PathBuf,
}

/// The node's overlay membership, once joined.
#[derive(Debug, Clone)]
pub struct OverlayNode {
    /// The node subnet (the bridge's).
    pub subnet: Ipv4Net,
    /// MTU for the bridge and containers (underlay − VXLAN overhead).
    pub mtu: u32,
    /// What `berth net` shows, kept current by the reconcile loop.
    pub status: watch::Receiver<OverlayStatus>,
}

/// The overlay as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct OverlayStatus {
    /// This node's subnet.
    pub subnet: String,
    /// This node's VTEP address.
    pub vtep_ip: Ipv4Addr,
    /// The underlay device.
    pub underlay_dev: String,
    /// MTU inside the overlay.
    pub mtu: u32,
    /// Where membership is kept: `zookeeper` or `master`.
    pub membership: &'static str,
    /// The other members: subnet and VTEP address.
    pub peers: Vec<(String, Ipv4Addr)>,
    /// Unix time of the last successful reconcile.
    pub reconciled_at: f64,
    /// The last reconcile's error, if it failed.
    pub error: Option<String>,
}

/// What a member publishes about itself (ZooKeeper znode data; the master's lease request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) vtep_ip: Ipv4Addr,
    #[serde(default)]
    pub(crate) hostname: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedLease {
    subnet: Ipv4Net,
}

/// The candidate subnets, `saved` first, then from a spot derived from the VTEP address (so
/// nodes starting together rarely race for the same one). The pool's first subnet is never a
/// candidate (it holds the pool's network address).
pub fn subnet_candidates(
    pool: Ipv4Net,
    prefix: u8,
    saved: Option<Ipv4Net>,
    vtep: Ipv4Addr,
) -> Vec<Ipv4Net> {
    let count = 1u32 << (prefix.saturating_sub(pool.prefix())).min(16);
    let base = u32::from(pool.network());
    let size = 1u32 << (32 - u32::from(prefix));
    let start = u32::from(vtep) % count;
    let mut out: Vec<Ipv4Net> = saved.into_iter().collect();
    for i in 0..count {
        let n = (start + i) % count;
        if n == 0 {
            continue;
        }
        let net = Ipv4Net::new(Ipv4Addr::from(base + n * size), prefix);
        if Some(net) != saved {
            out.push(net);
        }
    }
    out
}

/// A lease taken by a membership backend: the subnet, and the members (this node included) as
/// they change.
pub(crate) struct Joined {
    pub(crate) subnet: Ipv4Net,
    pub(crate) peers: watch::Receiver<Vec<Peer>>,
}

/// Joins the overlay: takes a subnet lease, sets up the VXLAN device, and keeps the node's
/// routes, neighbours and FDB entries in step with the members until the process ends.
pub async fn join(settings: OverlaySettings) -> anyhow::Result<OverlayNode> {
    let saved = checkpoint::read_json::<SavedLease>(&settings.state_file)
        .ok()
        .flatten()
        .map(|s| s.subnet);
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let member = Member {
        vtep_ip: settings.vtep_ip,
        hostname,
    };
    let (joined, membership) = match &settings.membership {
        Membership::ZooKeeper {
            url,
            session_timeout,
        } => (
            zk::join(url, *session_timeout, &settings, saved, &member).await?,
            "zookeeper",
        ),
        Membership::Master {
            leader,
            join_timeout,
        } => (
            master::join(leader.clone(), *join_timeout, &settings, saved, &member).await?,
            "master",
        ),
    };
    let subnet = joined.subnet;
    checkpoint::write_json(&settings.state_file, &SavedLease { subnet })?;
    let nl = Netlink::connect().context("netlink")?;
    let underlay_mtu = nl
        .mtu(&settings.underlay_dev)
        .await
        .with_context(|| format!("underlay device {}", settings.underlay_dev))?;
    let mtu = overlay_mtu(underlay_mtu);
    let overlay = Overlay::new(
        RtnlOverlay::new(nl, "berth.vx"),
        OverlayConfig::new(&settings.underlay_dev, settings.vtep_ip, subnet),
    );
    if let Err(err) = berth_net::bridge::enable_ip_forward(Path::new("/proc/sys")) {
        warn!(error = %err, "could not enable IP forwarding: overlay traffic will not pass");
    }
    let peers = joined.peers.borrow().clone();
    overlay
        .apply(&OverlayState { peers })
        .await
        .context("setting up the VXLAN overlay")?;
    info!(%subnet, vtep = %settings.vtep_ip, mtu, membership, "joined the overlay");
    let (status_tx, status) = watch::channel(OverlayStatus {
        subnet: subnet.to_string(),
        vtep_ip: settings.vtep_ip,
        underlay_dev: settings.underlay_dev.clone(),
        mtu,
        membership,
        peers: Vec::new(),
        reconciled_at: crate::task::now(),
        error: None,
    });
    tokio::spawn(reconcile_loop(
        Arc::new(overlay),
        subnet,
        joined.peers,
        status_tx,
    ));
    Ok(OverlayNode {
        subnet,
        mtu,
        status,
    })
}

/// Applies the members to the kernel on every change and every [`RECONCILE_EVERY`], until the
/// membership backend is gone.
async fn reconcile_loop(
    overlay: Arc<Overlay<RtnlOverlay>>,
    subnet: Ipv4Net,
    mut members: watch::Receiver<Vec<Peer>>,
    status: watch::Sender<OverlayStatus>,
) {
    loop {
        let peers = members.borrow_and_update().clone();
        let listed: Vec<(String, Ipv4Addr)> = peers
            .iter()
            .filter(|p| p.subnet != subnet)
            .map(|p| (p.subnet.to_string(), p.vtep_ip))
            .collect();
        let result = overlay.apply(&OverlayState { peers }).await;
        if let Err(err) = &result {
            warn!(error = %err, "overlay reconcile failed; retrying");
        }
        status.send_modify(|s| {
            s.peers = listed;
            match result {
                Ok(_) => {
                    s.reconciled_at = crate::task::now();
                    s.error = None;
                }
                Err(err) => s.error = Some(err.to_string()),
            }
        });
        tokio::select! {
            changed = members.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

/// Refuses to go on when no subnet could be leased.
pub(crate) fn no_free_subnet(pool: Ipv4Net) -> anyhow::Error {
    anyhow::anyhow!("no free overlay subnet in {pool}")
}

/// The device holding `ip` (the underlay of the VTEP), from `ip -o -4 addr`.
pub fn device_with_address(ip: Ipv4Addr) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("running ip addr")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let (Some(dev), Some(addr)) = (fields.get(1), fields.get(3))
            && addr.split('/').next() == Some(&ip.to_string())
        {
            return Ok(dev.trim_end_matches(':').to_string());
        }
    }
    bail!("no device holds {ip}: pass --overlay-underlay")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_start_with_the_saved_lease_and_cover_the_pool_once() {
        let pool: Ipv4Net = "9.0.0.0/16".parse().unwrap();
        let saved: Ipv4Net = "9.0.42.0/24".parse().unwrap();
        let list = subnet_candidates(pool, 24, Some(saved), "10.0.0.3".parse().unwrap());
        assert_eq!(list[0], saved);
        assert_eq!(list.len(), 255, "256 subnets minus the pool's first");
        let unique: std::collections::BTreeSet<_> = list.iter().collect();
        assert_eq!(unique.len(), list.len());
        assert!(
            list.iter()
                .all(|n| pool.contains(n.network()) && n.prefix() == 24)
        );
        assert!(!list.contains(&"9.0.0.0/24".parse().unwrap()));
    }
}
