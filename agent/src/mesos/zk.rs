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

use std::{
    collections::VecDeque,
    hash::{BuildHasher, Hasher},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

pub use proto::{Acl, JuteError, Stat, create_flags, perms};
use proto::{ConnectRequest, ConnectResponse, Reader, ReplyHeader, WatcherEvent, Writer, op, xid};

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
        let mut addrs = parse_servers(servers)?;
        shuffle(&mut addrs);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(SessionState::Connecting);
        let (events, _) = broadcast::channel(256);
        let session = Session {
            servers: addrs,
            next: 0,
            options,
            id: 0,
            passwd: vec![0; 16],
            last_zxid: 0,
            negotiated: Duration::ZERO,
            connections: 0,
            commands: commands_rx,
            state: state_tx,
            events: events.clone(),
        };
        let task = tokio::spawn(session.run());
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

/// Fisher-Yates with the std hasher's per-process random keys (no rand dependency).
fn shuffle<T>(v: &mut [T]) {
    let seed = std::collections::hash_map::RandomState::new();
    for i in (1..v.len()).rev() {
        let mut h = seed.build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn jitter(max: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

/// How a connection ended.
enum Ended {
    Lost(String),
    Closed,
    AuthFailed,
}

struct Pending {
    xid: i32,
    name: &'static str,
    path: String,
    reply: Option<oneshot::Sender<Reply>>,
    close: Option<oneshot::Sender<()>>,
}

struct Session {
    servers: Vec<ServerAddr>,
    next: usize,
    options: ZkOptions,
    id: i64,
    passwd: Vec<u8>,
    last_zxid: i64,
    negotiated: Duration,
    connections: u64,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<SessionState>,
    events: broadcast::Sender<WatchedEvent>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

impl Session {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut failures_this_round = 0usize;
        let mut lost_at: Option<Instant> = None;
        loop {
            if self.id != 0 && lost_at.is_some_and(|t| t.elapsed() >= self.negotiated) {
                self.expire("no server reachable within the session timeout");
                lost_at = None;
            }
            let server = self.servers[self.next % self.servers.len()].clone();
            self.next = self.next.wrapping_add(1);
            match self.handshake(&server).await {
                Ok(Some((rd, wr))) => {
                    backoff = MIN_BACKOFF;
                    failures_this_round = 0;
                    self.connections += 1;
                    info!(
                        server = %format_args!("{}:{}", server.host, server.port),
                        session_id = %format_args!("{:#x}", self.id),
                        timeout_ms = self.negotiated.as_millis() as u64,
                        "ZooKeeper session connected"
                    );
                    self.state.send_replace(SessionState::Connected {
                        session_id: self.id,
                        connection: self.connections,
                    });
                    match self.serve(rd, wr).await {
                        Ended::Closed => {
                            self.state.send_replace(SessionState::Closed);
                            return;
                        }
                        Ended::AuthFailed => {
                            warn!(server = %server.host, "ZooKeeper refused the credentials");
                            self.state.send_replace(SessionState::AuthFailed);
                            return;
                        }
                        Ended::Lost(reason) => {
                            warn!(
                                server = %format_args!("{}:{}", server.host, server.port),
                                session_id = %format_args!("{:#x}", self.id),
                                reason,
                                "ZooKeeper connection lost; reconnecting"
                            );
                            lost_at = Some(Instant::now());
                            self.state.send_replace(SessionState::Disconnected {
                                session_id: self.id,
                            });
                        }
                    }
                }
                Ok(None) => {
                    self.expire("the server reports the session expired");
                    lost_at = None;
                }
                Err(reason) => {
                    debug!(server = %server.host, port = server.port, reason, "ZooKeeper connect failed");
                    if lost_at.is_none() && self.id != 0 {
                        lost_at = Some(Instant::now());
                    }
                    failures_this_round += 1;
                    if failures_this_round >= self.servers.len() {
                        failures_this_round = 0;
                        warn!(
                            servers = self.servers.len(),
                            retry_in_ms = backoff.as_millis() as u64,
                            last_error = reason,
                            "no ZooKeeper server reachable"
                        );
                        let wait = backoff + jitter(backoff / 2);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        if self.idle(wait).await {
                            self.state.send_replace(SessionState::Closed);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Drops the session: a new one is created by the next connection.
    fn expire(&mut self, why: &str) {
        warn!(session_id = %format_args!("{:#x}", self.id), why, "ZooKeeper session expired");
        self.state.send_replace(SessionState::Expired {
            session_id: self.id,
        });
        self.id = 0;
        self.passwd = vec![0; 16];
        self.last_zxid = 0;
    }

    /// Waits `wait` while failing requests (not connected). Returns true when closed.
    async fn idle(&mut self, wait: Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return false,
                cmd = self.commands.recv() => match cmd {
                    None => return true,
                    Some(Command::Close { done }) => {
                        let _ = done.send(());
                        return true;
                    }
                    Some(Command::Request { name, path, reply, .. }) => {
                        let _ = reply.send(Err(ZkError::ConnectionLoss { op: name, path }));
                    }
                },
            }
        }
    }

    fn session_timeout_ms(&self) -> i32 {
        i32::try_from(self.options.session_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// Connects and negotiates the session. `Ok(None)`: the session expired on the server.
    async fn handshake(
        &mut self,
        server: &ServerAddr,
    ) -> Result<Option<(OwnedReadHalf, OwnedWriteHalf)>, String> {
        // Java's client gives each server an equal share of the session timeout.
        let step = (self.options.session_timeout / self.servers.len() as u32)
            .max(Duration::from_millis(500));
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            step,
            tokio::net::lookup_host((server.host.as_str(), server.port)),
        )
        .await
        .map_err(|_| "name resolution timed out".to_string())?
        .map_err(|e| format!("name resolution: {e}"))?
        .collect();
        let addr = *addrs.first().ok_or("name resolves to no address")?;
        let mut stream = tokio::time::timeout(step, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: self.last_zxid,
            timeout_ms: self.session_timeout_ms(),
            session_id: self.id,
            passwd: self.passwd.clone(),
            read_only: false,
        };
        let rsp = tokio::time::timeout(step, async {
            stream.write_all(&req.frame()).await?;
            let len = stream.read_i32().await?;
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= proto::MAX_PACKET)
                .ok_or_else(|| std::io::Error::other(format!("bad packet length {len}")))?;
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        })
        .await
        .map_err(|_| "no session answer in time".to_string())?
        .map_err(|e| format!("session handshake: {e}"))?;
        let rsp = ConnectResponse::decode(&rsp).map_err(|e| format!("session answer: {e}"))?;
        if rsp.timeout_ms <= 0 {
            return Ok(None);
        }
        if self.id != 0 && rsp.session_id != self.id {
            return Err(format!(
                "server answered with another session {:#x}",
                rsp.session_id
            ));
        }
        self.id = rsp.session_id;
        self.passwd = rsp.passwd;
        self.negotiated = Duration::from_millis(rsp.timeout_ms as u64);
        let (rd, mut wr) = stream.into_split();
        if let Some(auth) = &self.options.auth {
            let mut w = Writer::new();
            w.int(0)
                .string(&auth.scheme)
                .buffer(Some(&auth.credentials));
            wr.write_all(&proto::request_frame(xid::AUTH, op::AUTH, &w.into_bytes()))
                .await
                .map_err(|e| format!("send auth: {e}"))?;
        }
        Ok(Some((rd, wr)))
    }

    /// Runs one connection until it is lost or the client closes.
    async fn serve(&mut self, mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf) -> Ended {
        let read_timeout = self.negotiated * 2 / 3;
        let ping_every = self.negotiated / 3;
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut next_xid: i32 = 1;
        let mut last_recv = Instant::now();
        let mut last_send = Instant::now();
        let mut tick = tokio::time::interval((ping_every / 2).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let ended = loop {
            tokio::select! {
                read = rd.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => break Ended::Lost("the server closed the connection".into()),
                        Ok(_) => last_recv = Instant::now(),
                        Err(e) => break Ended::Lost(format!("read: {e}")),
                    }
                    match self.drain_packets(&mut buf, &mut pending) {
                        Ok(None) => {}
                        Ok(Some(end)) => break end,
                        Err(reason) => break Ended::Lost(reason),
                    }
                }
                cmd = self.commands.recv() => {
                    let (frame, entry) = match cmd {
                        None => (
                            proto::request_frame(next_xid, op::CLOSE_SESSION, &[]),
                            Pending { xid: next_xid, name: "close", path: String::new(), reply: None, close: None },
                        ),
                        Some(Command::Close { done }) => (
                            proto::request_frame(next_xid, op::CLOSE_SESSION, &[]),
                            Pending { xid: next_xid, name: "close", path: String::new(), reply: None, close: Some(done) },
                        ),
                        Some(Command::Request { opcode, name, path, body, reply }) => (
                            proto::request_frame(next_xid, opcode, &body),
                            Pending { xid: next_xid, name, path, reply: Some(reply), close: None },
                        ),
                    };
                    next_xid = next_xid.checked_add(1).unwrap_or(1);
                    pending.push_back(entry);
                    if let Err(e) = wr.write_all(&frame).await {
                        break Ended::Lost(format!("write: {e}"));
                    }
                    last_send = Instant::now();
                }
                _ = tick.tick() => {
                    if last_recv.elapsed() >= read_timeout {
                        break Ended::Lost(format!("nothing heard for {read_timeout:?}"));
                    }
                    if last_send.elapsed() >= ping_every {
                        let frame = proto::request_frame(xid::PING, op::PING, &[]);
                        if let Err(e) = wr.write_all(&frame).await {
                            break Ended::Lost(format!("write ping: {e}"));
                        }
                        last_send = Instant::now();
                    }
                }
            }
        };
        let closing = pending.iter().any(|p| p.name == "close");
        for p in pending.drain(..) {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(ZkError::ConnectionLoss {
                    op: p.name,
                    path: p.path,
                }));
            }
            if let Some(done) = p.close {
                let _ = done.send(());
            }
        }
        match ended {
            Ended::Lost(_) if closing => Ended::Closed,
            other => other,
        }
    }

    /// Handles every complete packet in `buf`. `Ok(Some)` ends the connection.
    fn drain_packets(
        &mut self,
        buf: &mut BytesMut,
        pending: &mut VecDeque<Pending>,
    ) -> Result<Option<Ended>, String> {
        loop {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= proto::MAX_PACKET)
                .ok_or_else(|| format!("bad packet length {len}"))?;
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                return Ok(None);
            }
            buf.advance(4);
            let packet = buf.split_to(len);
            if let Some(end) = self.on_packet(&packet, pending)? {
                return Ok(Some(end));
            }
        }
    }

    fn on_packet(
        &mut self,
        packet: &[u8],
        pending: &mut VecDeque<Pending>,
    ) -> Result<Option<Ended>, String> {
        let mut r = Reader::new(packet);
        let header = ReplyHeader::read(&mut r).map_err(|e| format!("reply header: {e}"))?;
        if header.zxid > self.last_zxid {
            self.last_zxid = header.zxid;
        }
        match header.xid {
            xid::PING => return Ok(None),
            xid::AUTH => {
                return Ok((header.err != 0).then_some(Ended::AuthFailed));
            }
            xid::NOTIFICATION => {
                let ev = WatcherEvent::read(&mut r).map_err(|e| format!("watch event: {e}"))?;
                let event_type = match ev.event_type {
                    1 => EventType::NodeCreated,
                    2 => EventType::NodeDeleted,
                    3 => EventType::NodeDataChanged,
                    4 => EventType::NodeChildrenChanged,
                    t => EventType::Other(t),
                };
                debug!(path = ev.path, ?event_type, "ZooKeeper watch fired");
                let _ = self.events.send(WatchedEvent {
                    event_type,
                    path: ev.path,
                });
                return Ok(None);
            }
            _ => {}
        }
        let Some(p) = pending.pop_front() else {
            return Err(format!(
                "reply xid {} with no request outstanding",
                header.xid
            ));
        };
        if p.xid != header.xid {
            let expected = p.xid;
            // Put it back: the caller gets ConnectionLoss with the others.
            pending.push_front(p);
            return Err(format!(
                "reply xid {} for request xid {expected}",
                header.xid
            ));
        }
        if let Some(done) = p.close {
            let _ = done.send(());
            return Ok(Some(Ended::Closed));
        }
        if p.name == "close" {
            return Ok(Some(Ended::Closed));
        }
        let result = if header.err != 0 {
            Err(ZkError::Server {
                op: p.name,
                path: p.path,
                code: header.err,
            })
        } else {
            Ok(packet[packet.len() - r.remaining()..].to_vec())
        };
        if let Some(reply) = p.reply {
            let _ = reply.send(result);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
