//! The task that owns a ZooKeeper session: connecting, reconnecting, expiry, pings, and
//! matching replies to requests (see the parent module for the rules).

use std::{
    collections::VecDeque,
    hash::{BuildHasher, Hasher},
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
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

use super::{
    Command, EventType, Reply, ServerAddr, SessionState, WatchedEvent, ZkError, ZkOptions,
    proto::{
        self, ConnectRequest, ConnectResponse, Reader, ReplyHeader, WatcherEvent, Writer, op, xid,
    },
};

/// Starts the session task.
pub(super) fn spawn(
    mut servers: Vec<ServerAddr>,
    options: ZkOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<SessionState>,
    events: broadcast::Sender<WatchedEvent>,
) -> JoinHandle<()> {
    shuffle(&mut servers);
    let session = Session {
        servers,
        next: 0,
        options,
        id: 0,
        passwd: vec![0; 16],
        last_zxid: 0,
        negotiated: Duration::ZERO,
        connections: 0,
        closing: None,
        commands,
        state,
        events,
    };
    tokio::spawn(session.run())
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
    /// A close asked for while disconnected: done on the next connection (or expiry).
    closing: Option<oneshot::Sender<()>>,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<SessionState>,
    events: broadcast::Sender<WatchedEvent>,
}

/// Longest wait for one server's session answer.
const MAX_HANDSHAKE: Duration = Duration::from_secs(10);
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
            if self.id == 0
                && let Some(done) = self.closing.take()
            {
                // Nothing left to close.
                let _ = done.send(());
                self.state.send_replace(SessionState::Closed);
                return;
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
                        let mut wait = backoff + jitter(backoff / 2);
                        if let Some(t) = lost_at {
                            // Wake up in time to expire the session locally when it is due.
                            let due = self.negotiated.saturating_sub(t.elapsed());
                            wait = wait.min(due.max(Duration::from_millis(10)));
                        }
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
                        if self.id == 0 {
                            let _ = done.send(());
                            return true;
                        }
                        // Close the session on the next connection, so its ephemeral nodes go
                        // now rather than after the session timeout.
                        self.closing = Some(done);
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
        // Java's client gives each server an equal share of the session timeout. Capped: a
        // server that accepted the connection while starting may never answer it, and a long
        // session timeout must not park the client on it.
        let step = (self.options.session_timeout / self.servers.len() as u32)
            .clamp(Duration::from_millis(500), MAX_HANDSHAKE);
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
        // Connecting to a loopback port nobody listens on can end up connected to itself (TCP
        // simultaneous open on the same ephemeral port): that is not a server.
        if stream.local_addr().ok() == Some(addr) {
            return Err("connected to itself (no server on that port)".into());
        }
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
        if let Some(done) = self.closing.take() {
            let frame = proto::request_frame(next_xid, op::CLOSE_SESSION, &[]);
            pending.push_back(Pending {
                xid: next_xid,
                name: "close",
                path: String::new(),
                reply: None,
                close: Some(done),
            });
            next_xid += 1;
            if let Err(e) = wr.write_all(&frame).await {
                return self.fail_pending(pending, Ended::Lost(format!("write: {e}")));
            }
        }

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
        self.fail_pending(pending, ended)
    }

    /// Answers every outstanding request of a connection that ended.
    fn fail_pending(&mut self, mut pending: VecDeque<Pending>, ended: Ended) -> Ended {
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
