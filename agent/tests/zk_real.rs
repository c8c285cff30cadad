//! Master detection against a real ZooKeeper (Debian's `zookeeperd`), started by each test on
//! 127.0.0.1 with a free port and a temporary data dir.
//!
//! The tests play the Mesos masters with berth's own ZooKeeper client: each "master" is a session
//! that creates an EPHEMERAL_SEQUENTIAL `json.info_` node under `/mesos` holding its MasterInfo
//! as a Mesos 1.12 master writes it. Nothing asserts on wall-clock time: every wait is "until the
//! detector reports X", bounded only by a generous hang guard.
//!
//! Without ZooKeeper installed every test fails naming the package, unless
//! `BERTH_TEST_ALLOW_SKIP=1`.

#[path = "zk_real/server.rs"]
mod server;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_agent::mesos::{
    detector::{DetectOptions, MasterDetector, MasterLeader, detect_with},
    zk::{Acl, ZkAuth, ZkClient, ZkOptions, create_flags, perms},
};
use server::{Ensemble, ZkServer, free_port, zookeeper_available};
use tokio::sync::watch;

/// Hang guard for one wait (JVM start-up on a loaded machine included).
const GUARD: Duration = Duration::from_secs(180);

/// The MasterInfo JSON a Mesos 1.12 master on 127.0.0.`k`:`port` writes (keys sorted, as
/// stout's JSON::protobuf does; `ip` is s_addr read as a little-endian uint32).
fn master_info(k: u8, port: u16) -> String {
    let ip = u32::from_le_bytes([127, 0, 0, k]);
    format!(
        r#"{{"address":{{"hostname":"master{k}","ip":"127.0.0.{k}","port":{port}}},"capabilities":[{{"type":"AGENT_UPDATE"}},{{"type":"AGENT_DRAINING"}},{{"type":"QUOTA_V2"}}],"hostname":"master{k}","id":"id-{k}","ip":{ip},"pid":"master@127.0.0.{k}:{port}","port":{port},"version":"1.12.0"}}"#
    )
}

/// A fake Mesos master: a session plus its `json.info_` node.
struct Master {
    client: ZkClient,
    /// The node's name (`json.info_0000000003`).
    node: String,
}

impl Master {
    async fn join(servers: &str, k: u8, session_timeout: Duration) -> Self {
        Self::join_with(
            servers,
            k,
            session_timeout,
            None,
            &Acl::open_unsafe(),
            "/mesos",
        )
        .await
    }

    async fn join_with(
        servers: &str,
        k: u8,
        session_timeout: Duration,
        auth: Option<ZkAuth>,
        acl: &[Acl],
        group: &str,
    ) -> Self {
        let client = connect(
            servers,
            ZkOptions {
                session_timeout,
                auth,
            },
        )
        .await;
        client
            .create_all(group, acl)
            .await
            .expect("create the group znode");
        let path = client
            .create(
                &format!("{group}/json.info_"),
                master_info(k, 5050).as_bytes(),
                acl,
                create_flags::EPHEMERAL_SEQUENTIAL,
            )
            .await
            .expect("create json.info_ node");
        let node = path.rsplit('/').next().unwrap().to_string();
        Self { client, node }
    }
}

/// Connects, retrying while the JVM starts (the readiness probe: ruok is disabled).
async fn connect(servers: &str, options: ZkOptions) -> ZkClient {
    let client = ZkClient::start(servers, options).expect("connect string");
    client
        .wait_connected(GUARD)
        .await
        .expect("ZooKeeper did not come up");
    client
}

fn pid_of(k: u8) -> String {
    format!("master@127.0.0.{k}:5050")
}

/// Waits until the detector's leader satisfies `want`.
async fn wait_leader(
    rx: &mut watch::Receiver<Option<MasterLeader>>,
    what: &str,
    logs: impl Fn() -> String,
    want: impl Fn(&Option<MasterLeader>) -> bool,
) -> Option<MasterLeader> {
    let wait = async {
        loop {
            let cur = rx.borrow_and_update().clone();
            if want(&cur) {
                return cur;
            }
            rx.changed().await.expect("detector stopped");
        }
    };
    match tokio::time::timeout(GUARD, wait).await {
        Ok(l) => l,
        Err(_) => panic!(
            "detector never reported {what}; last: {:?}\n{}",
            rx.borrow().clone(),
            logs()
        ),
    }
}

fn is_pid(l: &Option<MasterLeader>, k: u8) -> bool {
    l.as_ref().is_some_and(|l| l.pid == pid_of(k))
}

async fn detector(servers: &str, path: &str) -> MasterDetector {
    let url = format!("zk://{servers}{path}");
    detect_with(
        &url,
        DetectOptions {
            zk_session_timeout: Duration::from_secs(10),
        },
    )
    .await
    .expect("detect")
}

/// Log lines of this test thread (the runtime is current-thread, so the detector logs here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn picks_the_lowest_json_info_and_follows_leader_changes() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let zk = ZkServer::start();
    let servers = zk.address();
    let slow = Duration::from_secs(60);

    // Two masters joined before the detector starts: the first (lowest sequence) leads.
    let m1 = Master::join(&servers, 1, slow).await;
    let m2 = Master::join(&servers, 2, slow).await;
    assert!(m1.node < m2.node, "{} {}", m1.node, m2.node);

    // A dead server first in the list: the detector moves on to the live one.
    let dead = format!("127.0.0.1:{}", free_port());
    let d = detector(&format!("{dead},{servers}"), "/mesos").await;
    let mut rx = d.leader();
    let l = wait_leader(&mut rx, "master1", || zk.log(), |l| is_pid(l, 1))
        .await
        .unwrap();
    assert_eq!(l.ip.to_string(), "127.0.0.1");
    assert_eq!(l.port, 5050);
    assert_eq!(l.hostname.as_deref(), Some("master1"));
    assert_eq!(l.version.as_deref(), Some("1.12.0"));
    assert_eq!(l.znode.as_deref(), Some(m1.node.as_str()));

    // Nodes that are not masters are ignored: the replicated log's, and a later bad one.
    let admin = connect(&servers, ZkOptions::default()).await;
    admin
        .create(
            "/mesos/log_replicas",
            b"",
            &Acl::open_unsafe(),
            create_flags::PERSISTENT,
        )
        .await
        .unwrap();
    let m3 = Master::join(&servers, 3, slow).await;

    // The leader closes its session (master stops): its node goes, the next lowest leads.
    m1.client.close().await;
    wait_leader(
        &mut rx,
        "master2 after master1 left",
        || zk.log(),
        |l| is_pid(l, 2),
    )
    .await;

    // A second detector started now agrees (lowest of master2, master3).
    let d2 = detector(&servers, "/mesos").await;
    let mut rx2 = d2.leader();
    wait_leader(
        &mut rx2,
        "master2 (second detector)",
        || zk.log(),
        |l| is_pid(l, 2),
    )
    .await;

    m2.client.close().await;
    wait_leader(
        &mut rx,
        "master3 after master2 left",
        || zk.log(),
        |l| is_pid(l, 3),
    )
    .await;
    m3.client.close().await;
    wait_leader(
        &mut rx,
        "no leader once all masters left",
        || zk.log(),
        Option::is_none,
    )
    .await;

    d.close().await;
    d2.close().await;
    admin.close().await;
}

#[tokio::test]
async fn creates_the_group_znode_and_sees_the_first_master() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let zk = ZkServer::start();
    let servers = zk.address();
    let admin = connect(&servers, ZkOptions::default()).await;

    let d = detector(&servers, "/cluster/a/mesos").await;
    let mut rx = d.leader();
    // The detector creates the path (as Mesos' group does); wait for it.
    let made = async {
        while admin
            .exists("/cluster/a/mesos", false)
            .await
            .unwrap()
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(GUARD, made)
        .await
        .expect("the detector never created its group znode");
    assert!(rx.borrow().is_none());

    let m = Master::join_with(
        &servers,
        7,
        Duration::from_secs(60),
        None,
        &Acl::open_unsafe(),
        "/cluster/a/mesos",
    )
    .await;
    wait_leader(&mut rx, "master7", || zk.log(), |l| is_pid(l, 7)).await;
    m.client.close().await;
    d.close().await;
    admin.close().await;
}

#[tokio::test]
async fn a_crashed_master_is_replaced_after_its_session_timeout() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let zk = ZkServer::start();
    let servers = zk.address();
    // The leader's session is short, and it never closes it: dropping the client drops the
    // connection as a killed process would; ZooKeeper expires the session, then the node.
    let m1 = Master::join(&servers, 1, Duration::from_secs(2)).await;
    let m2 = Master::join(&servers, 2, Duration::from_secs(60)).await;
    let d = detector(&servers, "/mesos").await;
    let mut rx = d.leader();
    wait_leader(&mut rx, "master1", || zk.log(), |l| is_pid(l, 1)).await;
    drop(m1);
    wait_leader(
        &mut rx,
        "master2 after master1 crashed",
        || zk.log(),
        |l| is_pid(l, 2),
    )
    .await;
    m2.client.close().await;
    d.close().await;
}

#[tokio::test]
async fn survives_a_zookeeper_restart() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let mut zk = ZkServer::start();
    let servers = zk.address();
    // Long master sessions: they outlive the server restart (the server restores sessions).
    let m1 = Master::join(&servers, 1, Duration::from_secs(120)).await;
    let d = detector(&servers, "/mesos").await;
    let mut rx = d.leader();
    wait_leader(&mut rx, "master1", || zk.log(), |l| is_pid(l, 1)).await;

    let before = logs.text().matches("ZooKeeper session connected").count();
    zk.restart();
    // Both the detector's and the master's sessions reconnect to the restarted server.
    let reconnected = async {
        while logs.text().matches("ZooKeeper session connected").count() < before + 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(GUARD, reconnected).await.is_err() {
        panic!("clients never reconnected after the restart\n{}", zk.log());
    }
    wait_leader(
        &mut rx,
        "master1 after the restart",
        || zk.log(),
        |l| is_pid(l, 1),
    )
    .await;

    // The detector's watch is armed again: it follows a change made after the restart.
    let m2 = Master::join(&servers, 2, Duration::from_secs(120)).await;
    m1.client.close().await;
    wait_leader(
        &mut rx,
        "master2 after the restart",
        || zk.log(),
        |l| is_pid(l, 2),
    )
    .await;
    m2.client.close().await;
    d.close().await;
}

#[tokio::test]
async fn a_lost_session_means_no_leader_until_zookeeper_returns() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let mut zk = ZkServer::start();
    let servers = zk.address();
    let m1 = Master::join(&servers, 1, Duration::from_secs(120)).await;
    // A short detector session: with ZooKeeper gone for longer than that, Mesos' detector
    // expires the session locally and reports no leader.
    let url = format!("zk://{servers}/mesos");
    let d = detect_with(
        &url,
        DetectOptions {
            zk_session_timeout: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    let mut rx = d.leader();
    wait_leader(&mut rx, "master1", || zk.log(), |l| is_pid(l, 1)).await;

    zk.kill();
    wait_leader(
        &mut rx,
        "no leader while ZooKeeper is down",
        || zk.log(),
        Option::is_none,
    )
    .await;
    assert!(
        logs.text()
            .contains("no server reachable within the session timeout")
    );

    // ZooKeeper is back (the master's long session survived): a new session finds the leader.
    zk.restart();
    wait_leader(
        &mut rx,
        "master1 once ZooKeeper is back",
        || zk.log(),
        |l| is_pid(l, 1),
    )
    .await;
    m1.client.close().await;
    d.close().await;
}

#[tokio::test]
async fn bad_leader_data_is_logged_and_gives_no_leader_until_it_goes() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let zk = ZkServer::start();
    let servers = zk.address();
    let bad = connect(&servers, ZkOptions::default()).await;
    bad.create_all("/mesos", &Acl::open_unsafe()).await.unwrap();
    let bad_path = bad
        .create(
            "/mesos/json.info_",
            b"{not json",
            &Acl::open_unsafe(),
            create_flags::EPHEMERAL_SEQUENTIAL,
        )
        .await
        .unwrap();
    let bad_node = bad_path.rsplit('/').next().unwrap().to_string();
    let m1 = Master::join(&servers, 1, Duration::from_secs(60)).await;
    // A bad node that is not the leader is never read.
    let late_bad = bad
        .create(
            "/mesos/json.info_",
            b"\x00garbage",
            &Acl::open_unsafe(),
            create_flags::EPHEMERAL_SEQUENTIAL,
        )
        .await
        .unwrap();

    let d = detector(&servers, "/mesos").await;
    let mut rx = d.leader();
    // The lowest node is garbage: a clear error naming it, and no leader.
    let logged = async {
        while !logs
            .text()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains(&bad_node))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(GUARD, logged)
        .await
        .expect("no error log naming the bad node");
    assert!(rx.borrow().is_none());

    // The bad node goes: the next lowest (master1) leads; the later bad node is ignored.
    bad.delete(&bad_path, -1).await.unwrap();
    wait_leader(
        &mut rx,
        "master1 after the bad node went",
        || zk.log(),
        |l| is_pid(l, 1),
    )
    .await;
    let late_name = late_bad.rsplit('/').next().unwrap();
    assert!(
        !logs
            .text()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains(late_name)),
        "the non-leading bad node was read"
    );
    m1.client.close().await;
    bad.close().await;
    d.close().await;
}

#[tokio::test]
async fn digest_credentials_in_the_url_are_used() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let zk = ZkServer::start();
    let servers = zk.address();
    // The group is readable only by the digest user (no world read at all).
    let auth = ZkAuth {
        scheme: "digest".into(),
        credentials: b"mesos:s3cret".to_vec(),
    };
    let creator_only = [Acl {
        perms: perms::ALL,
        scheme: "auth".into(),
        id: String::new(),
    }];
    let m = Master::join_with(
        &servers,
        4,
        Duration::from_secs(60),
        Some(auth),
        &creator_only,
        "/secure",
    )
    .await;

    let with = detector(&format!("mesos:s3cret@{servers}"), "/secure").await;
    let mut rx = with.leader();
    wait_leader(
        &mut rx,
        "master4 with credentials",
        || zk.log(),
        |l| is_pid(l, 4),
    )
    .await;

    // Without them: NOAUTH, logged, no leader.
    let without = detector(&servers, "/secure").await;
    let denied = async {
        while !logs
            .text()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("NOAUTH"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(GUARD, denied)
        .await
        .expect("no NOAUTH error logged");
    assert!(without.leader().borrow().is_none());
    assert!(!logs.text().contains("s3cret"), "the password was logged");
    m.client.close().await;
    with.close().await;
    without.close().await;
}

#[tokio::test]
async fn follows_the_leader_across_an_ensemble_member_failure() {
    if !zookeeper_available() {
        return;
    }
    let logs = Logs::default();
    let _g = logs.install();
    let mut ens = Ensemble::start(3);
    let servers = ens.connect_string();
    let m1 = Master::join(&servers, 1, Duration::from_secs(120)).await;
    let d = detector(&servers, "/mesos").await;
    let mut rx = d.leader();
    wait_leader(&mut rx, "master1", || ens.logs(), |l| is_pid(l, 1)).await;

    // Take each peer down in turn (two of three keep the quorum) and change the leader while
    // it is down: whichever peer the detector was on, it must have moved to another one.
    let mut leader = m1;
    for i in 0..3 {
        ens.servers[i].kill();
        let k = 2 + i as u8;
        let next = Master::join(&servers, k, Duration::from_secs(120)).await;
        leader.client.close().await;
        wait_leader(
            &mut rx,
            &format!("master{k} with peer {} down", i + 1),
            || ens.logs(),
            |l| is_pid(l, k),
        )
        .await;
        leader = next;
        // Back in the ensemble before the next one goes: serving reads on its own.
        ens.servers[i].restart();
        let probe = connect(&ens.servers[i].address(), ZkOptions::default()).await;
        tokio::time::timeout(GUARD, async {
            while probe.exists("/mesos", false).await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("restarted peer never served");
        probe.close().await;
    }
    let m2 = leader;
    m2.client.close().await;
    d.close().await;
}
