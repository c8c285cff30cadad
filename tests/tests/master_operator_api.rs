//! The v1 master operator API of `berth master` end to end: `POST /api/v1` calls in JSON and
//! protobuf, the `SUBSCRIBE` event stream while an agent (`berth agent --master`) registers, a
//! framework launches, runs and kills a task, the agent becomes unreachable and returns, and
//! the agent-side client of the stream (`mesos::operator_stream::ClusterTasks`) following it.
//!
//! Every wait is "until X is observed", bounded by a generous hang guard: nothing asserts on
//! wall-clock time.

use std::{net::SocketAddr, time::Duration};

use berth_agent::mesos::{
    detector::MasterLeader,
    operator_stream::{ClusterState, ClusterTasks},
};
use berth_proto::{
    codec::{self, ContentType},
    mesos::v1::{self as mesos, master, scheduler},
    recordio,
};
use berth_tests::{
    Agent,
    framework::{Framework, call, launch, runtime, task},
    http_request,
    master::Master,
    require_privileges, scaled,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Hang guard for one wait.
const GUARD: Duration = Duration::from_secs(90);

/// A subscriber of the master's operator event stream, written against the wire format.
struct OperatorStream {
    ct: ContentType,
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: recordio::Decoder,
    /// Every event received, in order (heartbeats left out).
    seen: Vec<master::Event>,
}

impl OperatorStream {
    async fn subscribe(master: &Master, ct: ContentType) -> OperatorStream {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1", master.url()))
            .header("Content-Type", ct.as_str())
            .header("Accept", ct.as_str())
            .body(codec::encode(
                &master_call(master::call::Type::Subscribe),
                ct,
            ))
            .send()
            .await
            .expect("SUBSCRIBE");
        assert_eq!(response.status(), 200, "SUBSCRIBE must answer 200");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(ct.as_str())
        );
        let mut stream = OperatorStream {
            ct,
            body: response.bytes_stream().boxed(),
            decoder: recordio::Decoder::new(),
            seen: Vec::new(),
        };
        let first = stream.next().await;
        assert_eq!(first.r#type(), master::event::Type::Subscribed, "{first:?}");
        let subscribed = first.subscribed.as_ref().expect("subscribed body");
        assert_eq!(subscribed.heartbeat_interval_seconds, Some(15.0));
        assert!(subscribed.get_state.is_some());
        stream
    }

    /// The next event that is not a heartbeat.
    async fn next(&mut self) -> master::Event {
        loop {
            while let Some(record) = self.decoder.next_record().expect("valid RecordIO") {
                let event: master::Event = codec::decode(&record, self.ct).expect("valid event");
                if event.r#type() != master::event::Type::Heartbeat {
                    self.seen.push(event.clone());
                    return event;
                }
            }
            let chunk = tokio::time::timeout(scaled(GUARD), self.body.next())
                .await
                .expect("an event within the guard")
                .expect("the stream stays open")
                .expect("reading the stream");
            self.decoder.feed(&chunk);
        }
    }

    /// Reads events until `check` holds for one; returns it.
    async fn until(
        &mut self,
        what: &str,
        mut check: impl FnMut(&master::Event) -> bool,
    ) -> master::Event {
        let found = tokio::time::timeout(scaled(GUARD), async {
            loop {
                let event = self.next().await;
                if check(&event) {
                    return event;
                }
            }
        })
        .await;
        match found {
            Ok(event) => event,
            Err(_) => panic!(
                "{what}: not seen; events so far: {:?}",
                self.seen
                    .iter()
                    .map(|e| format!(
                        "{} {:?} {:?}",
                        e.r#type().as_str_name(),
                        e.task_added
                            .as_ref()
                            .map(|a| (&a.task.task_id.value, a.task.state())),
                        e.task_updated
                            .as_ref()
                            .map(|u| (&u.status.task_id.value, u.state()))
                    ))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// The states of the TASK_UPDATED events of `task_id` seen so far, in order.
    fn updates_of(&self, task_id: &str) -> Vec<mesos::TaskState> {
        self.seen
            .iter()
            .filter_map(|e| e.task_updated.as_ref())
            .filter(|u| u.status.task_id.value == task_id)
            .map(|u| u.state())
            .collect()
    }
}

fn master_call(kind: master::call::Type) -> master::Call {
    master::Call {
        r#type: Some(kind as i32),
    }
}

/// `POST /api/v1` with raw headers and body: (status, content type, body).
async fn post(
    master: &Master,
    content_type: Option<&str>,
    accept: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1", master.url()))
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("Content-Type", ct);
    }
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.send().await.expect("POST /api/v1");
    let status = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ct, response.bytes().await.expect("body").to_vec())
}

/// A served call in the encoding `ct` both ways.
async fn get(master: &Master, kind: master::call::Type, ct: ContentType) -> master::Response {
    let (status, content_type, body) = post(
        master,
        Some(ct.as_str()),
        Some(ct.as_str()),
        codec::encode(&master_call(kind), ct),
    )
    .await;
    assert_eq!(status, 200, "{kind:?}: {}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, ct.as_str());
    let response: master::Response = codec::decode(&body, ct).expect("a master::Response");
    assert_eq!(
        response.r#type().as_str_name(),
        kind.as_str_name(),
        "response type of {kind:?}"
    );
    response
}

fn leader_of(master: &Master) -> watch::Sender<Option<MasterLeader>> {
    let addr: SocketAddr = master.addr();
    watch::channel(Some(MasterLeader {
        id: "test".into(),
        pid: format!("master@{addr}"),
        ip: addr.ip(),
        port: addr.port(),
        hostname: None,
        version: None,
        znode: None,
    }))
    .0
}

async fn cluster_until(
    state: &mut watch::Receiver<ClusterState>,
    what: &str,
    check: impl FnMut(&ClusterState) -> bool,
) -> ClusterState {
    let result = tokio::time::timeout(scaled(GUARD), state.wait_for(check))
        .await
        .map(|r| r.map(|s| s.clone()));
    match result {
        Ok(Ok(seen)) => seen,
        Ok(Err(_)) => panic!("{what}: the ClusterTasks client stopped"),
        Err(_) => panic!("{what}: not observed; last state {:#?}", *state.borrow()),
    }
}

/// A task with a VIP label in its labels and on a discovery port.
fn web_task(id: &str, offer: &mesos::Offer) -> mesos::TaskInfo {
    let vip = |value: &str| mesos::Labels {
        labels: vec![mesos::Label {
            key: "VIP_0".into(),
            value: Some(value.into()),
        }],
    };
    mesos::TaskInfo {
        labels: Some(vip("/web:80")),
        discovery: Some(mesos::DiscoveryInfo {
            name: Some("web".into()),
            ports: Some(mesos::Ports {
                ports: vec![mesos::Port {
                    number: 8080,
                    protocol: Some("tcp".into()),
                    labels: Some(vip("/web-alt:8080")),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..task(id, &offer.agent_id, 0.1, 32.0, "sleep 300")
    }
}

/// TEARDOWN; waits until the stream reports the framework removed and the agent ended its
/// tasks (their TASK_UPDATEDs are terminal).
async fn teardown(fw: &Framework, stream: &mut OperatorStream, task_ids: &[&str]) {
    let from = stream.seen.len();
    fw.send(call(scheduler::call::Type::Teardown)).await;
    stream
        .until("FRAMEWORK_REMOVED", |e| {
            e.r#type() == master::event::Type::FrameworkRemoved
        })
        .await;
    for id in task_ids {
        let ended = |e: &master::Event| {
            e.task_updated
                .as_ref()
                .is_some_and(|u| u.status.task_id.value == *id && is_terminal(u.state()))
        };
        // Ended before the teardown (killed) or by it.
        let before = stream.seen[..from].iter().rev().find_map(|e| {
            let updated = e
                .task_updated
                .as_ref()
                .filter(|u| u.status.task_id.value == *id);
            let added = e
                .task_added
                .as_ref()
                .filter(|a| a.task.task_id.value == *id);
            updated
                .map(|u| u.state())
                .or_else(|| added.map(|a| a.task.state()))
        });
        if before.is_some_and(is_terminal) || stream.seen[from..].iter().any(ended) {
            continue;
        }
        stream.until("the torn-down task's end", ended).await;
    }
}

fn is_terminal(state: mesos::TaskState) -> bool {
    berth_tests::framework::is_terminal(state)
}

#[test]
fn subscribe_sees_agent_task_lifecycle_and_the_cluster_client_follows() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[
        "--agent-ping-timeout",
        "0.5",
        "--max-agent-ping-timeouts",
        "3",
    ]);
    let mut agent = Agent::start_with_master(&master.addr().to_string(), &[]);
    runtime().block_on(async {
        // Subscribed before or after the agent registered: the agent is in the state or added.
        let mut stream = OperatorStream::subscribe(&master, ContentType::Protobuf).await;
        let mut json_stream = OperatorStream::subscribe(&master, ContentType::Json).await;
        let initial = stream.seen.first().cloned();
        let known_agents = initial
            .as_ref()
            .and_then(|e| e.subscribed.as_ref()?.get_state.as_ref()?.get_agents.clone())
            .map(|a| a.agents.len())
            .unwrap_or(0);
        let agent_id = if known_agents == 1 {
            let state = initial.unwrap().subscribed.unwrap().get_state.unwrap();
            state.get_agents.unwrap().agents[0]
                .agent_info
                .id
                .clone()
                .unwrap()
                .value
        } else {
            let added = stream
                .until("AGENT_ADDED", |e| {
                    e.r#type() == master::event::Type::AgentAdded
                })
                .await;
            let agent = added.agent_added.unwrap().agent;
            assert!(agent.active);
            assert!(
                agent.pid.as_deref().is_some_and(|p| p.contains("@127.0.0.1:")),
                "{agent:?}"
            );
            agent.agent_info.id.unwrap().value
        };

        let leader = leader_of(&master);
        let cluster = ClusterTasks::start(leader.subscribe());
        let mut cluster_state = cluster.state();
        let seen = cluster_until(&mut cluster_state, "the agent in the cluster state", |s| {
            s.synced && s.agents.contains_key(&agent_id)
        })
        .await;
        assert_eq!(
            seen.master,
            Some(master.addr()),
            "the client follows the given leader"
        );

        let mut fw = Framework::subscribe(&master.url(), ContentType::Protobuf, "ops-fw").await;
        let framework_id = fw.framework_id.value.clone();
        let framework_added = stream
            .until("FRAMEWORK_ADDED", |e| {
                e.r#type() == master::event::Type::FrameworkAdded
            })
            .await
            .framework_added
            .unwrap()
            .framework;
        assert_eq!(framework_added.framework_info.name, "ops-fw");
        assert!(framework_added.connected);

        let offer = fw.offer().await;
        fw.send(launch(&offer, vec![web_task("web", &offer)])).await;
        let task_added = stream
            .until("TASK_ADDED", |e| e.r#type() == master::event::Type::TaskAdded)
            .await
            .task_added
            .unwrap()
            .task;
        assert_eq!(task_added.task_id.value, "web");
        assert_eq!(task_added.name, "web");
        assert_eq!(task_added.state(), mesos::TaskState::TaskStaging);
        assert_eq!(task_added.framework_id.value, framework_id);
        assert_eq!(task_added.agent_id.value, agent_id);
        assert_eq!(
            task_added.labels.as_ref().unwrap().labels[0].value.as_deref(),
            Some("/web:80")
        );
        assert_eq!(
            task_added.discovery.as_ref().unwrap().ports.as_ref().unwrap().ports[0].number,
            8080
        );
        assert!(!task_added.resources.is_empty());

        fw.until_state("web", mesos::TaskState::TaskRunning).await;
        stream
            .until("TASK_UPDATED RUNNING", |e| {
                e.task_updated.as_ref().is_some_and(|u| {
                    u.status.task_id.value == "web" && u.state() == mesos::TaskState::TaskRunning
                })
            })
            .await;
        let running = cluster_until(&mut cluster_state, "the task running in the client", |s| {
            s.tasks.get("web").is_some_and(|t| t.is_serving())
        })
        .await;
        let web = &running.tasks["web"];
        assert_eq!(web.framework_id, framework_id);
        assert_eq!(web.framework_name, "ops-fw");
        assert_eq!(web.agent_id, agent_id);
        assert_eq!(web.labels, vec![("VIP_0".into(), "/web:80".into())]);
        assert_eq!(
            web.ports[0].labels,
            vec![("VIP_0".into(), "/web-alt:8080".into())]
        );

        // The synchronous calls, in both encodings.
        for ct in [ContentType::Json, ContentType::Protobuf] {
            let state = get(&master, master::call::Type::GetState, ct)
                .await
                .get_state
                .expect("get_state");
            let tasks = state.get_tasks.expect("get_tasks");
            assert!(
                tasks
                    .tasks
                    .iter()
                    .any(|t| t.task_id.value == "web" && t.state() == mesos::TaskState::TaskRunning),
                "{ct}: {tasks:?}"
            );
            let running = tasks.tasks.iter().find(|t| t.task_id.value == "web").unwrap();
            assert!(
                running
                    .statuses
                    .iter()
                    .any(|s| s.state() == mesos::TaskState::TaskRunning),
                "{running:?}"
            );
            assert!(
                state
                    .get_frameworks
                    .expect("get_frameworks")
                    .frameworks
                    .iter()
                    .any(|f| f.framework_info.name == "ops-fw")
            );
            assert_eq!(state.get_agents.expect("get_agents").agents.len(), 1);
            let tasks = get(&master, master::call::Type::GetTasks, ct)
                .await
                .get_tasks
                .expect("get_tasks");
            assert_eq!(tasks.tasks.len(), 1, "{ct}: {tasks:?}");
            let agents = get(&master, master::call::Type::GetAgents, ct)
                .await
                .get_agents
                .expect("get_agents");
            assert_eq!(agents.agents.len(), 1);
            assert_eq!(
                agents.agents[0].agent_info.id.as_ref().unwrap().value,
                agent_id
            );
            assert!(!agents.agents[0].allocated_resources.is_empty());
            let frameworks = get(&master, master::call::Type::GetFrameworks, ct)
                .await
                .get_frameworks
                .expect("get_frameworks");
            assert_eq!(frameworks.frameworks.len(), 1);
            let health = get(&master, master::call::Type::GetHealth, ct).await;
            assert!(health.get_health.unwrap().healthy);
            let version = get(&master, master::call::Type::GetVersion, ct).await;
            assert!(!version.get_version.unwrap().version_info.version.is_empty());
        }

        fw.kill("web").await;
        fw.until_state("web", mesos::TaskState::TaskKilled).await;
        stream
            .until("TASK_UPDATED KILLED", |e| {
                e.task_updated.as_ref().is_some_and(|u| {
                    u.status.task_id.value == "web" && u.state() == mesos::TaskState::TaskKilled
                })
            })
            .await;
        // STARTING, RUNNING, KILLED in that order (KILLING in between if the agent sends it).
        let states = stream.updates_of("web");
        let position = |s: mesos::TaskState| states.iter().position(|x| *x == s);
        let (starting, running, killed) = (
            position(mesos::TaskState::TaskStarting),
            position(mesos::TaskState::TaskRunning),
            position(mesos::TaskState::TaskKilled),
        );
        assert!(
            starting.is_some() && starting < running && running < killed,
            "{states:?}"
        );
        let gone = cluster_until(&mut cluster_state, "the task gone from the client", |s| {
            !s.tasks.contains_key("web")
        })
        .await;
        assert!(gone.synced);
        let tasks = get(&master, master::call::Type::GetTasks, ContentType::Json)
            .await
            .get_tasks
            .unwrap();
        assert!(tasks.tasks.is_empty());
        assert!(tasks.completed_tasks.iter().any(|t| t.task_id.value == "web"));

        // The JSON subscriber saw the same story.
        json_stream
            .until("TASK_UPDATED KILLED (JSON)", |e| {
                e.task_updated.as_ref().is_some_and(|u| {
                    u.status.task_id.value == "web" && u.state() == mesos::TaskState::TaskKilled
                })
            })
            .await;
        assert!(
            json_stream
                .seen
                .iter()
                .any(|e| e.r#type() == master::event::Type::TaskAdded)
        );

        teardown(&fw, &mut stream, &["web"]).await;
        // The agent goes away: AGENT_REMOVED, and the client drops it.
        agent.shutdown();
        let removed = stream
            .until("AGENT_REMOVED", |e| {
                e.r#type() == master::event::Type::AgentRemoved
            })
            .await;
        assert_eq!(removed.agent_removed.unwrap().agent_id.value, agent_id);
        cluster_until(&mut cluster_state, "the agent gone from the client", |s| {
            !s.agents.contains_key(&agent_id)
        })
        .await;
        drop(cluster);
    });
    agent.assert_no_leftovers();
}

#[test]
fn an_unreachable_agent_is_removed_and_added_back_with_its_task() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[
        "--agent-ping-timeout",
        "0.5",
        "--max-agent-ping-timeouts",
        "3",
    ]);
    let mut agent = Agent::start_with_master(&master.addr().to_string(), &[]);
    runtime().block_on(async {
        let mut stream = OperatorStream::subscribe(&master, ContentType::Protobuf).await;
        let leader = leader_of(&master);
        let cluster = ClusterTasks::start(leader.subscribe());
        let mut cluster_state = cluster.state();
        let mut fw = Framework::subscribe(&master.url(), ContentType::Json, "ops-fw2").await;
        fw.launch_one("t", "sleep 300").await;
        fw.until_state("t", mesos::TaskState::TaskRunning).await;
        cluster_until(&mut cluster_state, "t serving", |s| {
            s.tasks.get("t").is_some_and(|t| t.is_serving())
        })
        .await;
        struct Thaw(i32);
        impl Drop for Thaw {
            fn drop(&mut self) {
                // SAFETY: kill(2) on the agent this test started.
                unsafe { libc::kill(self.0, libc::SIGCONT) };
            }
        }
        // SAFETY: kill(2) on the agent this test started; Thaw resumes it on every path.
        unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
        let thaw = Thaw(agent.pid());
        stream
            .until("AGENT_REMOVED", |e| {
                e.r#type() == master::event::Type::AgentRemoved
            })
            .await;
        // Not partition-aware: TASK_LOST, so the task leaves the client's list.
        assert_eq!(
            stream.updates_of("t").last(),
            Some(&mesos::TaskState::TaskLost)
        );
        cluster_until(&mut cluster_state, "t gone while the agent is away", |s| {
            !s.tasks.contains_key("t")
        })
        .await;
        drop(thaw);
        stream
            .until("AGENT_ADDED again", |e| {
                e.r#type() == master::event::Type::AgentAdded
            })
            .await;
        // The master had the task LOST: it reports it whole again (TASK_ADDED, RUNNING).
        let again = stream
            .until("t added again, running", |e| {
                e.task_added.as_ref().is_some_and(|a| {
                    a.task.task_id.value == "t" && a.task.state() == mesos::TaskState::TaskRunning
                })
            })
            .await;
        assert_eq!(again.task_added.unwrap().task.name, "t");
        let back = cluster_until(&mut cluster_state, "t back in the client", |s| {
            s.tasks.get("t").is_some_and(|t| t.is_serving())
        })
        .await;
        assert_eq!(back.tasks["t"].name, "t");
        assert_eq!(back.tasks["t"].framework_name, "ops-fw2");
        teardown(&fw, &mut stream, &["t"]).await;
        drop(cluster);
    });
    agent.shutdown();
    agent.assert_no_leftovers();
}

#[test]
fn bad_calls_are_refused_with_4xx_or_501() {
    let master = Master::start(&[]);
    runtime().block_on(async {
        let json = Some(ContentType::JSON);
        let body = |v: Value| serde_json::to_vec(&v).unwrap();
        // (what, Content-Type, Accept, body, expected status)
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Vec<u8>, u16);
        let cases: Vec<Case> = vec![
            (
                "no Content-Type",
                None,
                None,
                body(json!({"type": "GET_HEALTH"})),
                400,
            ),
            (
                "text/plain",
                Some("text/plain"),
                None,
                b"GET_HEALTH".to_vec(),
                415,
            ),
            ("garbage JSON", json, None, b"{not json".to_vec(), 400),
            (
                "garbage protobuf",
                Some(ContentType::PROTOBUF),
                None,
                vec![0xff, 0xff, 0xff],
                400,
            ),
            ("no type", json, None, body(json!({})), 400),
            (
                "unknown type",
                json,
                None,
                body(json!({"type": "NO_SUCH_CALL"})),
                400,
            ),
            (
                "GET_FLAGS",
                json,
                None,
                body(json!({"type": "GET_FLAGS"})),
                501,
            ),
            (
                "RESERVE_RESOURCES",
                json,
                None,
                body(json!({"type": "RESERVE_RESOURCES"})),
                501,
            ),
            (
                "Accept text/html",
                json,
                Some("text/html"),
                body(json!({"type": "GET_HEALTH"})),
                406,
            ),
        ];
        for (what, content_type, accept, payload, expected) in cases {
            let (status, _, answer) = post(&master, content_type, accept, payload).await;
            assert_eq!(
                status,
                expected,
                "{what}: {}",
                String::from_utf8_lossy(&answer)
            );
            assert!(!answer.is_empty(), "{what}: the refusal says why");
        }
        // GET is not a call.
        let r = http_request(
            master.addr(),
            "GET",
            "/api/v1",
            None,
            b"",
            Duration::from_secs(5),
        )
        .expect("GET /api/v1");
        assert_eq!(r.status, 405);
        // A well-formed JSON call still works after all that, with JSON by default.
        let (status, content_type, answer) =
            post(&master, json, None, body(json!({"type": "GET_HEALTH"}))).await;
        assert_eq!(status, 200);
        assert_eq!(content_type, ContentType::JSON);
        let health: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            health,
            json!({"type": "GET_HEALTH", "get_health": {"healthy": true}})
        );
    });
}
