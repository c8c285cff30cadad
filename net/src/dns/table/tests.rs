use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn task(id: &str, name: &str, fw: &str, ips: &[&str], ports: &[(Proto, u16)]) -> TaskRecord {
    TaskRecord {
        task_id: id.into(),
        name: name.into(),
        framework: fw.into(),
        ips: ips.iter().map(|s| ip(s)).collect(),
        ports: ports
            .iter()
            .map(|&(protocol, port)| TaskPort {
                protocol,
                port,
                name: None,
            })
            .collect(),
    }
}

fn a_records(l: Lookup) -> Vec<IpAddr> {
    let Lookup::Records { answers, .. } = l else {
        panic!("expected records, got {l:?}");
    };
    let mut v: Vec<IpAddr> = answers
        .into_iter()
        .map(|d| match d {
            ZoneData::A(a) => IpAddr::V4(a),
            ZoneData::Aaaa(a) => IpAddr::V6(a),
            other => panic!("not an address: {other:?}"),
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dns_label_sanitises_like_dcos() {
    assert_eq!(dns_label("web"), "web");
    assert_eq!(dns_label("My.App_v2"), "my-app-v2");
    assert_eq!(dns_label("/group/app"), "group-app");
    assert_eq!(dns_label("--x--"), "x");
    assert_eq!(dns_label("a  b"), "a--b");
    assert_eq!(dns_label("Ünïcode"), "n-code");
    assert_eq!(dns_label("..."), "");
    assert_eq!(dns_label(""), "");
    let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
    let l = dns_label(&long);
    assert_eq!(l, "a".repeat(62));
    assert!(l.len() <= 63 && !l.ends_with('-'));
    assert_eq!(dns_label(&"c".repeat(100)).len(), 63);
}

#[test]
fn instance_label_is_unique_per_task_id_and_short() {
    let a = instance_label("web", "web.1");
    let b = instance_label("web", "web.2");
    assert_ne!(a, b);
    assert!(a.starts_with("web-") && a.len() == 12, "{a}");
    assert_eq!(a, instance_label("web", "web.1"));
    assert!(instance_label(&"x".repeat(80), "id").len() <= 63);
    assert!(instance_label("___", "id").starts_with("t-"));
}

#[test]
fn task_names_answer_a_and_srv_with_additional_targets() {
    let t = DnsTable::default();
    t.replace_all(
        vec![],
        vec![
            task(
                "web.1",
                "web",
                "marathon",
                &["9.0.1.2"],
                &[(Proto::Tcp, 8080)],
            ),
            task(
                "web.2",
                "web",
                "marathon",
                &["9.0.2.2", "fd00::2"],
                &[(Proto::Tcp, 8080), (Proto::Udp, 53)],
            ),
        ],
    );
    assert_eq!(
        a_records(t.lookup("web.marathon.berth.directory", RType::A)),
        vec![ip("9.0.1.2"), ip("9.0.2.2")]
    );
    assert_eq!(
        a_records(t.lookup("web.marathon.berth.directory", RType::AAAA)),
        vec![ip("fd00::2")]
    );
    let Lookup::Records {
        answers,
        additional,
    } = t.lookup("_web._tcp.marathon.berth.directory", RType::SRV)
    else {
        panic!("no SRV");
    };
    assert_eq!(answers.len(), 2);
    let h1 = format!(
        "{}.marathon.berth.directory",
        instance_label("web", "web.1")
    );
    let h2 = format!(
        "{}.marathon.berth.directory",
        instance_label("web", "web.2")
    );
    assert!(answers.contains(&ZoneData::Srv {
        port: 8080,
        target: h1.clone()
    }));
    assert!(additional.contains(&(h1.clone(), ZoneData::A(Ipv4Addr::new(9, 0, 1, 2)))));
    assert!(additional.contains(&(h2.clone(), ZoneData::Aaaa("fd00::2".parse().unwrap()))));
    assert_eq!(additional.len(), 3);
    // The SRV targets resolve.
    assert_eq!(a_records(t.lookup(&h1, RType::A)), vec![ip("9.0.1.2")]);
    // UDP port only on the second instance.
    let Lookup::Records { answers, .. } =
        t.lookup("_web._udp.marathon.berth.directory", RType::SRV)
    else {
        panic!("no UDP SRV");
    };
    assert_eq!(
        answers,
        vec![ZoneData::Srv {
            port: 53,
            target: h2
        }]
    );
}

#[test]
fn nxdomain_nodata_and_not_in_zone() {
    let t = DnsTable::default();
    t.replace_all(
        vec![VipRecord {
            name: "web".into(),
            addr: Ipv4Addr::new(11, 1, 2, 3),
        }],
        vec![task("a.1", "a", "fw", &["9.0.0.5"], &[])],
    );
    assert_eq!(
        t.lookup("nope.fw.berth.directory", RType::A),
        Lookup::NxDomain
    );
    assert_eq!(t.lookup("a.fw.berth.directory", RType::SRV), Lookup::NoData);
    assert_eq!(
        t.lookup("a.fw.berth.directory", RType::AAAA),
        Lookup::NoData
    );
    // Empty non-terminals and the apex exist.
    assert_eq!(t.lookup("fw.berth.directory", RType::A), Lookup::NoData);
    assert_eq!(t.lookup("l4lb.berth.directory", RType::A), Lookup::NoData);
    assert_eq!(t.lookup("berth.directory", RType::A), Lookup::NoData);
    assert_eq!(
        t.lookup("x.a.fw.berth.directory", RType::A),
        Lookup::NxDomain
    );
    assert_eq!(t.lookup("example.com", RType::A), Lookup::NotInZone);
    assert_eq!(t.lookup("xberth.directory", RType::A), Lookup::NotInZone);
    // No ports: no SRV names.
    assert_eq!(
        t.lookup("_a._tcp.fw.berth.directory", RType::SRV),
        Lookup::NxDomain
    );
    assert_eq!(
        a_records(t.lookup("web.l4lb.berth.directory", RType::ANY)),
        vec![ip("11.1.2.3")]
    );
}

#[test]
fn names_are_sanitised_and_lookups_case_insensitive_by_key() {
    let t = DnsTable::new("Berth.Directory.", 7);
    assert_eq!(t.domain(), "berth.directory");
    assert_eq!(t.ttl(), 7);
    t.upsert_task(task(
        "x",
        "My.App",
        "Marathon.Prod",
        &["9.0.0.9"],
        &[(Proto::Tcp, 80)],
    ));
    assert_eq!(
        a_records(t.lookup("my-app.marathon-prod.berth.directory", RType::A)),
        vec![ip("9.0.0.9")]
    );
    assert!(matches!(
        t.lookup("_my-app._tcp.marathon-prod.berth.directory", RType::SRV),
        Lookup::Records { .. }
    ));
    // A name that sanitises to nothing gets no records (and no panic).
    t.upsert_task(task("y", "...", "fw", &["9.0.0.1"], &[]));
    assert_eq!(t.lookup("fw.berth.directory", RType::A), Lookup::NxDomain);
}

#[test]
fn named_ports_get_their_own_srv_name() {
    let t = DnsTable::default();
    let mut rec = task("db.1", "db", "fw", &["9.0.0.3"], &[]);
    rec.ports.push(TaskPort {
        protocol: Proto::Tcp,
        port: 5432,
        name: Some("Postgres".into()),
    });
    t.upsert_task(rec);
    assert!(matches!(
        t.lookup("_postgres._db._tcp.fw.berth.directory", RType::SRV),
        Lookup::Records { .. }
    ));
    assert!(matches!(
        t.lookup("_db._tcp.fw.berth.directory", RType::SRV),
        Lookup::Records { .. }
    ));
}

#[test]
fn per_entry_updates_add_replace_and_remove_only_their_records() {
    let t = DnsTable::default();
    let s0 = t.serial();
    t.upsert_task(task(
        "web.1",
        "web",
        "fw",
        &["9.0.0.1"],
        &[(Proto::Tcp, 80)],
    ));
    t.upsert_task(task(
        "web.2",
        "web",
        "fw",
        &["9.0.0.2"],
        &[(Proto::Tcp, 80)],
    ));
    assert_ne!(t.serial(), s0);
    assert_eq!(
        a_records(t.lookup("web.fw.berth.directory", RType::A)),
        vec![ip("9.0.0.1"), ip("9.0.0.2")]
    );
    // The instance moved: its old address is gone.
    t.upsert_task(task(
        "web.1",
        "web",
        "fw",
        &["9.0.0.7"],
        &[(Proto::Tcp, 80)],
    ));
    assert_eq!(
        a_records(t.lookup("web.fw.berth.directory", RType::A)),
        vec![ip("9.0.0.2"), ip("9.0.0.7")]
    );
    assert!(t.remove_task("web.2"));
    assert!(!t.remove_task("web.2"));
    assert_eq!(
        a_records(t.lookup("web.fw.berth.directory", RType::A)),
        vec![ip("9.0.0.7")]
    );
    assert!(t.remove_task("web.1"));
    // Everything it contributed is gone, including the empty non-terminal.
    assert!(t.is_empty());
    assert_eq!(
        t.lookup("web.fw.berth.directory", RType::A),
        Lookup::NxDomain
    );
    assert_eq!(t.lookup("fw.berth.directory", RType::A), Lookup::NxDomain);
    assert_eq!(t.lookup("berth.directory", RType::A), Lookup::NoData);

    t.upsert_vip(VipRecord {
        name: "web".into(),
        addr: Ipv4Addr::new(11, 0, 0, 1),
    });
    t.upsert_vip(VipRecord {
        name: "web".into(),
        addr: Ipv4Addr::new(11, 0, 0, 2),
    });
    assert_eq!(
        a_records(t.lookup("web.l4lb.berth.directory", RType::A)),
        vec![ip("11.0.0.2")]
    );
    assert!(t.remove_vip("web"));
    assert!(t.is_empty());
}

#[test]
fn replace_all_swaps_everything_and_dedups_task_ids() {
    let t = DnsTable::default();
    t.upsert_task(task("old", "old", "fw", &["9.0.0.1"], &[]));
    t.replace_all(
        vec![VipRecord::named("Web.Front", "11.0.0.0/8".parse().unwrap())],
        vec![
            task("n.1", "new", "fw", &["9.0.0.2"], &[]),
            task("n.1", "new", "fw", &["9.0.0.3"], &[]),
        ],
    );
    assert_eq!(
        t.lookup("old.fw.berth.directory", RType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        a_records(t.lookup("new.fw.berth.directory", RType::A)),
        vec![ip("9.0.0.3")]
    );
    let vip = vip_address("web.front", "11.0.0.0/8".parse().unwrap());
    assert_eq!(
        a_records(t.lookup("web.front.l4lb.berth.directory", RType::A)),
        vec![IpAddr::V4(vip)]
    );
    assert_eq!(
        t.lookup("front.l4lb.berth.directory", RType::A),
        Lookup::NoData
    );
}

#[test]
fn duplicate_addresses_are_answered_once() {
    let t = DnsTable::default();
    t.upsert_task(task("a", "web", "fw", &["9.0.0.1", "9.0.0.1"], &[]));
    t.upsert_task(task("b", "web", "fw", &["9.0.0.1"], &[]));
    assert_eq!(
        a_records(t.lookup("web.fw.berth.directory", RType::A)),
        vec![ip("9.0.0.1")]
    );
    assert!(t.remove_task("a"));
    assert_eq!(
        a_records(t.lookup("web.fw.berth.directory", RType::A)),
        vec![ip("9.0.0.1")]
    );
}
