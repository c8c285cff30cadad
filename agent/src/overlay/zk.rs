//! Overlay membership in ZooKeeper (cluster mode).
//!
//! Each node holds one EPHEMERAL znode `/berth/overlay/members/<a.b.c.d>_<prefix>` named after
//! its subnet, whose data is `{"vtep_ip": ..., "hostname": ...}`. Creating the znode is taking the
//! lease: a subnet another node holds gives `NODE_EXISTS` and the next one is tried (the node
//! waits for its own previous znode to expire when it finds it). When a node dies its session
//! expires and its znode disappears by itself; the others' child watch fires and the members
//! they publish lose it.

use std::time::Duration;

use anyhow::{Context, bail};
use berth_net::{Ipv4Net, overlay::Peer};
use tokio::sync::{broadcast::error::RecvError, watch};
use tracing::{info, warn};

use super::{Joined, Member, OverlaySettings, RECONCILE_EVERY, no_free_subnet, subnet_candidates};
use crate::mesos::{
    detector::{self, MasterSource},
    zk::{Acl, SessionState, ZkClient, ZkError, code, create_flags},
};

/// Where members live in ZooKeeper.
pub const MEMBERS_PATH: &str = "/berth/overlay/members";

fn znode_name(subnet: Ipv4Net) -> String {
    format!("{}_{}", subnet.network(), subnet.prefix())
}

fn subnet_of_znode(name: &str) -> Option<Ipv4Net> {
    let (ip, prefix) = name.split_once('_')?;
    format!("{ip}/{prefix}").parse().ok()
}

/// Takes a lease in ZooKeeper and follows the members.
pub(crate) async fn join(
    url: &str,
    session_timeout: Duration,
    settings: &OverlaySettings,
    saved: Option<Ipv4Net>,
    member: &Member,
) -> anyhow::Result<Joined> {
    let MasterSource::ZooKeeper(url) = detector::parse_master(url)? else {
        bail!("--overlay-zk must be a zk:// URL, got {url}");
    };
    let (client, acl) = detector::zk_session(&url, session_timeout)?;
    client
        .wait_connected(session_timeout * 3)
        .await
        .context("connecting to ZooKeeper for the overlay")?;
    client.create_all(MEMBERS_PATH, &acl).await?;
    let data = serde_json::to_vec(member)?;
    let subnet = lease(&client, &acl, settings, session_timeout, saved, &data).await?;
    let peers = read_peers(&client).await.unwrap_or_default();
    let (peers_tx, peers) = watch::channel(peers);
    tokio::spawn(follow(client, acl, subnet, data, peers_tx));
    Ok(Joined { subnet, peers })
}

/// Takes the first free candidate subnet by creating its znode.
async fn lease(
    client: &ZkClient,
    acl: &[Acl],
    settings: &OverlaySettings,
    session_timeout: Duration,
    saved: Option<Ipv4Net>,
    member: &[u8],
) -> anyhow::Result<Ipv4Net> {
    for subnet in subnet_candidates(settings.pool, settings.prefix, saved, settings.vtep_ip) {
        let path = format!("{MEMBERS_PATH}/{}", znode_name(subnet));
        // Our own znode from a session that has not expired yet: wait for it to go.
        let deadline = tokio::time::Instant::now() + session_timeout * 3;
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
    Err(no_free_subnet(settings.pool))
}

async fn read_peers(client: &ZkClient) -> Result<Vec<Peer>, ZkError> {
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

/// Publishes the members on every watch event (and every [`RECONCILE_EVERY`]); re-creates our
/// znode after a session expiry.
async fn follow(
    client: ZkClient,
    acl: Vec<Acl>,
    subnet: Ipv4Net,
    member: Vec<u8>,
    peers_tx: watch::Sender<Vec<Peer>>,
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
                    peers_tx.send_if_modified(|current| {
                        let changed = *current != peers;
                        *current = peers;
                        changed
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
            _ = peers_tx.closed() => return,
        }
    }
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
}
