use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn sample() -> Message {
    let q = name("_web._tcp.Marathon.berth.directory");
    Message {
        header: Header {
            id: 0xbeef,
            response: true,
            authoritative: true,
            recursion_desired: true,
            recursion_available: true,
            rcode: Rcode::NoError,
            ..Header::default()
        },
        questions: vec![Question {
            name: q.clone(),
            qtype: RType::SRV,
            qclass: CLASS_IN,
        }],
        answers: vec![Record {
            name: q,
            class: CLASS_IN,
            ttl: 5,
            data: RData::Srv {
                priority: 0,
                weight: 1,
                port: 8080,
                target: name("web-0123abcd.marathon.berth.directory"),
            },
        }],
        authority: vec![Record {
            name: name("berth.directory"),
            class: CLASS_IN,
            ttl: 5,
            data: RData::Soa(Soa {
                mname: name("ns.berth.directory"),
                rname: name("hostmaster.berth.directory"),
                serial: 7,
                refresh: 60,
                retry: 30,
                expire: 86400,
                minimum: 5,
            }),
        }],
        additional: vec![
            Record {
                name: name("web-0123abcd.marathon.berth.directory"),
                class: CLASS_IN,
                ttl: 5,
                data: RData::A(Ipv4Addr::new(9, 0, 1, 2)),
            },
            Record {
                name: name("web-0123abcd.marathon.berth.directory"),
                class: CLASS_IN,
                ttl: 5,
                data: RData::Aaaa("fd00::2".parse().unwrap()),
            },
            Record {
                name: name("alias.example"),
                class: CLASS_IN,
                ttl: 60,
                data: RData::Name(RType::CNAME, name("web.marathon.berth.directory")),
            },
            Record {
                name: name("example"),
                class: CLASS_IN,
                ttl: 60,
                data: RData::Mx {
                    preference: 10,
                    exchange: name("mail.example"),
                },
            },
            Record {
                name: name("example"),
                class: CLASS_IN,
                ttl: 60,
                data: RData::Other(RType::TXT, b"\x05hello".to_vec()),
            },
        ],
        edns: Some(Edns {
            udp_payload: 1232,
            version: 0,
            dnssec_ok: true,
        }),
    }
}

#[test]
fn round_trips_every_record_kind_and_edns() {
    let m = sample();
    let bytes = m.encode().unwrap();
    let back = Message::parse(&bytes).unwrap();
    assert_eq!(back, m);
    // Case is preserved through compression of the first occurrence.
    assert_eq!(back.questions[0].name.labels()[2], b"Marathon".to_vec());
    // Re-encoding gives the same bytes.
    assert_eq!(back.encode().unwrap(), bytes);
}

#[test]
fn header_flags_round_trip() {
    let h = Header {
        id: 1,
        response: true,
        opcode: 2,
        authoritative: true,
        truncated: true,
        recursion_desired: false,
        recursion_available: true,
        authentic_data: true,
        checking_disabled: true,
        rcode: Rcode::Refused,
    };
    let m = Message {
        header: h,
        ..Message::default()
    };
    let bytes = m.encode().unwrap();
    assert_eq!(bytes.len(), HEADER_LEN);
    assert_eq!(Header::parse(&bytes).unwrap(), h);
    for v in 0..16u8 {
        assert_eq!(Rcode::from_u8(v).to_u8(), v);
    }
}

#[test]
fn compression_shrinks_and_points_backwards() {
    let m = sample();
    let bytes = m.encode().unwrap();
    let rdata_len = |d: &RData| match d {
        RData::A(_) => 4,
        RData::Aaaa(_) => 16,
        RData::Srv { target, .. } => 6 + target.wire_len(),
        RData::Soa(s) => s.mname.wire_len() + s.rname.wire_len() + 20,
        RData::Name(_, n) => n.wire_len(),
        RData::Mx { exchange, .. } => 2 + exchange.wire_len(),
        RData::Other(_, raw) => raw.len(),
    };
    let uncompressed: usize = HEADER_LEN
        + m.questions
            .iter()
            .map(|q| q.name.wire_len() + 4)
            .sum::<usize>()
        + m.answers
            .iter()
            .chain(&m.authority)
            .chain(&m.additional)
            .map(|r| r.name.wire_len() + 10 + rdata_len(&r.data))
            .sum::<usize>()
        + 11;
    assert!(
        bytes.len() + 150 < uncompressed,
        "{} bytes compressed, {uncompressed} uncompressed",
        bytes.len()
    );
    // The answer's owner is a pointer to the question name at offset 12.
    let q_end = HEADER_LEN + m.questions[0].name.wire_len() + 4;
    assert_eq!(&bytes[q_end..q_end + 2], &[0xc0, 12]);
}

#[test]
fn reads_rfc1035_compression_example() {
    // RFC 1035 §4.1.4: F.ISI.ARPA at 12 (here: the question), FOO.F.ISI.ARPA as "FOO" + pointer,
    // ARPA as a pointer into the middle of the first name, and the root.
    let mut b = vec![0, 1, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0];
    b.extend_from_slice(b"\x01F\x03ISI\x04ARPA\x00");
    b.extend_from_slice(&[0, 1, 0, 1]);
    let rec = |b: &mut Vec<u8>, owner: &[u8]| {
        b.extend_from_slice(owner);
        b.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
    };
    rec(&mut b, b"\x03FOO\xc0\x0c");
    rec(&mut b, &[0xc0, 12 + 6]);
    rec(&mut b, &[0]);
    let m = Message::parse(&b).unwrap();
    assert_eq!(m.questions[0].name, name("f.isi.arpa"));
    assert_eq!(m.answers[0].name, name("foo.f.isi.arpa"));
    assert_eq!(m.answers[1].name, name("arpa"));
    assert!(m.answers[2].name.is_root());
    assert_eq!(m.answers[0].data, RData::A(Ipv4Addr::new(10, 0, 0, 1)));
}

fn query_with_name_bytes(name_bytes: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 1, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(name_bytes);
    b.extend_from_slice(&[0, 1, 0, 1]);
    b
}

#[test]
fn pointer_loops_and_forward_pointers_are_errors() {
    // A pointer to itself.
    let b = query_with_name_bytes(&[0xc0, 12]);
    assert_eq!(
        Message::parse(&b),
        Err(WireError::BadPointer {
            offset: 12,
            target: 12
        })
    );
    // A label then a pointer back to that label: a two-step loop.
    let b = query_with_name_bytes(&[1, b'a', 0xc0, 12]);
    assert!(matches!(
        Message::parse(&b),
        Err(WireError::BadPointer { offset: 14, .. })
    ));
    // A forward pointer.
    let b = query_with_name_bytes(&[0xc0, 40, 0, 0, 0, 0]);
    assert!(matches!(
        Message::parse(&b),
        Err(WireError::BadPointer { .. })
    ));
    // Two names pointing at each other: the answer's owner points at the question, whose
    // pointer points forward into the answer.
    let mut b = query_with_name_bytes(&[1, b'a', 0xc0, 20]);
    b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
    b[7] = 1;
    assert!(matches!(
        Message::parse(&b),
        Err(WireError::BadPointer { .. })
    ));
}

#[test]
fn reserved_label_types_and_overlong_names_are_errors() {
    let b = query_with_name_bytes(&[0x41, b'a', 0]);
    assert!(matches!(
        Message::parse(&b),
        Err(WireError::BadLabelType { bits: 0x40, .. })
    ));
    // 5 labels of 63 bytes = 321 bytes.
    let mut n = Vec::new();
    for _ in 0..5 {
        n.push(63);
        n.extend_from_slice(&[b'x'; 63]);
    }
    n.push(0);
    let b = query_with_name_bytes(&n);
    assert!(matches!(
        Message::parse(&b),
        Err(WireError::NameTooLong { offset: 12 })
    ));
    // Length counted across pointers too: a 200-byte name, then 100 bytes + pointer to it.
    let mut b = vec![0, 1, 0x01, 0, 0, 2, 0, 0, 0, 0, 0, 0];
    for _ in 0..4 {
        b.push(49);
        b.extend_from_slice(&[b'y'; 49]);
    }
    b.push(0);
    b.extend_from_slice(&[0, 1, 0, 1]);
    for _ in 0..2 {
        b.push(49);
        b.extend_from_slice(&[b'z'; 49]);
    }
    b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert!(matches!(
        Message::parse(&b),
        Err(WireError::NameTooLong { .. })
    ));
    assert!(Name::from_ascii(&"a.".repeat(128)).is_err());
    assert!(Name::from_ascii(&"b".repeat(64)).is_err());
    assert!(Name::from_ascii("a..b").is_err());
}

#[test]
fn every_truncation_of_a_message_is_an_error_not_a_panic() {
    let bytes = sample().encode().unwrap();
    for n in 0..bytes.len() {
        assert!(
            Message::parse(&bytes[..n]).is_err(),
            "prefix of {n} bytes parsed"
        );
    }
    assert!(matches!(
        Message::parse(&bytes[..5]),
        Err(WireError::Truncated { what: "header", .. })
    ));
}

#[test]
fn rdata_length_must_match_type() {
    let mut m = Message::default();
    m.answers.push(Record {
        name: name("a"),
        class: CLASS_IN,
        ttl: 1,
        data: RData::Other(RType::A, vec![1, 2, 3]),
    });
    let bytes = m.encode().unwrap();
    assert!(matches!(
        Message::parse(&bytes),
        Err(WireError::BadRdata {
            rtype: RType::A,
            len: 3,
            ..
        })
    ));
    // SRV whose data length is longer than its fields.
    m.answers[0].data = RData::Other(RType::SRV, vec![0, 0, 0, 0, 0, 1, 0, 9]);
    let bytes = m.encode().unwrap();
    assert!(matches!(
        Message::parse(&bytes),
        Err(WireError::BadRdata {
            rtype: RType::SRV,
            ..
        })
    ));
}

#[test]
fn random_mutations_never_panic() {
    let base = sample().encode().unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        let cut = (next() as usize) % (b.len() + 1);
        if let Ok(m) = Message::parse(&b[..cut]) {
            // Whatever parsed must encode again.
            let _ = m.encode();
        }
        let _ = peek_question(&b[..cut]);
    }
}

#[test]
fn encode_within_drops_additional_then_sets_tc() {
    let mut m = sample();
    m.edns = None;
    let full = m.encode().unwrap().len();
    let no_add = {
        let mut n = m.clone();
        n.additional.clear();
        n.encode().unwrap().len()
    };
    assert!(no_add < full);
    let out = Message::parse(&m.encode_within(full).unwrap()).unwrap();
    assert_eq!(out.additional.len(), m.additional.len());
    let out = Message::parse(&m.encode_within(no_add).unwrap()).unwrap();
    assert!(out.additional.is_empty() && !out.header.truncated);
    assert_eq!(out.answers.len(), 1);
    let out = Message::parse(&m.encode_within(no_add - 1).unwrap()).unwrap();
    assert!(out.header.truncated);
    assert!(out.answers.is_empty() && out.authority.is_empty());
    assert_eq!(out.questions, m.questions);
}

#[test]
fn udp_limit_follows_edns() {
    let mut m = Message::default();
    assert_eq!(m.udp_limit(1232), 512);
    m.edns = Some(Edns {
        udp_payload: 4096,
        version: 0,
        dnssec_ok: false,
    });
    assert_eq!(m.udp_limit(1232), 1232);
    m.edns.as_mut().unwrap().udp_payload = 100;
    assert_eq!(m.udp_limit(1232), 512);
}

#[test]
fn names_compare_case_insensitively_and_print_escaped() {
    assert_eq!(name("WWW.Example.COM."), name("www.example.com"));
    assert!(name("a.B.berth.directory").is_subdomain_of(&name("berth.DIRECTORY")));
    assert!(name("berth.directory").is_subdomain_of(&name("berth.directory")));
    assert!(!name("xberth.directory").is_subdomain_of(&name("berth.directory")));
    assert!(!name("directory").is_subdomain_of(&name("berth.directory")));
    assert_eq!(name("Web.X").to_lowercase_key().as_deref(), Some("web.x"));
    let odd = Name {
        labels: vec![b"a.b".to_vec(), vec![0xff]],
    };
    assert_eq!(odd.to_lowercase_key(), None);
    assert_eq!(odd.to_string(), "a\\046b.\\255.");
    assert_eq!(Name::root().to_string(), ".");
    assert_eq!(RType::SRV.to_string(), "SRV");
    assert_eq!(RType(99).to_string(), "TYPE99");
}

#[test]
fn peek_reads_header_and_first_question() {
    let bytes = sample().encode().unwrap();
    let (h, q) = peek_question(&bytes).unwrap();
    assert_eq!(h.id, 0xbeef);
    assert_eq!(q.unwrap().qtype, RType::SRV);
    let bare = Message::default().encode().unwrap();
    assert_eq!(peek_question(&bare).unwrap().1, None);
}
