use super::*;
use crate::dns::table::{TaskPort, TaskRecord, VipRecord};
use crate::dns::wire::HEADER_LEN;
use crate::nft::Proto;

fn table() -> Arc<DnsTable> {
    let t = DnsTable::default();
    let many: Vec<_> = (1..=40)
        .map(|i| format!("9.0.1.{i}").parse().unwrap())
        .collect();
    t.replace_all(
        vec![VipRecord {
            name: "web".into(),
            addr: Ipv4Addr::new(11, 0, 0, 7),
        }],
        vec![
            TaskRecord {
                task_id: "web.1".into(),
                name: "web".into(),
                framework: "marathon".into(),
                ips: vec!["9.0.0.2".parse().unwrap()],
                ports: vec![TaskPort {
                    protocol: Proto::Tcp,
                    port: 8080,
                    name: None,
                }],
            },
            TaskRecord {
                task_id: "big.1".into(),
                name: "big".into(),
                framework: "marathon".into(),
                ips: many,
                ports: vec![],
            },
        ],
    );
    Arc::new(t)
}

fn shared(upstreams: Vec<SocketAddr>) -> Shared {
    let cfg = DnsServerConfig::new("127.0.0.1:0".parse().unwrap(), upstreams);
    Shared::new(cfg, table(), None)
}

fn query(name: &str, qtype: RType) -> Message {
    Message {
        header: Header {
            id: 0x1234,
            recursion_desired: true,
            ..Header::default()
        },
        questions: vec![Question {
            name: Name::from_ascii(name).unwrap(),
            qtype,
            qclass: CLASS_IN,
        }],
        ..Message::default()
    }
}

fn ask(s: &Shared, q: &Message, udp: bool) -> Message {
    match s.handle(&q.encode().unwrap(), udp) {
        Action::Reply(b) => Message::parse(&b).unwrap(),
        Action::Forward(_) => panic!("forwarded"),
        Action::Drop => panic!("dropped"),
    }
}

#[test]
fn answers_vip_and_task_names_authoritatively_preserving_case() {
    let s = shared(vec![]);
    let r = ask(&s, &query("Web.L4LB.berth.directory", RType::A), true);
    assert_eq!(r.header.id, 0x1234);
    assert!(r.header.response && r.header.authoritative && r.header.recursion_desired);
    assert_eq!(r.header.rcode, Rcode::NoError);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].data, RData::A(Ipv4Addr::new(11, 0, 0, 7)));
    assert_eq!(r.answers[0].ttl, DEFAULT_TTL_FOR_TEST);
    // The owner is the question's name as asked (0x20 case randomisation survives).
    assert_eq!(r.answers[0].name.labels()[0], b"Web".to_vec());

    let r = ask(
        &s,
        &query("_web._tcp.marathon.berth.directory", RType::SRV),
        true,
    );
    let RData::Srv { port, target, .. } = &r.answers[0].data else {
        panic!("{r:?}");
    };
    assert_eq!(*port, 8080);
    assert_eq!(r.additional.len(), 1);
    assert_eq!(&r.additional[0].name, target);
    assert_eq!(r.additional[0].data, RData::A(Ipv4Addr::new(9, 0, 0, 2)));
}

const DEFAULT_TTL_FOR_TEST: u32 = crate::dns::table::DEFAULT_TTL;

#[test]
fn negative_answers_carry_the_soa() {
    let s = shared(vec![]);
    let r = ask(&s, &query("nope.marathon.berth.directory", RType::A), true);
    assert_eq!(r.header.rcode, Rcode::NxDomain);
    assert!(r.answers.is_empty());
    assert!(matches!(r.authority[0].data, RData::Soa(_)));
    let r = ask(
        &s,
        &query("web.marathon.berth.directory", RType::AAAA),
        true,
    );
    assert_eq!(r.header.rcode, Rcode::NoError);
    assert!(r.answers.is_empty());
    assert_eq!(r.authority.len(), 1);
    let r = ask(&s, &query("berth.directory", RType::SOA), true);
    let RData::Soa(soa) = &r.answers[0].data else {
        panic!("{r:?}");
    };
    assert_eq!(soa.serial, s.table.serial());
    // A name with a dot inside a label cannot be in the table.
    let mut q = query("x.berth.directory", RType::A);
    q.questions[0].name = {
        let mut b = vec![0u8; HEADER_LEN];
        b[5] = 1;
        b.extend_from_slice(b"\x03a.b\x05berth\x09directory\x00\x00\x01\x00\x01");
        Message::parse(&b).unwrap().questions[0].name.clone()
    };
    assert_eq!(ask(&s, &q, true).header.rcode, Rcode::NxDomain);
}

#[test]
fn big_answers_are_truncated_over_udp_only() {
    let s = shared(vec![]);
    let q = query("big.marathon.berth.directory", RType::A);
    let r = ask(&s, &q, true);
    assert!(r.header.truncated && r.answers.is_empty());
    let r = ask(&s, &q, false);
    assert!(!r.header.truncated);
    assert_eq!(r.answers.len(), 40);
    // With EDNS0 the client takes up to 1232 bytes: the 40 records fit.
    let mut q = q;
    q.edns = Some(Edns {
        udp_payload: 4096,
        version: 0,
        dnssec_ok: false,
    });
    let r = ask(&s, &q, true);
    assert!(!r.header.truncated);
    assert_eq!(r.answers.len(), 40);
    assert_eq!(r.edns.unwrap().udp_payload, EDNS_UDP_PAYLOAD);
}

#[test]
fn bad_queries_get_formerr_notimp_refused_or_are_dropped() {
    let s = shared(vec![]);
    // Too short for a header, or a response: dropped.
    assert!(matches!(s.handle(&[1, 2, 3], true), Action::Drop));
    let mut resp = query("a.example", RType::A);
    resp.header.response = true;
    assert!(matches!(
        s.handle(&resp.encode().unwrap(), true),
        Action::Drop
    ));
    // Header readable, question cut off: FORMERR with the id.
    let bytes = query("a.example", RType::A).encode().unwrap();
    let Action::Reply(b) = s.handle(&bytes[..bytes.len() - 3], true) else {
        panic!("no FORMERR");
    };
    let r = Message::parse(&b).unwrap();
    assert_eq!((r.header.id, r.header.rcode), (0x1234, Rcode::FormErr));
    // Two questions: FORMERR.
    let mut two = query("a.example", RType::A);
    two.questions.push(two.questions[0].clone());
    assert_eq!(ask(&s, &two, true).header.rcode, Rcode::FormErr);
    // No question: FORMERR.
    let mut none = query("a.example", RType::A);
    none.questions.clear();
    assert_eq!(ask(&s, &none, true).header.rcode, Rcode::FormErr);
    // Opcode STATUS: NOTIMP.
    let mut status = query("a.example", RType::A);
    status.header.opcode = 2;
    assert_eq!(ask(&s, &status, true).header.rcode, Rcode::NotImp);
    // Chaos class in our zone: REFUSED.
    let mut ch = query("web.l4lb.berth.directory", RType::A);
    ch.questions[0].qclass = 3;
    assert_eq!(ask(&s, &ch, true).header.rcode, Rcode::Refused);
    // Another domain with no upstreams: REFUSED.
    assert_eq!(
        ask(&s, &query("example.com", RType::A), true).header.rcode,
        Rcode::Refused
    );
    let c = &s.stats;
    assert_eq!(c.dropped.load(Ordering::Relaxed), 2);
    assert_eq!(c.rejected.load(Ordering::Relaxed), 6);
}

#[test]
fn other_domains_are_forwarded_with_the_client_bytes() {
    let s = shared(vec!["127.0.0.1:5353".parse().unwrap()]);
    let bytes = query("www.example.com", RType::AAAA).encode().unwrap();
    let Action::Forward(f) = s.handle(&bytes, true) else {
        panic!("not forwarded");
    };
    assert_eq!(f.raw, bytes);
    assert_eq!(f.limit, MAX_UDP_LEN);
}

#[test]
fn parses_a_dig_style_query_with_edns_cookie() {
    // What `dig web.l4lb.berth.directory` sends: RD+AD, one question, an OPT record with
    // payload 1232 and an 8-byte client COOKIE option.
    let mut b = vec![0xab, 0xcd, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
    b.extend_from_slice(b"\x03web\x04l4lb\x05berth\x09directory\x00\x00\x01\x00\x01");
    b.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8]);
    b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let s = shared(vec![]);
    let Action::Reply(out) = s.handle(&b, true) else {
        panic!("no reply");
    };
    let r = Message::parse(&out).unwrap();
    assert_eq!(r.header.id, 0xabcd);
    assert_eq!(r.answers[0].data, RData::A(Ipv4Addr::new(11, 0, 0, 7)));
    assert_eq!(r.edns.map(|e| e.udp_payload), Some(EDNS_UDP_PAYLOAD));
}

#[test]
fn own_address_is_not_an_upstream() {
    let own: SocketAddr = "10.0.0.1:53".parse().unwrap();
    let cfg = DnsServerConfig::new(own, vec![own, "10.0.0.2:53".parse().unwrap()]);
    let s = Shared::new(cfg, table(), Some(own));
    assert_eq!(s.config.upstreams, vec!["10.0.0.2:53".parse().unwrap()]);
    let any: SocketAddr = "0.0.0.0:53".parse().unwrap();
    let cfg = DnsServerConfig::new(any, vec!["127.0.0.1:53".parse().unwrap()]);
    assert!(
        Shared::new(cfg, table(), Some(any))
            .config
            .upstreams
            .is_empty()
    );
}

#[test]
fn matches_query_checks_id_flag_and_question() {
    let q = query("www.example.com", RType::A);
    let mut r = q.clone();
    r.header.response = true;
    let question = &q.questions[0];
    assert!(matches_query(&r.encode().unwrap(), 0x1234, question));
    assert!(!matches_query(&r.encode().unwrap(), 0x1235, question));
    assert!(!matches_query(&q.encode().unwrap(), 0x1234, question));
    let mut other = r.clone();
    other.questions[0].qtype = RType::AAAA;
    assert!(!matches_query(&other.encode().unwrap(), 0x1234, question));
    assert!(!matches_query(&[0; 5], 0, question));
}
