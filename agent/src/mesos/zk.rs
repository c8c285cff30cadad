//! A ZooKeeper client written for berth (no ZooKeeper C library), enough for leader detection.
//!
//! One background task owns the session: it connects to a server of the ensemble (shuffled, in
//! turn, with backoff after a full round), keeps the connection alive with pings, matches replies
//! to requests (ZooKeeper answers in order on one connection), and publishes
//! - the session state on a `watch` channel ([`SessionState`]), and
//! - watch notifications on a `broadcast` channel ([`WatchedEvent`]).
//!
//! Session rules (those of the Java/C clients and of Mesos' `GroupProcess`):
//! - a lost connection is re-established with the same session id and password, to any server;
//! - the server answering a reconnect with timeout 0 means the session expired there;
//! - disconnected for longer than the negotiated session timeout, the session is expired locally
//!   (Mesos does this so a partitioned client stops trusting its view after the timeout);
//! - after an expiry a new session is created at once: [`SessionState::Expired`] is published
//!   first, so users drop what the old session owned (ephemeral nodes, leaders they saw).
//!
//! Watches live on the server per connection and this client does not replay them
//! (`SetWatches`): users re-arm their watches on every [`SessionState::Connected`], which
//! carries a connection counter for that purpose.
//!
//! Dropping the last [`ZkClient`] handle drops the connection without closing the session (as a
//! crashed process would): the server expires it after the timeout. [`ZkClient::close`] ends it
//! at once, deleting its ephemeral nodes.

mod proto;
mod session;

use std::{sync::Arc, time::Duration};

use thiserror::Error;
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
};

pub use proto::{Acl, JuteError, Stat, create_flags, perms};
use proto::{Reader, Writer, op};

/// ZooKeeper error codes (`KeeperException.Code`) berth looks at.
pub mod code {
    /// The node does not exist.
    pub const NO_NODE: i32 = -101;
    /// Not authorised.
    pub const NO_AUTH: i32 = -102;
    /// The node already exists.
    pub const NODE_EXISTS: i32 = -110;
    /// The session expired.
    pub const SESSION_EXPIRED: i32 = -112;
    /// Authentication failed.
    pub const AUTH_FAILED: i32 = -115;
}

/// The name of a ZooKeeper error code, for messages.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        -1 => "SYSTEMERROR",
        -2 => "RUNTIMEINCONSISTENCY",
        -3 => "DATAINCONSISTENCY",
        -4 => "CONNECTIONLOSS",
        -5 => "MARSHALLINGERROR",
        -6 => "UNIMPLEMENTED",
        -7 => "OPERATIONTIMEOUT",
        -8 => "BADARGUMENTS",
        -100 => "APIERROR",
        -101 => "NONODE",
        -102 => "NOAUTH",
        -103 => "BADVERSION",
        -108 => "NOCHILDRENFOREPHEMERALS",
        -110 => "NODEEXISTS",
        -111 => "NOTEMPTY",
        -112 => "SESSIONEXPIRED",
        -114 => "INVALIDACL",
        -115 => "AUTHFAILED",
        -118 => "SESSIONMOVED",
        -119 => "NOTREADONLY",
        _ => "UNKNOWN",
    }
}

/// A failed ZooKeeper operation.
#[derive(Debug, Error)]
pub enum ZkError {
    /// The server answered with an error code.
    #[error("ZooKeeper {op} '{path}' failed: {} ({code})", code_name(*code))]
    Server {
        /// Operation.
        op: &'static str,
        /// Node path.
        path: String,
        /// ZooKeeper error code (see [`code`]).
        code: i32,
    },
    /// The connection was lost (or not established) before the answer came.
    #[error("ZooKeeper {op} '{path}': connection lost before the answer")]
    ConnectionLoss {
        /// Operation.
        op: &'static str,
        /// Node path.
        path: String,
    },
    /// The answer does not decode.
    #[error("ZooKeeper {op} '{path}': bad answer: {source}")]
    Decode {
        /// Operation.
        op: &'static str,
        /// Node path.
        path: String,
        /// Why.
        source: JuteError,
    },
    /// The client was closed.
    #[error("ZooKeeper client is closed")]
    Closed,
    /// No session was established in time.
    #[error("no ZooKeeper server of '{servers}' gave a session within {waited:?}")]
    NotConnected {
        /// The connect string.
        servers: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// A server address does not parse.
    #[error("bad ZooKeeper server address '{address}' in '{servers}'")]
    BadServer {
        /// The address.
        address: String,
        /// The connect string.
        servers: String,
    },
}

impl ZkError {
    /// The ZooKeeper error code of a [`ZkError::Server`].
    pub fn code(&self) -> Option<i32> {
        match self {
            ZkError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Credentials sent with `addAuth` on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkAuth {
    /// Scheme, e.g. `digest`.
    pub scheme: String,
    /// Credentials, e.g. `user:password` for `digest`.
    pub credentials: Vec<u8>,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ZkOptions {
    /// Requested session timeout (the server clamps it to its min/max).
    pub session_timeout: Duration,
    /// Authentication, if any.
    pub auth: Option<ZkAuth>,
}

impl Default for ZkOptions {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            auth: None,
        }
    }
}

/// The session as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No session yet (first connection, or after an expiry).
    Connecting,
    /// Connected; `connection` counts connections, so a change means watches must be re-armed.
    Connected {
        /// Session id.
        session_id: i64,
        /// Connection counter.
        connection: u64,
    },
    /// The connection was lost; reconnecting within the same session.
    Disconnected {
        /// Session id.
        session_id: i64,
    },
    /// The session expired (server said so, or no server for the whole timeout); a new
    /// session is being created.
    Expired {
        /// The expired session.
        session_id: i64,
    },
    /// The server refused the credentials; the client stopped.
    AuthFailed,
    /// Closed by [`ZkClient::close`].
    Closed,
}

/// Node event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A node was created (exists watch).
    NodeCreated,
    /// A node was deleted.
    NodeDeleted,
    /// A node's data changed.
    NodeDataChanged,
    /// A node's children changed.
    NodeChildrenChanged,
    /// Another event type.
    Other(i32),
}

/// A watch notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedEvent {
    /// What happened.
    pub event_type: EventType,
    /// To which node.
    pub path: String,
}

/// One ZooKeeper server of the ensemble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// Host name or IP (without brackets).
    pub host: String,
    /// Client port.
    pub port: u16,
}

/// Parses a connect string `host1:2181,host2,[::1]:2182` (port 2181 when missing).
pub fn parse_servers(servers: &str) -> Result<Vec<ServerAddr>, ZkError> {
    let bad = |address: &str| ZkError::BadServer {
        address: address.to_string(),
        servers: servers.to_string(),
    };
    let mut out = Vec::new();
    for part in servers.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad(part));
        }
        let (host, port) = if let Some(rest) = part.strip_prefix('[') {
            let (host, tail) = rest.split_once(']').ok_or_else(|| bad(part))?;
            match tail {
                "" => (host, None),
                t => (host, Some(t.strip_prefix(':').ok_or_else(|| bad(part))?)),
            }
        } else {
            match part.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return Err(bad(part)),
                Some((h, p)) => (h, Some(p)),
                None => (part, None),
            }
        };
        let port = match port {
            None => 2181,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(part))?,
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad(part));
        }
        out.push(ServerAddr {
            host: host.to_string(),
            port,
        });
    }
    Ok(out)
}

type Reply = Result<Vec<u8>, ZkError>;

enum Command {
    Request {
        opcode: i32,
        name: &'static str,
        path: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Reply>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A handle on a ZooKeeper session. Cheap to clone; the session ends when [`ZkClient::close`]
/// is called or the last handle is dropped (see the module docs).
#[derive(Clone)]
pub struct ZkClient {
    inner: Arc<Inner>,
}

struct Inner {
    servers: String,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<SessionState>,
    events: broadcast::Sender<WatchedEvent>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for ZkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkClient")
            .field("servers", &self.inner.servers)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl ZkClient {
    /// Starts a session with the ensemble `servers` (a connect string, see [`parse_servers`]).
    /// Returns at once; use [`ZkClient::wait_connected`] or [`ZkClient::state`] to follow it.
    /// Must be called inside a tokio runtime.
    pub fn start(servers: &str, options: ZkOptions) -> Result<Self, ZkError> {
        let addrs = parse_servers(servers)?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(SessionState::Connecting);
        let (events, _) = broadcast::channel(256);
        let task = session::spawn(addrs, options, commands_rx, state_tx, events.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                servers: servers.to_string(),
                commands,
                state,
                events,
                task,
            }),
        })
    }

    /// The session state.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.clone()
    }

    /// Watch notifications from now on.
    pub fn events(&self) -> broadcast::Receiver<WatchedEvent> {
        self.inner.events.subscribe()
    }

    /// Waits until the client is connected; returns the session id.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<i64, ZkError> {
        let mut state = self.state();
        let wait = async {
            loop {
                match *state.borrow_and_update() {
                    SessionState::Connected { session_id, .. } => return Ok(session_id),
                    SessionState::Closed | SessionState::AuthFailed => return Err(ZkError::Closed),
                    _ => {}
                }
                if state.changed().await.is_err() {
                    return Err(ZkError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(ZkError::NotConnected {
                    servers: self.inner.servers.clone(),
                    waited: timeout,
                })
            })
    }

    async fn call(
        &self,
        opcode: i32,
        name: &'static str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ZkError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Request {
            opcode,
            name,
            path: path.to_string(),
            body,
            reply,
        };
        self.inner.commands.send(cmd).map_err(|_| ZkError::Closed)?;
        rx.await.unwrap_or(Err(ZkError::Closed))
    }

    /// Creates a node; returns its path (with the sequence suffix for sequential nodes).
    pub async fn create(
        &self,
        path: &str,
        data: &[u8],
        acl: &[Acl],
        flags: i32,
    ) -> Result<String, ZkError> {
        let mut w = Writer::new();
        w.string(path).buffer(Some(data)).acls(acl).int(flags);
        let rsp = self
            .call(op::CREATE, "create", path, w.into_bytes())
            .await?;
        Reader::new(&rsp)
            .string("path")
            .map_err(|source| decode("create", path, source))
    }

    /// Creates `path` and its missing parents as persistent nodes; existing ones are fine.
    pub async fn create_all(&self, path: &str, acl: &[Acl]) -> Result<(), ZkError> {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            match self
                .create(&prefix, b"", acl, create_flags::PERSISTENT)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some(code::NODE_EXISTS) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes a node (`version` -1 = any).
    pub async fn delete(&self, path: &str, version: i32) -> Result<(), ZkError> {
        let mut w = Writer::new();
        w.string(path).int(version);
        self.call(op::DELETE, "delete", path, w.into_bytes())
            .await
            .map(|_| ())
    }

    /// The node's stat, or None; `watch` sets an exists watch either way.
    pub async fn exists(&self, path: &str, watch: bool) -> Result<Option<Stat>, ZkError> {
        let mut w = Writer::new();
        w.string(path).boolean(watch);
        match self.call(op::EXISTS, "exists", path, w.into_bytes()).await {
            Ok(rsp) => Stat::read(&mut Reader::new(&rsp))
                .map(Some)
                .map_err(|source| decode("exists", path, source)),
            Err(e) if e.code() == Some(code::NO_NODE) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The node's children (names, not paths) and stat; `watch` sets a child watch.
    pub async fn get_children(
        &self,
        path: &str,
        watch: bool,
    ) -> Result<(Vec<String>, Stat), ZkError> {
        let mut w = Writer::new();
        w.string(path).boolean(watch);
        let rsp = self
            .call(op::GET_CHILDREN2, "getChildren", path, w.into_bytes())
            .await?;
        let mut r = Reader::new(&rsp);
        let children = r
            .strings("children")
            .map_err(|s| decode("getChildren", path, s))?;
        let stat = Stat::read(&mut r).map_err(|s| decode("getChildren", path, s))?;
        Ok((children, stat))
    }

    /// The node's data and stat; `watch` sets a data watch.
    pub async fn get_data(&self, path: &str, watch: bool) -> Result<(Vec<u8>, Stat), ZkError> {
        let mut w = Writer::new();
        w.string(path).boolean(watch);
        let rsp = self
            .call(op::GET_DATA, "getData", path, w.into_bytes())
            .await?;
        let mut r = Reader::new(&rsp);
        let data = r.buffer("data").map_err(|s| decode("getData", path, s))?;
        let data = data.unwrap_or_default().to_vec();
        let stat = Stat::read(&mut r).map_err(|s| decode("getData", path, s))?;
        Ok((data, stat))
    }

    /// Closes the session (its ephemeral nodes go at once) and stops the client.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.inner.commands.send(Command::Close { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

fn decode(op: &'static str, path: &str, source: JuteError) -> ZkError {
    ZkError::Decode {
        op,
        path: path.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests;
