//! The DNS server: UDP and TCP (length-prefixed, RFC 1035 §4.2.2) on one address. Names
//! under the table's zone are answered from the [`DnsTable`]; every other query is relayed to
//! the upstream resolvers (its id replaced by a random one, the answer checked against the
//! question and given back the client's id), one upstream after the other, each given
//! `forward_timeout`; when none answers the client gets SERVFAIL. Relaying always asks over
//! UDP first; for a TCP client a truncated upstream answer is fetched again over TCP. Malformed queries get
//! FORMERR when their header is readable and are dropped otherwise.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::dns::DnsError;
use crate::dns::table::{DnsTable, Lookup, ZoneData};
use crate::dns::wire::{
    CLASS_ANY, CLASS_IN, Edns, Header, MAX_UDP_LEN, Message, Name, OPCODE_QUERY, Question, RData,
    RType, Rcode, Record, Soa, peek_question,
};

/// The EDNS0 UDP payload size berth advertises and caps its UDP answers at (the 2020 DNS
/// flag day value: no IP fragmentation on common paths).
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

/// Server settings.
#[derive(Debug, Clone)]
pub struct DnsServerConfig {
    /// Where to listen (UDP and TCP, same port; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Upstream resolvers for names outside the zone, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long each upstream gets to answer (UDP, plus the TCP retry of a truncated answer).
    pub forward_timeout: Duration,
    /// Forwarded queries in flight at once; beyond it clients get SERVFAIL.
    pub max_forwards: usize,
    /// TCP connections at once; beyond it new ones are closed.
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl DnsServerConfig {
    /// Defaults: 2 s per upstream, 1024 forwards, 128 TCP connections idle ≤ 10 s.
    pub fn new(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Self {
        DnsServerConfig {
            listen,
            upstreams,
            forward_timeout: Duration::from_secs(2),
            max_forwards: 1024,
            max_tcp_connections: 128,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of what the server did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Queries received (UDP and TCP).
    pub queries: u64,
    /// Answered from the table (including NXDOMAIN / NODATA).
    pub local: u64,
    /// Relayed to an upstream and answered.
    pub forwarded: u64,
    /// Forwarding failed (every upstream timed out or failed, or too many in flight): SERVFAIL.
    pub servfail: u64,
    /// Answered FORMERR, NOTIMP or REFUSED.
    pub rejected: u64,
    /// Dropped (no readable header, or a response sent to us).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Stats {
    queries: AtomicU64,
    local: AtomicU64,
    forwarded: AtomicU64,
    servfail: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Stops a running [`DnsServer`]; cloneable, usable from anywhere.
#[derive(Debug, Clone)]
pub struct DnsShutdown(Arc<watch::Sender<bool>>);

impl DnsShutdown {
    /// Asks the server to stop: its loops close their sockets and abort in-flight work.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A running DNS server. Dropping it stops it too (without waiting).
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    stop: DnsShutdown,
    loops: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    table: Arc<DnsTable>,
    zone: Name,
    config: DnsServerConfig,
    stats: Stats,
    rotate: AtomicUsize,
    ids: RandomState,
    id_counter: AtomicU64,
    forwards: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
    started: Instant,
    last_warn: AtomicU64,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` and starts serving `table` on the current tokio
    /// runtime. Upstreams equal to the listening address are dropped (no forwarding loop).
    pub async fn bind(config: DnsServerConfig, table: Arc<DnsTable>) -> Result<Self, DnsError> {
        let (udp, tcp) = bind_pair(config.listen).await?;
        let addr = udp.local_addr().map_err(|source| DnsError::BindUdp {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared::new(config, table, Some(addr)));
        let (tx, rx) = watch::channel(false);
        let loops = vec![
            tokio::spawn(udp_loop(shared.clone(), Arc::new(udp), rx.clone())),
            tokio::spawn(tcp_loop(shared.clone(), tcp, rx)),
        ];
        tracing::info!(listen = %addr, upstreams = ?shared.config.upstreams,
            zone = %shared.table.domain(), "DNS server listening");
        Ok(DnsServer {
            addr,
            stop: DnsShutdown(Arc::new(tx)),
            loops,
            shared,
        })
    }

    /// The address served (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstreams in use (after dropping this server's own address).
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.shared.config.upstreams
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> DnsShutdown {
        self.stop.clone()
    }

    /// Counters so far.
    pub fn counters(&self) -> DnsCounters {
        let s = &self.shared.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsCounters {
            queries: g(&s.queries),
            local: g(&s.local),
            forwarded: g(&s.forwarded),
            servfail: g(&s.servfail),
            rejected: g(&s.rejected),
            dropped: g(&s.dropped),
        }
    }

    /// Stops the server and waits until its sockets are closed and in-flight work is gone.
    pub async fn shutdown(mut self) {
        self.stop.shutdown();
        for h in std::mem::take(&mut self.loops) {
            let _ = h.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.shutdown();
    }
}

/// UDP and TCP on the same address; with port 0, retried until TCP gets UDP's port.
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| DnsError::BindUdp {
                addr: listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| DnsError::BindUdp {
            addr: listen,
            source,
        })?;
        match bind_tcp(addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 && attempts < 8 => {
                tracing::debug!(%addr, error = %e, "TCP port taken; picking another UDP port");
            }
            Err(source) => return Err(DnsError::BindTcp { addr, source }),
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}

/// What to do with one received message.
enum Action {
    Reply(Vec<u8>),
    Forward(Forward),
    Drop,
}

/// A query to relay: its bytes, parsed form and the size the client accepts.
struct Forward {
    raw: Vec<u8>,
    query: Message,
    limit: usize,
}

/// Largest message over TCP.
const TCP_LIMIT: usize = u16::MAX as usize;

impl Shared {
    /// State for serving `table`; `own` is the listening address, removed from upstreams.
    fn new(mut config: DnsServerConfig, table: Arc<DnsTable>, own: Option<SocketAddr>) -> Self {
        if let Some(addr) = own {
            config.upstreams.retain(|u| {
                let is_own = *u == addr
                    || (addr.ip().is_unspecified()
                        && u.ip().is_loopback()
                        && u.port() == addr.port());
                if is_own {
                    tracing::warn!(upstream = %u, listen = %addr,
                        "DNS upstream is this server: skipped");
                }
                !is_own
            });
        }
        let zone = Name::from_ascii(table.domain()).unwrap_or_else(|_| Name::root());
        Shared {
            zone,
            stats: Stats::default(),
            rotate: AtomicUsize::new(0),
            ids: RandomState::new(),
            id_counter: AtomicU64::new(0),
            forwards: Arc::new(Semaphore::new(config.max_forwards.max(1))),
            tcp_conns: Arc::new(Semaphore::new(config.max_tcp_connections.max(1))),
            started: Instant::now(),
            last_warn: AtomicU64::new(0),
            table,
            config,
        }
    }

    fn warn_limited(&self, upstreams: usize, what: &str) {
        // At most one line per 10 s: a workload can trigger these at will.
        let now = self.started.elapsed().as_secs() + 10;
        let last = self.last_warn.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(upstreams, "{what}");
        }
    }

    fn random_id(&self) -> u16 {
        let mut h = self.ids.build_hasher();
        h.write_u64(self.id_counter.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    /// Decides about one message from a client; `udp` says whether answers must fit the
    /// client's UDP size.
    fn handle(&self, buf: &[u8], udp: bool) -> Action {
        bump(&self.stats.queries);
        let Ok(header) = Header::parse(buf) else {
            bump(&self.stats.dropped);
            return Action::Drop;
        };
        if header.response {
            bump(&self.stats.dropped);
            return Action::Drop;
        }
        let query = match Message::parse(buf) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(error = %e, "malformed DNS query: FORMERR");
                bump(&self.stats.rejected);
                let bare = Message {
                    header,
                    ..Message::default()
                };
                return self.reply(&bare, Rcode::FormErr, MAX_UDP_LEN);
            }
        };
        let limit = if udp {
            query.udp_limit(usize::from(EDNS_UDP_PAYLOAD))
        } else {
            TCP_LIMIT
        };
        if query.header.opcode != OPCODE_QUERY {
            bump(&self.stats.rejected);
            return self.reply(&query, Rcode::NotImp, limit);
        }
        let [q] = query.questions.as_slice() else {
            bump(&self.stats.rejected);
            return self.reply(&query, Rcode::FormErr, limit);
        };
        if q.name.is_subdomain_of(&self.zone) {
            if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
                bump(&self.stats.rejected);
                return self.reply(&query, Rcode::Refused, limit);
            }
            bump(&self.stats.local);
            let answer = self.answer_local(&query, q);
            return match answer.encode_within(limit) {
                Ok(bytes) => Action::Reply(bytes),
                Err(e) => {
                    tracing::warn!(name = %q.name, error = %e, "encoding a DNS answer failed");
                    self.reply(&query, Rcode::ServFail, limit)
                }
            };
        }
        if self.config.upstreams.is_empty() {
            bump(&self.stats.rejected);
            return self.reply(&query, Rcode::Refused, limit);
        }
        Action::Forward(Forward {
            raw: buf.to_vec(),
            query,
            limit,
        })
    }

    /// An answer with no records and `rcode`.
    fn reply(&self, query: &Message, rcode: Rcode, limit: usize) -> Action {
        match response_to(query, rcode).encode_within(limit) {
            Ok(b) => Action::Reply(b),
            Err(_) => Action::Drop,
        }
    }

    fn soa(&self) -> Record {
        let domain = self.table.domain();
        let name = |prefix: &str| {
            Name::from_ascii(&format!("{prefix}.{domain}")).unwrap_or_else(|_| Name::root())
        };
        Record {
            name: self.zone.clone(),
            class: CLASS_IN,
            ttl: self.table.ttl(),
            data: RData::Soa(Soa {
                mname: name("ns"),
                rname: name("hostmaster"),
                serial: self.table.serial(),
                refresh: 60,
                retry: 30,
                expire: 86400,
                minimum: self.table.ttl(),
            }),
        }
    }

    /// Builds the authoritative answer for a question under the zone.
    fn answer_local(&self, query: &Message, q: &Question) -> Message {
        let mut resp = response_to(query, Rcode::NoError);
        resp.header.authoritative = true;
        let ttl = self.table.ttl();
        let lookup = match q.name.to_lowercase_key() {
            Some(key) => self.table.lookup(&key, q.qtype),
            None => Lookup::NxDomain,
        };
        let apex = q.name == self.zone;
        if apex && matches!(q.qtype, RType::SOA | RType::ANY) {
            resp.answers.push(self.soa());
            return resp;
        }
        match lookup {
            Lookup::Records {
                mut answers,
                additional,
            } => {
                if answers.len() > 1 {
                    let n = self.rotate.fetch_add(1, Ordering::Relaxed) % answers.len();
                    answers.rotate_left(n);
                }
                for d in answers {
                    resp.answers.push(record(q.name.clone(), ttl, d));
                }
                for (owner, d) in additional {
                    if let Ok(name) = Name::from_ascii(&owner) {
                        resp.additional.push(record(name, ttl, d));
                    }
                }
            }
            Lookup::NoData | Lookup::NotInZone => resp.authority.push(self.soa()),
            Lookup::NxDomain => {
                resp.header.rcode = Rcode::NxDomain;
                resp.authority.push(self.soa());
            }
        }
        resp
    }

    /// Relays a query upstream; the client's answer bytes (SERVFAIL when all upstreams fail).
    async fn forward(&self, f: Forward, tcp: bool) -> Vec<u8> {
        let q = &f.query.questions[0];
        for upstream in &self.config.upstreams {
            let id = self.random_id();
            let mut raw = f.raw.clone();
            raw[..2].copy_from_slice(&id.to_be_bytes());
            // UDP first, whatever the client used (UDP-only upstreams work, no handshake);
            // a truncated answer is asked again over TCP when the client came over TCP.
            let exchange = async {
                let reply = udp_exchange(*upstream, &raw, id, q).await?;
                let truncated = Header::parse(&reply).is_ok_and(|h| h.truncated);
                if tcp && truncated {
                    tcp_exchange(*upstream, &raw, id, q).await
                } else {
                    Ok(reply)
                }
            };
            match tokio::time::timeout(self.config.forward_timeout, exchange).await {
                Ok(Ok(mut reply)) => {
                    bump(&self.stats.forwarded);
                    reply[..2].copy_from_slice(&f.query.header.id.to_be_bytes());
                    if reply.len() > f.limit {
                        // The upstream ignored the client's size: tell it to use TCP.
                        let rcode = Header::parse(&reply).map(|h| h.rcode).unwrap_or_default();
                        let mut tc = response_to(&f.query, rcode);
                        tc.header.truncated = true;
                        return tc.encode().unwrap_or_default();
                    }
                    return reply;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%upstream, name = %q.name, error = %e, "DNS upstream failed")
                }
                Err(_) => tracing::debug!(%upstream, name = %q.name, "DNS upstream timed out"),
            }
        }
        bump(&self.stats.servfail);
        self.warn_limited(
            self.config.upstreams.len(),
            "no DNS upstream answered: SERVFAIL",
        );
        response_to(&f.query, Rcode::ServFail)
            .encode_within(f.limit)
            .unwrap_or_default()
    }
}

fn record(name: Name, ttl: u32, d: ZoneData) -> Record {
    let data = match d {
        ZoneData::A(a) => RData::A(a),
        ZoneData::Aaaa(a) => RData::Aaaa(a),
        ZoneData::Srv { port, target } => RData::Srv {
            priority: 0,
            weight: 1,
            port,
            target: Name::from_ascii(&target).unwrap_or_else(|_| Name::root()),
        },
    };
    Record {
        name,
        class: CLASS_IN,
        ttl,
        data,
    }
}

/// A response header for `query` with its question and `rcode`, and no records.
fn response_to(query: &Message, rcode: Rcode) -> Message {
    Message {
        header: Header {
            id: query.header.id,
            response: true,
            opcode: query.header.opcode,
            recursion_desired: query.header.recursion_desired,
            recursion_available: true,
            checking_disabled: query.header.checking_disabled,
            rcode,
            ..Header::default()
        },
        questions: query.questions.clone(),
        edns: query.edns.map(|_| Edns {
            udp_payload: EDNS_UDP_PAYLOAD,
            version: 0,
            dnssec_ok: false,
        }),
        ..Message::default()
    }
}

/// Whether `reply` answers our relayed query `id` for `q`.
fn matches_query(reply: &[u8], id: u16, q: &Question) -> bool {
    match peek_question(reply) {
        Ok((h, Some(rq))) => {
            h.id == id
                && h.response
                && rq.name == q.name
                && rq.qtype == q.qtype
                && rq.qclass == q.qclass
        }
        // A FORMERR answer may carry no question.
        Ok((h, None)) => h.id == id && h.response && h.rcode == Rcode::FormErr,
        Err(_) => false,
    }
}

async fn udp_exchange(
    upstream: SocketAddr,
    raw: &[u8],
    id: u16,
    q: &Question,
) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket per query: a random source port and no cross-talk between queries.
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(raw).await?;
    let mut buf = vec![0u8; TCP_LIMIT];
    loop {
        let n = sock.recv(&mut buf).await?;
        if matches_query(&buf[..n], id, q) {
            buf.truncate(n);
            return Ok(buf);
        }
        // Late or forged datagram: keep waiting (the caller's timeout bounds this).
    }
}

async fn tcp_exchange(
    upstream: SocketAddr,
    raw: &[u8],
    id: u16,
    q: &Question,
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, raw).await?;
    let len = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    if !matches_query(&buf, id, q) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "upstream answer does not match the query",
        ));
    }
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message > 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: stop too.
    let _ = stop.wait_for(|s| *s).await;
}

async fn udp_loop(shared: Arc<Shared>, sock: Arc<UdpSocket>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; TCP_LIMIT];
    let mut inflight = JoinSet::new();
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            },
            Some(_) = inflight.join_next(), if !inflight.is_empty() => continue,
            _ = stopped(&mut stop) => break,
        };
        match shared.handle(&buf[..n], true) {
            Action::Reply(bytes) => {
                if let Err(e) = sock.send_to(&bytes, peer).await {
                    tracing::debug!(%peer, error = %e, "DNS UDP send failed");
                }
            }
            Action::Drop => {}
            Action::Forward(f) => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    bump(&shared.stats.servfail);
                    let query = f.query;
                    if let Action::Reply(b) = shared.reply(&query, Rcode::ServFail, f.limit) {
                        let _ = sock.send_to(&b, peer).await;
                    }
                    continue;
                };
                let (shared, sock) = (shared.clone(), sock.clone());
                inflight.spawn(async move {
                    let reply = shared.forward(f, false).await;
                    if !reply.is_empty() {
                        let _ = sock.send_to(&reply, peer).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    inflight.shutdown().await;
    tracing::debug!("DNS UDP loop stopped");
}

async fn tcp_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    // EMFILE and friends: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stopped(&mut stop) => break,
        };
        let Ok(permit) = shared.tcp_conns.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS TCP connections: closed");
            continue;
        };
        let shared = shared.clone();
        conns.spawn(async move {
            tcp_conn(&shared, stream).await;
            drop(permit);
        });
    }
    conns.shutdown().await;
    tracing::debug!("DNS TCP loop stopped");
}

/// Serves the queries of one TCP connection in order until it closes or idles out.
async fn tcp_conn(shared: &Shared, mut stream: TcpStream) {
    let idle = shared.config.tcp_idle_timeout;
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(idle, stream.read_u16()).await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let reply = match shared.handle(&buf, false) {
            Action::Reply(b) => b,
            Action::Forward(f) => match shared.forwards.clone().try_acquire_owned() {
                Ok(_permit) => shared.forward(f, true).await,
                Err(_) => {
                    bump(&shared.stats.servfail);
                    match shared.reply(&f.query, Rcode::ServFail, TCP_LIMIT) {
                        Action::Reply(b) => b,
                        _ => return,
                    }
                }
            },
            Action::Drop => return,
        };
        if reply.is_empty() || write_framed(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
