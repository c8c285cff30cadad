//! Shared pieces of the privileged network tests: namespaces named `bt<pid>-<tag>` removed by
//! Drop guards (also on panic), an underlay bridge joining "node" namespaces, servers and
//! clients running in threads that entered a namespace.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use berth_net::bridge::{self, BridgeConfig};
use berth_net::ipam::Ipam;
use berth_net::lb::DEFAULT_VIP_RANGE;
use berth_net::link::Netlink;
use berth_net::netns::NetnsRef;

/// Fails the test with `reason`, or returns `true` (skip) when `BERTH_TEST_ALLOW_SKIP=1`.
pub fn skip_or_fail(reason: &str) -> bool {
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): {reason}");
        return true;
    }
    panic!("privileged network test cannot run: {reason} (set BERTH_TEST_ALLOW_SKIP=1 to skip)");
}

/// Checks root and the tools; returns `true` when the test must be skipped.
pub fn must_skip(tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail("needs root (network namespaces, nftables)");
    }
    for t in tools {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|d| std::path::Path::new(d).join(t).exists());
        if !found {
            return skip_or_fail(&format!(
                "'{t}' not found (apt-get install iproute2 nftables conntrack iputils-ping iperf3)"
            ));
        }
    }
    false
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning whether it succeeded.
pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A named network namespace, deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Self {
        let name = format!("bt{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn nsref(&self) -> NetnsRef {
        NetnsRef::named(&self.name)
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec NS ARGS...`, returning success.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh_ok(&v)
    }

    /// `ip netns exec NS ARGS...`, output or panic.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Writes a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let key = key.to_string();
        let value = value.to_string();
        self.nsref()
            .run(move || berth_net::netns::write_sysctl("/proc/sys".as_ref(), &key, &value))
            .unwrap()
            .unwrap();
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// An underlay: a namespace holding bridge `ul` that "node" namespaces join with a veth
/// (`ul0` inside the node, VTEP address 44.128.0.N/20).
pub struct Underlay {
    pub ns: Ns,
}

impl Underlay {
    pub fn new(tag: &str) -> Self {
        let ns = Ns::new(&format!("{tag}-ul"));
        ns.ip(&["link", "add", "ul", "type", "bridge"]);
        ns.ip(&["link", "set", "ul", "up"]);
        Self { ns }
    }

    /// Joins `node` as VTEP 44.128.0.`n`.
    pub fn join(&self, node: &Ns, n: u8) -> Ipv4Addr {
        let port = format!("n{n}");
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &node.name,
        ]);
        self.ns.ip(&["link", "set", &port, "master", "ul", "up"]);
        let ip = Ipv4Addr::new(44, 128, 0, n);
        node.ip(&["addr", "add", &format!("{ip}/20"), "dev", "ul0"]);
        node.ip(&["link", "set", "ul0", "up"]);
        ip
    }
}

/// A server thread inside a namespace; stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Option<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP server on `port` answering every connection with `id` then closing; when `sink` is
/// set it reads everything the client sends first and answers with the byte count (8 bytes).
pub fn tcp_server(ns: &Ns, port: u16, id: u8, sink: bool) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = ns
        .nsref()
        .spawn(move || {
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        if sink {
                            let mut n = 0u64;
                            let mut buf = vec![0u8; 65536];
                            loop {
                                match c.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(k) => n += k as u64,
                                }
                            }
                            let _ = c.write_all(&n.to_be_bytes());
                        } else {
                            let _ = c.write_all(&[id]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
        .unwrap();
    rx.recv().expect("server started");
    Server {
        stop,
        handle: Some(handle),
    }
}

/// A UDP server on `port` answering every datagram with `[id]` (or, for a datagram of more
/// than 1 byte, with its length as 8 bytes).
pub fn udp_server(ns: &Ns, port: u16, id: u8) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = ns
        .nsref()
        .spawn(move || {
            let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let reply = if n > 1 {
                        (n as u64).to_be_bytes().to_vec()
                    } else {
                        vec![id]
                    };
                    let _ = s.send_to(&reply, from);
                }
            }
        })
        .unwrap();
    rx.recv().expect("server started");
    Server {
        stop,
        handle: Some(handle),
    }
}

/// Runs `f` in a thread inside `ns` and returns its result.
pub fn in_ns<T: Send, F: FnOnce() -> T + Send>(ns: &Ns, f: F) -> T {
    ns.nsref().run(f).unwrap()
}

/// Connects to `addr` and reads the one-byte server id.
pub fn tcp_id(addr: SocketAddr) -> std::io::Result<u8> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b)?;
    Ok(b[0])
}

/// Sends `bytes` bytes over TCP to a sink server and returns the count it reports.
pub fn tcp_send(addr: SocketAddr, bytes: usize) -> std::io::Result<u64> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.set_write_timeout(Some(Duration::from_secs(30)))?;
    let chunk = vec![0x5au8; 65536];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len());
        c.write_all(&chunk[..k])?;
        left -= k;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let mut n = [0u8; 8];
    c.read_exact(&mut n)?;
    Ok(u64::from_be_bytes(n))
}

/// A multi-threaded tokio runtime for the netlink parts of a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A "node": a namespace on the underlay with the node bridge `berth0` (subnet 9.0.N.0/24,
/// the VIP range routed to it) and IPAM for its containers.
pub struct Node {
    pub ns: Ns,
    pub nl: Netlink,
    pub bridge: BridgeConfig,
    pub ipam: Ipam,
    pub _leases: tempfile::TempDir,
}

pub fn node(rt: &tokio::runtime::Runtime, ul: &Underlay, tag: &str, n: u8) -> Node {
    let ns = Ns::new(&format!("{tag}-node{n}"));
    ul.join(&ns, n);
    ns.sysctl("net/ipv4/ip_forward", "1");
    let subnet = format!("9.0.{n}.0/24").parse().unwrap();
    let bridge = BridgeConfig {
        name: "berth0".into(),
        subnet,
        mtu: 1450,
        vip_range: Some(DEFAULT_VIP_RANGE.parse().unwrap()),
    };
    let nl = rt.block_on(async {
        let nl = Netlink::connect_in(&ns.nsref()).unwrap();
        bridge::ensure_bridge(&nl, &bridge).await.unwrap();
        // Idempotent.
        bridge::ensure_bridge(&nl, &bridge).await.unwrap();
        nl
    });
    let leases = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(leases.path(), subnet).unwrap();
    Node {
        ns,
        nl,
        bridge,
        ipam,
        _leases: leases,
    }
}

/// A "container" namespace on the node's bridge, with an address from its IPAM.
pub fn container(rt: &tokio::runtime::Runtime, n: &mut Node, tag: &str) -> (Ns, Ipv4Addr) {
    let ns = Ns::new(tag);
    let ip = n.ipam.allocate(tag).unwrap();
    rt.block_on(bridge::attach_container(
        &n.nl,
        &n.bridge,
        tag,
        &ns.nsref(),
        ip,
    ))
    .unwrap();
    (ns, ip)
}

/// `count` TCP connections to `vip` from inside `ns`: server id → connections.
pub fn spread(ns: &Ns, vip: SocketAddr, count: usize) -> BTreeMap<u8, usize> {
    in_ns(ns, move || {
        let mut m = BTreeMap::new();
        for _ in 0..count {
            let id = tcp_id(vip).expect("connection through the VIP");
            *m.entry(id).or_insert(0) += 1;
        }
        m
    })
}

/// Sends a 1-byte datagram from `sock` to `vip` until a server answers (up to `tries` times,
/// one second each) and returns the server id; the reply must come from the VIP.
pub fn udp_ask(sock: &UdpSocket, vip: SocketAddr, tries: usize) -> Option<u8> {
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 8];
    for _ in 0..tries {
        sock.send_to(&[0], vip).unwrap();
        if let Ok((1, from)) = sock.recv_from(&mut b) {
            assert_eq!(from, vip, "reply must come from the VIP");
            return Some(b[0]);
        }
    }
    None
}
