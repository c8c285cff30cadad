use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::*;
use crate::lb::{LbApplyStats, LbBackend, LbState, VipBalancer};
use crate::nft::{NftConfig, Proto, RecordingNft};

fn key(last: u8, port: u16, proto: Proto) -> VipKey {
    VipKey {
        addr: Ipv4Addr::new(11, 0, 0, last),
        proto,
        port,
    }
}

fn be(last: u8, port: u16) -> Backend {
    Backend {
        ip: Ipv4Addr::new(9, 0, 1, last),
        port,
    }
}

fn state(vips: &[(VipKey, &[Backend])]) -> LbState {
    let mut s = LbState::default();
    for (k, bs) in vips {
        s.vips.entry(*k).or_default();
        for b in *bs {
            s.add_key(*k, *b);
        }
    }
    s
}

fn setup() -> (Arc<RecordingIpvs>, Arc<RecordingNft>, IpvsBalancer) {
    let ipvs = Arc::new(RecordingIpvs::default());
    let nft = Arc::new(RecordingNft::default());
    let cfg = IpvsConfig {
        nft: NftConfig {
            hairpin_subnets: vec!["9.0.1.0/24".parse().unwrap()],
            ..NftConfig::default()
        },
        ..IpvsConfig::default()
    };
    let lb = IpvsBalancer::new(ipvs.clone(), nft.clone(), cfg);
    (ipvs, nft, lb)
}

fn dests(ipvs: &RecordingIpvs, k: &VipKey) -> BTreeSet<Backend> {
    ipvs.snapshot().services[k]
        .1
        .iter()
        .map(|d| d.backend)
        .collect()
}

#[test]
fn setup_creates_the_dummy_link_sets_sysctls_and_the_nft_objects() {
    let (ipvs, nft, mut lb) = setup();
    assert_eq!(lb.backend(), LbBackend::Ipvs);
    lb.setup().unwrap();
    lb.setup().unwrap();
    let snap = ipvs.snapshot();
    assert_eq!(snap.dummy, Some(BTreeSet::new()));
    assert_eq!(snap.sysctls["net/ipv4/vs/conntrack"], "1");
    assert_eq!(snap.sysctls["net/ipv4/vs/expire_nodest_conn"], "1");
    assert_eq!(snap.sysctls["net/ipv4/vs/expire_quiescent_template"], "1");
    let ops = ipvs.take_ops();
    assert_eq!(
        ops.iter().filter(|o| o.starts_with("create_dummy")).count(),
        1,
        "the dummy link is created once: {ops:?}"
    );
    let script = &nft.scripts()[0];
    assert!(
        script.contains("add set ip berth ipvs_vips { type ipv4_addr ; }"),
        "{script}"
    );
    assert!(
        script.contains(
            "add rule ip berth ipvs_postrouting ct original ip daddr @ipvs_vips \
             ip saddr 9.0.1.0/24 ip daddr 9.0.1.0/24 masquerade"
        ),
        "{script}"
    );
    assert!(script.contains("flush map ip berth lb_tcp"), "{script}");
    // The base script comes first in the same transaction (the port maps share the table).
    assert!(script.starts_with("add table ip berth"), "{script}");
}

#[test]
fn first_apply_programs_services_destinations_and_addresses() {
    let (ipvs, nft, mut lb) = setup();
    lb.setup().unwrap();
    ipvs.take_ops();
    let web = key(1, 80, Proto::Tcp);
    let dns = key(2, 53, Proto::Udp);
    let empty = key(3, 80, Proto::Tcp);
    let desired = state(&[
        (web, &[be(2, 8080), be(3, 8080), be(4, 8080)]),
        (dns, &[be(5, 5353)]),
        (empty, &[]),
    ]);
    let stats = lb.apply(&desired).unwrap();
    assert!(stats.full);
    assert_eq!((stats.added, stats.deleted), (2 + 4, 0), "{stats:?}");
    let snap = ipvs.snapshot();
    assert_eq!(
        snap.services.len(),
        2,
        "a VIP without backends gets no service"
    );
    assert_eq!(snap.services[&web].0, "rr");
    assert!(
        snap.services[&web]
            .1
            .iter()
            .all(|d| d.masq && d.weight == 1)
    );
    assert_eq!(dests(&ipvs, &web).len(), 3);
    assert_eq!(
        snap.dummy.unwrap(),
        [web.addr, dns.addr].into_iter().collect::<BTreeSet<_>>()
    );
    let scripts = nft.scripts();
    let last = scripts.last().unwrap();
    assert!(last.starts_with("flush set ip berth ipvs_vips\n"), "{last}");
    assert!(
        last.contains("add element ip berth ipvs_vips { 11.0.0.1, 11.0.0.2 }"),
        "{last}"
    );
    // Addresses are bound before services are created.
    let ops = ipvs.take_ops();
    let first_service = ops
        .iter()
        .position(|o| o.starts_with("add_service"))
        .unwrap();
    let last_addr = ops.iter().rposition(|o| o.starts_with("add_addr")).unwrap();
    assert!(last_addr < first_service, "{ops:?}");
    // Applying the same state again changes nothing and reads nothing.
    let again = lb.apply(&desired).unwrap();
    assert_eq!(again, LbApplyStats::default());
    assert!(ipvs.take_ops().is_empty());
}

#[test]
fn later_applies_touch_only_what_changed() {
    let (ipvs, nft, mut lb) = setup();
    lb.setup().unwrap();
    let web = key(1, 80, Proto::Tcp);
    let db = key(2, 5432, Proto::Tcp);
    lb.apply(&state(&[
        (web, &[be(2, 80), be(3, 80), be(4, 80)]),
        (db, &[be(5, 5432)]),
    ]))
    .unwrap();
    ipvs.take_ops();
    let scripts_before = nft.scripts().len();

    // One backend leaves web: one destination deleted, nothing else.
    let stats = lb
        .apply(&state(&[
            (web, &[be(2, 80), be(3, 80)]),
            (db, &[be(5, 5432)]),
        ]))
        .unwrap();
    assert!(!stats.full);
    assert_eq!((stats.added, stats.deleted), (0, 1));
    assert_eq!(ipvs.take_ops(), vec!["del_dest 11.0.0.1:80/tcp 9.0.1.4:80"]);
    assert_eq!(
        nft.scripts().len(),
        scripts_before,
        "no address changed: no nft transaction"
    );

    // A backend moves: the new one is added before the old one goes.
    lb.apply(&state(&[
        (web, &[be(2, 80), be(6, 80)]),
        (db, &[be(5, 5432)]),
    ]))
    .unwrap();
    assert_eq!(
        ipvs.take_ops(),
        vec![
            "add_dest 11.0.0.1:80/tcp 9.0.1.6:80",
            "del_dest 11.0.0.1:80/tcp 9.0.1.3:80"
        ]
    );

    // db loses its last backend: its service and its address go, and it leaves the set.
    let stats = lb
        .apply(&state(&[(web, &[be(2, 80), be(6, 80)]), (db, &[])]))
        .unwrap();
    assert_eq!((stats.added, stats.deleted), (0, 1));
    assert_eq!(
        ipvs.take_ops(),
        vec!["del_service 11.0.0.2:5432/tcp", "del_addr 11.0.0.2"]
    );
    assert_eq!(
        nft.scripts().last().unwrap(),
        "delete element ip berth ipvs_vips { 11.0.0.2 }\n"
    );
    assert_eq!(
        ipvs.snapshot().dummy.unwrap(),
        [web.addr].into_iter().collect::<BTreeSet<_>>()
    );

    // A second port on web's address needs no new address.
    let web2 = key(1, 443, Proto::Tcp);
    lb.apply(&state(&[
        (web, &[be(2, 80), be(6, 80)]),
        (web2, &[be(2, 443)]),
    ]))
    .unwrap();
    assert_eq!(
        ipvs.take_ops(),
        vec![
            "add_service 11.0.0.1:443/tcp rr",
            "add_dest 11.0.0.1:443/tcp 9.0.1.2:443"
        ]
    );
    // ...and its port 80 going keeps the address, still used by 443.
    lb.apply(&state(&[(web2, &[be(2, 443)])])).unwrap();
    assert_eq!(ipvs.take_ops(), vec!["del_service 11.0.0.1:80/tcp"]);
    assert!(ipvs.snapshot().dummy.unwrap().contains(&web.addr));
}

#[test]
fn first_apply_removes_stale_berth_services_and_addresses_but_not_foreign_ones() {
    let (ipvs, _nft, mut lb) = setup();
    lb.setup().unwrap();
    let web = key(1, 80, Proto::Tcp);
    let stale = key(9, 80, Proto::Tcp);
    let fixed_stale = VipKey {
        addr: Ipv4Addr::new(10, 0, 0, 9),
        proto: Proto::Tcp,
        port: 8080,
    };
    let foreign = VipKey {
        addr: Ipv4Addr::new(192, 168, 7, 1),
        proto: Proto::Tcp,
        port: 80,
    };
    let other_sched = key(4, 80, Proto::Udp);
    {
        // What an earlier run (or an operator) left in the kernel.
        let mut st = ipvs.state.lock().unwrap();
        let svc = |sched: &str, ds: &[IpvsDest]| (sched.to_string(), ds.iter().copied().collect());
        st.services.insert(
            web,
            svc(
                "rr",
                &[
                    IpvsDest::masq(be(2, 80)),
                    IpvsDest::masq(be(7, 80)), // not desired any more
                    IpvsDest {
                        backend: be(3, 80),
                        weight: 0, // quiescent: must be redone with weight 1
                        masq: true,
                    },
                ],
            ),
        );
        st.services
            .insert(stale, svc("rr", &[IpvsDest::masq(be(2, 80))]));
        st.services.insert(fixed_stale, svc("rr", &[]));
        st.services.insert(foreign, svc("wlc", &[]));
        st.services
            .insert(other_sched, svc("wlc", &[IpvsDest::masq(be(2, 53))]));
        st.dummy = Some(
            [web.addr, stale.addr, fixed_stale.addr]
                .into_iter()
                .collect(),
        );
    }
    ipvs.take_ops();
    let desired = state(&[(web, &[be(2, 80), be(3, 80)]), (other_sched, &[be(2, 53)])]);
    let stats = lb.apply(&desired).unwrap();
    assert!(stats.full);
    let snap = ipvs.snapshot();
    let keys: BTreeSet<VipKey> = snap.services.keys().copied().collect();
    assert_eq!(
        keys,
        [web, other_sched, foreign].into_iter().collect(),
        "stale berth services (in the range, or bound to the dummy link) are deleted; \
         the foreign one stays"
    );
    assert_eq!(
        snap.services[&other_sched].0, "rr",
        "recreated with berth's scheduler"
    );
    assert_eq!(
        snap.services[&web].1,
        [IpvsDest::masq(be(2, 80)), IpvsDest::masq(be(3, 80))]
            .into_iter()
            .collect()
    );
    assert_eq!(
        snap.dummy.unwrap(),
        [web.addr, other_sched.addr]
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    let ops = ipvs.take_ops();
    assert!(!ops.iter().any(|o| o.contains("192.168.7.1")), "{ops:?}");
}

#[test]
fn a_failed_apply_is_retried_from_the_kernel_state() {
    let (ipvs, _nft, mut lb) = setup();
    lb.setup().unwrap();
    let web = key(1, 80, Proto::Tcp);
    lb.apply(&state(&[(web, &[be(2, 80)])])).unwrap();
    let desired = state(&[(web, &[be(2, 80), be(3, 80), be(4, 80)])]);
    *ipvs.fail_next.lock().unwrap() = Some(libc::ENOMEM);
    let err = lb.apply(&desired).unwrap_err().to_string();
    assert!(
        err.contains("add destination 9.0.1.3:80 of IPVS service 11.0.0.1:80/tcp"),
        "{err}"
    );
    let stats = lb.apply(&desired).unwrap();
    assert!(stats.full, "after a failure the kernel is read again");
    assert_eq!(dests(&ipvs, &web).len(), 3);
}

#[test]
fn teardown_removes_services_the_dummy_link_and_the_nft_objects() {
    let (ipvs, nft, mut lb) = setup();
    lb.setup().unwrap();
    let foreign = VipKey {
        addr: Ipv4Addr::new(192, 168, 7, 1),
        proto: Proto::Tcp,
        port: 80,
    };
    ipvs.add_service(&IpvsService {
        key: foreign,
        scheduler: "rr".into(),
    })
    .unwrap();
    lb.apply(&state(&[(key(1, 80, Proto::Tcp), &[be(2, 80)])]))
        .unwrap();
    lb.teardown().unwrap();
    let snap = ipvs.snapshot();
    assert_eq!(
        snap.services.keys().copied().collect::<Vec<_>>(),
        vec![foreign]
    );
    assert_eq!(snap.dummy, None);
    let last = nft.scripts().last().unwrap().clone();
    assert!(
        last.contains("delete chain ip berth ipvs_postrouting"),
        "{last}"
    );
    assert!(last.contains("delete set ip berth ipvs_vips"), "{last}");
    assert!(
        !last.contains("delete table"),
        "the table stays for port mappings: {last}"
    );
}

#[test]
fn backend_names_parse_and_unavailable_names_the_module() {
    assert_eq!("ipvs".parse::<LbBackend>().unwrap(), LbBackend::Ipvs);
    assert_eq!(
        "nftables".parse::<LbBackend>().unwrap(),
        LbBackend::Nftables
    );
    assert_eq!(LbBackend::default().to_string(), "nftables");
    let err = "iptables".parse::<LbBackend>().unwrap_err().to_string();
    assert!(err.contains("'nftables' or 'ipvs'"), "{err}");
    let err = IpvsError::Unavailable {
        reason: "modprobe ip_vs failed: not found; generic netlink family IPVS not registered"
            .into(),
    }
    .to_string();
    assert!(
        err.starts_with("ip_vs not available (modprobe ip_vs failed"),
        "{err}"
    );
}
