//! berth-net benchmark (run by tests/bench/net.sh, as root): two "node" network namespaces on
//! an underlay bridge namespace, then, side by side in one run:
//! 1. iperf3 single-stream throughput node → node over plain veth (the underlay), over a
//!    hand-made kernel VXLAN link and over berth's overlay (median of interleaved rounds);
//! 2. TCP connections/s from a container through a VIP vs straight to one backend: from a
//!    client on another node (both paths routed over the overlay: what the VIP adds), and from
//!    a client on the backends' own bridge (VIP routed + hairpin-SNATed vs bridge-switched);
//! 3. time to apply 10 000 VIPs × 3 backends from empty, and one backend change at 10 000 VIPs.
//!
//! Everything lives in namespaces named `bn<pid>-...`, deleted on exit (also on panic).
//! Env: BENCH_SECS (iperf3 seconds per round, default 3), BENCH_ROUNDS (default 3),
//! BENCH_VIPS (default 10000), BENCH_CONNS (default 2000).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_net::bridge::{self, BridgeConfig};
use berth_net::lb::{Backend, LbState, LoadBalancer, VipKey};
use berth_net::link::Netlink;
use berth_net::netns::NetnsRef;
use berth_net::nft::{NftCommand, NftConfig, NftExec, NftNetlink, Proto};
use berth_net::overlay::{Overlay, OverlayConfig, OverlayState, Peer, RtnlOverlay, overlay_mtu};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!("bn{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }
    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }
    fn r(&self) -> NetnsRef {
        NetnsRef::named(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A child process we started, killed by its pid on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf(client: &Ns, server_ip: Ipv4Addr, secs: u64) -> f64 {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &client.0,
        "iperf3",
        "-c",
        &server_ip.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let secs = env("BENCH_SECS", 3);
    let rounds = env("BENCH_ROUNDS", 3);
    let vips = env("BENCH_VIPS", 10_000) as u32;
    let conns = env("BENCH_CONNS", 2000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Underlay: bridge `ul` in its own namespace; nodes A (44.128.0.1) and B (44.128.0.2).
    let ul = Ns::new("ul");
    ul.ip(&["link", "add", "ul", "type", "bridge"]);
    ul.ip(&["link", "set", "ul", "up"]);
    let a = Ns::new("a");
    let b = Ns::new("b");
    for (n, ns) in [(1u8, &a), (2u8, &b)] {
        let port = format!("n{n}");
        ul.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &ns.0,
        ]);
        ul.ip(&["link", "set", &port, "master", "ul", "up"]);
        ns.ip(&["addr", "add", &format!("44.128.0.{n}/20"), "dev", "ul0"]);
        ns.ip(&["link", "set", "ul0", "up"]);
        // Hand-made kernel VXLAN between the same pair (VNI 42, port 4790).
        let peer = format!("44.128.0.{}", 3 - n);
        ns.ip(&[
            "link",
            "add",
            "hvx",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            &format!("44.128.0.{n}"),
            "remote",
            &peer,
            "dstport",
            "4790",
            "dev",
            "ul0",
        ]);
        ns.ip(&["addr", "add", &format!("10.99.0.{n}/24"), "dev", "hvx"]);
        ns.ip(&["link", "set", "hvx", "up"]);
        let r = ns.r();
        r.run(|| berth_net::netns::write_sysctl("/proc/sys".as_ref(), "net/ipv4/ip_forward", "1"))
            .unwrap()
            .unwrap();
    }
    // berth's bridge + overlay on both nodes.
    let ((nla, bridge_a), (nlb, bridge_b)) = rt.block_on(async {
        let mut out = Vec::new();
        for (n, ns) in [(1u8, &a), (2u8, &b)] {
            let nl = Netlink::connect_in(&ns.r()).unwrap();
            let subnet = format!("9.0.{n}.0/24").parse().unwrap();
            let cfg = BridgeConfig {
                name: "berth0".into(),
                subnet,
                mtu: overlay_mtu(nl.mtu("ul0").await.unwrap()),
                vip_range: Some("11.0.0.0/8".parse().unwrap()),
            };
            bridge::ensure_bridge(&nl, &cfg).await.unwrap();
            let vtep = Ipv4Addr::new(44, 128, 0, n);
            let ov = Overlay::new(
                RtnlOverlay::new(nl.clone(), "berth.vx"),
                OverlayConfig::new("ul0", vtep, subnet),
            );
            let peers = OverlayState {
                peers: vec![
                    Peer::new("9.0.1.0/24".parse().unwrap(), Ipv4Addr::new(44, 128, 0, 1)),
                    Peer::new("9.0.2.0/24".parse().unwrap(), Ipv4Addr::new(44, 128, 0, 2)),
                ],
            };
            ov.apply(&peers).await.unwrap();
            out.push((nl, cfg));
        }
        let b = out.pop().unwrap();
        (out.pop().unwrap(), b)
    });

    // 1. iperf3: server in B, client in A; rounds interleave the three paths.
    let _server = Proc(
        Command::new("ip")
            .args(["netns", "exec", &b.0, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s"),
    );
    // Wait until the server accepts (bounded).
    for _ in 0..100 {
        let ok = a
            .r()
            .run(|| {
                TcpStream::connect_timeout(
                    &"44.128.0.2:5201".parse().unwrap(),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
            .unwrap();
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut veth, mut hand, mut berth) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        veth.push(iperf(&a, Ipv4Addr::new(44, 128, 0, 2), secs));
        hand.push(iperf(&a, Ipv4Addr::new(10, 99, 0, 2), secs));
        berth.push(iperf(&a, Ipv4Addr::new(9, 0, 2, 1), secs));
    }
    let (v, h, o) = (
        median(veth.clone()),
        median(hand.clone()),
        median(berth.clone()),
    );
    println!("iperf3 single stream node A -> node B, Gbit/s, median of {rounds} x {secs} s:");
    println!("  plain veth        {v:7.2}   rounds {veth:.2?}");
    println!("  hand-made VXLAN   {h:7.2}   rounds {hand:.2?}");
    println!("  berth overlay     {o:7.2}   rounds {berth:.2?}");
    println!(
        "  ratio berth/hand-made VXLAN = {:.3}   (target >= 0.98)",
        o / h
    );
    println!("  ratio hand-made VXLAN/veth  = {:.3}", h / v);
    println!("  ratio berth/veth            = {:.3}", o / v);

    // 2. Connections/s through a VIP vs direct, from a container on node A.
    let mut ctrs = Vec::new();
    for i in 0..4u8 {
        let ns = Ns::new(&format!("c{i}"));
        let ip = Ipv4Addr::new(9, 0, 1, 10 + i);
        rt.block_on(bridge::attach_container(
            &nla,
            &bridge_a,
            &format!("bench-c{i}"),
            &ns.r(),
            ip,
        ))
        .unwrap();
        ctrs.push((ns, ip));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (ns, _) in &ctrs[1..] {
        let stop = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        servers.push(
            ns.r()
                .spawn(move || {
                    // Blocking accept (no polling delay to skew the comparison); woken by
                    // one last connection at the end.
                    let l = TcpListener::bind("0.0.0.0:8080").unwrap();
                    tx.send(()).unwrap();
                    for c in l.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Ok(mut c) = c {
                            // The client closes first (its TIME_WAIT, not ours): a server
                            // holding TIME_WAITs for reused client ports would make SYNs
                            // collide with them on one path and not the other.
                            let _ = c.write_all(b"x");
                            let mut rest = [0u8; 1];
                            let _ = c.read(&mut rest);
                        }
                    }
                })
                .unwrap(),
        );
        rx.recv().unwrap();
    }
    let exec = Arc::new(NftCommand::in_netns(a.r()));
    let cfg = NftConfig {
        hairpin_subnets: vec![bridge_a.subnet],
        ..NftConfig::default()
    };
    let mut lb = LoadBalancer::new(exec.clone(), cfg.clone());
    lb.ensure_table().unwrap();
    let web = VipKey {
        addr: Ipv4Addr::new(11, 0, 0, 80),
        proto: Proto::Tcp,
        port: 80,
    };
    let mut state = LbState::default();
    for (_, ip) in &ctrs[1..] {
        state.add_key(
            web,
            Backend {
                ip: *ip,
                port: 8080,
            },
        );
    }
    // The same path with one backend: isolates the DNAT cost from server parallelism.
    let one = VipKey {
        addr: Ipv4Addr::new(11, 0, 0, 81),
        proto: Proto::Tcp,
        port: 80,
    };
    state.add_key(
        one,
        Backend {
            ip: ctrs[1].1,
            port: 8080,
        },
    );
    lb.apply(&state).unwrap();
    let rate = |client: &Ns, target: SocketAddr| -> f64 {
        client
            .r()
            .run(move || {
                let t = Instant::now();
                for _ in 0..conns {
                    let mut c = TcpStream::connect(target).unwrap();
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b).unwrap();
                }
                conns as f64 / t.elapsed().as_secs_f64()
            })
            .unwrap()
    };
    // Node B programs the same VIPs (every node does) for a client container on its own bridge:
    // the backends are on node A, so the direct path is routed over the overlay as well and
    // the comparison isolates what the VIP adds (the DNAT lookup; conntrack runs either way
    // once the nat hooks exist in B).
    let client_b = Ns::new("cb");
    rt.block_on(bridge::attach_container(
        &nlb,
        &bridge_b,
        "bench-cb",
        &client_b.r(),
        Ipv4Addr::new(9, 0, 2, 10),
    ))
    .unwrap();
    let mut lb_b = LoadBalancer::new(
        Arc::new(NftCommand::in_netns(b.r())),
        NftConfig {
            hairpin_subnets: vec![bridge_b.subnet],
            ..NftConfig::default()
        },
    );
    lb_b.ensure_table().unwrap();
    lb_b.apply(&state).unwrap();
    let vip_target = SocketAddr::from((web.addr, 80));
    let direct_target = SocketAddr::from((ctrs[1].1, 8080));
    let one_target = SocketAddr::from((one.addr, 80));
    let client_a = &ctrs[0].0;
    let _warm = (
        rate(client_a, vip_target),
        rate(client_a, direct_target),
        rate(&client_b, one_target),
        rate(&client_b, direct_target),
    );
    let (mut via, mut direct, mut via1) = (Vec::new(), Vec::new(), Vec::new());
    let (mut remote_via1, mut remote_direct) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        via.push(rate(client_a, vip_target));
        direct.push(rate(client_a, direct_target));
        via1.push(rate(client_a, one_target));
        remote_via1.push(rate(&client_b, one_target));
        remote_direct.push(rate(&client_b, direct_target));
    }
    let (cv, cd, c1) = (median(via), median(direct), median(via1));
    let (r1, rd) = (median(remote_via1), median(remote_direct));
    println!(
        "TCP connections/s from a container, {conns} sequential connections, median of {rounds}:"
    );
    println!("  client on node B, backend on node A (both paths routed over the overlay):");
    println!("    through VIP with 1 backend       {r1:8.0}");
    println!("    direct to the backend            {rd:8.0}");
    println!("    ratio VIP/direct = {:.3}   (target >= 0.97)", r1 / rd);
    println!("  client on the backends' bridge (node A; the VIP path is routed + hairpin-SNATed,");
    println!("  the direct one is switched by the bridge):");
    println!("    through VIP (3 backends)         {cv:8.0}");
    println!("    direct to one backend            {cd:8.0}");
    println!("    through VIP with 1 backend       {c1:8.0}");
    println!("    ratio VIP(1 backend)/direct = {:.3}", c1 / cd);
    println!(
        "    ratio VIP(3 backends)/direct = {:.3}  (server-bound: 3 servers vs 1)",
        cv / cd
    );
    stop.store(true, Ordering::Relaxed);
    let wake: Vec<SocketAddr> = ctrs[1..]
        .iter()
        .map(|(_, ip)| SocketAddr::from((*ip, 8080)))
        .collect();
    ctrs[0]
        .0
        .r()
        .run(move || {
            for a in wake {
                let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
        })
        .unwrap();
    for s in servers {
        let _ = s.join();
    }

    // 3. LB apply at scale, in node B's table: through `nft -f -` and through nfnetlink.
    let execs: [(&str, Arc<dyn NftExec>); 2] = [
        ("nft -f -", Arc::new(NftCommand::in_netns(b.r()))),
        (
            "nfnetlink batch",
            Arc::new(NftNetlink::in_netns(b.r()).unwrap()),
        ),
    ];
    for (label, exec) in execs {
        let mut lb = LoadBalancer::new(exec, NftConfig::default());
        lb.ensure_table().unwrap();
        let mut big = LbState::default();
        for v in 0..vips {
            let key = VipKey {
                addr: Ipv4Addr::from(0x0b00_0000 + v + 1),
                proto: Proto::Tcp,
                port: 80,
            };
            for k in 0..3u32 {
                let ip = Ipv4Addr::from(0x0900_0000 + (k << 8) + v % 250 + 2);
                big.add_key(key, Backend { ip, port: 8080 });
            }
        }
        let t = Instant::now();
        let full = lb.apply(&big).unwrap();
        let full_ms = t.elapsed().as_secs_f64() * 1e3;
        let key = *big.vips.keys().nth(vips as usize / 2).unwrap();
        let first = *big.vips[&key].iter().next().unwrap();
        let mut change_ms = Vec::new();
        let mut touched = 0;
        // Remove and re-add one backend of one VIP, five times each way.
        for i in 0..10 {
            if i % 2 == 0 {
                big.vips.get_mut(&key).unwrap().remove(&first);
            } else {
                big.vips.get_mut(&key).unwrap().insert(first);
            }
            let t = Instant::now();
            let s = lb.apply(&big).unwrap();
            change_ms.push(t.elapsed().as_secs_f64() * 1e3);
            touched = s.added + s.deleted;
        }
        println!(
            "nftables LB at {vips} VIPs x 3 backends ({} slot elements), via {label}:",
            full.added
        );
        println!("  apply from empty        {full_ms:8.1} ms   (target < 1000 ms)");
        println!(
            "  one backend change      {:8.2} ms median of 10 (~{touched} elements; target < 10 ms)",
            median(change_ms)
        );
        // Empty the maps for the next variant (from empty again).
        lb.apply(&LbState::default()).unwrap();
        lb.invalidate();
    }
    let ruleset = sh(&[
        "ip",
        "netns",
        "exec",
        &b.0,
        "nft",
        "list",
        "chain",
        "ip",
        "berth",
        "prerouting",
    ]);
    println!(
        "  rules in prerouting: {}",
        ruleset.lines().filter(|l| l.contains("dnat")).count()
    );
}
