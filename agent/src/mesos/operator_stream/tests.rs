//! [`ClusterState::apply`] on recorded event streams (protobuf as `berth master` writes them,
//! JSON as a Mesos 1.12 master writes them), and the client against in-process masters: leader
//! changes, closed streams, redirects and refusals. Waits are bounded by a hang guard only.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use berth_proto::mesos::v1::master::{event, response};

use super::*;

/// Hang guard of one wait.
const GUARD: Duration = Duration::from_secs(60);

fn task(id: &str, framework: &str, agent: &str, state: mesos::TaskState) -> mesos::Task {
    let mut task = mesos::Task {
        name: format!("{id}-name"),
        task_id: mesos::TaskId { value: id.into() },
        framework_id: mesos::FrameworkId {
            value: framework.into(),
        },
        agent_id: mesos::AgentId {
            value: agent.into(),
        },
        labels: Some(mesos::Labels {
            labels: vec![mesos::Label {
                key: "VIP_0".into(),
                value: Some("/web:80".into()),
            }],
        }),
        ..Default::default()
    };
    task.set_state(state);
    task
}

fn status(id: &str, state: mesos::TaskState, ip: Option<&str>) -> mesos::TaskStatus {
    let mut status = mesos::TaskStatus {
        task_id: mesos::TaskId { value: id.into() },
        agent_id: Some(mesos::AgentId { value: "a1".into() }),
        container_status: ip.map(|ip| mesos::ContainerStatus {
            network_infos: vec![mesos::NetworkInfo {
                ip_addresses: vec![mesos::network_info::IpAddress {
                    ip_address: Some(ip.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    status.set_state(state);
    status
}

fn framework(id: &str, name: &str) -> response::get_frameworks::Framework {
    response::get_frameworks::Framework {
        framework_info: mesos::FrameworkInfo {
            user: "root".into(),
            name: name.into(),
            id: Some(mesos::FrameworkId { value: id.into() }),
            ..Default::default()
        },
        active: true,
        connected: true,
        ..Default::default()
    }
}

fn agent(id: &str, pid: &str) -> response::get_agents::Agent {
    response::get_agents::Agent {
        agent_info: mesos::AgentInfo {
            hostname: "node1".into(),
            port: Some(5051),
            id: Some(mesos::AgentId { value: id.into() }),
            ..Default::default()
        },
        active: true,
        version: "1.12.0".into(),
        pid: Some(pid.into()),
        ..Default::default()
    }
}

fn subscribed(tasks: Vec<mesos::Task>) -> master::Event {
    master::Event {
        r#type: Some(event::Type::Subscribed as i32),
        subscribed: Some(master::event::Subscribed {
            get_state: Some(response::GetState {
                get_tasks: Some(response::GetTasks {
                    tasks,
                    ..Default::default()
                }),
                get_frameworks: Some(response::GetFrameworks {
                    frameworks: vec![framework("f1", "marathon")],
                    ..Default::default()
                }),
                get_agents: Some(response::GetAgents {
                    agents: vec![agent("a1", "slave(1)@10.0.0.7:5051")],
                    ..Default::default()
                }),
                get_executors: None,
            }),
            heartbeat_interval_seconds: Some(15.0),
        }),
        ..Default::default()
    }
}

fn updated(framework: &str, status: mesos::TaskStatus) -> master::Event {
    let mut body = master::event::TaskUpdated {
        framework_id: mesos::FrameworkId {
            value: framework.into(),
        },
        status: status.clone(),
        ..Default::default()
    };
    body.set_state(status.state());
    master::Event {
        r#type: Some(event::Type::TaskUpdated as i32),
        task_updated: Some(body),
        ..Default::default()
    }
}

fn added(task: mesos::Task) -> master::Event {
    master::Event {
        r#type: Some(event::Type::TaskAdded as i32),
        task_added: Some(master::event::TaskAdded { task }),
        ..Default::default()
    }
}

fn record_stream(events: &[master::Event], ct: ContentType) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        recordio::encode_record_into(&codec::encode(event, ct), &mut out);
    }
    out
}

/// Decodes a recorded stream fed in small chunks, as the client does.
fn replay(stream: &[u8], ct: ContentType) -> Vec<ClusterState> {
    let mut decoder = recordio::Decoder::new();
    let mut state = ClusterState::default();
    let mut states = Vec::new();
    for chunk in stream.chunks(7) {
        decoder.feed(chunk);
        while let Some(record) = decoder.next_record().expect("valid RecordIO") {
            let event: master::Event = codec::decode(&record, ct).expect("valid event");
            state.apply(&event);
            states.push(state.clone());
        }
    }
    states
}

#[test]
fn a_recorded_protobuf_stream_builds_the_task_list() {
    let mut running = task("t1", "f1", "a1", mesos::TaskState::TaskRunning);
    running.statuses = vec![status("t1", mesos::TaskState::TaskRunning, Some("9.0.1.2"))];
    running.discovery = Some(mesos::DiscoveryInfo {
        ports: Some(mesos::Ports {
            ports: vec![mesos::Port {
                number: 8080,
                protocol: Some("tcp".into()),
                labels: Some(mesos::Labels {
                    labels: vec![mesos::Label {
                        key: "VIP_0".into(),
                        value: Some("/api:8080".into()),
                    }],
                }),
                ..Default::default()
            }],
        }),
        ..Default::default()
    });
    let mut unhealthy = status("t2", mesos::TaskState::TaskRunning, None);
    unhealthy.healthy = Some(false);
    let events = vec![
        subscribed(vec![running]),
        added(task("t2", "f1", "a1", mesos::TaskState::TaskStaging)),
        updated("f1", status("t2", mesos::TaskState::TaskStarting, None)),
        updated(
            "f1",
            status("t2", mesos::TaskState::TaskRunning, Some("9.0.1.3")),
        ),
        updated("f1", unhealthy),
        master::Event {
            r#type: Some(event::Type::Heartbeat as i32),
            ..Default::default()
        },
        updated("f1", status("t1", mesos::TaskState::TaskKilled, None)),
    ];
    let states = replay(
        &record_stream(&events, ContentType::Protobuf),
        ContentType::Protobuf,
    );
    assert_eq!(states.len(), events.len());

    let first = &states[0];
    let t1 = &first.tasks["t1"];
    assert_eq!(t1.framework_name, "marathon");
    assert_eq!(t1.agent_id, "a1");
    assert_eq!(t1.ips, vec!["9.0.1.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(t1.labels, vec![("VIP_0".into(), "/web:80".into())]);
    assert_eq!(t1.ports[0].number, 8080);
    assert_eq!(
        t1.ports[0].labels,
        vec![("VIP_0".into(), "/api:8080".into())]
    );
    assert!(t1.is_serving());
    assert_eq!(first.agents["a1"].ip, Some("10.0.0.7".parse().unwrap()));
    assert_eq!(first.generation, 1);

    assert_eq!(states[1].tasks["t2"].state, mesos::TaskState::TaskStaging);
    assert!(!states[2].tasks["t2"].is_serving());
    let t2 = &states[3].tasks["t2"];
    assert!(t2.is_serving());
    assert_eq!(t2.ips, vec!["9.0.1.3".parse::<IpAddr>().unwrap()]);
    // A health update without container status keeps the IP and stops serving.
    let t2 = &states[4].tasks["t2"];
    assert_eq!(t2.healthy, Some(false));
    assert_eq!(t2.ips.len(), 1);
    assert!(!t2.is_serving());
    assert_eq!(states[5], states[4], "heartbeats change nothing");
    assert!(!states[6].tasks.contains_key("t1"), "terminal tasks leave");
}

#[test]
fn agent_and_framework_removal() {
    let mut state = ClusterState::default();
    state.apply(&subscribed(vec![task(
        "t1",
        "f1",
        "a1",
        mesos::TaskState::TaskRunning,
    )]));
    state.apply(&master::Event {
        r#type: Some(event::Type::AgentRemoved as i32),
        agent_removed: Some(master::event::AgentRemoved {
            agent_id: mesos::AgentId { value: "a1".into() },
        }),
        ..Default::default()
    });
    assert!(state.agents.is_empty());
    assert_eq!(state.tasks["t1"].state, mesos::TaskState::TaskUnreachable);
    assert!(!state.tasks["t1"].is_serving());
    // The agent comes back with its task.
    state.apply(&updated(
        "f1",
        status("t1", mesos::TaskState::TaskRunning, None),
    ));
    assert!(state.tasks["t1"].is_serving());
    state.apply(&master::Event {
        r#type: Some(event::Type::FrameworkRemoved as i32),
        framework_removed: Some(master::event::FrameworkRemoved {
            framework_info: framework("f1", "marathon").framework_info,
        }),
        ..Default::default()
    });
    assert!(state.tasks.is_empty());
    assert!(state.frameworks.is_empty());
    // A resubscription replaces everything.
    state.apply(&subscribed(Vec::new()));
    assert_eq!(state.generation, 2);
    assert_eq!(state.agents.len(), 1);
}

/// A stream in JSON as a Mesos 1.12 master writes it (`jsonify` of the protobuf: 64-bit integers
/// as numbers, enums by name, fields berth's subset does not have).
const MESOS_JSON_STREAM: &[&str] = &[
    r#"{"type":"SUBSCRIBED","subscribed":{"get_state":{"get_tasks":{"tasks":[{"name":"web.1","task_id":{"value":"web.1"},"framework_id":{"value":"fw-0001"},"executor_id":{"value":"web.1"},"agent_id":{"value":"S0"},"state":"TASK_RUNNING","resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.1},"role":"*","allocation_info":{"role":"*"}}],"statuses":[{"task_id":{"value":"web.1"},"state":"TASK_STARTING","source":"SOURCE_EXECUTOR","agent_id":{"value":"S0"},"timestamp":1700000000.1,"container_status":{"container_id":{"value":"c1"},"network_infos":[{"ip_addresses":[{"protocol":"IPv4","ip_address":"9.0.2.5"}],"name":"dcos"}],"executor_pid":41}},{"task_id":{"value":"web.1"},"state":"TASK_RUNNING","source":"SOURCE_EXECUTOR","healthy":true,"agent_id":{"value":"S0"},"timestamp":1700000001.2,"uuid":"AAECAwQFBgcICQoLDA0ODw=="}],"discovery":{"visibility":"FRAMEWORK","name":"web","ports":{"ports":[{"number":80,"name":"http","protocol":"tcp","labels":{"labels":[{"key":"VIP_0","value":"/web:80"}]}}]}},"health_check":{"type":"HTTP","http":{"port":80}},"container":{"type":"MESOS","network_infos":[{"name":"dcos"}]},"labels":{"labels":[{"key":"DCOS_SPACE","value":"/web"}]}}],"completed_tasks":[{"name":"old","task_id":{"value":"old"},"framework_id":{"value":"fw-0001"},"agent_id":{"value":"S0"},"state":"TASK_FINISHED"}]},"get_executors":{},"get_frameworks":{"frameworks":[{"framework_info":{"user":"root","name":"marathon","id":{"value":"fw-0001"},"failover_timeout":604800,"checkpoint":true,"role":"slave_public","capabilities":[{"type":"PARTITION_AWARE"}]},"active":true,"connected":true,"recovered":false,"registered_time":{"nanoseconds":1700000000000000000},"allocated_resources":[],"offered_resources":[],"offers":[],"inverse_offers":[]}]},"get_agents":{"agents":[{"agent_info":{"hostname":"10.0.0.5","port":5051,"id":{"value":"S0"},"resources":[]},"active":true,"deactivated":false,"version":"1.12.0","pid":"slave(1)@10.0.0.5:5051","registered_time":{"nanoseconds":1700000000000000000},"total_resources":[],"allocated_resources":[],"offered_resources":[],"capabilities":[{"type":"MULTI_ROLE"}]}],"recovered_agents":[]}},"heartbeat_interval_seconds":15}}"#,
    r#"{"type":"HEARTBEAT"}"#,
    r#"{"type":"TASK_UPDATED","task_updated":{"framework_id":{"value":"fw-0001"},"status":{"task_id":{"value":"web.1"},"state":"TASK_RUNNING","source":"SOURCE_EXECUTOR","healthy":false,"agent_id":{"value":"S0"},"timestamp":1700000010.5,"uuid":"AAECAwQFBgcICQoLDA0OEA=="},"state":"TASK_RUNNING"}}"#,
    r#"{"type":"AGENT_ADDED","agent_added":{"agent":{"agent_info":{"hostname":"node2","port":5051,"id":{"value":"S1"}},"active":true,"version":"1.12.0","pid":"slave(1)@10.0.0.6:5051"}}}"#,
    r#"{"type":"TASK_UPDATED","task_updated":{"framework_id":{"value":"fw-0001"},"status":{"task_id":{"value":"web.1"},"state":"TASK_KILLED","source":"SOURCE_EXECUTOR","agent_id":{"value":"S0"}},"state":"TASK_KILLED"}}"#,
];

#[test]
fn a_mesos_json_stream_is_read() {
    let mut stream = Vec::new();
    for record in MESOS_JSON_STREAM {
        recordio::encode_record_into(record.as_bytes(), &mut stream);
    }
    let states = replay(&stream, ContentType::Json);
    assert_eq!(states.len(), MESOS_JSON_STREAM.len());
    let web = &states[0].tasks["web.1"];
    assert_eq!(web.framework_name, "marathon");
    assert_eq!(web.ips, vec!["9.0.2.5".parse::<IpAddr>().unwrap()]);
    assert_eq!(web.healthy, Some(true));
    assert_eq!(
        web.ports[0].labels,
        vec![("VIP_0".into(), "/web:80".into())]
    );
    assert_eq!(web.labels, vec![("DCOS_SPACE".into(), "/web".into())]);
    assert!(!states[0].tasks.contains_key("old"));
    assert_eq!(states[0].agents["S0"].ip, Some("10.0.0.5".parse().unwrap()));
    assert!(!states[2].tasks["web.1"].is_serving());
    assert_eq!(states[3].agents["S1"].hostname, "node2");
    assert!(states[4].tasks.is_empty());
}

#[test]
fn redirect_locations_and_content_types() {
    let base = "http://10.0.0.1:5050";
    assert_eq!(
        resolve_location(base, "//10.0.0.2:5050/api/v1").as_deref(),
        Some("http://10.0.0.2:5050/api/v1")
    );
    assert_eq!(
        resolve_location(base, "/api/v1").as_deref(),
        Some("http://10.0.0.1:5050/api/v1")
    );
    assert_eq!(
        resolve_location(base, "http://m2:5050/api/v1").as_deref(),
        Some("http://m2:5050/api/v1")
    );
    assert_eq!(resolve_location(base, "api/v1"), None);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("content-type", "application/recordio".parse().unwrap());
    headers.insert("message-content-type", "application/json".parse().unwrap());
    assert_eq!(stream_content_type(&headers), Ok(ContentType::Json));
    headers.insert("content-type", "application/x-protobuf".parse().unwrap());
    assert_eq!(stream_content_type(&headers), Ok(ContentType::Protobuf));
    headers.insert("content-type", "text/html".parse().unwrap());
    assert!(stream_content_type(&headers).is_err());
    assert_eq!(
        ip_of_pid("slave(1)@10.1.2.3:5051"),
        Some("10.1.2.3".parse().unwrap())
    );
    assert_eq!(ip_of_pid("garbage"), None);
}

/// What an in-process test master answers to SUBSCRIBE, by connection number (from 0).
type Script = Arc<dyn Fn(usize, &HeaderMap) -> Response + Send + Sync>;

/// Serves `script` at `POST /api/v1` on a free loopback port.
async fn test_master(script: Script) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let app = Router::new().route(
        "/api/v1",
        post(move |headers: HeaderMap, body: Bytes| {
            let script = script.clone();
            let counter = counter.clone();
            async move {
                let call: master::Call =
                    codec::decode(&body, ContentType::Protobuf).expect("a protobuf call");
                assert_eq!(call.r#type(), master::call::Type::Subscribe);
                let n = counter.fetch_add(1, Ordering::SeqCst);
                script(n, &headers)
            }
        }),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, count, server)
}

/// A stream of `events` that stays open (`hold`) or ends.
fn stream_response(events: Vec<master::Event>, ct: ContentType, hold: bool) -> Response {
    let bytes = Bytes::from(record_stream(&events, ct));
    let head = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes) });
    let body = if hold {
        Body::from_stream(head.chain(futures::stream::pending()))
    } else {
        Body::from_stream(head)
    };
    ([(header::CONTENT_TYPE, ct.as_str())], body).into_response()
}

fn leader_at(addr: SocketAddr) -> Option<MasterLeader> {
    Some(MasterLeader {
        id: addr.to_string(),
        pid: format!("master@{addr}"),
        ip: addr.ip(),
        port: addr.port(),
        hostname: None,
        version: None,
        znode: None,
    })
}

fn quick() -> StreamOptions {
    StreamOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..Default::default()
    }
}

async fn wait_until(
    rx: &mut watch::Receiver<ClusterState>,
    what: &str,
    check: impl FnMut(&ClusterState) -> bool,
) -> ClusterState {
    tokio::time::timeout(GUARD, rx.wait_for(check))
        .await
        .unwrap_or_else(|_| panic!("{what}: not observed within {GUARD:?}"))
        .expect("the client runs")
        .clone()
}

#[tokio::test]
async fn follows_the_leader_and_resubscribes_after_a_change() {
    let one = |name: &'static str| -> Script {
        Arc::new(move |_, _| {
            stream_response(
                vec![subscribed(vec![task(
                    name,
                    "f1",
                    "a1",
                    mesos::TaskState::TaskRunning,
                )])],
                ContentType::Protobuf,
                true,
            )
        })
    };
    let (a, _, server_a) = test_master(one("on-a")).await;
    let (b, _, server_b) = test_master(one("on-b")).await;
    let (leader, leader_rx) = watch::channel(None);
    let client = ClusterTasks::start_with(leader_rx, quick());
    let mut state = client.state();
    assert!(!state.borrow().synced);
    leader.send(leader_at(a)).unwrap();
    let seen = wait_until(&mut state, "state from A", |s| {
        s.synced && s.tasks.contains_key("on-a")
    })
    .await;
    assert_eq!(seen.master, Some(a));
    leader.send(leader_at(b)).unwrap();
    let seen = wait_until(&mut state, "state from B", |s| s.tasks.contains_key("on-b")).await;
    assert!(seen.synced);
    assert_eq!(seen.master, Some(b));
    assert!(!seen.tasks.contains_key("on-a"), "B's state replaced A's");
    // No leader: the last state stays, no longer synced.
    leader.send(None).unwrap();
    let seen = wait_until(&mut state, "unsynced", |s| !s.synced).await;
    assert!(seen.tasks.contains_key("on-b"));
    drop(client);
    server_a.abort();
    server_b.abort();
}

#[tokio::test]
async fn reconnects_after_refusals_and_closed_streams_and_follows_redirects() {
    // The leader refuses once, then closes a stream after SUBSCRIBED, then holds one open in JSON.
    let leader_script: Script = Arc::new(|n, _| match n {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response(),
        1 => stream_response(
            vec![subscribed(vec![task(
                "t1",
                "f1",
                "a1",
                mesos::TaskState::TaskRunning,
            )])],
            ContentType::Protobuf,
            false,
        ),
        _ => stream_response(
            vec![
                subscribed(vec![task("t2", "f1", "a1", mesos::TaskState::TaskRunning)]),
                added(task("t3", "f1", "a1", mesos::TaskState::TaskStaging)),
            ],
            ContentType::Json,
            true,
        ),
    });
    let (leader_addr, count, server) = test_master(leader_script).await;
    // A master that does not lead redirects as Mesos does (scheme-relative Location).
    let redirect: Script = Arc::new(move |_, _| {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("//{leader_addr}/api/v1"))],
        )
            .into_response()
    });
    let (follower, _, redirector) = test_master(redirect).await;
    let (_leader, leader_rx) = watch::channel(leader_at(follower));
    let client = ClusterTasks::start_with(leader_rx, quick());
    let mut state = client.state();
    let seen = wait_until(&mut state, "the held stream's state", |s| {
        s.synced && s.tasks.contains_key("t3")
    })
    .await;
    assert!(seen.tasks.contains_key("t2"));
    assert!(!seen.tasks.contains_key("t1"));
    assert!(seen.generation >= 2, "resubscribed: {seen:?}");
    assert!(count.load(Ordering::SeqCst) >= 3);
    drop(client);
    server.abort();
    redirector.abort();
}
