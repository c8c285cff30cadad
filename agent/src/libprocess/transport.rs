//! Outgoing libprocess messages.
//!
//! One writer task per peer address owns one kept-alive TCP connection and writes the peer's
//! messages in the order they were sent (libprocess' ordering guarantee between two processes).
//! The peer's `202 Accepted` answers are read and discarded by a second task. A message that
//! cannot be written (peer down, connection reset) is dropped with a log line: libprocess
//! delivery is at-most-once, and the Mesos protocol above it retries what must arrive
//! (registration, status updates).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tracing::{debug, warn};

use super::Upid;

/// How long a connect may take before the message is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write may block before the connection is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Outgoing {
    bytes: Bytes,
    name: String,
}

/// Counters of the transport (for metrics and tests).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages written to a socket.
    pub sent: AtomicU64,
    /// Messages dropped (connect or write failed).
    pub dropped: AtomicU64,
}

/// The sending side of one libprocess node.
pub struct Transport {
    me: Upid,
    peers: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Outgoing>>>,
    /// Counters.
    pub stats: Arc<TransportStats>,
}

impl Transport {
    /// A transport sending as `me` (the pid peers answer to).
    pub fn new(me: Upid) -> Arc<Self> {
        Arc::new(Self {
            me,
            peers: Mutex::new(HashMap::new()),
            stats: Arc::new(TransportStats::default()),
        })
    }

    /// The pid messages are sent from.
    pub fn me(&self) -> &Upid {
        &self.me
    }

    /// Sends a protobuf message named after its type (`mesos.internal.RegisterSlaveMessage`).
    pub fn send<M>(&self, to: &Upid, message: &M)
    where
        M: prost::Message + prost_reflect::ReflectMessage,
    {
        let name = message.descriptor().full_name().to_string();
        self.send_raw(to, &name, &message.encode_to_vec());
    }

    /// Sends `body` as message `name` to `to`, from `self.me()`.
    pub fn send_raw(&self, to: &Upid, name: &str, body: &[u8]) {
        self.send_as(&self.me, to, name, body);
    }

    /// Sends as another process of this node (e.g. the master's `slave-observer(N)`).
    pub fn send_as(&self, from: &Upid, to: &Upid, name: &str, body: &[u8]) {
        let bytes = encode_request(from, to, name, body);
        let outgoing = Outgoing {
            bytes,
            name: name.to_string(),
        };
        let mut peers = self.peers.lock().expect("peers lock");
        let sender = peers.entry(to.addr).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(peer_writer(to.addr, rx, self.stats.clone()));
            tx
        });
        if let Err(err) = sender.send(outgoing) {
            // The writer task ended (runtime shutting down): start a new one next time.
            peers.remove(&to.addr);
            warn!(to = %to, message = %err.0.name, "libprocess writer gone; message dropped");
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes the connection to `addr` (the next message opens a new one). Mesos peers treat a
    /// closed socket as the sender having exited.
    pub fn disconnect(&self, addr: SocketAddr) {
        self.peers.lock().expect("peers lock").remove(&addr);
    }
}

/// The HTTP request libprocess sends for a message.
pub fn encode_request(from: &Upid, to: &Upid, name: &str, body: &[u8]) -> Bytes {
    let head = format!(
        "POST /{}/{} HTTP/1.1\r\nUser-Agent: libprocess/{from}\r\nLibprocess-From: {from}\r\n\
         Connection: Keep-Alive\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        to.id,
        name,
        to.addr,
        body.len()
    );
    let mut buf = BytesMut::with_capacity(head.len() + body.len());
    buf.put_slice(head.as_bytes());
    buf.put_slice(body);
    buf.freeze()
}

async fn peer_writer(
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    stats: Arc<TransportStats>,
) {
    let mut connection: Option<(tokio::net::tcp::OwnedWriteHalf, Arc<AtomicBool>)> = None;
    while let Some(first) = rx.recv().await {
        // Batch what is queued so a burst goes out in few writes.
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if connection
            .as_ref()
            .is_some_and(|(_, closed)| closed.load(Ordering::Acquire))
        {
            connection = None;
        }
        if connection.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (read, write) = stream.into_split();
                    let closed = Arc::new(AtomicBool::new(false));
                    tokio::spawn(drain_answers(addr, read, closed.clone()));
                    connection = Some((write, closed));
                }
                Ok(Err(err)) => {
                    drop_batch(&stats, addr, &batch, &err.to_string());
                    continue;
                }
                Err(_) => {
                    drop_batch(&stats, addr, &batch, "connect timed out");
                    continue;
                }
            }
        }
        let (write, _) = connection.as_mut().expect("connected above");
        let mut bytes = BytesMut::new();
        for message in &batch {
            bytes.put_slice(&message.bytes);
        }
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await {
            Ok(Ok(())) => {
                stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(err)) => {
                drop_batch(&stats, addr, &batch, &err.to_string());
                connection = None;
            }
            Err(_) => {
                drop_batch(&stats, addr, &batch, "write timed out");
                connection = None;
            }
        }
    }
    debug!(peer = %addr, "libprocess writer done");
}

fn drop_batch(stats: &TransportStats, addr: SocketAddr, batch: &[Outgoing], why: &str) {
    stats
        .dropped
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    warn!(
        peer = %addr,
        messages = batch.len(),
        first = %batch[0].name,
        error = why,
        "libprocess peer unreachable; messages dropped"
    );
}

/// Reads and discards the peer's answers; marks the connection closed at EOF or error.
async fn drain_answers(
    addr: SocketAddr,
    mut read: tokio::net::tcp::OwnedReadHalf,
    closed: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !buf[..n].starts_with(b"HTTP/1.1 202") && buf[..n].starts_with(b"HTTP/1.") {
                    let line = String::from_utf8_lossy(&buf[..n.min(80)]);
                    debug!(peer = %addr, answer = %line.lines().next().unwrap_or(""), "libprocess peer refused a message");
                }
            }
        }
    }
    closed.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_look_like_libprocess_ones() {
        let from: Upid = "slave(1)@127.0.0.1:5051".parse().unwrap();
        let to: Upid = "master@127.0.0.1:5050".parse().unwrap();
        let bytes = encode_request(&from, &to, "mesos.internal.PongSlaveMessage", b"ab");
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with("POST /master/mesos.internal.PongSlaveMessage HTTP/1.1\r\n"));
        assert!(text.contains("\r\nUser-Agent: libprocess/slave(1)@127.0.0.1:5051\r\n"));
        assert!(text.contains("\r\nLibprocess-From: slave(1)@127.0.0.1:5051\r\n"));
        assert!(text.contains("\r\nConnection: Keep-Alive\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\nab"));
    }
}
