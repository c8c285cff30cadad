//! The node ports of port mappings, held by the agent: each mapped port is bound on the node
//! (0.0.0.0), so a port a node process already uses is refused with a clear error instead of
//! being silently shadowed by the DNAT rule, and connections to `127.0.0.1:<port>` — which
//! nftables cannot DNAT to a container (a loopback source may not leave `lo`) — are relayed to
//! the container by a small userland proxy (as Docker's docker-proxy does). Traffic to every other
//! address of the node is DNATed before it reaches these sockets.
//!
//! TCP: one accept thread per port, two copy threads per connection. UDP: one thread per port
//! keeps an upstream socket per loopback client, dropped after [`UDP_IDLE`] without traffic.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{PortMapError, PortMapping};
use crate::nft::Proto;

/// A UDP client's upstream socket is dropped after this long without a datagram either way.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// How often the UDP relay looks at its stop flag.
const UDP_POLL: Duration = Duration::from_millis(200);

/// Holds node ports for port mappings (the seam: [`LoopbackProxies`] for real, a recording
/// double in tests).
pub trait HostPorts: Send {
    /// Binds the node port of `mapping` and relays loopback traffic to its container.
    fn hold(&mut self, mapping: &PortMapping) -> Result<(), PortMapError>;
    /// Lets the node port of `mapping` go.
    fn release(&mut self, mapping: &PortMapping);
}

/// One held port and its relay thread.
struct Held {
    stop: Arc<AtomicBool>,
    wake: Option<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(listener) = &self.wake {
            // SAFETY: shutdown(2) on the listener's own open descriptor, which `listener`
            // keeps open for the duration of the call; it wakes the blocked accept().
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The real [`HostPorts`]: sockets bound in the calling thread's network namespace.
#[derive(Default)]
pub struct LoopbackProxies {
    held: HashMap<(Proto, u16), Held>,
}

impl std::fmt::Debug for LoopbackProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackProxies")
            .field("ports", &self.held.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LoopbackProxies {
    /// No ports held yet.
    pub fn new() -> Self {
        Self::default()
    }
}

fn in_use(mapping: &PortMapping, source: io::Error) -> PortMapError {
    PortMapError::HostPortInUse {
        proto: mapping.proto,
        host_port: mapping.host_port,
        source,
    }
}

impl HostPorts for LoopbackProxies {
    fn hold(&mut self, mapping: &PortMapping) -> Result<(), PortMapError> {
        let key = (mapping.proto, mapping.host_port);
        if self.held.contains_key(&key) {
            return Ok(());
        }
        let target = SocketAddrV4::new(mapping.container_ip, mapping.container_port);
        let stop = Arc::new(AtomicBool::new(false));
        let held = match mapping.proto {
            Proto::Tcp => {
                let listener = TcpListener::bind(("0.0.0.0", mapping.host_port))
                    .map_err(|e| in_use(mapping, e))?;
                let wake = listener.try_clone().map_err(|e| in_use(mapping, e))?;
                let stop_flag = stop.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("berth-port-{}", mapping.host_port))
                    .spawn(move || relay_tcp(listener, target, stop_flag))
                    .map_err(|e| in_use(mapping, e))?;
                Held {
                    stop,
                    wake: Some(wake),
                    thread: Some(thread),
                }
            }
            Proto::Udp => {
                let socket = UdpSocket::bind(("0.0.0.0", mapping.host_port))
                    .map_err(|e| in_use(mapping, e))?;
                socket
                    .set_read_timeout(Some(UDP_POLL))
                    .map_err(|e| in_use(mapping, e))?;
                let stop_flag = stop.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("berth-port-{}u", mapping.host_port))
                    .spawn(move || relay_udp(socket, target, stop_flag))
                    .map_err(|e| in_use(mapping, e))?;
                Held {
                    stop,
                    wake: None,
                    thread: Some(thread),
                }
            }
        };
        self.held.insert(key, held);
        Ok(())
    }

    fn release(&mut self, mapping: &PortMapping) {
        // Dropping it stops its thread.
        self.held.remove(&(mapping.proto, mapping.host_port));
    }
}

fn relay_tcp(listener: TcpListener, target: SocketAddrV4, stop: Arc<AtomicBool>) {
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match incoming {
            Ok(client) => client,
            Err(err) => {
                debug!(error = %err, "accept on a held node port");
                continue;
            }
        };
        let _ = std::thread::Builder::new()
            .name("berth-port-conn".into())
            .spawn(move || {
                let upstream = match TcpStream::connect_timeout(
                    &SocketAddr::V4(target),
                    Duration::from_secs(5),
                ) {
                    Ok(upstream) => upstream,
                    Err(err) => {
                        warn!(%target, error = %err, "loopback port relay: container unreachable");
                        return;
                    }
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (Ok(client_read), Ok(upstream_read)) =
                    (client.try_clone(), upstream.try_clone())
                else {
                    return;
                };
                let up = std::thread::spawn(move || pipe(client_read, upstream));
                pipe(upstream_read, client);
                let _ = up.join();
            });
    }
}

/// Copies `from` to `to` until EOF, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn relay_udp(socket: UdpSocket, target: SocketAddrV4, stop: Arc<AtomicBool>) {
    // client → (its upstream socket, last traffic)
    let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, Arc<std::sync::Mutex<Instant>>)> =
        HashMap::new();
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::SeqCst) {
        clients.retain(|_, (_, last)| last.lock().expect("udp clock").elapsed() < UDP_IDLE);
        let (n, client) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(err) => {
                debug!(error = %err, "recv on a held UDP node port");
                continue;
            }
        };
        let entry = match clients.get(&client) {
            Some(entry) => entry.clone(),
            None => {
                let Ok(upstream) = UdpSocket::bind("0.0.0.0:0") else {
                    continue;
                };
                if upstream.connect(target).is_err()
                    || upstream.set_read_timeout(Some(UDP_POLL)).is_err()
                {
                    continue;
                }
                let upstream = Arc::new(upstream);
                let last = Arc::new(std::sync::Mutex::new(Instant::now()));
                let (reply_up, reply_to, reply_last, reply_stop) =
                    (upstream.clone(), socket.clone(), last.clone(), stop.clone());
                // Replies go back to the client until the entry idles out.
                let _ = std::thread::Builder::new()
                    .name("berth-port-udp".into())
                    .spawn(move || {
                        let mut buf = vec![0u8; 65_536];
                        while !reply_stop.load(Ordering::SeqCst)
                            && reply_last.lock().expect("udp clock").elapsed() < UDP_IDLE
                        {
                            if let Ok(n) = reply_up.recv(&mut buf) {
                                *reply_last.lock().expect("udp clock") = Instant::now();
                                let _ = reply_to.send_to(&buf[..n], client);
                            }
                        }
                    });
                clients.insert(client, (upstream.clone(), last.clone()));
                (upstream, last)
            }
        };
        *entry.1.lock().expect("udp clock") = Instant::now();
        let _ = entry.0.send(&buf[..n]);
    }
}

/// One recorded call: ("hold" | "release", protocol, node port).
pub type HostPortCall = (&'static str, Proto, u16);

/// A [`HostPorts`] double that records holds and releases and can be told to refuse a port.
#[derive(Debug, Default, Clone)]
pub struct RecordingHostPorts {
    /// The calls, in order.
    pub calls: Arc<std::sync::Mutex<Vec<HostPortCall>>>,
    /// Ports whose hold fails (as if a node process used them).
    pub busy: Vec<(Proto, u16)>,
}

impl HostPorts for RecordingHostPorts {
    fn hold(&mut self, mapping: &PortMapping) -> Result<(), PortMapError> {
        if self.busy.contains(&(mapping.proto, mapping.host_port)) {
            return Err(in_use(mapping, io::Error::from(io::ErrorKind::AddrInUse)));
        }
        self.calls
            .lock()
            .expect("calls")
            .push(("hold", mapping.proto, mapping.host_port));
        Ok(())
    }

    fn release(&mut self, mapping: &PortMapping) {
        self.calls
            .lock()
            .expect("calls")
            .push(("release", mapping.proto, mapping.host_port));
    }
}
