//! Privileged, needs a kernel with `ip_vs` (run in the cgroup v2 microVM by tests/run.sh; the
//! host phase does not select this binary): the IPVS balancer in a "node" namespace with
//! containers on its bridge. Namespaces are named `bt<pid>-...` and deleted by guards on every
//! path (IPVS services, the dummy link and nft objects of a namespace die with it); each test
//! also tears down explicitly and checks that nothing is left.

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use berth_net::ipvs::{IpvsBalancer, IpvsConfig, IpvsDest, IpvsExec, IpvsNetlink, IpvsService};
use berth_net::lb::{Backend, DEFAULT_VIP_RANGE, LbState, VipBalancer, VipKey, VipLabel};
use berth_net::nft::{NftConfig, NftNetlink, Proto};
use support::*;

/// Root, the tools, and IPVS in the kernel (probed in a namespace named after the test's
/// `tag`, as tests run in parallel); `true`: skip (only with BERTH_TEST_ALLOW_SKIP=1).
fn must_skip_ipvs(tag: &str) -> bool {
    if must_skip(&["ip", "nft"]) {
        return true;
    }
    let probe = Ns::new(&format!("{tag}-probe"));
    match IpvsNetlink::in_netns(probe.nsref()) {
        Ok(_) => false,
        Err(e) => skip_or_fail(&format!(
            "{e} (these tests run in the microVM: tests/run.sh)"
        )),
    }
}

fn balancer(n: &Node) -> (Arc<IpvsNetlink>, IpvsBalancer) {
    let exec = Arc::new(IpvsNetlink::in_netns(n.ns.nsref()).expect("IPVS in the node namespace"));
    let nft = Arc::new(NftNetlink::in_netns(n.ns.nsref()).unwrap());
    let cfg = IpvsConfig {
        nft: NftConfig {
            hairpin_subnets: vec![n.bridge.subnet],
            ..NftConfig::default()
        },
        ..IpvsConfig::default()
    };
    (exec.clone(), IpvsBalancer::new(exec, nft, cfg))
}

fn vip_state(name: &str, proto: Proto, backends: &[(Ipv4Addr, u16)]) -> (LbState, VipKey) {
    let label = VipLabel::parse("VIP_0", &format!("/{name}:80")).unwrap();
    let range = DEFAULT_VIP_RANGE.parse().unwrap();
    let mut state = LbState::default();
    let mut key = None;
    for (ip, port) in backends {
        let b = Backend {
            ip: *ip,
            port: *port,
        };
        key = Some(state.add(&label, proto, b, range).unwrap());
    }
    (state, key.expect("at least one backend"))
}

/// The services of `/proc/net/ip_vs` inside the node (independent of berth's netlink reader).
fn proc_services(n: &Node) -> Vec<String> {
    n.ns.exec(&["cat", "/proc/net/ip_vs"])
        .lines()
        .filter(|l| l.starts_with("TCP") || l.starts_with("UDP"))
        .map(str::to_string)
        .collect()
}

/// Nothing of the balancer is left in the node after teardown.
fn assert_torn_down(n: &Node) {
    assert!(proc_services(n).is_empty(), "{:?}", proc_services(n));
    assert!(
        !n.ns.exec_ok(&["ip", "link", "show", "berth-ipvs0"]),
        "the dummy link is left"
    );
    let table = n.ns.exec(&["nft", "list", "table", "ip", "berth"]);
    assert!(!table.contains("ipvs_"), "{table}");
}

#[test]
fn ipvs_vip_spreads_connections_and_drops_removed_backends() {
    if must_skip_ipvs("iv") {
        return;
    }
    let rt = runtime();
    let ul = Underlay::new("iv");
    let mut n = node(&rt, &ul, "iv", 1);
    let backends: Vec<(Ns, Ipv4Addr)> = (1..=3)
        .map(|i| container(&rt, &mut n, &format!("iv-be{i}")))
        .collect();
    let (client, _) = container(&rt, &mut n, "iv-client");
    let _servers: Vec<Server> = backends
        .iter()
        .enumerate()
        .map(|(i, (ns, _))| tcp_server(ns, 8080, i as u8 + 1, false))
        .collect();
    let (exec, mut lb) = balancer(&n);
    lb.setup().unwrap();
    lb.setup().unwrap();
    for key in [
        "conntrack",
        "expire_nodest_conn",
        "expire_quiescent_template",
    ] {
        let v = n.ns.exec(&["cat", &format!("/proc/sys/net/ipv4/vs/{key}")]);
        assert_eq!(v.trim(), "1", "net.ipv4.vs.{key}");
    }
    let ips: Vec<(Ipv4Addr, u16)> = backends.iter().map(|(_, ip)| (*ip, 8080)).collect();
    let (mut state, key) = vip_state("web", Proto::Tcp, &ips);
    let stats = lb.apply(&state).unwrap();
    assert!(stats.full && stats.added == 4, "{stats:?}");
    // The kernel agrees (read back through /proc and through our own dump).
    let services = proc_services(&n);
    assert_eq!(services.len(), 1, "{services:?}");
    assert!(services[0].contains(" rr"), "{services:?}");
    assert_eq!(exec.dests(&key).unwrap().len(), 3);
    assert!(
        exec.dests(&key)
            .unwrap()
            .iter()
            .all(|d| d.masq && d.weight == 1)
    );
    let addrs = n.ns.ip(&["-4", "addr", "show", "dev", "berth-ipvs0"]);
    assert!(addrs.contains(&format!("{}/32", key.addr)), "{addrs}");

    // From a container on the same bridge (the masquerade brings replies back through IPVS).
    let vip = SocketAddr::from((key.addr, 80));
    let counts = spread(&client, vip, 300);
    assert_eq!(counts.values().sum::<usize>(), 300);
    for id in 1..=3u8 {
        let c = counts.get(&id).copied().unwrap_or(0);
        assert!(
            (60..=135).contains(&c),
            "backend {id} got {c} of 300 (20-45% wanted): {counts:?}"
        );
    }
    // From the node itself.
    let host = spread(&n.ns, vip, 30);
    assert_eq!(host.len(), 3, "{host:?}");

    // Backend 3 goes: one destination deleted, and no new connection reaches it.
    state.vips.get_mut(&key).unwrap().remove(&Backend {
        ip: backends[2].1,
        port: 8080,
    });
    let stats = lb.apply(&state).unwrap();
    assert!(
        !stats.full && stats.deleted == 1 && stats.added == 0,
        "{stats:?}"
    );
    let after = spread(&client, vip, 100);
    assert!(
        !after.contains_key(&3),
        "removed backend still receives connections: {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");

    // A fresh balancer (agent restart) reads the kernel and changes nothing.
    let (_, mut again) = balancer(&n);
    again.setup().unwrap();
    let stats = again.apply(&state).unwrap();
    assert!(stats.full && stats.added + stats.deleted == 0, "{stats:?}");

    // The dummy link is what a later nftables run looks for to clean up after IPVS.
    assert!(berth_net::ipvs::link_exists(Some(&n.ns.nsref()), "berth-ipvs0").unwrap());

    // The VIP goes entirely: service and address removed.
    lb.apply(&LbState::default()).unwrap();
    assert!(proc_services(&n).is_empty());
    let addrs = n.ns.ip(&["-4", "addr", "show", "dev", "berth-ipvs0"]);
    assert!(!addrs.contains(&key.addr.to_string()), "{addrs}");
    lb.teardown().unwrap();
    assert_torn_down(&n);
    assert!(!berth_net::ipvs::link_exists(Some(&n.ns.nsref()), "berth-ipvs0").unwrap());
}

#[test]
fn ipvs_udp_vip_moves_a_flow_off_a_removed_backend() {
    if must_skip_ipvs("ivu") {
        return;
    }
    let rt = runtime();
    let ul = Underlay::new("ivu");
    let mut n = node(&rt, &ul, "ivu", 1);
    let b1 = container(&rt, &mut n, "ivu-be1");
    let b2 = container(&rt, &mut n, "ivu-be2");
    let (client, _) = container(&rt, &mut n, "ivu-client");
    let _s1 = udp_server(&b1.0, 5353, 1);
    let _s2 = udp_server(&b2.0, 5353, 2);
    let (_, mut lb) = balancer(&n);
    lb.setup().unwrap();
    let (mut state, key) = vip_state("dns", Proto::Udp, &[(b1.1, 5353), (b2.1, 5353)]);
    lb.apply(&state).unwrap();
    assert!(
        proc_services(&n)[0].starts_with("UDP"),
        "{:?}",
        proc_services(&n)
    );

    // One client socket: one source port, one IPVS connection.
    let sock = in_ns(&client, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    let vip = SocketAddr::from((key.addr, 80));
    let first = udp_ask(&sock, vip, 10).expect("no UDP reply through the VIP");
    for _ in 0..5 {
        assert_eq!(
            udp_ask(&sock, vip, 10),
            Some(first),
            "a UDP flow stays on its backend"
        );
    }
    // Its backend leaves the VIP (the server keeps running): with expire_nodest_conn the
    // flow's next datagrams are scheduled to the remaining backend.
    let gone = if first == 1 { b1.1 } else { b2.1 };
    state.vips.get_mut(&key).unwrap().remove(&Backend {
        ip: gone,
        port: 5353,
    });
    lb.apply(&state).unwrap();
    let now = udp_ask(&sock, vip, 10).expect("no UDP reply after the backend left");
    assert_ne!(now, first, "the same flow moved to the remaining backend");
    for _ in 0..5 {
        assert_eq!(udp_ask(&sock, vip, 10), Some(now));
    }
    lb.teardown().unwrap();
    assert_torn_down(&n);
}

#[test]
fn ipvs_first_apply_removes_stale_berth_services_and_keeps_foreign_ones() {
    if must_skip_ipvs("ivs") {
        return;
    }
    let rt = runtime();
    let ul = Underlay::new("ivs");
    let mut n = node(&rt, &ul, "ivs", 1);
    let (be, ip) = container(&rt, &mut n, "ivs-be1");
    let (client, _) = container(&rt, &mut n, "ivs-client");
    let _srv = tcp_server(&be, 8080, 1, false);
    let (exec, mut lb) = balancer(&n);
    lb.setup().unwrap();
    // Left by an earlier run: a berth VIP in the range and a fixed-address VIP bound to the
    // dummy link; and an operator's own service outside both.
    let svc = |addr: Ipv4Addr, port| IpvsService {
        key: VipKey {
            addr,
            proto: Proto::Tcp,
            port,
        },
        scheduler: "wlc".into(),
    };
    let stale = svc(Ipv4Addr::new(11, 9, 9, 9), 80);
    let fixed = svc(Ipv4Addr::new(10, 77, 0, 9), 8080);
    let foreign = svc(Ipv4Addr::new(192, 168, 77, 1), 80);
    for s in [&stale, &fixed, &foreign] {
        exec.add_service(s).unwrap();
        exec.add_dest(&s.key, &IpvsDest::masq(Backend { ip, port: 8080 }))
            .unwrap();
    }
    exec.add_dummy_addr("berth-ipvs0", fixed.key.addr).unwrap();
    exec.add_dummy_addr("berth-ipvs0", stale.key.addr).unwrap();
    assert_eq!(proc_services(&n).len(), 3);

    let (state, key) = vip_state("web", Proto::Tcp, &[(ip, 8080)]);
    let stats = lb.apply(&state).unwrap();
    assert!(stats.full && stats.deleted == 2, "{stats:?}");
    let left: Vec<VipKey> = exec
        .services()
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.contains(&key) && left.contains(&foreign.key),
        "{left:?}"
    );
    let addrs = n.ns.ip(&["-4", "addr", "show", "dev", "berth-ipvs0"]);
    assert!(
        !addrs.contains("10.77.0.9")
            && !addrs.contains("11.9.9.9")
            && addrs.contains(&key.addr.to_string()),
        "{addrs}"
    );
    assert_eq!(
        in_ns(&client, move || tcp_id((key.addr, 80).into())).unwrap(),
        1
    );

    // Teardown removes berth's, never the operator's.
    lb.teardown().unwrap();
    let left: Vec<VipKey> = exec
        .services()
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(left, vec![foreign.key]);
    exec.flush().unwrap();
    assert_torn_down(&n);
}
