//! A Mesos v1 HTTP scheduler for the e2e tests, written against the wire format (protobuf or
//! JSON calls, the RecordIO event stream): subscribe, offers, launches, updates and
//! acknowledgements, calls with the stream id.

use std::time::Duration;

use berth_proto::{
    codec::{self, ContentType},
    mesos::v1::{self as mesos, scheduler},
    recordio,
};
use futures::StreamExt;

/// A v1 HTTP scheduler written against the wire format, for the tests.
pub struct Framework {
    pub url: String,
    pub http: reqwest::Client,
    pub ct: ContentType,
    pub stream_id: String,
    pub framework_id: mesos::FrameworkId,
    pub events: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    pub decoder: recordio::Decoder,
    /// Updates received while waiting for another task's, in arrival order.
    pub backlog: Vec<mesos::TaskStatus>,
    /// Events of other types received while waiting for one type.
    pub pending: Vec<scheduler::Event>,
    /// How long to wait for the next event before failing (30 s; tests whose tasks are slow to
    /// start, e.g. image pulls, raise it).
    pub event_timeout: Duration,
}

pub fn call(kind: scheduler::call::Type) -> scheduler::Call {
    scheduler::Call {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

impl Framework {
    pub async fn subscribe(url: &str, ct: ContentType, name: &str) -> Framework {
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
            event_timeout: Duration::from_secs(30),
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

    pub async fn next_event(&mut self) -> scheduler::Event {
        loop {
            if let Some(record) = self.decoder.next_record().expect("valid RecordIO") {
                return codec::decode(&record, self.ct).expect("valid event");
            }
            let chunk = tokio::time::timeout(self.event_timeout, self.events.next())
                .await
                .unwrap_or_else(|_| panic!("an event within {:?}", self.event_timeout))
                .expect("the stream stays open")
                .expect("reading the stream");
            self.decoder.feed(&chunk);
        }
    }

    /// Next event of a type; events of other types are kept for later (heartbeats dropped).
    pub async fn next_of(&mut self, kind: scheduler::event::Type) -> scheduler::Event {
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

    pub async fn send_raw(&self, call: &scheduler::Call, stream_id: Option<&str>) -> (u16, String) {
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

    pub async fn send(&self, mut call: scheduler::Call) {
        call.framework_id = Some(self.framework_id.clone());
        let (status, body) = self.send_raw(&call, Some(&self.stream_id)).await;
        assert_eq!(
            status,
            202,
            "call {:?} answered {status}: {body}",
            call.r#type()
        );
    }

    /// DECLINE of one offer with no refuse filter (the next offer comes at once).
    pub async fn decline(&self, offer: &mesos::Offer) {
        let mut decline = call(scheduler::call::Type::Decline);
        decline.decline = Some(scheduler::call::Decline {
            offer_ids: vec![offer.id.clone()],
            filters: Some(mesos::Filters {
                refuse_seconds: Some(0.0),
            }),
        });
        self.send(decline).await;
    }

    /// KILL of a task (its own kill policy).
    pub async fn kill(&self, task_id: &str) {
        let mut kill = call(scheduler::call::Type::Kill);
        kill.kill = Some(scheduler::call::Kill {
            task_id: mesos::TaskId {
                value: task_id.into(),
            },
            ..Default::default()
        });
        self.send(kill).await;
    }

    /// Launches one shell task (0.1 cpus, 32 MB) out of the next offer.
    pub async fn launch_one(&mut self, task_id: &str, shell: &str) {
        let offer = self.offer().await;
        self.send(launch(
            &offer,
            vec![task(task_id, &offer.agent_id, 0.1, 32.0, shell)],
        ))
        .await;
    }

    pub async fn offer(&mut self) -> mesos::Offer {
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
    pub async fn update_of(&mut self, task_id: &str) -> mesos::TaskStatus {
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

    pub async fn until_state(
        &mut self,
        task_id: &str,
        state: mesos::TaskState,
    ) -> mesos::TaskStatus {
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

pub fn is_terminal(state: mesos::TaskState) -> bool {
    use mesos::TaskState::*;
    matches!(
        state,
        TaskFinished | TaskFailed | TaskKilled | TaskError | TaskLost | TaskDropped
    )
}

pub fn task(
    id: &str,
    agent_id: &mesos::AgentId,
    cpus: f64,
    mem: f64,
    shell: &str,
) -> mesos::TaskInfo {
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

pub fn launch(offer: &mesos::Offer, tasks: Vec<mesos::TaskInfo>) -> scheduler::Call {
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

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
