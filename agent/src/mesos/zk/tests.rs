//! The client against a scripted server speaking the wire format (the real server is exercised
//! by `agent/tests/zk_real.rs`).

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{
    proto::{ConnectRequest, ConnectResponse, ReplyHeader, WatcherEvent, xid},
    *,
};

/// Upper bound for one step of a scripted exchange: a hang guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(20);

async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("scripted exchange hung")
}

async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let len = s.read_i32().await.unwrap();
    let mut body = vec![0; len as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

async fn write_frame(s: &mut TcpStream, body: &[u8]) {
    s.write_all(&(body.len() as i32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
}

async fn accept(l: &TcpListener) -> (TcpStream, ConnectRequest) {
    let (mut s, _) = guard(l.accept()).await.unwrap();
    let req = ConnectRequest::decode(&read_frame(&mut s).await).unwrap();
    (s, req)
}

async fn answer_connect(s: &mut TcpStream, timeout_ms: i32, session_id: i64) {
    let rsp = ConnectResponse {
        protocol_version: 0,
        timeout_ms,
        session_id,
        passwd: vec![7; 16],
        read_only: false,
    };
    write_frame(s, &rsp.encode()).await;
}

/// Reads requests until one that is not a ping; returns (xid, opcode, body).
async fn next_request(s: &mut TcpStream) -> (i32, i32, Vec<u8>) {
    loop {
        let f = read_frame(s).await;
        let mut r = Reader::new(&f);
        let x = r.int("xid").unwrap();
        let opcode = r.int("type").unwrap();
        if x == xid::PING {
            let mut w = Writer::new();
            ReplyHeader {
                xid: xid::PING,
                zxid: 0,
                err: 0,
            }
            .encode(&mut w);
            write_frame(s, &w.into_bytes()).await;
            continue;
        }
        return (x, opcode, f[8..].to_vec());
    }
}

async fn reply(s: &mut TcpStream, x: i32, zxid: i64, err: i32, body: &[u8]) {
    let mut w = Writer::new();
    ReplyHeader { xid: x, zxid, err }.encode(&mut w);
    let mut bytes = w.into_bytes();
    bytes.extend_from_slice(body);
    write_frame(s, &bytes).await;
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

async fn wait_state(
    rx: &mut watch::Receiver<SessionState>,
    want: impl Fn(&SessionState) -> bool,
) -> SessionState {
    guard(async {
        loop {
            let s = *rx.borrow_and_update();
            if want(&s) {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
}

#[test]
fn connect_string_parsing() {
    let s = parse_servers("a:1,b,[::1]:3, c:4").unwrap();
    assert_eq!(
        s,
        vec![
            ServerAddr {
                host: "a".into(),
                port: 1
            },
            ServerAddr {
                host: "b".into(),
                port: 2181
            },
            ServerAddr {
                host: "::1".into(),
                port: 3
            },
            ServerAddr {
                host: "c".into(),
                port: 4
            },
        ]
    );
    for bad in ["", "a,", "a:0", "a:x", "::1:3", "[::1", "[::1]x", "a b:1"] {
        assert!(parse_servers(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn session_request_reply_and_watch_event() {
    let (l, addr) = listener().await;
    let opts = ZkOptions {
        session_timeout: Duration::from_secs(8),
        auth: None,
    };
    let client = ZkClient::start(&addr, opts).unwrap();
    let mut events = client.events();

    let (mut s, req) = accept(&l).await;
    assert_eq!(req.session_id, 0);
    assert_eq!(req.passwd, vec![0; 16]);
    assert_eq!(req.timeout_ms, 8000);
    answer_connect(&mut s, 6000, 0x42).await;
    assert_eq!(guard(client.wait_connected(GUARD)).await.unwrap(), 0x42);

    let c = client.clone();
    let call = tokio::spawn(async move { c.get_children("/mesos", true).await });
    let (x, opcode, body) = guard(next_request(&mut s)).await;
    assert_eq!(opcode, op::GET_CHILDREN2);
    let mut r = Reader::new(&body);
    assert_eq!(r.string("path").unwrap(), "/mesos");
    assert!(r.boolean("watch").unwrap());
    let mut w = Writer::new();
    w.int(2)
        .string("json.info_0000000001")
        .string("log_replicas");
    Stat {
        num_children: 2,
        ..Default::default()
    }
    .encode(&mut w);
    reply(&mut s, x, 10, 0, &w.into_bytes()).await;
    let (children, stat) = guard(call).await.unwrap().unwrap();
    assert_eq!(children, vec!["json.info_0000000001", "log_replicas"]);
    assert_eq!(stat.num_children, 2);

    // A watch notification.
    let mut w = Writer::new();
    WatcherEvent {
        event_type: 4,
        state: 3,
        path: "/mesos".into(),
    }
    .encode(&mut w);
    reply(&mut s, xid::NOTIFICATION, -1, 0, &w.into_bytes()).await;
    let ev = guard(events.recv()).await.unwrap();
    assert_eq!(
        ev,
        WatchedEvent {
            event_type: EventType::NodeChildrenChanged,
            path: "/mesos".into()
        }
    );

    // An error answer, and exists() mapping NONODE to None.
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/mesos/x", false).await });
    let (x, opcode, _) = guard(next_request(&mut s)).await;
    assert_eq!(opcode, op::GET_DATA);
    reply(&mut s, x, 11, code::NO_NODE, &[]).await;
    let err = guard(call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(code::NO_NODE));
    assert!(err.to_string().contains("NONODE"), "{err}");

    let c = client.clone();
    let call = tokio::spawn(async move { c.exists("/nope", false).await });
    let (x, opcode, _) = guard(next_request(&mut s)).await;
    assert_eq!(opcode, op::EXISTS);
    reply(&mut s, x, 11, code::NO_NODE, &[]).await;
    assert_eq!(guard(call).await.unwrap().unwrap(), None);

    // close() sends closeSession and waits for its answer.
    let c = client.clone();
    let closing = tokio::spawn(async move { c.close().await });
    let (x, opcode, _) = guard(next_request(&mut s)).await;
    assert_eq!(opcode, op::CLOSE_SESSION);
    reply(&mut s, x, 12, 0, &[]).await;
    guard(closing).await.unwrap();
    let mut st = client.state();
    wait_state(&mut st, |s| *s == SessionState::Closed).await;
    assert!(matches!(
        client.get_data("/x", false).await,
        Err(ZkError::Closed)
    ));
}

#[tokio::test]
async fn reconnects_with_the_same_session_then_handles_expiry() {
    let (l, addr) = listener().await;
    let client = ZkClient::start(&addr, ZkOptions::default()).unwrap();
    let mut st = client.state();
    let (mut s, _) = accept(&l).await;
    answer_connect(&mut s, 6000, 0x77).await;
    wait_state(&mut st, |s| {
        matches!(s, SessionState::Connected { connection: 1, .. })
    })
    .await;

    // A request in flight when the connection drops fails with ConnectionLoss.
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/a", false).await });
    let (x, _, _) = guard(next_request(&mut s)).await;
    // Answer something else first so the zxid moves, then drop the connection.
    let _ = x;
    drop(s);
    assert!(matches!(
        guard(call).await.unwrap(),
        Err(ZkError::ConnectionLoss { .. })
    ));
    wait_state(&mut st, |s| {
        matches!(s, SessionState::Disconnected { session_id: 0x77 })
    })
    .await;

    // The client comes back with its session id and password.
    let (mut s, req) = accept(&l).await;
    assert_eq!(req.session_id, 0x77);
    assert_eq!(req.passwd, vec![7; 16]);
    answer_connect(&mut s, 6000, 0x77).await;
    wait_state(&mut st, |s| {
        matches!(
            s,
            SessionState::Connected {
                session_id: 0x77,
                connection: 2
            }
        )
    })
    .await;
    drop(s);

    // The server says the session expired: Expired, then a brand-new session.
    let (mut s, req) = accept(&l).await;
    assert_eq!(req.session_id, 0x77);
    answer_connect(&mut s, 0, 0).await;
    drop(s);
    wait_state(&mut st, |s| {
        matches!(s, SessionState::Expired { session_id: 0x77 })
    })
    .await;
    let (mut s, req) = accept(&l).await;
    assert_eq!(req.session_id, 0);
    assert_eq!(req.passwd, vec![0; 16]);
    assert_eq!(req.last_zxid_seen, 0);
    answer_connect(&mut s, 6000, 0x78).await;
    wait_state(&mut st, |s| {
        matches!(
            s,
            SessionState::Connected {
                session_id: 0x78,
                ..
            }
        )
    })
    .await;
}

#[tokio::test]
async fn pings_when_idle_and_tracks_zxid() {
    let (l, addr) = listener().await;
    let client = ZkClient::start(&addr, ZkOptions::default()).unwrap();
    let (mut s, _) = accept(&l).await;
    // A short negotiated timeout makes the client ping about every 100 ms.
    answer_connect(&mut s, 300, 0x5).await;
    guard(client.wait_connected(GUARD)).await.unwrap();
    let f = guard(read_frame(&mut s)).await;
    let mut r = Reader::new(&f);
    assert_eq!(r.int("xid").unwrap(), xid::PING);
    assert_eq!(r.int("type").unwrap(), op::PING);

    // The zxid of answers is sent back on reconnection.
    let c = client.clone();
    let call = tokio::spawn(async move { c.exists("/", false).await });
    let (x, _, _) = guard(next_request(&mut s)).await;
    let mut w = Writer::new();
    Stat::default().encode(&mut w);
    reply(&mut s, x, 0x1234, 0, &w.into_bytes()).await;
    assert!(guard(call).await.unwrap().unwrap().is_some());
    drop(s);
    let (_s, req) = accept(&l).await;
    assert_eq!(req.last_zxid_seen, 0x1234);
}

#[tokio::test]
async fn silent_server_is_dropped_and_session_expires_locally() {
    let (l, addr) = listener().await;
    let client = ZkClient::start(&addr, ZkOptions::default()).unwrap();
    let mut st = client.state();
    let (mut s, _) = accept(&l).await;
    answer_connect(&mut s, 300, 0x9).await;
    wait_state(&mut st, |s| matches!(s, SessionState::Connected { .. })).await;
    // The server stops answering (pings unanswered): the read timeout drops the connection.
    wait_state(&mut st, |s| {
        matches!(s, SessionState::Disconnected { session_id: 0x9 })
    })
    .await;
    // No server at all any more: after the session timeout the session is expired locally.
    drop(s);
    drop(l);
    wait_state(&mut st, |s| {
        matches!(s, SessionState::Expired { session_id: 0x9 })
    })
    .await;
}

#[tokio::test]
async fn sends_digest_auth_after_connecting_and_stops_when_refused() {
    let (l, addr) = listener().await;
    let auth = ZkAuth {
        scheme: "digest".into(),
        credentials: b"u:p".to_vec(),
    };
    let client = ZkClient::start(
        &addr,
        ZkOptions {
            session_timeout: Duration::from_secs(6),
            auth: Some(auth),
        },
    )
    .unwrap();
    let mut st = client.state();
    let (mut s, _) = accept(&l).await;
    answer_connect(&mut s, 6000, 0x3).await;
    let f = guard(read_frame(&mut s)).await;
    let mut r = Reader::new(&f);
    assert_eq!(r.int("xid").unwrap(), xid::AUTH);
    assert_eq!(r.int("type").unwrap(), op::AUTH);
    assert_eq!(r.int("auth.type").unwrap(), 0);
    assert_eq!(r.string("scheme").unwrap(), "digest");
    assert_eq!(r.buffer("auth").unwrap(), Some(&b"u:p"[..]));
    reply(&mut s, xid::AUTH, 0, code::AUTH_FAILED, &[]).await;
    wait_state(&mut st, |s| *s == SessionState::AuthFailed).await;
}

#[tokio::test]
async fn reply_out_of_order_drops_the_connection() {
    let (l, addr) = listener().await;
    let client = ZkClient::start(&addr, ZkOptions::default()).unwrap();
    let mut st = client.state();
    let (mut s, _) = accept(&l).await;
    answer_connect(&mut s, 6000, 0x11).await;
    guard(client.wait_connected(GUARD)).await.unwrap();
    let c = client.clone();
    let call = tokio::spawn(async move { c.get_data("/a", false).await });
    let (x, _, _) = guard(next_request(&mut s)).await;
    reply(&mut s, x + 5, 1, 0, &[]).await;
    assert!(matches!(
        guard(call).await.unwrap(),
        Err(ZkError::ConnectionLoss { .. })
    ));
    wait_state(&mut st, |s| matches!(s, SessionState::Disconnected { .. })).await;
}

#[tokio::test]
async fn tries_the_next_server_when_one_is_down() {
    // A port with nothing listening, then a live one: the client ends up on the live one.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let (l, addr) = listener().await;
    let client = ZkClient::start(&format!("{dead_addr},{addr}"), ZkOptions::default()).unwrap();
    let (mut s, _) = accept(&l).await;
    answer_connect(&mut s, 6000, 0x21).await;
    assert_eq!(guard(client.wait_connected(GUARD)).await.unwrap(), 0x21);
}

#[tokio::test]
async fn close_while_disconnected_closes_the_session_on_reconnection() {
    let (l, addr) = listener().await;
    let client = ZkClient::start(&addr, ZkOptions::default()).unwrap();
    let mut st = client.state();
    let (s, _) = {
        let (mut s, r) = accept(&l).await;
        answer_connect(&mut s, 6000, 0x31).await;
        (s, r)
    };
    wait_state(&mut st, |s| matches!(s, SessionState::Connected { .. })).await;
    // The server goes away entirely; the client is told to close meanwhile.
    drop(s);
    drop(l);
    wait_state(&mut st, |s| matches!(s, SessionState::Disconnected { .. })).await;
    let c = client.clone();
    let closing = tokio::spawn(async move { c.close().await });
    // The server comes back on the same address: the client's first request closes the session.
    let l = TcpListener::bind(&addr).await.unwrap();
    let (mut s, req) = accept(&l).await;
    assert_eq!(req.session_id, 0x31);
    answer_connect(&mut s, 6000, 0x31).await;
    let (x, opcode, _) = guard(next_request(&mut s)).await;
    assert_eq!(opcode, op::CLOSE_SESSION);
    reply(&mut s, x, 1, 0, &[]).await;
    guard(closing).await.unwrap();
    wait_state(&mut st, |s| *s == SessionState::Closed).await;
}

#[tokio::test]
async fn close_with_no_server_ends_at_the_session_timeout() {
    let (l, addr) = listener().await;
    let client = ZkClient::start(&addr, ZkOptions::default()).unwrap();
    let mut st = client.state();
    let (mut s, _) = accept(&l).await;
    answer_connect(&mut s, 300, 0x41).await;
    wait_state(&mut st, |s| matches!(s, SessionState::Connected { .. })).await;
    drop(s);
    drop(l);
    wait_state(&mut st, |s| matches!(s, SessionState::Disconnected { .. })).await;
    guard(client.close()).await;
    wait_state(&mut st, |s| *s == SessionState::Closed).await;
}
