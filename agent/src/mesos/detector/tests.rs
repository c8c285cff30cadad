use std::net::{IpAddr, Ipv4Addr};

use berth_proto::mesos::v1 as mesos;
use prost::Message;

use super::*;

/// What a Mesos 1.12 master writes to `json.info_*` (stout's JSON::protobuf, keys sorted).
const MESOS_1_12_JSON: &str = r#"{"address":{"hostname":"m1.example","ip":"10.0.0.7","port":5050},"capabilities":[{"type":"AGENT_UPDATE"},{"type":"AGENT_DRAINING"},{"type":"QUOTA_V2"}],"domain":{"fault_domain":{"region":{"name":"r1"},"zone":{"name":"z1"}}},"hostname":"m1.example","id":"c6b6ef38-0b6c-4a2d-9a8e-0d2b1f5f7c31","ip":117440522,"pid":"master@10.0.0.7:5050","port":5050,"version":"1.12.0"}"#;

#[test]
fn ip_in_network_order_is_little_endian_s_addr() {
    assert_eq!(
        ipv4_from_network_order(16777343),
        Ipv4Addr::new(127, 0, 0, 1)
    );
    // 10.0.0.7 -> s_addr bytes 0a 00 00 07 -> read as LE u32 = 0x0700000a
    assert_eq!(
        ipv4_from_network_order(0x0700_000a),
        Ipv4Addr::new(10, 0, 0, 7)
    );
    assert_eq!(0x0700_000au32, 117440522);
}

#[test]
fn parses_mesos_1_12_master_info_json() {
    let l = parse_master_info_json(MESOS_1_12_JSON.as_bytes(), "json.info_0000000004").unwrap();
    assert_eq!(l.id, "c6b6ef38-0b6c-4a2d-9a8e-0d2b1f5f7c31");
    assert_eq!(l.pid, "master@10.0.0.7:5050");
    assert_eq!(l.ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
    assert_eq!(l.port, 5050);
    assert_eq!(l.hostname.as_deref(), Some("m1.example"));
    assert_eq!(l.version.as_deref(), Some("1.12.0"));
    assert_eq!(l.znode.as_deref(), Some("json.info_0000000004"));
}

#[test]
fn master_info_without_address_uses_deprecated_fields() {
    let j = r#"{"id":"x","ip":16777343,"port":5051,"hostname":"h"}"#;
    let l = parse_master_info_json(j.as_bytes(), "json.info_1").unwrap();
    assert_eq!(l.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(l.port, 5051);
    assert_eq!(l.pid, "master@127.0.0.1:5051");
    assert_eq!(l.hostname.as_deref(), Some("h"));
    assert_eq!(l.version, None);
}

#[test]
fn master_info_ipv6_address() {
    let j = r#"{"id":"x","ip":0,"port":5050,"address":{"ip":"::1","port":5050}}"#;
    let l = parse_master_info_json(j.as_bytes(), "json.info_1").unwrap();
    assert_eq!(l.ip, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(l.pid, "master@[::1]:5050");
}

#[test]
fn master_info_refusals() {
    for (bad, what) in [
        (r#"{"ip":1,"port":5050}"#, "missing id"),
        (r#"{"id":"x","port":5050}"#, "missing ip"),
        (r#"{"id":"x","ip":1}"#, "missing port"),
        (r#"{"id":"x","ip":1,"port":70000}"#, "port out of range"),
        (r#"{"id":"x","ip":-1,"port":5050}"#, "negative ip"),
        (
            r#"{"id":"x","ip":1,"port":5050,"address":{"ip":"nope","port":5050}}"#,
            "bad address.ip",
        ),
        (
            r#"{"id":"x","ip":1,"port":5050,"address":{"ip":"1.2.3.4"}}"#,
            "address without port",
        ),
        (
            r#"{"id":"x","ip":1,"port":5050,"pid":"garbage"}"#,
            "bad pid",
        ),
        ("not json", "garbage"),
        ("", "empty"),
    ] {
        assert!(
            parse_master_info_json(bad.as_bytes(), "json.info_1").is_err(),
            "{what}"
        );
    }
}

#[test]
fn master_info_protobuf_label() {
    let info = mesos::MasterInfo {
        id: "p".into(),
        ip: 16777343,
        port: 5050,
        pid: Some("master@127.0.0.1:5050".into()),
        hostname: Some("localhost".into()),
        version: Some("0.23.0".into()),
        ..Default::default()
    };
    let m = membership("info_0000000002").unwrap();
    let l = parse_leader_data(&m, &info.encode_to_vec()).unwrap();
    assert_eq!(l.pid, "master@127.0.0.1:5050");
    assert_eq!(l.version.as_deref(), Some("0.23.0"));
    assert!(parse_leader_data(&m, b"\xff\xff\xff").is_err());
}

#[test]
fn unlabeled_member_holds_a_pid() {
    let m = membership("0000000005").unwrap();
    assert_eq!(m.label, None);
    let l = parse_leader_data(&m, b"master@10.1.2.3:5050\n").unwrap();
    assert_eq!(l.ip, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    assert_eq!(l.port, 5050);
    assert!(parse_leader_data(&m, b"junk").is_err());
}

#[test]
fn unknown_label_is_refused() {
    let m = membership("foo_0000000001").unwrap();
    assert_eq!(
        parse_leader_data(&m, b"{}"),
        Err(MasterInfoError::UnknownLabel("foo".into()))
    );
}

#[test]
fn membership_follows_mesos_tokenising() {
    let m = membership("json.info_0000000012").unwrap();
    assert_eq!(m.label.as_deref(), Some("json.info"));
    assert_eq!(m.sequence, 12);
    assert_eq!(
        membership("info_0000000003").unwrap().label.as_deref(),
        Some("info")
    );
    assert_eq!(membership("log_replicas"), None);
    assert_eq!(membership("json.info_"), None);
    assert_eq!(membership("json.info_12ab"), None);
    assert_eq!(membership(""), None);
    // Beyond int32: not a member (Mesos' numify<int32_t> fails too).
    assert_eq!(membership("json.info_9999999999"), None);
}

#[test]
fn leader_is_lowest_sequence_of_any_label() {
    let children: Vec<String> = [
        "log_replicas",
        "json.info_0000000007",
        "json.info_0000000003",
        "info_0000000002",
        "json.info_0000000010",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let l = leader_of(&children).unwrap();
    assert_eq!(l.name, "info_0000000002");
    let only_json: Vec<String> = children
        .iter()
        .filter(|c| !c.starts_with("info_"))
        .cloned()
        .collect();
    assert_eq!(leader_of(&only_json).unwrap().name, "json.info_0000000003");
    assert_eq!(leader_of(&["log_replicas".to_string()]), None);
    assert_eq!(leader_of(&[]), None);
}

#[test]
fn zk_url_parsing() {
    let u = ZkUrl::parse("zk://h1:2181,h2:2182/mesos").unwrap();
    assert_eq!(u.servers, "h1:2181,h2:2182");
    assert_eq!(u.path, "/mesos");
    assert_eq!(u.credentials, None);

    let u = ZkUrl::parse("  zk://u:p@ss@10.0.0.1:2181/a/b/  ").unwrap();
    assert_eq!(u.credentials.as_deref(), Some("u:p@ss"));
    assert_eq!(u.servers, "10.0.0.1:2181");
    assert_eq!(u.path, "/a/b");
    assert_eq!(u.to_string(), "zk://u:***@10.0.0.1:2181/a/b");
    assert!(!format!("{u:?}").contains("ss@"));

    let u = ZkUrl::parse("zk://[::1]:2181,h/mesos").unwrap();
    assert_eq!(u.servers, "[::1]:2181,h");

    for bad in [
        "zk://h:2181",
        "zk://h:2181/",
        "zk:///mesos",
        "zk://h:notaport/mesos",
        "zk://nocolon@h/mesos",
        "zk://h//mesos",
        "zk://h/mesos/../x",
        "http://h/mesos",
    ] {
        assert!(ZkUrl::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn bad_url_errors_hide_the_password() {
    let e = ZkUrl::parse("zk://user:secret@h:x/mesos").unwrap_err();
    assert!(!e.to_string().contains("secret"), "{e}");
    assert!(e.to_string().contains("user"), "{e}");
}

#[test]
fn master_flag_forms() {
    assert_eq!(
        parse_master("10.0.0.1:5050").unwrap(),
        MasterSource::Static {
            host: "10.0.0.1".into(),
            port: 5050
        }
    );
    assert_eq!(
        parse_master("master@m.example:5050").unwrap(),
        MasterSource::Static {
            host: "m.example".into(),
            port: 5050
        }
    );
    assert_eq!(
        parse_master("[::1]:5050").unwrap(),
        MasterSource::Static {
            host: "::1".into(),
            port: 5050
        }
    );
    assert!(matches!(
        parse_master("zk://h/mesos").unwrap(),
        MasterSource::ZooKeeper(_)
    ));
    for bad in [
        "10.0.0.1",
        "h:0",
        "h:99999",
        ":5050",
        "foo@h:5050",
        "::1:5050",
        "h/x:5050",
    ] {
        assert!(parse_master(bad).is_err(), "{bad}");
    }
}

#[test]
fn master_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("master");
    std::fs::write(&f, "zk://127.0.0.1:2181/mesos\n").unwrap();
    let src = parse_master(&format!("file://{}", f.display())).unwrap();
    assert_eq!(
        src,
        MasterSource::ZooKeeper(ZkUrl {
            servers: "127.0.0.1:2181".into(),
            path: "/mesos".into(),
            credentials: None
        })
    );
    // A file naming itself is refused after a few indirections, not followed forever.
    std::fs::write(&f, format!("file://{}", f.display())).unwrap();
    assert!(parse_master(&format!("file://{}", f.display())).is_err());
    let missing = dir.path().join("missing");
    assert!(matches!(
        parse_master(&format!("file://{}", missing.display())),
        Err(DetectError::ReadFile { .. })
    ));
}

#[tokio::test]
async fn static_detector_publishes_the_master_and_keeps_the_channel_open() {
    let d = detect("127.0.0.1:5050").await.unwrap();
    let rx = d.leader();
    let l = rx.borrow().clone().unwrap();
    assert_eq!(l.pid, "master@127.0.0.1:5050");
    assert_eq!(l.znode, None);
    assert!(rx.has_changed().is_ok(), "sender must stay alive");
}

#[test]
fn pid_parsing() {
    assert_eq!(
        parse_pid("master@1.2.3.4:5050").unwrap(),
        ("master", "1.2.3.4", 5050)
    );
    assert_eq!(
        parse_pid("master@[::1]:5050").unwrap(),
        ("master", "::1", 5050)
    );
    for bad in [
        "",
        "master",
        "@1.2.3.4:5050",
        "master@:5050",
        "master@1.2.3.4",
        "m@h:0",
    ] {
        assert!(parse_pid(bad).is_err(), "{bad}");
    }
}
