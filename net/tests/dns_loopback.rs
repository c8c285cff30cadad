//! berth's DNS server for real on loopback: clients and fake upstream resolvers are sockets on
//! 127.0.0.1 ephemeral ports (nothing is ever sent to a real resolver). No root needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_net::dns::wire::{
    CLASS_IN, Edns, Header, Message, Name, Question, RData, RType, Rcode, Record,
};
use berth_net::dns::{DnsServer, DnsServerConfig, DnsTable, TaskPort, TaskRecord, VipRecord};
use berth_net::nft::Proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How long a client waits for an answer that must come: generous, never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(10);

fn query(id: u16, name: &str, qtype: RType) -> Message {
    Message {
        header: Header {
            id,
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

async fn udp_ask_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(wait, sock.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

async fn udp_ask(server: SocketAddr, q: &Message) -> Message {
    let bytes = udp_ask_raw(server, &q.encode().unwrap(), PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no UDP answer within {PATIENCE:?} for {q:?}"));
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.header.id, q.header.id);
    assert!(m.header.response);
    m
}

async fn tcp_ask(server: SocketAddr, q: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let bytes = q.encode().unwrap();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    s.write_all(&out).await.unwrap();
    let read = async {
        let len = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(PATIENCE, read)
        .await
        .expect("no TCP answer");
    let m = Message::parse(&buf).unwrap();
    assert_eq!(m.header.id, q.header.id);
    m
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn table() -> Arc<DnsTable> {
    let t = DnsTable::default();
    t.replace_all(
        vec![VipRecord::named("web", "11.0.0.0/8".parse().unwrap())],
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
                task_id: "web.2".into(),
                name: "web".into(),
                framework: "marathon".into(),
                ips: vec!["9.0.1.2".parse().unwrap()],
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
                ips: (1..=60)
                    .map(|i| std::net::IpAddr::V4(Ipv4Addr::new(9, 0, 2, i)))
                    .collect(),
                ports: vec![],
            },
        ],
    );
    Arc::new(t)
}

async fn server(upstreams: Vec<SocketAddr>, forward_timeout: Duration) -> DnsServer {
    let mut cfg = DnsServerConfig::new("127.0.0.1:0".parse().unwrap(), upstreams);
    cfg.forward_timeout = forward_timeout;
    DnsServer::bind(cfg, table()).await.unwrap()
}

/// How a fake upstream behaves.
#[derive(Clone, Copy)]
enum Upstream {
    /// Answers A queries with this address (UDP and TCP).
    Answer(Ipv4Addr),
    /// Never answers.
    Silent,
    /// First sends a reply with the wrong id, then the right one.
    WrongIdFirst(Ipv4Addr),
    /// Answers over UDP with a message larger than 512 bytes (ignoring the client's size).
    Oversized,
    /// Answers over UDP with TC set and no records, over TCP with 60 records.
    TruncatesUdp,
}

/// (transport, id, name) of every query a fake upstream received.
type Seen = Arc<Mutex<Vec<(&'static str, u16, String)>>>;

struct Fake {
    addr: SocketAddr,
    seen: Seen,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn fake_answer(q: &Message, ip: Ipv4Addr, copies: usize) -> Vec<u8> {
    let mut r = q.clone();
    r.header.response = true;
    r.header.recursion_available = true;
    r.edns = None;
    for i in 0..copies {
        r.answers.push(Record {
            name: q.questions[0].name.clone(),
            class: CLASS_IN,
            ttl: 300 + i as u32,
            data: RData::A(ip),
        });
    }
    r.encode().unwrap()
}

async fn fake_upstream(mode: Upstream) -> Fake {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let seen_u = seen.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                return;
            };
            let q = Message::parse(&buf[..n]).unwrap();
            let name = q.questions[0].name.to_string();
            seen_u.lock().unwrap().push(("udp", q.header.id, name));
            let reply = match mode {
                Upstream::Silent => continue,
                Upstream::Answer(ip) => fake_answer(&q, ip, 1),
                Upstream::Oversized => fake_answer(&q, Ipv4Addr::new(192, 0, 2, 9), 60),
                Upstream::TruncatesUdp => {
                    let mut tc =
                        Message::parse(&fake_answer(&q, Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                    tc.header.truncated = true;
                    tc.encode().unwrap()
                }
                Upstream::WrongIdFirst(ip) => {
                    let mut wrong = q.clone();
                    wrong.header.id = q.header.id.wrapping_add(1);
                    let _ = udp
                        .send_to(&fake_answer(&wrong, Ipv4Addr::new(6, 6, 6, 6), 1), peer)
                        .await;
                    fake_answer(&q, ip, 1)
                }
            };
            let _ = udp.send_to(&reply, peer).await;
        }
    });
    let seen_t = seen.clone();
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            let seen = seen_t.clone();
            tokio::spawn(async move {
                let Ok(len) = s.read_u16().await else { return };
                let mut buf = vec![0u8; usize::from(len)];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let q = Message::parse(&buf).unwrap();
                let name = q.questions[0].name.to_string();
                seen.lock().unwrap().push(("tcp", q.header.id, name));
                let reply = match mode {
                    Upstream::Silent => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    Upstream::Answer(ip) | Upstream::WrongIdFirst(ip) => fake_answer(&q, ip, 1),
                    Upstream::Oversized | Upstream::TruncatesUdp => {
                        fake_answer(&q, Ipv4Addr::new(192, 0, 2, 9), 60)
                    }
                };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&reply);
                let _ = s.write_all(&out).await;
            });
        }
    });
    Fake {
        addr,
        seen,
        tasks: vec![udp_task, tcp_task],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_zone_names_over_udp_and_tcp() {
    let srv = server(vec![], Duration::from_secs(1)).await;
    let at = srv.local_addr();
    assert!(at.ip().is_loopback() && at.port() != 0);

    let vip = berth_net::lb::vip_address("web", "11.0.0.0/8".parse().unwrap());
    let r = udp_ask(at, &query(1, "web.l4lb.berth.directory", RType::A)).await;
    assert_eq!((r.header.rcode, addrs(&r)), (Rcode::NoError, vec![vip]));
    assert!(r.header.authoritative);

    let r = udp_ask(at, &query(2, "WEB.marathon.berth.directory.", RType::A)).await;
    assert_eq!(
        addrs(&r),
        vec![Ipv4Addr::new(9, 0, 0, 2), Ipv4Addr::new(9, 0, 1, 2)]
    );

    let r = udp_ask(
        at,
        &query(3, "_web._tcp.marathon.berth.directory", RType::SRV),
    )
    .await;
    assert_eq!(r.answers.len(), 2);
    for a in &r.answers {
        let RData::Srv { port, target, .. } = &a.data else {
            panic!("not SRV: {a:?}");
        };
        assert_eq!(*port, 8080);
        assert!(r.additional.iter().any(|x| &x.name == target));
    }
    assert_eq!(r.additional.len(), 2);

    let r = udp_ask(at, &query(4, "nope.marathon.berth.directory", RType::A)).await;
    assert_eq!(r.header.rcode, Rcode::NxDomain);
    assert!(matches!(r.authority[0].data, RData::Soa(_)));

    let r = udp_ask(at, &query(5, "web.marathon.berth.directory", RType::AAAA)).await;
    assert_eq!((r.header.rcode, r.answers.len()), (Rcode::NoError, 0));

    // 60 A records do not fit 512 bytes: TC over UDP, everything over TCP.
    let big = query(6, "big.marathon.berth.directory", RType::A);
    let r = udp_ask(at, &big).await;
    assert!(r.header.truncated);
    let r = tcp_ask(at, &big).await;
    assert!(!r.header.truncated);
    assert_eq!(r.answers.len(), 60);

    // Another domain without upstreams: REFUSED.
    let r = udp_ask(at, &query(7, "example.com", RType::A)).await;
    assert_eq!(r.header.rcode, Rcode::Refused);
    let c = srv.counters();
    assert_eq!((c.queries, c.local, c.rejected), (8, 7, 1));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_other_names_to_the_upstream_and_relays_the_answer() {
    let up = fake_upstream(Upstream::Answer(Ipv4Addr::new(192, 0, 2, 7))).await;
    let srv = server(vec![up.addr], Duration::from_secs(5)).await;
    let at = srv.local_addr();

    let mut q = query(0x4242, "WwW.Example.COM", RType::A);
    q.edns = Some(Edns {
        udp_payload: 1232,
        version: 0,
        dnssec_ok: false,
    });
    let r = udp_ask(at, &q).await;
    assert_eq!(r.header.rcode, Rcode::NoError);
    assert_eq!(addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 7)]);
    // The upstream's own TTL passes through untouched.
    assert_eq!(r.answers[0].ttl, 300);

    let r = tcp_ask(at, &query(0x4343, "tcp.example.org", RType::A)).await;
    assert_eq!(addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 7)]);

    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "udp");
    assert_eq!(
        seen[0].2, "WwW.Example.COM.",
        "the question is relayed byte for byte"
    );
    // A TCP client's query is relayed over UDP first (UDP-only upstreams work too).
    assert_eq!(seen[1].0, "udp");
    assert_eq!(seen[1].2, "tcp.example.org.");
    // Zone names never reach the upstream.
    udp_ask(at, &query(9, "web.l4lb.berth.directory", RType::A)).await;
    assert_eq!(up.seen.lock().unwrap().len(), 2);
    assert_eq!(srv.counters().forwarded, 2);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gives_servfail_and_the_next_upstream_is_tried() {
    let silent = fake_upstream(Upstream::Silent).await;
    let srv = server(vec![silent.addr], Duration::from_millis(200)).await;
    let r = udp_ask(srv.local_addr(), &query(11, "slow.example.com", RType::A)).await;
    assert_eq!(r.header.rcode, Rcode::ServFail);
    assert_eq!(
        r.questions[0].name,
        Name::from_ascii("slow.example.com").unwrap()
    );
    let r = tcp_ask(srv.local_addr(), &query(12, "slow.example.com", RType::A)).await;
    assert_eq!(r.header.rcode, Rcode::ServFail);
    assert_eq!(srv.counters().servfail, 2);
    srv.shutdown().await;

    let good = fake_upstream(Upstream::Answer(Ipv4Addr::new(192, 0, 2, 8))).await;
    let srv = server(vec![silent.addr, good.addr], Duration::from_millis(200)).await;
    let r = udp_ask(
        srv.local_addr(),
        &query(13, "failover.example.com", RType::A),
    )
    .await;
    assert_eq!(addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 8)]);
    assert!(
        silent
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.2 == "failover.example.com."),
        "the first upstream was asked first"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_with_the_wrong_id_are_ignored() {
    let up = fake_upstream(Upstream::WrongIdFirst(Ipv4Addr::new(192, 0, 2, 10))).await;
    let srv = server(vec![up.addr], Duration::from_secs(5)).await;
    let r = udp_ask(srv.local_addr(), &query(21, "spoof.example.com", RType::A)).await;
    assert_eq!(addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 10)]);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upstream_answer_is_truncated_for_udp_clients() {
    let up = fake_upstream(Upstream::Oversized).await;
    let srv = server(vec![up.addr], Duration::from_secs(5)).await;
    let q = query(31, "big.example.com", RType::A);
    let r = udp_ask(srv.local_addr(), &q).await;
    assert!(r.header.truncated && r.answers.is_empty());
    let r = tcp_ask(srv.local_addr(), &q).await;
    assert_eq!(r.answers.len(), 60);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_answer_is_fetched_over_tcp_for_tcp_clients() {
    let up = fake_upstream(Upstream::TruncatesUdp).await;
    let srv = server(vec![up.addr], Duration::from_secs(5)).await;
    let q = query(35, "tc.example.com", RType::A);
    // A UDP client gets the TC answer as is and retries over TCP itself.
    let r = udp_ask(srv.local_addr(), &q).await;
    assert!(r.header.truncated && r.answers.is_empty());
    let r = tcp_ask(srv.local_addr(), &q).await;
    assert!(!r.header.truncated);
    assert_eq!(r.answers.len(), 60);
    let transports: Vec<&str> = up.seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(transports, vec!["udp", "udp", "tcp"]);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_get_formerr_or_nothing_and_serving_goes_on() {
    let srv = server(vec![], Duration::from_secs(1)).await;
    let at = srv.local_addr();
    // Shorter than a header: no answer.
    assert_eq!(
        udp_ask_raw(at, &[1, 2, 3], Duration::from_millis(300)).await,
        None
    );
    // A pointer loop in the question: FORMERR with the id.
    let mut b = vec![
        0x77, 0x01, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ];
    let r = Message::parse(&udp_ask_raw(at, &b, PATIENCE).await.unwrap()).unwrap();
    assert_eq!((r.header.id, r.header.rcode), (0x7701, Rcode::FormErr));
    // A response sent to the server: dropped (no reflection loops).
    b[2] |= 0x80;
    assert_eq!(udp_ask_raw(at, &b, Duration::from_millis(300)).await, None);
    // Garbage over TCP closes that connection only.
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(&[0, 3, 9, 9, 9]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    // Still serving.
    let r = udp_ask(at, &query(41, "web.l4lb.berth.directory", RType::A)).await;
    assert_eq!(r.answers.len(), 1);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_updates_are_served_at_once() {
    let t = Arc::new(DnsTable::default());
    let srv = DnsServer::bind(
        DnsServerConfig::new("127.0.0.1:0".parse().unwrap(), vec![]),
        t.clone(),
    )
    .await
    .unwrap();
    let at = srv.local_addr();
    let q = query(51, "db.fw.berth.directory", RType::A);
    assert_eq!(udp_ask(at, &q).await.header.rcode, Rcode::NxDomain);
    t.upsert_task(TaskRecord {
        task_id: "db.1".into(),
        name: "db".into(),
        framework: "fw".into(),
        ips: vec!["9.0.0.9".parse().unwrap()],
        ports: vec![],
    });
    assert_eq!(
        addrs(&udp_ask(at, &q).await),
        vec![Ipv4Addr::new(9, 0, 0, 9)]
    );
    t.remove_task("db.1");
    assert_eq!(udp_ask(at, &q).await.header.rcode, Rcode::NxDomain);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_sockets_even_with_forwards_in_flight() {
    let silent = fake_upstream(Upstream::Silent).await;
    let srv = server(vec![silent.addr], Duration::from_secs(3600)).await;
    let at = srv.local_addr();
    // A forward that would wait an hour, and an open idle TCP connection.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(
        &query(61, "hang.example.com", RType::A).encode().unwrap(),
        at,
    )
    .await
    .unwrap();
    let _idle = TcpStream::connect(at).await.unwrap();
    while silent.seen.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handle = srv.shutdown_handle();
    tokio::time::timeout(PATIENCE, srv.shutdown())
        .await
        .expect("shutdown finished");
    handle.shutdown(); // idempotent
    // Both ports are free again.
    let udp = std::net::UdpSocket::bind(at).expect("UDP port released");
    let tcp = std::net::TcpListener::bind(at).expect("TCP port released");
    drop((udp, tcp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_all_get_answers() {
    let up = fake_upstream(Upstream::Answer(Ipv4Addr::new(192, 0, 2, 11))).await;
    let srv = server(vec![up.addr], Duration::from_secs(5)).await;
    let at = srv.local_addr();
    let mut tasks = Vec::new();
    for c in 0..20u16 {
        tasks.push(tokio::spawn(async move {
            for i in 0..25u16 {
                let id = c * 100 + i;
                let name = if i % 2 == 0 {
                    "web.l4lb.berth.directory".to_string()
                } else {
                    format!("n{id}.example.com")
                };
                let r = udp_ask(at, &query(id, &name, RType::A)).await;
                assert_eq!(r.header.rcode, Rcode::NoError);
                assert_eq!(r.answers.len(), 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = srv.counters();
    assert_eq!((c.local, c.forwarded), (260, 240));
    srv.shutdown().await;
}

/// Queries per second on loopback, local answers and forwarded ones, printed:
/// `cargo test -p berth-net --release --test dns_loopback -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_queries_per_second() {
    let up = fake_upstream(Upstream::Answer(Ipv4Addr::new(192, 0, 2, 12))).await;
    let srv = server(vec![up.addr], Duration::from_secs(5)).await;
    let at = srv.local_addr();
    for (label, name) in [
        ("local (A, table)", "web.marathon.berth.directory"),
        ("forwarded (fake upstream)", "bench.example.com"),
    ] {
        let clients = 16;
        let per_client = 2000u32;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let name = name.to_string();
            tasks.push(tokio::spawn(async move {
                let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                sock.connect(at).await.unwrap();
                let mut buf = vec![0u8; 4096];
                for i in 0..per_client {
                    let q = query(i as u16, &name, RType::A).encode().unwrap();
                    sock.send(&q).await.unwrap();
                    tokio::time::timeout(PATIENCE, sock.recv(&mut buf))
                        .await
                        .expect("answer")
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let total = f64::from(per_client) * clients as f64;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "dns bench {label}: {total} queries, {clients} clients, {:.0} queries/s",
            total / secs
        );
    }
    srv.shutdown().await;
}
