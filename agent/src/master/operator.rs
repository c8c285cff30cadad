//! `POST /api/v1` of the embedded master: the Mesos v1 master operator API, and its event stream.
//!
//! Served calls: `GET_HEALTH`, `GET_VERSION`, `GET_STATE`, `GET_AGENTS`, `GET_FRAMEWORKS`,
//! `GET_EXECUTORS` (always empty: the master does not track executors), `GET_TASKS` and
//! `SUBSCRIBE`; any other call type is `501` naming it. Content negotiation is the agent
//! operator API's ([`crate::operator_api::negotiate`], Mesos' `Http::api`): the call is JSON or
//! protobuf by `Content-Type`, the answer JSON unless `Accept` only allows protobuf.
//!
//! `SUBSCRIBE` answers `200` with a RecordIO stream of `master::Event`s: first `SUBSCRIBED`
//! with the whole state (`Response.GetState`) and the heartbeat interval, then every change as
//! it happens (`TASK_ADDED`, `TASK_UPDATED`, `AGENT_ADDED`, `AGENT_REMOVED`,
//! `FRAMEWORK_ADDED`, `FRAMEWORK_UPDATED`, `FRAMEWORK_REMOVED`), and `HEARTBEAT` every
//! [`HEARTBEAT_INTERVAL`]. The state snapshot and the subscriber's registration are taken under
//! the master's lock, and events are published under it too, so a subscriber sees every change
//! after its snapshot exactly once.
//!
//! Subscribers never slow the master down: each has a bounded queue ([`SUBSCRIBER_QUEUE`]),
//! events are queued without waiting, and a subscriber whose queue is full is dropped (its
//! stream ends; it reconnects and gets the full state again).

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use berth_proto::{
    codec::{self, CodecError, ContentType},
    mesos::v1::{
        self as mesos,
        master::{self, call::Type, event, response},
    },
    recordio,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{EmbeddedMaster, Framework, HEARTBEAT_INTERVAL, MasterTask, State};
use crate::{operator_api::OperatorApiError, task};

/// Events a subscriber may have queued before it is dropped as too slow.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// Statuses kept per task (the latest ones; Mesos keeps all of them).
const STATUSES_KEPT: usize = 16;

/// Why an operator API call was refused; [`IntoResponse`] maps each to its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum MasterApiError {
    /// Content negotiation failed (missing or unsupported `Content-Type`, `Accept`...).
    #[error(transparent)]
    Negotiation(OperatorApiError),
    /// The body is not a `master::Call`.
    #[error("Failed to parse body into Call: {0}")]
    Decode(#[source] CodecError),
    /// The call has no `type`.
    #[error("Expecting 'type' to be present")]
    MissingType,
    /// The call's `type` is a number no Mesos release defines.
    #[error("Unknown call type {0}")]
    UnknownType(i32),
    /// A call type the embedded master does not serve.
    #[error("{0} is not implemented by the berth master")]
    NotImplemented(&'static str),
}

impl MasterApiError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Negotiation(inner) => inner.status(),
            Self::Decode(_) | Self::MissingType | Self::UnknownType(_) => StatusCode::BAD_REQUEST,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

impl IntoResponse for MasterApiError {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<master::Event>,
}

/// The operator event stream's subscribers. Publishing happens under the master's state lock
/// (lock order: state, then hub).
#[derive(Default)]
pub(super) struct OperatorHub {
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: AtomicU64,
}

impl OperatorHub {
    fn has_subscribers(&self) -> bool {
        !self.subscribers.lock().expect("hub lock").is_empty()
    }

    fn add(&self, tx: mpsc::Sender<master::Event>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .lock()
            .expect("hub lock")
            .push(Subscriber { id, tx });
        id
    }

    /// Queues `event` for every subscriber, without waiting; drops the slow and the gone.
    fn publish(&self, event: master::Event) {
        let mut subscribers = self.subscribers.lock().expect("hub lock");
        subscribers.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(
                    subscriber = s.id,
                    queued = SUBSCRIBER_QUEUE,
                    "operator API subscriber too slow: dropping it"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(subscriber = s.id, "operator API subscriber gone");
                false
            }
        });
    }

    /// A task became known (launch accepted, or reported by a re-registering agent).
    pub(super) fn task_added(&self, state: &State, task_id: &str) {
        if !self.has_subscribers() {
            return;
        }
        if let Some(task) = state.tasks.get(task_id) {
            self.publish(task_added_event(task_proto(task)));
        }
    }

    /// A task's state changed by `status`.
    pub(super) fn task_updated(&self, state: &State, status: &mesos::TaskStatus) {
        if !self.has_subscribers() {
            return;
        }
        let Some(task) = state.tasks.get(&status.task_id.value) else {
            return;
        };
        let mut updated = master::event::TaskUpdated {
            framework_id: mesos::FrameworkId {
                value: task.framework_id.clone(),
            },
            status: without_data(status.clone()),
            ..Default::default()
        };
        updated.set_state(task.state);
        self.publish(master::Event {
            r#type: Some(event::Type::TaskUpdated as i32),
            task_updated: Some(updated),
            ..Default::default()
        });
    }

    /// An agent (re)registered after being unknown or unreachable.
    pub(super) fn agent_added(&self, state: &State, agent_id: &str) {
        if !self.has_subscribers() {
            return;
        }
        if let Some(agent) = agent_proto(state, agent_id) {
            self.publish(master::Event {
                r#type: Some(event::Type::AgentAdded as i32),
                agent_added: Some(master::event::AgentAdded { agent }),
                ..Default::default()
            });
        }
    }

    /// An agent is gone (unreachable or unregistered).
    pub(super) fn agent_removed(&self, agent_id: &str) {
        if !self.has_subscribers() {
            return;
        }
        self.publish(master::Event {
            r#type: Some(event::Type::AgentRemoved as i32),
            agent_removed: Some(master::event::AgentRemoved {
                agent_id: mesos::AgentId {
                    value: agent_id.to_string(),
                },
            }),
            ..Default::default()
        });
    }

    /// A framework subscribed for the first time (`added`), or re-subscribed / disconnected.
    pub(super) fn framework_changed(&self, state: &State, framework_id: &str, added: bool) {
        if !self.has_subscribers() {
            return;
        }
        let Some(framework) = state.frameworks.get(framework_id) else {
            return;
        };
        let framework = framework_proto(framework);
        self.publish(if added {
            master::Event {
                r#type: Some(event::Type::FrameworkAdded as i32),
                framework_added: Some(master::event::FrameworkAdded { framework }),
                ..Default::default()
            }
        } else {
            master::Event {
                r#type: Some(event::Type::FrameworkUpdated as i32),
                framework_updated: Some(master::event::FrameworkUpdated { framework }),
                ..Default::default()
            }
        });
    }

    /// A framework was torn down.
    pub(super) fn framework_removed(&self, info: &mesos::FrameworkInfo) {
        if !self.has_subscribers() {
            return;
        }
        self.publish(master::Event {
            r#type: Some(event::Type::FrameworkRemoved as i32),
            framework_removed: Some(master::event::FrameworkRemoved {
                framework_info: info.clone(),
            }),
            ..Default::default()
        });
    }
}

/// The `Task` the master reports for a launch it accepted (state TASK_STAGING).
pub(super) fn task_from_info(
    framework: &mesos::FrameworkInfo,
    info: &mesos::TaskInfo,
    agent_id: &str,
) -> mesos::Task {
    let framework_id = framework.id.clone().unwrap_or_default();
    let user = info
        .command
        .as_ref()
        .and_then(|c| c.user.clone())
        .or_else(|| Some(framework.user.clone()).filter(|u| !u.is_empty()));
    let mut task = mesos::Task {
        name: info.name.clone(),
        task_id: info.task_id.clone(),
        framework_id,
        executor_id: info.executor.as_ref().map(|e| e.executor_id.clone()),
        agent_id: mesos::AgentId {
            value: agent_id.to_string(),
        },
        resources: info.resources.clone(),
        labels: info.labels.clone(),
        discovery: info.discovery.clone(),
        container: info.container.clone(),
        kill_policy: info.kill_policy,
        user,
        ..Default::default()
    };
    task.set_state(mesos::TaskState::TaskStaging);
    task
}

/// Records `status` in the task's history (latest last, bounded, no `data`, no duplicates of a
/// retried update).
pub(super) fn record_status(task: &mut mesos::Task, status: &mesos::TaskStatus) {
    if status.uuid.is_some() && task.statuses.iter().any(|s| s.uuid == status.uuid) {
        return;
    }
    task.statuses.push(without_data(status.clone()));
    if task.statuses.len() > STATUSES_KEPT {
        let extra = task.statuses.len() - STATUSES_KEPT;
        task.statuses.drain(..extra);
    }
}

fn without_data(mut status: mesos::TaskStatus) -> mesos::TaskStatus {
    status.data = None;
    status
}

fn task_proto(task: &MasterTask) -> mesos::Task {
    let mut proto = task.info.clone();
    proto.framework_id.value = task.framework_id.clone();
    proto.agent_id.value = task.agent_id.clone();
    proto.set_state(task.state);
    proto
}

fn task_added_event(task: mesos::Task) -> master::Event {
    master::Event {
        r#type: Some(event::Type::TaskAdded as i32),
        task_added: Some(master::event::TaskAdded { task }),
        ..Default::default()
    }
}

fn agent_proto(state: &State, agent_id: &str) -> Option<response::get_agents::Agent> {
    let entry = state.agents.get(agent_id)?;
    let registration = &entry.registration;
    let mut allocated = crate::resources::ResourceSet::default();
    for task in state.tasks.values() {
        if task.agent_id == agent_id && !task::is_terminal(task.state.as_str_name()) {
            allocated.add(&task.resources);
        }
    }
    let mut offered = crate::resources::ResourceSet::default();
    for offer in state.offers.values().filter(|o| o.agent_id == agent_id) {
        offered.add(&offer.resources);
    }
    let total = registration.resources.to_proto();
    Some(response::get_agents::Agent {
        agent_info: mesos::AgentInfo {
            hostname: registration.hostname.clone(),
            port: Some(i32::from(registration.port)),
            resources: total.clone(),
            attributes: registration
                .attributes
                .iter()
                .map(|(name, value)| crate::resources::text_attribute(name, value))
                .collect(),
            id: Some(mesos::AgentId {
                value: agent_id.to_string(),
            }),
            domain: None,
        },
        active: entry.reachable,
        deactivated: Some(false),
        version: crate::mesos::link::MESOS_PROTOCOL_VERSION.into(),
        pid: entry.port.pid(),
        registered_time: Some(time_info(entry.registered_at)),
        total_resources: total,
        allocated_resources: allocated.to_proto(),
        offered_resources: offered.to_proto(),
        ..Default::default()
    })
}

fn framework_proto(framework: &Framework) -> response::get_frameworks::Framework {
    let connected = framework.stream.is_some();
    response::get_frameworks::Framework {
        framework_info: framework.info.clone(),
        active: connected,
        connected,
        recovered: false,
        ..Default::default()
    }
}

fn time_info(seconds: f64) -> mesos::TimeInfo {
    mesos::TimeInfo {
        nanoseconds: (seconds * 1e9) as i64,
    }
}

fn get_tasks(state: &State) -> response::GetTasks {
    let mut tasks = response::GetTasks::default();
    let mut sorted: Vec<&MasterTask> = state.tasks.values().collect();
    sorted.sort_by(|a, b| a.info.task_id.value.cmp(&b.info.task_id.value));
    for task in sorted {
        let proto = task_proto(task);
        if task.state == mesos::TaskState::TaskUnreachable {
            tasks.unreachable_tasks.push(proto);
        } else if task::is_terminal(task.state.as_str_name()) {
            tasks.completed_tasks.push(proto);
        } else {
            tasks.tasks.push(proto);
        }
    }
    tasks
}

fn get_agents(state: &State) -> response::GetAgents {
    response::GetAgents {
        agents: state
            .agents
            .iter()
            .filter(|(_, a)| a.reachable)
            .filter_map(|(id, _)| agent_proto(state, id))
            .collect(),
        recovered_agents: Vec::new(),
    }
}

fn get_frameworks(state: &State) -> response::GetFrameworks {
    response::GetFrameworks {
        frameworks: state.frameworks.values().map(framework_proto).collect(),
        ..Default::default()
    }
}

fn get_state(state: &State) -> response::GetState {
    response::GetState {
        get_tasks: Some(get_tasks(state)),
        get_executors: Some(response::GetExecutors::default()),
        get_frameworks: Some(get_frameworks(state)),
        get_agents: Some(get_agents(state)),
    }
}

fn response_of(kind: response::Type) -> master::Response {
    master::Response {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

impl EmbeddedMaster {
    /// The whole state as `GET_STATE` answers it.
    pub fn operator_state(&self) -> response::GetState {
        get_state(&self.state.lock().expect("master lock"))
    }

    /// Subscribes to the operator event stream: returns `SUBSCRIBED` (the state now) and the
    /// receiver of every later event. The receiver is dropped by the master, which ends the
    /// stream, if it falls [`SUBSCRIBER_QUEUE`] events behind.
    pub fn operator_subscribe(&self) -> (master::Event, mpsc::Receiver<master::Event>) {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let state = self.state.lock().expect("master lock");
        let subscribed = master::Event {
            r#type: Some(event::Type::Subscribed as i32),
            subscribed: Some(master::event::Subscribed {
                get_state: Some(get_state(&state)),
                heartbeat_interval_seconds: Some(HEARTBEAT_INTERVAL.as_secs_f64()),
            }),
            ..Default::default()
        };
        let id = self.operator.add(tx);
        drop(state);
        info!(subscriber = id, "operator API subscriber");
        (subscribed, rx)
    }

    /// Answers one call that is not `SUBSCRIBE`.
    pub fn operator_call(&self, kind: Type) -> Result<master::Response, MasterApiError> {
        let state = self.state.lock().expect("master lock");
        Ok(match kind {
            Type::GetHealth => master::Response {
                get_health: Some(response::GetHealth { healthy: true }),
                ..response_of(response::Type::GetHealth)
            },
            Type::GetVersion => master::Response {
                get_version: Some(response::GetVersion {
                    version_info: mesos::VersionInfo {
                        version: crate::mesos::link::MESOS_PROTOCOL_VERSION.into(),
                        git_tag: Some(format!("berth-{}", env!("CARGO_PKG_VERSION"))),
                        ..Default::default()
                    },
                }),
                ..response_of(response::Type::GetVersion)
            },
            Type::GetState => master::Response {
                get_state: Some(get_state(&state)),
                ..response_of(response::Type::GetState)
            },
            Type::GetAgents => master::Response {
                get_agents: Some(get_agents(&state)),
                ..response_of(response::Type::GetAgents)
            },
            Type::GetFrameworks => master::Response {
                get_frameworks: Some(get_frameworks(&state)),
                ..response_of(response::Type::GetFrameworks)
            },
            Type::GetExecutors => master::Response {
                get_executors: Some(response::GetExecutors::default()),
                ..response_of(response::Type::GetExecutors)
            },
            Type::GetTasks => master::Response {
                get_tasks: Some(get_tasks(&state)),
                ..response_of(response::Type::GetTasks)
            },
            other => return Err(MasterApiError::NotImplemented(other.as_str_name())),
        })
    }
}

/// Decodes a call and its type.
pub fn decode_call(
    body: &[u8],
    content_type: ContentType,
) -> Result<(master::Call, Type), MasterApiError> {
    let call: master::Call = codec::decode(body, content_type).map_err(MasterApiError::Decode)?;
    let number = call.r#type.ok_or(MasterApiError::MissingType)?;
    let kind = Type::try_from(number).map_err(|_| MasterApiError::UnknownType(number))?;
    if kind == Type::Unknown {
        return Err(MasterApiError::MissingType);
    }
    Ok((call, kind))
}

/// Answers one call of `POST /api/v1` (the caller checked that this master leads).
pub async fn handle(
    master: std::sync::Arc<EmbeddedMaster>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let result = crate::operator_api::negotiate(headers)
        .map_err(MasterApiError::Negotiation)
        .and_then(|(content_type, accept)| {
            let (_call, kind) = decode_call(body, content_type)?;
            Ok((kind, accept))
        });
    let (kind, accept) = match result {
        Ok(ok) => ok,
        Err(err) => {
            debug!(error = %err, status = %err.status(), "master operator API call refused");
            return err.into_response();
        }
    };
    debug!(call = kind.as_str_name(), "master operator API call");
    if kind == Type::Subscribe {
        return subscribe(&master, accept);
    }
    match master.operator_call(kind) {
        Ok(response) => encode(&response, accept),
        Err(err) => err.into_response(),
    }
}

fn encode(response: &master::Response, accept: ContentType) -> Response {
    let mut http = (StatusCode::OK, codec::encode(response, accept)).into_response();
    http.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(accept.as_str()),
    );
    http
}

fn subscribe(master: &EmbeddedMaster, accept: ContentType) -> Response {
    let (subscribed, events) = master.operator_subscribe();
    let heartbeats = futures::stream::unfold((), |()| async {
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        let heartbeat = master::Event {
            r#type: Some(event::Type::Heartbeat as i32),
            ..Default::default()
        };
        Some((Some(heartbeat), ()))
    });
    // The stream ends when the master drops the subscriber (too slow).
    let events = futures::stream::once(async move { Some(subscribed) })
        .chain(tokio_stream::wrappers::ReceiverStream::new(events).map(Some))
        .chain(futures::stream::once(async { None }));
    let body = futures::stream::select(events, heartbeats)
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(|item| async move { item })
        .map(move |event| {
            Ok::<_, std::convert::Infallible>(Bytes::from(recordio::encode_record(&codec::encode(
                &event, accept,
            ))))
        });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(accept.as_str()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::Cardinality;

    #[test]
    fn master_proto_numbers_match_upstream() {
        use Cardinality::{Optional as O, Required as Q};
        let pool = &*berth_proto::DESCRIPTOR_POOL;
        let check = |message: &str, fields: &[(&str, u32, Cardinality)]| {
            let desc = pool.get_message_by_name(message).expect(message);
            for &(name, number, cardinality) in fields {
                let field = desc.get_field_by_name(name).expect(name);
                assert_eq!(field.number(), number, "{message}.{name}");
                assert_eq!(field.cardinality(), cardinality, "{message}.{name}");
            }
        };
        check(
            "mesos.v1.master.Event",
            &[
                ("type", 1, O),
                ("subscribed", 2, O),
                ("task_added", 3, O),
                ("task_updated", 4, O),
                ("agent_added", 5, O),
                ("agent_removed", 6, O),
                ("framework_added", 7, O),
                ("framework_updated", 8, O),
                ("framework_removed", 9, O),
            ],
        );
        check(
            "mesos.v1.master.Event.TaskUpdated",
            &[("framework_id", 1, Q), ("status", 2, Q), ("state", 3, Q)],
        );
        check(
            "mesos.v1.master.Response.GetAgents.Agent",
            &[
                ("agent_info", 1, Q),
                ("active", 2, Q),
                ("version", 3, Q),
                ("pid", 4, O),
                ("deactivated", 12, O),
            ],
        );
        check(
            "mesos.v1.master.Response",
            &[
                ("get_state", 9, O),
                ("get_agents", 10, O),
                ("get_frameworks", 11, O),
                ("get_tasks", 13, O),
            ],
        );
        check(
            "mesos.v1.Task",
            &[("discovery", 12, O), ("container", 13, O)],
        );
        check("mesos.v1.TaskInfo", &[("discovery", 11, O)]);
        assert_eq!(Type::Subscribe as i32, 18);
        assert_eq!(Type::GetOperations as i32, 33);
        assert_eq!(event::Type::Heartbeat as i32, 9);
        assert_eq!(response::Type::GetTasks as i32, 12);
    }

    #[test]
    fn statuses_are_bounded_and_deduplicated() {
        let mut task = mesos::Task::default();
        for i in 0..40u8 {
            let status = mesos::TaskStatus {
                uuid: Some(vec![i]),
                data: Some(vec![1, 2, 3]),
                ..Default::default()
            };
            record_status(&mut task, &status);
            record_status(&mut task, &status);
        }
        assert_eq!(task.statuses.len(), STATUSES_KEPT);
        assert_eq!(task.statuses.last().unwrap().uuid, Some(vec![39]));
        assert!(task.statuses.iter().all(|s| s.data.is_none()));
    }

    #[test]
    fn slow_subscribers_are_dropped_without_blocking() {
        let hub = OperatorHub::default();
        let (tx, mut rx) = mpsc::channel(2);
        hub.add(tx);
        let (fast_tx, mut fast_rx) = mpsc::channel(16);
        hub.add(fast_tx);
        for _ in 0..3 {
            hub.agent_removed("a");
        }
        // The slow one got two and was dropped; the fast one got all three and stays.
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        for _ in 0..3 {
            assert!(fast_rx.try_recv().is_ok());
        }
        assert_eq!(hub.subscribers.lock().unwrap().len(), 1);
    }
}
