//! berth's DNS server as the agent runs it: bound on port 53 of a "gateway" address inside a network namespace, asked
//! by glibc's own resolver (`getent`, an independent DNS client) through a `resolv.conf` that
//! names it, over UDP and (with `options use-vc`) TCP. The upstream is a fake resolver inside
//! the same namespace: nothing leaves it. Needs root (netns, bind mounts, port 53).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;

use berth_net::dns::wire::{CLASS_IN, Message, RData, RType, Record};
use berth_net::dns::{DnsCounters, DnsServer, DnsServerConfig, DnsTable, TaskRecord, VipRecord};
use support::{Ns, must_skip};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// The address the server listens on, as the agent does on the bridge gateway. A non-loopback
/// address also makes glibc's AI_ADDRCONFIG ask for A records at all.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);

/// The server thread inside the namespace; stopped and joined on drop (also on panic).
struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Option<DnsCounters>>>,
}

impl ServerThread {
    fn start(ns: &Ns, table: Arc<DnsTable>) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handle = ns
            .nsref()
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    // A fake upstream resolver on another loopback address of the namespace.
                    let up = UdpSocket::bind("127.0.0.2:5300").await.unwrap();
                    let up_addr = up.local_addr().unwrap();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        while let Ok((n, peer)) = up.recv_from(&mut buf).await {
                            let Ok(q) = Message::parse(&buf[..n]) else {
                                continue;
                            };
                            let mut r = q.clone();
                            r.header.response = true;
                            r.header.recursion_available = true;
                            if q.questions[0].qtype == RType::A {
                                r.answers.push(Record {
                                    name: q.questions[0].name.clone(),
                                    class: CLASS_IN,
                                    ttl: 60,
                                    data: RData::A(UPSTREAM_ANSWER),
                                });
                            }
                            let _ = up.send_to(&r.encode().unwrap(), peer).await;
                        }
                    });
                    let listen = SocketAddr::new(GATEWAY.into(), 53);
                    let cfg = DnsServerConfig::new(listen, vec![up_addr]);
                    let srv = DnsServer::bind(cfg, table)
                        .await
                        .expect("bind the gateway:53");
                    ready_tx.send(srv.local_addr()).unwrap();
                    // Also returns when the test panicked (the sender is dropped).
                    let _ = stop_rx.await;
                    let c = srv.counters();
                    srv.shutdown().await;
                    c
                })
            })
            .expect("enter the test namespace");
        let addr = ready_rx
            .recv()
            .expect("DNS server started in the namespace");
        assert_eq!(addr.port(), 53);
        ServerThread {
            stop: Some(stop_tx),
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> DnsCounters {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().join().unwrap().unwrap()
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `getent DB NAME` inside `ns` with `resolv_conf` bind-mounted over /etc/resolv.conf (and
/// hosts looked up through DNS only) in a private mount namespace; (exit code, stdout).
fn getent(ns: &Ns, etc: &Path, db: &str, name: &str) -> (i32, String) {
    let script = format!(
        "mount --bind {r} /etc/resolv.conf && mount --bind {n} /etc/nsswitch.conf && \
         exec getent {db} {name}",
        r = etc.join("resolv.conf").display(),
        n = etc.join("nsswitch.conf").display(),
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "unshare",
            "-m",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script])
        .output()
        .expect("run getent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn first_column(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn table() -> Arc<DnsTable> {
    let t = DnsTable::default();
    t.replace_all(
        vec![VipRecord::named("web", "11.0.0.0/8".parse().unwrap())],
        ["9.0.0.2", "9.0.1.2"]
            .iter()
            .enumerate()
            .map(|(i, ip)| TaskRecord {
                task_id: format!("web.{i}"),
                name: "web".into(),
                framework: "marathon".into(),
                ips: vec![ip.parse().unwrap()],
                ports: vec![],
            })
            .collect(),
    );
    Arc::new(t)
}

#[test]
fn glibc_resolves_through_the_server_on_port_53_over_udp_and_tcp() {
    if must_skip(&["ip", "getent", "unshare", "mount"]) {
        return;
    }
    let ns = Ns::new("dns");
    ns.ip(&["link", "add", "gw0", "type", "bridge"]);
    ns.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "gw0"]);
    ns.ip(&["link", "set", "gw0", "up"]);
    let server = ServerThread::start(&ns, table());
    let vip = berth_net::lb::vip_address("web", "11.0.0.0/8".parse().unwrap()).to_string();

    for (transport, opts) in [("udp", "edns0 trust-ad"), ("tcp", "use-vc")] {
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(
            etc.path().join("resolv.conf"),
            format!("nameserver {GATEWAY}\noptions attempts:1 timeout:5 {opts}\n"),
        )
        .unwrap();
        std::fs::write(etc.path().join("nsswitch.conf"), "hosts: dns\n").unwrap();

        let (code, out) = getent(&ns, etc.path(), "ahostsv4", "web.l4lb.berth.directory");
        assert_eq!(
            (code, first_column(&out)),
            (0, vec![vip.clone()]),
            "{transport}"
        );

        // A and AAAA asked in parallel on one socket; AAAA is an empty NOERROR.
        let (code, out) = getent(&ns, etc.path(), "ahosts", "Web.Marathon.berth.directory");
        assert_eq!(
            (code, first_column(&out)),
            (0, vec!["9.0.0.2".to_string(), "9.0.1.2".to_string()]),
            "{transport}"
        );

        // NXDOMAIN: getent's "not found" exit code.
        let (code, _) = getent(&ns, etc.path(), "hosts", "nope.marathon.berth.directory");
        assert_eq!(code, 2, "{transport}");

        // Forwarded to the (fake) upstream.
        let (code, out) = getent(&ns, etc.path(), "ahostsv4", "www.example.com");
        assert_eq!(
            (code, first_column(&out)),
            (0, vec![UPSTREAM_ANSWER.to_string()]),
            "{transport}"
        );
    }
    let c = server.stop();
    assert!(c.local >= 8 && c.forwarded >= 2, "{c:?}");
    assert_eq!(c.servfail + c.dropped, 0, "{c:?}");
}
