//! The node's place on the VXLAN overlay (`--overlay`): its subnet lease and its peers, kept in
//! ZooKeeper, and the kernel state reconciled from them by `berth_net::overlay`.
//!
//! Each node holds one EPHEMERAL znode `/berth/overlay/members/<a.b.c.d>_<prefix>` named after
//! its subnet, whose data is `{"vtep_ip": ..., "hostname": ...}`. Creating the znode is taking the
//! lease: a subnet another node holds gives `NODE_EXISTS` and the next one is tried. The subnet is
//! remembered in `<work-dir>/meta/overlay.json`, so a node that comes back asks for the same one
//! first (and waits for its own previous znode to expire when it finds it). When a node dies its
//! session expires and its znode disappears by itself; the others' child watch fires and their
//! reconcile deletes its routes, neighbours and FDB entries. Every node also reconciles
//! periodically, which repairs hand-made damage and missed events.

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
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use crate::{
    checkpoint,
    mesos::{
        detector::{self, MasterSource},
        zk::{SessionState, ZkClient, code, create_flags},
    },
};

/// Where members live in ZooKeeper.
pub const MEMBERS_PATH: &str = "/berth/overlay/members";
/// How often the kernel is reconciled without a membership change.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// How the node joins.
#[derive(Debug, Clone)]
pub struct OverlaySettings {
    /// `zk://host:port,.../path` (the path part is ignored: members live under [`MEMBERS_PATH`]).
    pub zk: String,
    /// ZooKeeper session timeout: a dead node's lease lasts this long.
    pub session_timeout: Duration,
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
    pub status: tokio::sync::watch::Receiver<OverlayStatus>,
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
    /// The other members: subnet and VTEP address.
    pub peers: Vec<(String, Ipv4Addr)>,
    /// Unix time of the last successful reconcile.
    pub reconciled_at: f64,
    /// The last reconcile's error, if it failed.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Member {
    vtep_ip: Ipv4Addr,
    #[serde(default)]
    hostname: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedLease {
    subnet: Ipv4Net,
}

fn znode_name(subnet: Ipv4Net) -> String {
    format!("{}_{}", subnet.network(), subnet.prefix())
}

fn subnet_of_znode(name: &str) -> Option<Ipv4Net> {
    let (ip, prefix) = name.split_once('_')?;
    format!("{ip}/{prefix}").parse().ok()
}

/// The candidate subnets, the saved one first, then from a spot derived from the VTEP address
/// (so nodes starting together rarely race for the same one).
fn candidates(pool: Ipv4Net, prefix: u8, saved: Option<Ipv4Net>, vtep: Ipv4Addr) -> Vec<Ipv4Net> {
    let count = 1u32 << (prefix.saturating_sub(pool.prefix())).min(16);
    let base = u32::from(pool.network());
    let size = 1u32 << (32 - u32::from(prefix));
    let start = u32::from(vtep) % count;
    let mut out: Vec<Ipv4Net> = saved.into_iter().collect();
    for i in 0..count {
        // Skip the pool's first subnet (its .0.0/24 holds the pool's network address).
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

/// Joins the overlay: takes a subnet lease, sets up the VXLAN device, and keeps the node's
/// routes, neighbours and FDB entries in step with the members until the process ends.
pub async fn join(settings: OverlaySettings) -> anyhow::Result<OverlayNode> {
    let MasterSource::ZooKeeper(url) = detector::parse_master(&settings.zk)? else {
        bail!("--overlay needs ZooKeeper: --overlay-zk zk://host:2181/... (or a zk:// --master)");
    };
    let (client, acl) = detector::zk_session(&url, settings.session_timeout)?;
    client
        .wait_connected(settings.session_timeout * 3)
        .await
        .context("connecting to ZooKeeper for the overlay")?;
    client.create_all(MEMBERS_PATH, &acl).await?;
    let saved = checkpoint::read_json::<SavedLease>(&settings.state_file)
        .ok()
        .flatten()
        .map(|s| s.subnet);
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let member = serde_json::to_vec(&Member {
        vtep_ip: settings.vtep_ip,
        hostname,
    })?;
    let subnet = lease(&client, &acl, &settings, saved, &member).await?;
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
    let peers = read_peers(&client).await.unwrap_or_default();
    overlay
        .apply(&OverlayState { peers })
        .await
        .context("setting up the VXLAN overlay")?;
    info!(%subnet, vtep = %settings.vtep_ip, mtu, "joined the overlay");
    let (status_tx, status) = tokio::sync::watch::channel(OverlayStatus {
        subnet: subnet.to_string(),
        vtep_ip: settings.vtep_ip,
        underlay_dev: settings.underlay_dev.clone(),
        mtu,
        peers: Vec::new(),
        reconciled_at: crate::task::now(),
        error: None,
    });
    tokio::spawn(follow(
        client,
        acl,
        Arc::new(overlay),
        subnet,
        member,
        status_tx,
    ));
    Ok(OverlayNode {
        subnet,
        mtu,
        status,
    })
}

/// Takes the first free candidate subnet by creating its znode.
async fn lease(
    client: &ZkClient,
    acl: &[crate::mesos::zk::Acl],
    settings: &OverlaySettings,
    saved: Option<Ipv4Net>,
    member: &[u8],
) -> anyhow::Result<Ipv4Net> {
    for subnet in candidates(settings.pool, settings.prefix, saved, settings.vtep_ip) {
        let path = format!("{MEMBERS_PATH}/{}", znode_name(subnet));
        // Our own znode from a session that has not expired yet: wait for it to go.
        let deadline = tokio::time::Instant::now() + settings.session_timeout * 3;
        loop {
            match client
                .create(&path, member, acl, create_flags::EPHEMERAL)
                .await
            {
                Ok(_) => {
                    info!(%subnet, "overlay subnet leased");
                    return Ok(subnet);
                }
                Err(err) if err.code() == Some(code::NODE_EXISTS) => {
                    let holder = client
                        .get_data(&path, false)
                        .await
                        .ok()
                        .and_then(|(data, _)| serde_json::from_slice::<Member>(&data).ok());
                    let ours = holder
                        .as_ref()
                        .is_some_and(|m| m.vtep_ip == settings.vtep_ip);
                    if ours && tokio::time::Instant::now() < deadline {
                        info!(%subnet, "our previous lease is still held by an old session: waiting for it to expire");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    break;
                }
                Err(err) => return Err(err).context("leasing an overlay subnet"),
            }
        }
    }
    bail!("no free overlay subnet in {}", settings.pool)
}

async fn read_peers(client: &ZkClient) -> Result<Vec<Peer>, crate::mesos::zk::ZkError> {
    let (children, _) = client.get_children(MEMBERS_PATH, true).await?;
    let mut peers = Vec::new();
    for child in children {
        let Some(subnet) = subnet_of_znode(&child) else {
            continue;
        };
        match client
            .get_data(&format!("{MEMBERS_PATH}/{child}"), false)
            .await
        {
            Ok((data, _)) => match serde_json::from_slice::<Member>(&data) {
                Ok(member) => peers.push(Peer::new(subnet, member.vtep_ip)),
                Err(err) => {
                    warn!(node = child, error = %err, "overlay member with bad data ignored")
                }
            },
            // Gone between the listing and the read.
            Err(err) if err.code() == Some(code::NO_NODE) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(peers)
}

/// Keeps the kernel in step with the members; re-creates our znode after a session expiry.
async fn follow(
    client: ZkClient,
    acl: Vec<crate::mesos::zk::Acl>,
    overlay: Arc<Overlay<RtnlOverlay>>,
    subnet: Ipv4Net,
    member: Vec<u8>,
    status: tokio::sync::watch::Sender<OverlayStatus>,
) {
    let mut events = client.events();
    let mut state = client.state();
    let own = format!("{MEMBERS_PATH}/{}", znode_name(subnet));
    loop {
        if matches!(*state.borrow_and_update(), SessionState::Connected { .. }) {
            // After an expiry our znode is gone: lease the same subnet again.
            if client.exists(&own, false).await.ok().flatten().is_none() {
                match client
                    .create(&own, &member, &acl, create_flags::EPHEMERAL)
                    .await
                {
                    Ok(_) => info!(%subnet, "overlay lease renewed in a new session"),
                    Err(err) => warn!(%subnet, error = %err, "renewing the overlay lease"),
                }
            }
            match read_peers(&client).await {
                Ok(peers) => {
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
                }
                Err(err) => warn!(error = %err, "reading overlay members"),
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            changed = state.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
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
    fn znode_names_round_trip() {
        let net: Ipv4Net = "9.0.7.0/24".parse().unwrap();
        assert_eq!(znode_name(net), "9.0.7.0_24");
        assert_eq!(subnet_of_znode("9.0.7.0_24"), Some(net));
        assert_eq!(subnet_of_znode("garbage"), None);
    }

    #[test]
    fn candidates_start_with_the_saved_lease_and_cover_the_pool_once() {
        let pool: Ipv4Net = "9.0.0.0/16".parse().unwrap();
        let saved: Ipv4Net = "9.0.42.0/24".parse().unwrap();
        let list = candidates(pool, 24, Some(saved), "10.0.0.3".parse().unwrap());
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
