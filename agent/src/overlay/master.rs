//! Overlay membership kept by the leading master (`--dev`, or a `berth master` named by a
//! host:port `--master`): the node asks the master for a lease on its subnet
//! (`POST /overlay/v1/lease`, see `crate::master::overlay_registry`), renews it every third of
//! the lease timeout, and follows the members with a long poll
//! (`GET /overlay/v1/members?after=V`). A node that stops renewing (dead, partitioned) expires
//! from the members after one lease timeout. When the leader changes the next renewal re-leases
//! the same subnet from the new master.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use berth_net::{Ipv4Net, overlay::Peer};
use reqwest::StatusCode;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Joined, Member, OverlaySettings};
use crate::{
    master::overlay_registry::{LeaseGrant, LeaseRequest, MembersView},
    mesos::detector::MasterLeader,
};

/// How long one members request may be held by the master, plus slack.
const MEMBERS_POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors talking to the master about the overlay.
#[derive(Debug, thiserror::Error)]
pub enum MasterMembershipError {
    /// No leading master is known.
    #[error("no leading master is known")]
    NoLeader,
    /// The request did not get through.
    #[error("overlay request to the master at {master}: {source}")]
    Http {
        /// The master's address.
        master: SocketAddr,
        /// Why.
        source: reqwest::Error,
    },
    /// The master answered with an error.
    #[error("the master at {master} refused the overlay request ({status}): {message}")]
    Refused {
        /// The master's address.
        master: SocketAddr,
        /// The status.
        status: StatusCode,
        /// Its message.
        message: String,
        /// Retry-After, when it said to retry.
        retry_after: Option<Duration>,
    },
}

impl MasterMembershipError {
    /// Whether trying again later may succeed (a master that recovers, is down or unknown).
    fn transient(&self) -> bool {
        match self {
            Self::NoLeader | Self::Http { .. } => true,
            Self::Refused { status, .. } => status.is_server_error(),
        }
    }
}

fn leader_address(
    leader: &watch::Receiver<Option<MasterLeader>>,
) -> Result<SocketAddr, MasterMembershipError> {
    leader
        .borrow()
        .as_ref()
        .map(|l| SocketAddr::new(l.ip, l.port))
        .ok_or(MasterMembershipError::NoLeader)
}

async fn refused(master: SocketAddr, response: reqwest::Response) -> MasterMembershipError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let message = response.text().await.unwrap_or_default();
    MasterMembershipError::Refused {
        master,
        status,
        message,
        retry_after,
    }
}

/// Sends `request` to the master at `master`; the JSON answer, or why not.
async fn call<T: serde::de::DeserializeOwned>(
    master: SocketAddr,
    request: reqwest::RequestBuilder,
) -> Result<T, MasterMembershipError> {
    let response = request
        .send()
        .await
        .map_err(|source| MasterMembershipError::Http { master, source })?;
    if !response.status().is_success() {
        return Err(refused(master, response).await);
    }
    response
        .json()
        .await
        .map_err(|source| MasterMembershipError::Http { master, source })
}

async fn request_lease(
    http: &reqwest::Client,
    leader: &watch::Receiver<Option<MasterLeader>>,
    request: &LeaseRequest,
) -> Result<LeaseGrant, MasterMembershipError> {
    let master = leader_address(leader)?;
    let builder = http
        .post(format!("http://{master}/overlay/v1/lease"))
        .json(request);
    call(master, builder).await
}

async fn poll_members(
    http: &reqwest::Client,
    leader: &watch::Receiver<Option<MasterLeader>>,
    after: u64,
) -> Result<MembersView, MasterMembershipError> {
    let master = leader_address(leader)?;
    let builder = http
        .get(format!("http://{master}/overlay/v1/members?after={after}"))
        .timeout(MEMBERS_POLL_TIMEOUT);
    call(master, builder).await
}

fn peers_of(view: &MembersView) -> Vec<Peer> {
    view.members
        .iter()
        .map(|m| Peer::new(m.subnet, m.vtep_ip))
        .collect()
}

/// Takes a lease from the leading master (retrying while it is unknown, unreachable or
/// recovering, up to `join_timeout`) and follows the members.
pub(crate) async fn join(
    mut leader: watch::Receiver<Option<MasterLeader>>,
    join_timeout: Duration,
    settings: &OverlaySettings,
    saved: Option<Ipv4Net>,
    member: &Member,
) -> anyhow::Result<Joined> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .context("HTTP client")?;
    let mut request = LeaseRequest {
        vtep_ip: member.vtep_ip,
        hostname: member.hostname.clone(),
        subnet: saved,
    };
    let deadline = tokio::time::Instant::now() + join_timeout;
    let grant = loop {
        match request_lease(&http, &leader, &request).await {
            Ok(grant) => break grant,
            Err(err) if err.transient() && tokio::time::Instant::now() < deadline => {
                let wait = match &err {
                    MasterMembershipError::Refused {
                        retry_after: Some(after),
                        ..
                    } => *after,
                    _ => Duration::from_millis(500),
                };
                info!(error = %err, "overlay lease not granted yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(5))) => {}
                    _ = leader.changed() => {}
                }
            }
            Err(err) => {
                return Err(err).context(format!(
                    "leasing an overlay subnet from the master (pool {})",
                    settings.pool
                ));
            }
        }
    };
    let subnet = grant.subnet;
    info!(%subnet, lease_timeout_ms = grant.lease_timeout_ms, "overlay subnet leased from the master");
    request.subnet = Some(subnet);
    let (peers_tx, peers) = watch::channel(peers_of(&grant.members));
    let renew_every =
        Duration::from_millis(grant.lease_timeout_ms / 3).max(Duration::from_millis(100));
    tokio::spawn(renew(http.clone(), leader.clone(), request, renew_every));
    tokio::spawn(follow(http, leader, grant.members.version, peers_tx));
    Ok(Joined { subnet, peers })
}

/// Renews the lease every `every`.
async fn renew(
    http: reqwest::Client,
    leader: watch::Receiver<Option<MasterLeader>>,
    request: LeaseRequest,
    every: Duration,
) {
    let subnet = request.subnet.expect("a renewal names its subnet");
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        match request_lease(&http, &leader, &request).await {
            Ok(grant) if grant.subnet == subnet => {
                if failing {
                    info!(%subnet, "overlay lease renewed again");
                }
                failing = false;
            }
            Ok(grant) => {
                // Cannot happen with berth's master (a held subnet is always renewed); a
                // node cannot move its containers to another subnet while it runs.
                warn!(%subnet, granted = %grant.subnet, "the master moved this node's overlay subnet; restart the agent");
            }
            Err(err) => {
                if !failing {
                    warn!(%subnet, error = %err, "renewing the overlay lease failed; retrying");
                }
                failing = true;
            }
        }
    }
}

/// Publishes the members as the master reports them.
async fn follow(
    http: reqwest::Client,
    leader: watch::Receiver<Option<MasterLeader>>,
    mut version: u64,
    peers_tx: watch::Sender<Vec<Peer>>,
) {
    loop {
        if peers_tx.is_closed() {
            return;
        }
        match poll_members(&http, &leader, version).await {
            Ok(view) => {
                version = view.version;
                let mut peers = peers_of(&view);
                peers_tx.send_if_modified(|current| {
                    if view.recovering {
                        // A new master still collecting leases: keep the members it has not
                        // heard from yet.
                        for old in current.iter() {
                            if !peers.iter().any(|p| p.subnet == old.subnet) {
                                peers.push(*old);
                            }
                        }
                        peers.sort();
                    }
                    let changed = *current != peers;
                    *current = peers;
                    changed
                });
            }
            Err(err) => {
                warn!(error = %err, "following the overlay members failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
