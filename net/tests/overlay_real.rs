//! Privileged: three "node" namespaces on an underlay bridge, each with berth's bridge and
//! VXLAN overlay; containers (namespaces) on different nodes reach each other; the overlay's
//! reconcile removes a departed peer's entries and entries planted by hand. Everything lives in
//! namespaces named `bt<pid>-...`, deleted by guards on every path.

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use berth_net::bridge::{self, BridgeConfig};
use berth_net::ipam::Ipam;
use berth_net::link::Netlink;
use berth_net::overlay::{Overlay, OverlayConfig, OverlayState, Peer, RtnlOverlay, overlay_mtu};
use berth_net::{Ipv4Net, addr::format_mac, addr::vtep_mac};
use support::*;

struct Node {
    ns: Ns,
    vtep: Ipv4Addr,
    subnet: Ipv4Net,
    overlay: Overlay<RtnlOverlay>,
    bridge: BridgeConfig,
    nl: Netlink,
}

async fn node(ul: &Underlay, tag: &str, n: u8) -> Node {
    let ns = Ns::new(&format!("{tag}-node{n}"));
    let vtep = ul.join(&ns, n);
    ns.sysctl("net/ipv4/ip_forward", "1");
    let subnet: Ipv4Net = format!("9.0.{n}.0/24").parse().unwrap();
    let nl = Netlink::connect_in(&ns.nsref()).unwrap();
    let mtu = overlay_mtu(nl.mtu("ul0").await.unwrap());
    let bridge = BridgeConfig {
        name: "berth0".into(),
        subnet,
        mtu,
        vip_range: Some("11.0.0.0/8".parse().unwrap()),
    };
    bridge::ensure_bridge(&nl, &bridge).await.unwrap();
    let overlay = Overlay::new(
        RtnlOverlay::new(nl.clone(), "berth.vx"),
        OverlayConfig::new("ul0", vtep, subnet),
    );
    Node {
        ns,
        vtep,
        subnet,
        overlay,
        bridge,
        nl,
    }
}

fn peers(nodes: &[&Node]) -> OverlayState {
    OverlayState {
        peers: nodes.iter().map(|n| Peer::new(n.subnet, n.vtep)).collect(),
    }
}

#[test]
fn overlay_connects_containers_across_nodes_and_reconciles_stale_state() {
    if must_skip(&["ip", "bridge", "ping"]) {
        return;
    }
    let rt = runtime();
    let ul = Underlay::new("ov");
    let (a, b, c) = rt.block_on(async {
        (
            node(&ul, "ov", 1).await,
            node(&ul, "ov", 2).await,
            node(&ul, "ov", 3).await,
        )
    });
    let all = peers(&[&a, &b, &c]);
    // Containers: one per node, addresses from each node's IPAM.
    let leases = tempfile::tempdir().unwrap();
    let ctrs: Vec<(Ns, Ipv4Addr)> = [&a, &b, &c]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let ns = Ns::new(&format!("ov-c{}", i + 1));
            let mut ipam = Ipam::open(&leases.path().join(format!("n{i}")), n.subnet).unwrap();
            let ip = ipam.allocate(&format!("ctr-{i}")).unwrap();
            let att = rt
                .block_on(bridge::attach_container(
                    &n.nl,
                    &n.bridge,
                    &format!("ctr-{i}"),
                    &ns.nsref(),
                    ip,
                ))
                .unwrap();
            assert_eq!(att.mtu, 1450, "overlay MTU = underlay 1500 - 50");
            (ns, ip)
        })
        .collect();
    for n in [&a, &b, &c] {
        let r = rt.block_on(n.overlay.apply(&all)).unwrap();
        assert_eq!(
            r.ops.len(),
            6,
            "two peers × (fdb, neighbour, route): {:#?}",
            r.ops
        );
        let again = rt.block_on(n.overlay.apply(&all)).unwrap();
        assert!(
            again.ops.is_empty(),
            "apply is idempotent: {:#?}",
            again.ops
        );
    }
    let vx = a.ns.ip(&["-d", "link", "show", "berth.vx"]);
    assert!(
        vx.contains("mtu 1450") && vx.contains("vxlan id 1024") && vx.contains("dstport 4789"),
        "{vx}"
    );
    assert!(vx.contains("nolearning"), "{vx}");

    let (c1, ip1) = (&ctrs[0].0, ctrs[0].1);
    let (c2, ip2) = (&ctrs[1].0, ctrs[1].1);
    let ip3 = ctrs[2].1;
    // ping A → B and A → C across the overlay.
    assert!(
        c1.exec_ok(&["ping", "-c", "2", "-W", "5", &ip2.to_string()]),
        "ping {ip1} -> {ip2}"
    );
    assert!(
        c1.exec_ok(&["ping", "-c", "1", "-W", "5", &ip3.to_string()]),
        "ping {ip1} -> {ip3}"
    );
    // A 1422-byte ICMP packet with DF fits the 1450 overlay MTU.
    assert!(c1.exec_ok(&[
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "-M",
        "do",
        "-s",
        "1400",
        &ip2.to_string()
    ]));

    // A full-size TCP transfer (4 MiB, MSS-sized segments) and a 1400-byte UDP datagram.
    let sink = tcp_server(c2, 5001, 2, true);
    let got = in_ns(c1, move || tcp_send(SocketAddr::from((ip2, 5001)), 4 << 20)).unwrap();
    assert_eq!(got, 4 << 20);
    drop(sink);
    let _udp = udp_server(c2, 5002, 2);
    let echoed = in_ns(c1, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        // Retry a few times: the first datagram may race neighbour resolution.
        for _ in 0..5 {
            s.send_to(&[7u8; 1400], (ip2, 5002)).unwrap();
            if let Ok((8, _)) = s.recv_from(&mut buf) {
                return Some(u64::from_be_bytes(buf));
            }
        }
        None
    });
    assert_eq!(
        echoed,
        Some(1400),
        "1400-byte UDP datagram across the overlay"
    );

    // Node C leaves: A's desired state drops it; its route, neighbour and FDB entry go.
    let c_mac = format_mac(&vtep_mac(c.vtep));
    let without_c = peers(&[&a, &b]);
    // Stale entries planted by hand must go too.
    a.ns.ip(&[
        "route",
        "add",
        "9.0.99.0/24",
        "via",
        "9.0.99.0",
        "dev",
        "berth.vx",
        "onlink",
    ]);
    a.ns.ip(&[
        "neigh",
        "add",
        "9.0.99.0",
        "lladdr",
        "0e:be:2c:80:00:63",
        "dev",
        "berth.vx",
        "nud",
        "permanent",
    ]);
    sh(&[
        "bridge",
        "-n",
        &a.ns.name,
        "fdb",
        "add",
        "0e:be:2c:80:00:63",
        "dst",
        "44.128.0.99",
        "dev",
        "berth.vx",
        "self",
        "permanent",
    ]);
    let r = rt.block_on(a.overlay.apply(&without_c)).unwrap();
    assert_eq!(r.ops.len(), 6, "3 entries of C + 3 planted: {:#?}", r.ops);
    let routes = a.ns.ip(&["route", "show", "dev", "berth.vx"]);
    let neigh = a.ns.ip(&["neigh", "show", "dev", "berth.vx"]);
    let fdb = sh(&["bridge", "-n", &a.ns.name, "fdb", "show", "dev", "berth.vx"]);
    assert!(
        !routes.contains("9.0.3.0") && !routes.contains("9.0.99.0"),
        "{routes}"
    );
    assert!(routes.contains("9.0.2.0/24 via 9.0.2.0"), "{routes}");
    assert!(
        !neigh.contains("9.0.3.0") && !neigh.contains("9.0.99.0"),
        "{neigh}"
    );
    assert!(
        !fdb.contains(&c_mac) && !fdb.contains("0e:be:2c:80:00:63"),
        "{fdb}"
    );
    assert!(fdb.contains(&format_mac(&vtep_mac(b.vtep))), "{fdb}");
    // A → C no longer routes; A → B still works.
    assert!(!c1.exec_ok(&["ping", "-c", "1", "-W", "1", &ip3.to_string()]));
    assert!(c1.exec_ok(&["ping", "-c", "1", "-W", "5", &ip2.to_string()]));

    // A deleted VXLAN device is recreated by the next apply (periodic reconcile).
    a.ns.ip(&["link", "del", "berth.vx"]);
    let r = rt.block_on(a.overlay.apply(&without_c)).unwrap();
    assert_eq!(r.ops.len(), 3);
    assert!(c1.exec_ok(&["ping", "-c", "1", "-W", "5", &ip2.to_string()]));

    // Teardown: container veth and the device go.
    assert!(
        rt.block_on(bridge::detach_container(&a.nl, "ctr-0"))
            .unwrap()
    );
    assert!(
        !rt.block_on(bridge::detach_container(&a.nl, "ctr-0"))
            .unwrap()
    );
    assert!(rt.block_on(a.overlay.teardown()).unwrap());
    assert!(!a.ns.ip(&["link"]).contains("berth.vx"));
}
