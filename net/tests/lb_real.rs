//! Privileged: the nftables load balancer and port mappings in a "node" namespace with
//! containers on its bridge; IPAM across a simulated agent restart. Namespaces are named
//! `bt<pid>-...` and deleted by guards on every path.

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use berth_net::bridge;
use berth_net::ipam::Ipam;
use berth_net::lb::{Backend, DEFAULT_VIP_RANGE, LbState, LoadBalancer, VipLabel};
use berth_net::nft::{MapChange, NftCommand, NftConfig, NftExec, NftNetlink, Proto};
use berth_net::portmap::{PortMapError, PortMapper, PortMapping};
use support::*;

fn nft_config(n: &Node) -> NftConfig {
    NftConfig {
        hairpin_subnets: vec![n.bridge.subnet],
        ..NftConfig::default()
    }
}

type MakeExec = fn(&Ns) -> Arc<dyn NftExec>;

fn nft_cli(ns: &Ns) -> Arc<dyn NftExec> {
    Arc::new(NftCommand::in_netns(ns.nsref()))
}

fn nfnetlink(ns: &Ns) -> Arc<dyn NftExec> {
    Arc::new(NftNetlink::in_netns(ns.nsref()).unwrap())
}

#[test]
fn vip_spreads_connections_and_drops_removed_backends() {
    vip_spread(nft_cli, "lb");
}

#[test]
fn vip_spreads_connections_and_drops_removed_backends_nfnetlink() {
    vip_spread(nfnetlink, "lbn");
}

#[test]
fn udp_vip_flushes_conntrack_of_a_removed_backend() {
    udp_flush(nft_cli, "lbu");
}

#[test]
fn udp_vip_flushes_conntrack_of_a_removed_backend_nfnetlink() {
    udp_flush(nfnetlink, "lbun");
}

fn vip_spread(make: MakeExec, tag: &str) {
    if must_skip(&["ip", "nft", "conntrack"]) {
        return;
    }
    let rt = runtime();
    let ul = Underlay::new(tag);
    let mut n = node(&rt, &ul, tag, 1);
    let backends: Vec<(Ns, Ipv4Addr)> = (1..=3)
        .map(|i| container(&rt, &mut n, &format!("{tag}-be{i}")))
        .collect();
    let (client, _) = container(&rt, &mut n, &format!("{tag}-client"));
    let _servers: Vec<Server> = backends
        .iter()
        .enumerate()
        .map(|(i, (ns, _))| tcp_server(ns, 8080, i as u8 + 1, false))
        .collect();

    let mut lb = LoadBalancer::new(make(&n.ns), nft_config(&n));
    lb.ensure_table().unwrap();
    lb.ensure_table().unwrap();
    let label = VipLabel::parse("VIP_0", "/web:80").unwrap();
    let range = DEFAULT_VIP_RANGE.parse().unwrap();
    let mut state = LbState::default();
    let mut key = None;
    for (_, ip) in &backends {
        key = Some(
            state
                .add(
                    &label,
                    Proto::Tcp,
                    Backend {
                        ip: *ip,
                        port: 8080,
                    },
                    range,
                )
                .unwrap(),
        );
    }
    let key = key.unwrap();
    assert!(lb.apply(&state).unwrap().full);
    let vip = SocketAddr::from((key.addr, 80));

    // From a container on the same bridge (hairpin: the backends see the gateway as source).
    let counts = spread(&client, vip, 300);
    assert_eq!(counts.values().sum::<usize>(), 300);
    for id in 1..=3u8 {
        let c = counts.get(&id).copied().unwrap_or(0);
        assert!(
            (60..=135).contains(&c),
            "backend {id} got {c} of 300 (20-45% wanted): {counts:?}"
        );
    }
    // From the node itself (output hook).
    let host = spread(&n.ns, vip, 30);
    assert_eq!(host.len(), 3, "{host:?}");

    // Backend 3 goes: an incremental change, and no new connection reaches it.
    state.vips.get_mut(&key).unwrap().remove(&Backend {
        ip: backends[2].1,
        port: 8080,
    });
    let stats = lb.apply(&state).unwrap();
    assert!(
        !stats.full && stats.added <= 16 && stats.deleted <= 16,
        "{stats:?}"
    );
    let after = spread(&client, vip, 100);
    assert!(
        !after.contains_key(&3),
        "removed backend still receives connections: {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");

    // The rule count does not grow with VIPs: two LB rules and two port-map rules (tcp, udp) per hook chain.
    let ruleset = n.ns.exec(&["nft", "list", "table", "ip", "berth"]);
    assert_eq!(ruleset.matches("map @lb_").count(), 4, "{ruleset}");
    lb.delete_table().unwrap();
    assert!(!n.ns.exec(&["nft", "list", "tables"]).contains("berth"));
}

fn udp_flush(make: MakeExec, tag: &str) {
    if must_skip(&["ip", "nft", "conntrack"]) {
        return;
    }
    let rt = runtime();
    let ul = Underlay::new(tag);
    let mut n = node(&rt, &ul, tag, 1);
    let b1 = container(&rt, &mut n, &format!("{tag}-be1"));
    let b2 = container(&rt, &mut n, &format!("{tag}-be2"));
    let (client, _) = container(&rt, &mut n, &format!("{tag}-client"));
    let _s1 = udp_server(&b1.0, 5353, 1);
    let _s2 = udp_server(&b2.0, 5353, 2);
    let mut lb = LoadBalancer::new(make(&n.ns), nft_config(&n));
    lb.ensure_table().unwrap();
    let label = VipLabel::parse("VIP_0", "/dns:53").unwrap();
    let range = DEFAULT_VIP_RANGE.parse().unwrap();
    let mut state = LbState::default();
    let key = state
        .add(
            &label,
            Proto::Udp,
            Backend {
                ip: b1.1,
                port: 5353,
            },
            range,
        )
        .unwrap();
    state
        .add(
            &label,
            Proto::Udp,
            Backend {
                ip: b2.1,
                port: 5353,
            },
            range,
        )
        .unwrap();
    lb.apply(&state).unwrap();

    // One client socket (one source port, one conntrack flow). A socket keeps the namespace it
    // was created in, so it is made inside the client and used from here.
    let sock = in_ns(&client, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let vip = SocketAddr::from((key.addr, 53));
    let ask = || -> u8 {
        let mut b = [0u8; 8];
        for _ in 0..5 {
            sock.send_to(&[0], vip).unwrap();
            if let Ok((1, from)) = sock.recv_from(&mut b) {
                assert_eq!(from, vip, "reply must come from the VIP");
                return b[0];
            }
        }
        panic!("no UDP reply through the VIP");
    };
    let first = ask();
    assert!(
        (0..5).all(|_| ask() == first),
        "a UDP flow stays on its backend"
    );
    // The backend that served it goes (its server keeps running: without the conntrack flush
    // the flow would still reach it). apply flushes the flow.
    let gone = if first == 1 { b1.1 } else { b2.1 };
    state.vips.get_mut(&key).unwrap().remove(&Backend {
        ip: gone,
        port: 5353,
    });
    let stats = lb.apply(&state).unwrap();
    assert_eq!(stats.flushed, 1, "{stats:?}");
    let now = ask();
    assert_ne!(now, first, "the same flow moved to the remaining backend");
    let ct = n.ns.exec(&["conntrack", "-L", "-p", "udp"]);
    assert!(
        !ct.contains(&format!("src={gone} ")),
        "flows of the removed backend remain:\n{ct}"
    );
}

#[test]
fn port_mapping_from_the_node_from_another_node_and_ipam_restart() {
    if must_skip(&["ip", "nft"]) {
        return;
    }
    let rt = runtime();
    let ul = Underlay::new("pm");
    let mut n = node(&rt, &ul, "pm", 1);
    let other = Ns::new("pm-node2");
    ul.join(&other, 2);
    let (c1, ip1) = container(&rt, &mut n, "pm-c1");
    let _srv = tcp_server(&c1, 80, 1, false);

    // Agent restart: the lease file is reloaded; the next container gets a fresh address.
    let leases_dir = n._leases.path().to_path_buf();
    n.ipam = Ipam::open(&leases_dir, n.bridge.subnet).unwrap();
    assert_eq!(n.ipam.leases().get("pm-c1"), Some(&ip1));
    let (c2, ip2) = container(&rt, &mut n, "pm-c2");
    assert_ne!(ip1, ip2, "no double allocation after restart");
    let _srv2 = tcp_server(&c2, 80, 2, false);

    let exec = nfnetlink(&n.ns);
    let cfg = nft_config(&n);
    // A rejected nfnetlink batch is an error naming the kernel's reason, not a silent no-op.
    let err = exec
        .apply_changes(
            "nosuch",
            &[MapChange::Flush {
                map: "ports_tcp".into(),
            }],
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
    LoadBalancer::new(exec.clone(), cfg.clone())
        .ensure_table()
        .unwrap();
    let mut pm = PortMapper::new(exec, &cfg);
    let map = |ip, hp| PortMapping {
        proto: Proto::Tcp,
        host_port: hp,
        container_ip: ip,
        container_port: 80,
    };
    pm.add("pm-c1", &[map(ip1, 8080)]).unwrap();
    pm.add("pm-c2", &[map(ip2, 8081)]).unwrap();
    let err = pm.add("pm-c2", &[map(ip2, 8080)]).unwrap_err();
    assert!(matches!(err, PortMapError::AlreadyMapped { .. }), "{err}");
    assert!(err.to_string().contains("already mapped"), "{err}");

    let node_ip = Ipv4Addr::new(44, 128, 0, 1);
    // From the node itself.
    assert_eq!(
        in_ns(&n.ns, move || tcp_id((node_ip, 8080).into())).unwrap(),
        1
    );
    // From another node on the underlay.
    assert_eq!(
        in_ns(&other, move || tcp_id((node_ip, 8081).into())).unwrap(),
        2
    );
    // Hairpin: container 2 reaches container 1 through the node port.
    assert_eq!(
        in_ns(&c2, move || tcp_id((node_ip, 8080).into())).unwrap(),
        1
    );

    // Destroy c1: its mapping and its veth go; its lease is released.
    assert_eq!(pm.remove_owner("pm-c1").unwrap().len(), 1);
    assert!(in_ns(&other, move || tcp_id((node_ip, 8080).into())).is_err());
    assert!(
        rt.block_on(bridge::detach_container(&n.nl, "pm-c1"))
            .unwrap()
    );
    assert_eq!(n.ipam.release("pm-c1").unwrap(), Some(ip1));
}
