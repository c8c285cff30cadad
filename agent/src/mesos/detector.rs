//! Finding the leading Mesos master from `--master`.
//!
//! `--master` takes what `mesos-agent --master` takes:
//! - `HOST:PORT` or `master@HOST:PORT`: a fixed master;
//! - `zk://[user:password@]host1:2181,host2:2181/mesos`: the masters' ZooKeeper group;
//! - `file:///path`: a file holding one of the above (deprecated in Mesos, still accepted).
//!
//! With ZooKeeper the detector follows Mesos' `ZooKeeperMasterDetector`: it watches the
//! children of the group's znode; members are the children named `[label_]sequence`, and the
//! leader is the member with the lowest sequence (masters elect themselves by that rule). The
//! leader's data is its `MasterInfo`, as JSON for label `json.info` (what Mesos ≥ 0.24 masters
//! write), as protobuf for `info`, as a pid string without label. Only the leader's data is
//! read: a bad node that is not the leader is ignored, a leader whose data does not parse gives
//! "no leader" and an error log until the group changes.
//!
//! While the ZooKeeper connection is lost the last leader is kept; when the session expires
//! (on the server, or locally after the session timeout without a server), the leader becomes
//! None, as in Mesos. The group znode is created if missing (Mesos' group does the same).
//!
//! Consumers get a `watch::Receiver<Option<MasterLeader>>` from [`MasterDetector::leader`].

mod parse;

use std::{net::IpAddr, path::PathBuf, time::Duration};

use thiserror::Error;
use tokio::{
    sync::{broadcast::error::RecvError, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

pub use parse::{
    MasterInfoError, MasterLeader, Membership, ZkUrl, ipv4_from_network_order, leader_of,
    membership, parse_leader_data, parse_master_info_json, parse_master_info_protobuf, parse_pid,
};

use super::zk::{Acl, SessionState, ZkAuth, ZkClient, ZkError, ZkOptions, code};

/// Mesos' `MASTER_DETECTOR_ZK_SESSION_TIMEOUT` (the agent's `--zk_session_timeout` default).
pub const DEFAULT_ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Retry interval after a failed ZooKeeper read (Mesos' `GroupProcess::RETRY_INTERVAL`),
/// doubled up to [`MAX_RETRY`].
const RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// A `--master` value that cannot be used.
#[derive(Debug, Error)]
pub enum DetectError {
    /// The value does not parse.
    #[error("bad --master '{value}': {reason}")]
    BadMaster {
        /// The value (password hidden).
        value: String,
        /// Why.
        reason: String,
    },
    /// A `file://` value names a file that cannot be read.
    #[error("cannot read the master from file '{}'", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// The host of a fixed master does not resolve.
    #[error("cannot resolve master host '{host}'")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver error.
        source: std::io::Error,
    },
    /// The ZooKeeper client did not start.
    #[error("ZooKeeper client for {url}")]
    ZooKeeper {
        /// The URL (password hidden).
        url: String,
        /// The client error.
        source: ZkError,
    },
}

/// Where the master comes from, as parsed from `--master`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterSource {
    /// A fixed master: host (name or IP) and port.
    Static {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// A ZooKeeper group.
    ZooKeeper(ZkUrl),
}

/// Parses a `--master` value; `file://` values are read (up to 4 levels of indirection).
pub fn parse_master(value: &str) -> Result<MasterSource, DetectError> {
    let mut value = value.trim().to_string();
    for _ in 0..4 {
        if let Some(path) = value.strip_prefix("file://") {
            warn!(path, "reading --master from a file is deprecated in Mesos");
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path).map_err(|source| DetectError::ReadFile {
                path: path.clone(),
                source,
            })?;
            value = text.trim().to_string();
            continue;
        }
        if value.starts_with("zk://") {
            return ZkUrl::parse(&value).map(MasterSource::ZooKeeper);
        }
        return parse_static(&value);
    }
    Err(DetectError::BadMaster {
        value: parse::redact(&value),
        reason: "too many file:// indirections".into(),
    })
}

fn parse_static(value: &str) -> Result<MasterSource, DetectError> {
    let bad = |reason: &str| DetectError::BadMaster {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let addr = value.strip_prefix("master@").unwrap_or(value);
    if addr.contains('@') || addr.contains('/') {
        return Err(bad(
            "expecting HOST:PORT, master@HOST:PORT, zk://... or file://...",
        ));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
    let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(h) => (h, true),
        None => (host, false),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port is not a number in 1..65535"))?;
    if host.is_empty() || (host.contains(':') && (!bracketed || host.parse::<IpAddr>().is_err())) {
        return Err(bad("bad host (write an IPv6 address as [ADDR]:PORT)"));
    }
    Ok(MasterSource::Static {
        host: host.to_string(),
        port,
    })
}

/// Detector settings.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// ZooKeeper session timeout (`--zk_session_timeout`).
    pub zk_session_timeout: Duration,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            zk_session_timeout: DEFAULT_ZK_SESSION_TIMEOUT,
        }
    }
}

/// Follows the leading master. Dropping it stops detection.
#[derive(Debug)]
pub struct MasterDetector {
    leader: watch::Receiver<Option<MasterLeader>>,
    // Kept so receivers never see the channel closed for a fixed master.
    _sender: Option<watch::Sender<Option<MasterLeader>>>,
    client: Option<ZkClient>,
    task: Option<JoinHandle<()>>,
}

impl Drop for MasterDetector {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl MasterDetector {
    /// The leading master (None while there is none or it is unknown).
    pub fn leader(&self) -> watch::Receiver<Option<MasterLeader>> {
        self.leader.clone()
    }

    /// Stops detection and closes the ZooKeeper session.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(client) = self.client.take() {
            client.close().await;
        }
    }
}

/// Starts detecting the master named by `--master` (see the module docs), with Mesos' default
/// session timeout. Returns once the value is parsed; with ZooKeeper the leader appears on
/// [`MasterDetector::leader`] when known.
pub async fn detect(master: &str) -> Result<MasterDetector, DetectError> {
    detect_with(master, DetectOptions::default()).await
}

/// A ZooKeeper session for a `zk://` URL (digest auth from its credentials) and the ACL that
/// nodes created in it get (creator-only writes when authenticated, open otherwise).
pub fn zk_session(
    url: &ZkUrl,
    session_timeout: Duration,
) -> Result<(ZkClient, Vec<Acl>), DetectError> {
    let auth = url.credentials.as_ref().map(|c| ZkAuth {
        scheme: "digest".into(),
        credentials: c.as_bytes().to_vec(),
    });
    let acl = if auth.is_some() {
        Acl::everyone_read_creator_all()
    } else {
        Acl::open_unsafe()
    };
    let options = ZkOptions {
        session_timeout,
        auth,
    };
    let client =
        ZkClient::start(&url.servers, options).map_err(|source| DetectError::ZooKeeper {
            url: url.to_string(),
            source,
        })?;
    Ok((client, acl))
}

/// [`detect`] with settings.
pub async fn detect_with(
    master: &str,
    options: DetectOptions,
) -> Result<MasterDetector, DetectError> {
    match parse_master(master)? {
        MasterSource::Static { host, port } => {
            let leader = static_leader(&host, port).await?;
            info!(pid = leader.pid, "using the master given by --master");
            let (tx, rx) = watch::channel(Some(leader));
            Ok(MasterDetector {
                leader: rx,
                _sender: Some(tx),
                client: None,
                task: None,
            })
        }
        MasterSource::ZooKeeper(url) => {
            let (client, acl) = zk_session(&url, options.zk_session_timeout)?;
            info!(url = %url, "detecting the leading master from ZooKeeper");
            let (tx, rx) = watch::channel(None);
            let follower = GroupFollower {
                client: client.clone(),
                path: url.path.clone(),
                acl,
                leader: tx,
                current: None,
            };
            let task = tokio::spawn(follower.run());
            Ok(MasterDetector {
                leader: rx,
                _sender: None,
                client: Some(client),
                task: Some(task),
            })
        }
    }
}

async fn static_leader(host: &str, port: u16) -> Result<MasterLeader, DetectError> {
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| DetectError::Resolve {
                host: host.to_string(),
                source,
            })?
            .map(|a| a.ip())
            .find(IpAddr::is_ipv4)
            .ok_or_else(|| DetectError::Resolve {
                host: host.to_string(),
                source: std::io::Error::other("no IPv4 address"),
            })?,
    };
    let pid = match ip {
        IpAddr::V4(v4) => format!("master@{v4}:{port}"),
        IpAddr::V6(v6) => format!("master@[{v6}]:{port}"),
    };
    Ok(MasterLeader {
        id: pid.clone(),
        pid,
        ip,
        port,
        hostname: host.parse::<IpAddr>().is_err().then(|| host.to_string()),
        version: None,
        znode: None,
    })
}

/// The task following a ZooKeeper group.
struct GroupFollower {
    client: ZkClient,
    path: String,
    acl: Vec<Acl>,
    leader: watch::Sender<Option<MasterLeader>>,
    /// The leading member last read (its data published, or refused).
    current: Option<String>,
}

/// What one look at the group found.
enum Sync {
    Done,
    /// The connection went; wait for the next one.
    ConnectionLost,
    /// Another error: retry after a delay.
    Failed(ZkError),
}

impl GroupFollower {
    async fn run(mut self) {
        let mut state = self.client.state();
        let mut retry = RETRY;
        loop {
            // Wait for a connection.
            let connection = loop {
                let s = *state.borrow_and_update();
                match s {
                    SessionState::Connected { connection, .. } => break connection,
                    SessionState::Expired { .. } => {
                        self.current = None;
                        self.publish(None, "the ZooKeeper session expired");
                    }
                    SessionState::Closed | SessionState::AuthFailed => {
                        self.current = None;
                        self.publish(None, "the ZooKeeper client stopped");
                        return;
                    }
                    SessionState::Connecting | SessionState::Disconnected { .. } => {}
                }
                if state.changed().await.is_err() {
                    return;
                }
            };
            // Subscribe before reading, so no notification falls in between.
            let mut events = self.client.events();
            let mut delay = None;
            match self.sync().await {
                Sync::Done => retry = RETRY,
                Sync::ConnectionLost => {}
                Sync::Failed(e) => {
                    error!(path = self.path, error = %e, retry_in_s = retry.as_secs(), "cannot read the masters' ZooKeeper group");
                    delay = Some(tokio::time::sleep(retry));
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
            // Wait for the group, the session, or the retry delay.
            let sleep = async {
                match delay {
                    Some(d) => d.await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.path == self.path => break,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    },
                    changed = state.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let still = matches!(*state.borrow(),
                            SessionState::Connected { connection: c, .. } if c == connection);
                        if !still {
                            break;
                        }
                    }
                    _ = &mut sleep => break,
                }
            }
        }
    }

    /// Reads the group (arming the child watch) and publishes its leader.
    async fn sync(&mut self) -> Sync {
        let children = match self.client.get_children(&self.path, true).await {
            Ok((children, _)) => children,
            Err(e) if e.code() == Some(code::NO_NODE) => {
                match self.client.create_all(&self.path, &self.acl).await {
                    Ok(()) => info!(path = self.path, "created the masters' group znode"),
                    Err(e) if e.code() == Some(code::NO_AUTH) => {}
                    Err(e) => return self.failed(e),
                }
                match self.client.get_children(&self.path, true).await {
                    Ok((children, _)) => children,
                    Err(e) => return self.failed(e),
                }
            }
            Err(e) => return self.failed(e),
        };
        let Some(member) = leader_of(&children) else {
            self.current = None;
            self.publish(None, "no master in the ZooKeeper group");
            return Sync::Done;
        };
        if self.current.as_deref() == Some(member.name.as_str()) {
            return Sync::Done;
        }
        let node = format!("{}/{}", self.path, member.name);
        match self.client.get_data(&node, false).await {
            Ok((data, _)) => {
                self.current = Some(member.name.clone());
                match parse_leader_data(&member, &data) {
                    Ok(leader) => self.publish(Some(leader), "new leading master"),
                    Err(e) => {
                        error!(
                            znode = node,
                            error = %e,
                            data = %String::from_utf8_lossy(&data[..data.len().min(512)]),
                            "the leading master's ZooKeeper node does not hold a MasterInfo; no leader until the group changes"
                        );
                        self.publish(None, "the leader's data is invalid");
                    }
                }
                Sync::Done
            }
            // Gone between the listing and the read: the child watch fires next.
            Err(e) if e.code() == Some(code::NO_NODE) => {
                self.current = None;
                self.publish(None, "the leading master's node vanished");
                Sync::Done
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, e: ZkError) -> Sync {
        match e {
            ZkError::ConnectionLoss { .. } | ZkError::Closed => Sync::ConnectionLost,
            e if e.code() == Some(code::SESSION_EXPIRED) => Sync::ConnectionLost,
            e => Sync::Failed(e),
        }
    }

    fn publish(&self, leader: Option<MasterLeader>, why: &str) {
        let changed = self.leader.send_if_modified(|cur| {
            if *cur == leader {
                return false;
            }
            *cur = leader.clone();
            true
        });
        if changed {
            match &leader {
                Some(l) => info!(
                    pid = l.pid,
                    znode = l.znode.as_deref().unwrap_or(""),
                    version = l.version.as_deref().unwrap_or(""),
                    "a new leading master is detected"
                ),
                None => warn!(reason = why, path = self.path, "no leading master"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
