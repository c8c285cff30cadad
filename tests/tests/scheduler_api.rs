//! The embedded master's Mesos v1 scheduler API, driven by a framework written here against the
//! wire format (protobuf and JSON, RecordIO event stream): subscribe, offers, decline, accept
//! with LAUNCH and LAUNCH_GROUP, invalid launches, stale offers, kill, acknowledge, reconcile,
//! authorisation of calls, teardown.

use std::time::Duration;

use berth_proto::{
    codec::{self, ContentType},
    mesos::v1::{self as mesos, scheduler},
    recordio,
};
use berth_tests::Agent;
use futures::StreamExt;

struct Framework {
    url: String,
    http: reqwest::Client,
    ct: ContentType,
    stream_id: String,
    framework_id: mesos::FrameworkId,
    events: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: recordio::Decoder,
    /// Updates received while waiting for another task's, in arrival order.
    backlog: Vec<mesos::TaskStatus>,
    /// Events of other types received while waiting for one type.
    pending: Vec<scheduler::Event>,
}

fn call(kind: scheduler::call::Type) -> scheduler::Call {
    scheduler::Call {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

impl Framework {
    async fn subscribe(url: &str, ct: ContentType, name: &str) -> Framework {
        let http = reqwest::Client::new();
        let mut subscribe = call(scheduler::call::Type::Subscribe);
        subscribe.subscribe = Some(scheduler::call::Subscribe {
            framework_info: mesos::FrameworkInfo {
                user: "root".into(),
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        });
        let response = http
            .post(format!("{url}/api/v1/scheduler"))
            .header("Content-Type", ct.as_str())
            .header("Accept", ct.as_str())
            .body(codec::encode(&subscribe, ct))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(response.status(), 200, "SUBSCRIBE must answer 200");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(ct.as_str())
        );
        let stream_id = response
            .headers()
            .get("Mesos-Stream-Id")
            .expect("Mesos-Stream-Id header")
            .to_str()
            .unwrap()
            .to_string();
        let mut framework = Framework {
            url: url.to_string(),
            http,
            ct,
            stream_id,
            framework_id: mesos::FrameworkId::default(),
            events: response.bytes_stream().boxed(),
            decoder: recordio::Decoder::new(),
            backlog: Vec::new(),
            pending: Vec::new(),
        };
        let first = framework.next_event().await;
        assert_eq!(
            first.r#type(),
            scheduler::event::Type::Subscribed,
            "{first:?}"
        );
        let subscribed = first.subscribed.expect("subscribed body");
        assert!(subscribed.heartbeat_interval_seconds.unwrap_or(0.0) > 0.0);
        framework.framework_id = subscribed.framework_id;
        framework
    }

    async fn next_event(&mut self) -> scheduler::Event {
        loop {
            if let Some(record) = self.decoder.next_record().expect("valid RecordIO") {
                return codec::decode(&record, self.ct).expect("valid event");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.events.next())
                .await
                .expect("an event within 30 s")
                .expect("the stream stays open")
                .expect("reading the stream");
            self.decoder.feed(&chunk);
        }
    }

    /// Next event of a type; events of other types are kept for later (heartbeats dropped).
    async fn next_of(&mut self, kind: scheduler::event::Type) -> scheduler::Event {
        if let Some(index) = self.pending.iter().position(|e| e.r#type() == kind) {
            return self.pending.remove(index);
        }
        loop {
            let event = self.next_event().await;
            if event.r#type() == kind {
                return event;
            }
            if event.r#type() != scheduler::event::Type::Heartbeat {
                self.pending.push(event);
            }
        }
    }

    async fn send_raw(&self, call: &scheduler::Call, stream_id: Option<&str>) -> (u16, String) {
        let mut request = self
            .http
            .post(format!("{}/api/v1/scheduler", self.url))
            .header("Content-Type", self.ct.as_str())
            .body(codec::encode(call, self.ct));
        if let Some(id) = stream_id {
            request = request.header("Mesos-Stream-Id", id);
        }
        let response = request.send().await.expect("call");
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    }

    async fn send(&self, mut call: scheduler::Call) {
        call.framework_id = Some(self.framework_id.clone());
        let (status, body) = self.send_raw(&call, Some(&self.stream_id)).await;
        assert_eq!(
            status,
            202,
            "call {:?} answered {status}: {body}",
            call.r#type()
        );
    }

    async fn offer(&mut self) -> mesos::Offer {
        let event = self.next_of(scheduler::event::Type::Offers).await;
        event
            .offers
            .expect("offers")
            .offers
            .into_iter()
            .next()
            .expect("one offer")
    }

    /// Waits for an update of `task_id`, acknowledging every update that carries a uuid.
    async fn update_of(&mut self, task_id: &str) -> mesos::TaskStatus {
        if let Some(index) = self.backlog.iter().position(|s| s.task_id.value == task_id) {
            return self.backlog.remove(index);
        }
        loop {
            let event = self.next_of(scheduler::event::Type::Update).await;
            let status = event.update.expect("update").status;
            if let Some(uuid) = status.uuid.clone() {
                let mut ack = call(scheduler::call::Type::Acknowledge);
                ack.acknowledge = Some(scheduler::call::Acknowledge {
                    agent_id: status.agent_id.clone().unwrap_or_default(),
                    task_id: status.task_id.clone(),
                    uuid,
                });
                self.send(ack).await;
            }
            if status.task_id.value == task_id {
                return status;
            }
            self.backlog.push(status);
        }
    }

    async fn until_state(&mut self, task_id: &str, state: mesos::TaskState) -> mesos::TaskStatus {
        loop {
            let status = self.update_of(task_id).await;
            if status.state() == state {
                return status;
            }
            assert!(
                !is_terminal(status.state()),
                "task {task_id} ended {:?} while waiting for {state:?}: {:?}",
                status.state(),
                status.message
            );
        }
    }
}

fn is_terminal(state: mesos::TaskState) -> bool {
    use mesos::TaskState::*;
    matches!(
        state,
        TaskFinished | TaskFailed | TaskKilled | TaskError | TaskLost | TaskDropped
    )
}

fn task(id: &str, agent_id: &mesos::AgentId, cpus: f64, mem: f64, shell: &str) -> mesos::TaskInfo {
    mesos::TaskInfo {
        name: id.into(),
        task_id: mesos::TaskId { value: id.into() },
        agent_id: agent_id.clone(),
        resources: vec![
            berth_proto::resources::scalar("cpus", cpus),
            berth_proto::resources::scalar("mem", mem),
        ],
        command: Some(mesos::CommandInfo {
            value: Some(shell.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn launch(offer: &mesos::Offer, tasks: Vec<mesos::TaskInfo>) -> scheduler::Call {
    let mut operation = mesos::offer::Operation {
        launch: Some(mesos::offer::operation::Launch { task_infos: tasks }),
        ..Default::default()
    };
    operation.set_type(mesos::offer::operation::Type::Launch);
    let mut accept = call(scheduler::call::Type::Accept);
    accept.accept = Some(scheduler::call::Accept {
        offer_ids: vec![offer.id.clone()],
        operations: vec![operation],
        filters: Some(mesos::Filters {
            refuse_seconds: Some(0.0),
        }),
    });
    accept
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn scheduler_api_protobuf_framework_lifecycle() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    runtime().block_on(async {
        let begun = std::time::Instant::now();
        let mut fw = Framework::subscribe(agent.url(), ContentType::Protobuf, "proto-fw").await;

        // An offer carries the node's resources; a decline brings a new offer.
        let offer = fw.offer().await;
        let cpus = berth_proto::resources::scalar_sum(&offer.resources, "cpus");
        assert!(cpus > 0.0 && berth_proto::resources::scalar_sum(&offer.resources, "mem") > 0.0);
        let mut decline = call(scheduler::call::Type::Decline);
        decline.decline = Some(scheduler::call::Decline {
            offer_ids: vec![offer.id.clone()],
            filters: Some(mesos::Filters {
                refuse_seconds: Some(0.0),
            }),
        });
        fw.send(decline).await;
        let offer = fw.offer().await;

        eprintln!("{:?}: LAUNCH: one good task,", begun.elapsed());
        // LAUNCH: one good task, one asking for more than the offer.
        let agent_id = offer.agent_id.clone();
        let good = task("good", &agent_id, 0.1, 32.0, "echo from-good");
        let greedy = task("greedy", &agent_id, cpus + 100.0, 32.0, "true");
        fw.send(launch(&offer, vec![good, greedy])).await;
        let error = fw.update_of("greedy").await;
        assert_eq!(error.state(), mesos::TaskState::TaskError);
        assert_eq!(error.reason(), mesos::task_status::Reason::TaskInvalid);
        assert!(
            error.message().contains("more resources than offered"),
            "{:?}",
            error.message
        );
        let finished = fw.until_state("good", mesos::TaskState::TaskFinished).await;
        assert_eq!(finished.source(), mesos::task_status::Source::Executor);

        eprintln!("{:?}: The used offer is gone", begun.elapsed());
        // The used offer is gone: launching on it again drops the task.
        fw.send(launch(
            &offer,
            vec![task("stale", &agent_id, 0.1, 32.0, "true")],
        ))
        .await;
        let dropped = fw.update_of("stale").await;
        assert_eq!(dropped.state(), mesos::TaskState::TaskDropped);

        eprintln!("{:?}: A task id already used", begun.elapsed());
        // A task id already used is refused.
        let offer = fw.offer().await;
        fw.send(launch(
            &offer,
            vec![task("good", &agent_id, 0.1, 32.0, "true")],
        ))
        .await;
        let duplicate = fw.update_of("good").await;
        assert_eq!(duplicate.state(), mesos::TaskState::TaskError);
        assert!(
            duplicate.message().contains("already in use"),
            "{:?}",
            duplicate.message
        );

        eprintln!("{:?}: LAUNCH_GROUP on a fres", begun.elapsed());
        // LAUNCH_GROUP on a fresh offer, then KILL one of the group.
        let offer = fw.offer().await;
        let mut operation = mesos::offer::Operation {
            launch_group: Some(mesos::offer::operation::LaunchGroup {
                executor: mesos::ExecutorInfo {
                    executor_id: mesos::ExecutorId {
                        value: "group-exec".into(),
                    },
                    ..Default::default()
                },
                task_group: mesos::TaskGroupInfo {
                    tasks: vec![
                        task("g1", &agent_id, 0.1, 32.0, "sleep 300"),
                        task("g2", &agent_id, 0.1, 32.0, "exit 3"),
                    ],
                },
            }),
            ..Default::default()
        };
        operation.set_type(mesos::offer::operation::Type::LaunchGroup);
        let mut accept = call(scheduler::call::Type::Accept);
        accept.accept = Some(scheduler::call::Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![operation],
            filters: None,
        });
        fw.send(accept).await;
        let failed = fw.until_state("g2", mesos::TaskState::TaskFailed).await;
        assert!(
            failed.message().contains("status 3"),
            "{:?}",
            failed.message
        );
        fw.until_state("g1", mesos::TaskState::TaskRunning).await;
        let mut kill = call(scheduler::call::Type::Kill);
        kill.kill = Some(scheduler::call::Kill {
            task_id: mesos::TaskId { value: "g1".into() },
            agent_id: Some(agent_id.clone()),
            kill_policy: Some(mesos::KillPolicy {
                grace_period: Some(mesos::DurationInfo {
                    nanoseconds: 100_000_000,
                }),
            }),
        });
        fw.send(kill).await;
        fw.until_state("g1", mesos::TaskState::TaskKilled).await;

        eprintln!("{:?}: Explicit reconciliatio", begun.elapsed());
        // Explicit reconciliation: known tasks report their state, unknown ones TASK_LOST.
        let mut reconcile = call(scheduler::call::Type::Reconcile);
        reconcile.reconcile = Some(scheduler::call::Reconcile {
            tasks: vec![
                scheduler::call::reconcile::Task {
                    task_id: mesos::TaskId {
                        value: "good".into(),
                    },
                    agent_id: None,
                },
                scheduler::call::reconcile::Task {
                    task_id: mesos::TaskId {
                        value: "never-launched".into(),
                    },
                    agent_id: None,
                },
            ],
        });
        fw.send(reconcile).await;
        let good = fw.update_of("good").await;
        assert_eq!(good.state(), mesos::TaskState::TaskFinished);
        assert_eq!(good.reason(), mesos::task_status::Reason::Reconciliation);
        assert!(good.uuid.is_none(), "reconciliation updates carry no uuid");
        let unknown = fw.update_of("never-launched").await;
        assert_eq!(unknown.state(), mesos::TaskState::TaskLost);

        eprintln!("{:?}: Calls are bound to the", begun.elapsed());
        // Calls are bound to the subscription: wrong stream id, missing framework id, unknown framework.
        let mut revive = call(scheduler::call::Type::Revive);
        revive.framework_id = Some(fw.framework_id.clone());
        assert_eq!(fw.send_raw(&revive, Some("not-the-stream")).await.0, 400);
        assert_eq!(
            fw.send_raw(&call(scheduler::call::Type::Revive), Some(&fw.stream_id))
                .await
                .0,
            400
        );
        let mut stranger = call(scheduler::call::Type::Revive);
        stranger.framework_id = Some(mesos::FrameworkId {
            value: "no-such-framework".into(),
        });
        assert_eq!(fw.send_raw(&stranger, Some(&fw.stream_id)).await.0, 403);

        eprintln!("{:?}: TEARDOWN ends the fram", begun.elapsed());
        // TEARDOWN ends the framework: its event stream closes.
        fw.send(call(scheduler::call::Type::Teardown)).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match fw.events.next().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the event stream did not close after TEARDOWN"
        );
    });
    agent.assert_no_leftovers();
}

#[test]
fn scheduler_api_json_subscribe_and_malformed_calls() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    runtime().block_on(async {
        let mut fw = Framework::subscribe(agent.url(), ContentType::Json, "json-fw").await;
        let offer = fw.offer().await;
        assert_eq!(offer.framework_id, fw.framework_id);
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1/scheduler", agent.url());
        // Required field missing (TaskID.value) inside an ACCEPT: 400 naming the field.
        let body = serde_json::json!({
            "type": "ACCEPT",
            "framework_id": {"value": fw.framework_id.value},
            "accept": {"offer_ids": [{"value": offer.id.value}], "operations": [
                {"type": "LAUNCH", "launch": {"task_infos": [
                    {"name": "x", "task_id": {}, "agent_id": {"value": offer.agent_id.value}}
                ]}}
            ]}
        });
        let response = http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Mesos-Stream-Id", &fw.stream_id)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(
            text.contains("task_id.value"),
            "400 body should name the missing field: {text}"
        );
        // Garbage protobuf: 400.
        let response = http
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .body(vec![0xff, 0xff, 0xff, 0x01])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        // Unsupported content type: 415.
        let response = http
            .post(&url)
            .header("Content-Type", "text/plain")
            .body("hi")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415);
        fw.send(call(scheduler::call::Type::Teardown)).await;
    });
    agent.assert_no_leftovers();
}
