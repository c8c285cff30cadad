//! berth's embedded master (`berth agent --dev`, `berth master`): an offer-based allocator for the
//! agents registered with it over the Mesos agent wire protocol ([`wire`]), serving the Mesos v1
//! scheduler HTTP API ([`scheduler_api`]) and the v1 master operator API with its event stream
//! ([`operator`]).
//!
//! Allocation follows Mesos: each agent's resources not held by tasks or by outstanding offers
//! are offered whole to one subscribed framework at a time (round-robin), skipping frameworks that are
//! suppressed or that declined with a filter still in force; an accept's unused remainder and
//! declined offers return to the pool, and the next framework is offered it. Offers not answered
//! within [`OFFER_TIMEOUT`] are rescinded. A framework whose event stream closes has its offers
//! rescinded and, after its `failover_timeout`, its tasks killed.

pub mod contender;
pub mod operator;
pub mod overlay_registry;
pub mod scheduler_api;
pub mod server;
pub mod wire;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use berth_proto::mesos::v1::{self as mesos, scheduler};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    link::{AgentPort, AgentRegistration},
    resources::ResourceSet,
    task,
};

/// Offers not answered within this time are rescinded.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat interval announced to frameworks.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Default refuse_seconds of a decline (Mesos: 5 s).
const DEFAULT_REFUSE: Duration = Duration::from_secs(5);

struct Framework {
    info: mesos::FrameworkInfo,
    stream: Option<(String, mpsc::UnboundedSender<scheduler::Event>)>,
    /// Refuse filters by agent (Mesos filters are per framework and agent).
    filtered_until: HashMap<String, Instant>,
    suppressed: bool,
    disconnected_at: Option<Instant>,
}

struct OutstandingOffer {
    framework_id: String,
    agent_id: String,
    resources: ResourceSet,
    created: Instant,
}

struct MasterTask {
    framework_id: String,
    agent_id: String,
    resources: ResourceSet,
    state: mesos::TaskState,
    latest: Option<mesos::TaskStatus>,
    /// The task as the operator API reports it (name, labels, discovery, container, statuses).
    info: mesos::Task,
}

struct AgentEntry {
    registration: AgentRegistration,
    port: Arc<dyn AgentPort>,
    reachable: bool,
    registered_at: f64,
}

/// An agent as the master's state shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentSummary {
    /// Agent id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// Total resources.
    pub resources: String,
    /// Whether it answers pings.
    pub reachable: bool,
    /// Tasks the master knows on it that are not terminal.
    pub active_tasks: usize,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<String, AgentEntry>,
    frameworks: BTreeMap<String, Framework>,
    offers: HashMap<String, OutstandingOffer>,
    tasks: HashMap<String, MasterTask>,
    round_robin: usize,
}

/// Errors of scheduler calls, mapped to HTTP statuses at the API boundary.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The call is malformed or refers to nothing valid (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The framework is not subscribed or the stream id does not match (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
}

/// The embedded master.
pub struct EmbeddedMaster {
    id: String,
    address: SocketAddr,
    hostname: String,
    state: Mutex<State>,
    operator: operator::OperatorHub,
}

impl EmbeddedMaster {
    /// A master with no agent yet, reachable at `address` (its libprocess/HTTP server).
    pub fn new(address: SocketAddr, hostname: &str) -> Arc<Self> {
        Arc::new(Self {
            id: uuid::Uuid::new_v4().to_string(),
            address,
            hostname: hostname.to_string(),
            state: Mutex::new(State::default()),
            operator: operator::OperatorHub::default(),
        })
    }

    /// The master's id (agent ids it assigns start with it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the allocation timer.
    pub fn start(self: &Arc<Self>) {
        let master = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                master.expire();
                master.allocate();
            }
        });
    }

    fn port_of_agent(&self, agent_id: &str) -> Option<Arc<dyn AgentPort>> {
        let state = self.state.lock().expect("master lock");
        state.agents.get(agent_id).map(|a| a.port.clone())
    }

    fn port_of_task(&self, task_id: &str) -> Option<Arc<dyn AgentPort>> {
        let state = self.state.lock().expect("master lock");
        let agent_id = &state.tasks.get(task_id)?.agent_id;
        state.agents.get(agent_id).map(|a| a.port.clone())
    }

    /// The master's `MasterInfo` (as written to ZooKeeper and sent to frameworks).
    pub fn master_info(&self) -> mesos::MasterInfo {
        let ip = match self.address.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
        };
        mesos::MasterInfo {
            id: self.id.clone(),
            // MasterInfo.ip is the IPv4 address in network byte order read as a host integer.
            ip: u32::from_ne_bytes(ip.octets()),
            port: u32::from(self.address.port()),
            pid: Some(format!("master@{}", self.address)),
            hostname: Some(self.hostname.clone()),
            version: Some(crate::mesos::link::MESOS_PROTOCOL_VERSION.into()),
            address: Some(mesos::Address {
                hostname: Some(self.hostname.clone()),
                ip: Some(self.address.ip().to_string()),
                port: i32::from(self.address.port()),
            }),
            ..Default::default()
        }
    }

    /// The agents the master knows.
    pub fn agents(&self) -> Vec<AgentSummary> {
        let state = self.state.lock().expect("master lock");
        state
            .agents
            .values()
            .map(|a| AgentSummary {
                id: a.registration.id.clone().unwrap_or_default(),
                hostname: a.registration.hostname.clone(),
                resources: a.registration.resources.to_string(),
                reachable: a.reachable,
                active_tasks: state
                    .tasks
                    .values()
                    .filter(|t| {
                        Some(&t.agent_id) == a.registration.id.as_ref()
                            && !task::is_terminal(t.state.as_str_name())
                    })
                    .count(),
            })
            .collect()
    }

    /// Number of subscribed frameworks and outstanding offers (for metrics/state).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().expect("master lock");
        (state.frameworks.len(), state.offers.len())
    }

    /// Subscribes (or re-subscribes) a framework; returns its id, the stream id and the event
    /// receiver whose first event is SUBSCRIBED.
    pub fn subscribe(
        self: &Arc<Self>,
        mut info: mesos::FrameworkInfo,
    ) -> (String, String, mpsc::UnboundedReceiver<scheduler::Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream_id = uuid::Uuid::new_v4().to_string();
        let framework_id = match &info.id {
            Some(id) if !id.value.is_empty() => id.value.clone(),
            _ => format!(
                "{}-{:04}",
                self.id,
                self.state.lock().expect("master lock").frameworks.len()
            ),
        };
        info.id = Some(mesos::FrameworkId {
            value: framework_id.clone(),
        });
        let subscribed = scheduler::Event {
            r#type: Some(scheduler::event::Type::Subscribed as i32),
            subscribed: Some(scheduler::event::Subscribed {
                framework_id: mesos::FrameworkId {
                    value: framework_id.clone(),
                },
                heartbeat_interval_seconds: Some(HEARTBEAT_INTERVAL.as_secs_f64()),
                master_info: Some(self.master_info()),
            }),
            ..Default::default()
        };
        let _ = tx.send(subscribed);
        {
            let mut state = self.state.lock().expect("master lock");
            // A failover replaces the previous connection, which is told so.
            if let Some(old) = state.frameworks.get(&framework_id)
                && let Some((_, old_tx)) = &old.stream
            {
                let _ = old_tx.send(error_event("Framework failed over"));
            }
            let rescinded = rescind_offers_of(&mut state, &framework_id);
            debug!(framework_id, rescinded, "subscribe");
            let added = !state.frameworks.contains_key(&framework_id);
            state.frameworks.insert(
                framework_id.clone(),
                Framework {
                    info,
                    stream: Some((stream_id.clone(), tx)),
                    filtered_until: HashMap::new(),
                    suppressed: false,
                    disconnected_at: None,
                },
            );
            self.operator
                .framework_changed(&state, &framework_id, added);
        }
        info!(framework_id, "framework subscribed");
        self.allocate();
        (framework_id, stream_id, rx)
    }

    /// The framework's event stream closed.
    pub fn disconnected(self: &Arc<Self>, framework_id: &str, stream_id: &str) {
        let mut state = self.state.lock().expect("master lock");
        let Some(framework) = state.frameworks.get_mut(framework_id) else {
            return;
        };
        if framework.stream.as_ref().map(|(id, _)| id.as_str()) != Some(stream_id) {
            return; // an older stream of a framework that failed over
        }
        framework.stream = None;
        framework.disconnected_at = Some(Instant::now());
        rescind_offers_of(&mut state, framework_id);
        self.operator.framework_changed(&state, framework_id, false);
        drop(state);
        info!(framework_id, "framework disconnected");
        self.expire();
        self.allocate();
    }

    /// Checks that a call comes from the subscribed connection of its framework.
    pub fn authorize(
        &self,
        framework_id: &str,
        stream_id: Option<&str>,
    ) -> Result<(), MasterError> {
        let state = self.state.lock().expect("master lock");
        let framework = state.frameworks.get(framework_id).ok_or_else(|| {
            MasterError::Forbidden(format!("framework {framework_id} is not subscribed"))
        })?;
        match (&framework.stream, stream_id) {
            (Some((expected, _)), Some(given)) if expected == given => Ok(()),
            (Some(_), _) => Err(MasterError::BadRequest(
                "the Mesos-Stream-Id header is missing or does not match the subscription".into(),
            )),
            (None, _) => Err(MasterError::Forbidden(format!(
                "framework {framework_id} is not connected"
            ))),
        }
    }

    fn send(state: &State, framework_id: &str, event: scheduler::Event) {
        if let Some((_, tx)) = state
            .frameworks
            .get(framework_id)
            .and_then(|f| f.stream.as_ref())
        {
            let _ = tx.send(event);
        }
    }

    /// Offers each reachable agent's free resources to the next eligible framework.
    pub fn allocate(&self) {
        let mut state = self.state.lock().expect("master lock");
        let agent_ids: Vec<String> = state.agents.keys().cloned().collect();
        for agent_id in agent_ids {
            Self::allocate_agent(&mut state, &agent_id);
        }
    }

    fn allocate_agent(state: &mut State, agent_id: &str) {
        let Some(agent) = state.agents.get(agent_id) else {
            return;
        };
        if !agent.reachable || state.offers.values().any(|o| o.agent_id == agent_id) {
            return; // one offer at a time holds everything that is free on an agent
        }
        let registration = agent.registration.clone();
        let mut free = registration.resources.clone();
        for task in state.tasks.values() {
            if task.agent_id == agent_id && !task::is_terminal(task.state.as_str_name()) {
                free.subtract(&task.resources);
            }
        }
        if free.scalar("cpus") < 0.01 || free.scalar("mem") < 4.0 {
            return;
        }
        let now = Instant::now();
        let eligible: Vec<String> = state
            .frameworks
            .iter()
            .filter(|(_, f)| {
                f.stream.is_some()
                    && !f.suppressed
                    && f.filtered_until.get(agent_id).is_none_or(|t| *t <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if eligible.is_empty() {
            return;
        }
        let pick = eligible[state.round_robin % eligible.len()].clone();
        state.round_robin = state.round_robin.wrapping_add(1);
        let offer_id = uuid::Uuid::new_v4().to_string();
        let offer = mesos::Offer {
            id: mesos::OfferId {
                value: offer_id.clone(),
            },
            framework_id: mesos::FrameworkId {
                value: pick.clone(),
            },
            agent_id: mesos::AgentId {
                value: agent_id.to_string(),
            },
            hostname: registration.hostname.clone(),
            resources: free.to_proto(),
            attributes: registration
                .attributes
                .iter()
                .map(|(name, value)| crate::resources::text_attribute(name, value))
                .collect(),
            ..Default::default()
        };
        state.offers.insert(
            offer_id,
            OutstandingOffer {
                framework_id: pick.clone(),
                agent_id: agent_id.to_string(),
                resources: free,
                created: now,
            },
        );
        let event = scheduler::Event {
            r#type: Some(scheduler::event::Type::Offers as i32),
            offers: Some(scheduler::event::Offers {
                offers: vec![offer],
            }),
            ..Default::default()
        };
        Self::send(state, &pick, event);
    }

    /// Rescinds stale offers and tears down frameworks whose failover timeout passed.
    fn expire(&self) {
        let now = Instant::now();
        let mut teardown = Vec::new();
        {
            let mut state = self.state.lock().expect("master lock");
            let stale: Vec<String> = state
                .offers
                .iter()
                .filter(|(_, o)| now.duration_since(o.created) > OFFER_TIMEOUT)
                .map(|(id, _)| id.clone())
                .collect();
            for offer_id in stale {
                if let Some(offer) = state.offers.remove(&offer_id) {
                    Self::send(&state, &offer.framework_id, rescind_event(&offer_id));
                }
            }
            for (id, framework) in &state.frameworks {
                if let Some(at) = framework.disconnected_at {
                    let timeout = Duration::from_secs_f64(
                        framework
                            .info
                            .failover_timeout
                            .unwrap_or(0.0)
                            .clamp(0.0, 1e9),
                    );
                    if now.duration_since(at) >= timeout {
                        teardown.push(id.clone());
                    }
                }
            }
        }
        for id in teardown {
            info!(framework_id = %id, "failover timeout passed: tearing the framework down");
            self.teardown(&id);
        }
    }

    /// TEARDOWN: kills the framework's tasks and forgets it.
    pub fn teardown(&self, framework_id: &str) {
        {
            let mut state = self.state.lock().expect("master lock");
            rescind_offers_of(&mut state, framework_id);
            if let Some(framework) = state.frameworks.remove(framework_id) {
                self.operator.framework_removed(&framework.info);
                drop(framework.stream);
            }
        }
        let ports: Vec<Arc<dyn AgentPort>> = {
            let state = self.state.lock().expect("master lock");
            state.agents.values().map(|a| a.port.clone()).collect()
        };
        for port in ports {
            port.shutdown_framework(framework_id);
        }
    }

    /// ACCEPT: launches the operations' tasks out of the offers' resources.
    pub fn accept(
        &self,
        framework_id: &str,
        accept: scheduler::call::Accept,
    ) -> Result<(), MasterError> {
        let refuse = filter_duration(accept.filters.as_ref());
        let mut launches = Vec::new();
        let mut errors = Vec::new();
        let framework_info;
        {
            let mut state = self.state.lock().expect("master lock");
            framework_info = state
                .frameworks
                .get(framework_id)
                .map(|f| f.info.clone())
                .ok_or_else(|| {
                    MasterError::Forbidden(format!("framework {framework_id} unknown"))
                })?;
            let mut offered = ResourceSet::default();
            let mut valid_offers = true;
            for offer_id in &accept.offer_ids {
                match state.offers.get(&offer_id.value) {
                    Some(offer) if offer.framework_id == framework_id => {}
                    _ => valid_offers = false,
                }
            }
            let mut seen = HashSet::new();
            let mut offer_agents: HashSet<String> = accept
                .offer_ids
                .iter()
                .filter_map(|id| state.offers.get(&id.value).map(|o| o.agent_id.clone()))
                .collect();
            // Mesos: the offers of one accept must all be for one agent.
            if offer_agents.len() > 1 {
                valid_offers = false;
            }
            let agent_id = offer_agents.drain().next().unwrap_or_default();
            if valid_offers {
                for offer_id in &accept.offer_ids {
                    if seen.insert(offer_id.value.clone()) {
                        let offer = state.offers.remove(&offer_id.value).expect("checked above");
                        offered.add(&offer.resources);
                    }
                }
            }
            for operation in accept.operations {
                let tasks: Vec<mesos::TaskInfo> = match operation.r#type() {
                    mesos::offer::operation::Type::Launch => {
                        operation.launch.map(|l| l.task_infos).unwrap_or_default()
                    }
                    mesos::offer::operation::Type::LaunchGroup => operation
                        .launch_group
                        .map(|g| g.task_group.tasks)
                        .unwrap_or_default(),
                    other => {
                        warn!(framework_id, operation = ?other, "unsupported offer operation ignored");
                        continue;
                    }
                };
                for task in tasks {
                    let task_id = task.task_id.value.clone();
                    let resources = ResourceSet::from_proto(&task.resources);
                    let problem = if !valid_offers {
                        Some((
                            mesos::TaskState::TaskDropped,
                            mesos::task_status::Reason::InvalidOffers,
                            "the offer is no longer valid (rescinded, used or unknown)".to_string(),
                        ))
                    } else if task_id.is_empty() {
                        Some((
                            mesos::TaskState::TaskError,
                            mesos::task_status::Reason::TaskInvalid,
                            "empty task id".into(),
                        ))
                    } else if state.tasks.contains_key(&task_id) {
                        Some((
                            mesos::TaskState::TaskError,
                            mesos::task_status::Reason::TaskInvalid,
                            format!("task id {task_id} is already in use"),
                        ))
                    } else if task.agent_id.value != agent_id {
                        Some((
                            mesos::TaskState::TaskError,
                            mesos::task_status::Reason::TaskInvalid,
                            format!(
                                "task targets agent {} but the offer is for {agent_id}",
                                task.agent_id.value
                            ),
                        ))
                    } else {
                        offered.missing(&resources).map(|missing| {
                            (
                                mesos::TaskState::TaskError,
                                mesos::task_status::Reason::TaskInvalid,
                                format!("task uses more resources than offered: {missing}"),
                            )
                        })
                    };
                    match problem {
                        Some((state_, reason, message)) => {
                            errors.push((task_id, state_, reason, message))
                        }
                        None => {
                            offered.subtract(&resources);
                            let info = operator::task_from_info(&framework_info, &task, &agent_id);
                            state.tasks.insert(
                                task_id.clone(),
                                MasterTask {
                                    framework_id: framework_id.to_string(),
                                    agent_id: agent_id.clone(),
                                    resources,
                                    state: mesos::TaskState::TaskStaging,
                                    latest: None,
                                    info,
                                },
                            );
                            self.operator.task_added(&state, &task_id);
                            launches.push(task);
                        }
                    }
                }
            }
            if let Some(framework) = state.frameworks.get_mut(framework_id) {
                framework
                    .filtered_until
                    .insert(agent_id.clone(), Instant::now() + refuse);
            }
            for (task_id, state_, reason, message) in &errors {
                let mut status = mesos::TaskStatus {
                    task_id: mesos::TaskId {
                        value: task_id.clone(),
                    },
                    message: Some(message.clone()),
                    timestamp: Some(task::now()),
                    ..Default::default()
                };
                status.set_state(*state_);
                status.set_reason(*reason);
                status.set_source(mesos::task_status::Source::Master);
                Self::send(&state, framework_id, update_event(status));
            }
        }
        // An accept with a refuse filter of 0 lets the next framework (or this one) get the rest at once.
        for task in launches {
            match self.port_of_task(&task.task_id.value) {
                Some(port) => port.run_task(&framework_info, task),
                None => warn!(task_id = %task.task_id.value, "the task's agent is gone"),
            }
        }
        self.allocate();
        Ok(())
    }

    /// DECLINE: returns the offers; the framework is filtered for the refuse time.
    pub fn decline(&self, framework_id: &str, decline: scheduler::call::Decline) {
        {
            let mut state = self.state.lock().expect("master lock");
            let until = Instant::now() + filter_duration(decline.filters.as_ref());
            for offer_id in &decline.offer_ids {
                let declined = match state.offers.get(&offer_id.value) {
                    Some(o) if o.framework_id == framework_id => Some(o.agent_id.clone()),
                    _ => None,
                };
                if let Some(agent_id) = declined {
                    state.offers.remove(&offer_id.value);
                    if let Some(framework) = state.frameworks.get_mut(framework_id) {
                        framework.filtered_until.insert(agent_id, until);
                    }
                }
            }
        }
        self.allocate();
    }

    /// REVIVE / SUPPRESS.
    pub fn set_suppressed(&self, framework_id: &str, suppressed: bool) {
        {
            let mut state = self.state.lock().expect("master lock");
            if let Some(framework) = state.frameworks.get_mut(framework_id) {
                framework.suppressed = suppressed;
                if !suppressed {
                    framework.filtered_until.clear();
                }
            }
        }
        self.allocate();
    }

    /// KILL.
    pub fn kill(&self, framework_id: &str, kill: scheduler::call::Kill) {
        let task_id = kill.task_id.value.clone();
        let known = {
            let state = self.state.lock().expect("master lock");
            match state.tasks.get(&task_id) {
                Some(task) if task.framework_id == framework_id => true,
                _ => {
                    let mut status = mesos::TaskStatus {
                        task_id: kill.task_id.clone(),
                        message: Some("kill of an unknown task".into()),
                        timestamp: Some(task::now()),
                        ..Default::default()
                    };
                    status.set_state(mesos::TaskState::TaskLost);
                    status.set_reason(mesos::task_status::Reason::Reconciliation);
                    status.set_source(mesos::task_status::Source::Master);
                    Self::send(&state, framework_id, update_event(status));
                    false
                }
            }
        };
        if known {
            let grace = kill
                .kill_policy
                .and_then(|k| k.grace_period)
                .map(|d| Duration::from_nanos(d.nanoseconds.max(0) as u64));
            if let Some(port) = self.port_of_task(&task_id) {
                port.kill_task(framework_id, &task_id, grace);
            }
        }
    }

    /// ACKNOWLEDGE: passes the acknowledgement to the agent.
    pub fn acknowledge(&self, framework_id: &str, ack: scheduler::call::Acknowledge) {
        let port = self
            .port_of_agent(&ack.agent_id.value)
            .or_else(|| self.port_of_task(&ack.task_id.value));
        if let Some(port) = port {
            port.acknowledge(framework_id, &ack.task_id.value, &ack.uuid);
        }
    }

    /// RECONCILE: latest state of the named tasks, or of all the framework's tasks.
    pub fn reconcile(&self, framework_id: &str, reconcile: scheduler::call::Reconcile) {
        let state = self.state.lock().expect("master lock");
        let wanted: Vec<String> = if reconcile.tasks.is_empty() {
            state
                .tasks
                .iter()
                .filter(|(_, t)| t.framework_id == framework_id)
                .map(|(id, _)| id.clone())
                .collect()
        } else {
            reconcile
                .tasks
                .iter()
                .map(|t| t.task_id.value.clone())
                .collect()
        };
        for task_id in wanted {
            let mut status = match state.tasks.get(&task_id) {
                Some(task) if task.framework_id == framework_id => {
                    let mut status = task.latest.clone().unwrap_or_else(|| {
                        let mut s = mesos::TaskStatus {
                            task_id: mesos::TaskId {
                                value: task_id.clone(),
                            },
                            ..Default::default()
                        };
                        s.set_state(task.state);
                        s
                    });
                    status.agent_id = Some(mesos::AgentId {
                        value: task.agent_id.clone(),
                    });
                    status
                }
                _ => {
                    let mut s = mesos::TaskStatus {
                        task_id: mesos::TaskId {
                            value: task_id.clone(),
                        },
                        ..Default::default()
                    };
                    s.set_state(mesos::TaskState::TaskLost);
                    s
                }
            };
            // Reconciliation answers carry no uuid and are not acknowledged.
            status.uuid = None;
            status.timestamp = Some(task::now());
            status.set_reason(mesos::task_status::Reason::Reconciliation);
            status.set_source(mesos::task_status::Source::Master);
            Self::send(&state, framework_id, update_event(status));
        }
    }
}

fn rescind_offers_of(state: &mut State, framework_id: &str) -> usize {
    let ids: Vec<String> = state
        .offers
        .iter()
        .filter(|(_, o)| o.framework_id == framework_id)
        .map(|(id, _)| id.clone())
        .collect();
    for id in &ids {
        state.offers.remove(id);
        if let Some((_, tx)) = state
            .frameworks
            .get(framework_id)
            .and_then(|f| f.stream.as_ref())
        {
            let _ = tx.send(rescind_event(id));
        }
    }
    ids.len()
}

fn filter_duration(filters: Option<&mesos::Filters>) -> Duration {
    filters
        .and_then(|f| f.refuse_seconds)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(31_536_000.0)))
        .unwrap_or(DEFAULT_REFUSE)
}

fn rescind_event(offer_id: &str) -> scheduler::Event {
    scheduler::Event {
        r#type: Some(scheduler::event::Type::Rescind as i32),
        rescind: Some(scheduler::event::Rescind {
            offer_id: mesos::OfferId {
                value: offer_id.to_string(),
            },
        }),
        ..Default::default()
    }
}

fn update_event(status: mesos::TaskStatus) -> scheduler::Event {
    scheduler::Event {
        r#type: Some(scheduler::event::Type::Update as i32),
        update: Some(scheduler::event::Update { status }),
        ..Default::default()
    }
}

/// An ERROR event.
pub fn error_event(message: &str) -> scheduler::Event {
    scheduler::Event {
        r#type: Some(scheduler::event::Type::Error as i32),
        error: Some(scheduler::event::Error {
            message: message.to_string(),
        }),
        ..Default::default()
    }
}

impl EmbeddedMaster {
    /// An agent (re)registered: `registration.id` is set. Tasks it reports replace what the
    /// master knew of them; it becomes reachable again.
    pub fn agent_registered(&self, registration: AgentRegistration, port: Arc<dyn AgentPort>) {
        let agent_id = registration.id.clone().unwrap_or_default();
        let mut state = self.state.lock().expect("master lock");
        // The agent first, then its tasks (subscribers see AGENT_ADDED before TASK_ADDED).
        let tasks = registration.tasks.clone();
        let newly_reachable = state.agents.get(&agent_id).is_none_or(|a| !a.reachable);
        info!(agent_id = %agent_id, hostname = %registration.hostname, resources = %registration.resources, tasks = registration.tasks.len(), "agent registered");
        state.agents.insert(
            agent_id.clone(),
            AgentEntry {
                registration,
                port,
                reachable: true,
                registered_at: task::now(),
            },
        );
        if newly_reachable {
            self.operator.agent_added(&state, &agent_id);
        }
        for task in &tasks {
            let known = state
                .tasks
                .get(&task.task_id.value)
                .map(|t| (t.state, t.info.clone()));
            let mut info = match &known {
                // The master's record keeps what the agent's report lacks (discovery...).
                Some((_, info)) => info.clone(),
                None => task.clone(),
            };
            for status in &task.statuses {
                operator::record_status(&mut info, status);
            }
            state.tasks.insert(
                task.task_id.value.clone(),
                MasterTask {
                    framework_id: task.framework_id.value.clone(),
                    agent_id: agent_id.clone(),
                    resources: ResourceSet::from_proto(&task.resources),
                    state: task.state(),
                    latest: task.statuses.last().cloned(),
                    info,
                },
            );
            match known {
                // Unknown, or back from a terminal state (TASK_LOST while its agent was away):
                // subscribers get the whole task.
                None => self.operator.task_added(&state, &task.task_id.value),
                Some((before, _)) if task::is_terminal(before.as_str_name()) => {
                    self.operator.task_added(&state, &task.task_id.value)
                }
                Some((before, _)) if before != task.state() => {
                    let status = task.statuses.last().cloned().unwrap_or_else(|| {
                        let mut status = mesos::TaskStatus {
                            task_id: task.task_id.clone(),
                            agent_id: Some(mesos::AgentId {
                                value: agent_id.clone(),
                            }),
                            timestamp: Some(task::now()),
                            ..Default::default()
                        };
                        status.set_state(task.state());
                        status
                    });
                    self.operator.task_updated(&state, &status);
                }
                Some(_) => {}
            }
        }
        Self::allocate_agent(&mut state, &agent_id);
    }

    /// The non-terminal tasks the master believes run on an agent, by framework.
    pub fn tasks_on(&self, agent_id: &str) -> BTreeMap<String, Vec<String>> {
        let state = self.state.lock().expect("master lock");
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (task_id, task) in &state.tasks {
            if task.agent_id == agent_id && !task::is_terminal(task.state.as_str_name()) {
                out.entry(task.framework_id.clone())
                    .or_default()
                    .push(task_id.clone());
            }
        }
        out
    }

    /// The agent missed too many pings (or unregistered): its offers are rescinded and its
    /// tasks reported TASK_UNREACHABLE to partition-aware frameworks, TASK_LOST to others.
    pub fn agent_unreachable(&self, agent_id: &str, message: &str) {
        let mut state = self.state.lock().expect("master lock");
        let Some(agent) = state.agents.get_mut(agent_id) else {
            return;
        };
        agent.reachable = false;
        warn!(agent_id, reason = message, "agent unreachable");
        let stale: Vec<String> = state
            .offers
            .iter()
            .filter(|(_, o)| o.agent_id == agent_id)
            .map(|(id, _)| id.clone())
            .collect();
        for offer_id in stale {
            if let Some(offer) = state.offers.remove(&offer_id) {
                Self::send(&state, &offer.framework_id, rescind_event(&offer_id));
            }
        }
        let partition_aware: HashSet<String> = state
            .frameworks
            .iter()
            .filter(|(_, f)| {
                f.info
                    .capabilities
                    .iter()
                    .any(|c| c.r#type() == mesos::framework_info::capability::Type::PartitionAware)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut updates = Vec::new();
        for (task_id, task) in state.tasks.iter_mut() {
            if task.agent_id != agent_id || task::is_terminal(task.state.as_str_name()) {
                continue;
            }
            let partition_aware = partition_aware.contains(&task.framework_id);
            let new_state = if partition_aware {
                mesos::TaskState::TaskUnreachable
            } else {
                mesos::TaskState::TaskLost
            };
            task.state = new_state;
            let mut status = mesos::TaskStatus {
                task_id: mesos::TaskId {
                    value: task_id.clone(),
                },
                agent_id: Some(mesos::AgentId {
                    value: agent_id.to_string(),
                }),
                message: Some(message.to_string()),
                timestamp: Some(task::now()),
                ..Default::default()
            };
            status.set_state(new_state);
            status.set_reason(mesos::task_status::Reason::AgentRemoved);
            status.set_source(mesos::task_status::Source::Master);
            task.latest = Some(status.clone());
            operator::record_status(&mut task.info, &status);
            updates.push((task.framework_id.clone(), status));
        }
        for (framework_id, status) in updates {
            self.operator.task_updated(&state, &status);
            Self::send(&state, &framework_id, update_event(status));
        }
        self.operator.agent_removed(agent_id);
    }

    /// A status update from an agent.
    pub fn agent_status_update(
        &self,
        agent_id: &str,
        framework_id: &str,
        status: mesos::TaskStatus,
    ) {
        let mut state = self.state.lock().expect("master lock");
        let task_id = status.task_id.value.clone();
        if let Some(task) = state.tasks.get_mut(&task_id) {
            // Terminal updates release the task's resources at once (Mesos semantics).
            task.state = status.state();
            task.latest = Some(status.clone());
            task.agent_id = agent_id.to_string();
            operator::record_status(&mut task.info, &status);
            self.operator.task_updated(&state, &status);
        }
        let connected = state
            .frameworks
            .get(framework_id)
            .is_some_and(|f| f.stream.is_some());
        let has_uuid = status.uuid.is_some();
        if connected {
            Self::send(&state, framework_id, update_event(status.clone()));
        }
        let terminal = task::is_terminal(status.state().as_str_name());
        let framework_gone = !state.frameworks.contains_key(framework_id);
        let port = state.agents.get(agent_id).map(|a| a.port.clone());
        drop(state);
        // Updates for a framework that is gone for good are acknowledged by the master itself.
        if framework_gone
            && has_uuid
            && let Some(port) = port
        {
            port.acknowledge(
                framework_id,
                &task_id,
                status.uuid.as_deref().unwrap_or_default(),
            );
        }
        if terminal {
            self.allocate();
        }
    }
}
