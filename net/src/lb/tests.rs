use super::*;
use crate::nft::RecordingNft;

fn range() -> Ipv4Net {
    DEFAULT_VIP_RANGE.parse().unwrap()
}

fn be(ip: [u8; 4], port: u16) -> Backend {
    Backend {
        ip: Ipv4Addr::from(ip),
        port,
    }
}

#[test]
fn parses_vip_labels_and_names_typos() {
    let web = VipLabel::parse("VIP_0", "/web:80").unwrap();
    assert_eq!(
        web,
        VipLabel {
            target: VipTarget::Named("web".into()),
            port: 80
        }
    );
    let fixed = VipLabel::parse("VIP_1", "1.2.3.4:5000").unwrap();
    assert_eq!(fixed.target, VipTarget::Addr(Ipv4Addr::new(1, 2, 3, 4)));
    assert_eq!(
        VipLabel::parse("VIP_0", "/My-App.prod:443").unwrap().target,
        VipTarget::Named("my-app.prod".into())
    );
    for (value, needle) in [
        ("web:80", "named VIP starts with '/'"),
        ("/web", "no ':port'"),
        ("/web:http", "port must be a number"),
        ("/web:0", "port must be a number"),
        ("/web:70000", "port must be a number"),
        ("/:80", "empty VIP name"),
        ("/we_b:80", "DNS labels"),
        ("/-web:80", "DNS labels"),
        ("1.2.3:80", "dotted IPv4"),
    ] {
        let err = VipLabel::parse("VIP_0", value).unwrap_err().to_string();
        assert!(err.contains(needle), "{value}: {err}");
        assert!(
            err.starts_with(&format!("VIP label VIP_0={value:?}")),
            "{err}"
        );
    }
    let labels = [("VIP_0", "/web:80"), ("owner", "x"), ("VIP_1", "/db:5432")];
    assert_eq!(parse_vip_labels(labels).unwrap().len(), 2);
    assert!(parse_vip_labels([("VIP_x", "/web:80")]).is_err());
}

#[test]
fn named_vips_hash_into_the_range_stably() {
    let a = vip_address("web", range());
    assert!(range().contains(a));
    assert_eq!(a, vip_address("web", range()));
    assert_ne!(a, vip_address("db", range()));
    assert_ne!(a, range().network());
    assert_ne!(a, range().broadcast());
}

fn lb(rec: &Arc<RecordingNft>) -> LoadBalancer {
    LoadBalancer::new(rec.clone(), NftConfig::default())
}

fn web_state(backends: &[Backend], proto: Proto) -> (LbState, VipKey) {
    let mut s = LbState::default();
    let label = VipLabel::parse("VIP_0", "/web:80").unwrap();
    let mut key = None;
    for b in backends {
        key = Some(s.add(&label, proto, *b, range()).unwrap());
    }
    (s, key.unwrap())
}

#[test]
fn first_apply_flushes_and_loads_round_robin_slots() {
    let rec = Arc::new(RecordingNft::default());
    let mut lb = lb(&rec);
    let bs = [
        be([9, 0, 1, 2], 8080),
        be([9, 0, 1, 3], 8080),
        be([9, 0, 2, 2], 8080),
    ];
    let (state, key) = web_state(&bs, Proto::Tcp);
    let stats = lb.apply(&state).unwrap();
    assert!(stats.full);
    assert_eq!(stats.added, 16);
    let script = &rec.scripts()[0];
    assert!(
        script.starts_with(
            "flush map ip berth lb_tcp\nflush map ip berth lb_udp\nadd element ip berth lb_tcp { "
        ),
        "{script}"
    );
    assert_eq!(script.matches(" . 8080").count(), 16);
    // 16 slots over 3 backends: 6/5/5.
    assert_eq!(script.matches("9.0.1.2 . 8080").count(), 6);
    assert_eq!(script.matches("9.0.1.3 . 8080").count(), 5);
    assert!(script.contains(&format!("{} . 80 . 15 : ", key.addr)));
    // Same state again: no transaction at all.
    assert_eq!(lb.apply(&state).unwrap(), LbApplyStats::default());
    assert_eq!(rec.scripts().len(), 1);
}

#[test]
fn backend_change_touches_only_that_vips_elements_and_flushes_udp() {
    let rec = Arc::new(RecordingNft::default());
    let mut lb = lb(&rec);
    let bs = [
        be([9, 0, 1, 2], 53),
        be([9, 0, 1, 3], 53),
        be([9, 0, 2, 2], 53),
    ];
    let (mut state, key) = web_state(&bs, Proto::Udp);
    let other = VipKey {
        addr: Ipv4Addr::new(11, 9, 9, 9),
        proto: Proto::Tcp,
        port: 443,
    };
    state.add_key(other, be([9, 0, 3, 3], 443));
    lb.apply(&state).unwrap();
    state.vips.get_mut(&key).unwrap().remove(&bs[2]);
    let stats = lb.apply(&state).unwrap();
    assert!(!stats.full);
    let script = rec.scripts().last().unwrap().clone();
    assert!(
        !script.contains("11.9.9.9"),
        "untouched VIP in the diff: {script}"
    );
    assert!(!script.contains("flush"), "{script}");
    assert!(
        script.starts_with("delete element ip berth lb_udp { "),
        "{script}"
    );
    assert!(
        !script.contains("9.0.2.2"),
        "removed backend must not be re-added: {script}"
    );
    assert_eq!(stats.deleted, stats.added);
    assert!(stats.added <= 16);
    let flushed = rec.flushed.lock().unwrap().clone();
    assert_eq!(
        flushed,
        vec![ConntrackFlow {
            proto: Proto::Udp,
            orig_dst: key.addr,
            orig_dport: 80,
            reply_src: Ipv4Addr::new(9, 0, 2, 2),
            reply_sport: 53,
        }]
    );
    // Removing the VIP deletes its 16 elements and nothing is added.
    state.vips.remove(&key);
    let stats = lb.apply(&state).unwrap();
    assert_eq!((stats.added, stats.deleted), (0, 16));
    assert_eq!(stats.flushed, 2);
}

#[test]
fn tcp_backend_removal_does_not_flush_conntrack() {
    let rec = Arc::new(RecordingNft::default());
    let mut lb = lb(&rec);
    let bs = [be([9, 0, 1, 2], 80), be([9, 0, 1, 3], 80)];
    let (mut state, key) = web_state(&bs, Proto::Tcp);
    lb.apply(&state).unwrap();
    state.vips.get_mut(&key).unwrap().remove(&bs[0]);
    assert_eq!(lb.apply(&state).unwrap().flushed, 0);
}

#[test]
fn failed_transaction_forces_a_full_reload_next_time() {
    let rec = Arc::new(RecordingNft::default());
    let mut lb = lb(&rec);
    let (state, _) = web_state(&[be([9, 0, 1, 2], 80)], Proto::Tcp);
    lb.apply(&state).unwrap();
    let (state2, _) = web_state(&[be([9, 0, 1, 4], 80)], Proto::Tcp);
    *rec.fail_next.lock().unwrap() = Some("Error: Could not process rule".into());
    assert!(matches!(lb.apply(&state2), Err(LbError::Nft(_))));
    assert!(lb.apply(&state2).unwrap().full);
}

#[test]
fn colliding_names_are_an_error() {
    // A /30 range has two usable addresses: some pair of names must collide.
    let tiny: Ipv4Net = "11.0.0.0/30".parse().unwrap();
    let mut s = LbState::default();
    let mut err = None;
    for n in ["a", "b", "c", "d", "e"] {
        let label = VipLabel::parse("VIP_0", &format!("/{n}:80")).unwrap();
        if let Err(e) = s.add(&label, Proto::Tcp, be([9, 0, 1, 2], 80), tiny) {
            err = Some(e);
            break;
        }
    }
    assert!(
        matches!(err, Some(LbError::NameCollision { .. })),
        "{err:?}"
    );
}
