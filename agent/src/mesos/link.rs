//! The agent's side of the Mesos agent protocol: registration and re-registration with the
//! leading master, ping/pong health, and the master's messages turned into agent calls.
//!
//! The link follows the leader the detector reports. With no agent id yet it sends
//! `RegisterSlaveMessage`, else `ReregisterSlaveMessage` with the tasks and frameworks the agent
//! still has; it repeats that with Mesos' backoff (a random delay up to 1 s, doubling up to
//! 1 min) until `SlaveRegisteredMessage`/`SlaveReregisteredMessage` arrives. Once registered it
//! answers pings and expects one within the master's total ping timeout (75 s by default): a
//! silent master means re-registration. Messages from a process other than the current leader
//! are dropped with a log line, like malformed ones; nothing a master sends can crash the agent.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use berth_proto::mesos::{internal, v1 as mesos};
use prost::Message as _;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::{
    libprocess::{Message, Process, Upid, transport::Transport},
    link::{AgentCore, MasterLink},
    mesos::detector::MasterLeader,
};

/// The Mesos protocol version berth speaks (masters refuse agents older than 1.0.0).
pub const MESOS_PROTOCOL_VERSION: &str = "1.12.0";
/// The agent's libprocess id.
pub const AGENT_PROCESS_ID: &str = "slave(1)";
/// Mesos' default total ping timeout (15 s × 5) when the master does not announce one.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(75);
/// Mesos' `--registration_backoff_factor` default.
pub const REGISTRATION_BACKOFF_FACTOR: Duration = Duration::from_secs(1);
/// Longest wait between registration attempts (Mesos' `REGISTER_RETRY_INTERVAL_MAX`).
pub const REGISTRATION_RETRY_MAX: Duration = Duration::from_secs(60);

/// What the agent advertises: what berth implements, and nothing else.
pub fn agent_capabilities() -> Vec<mesos::agent_info::Capability> {
    use mesos::agent_info::capability::Type;
    [
        Type::MultiRole,
        Type::HierarchicalRole,
        Type::ReservationRefinement,
    ]
    .into_iter()
    .map(|t| mesos::agent_info::Capability {
        r#type: Some(t as i32),
    })
    .collect()
}

#[derive(Debug)]
struct LinkState {
    master: Option<Upid>,
    registered: bool,
    agent_id: Option<String>,
    last_ping: Instant,
    ping_timeout: Duration,
    next_attempt: Instant,
    backoff: Duration,
}

/// Counters of the link (for `/metrics` and tests).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Messages dropped because they did not decode.
    pub malformed: std::sync::atomic::AtomicU64,
    /// Messages dropped because they came from a process that is not the leading master.
    pub foreign: std::sync::atomic::AtomicU64,
    /// Messages with a name the agent does not handle.
    pub unknown: std::sync::atomic::AtomicU64,
    /// Successful (re)registrations.
    pub registrations: std::sync::atomic::AtomicU64,
}

/// The Mesos wire link of the agent.
pub struct MesosLink {
    transport: Arc<Transport>,
    state: Mutex<LinkState>,
    agent: OnceLock<Arc<dyn AgentCore>>,
    wake: Notify,
    backoff_factor: Duration,
    /// Counters.
    pub stats: LinkStats,
}

impl MesosLink {
    /// A link sending from `transport.me()` (`slave(1)@ip:port`); the first registration
    /// attempt waits a random time up to `backoff_factor` (Mesos' default: 1 s).
    pub fn new(transport: Arc<Transport>, backoff_factor: Duration) -> Arc<Self> {
        Arc::new(Self {
            transport,
            state: Mutex::new(LinkState {
                master: None,
                registered: false,
                agent_id: None,
                last_ping: Instant::now(),
                ping_timeout: DEFAULT_PING_TIMEOUT,
                next_attempt: Instant::now(),
                backoff: backoff_factor,
            }),
            agent: OnceLock::new(),
            wake: Notify::new(),
            backoff_factor,
            stats: LinkStats::default(),
        })
    }

    /// The leading master now, if any.
    pub fn master(&self) -> Option<Upid> {
        self.state.lock().expect("link lock").master.clone()
    }

    /// Starts following `leader` for `agent`: registers, re-registers after leader changes and
    /// silent masters.
    pub fn start(
        self: &Arc<Self>,
        agent: Arc<dyn AgentCore>,
        mut leader: watch::Receiver<Option<MasterLeader>>,
    ) {
        let _ = self.agent.set(agent);
        let link = self.clone();
        tokio::spawn(async move {
            loop {
                let current = leader.borrow_and_update().clone();
                link.follow(current.as_ref());
                let wait = link.tick();
                tokio::select! {
                    changed = leader.changed() => {
                        if changed.is_err() {
                            warn!("master detector stopped: the agent keeps its last master");
                            link.run_without_detector().await;
                            return;
                        }
                    }
                    _ = link.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    async fn run_without_detector(self: Arc<Self>) {
        loop {
            let wait = self.tick();
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Adopts the detector's leader; a change means (re-)registration with the new one.
    fn follow(&self, leader: Option<&MasterLeader>) {
        let pid = leader.and_then(|l| match l.pid.parse::<Upid>() {
            Ok(pid) => Some(pid),
            Err(err) => {
                warn!(pid = %l.pid, error = %err, "leading master has an unusable pid");
                None
            }
        });
        let mut state = self.state.lock().expect("link lock");
        if state.master == pid {
            return;
        }
        match &pid {
            Some(pid) => info!(master = %pid, "new leading master: registering"),
            None => warn!("no leading master: waiting for one to be elected"),
        }
        if let Some(old) = &state.master {
            // Mesos agents drop their link to the old master.
            self.transport.disconnect(old.addr);
        }
        state.master = pid;
        state.registered = false;
        // Mesos: the first attempt after a new master is delayed randomly within the backoff
        // factor, so agents of a cluster do not all register at once.
        state.backoff = self.backoff_factor;
        state.next_attempt = Instant::now() + jitter(self.backoff_factor);
    }

    /// Does what is due (a registration attempt, the ping check) and says when to look again.
    fn tick(&self) -> Duration {
        let now = Instant::now();
        let mut state = self.state.lock().expect("link lock");
        let Some(master) = state.master.clone() else {
            return Duration::from_secs(3600);
        };
        if state.registered {
            let silent = now.duration_since(state.last_ping);
            if silent < state.ping_timeout {
                return state.ping_timeout - silent;
            }
            warn!(
                master = %master,
                timeout_secs = state.ping_timeout.as_secs_f64(),
                "no ping from the master within the timeout: re-registering"
            );
            state.registered = false;
            state.backoff = self.backoff_factor;
            state.next_attempt = now;
            self.transport.disconnect(master.addr);
        }
        if now < state.next_attempt {
            return state.next_attempt - now;
        }
        let Some(agent) = self.agent.get() else {
            return Duration::from_millis(100);
        };
        let agent_id = state.agent_id.clone();
        // Never retry faster than every 100 ms, even with a zero backoff factor.
        state.backoff = (state.backoff * 2)
            .max(Duration::from_millis(100))
            .min(REGISTRATION_RETRY_MAX);
        state.next_attempt = now + jitter(state.backoff);
        let wait = state.next_attempt - now;
        drop(state);
        let registration = agent.registration();
        let agent_id = registration.id.clone().or(agent_id);
        let slave = mesos::AgentInfo {
            hostname: registration.hostname.clone(),
            port: Some(i32::from(registration.port)),
            resources: registration.resources.to_proto(),
            attributes: registration
                .attributes
                .iter()
                .map(|(name, value)| crate::resources::text_attribute(name, value))
                .collect(),
            id: agent_id.clone().map(|value| mesos::AgentId { value }),
            ..Default::default()
        };
        match agent_id {
            None => {
                info!(master = %master, "sending RegisterSlaveMessage");
                self.transport.send(
                    &master,
                    &internal::RegisterSlaveMessage {
                        slave,
                        checkpointed_resources: registration.checkpointed_resources,
                        version: Some(MESOS_PROTOCOL_VERSION.into()),
                        agent_capabilities: agent_capabilities(),
                        resource_version_uuid: Some(resource_version()),
                    },
                );
            }
            Some(id) => {
                info!(master = %master, agent_id = %id, tasks = registration.tasks.len(), "sending ReregisterSlaveMessage");
                self.transport.send(
                    &master,
                    &internal::ReregisterSlaveMessage {
                        slave,
                        checkpointed_resources: registration.checkpointed_resources,
                        executor_infos: Vec::new(),
                        tasks: registration.tasks,
                        frameworks: registration.frameworks,
                        completed_frameworks: Vec::new(),
                        version: Some(MESOS_PROTOCOL_VERSION.into()),
                        agent_capabilities: agent_capabilities(),
                        resource_version_uuid: Some(resource_version()),
                    },
                );
            }
        }
        wait
    }

    fn on_registered(
        &self,
        from: &Upid,
        agent_id: String,
        connection: Option<&internal::MasterSlaveConnection>,
        again: bool,
    ) {
        {
            let mut state = self.state.lock().expect("link lock");
            if state.registered && state.agent_id.as_deref() == Some(&agent_id) {
                debug!(master = %from, "duplicate registration answer ignored");
                return;
            }
            state.registered = true;
            state.agent_id = Some(agent_id.clone());
            state.last_ping = Instant::now();
            state.ping_timeout = connection
                .and_then(|c| c.total_ping_timeout_seconds)
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(DEFAULT_PING_TIMEOUT);
            state.backoff = self.backoff_factor;
        }
        self.stats
            .registrations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(master = %from, agent_id = %agent_id, reregistered = again, "registered with the master");
        // Mesos 1.12 masters expect this before they offer the agent's resources.
        self.transport.send(
            from,
            &internal::UpdateSlaveMessage {
                slave_id: mesos::AgentId {
                    value: agent_id.clone(),
                },
                update_oversubscribed_resources: Some(true),
                oversubscribed_resources: Vec::new(),
                operations: Some(internal::update_slave_message::Operations::default()),
                resource_version_uuid: Some(resource_version()),
            },
        );
        if let Some(agent) = self.agent.get() {
            agent.registered(&agent_id);
        }
        self.wake.notify_one();
    }

    fn dispatch(&self, message: Message) -> Result<(), prost::DecodeError> {
        let name = message.name.strip_prefix("mesos.internal.").unwrap_or("");
        let master = self.master();
        let from_master = master.as_ref() == Some(&message.from)
            || (name == "PingSlaveMessage"
                && master.as_ref().is_some_and(|m| m.addr == message.from.addr));
        if !from_master {
            self.stats
                .foreign
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(
                from = %message.from,
                message = %message.name,
                master = ?master.map(|m| m.to_string()),
                "message from a process that is not the leading master dropped"
            );
            return Ok(());
        }
        let Some(agent) = self.agent.get() else {
            return Ok(());
        };
        let body = &message.body[..];
        match name {
            "SlaveRegisteredMessage" => {
                let m = internal::SlaveRegisteredMessage::decode(body)?;
                self.on_registered(
                    &message.from,
                    m.slave_id.value,
                    m.connection.as_ref(),
                    false,
                );
            }
            "SlaveReregisteredMessage" => {
                let m = internal::SlaveReregisteredMessage::decode(body)?;
                self.on_registered(&message.from, m.slave_id.value, m.connection.as_ref(), true);
                for reconciliation in m.reconciliations {
                    agent.reconcile(
                        &reconciliation.framework_id.value,
                        reconciliation
                            .statuses
                            .into_iter()
                            .map(|s| s.task_id.value)
                            .collect(),
                    );
                }
            }
            "PingSlaveMessage" => {
                let m = internal::PingSlaveMessage::decode(body)?;
                let reregister = {
                    let mut state = self.state.lock().expect("link lock");
                    state.last_ping = Instant::now();
                    if !m.connected && state.registered {
                        warn!("the master considers the agent disconnected: re-registering");
                        state.registered = false;
                        state.next_attempt = Instant::now();
                        true
                    } else {
                        false
                    }
                };
                self.transport
                    .send(&message.from, &internal::PongSlaveMessage {});
                if reregister {
                    self.wake.notify_one();
                }
            }
            "RunTaskMessage" => {
                let m = internal::RunTaskMessage::decode(body)?;
                agent.run_task(&m.framework, m.task);
            }
            "RunTaskGroupMessage" => {
                let m = internal::RunTaskGroupMessage::decode(body)?;
                // berth runs each task of a group in its own container (no shared pod
                // namespaces yet); each gets its own status updates as Mesos sends them.
                for task in m.task_group.tasks {
                    agent.run_task(&m.framework, task);
                }
            }
            "KillTaskMessage" => {
                let m = internal::KillTaskMessage::decode(body)?;
                let grace = m
                    .kill_policy
                    .and_then(|k| k.grace_period)
                    .map(|d| Duration::from_nanos(d.nanoseconds.max(0) as u64));
                agent.kill_task(&m.framework_id.value, &m.task_id.value, grace);
            }
            "StatusUpdateAcknowledgementMessage" => {
                let m = internal::StatusUpdateAcknowledgementMessage::decode(body)?;
                agent.acknowledge(&m.framework_id.value, &m.task_id.value, &m.uuid);
            }
            "ShutdownFrameworkMessage" => {
                let m = internal::ShutdownFrameworkMessage::decode(body)?;
                info!(framework_id = %m.framework_id.value, "master shuts the framework down");
                agent.shutdown_framework(&m.framework_id.value);
            }
            "ShutdownExecutorMessage" => {
                let m = internal::ShutdownExecutorMessage::decode(body)?;
                // Every berth task is its own (command) executor: executor id = task id.
                if let (Some(executor), Some(framework)) = (m.executor_id, m.framework_id) {
                    agent.kill_task(&framework.value, &executor.value, None);
                }
            }
            "UpdateFrameworkMessage" => {
                let m = internal::UpdateFrameworkMessage::decode(body)?;
                if let Some(info) = m.framework_info {
                    agent.update_framework(info);
                }
            }
            "CheckpointResourcesMessage" => {
                let m = internal::CheckpointResourcesMessage::decode(body)?;
                agent.checkpoint_resources(m.resources);
            }
            "ApplyOperationMessage" => {
                let m = internal::ApplyOperationMessage::decode(body)?;
                self.refuse_operation(&message.from, m);
            }
            "ShutdownMessage" => {
                let m = internal::ShutdownMessage::decode(body)?;
                let why = m.message.unwrap_or_default();
                warn!(master = %message.from, reason = %why, "the master asked the agent to shut down");
                agent.shutdown(&why);
            }
            _ => {
                self.stats
                    .unknown
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(from = %message.from, message = %message.name, "unknown message dropped");
            }
        }
        Ok(())
    }

    /// berth does not advertise RESOURCE_PROVIDER or AGENT_OPERATION_FEEDBACK, so a master
    /// should not send operations; if one does, it gets a terminal OPERATION_ERROR rather than
    /// silence, so its bookkeeping does not wait forever.
    fn refuse_operation(&self, master: &Upid, m: internal::ApplyOperationMessage) {
        let agent_id = self
            .state
            .lock()
            .expect("link lock")
            .agent_id
            .clone()
            .map(|value| mesos::AgentId { value });
        let mut status = mesos::OperationStatus {
            operation_id: m.operation_info.id.clone(),
            message: Some(
                "berth applies reservations and volumes only through CheckpointResourcesMessage"
                    .into(),
            ),
            uuid: Some(resource_version()),
            agent_id: agent_id.clone(),
            ..Default::default()
        };
        status.set_state(mesos::OperationState::OperationError);
        warn!(operation = ?m.operation_info.id, "operation refused: berth has no resource providers");
        self.transport.send(
            master,
            &internal::UpdateOperationStatusMessage {
                framework_id: m.framework_id,
                slave_id: agent_id,
                status: status.clone(),
                latest_status: Some(status),
                operation_uuid: Some(m.operation_uuid),
            },
        );
    }
}

impl Process for MesosLink {
    fn receive(&self, message: Message) {
        let name = message.name.clone();
        let from = message.from.clone();
        if let Err(err) = self.dispatch(message) {
            self.stats
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(from = %from, message = %name, error = %err, "malformed message dropped");
        }
    }
}

impl MasterLink for MesosLink {
    fn status_update(
        &self,
        framework_id: &str,
        status: mesos::TaskStatus,
        latest: mesos::TaskState,
    ) {
        let (master, agent_id) = {
            let state = self.state.lock().expect("link lock");
            if !state.registered {
                return;
            }
            let Some(master) = state.master.clone() else {
                return;
            };
            (master, state.agent_id.clone().unwrap_or_default())
        };
        let task_id = status.task_id.value.clone();
        let update = internal::StatusUpdate {
            framework_id: mesos::FrameworkId {
                value: framework_id.to_string(),
            },
            executor_id: Some(mesos::ExecutorId { value: task_id }),
            slave_id: Some(mesos::AgentId { value: agent_id }),
            timestamp: status.timestamp.unwrap_or_else(crate::task::now),
            uuid: status.uuid.clone(),
            latest_state: Some(latest as i32),
            status,
        };
        self.transport.send(
            &master,
            &internal::StatusUpdateMessage {
                update,
                pid: Some(self.transport.me().to_string()),
            },
        );
    }

    fn is_registered(&self) -> bool {
        self.state.lock().expect("link lock").registered
    }
}

/// A random duration in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    Duration::from_nanos(random % (max.as_nanos() as u64).max(1))
}

fn resource_version() -> mesos::Uuid {
    mesos::Uuid {
        value: uuid::Uuid::new_v4().as_bytes().to_vec(),
    }
}

/// The IP to advertise in the agent's pid: `--advertise-ip`, else the listen address when it
/// is a specific one, else the local address the kernel would use to reach `toward` (a UDP
/// socket's `connect` picks it without sending anything), else loopback.
pub fn advertise_ip(
    listen: SocketAddr,
    advertise: Option<std::net::IpAddr>,
    toward: Option<SocketAddr>,
) -> std::net::IpAddr {
    if let Some(ip) = advertise {
        return ip;
    }
    if !listen.ip().is_unspecified() {
        return listen.ip();
    }
    if let Some(target) = toward
        && let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0")
        && socket.connect(target).is_ok()
        && let Ok(local) = socket.local_addr()
    {
        return local.ip();
    }
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        link::{AgentPort, AgentRegistration},
        resources::ResourceSet,
    };

    /// A recording double of the agent.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl AgentPort for Recorder {
        fn run_task(&self, framework: &mesos::FrameworkInfo, task: mesos::TaskInfo) {
            self.record(format!("run {} {}", framework.name, task.task_id.value));
        }
        fn kill_task(&self, framework_id: &str, task_id: &str, grace: Option<Duration>) {
            self.record(format!("kill {framework_id} {task_id} {grace:?}"));
        }
        fn acknowledge(&self, framework_id: &str, task_id: &str, uuid: &[u8]) {
            self.record(format!("ack {framework_id} {task_id} {uuid:?}"));
        }
        fn shutdown_framework(&self, framework_id: &str) {
            self.record(format!("shutdown-framework {framework_id}"));
        }
    }

    impl AgentCore for Recorder {
        fn registration(&self) -> AgentRegistration {
            AgentRegistration {
                id: None,
                hostname: "h".into(),
                port: 5051,
                resources: ResourceSet::default(),
                attributes: Vec::new(),
                tasks: Vec::new(),
                frameworks: Vec::new(),
                checkpointed_resources: Vec::new(),
            }
        }
        fn registered(&self, agent_id: &str) {
            self.record(format!("registered {agent_id}"));
        }
        fn reconcile(&self, framework_id: &str, task_ids: Vec<String>) {
            self.record(format!("reconcile {framework_id} {task_ids:?}"));
        }
        fn update_framework(&self, info: mesos::FrameworkInfo) {
            self.record(format!("update-framework {}", info.name));
        }
        fn checkpoint_resources(&self, resources: Vec<mesos::Resource>) {
            self.record(format!("checkpoint {}", resources.len()));
        }
        fn shutdown(&self, message: &str) {
            self.record(format!("shutdown {message}"));
        }
    }

    const MASTER: &str = "master@127.0.0.1:9";

    fn linked() -> (Arc<MesosLink>, Arc<Recorder>) {
        let transport = Transport::new("slave(1)@127.0.0.1:8".parse().unwrap());
        let link = MesosLink::new(transport, Duration::ZERO);
        let recorder = Arc::new(Recorder::default());
        let _ = link.agent.set(recorder.clone());
        link.follow(Some(&MasterLeader {
            id: "m".into(),
            pid: MASTER.into(),
            ip: "127.0.0.1".parse().unwrap(),
            port: 9,
            hostname: None,
            version: None,
            znode: None,
        }));
        (link, recorder)
    }

    fn deliver<M: prost::Message + prost_reflect::ReflectMessage>(
        link: &MesosLink,
        from: &str,
        m: &M,
    ) {
        link.receive(Message {
            from: from.parse().unwrap(),
            name: m.descriptor().full_name().to_string(),
            body: m.encode_to_vec().into(),
        });
    }

    fn framework() -> mesos::FrameworkInfo {
        mesos::FrameworkInfo {
            user: "u".into(),
            name: "fw".into(),
            ..Default::default()
        }
    }

    fn task_info(id: &str) -> mesos::TaskInfo {
        mesos::TaskInfo {
            name: id.into(),
            task_id: mesos::TaskId { value: id.into() },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn master_messages_become_agent_calls() {
        let (link, agent) = linked();
        assert!(!link.is_registered());
        deliver(
            &link,
            MASTER,
            &internal::SlaveRegisteredMessage {
                slave_id: mesos::AgentId {
                    value: "A-S1".into(),
                },
                connection: Some(internal::MasterSlaveConnection {
                    total_ping_timeout_seconds: Some(7.5),
                }),
            },
        );
        assert!(link.is_registered());
        assert_eq!(
            link.state.lock().unwrap().ping_timeout,
            Duration::from_secs_f64(7.5)
        );
        deliver(
            &link,
            MASTER,
            &internal::RunTaskMessage {
                framework_id: None,
                framework: framework(),
                task: task_info("t1"),
                resource_version_uuids: Vec::new(),
                pid: None,
                launch_executor: None,
            },
        );
        deliver(
            &link,
            MASTER,
            &internal::RunTaskGroupMessage {
                framework: framework(),
                executor: mesos::ExecutorInfo::default(),
                task_group: mesos::TaskGroupInfo {
                    tasks: vec![task_info("g1"), task_info("g2")],
                },
                resource_version_uuids: Vec::new(),
                launch_executor: None,
            },
        );
        deliver(
            &link,
            MASTER,
            &internal::KillTaskMessage {
                framework_id: mesos::FrameworkId { value: "F".into() },
                task_id: mesos::TaskId { value: "t1".into() },
                kill_policy: Some(mesos::KillPolicy {
                    grace_period: Some(mesos::DurationInfo {
                        nanoseconds: 2_000_000_000,
                    }),
                }),
            },
        );
        deliver(
            &link,
            MASTER,
            &internal::StatusUpdateAcknowledgementMessage {
                slave_id: mesos::AgentId {
                    value: "A-S1".into(),
                },
                framework_id: mesos::FrameworkId { value: "F".into() },
                task_id: mesos::TaskId { value: "t1".into() },
                uuid: vec![7],
            },
        );
        deliver(
            &link,
            MASTER,
            &internal::ShutdownExecutorMessage {
                executor_id: Some(mesos::ExecutorId { value: "g1".into() }),
                framework_id: Some(mesos::FrameworkId { value: "F".into() }),
            },
        );
        deliver(
            &link,
            MASTER,
            &internal::ShutdownFrameworkMessage {
                framework_id: mesos::FrameworkId { value: "F".into() },
            },
        );
        deliver(
            &link,
            MASTER,
            &internal::CheckpointResourcesMessage {
                resources: Vec::new(),
            },
        );
        deliver(
            &link,
            MASTER,
            &internal::ShutdownMessage {
                message: Some("bye".into()),
            },
        );
        assert_eq!(
            agent.calls(),
            vec![
                "registered A-S1",
                "run fw t1",
                "run fw g1",
                "run fw g2",
                "kill F t1 Some(2s)",
                "ack F t1 [7]",
                "kill F g1 None",
                "shutdown-framework F",
                "checkpoint 0",
                "shutdown bye",
            ]
        );
    }

    /// Reads one libprocess request from `stream`: (path, headers, body).
    async fn read_request(
        stream: &mut tokio::net::TcpStream,
        buffer: &mut Vec<u8>,
    ) -> (String, Vec<(String, String)>, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
                let mut lines = head.split("\r\n");
                let path = lines.next().unwrap().split(' ').nth(1).unwrap().to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(k, _)| k == "Content-Length")
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap();
                while buffer.len() < end + 4 + length {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "connection closed mid-request");
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let body = buffer[end + 4..end + 4 + length].to_vec();
                buffer.drain(..end + 4 + length);
                return (path, headers, body);
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    fn decode_checked<M: prost_reflect::ReflectMessage + Default>(body: &[u8]) -> M {
        berth_proto::codec::decode(body, berth_proto::codec::ContentType::Protobuf)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What the agent puts on the wire carries what a Mesos 1.12 master needs: required
    /// fields, a SemVer version >= 1.0.0, a hostname, the agent's pid in status updates, a
    /// status uuid (the traps in PROTOCOL-mesos.md).
    #[tokio::test]
    async fn what_the_agent_sends_is_what_a_mesos_master_accepts() {
        let master = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let master_pid = format!("master@{}", master.local_addr().unwrap());
        let transport = Transport::new("slave(1)@127.0.0.1:5051".parse().unwrap());
        let link = MesosLink::new(transport, Duration::ZERO);
        let recorder = Arc::new(Recorder::default());
        let _ = link.agent.set(recorder.clone());
        let addr = master.local_addr().unwrap();
        link.follow(Some(&MasterLeader {
            id: "m".into(),
            pid: master_pid.clone(),
            ip: addr.ip(),
            port: addr.port(),
            hostname: None,
            version: None,
            znode: None,
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
        link.tick();
        let (mut stream, _) = master.accept().await.unwrap();
        let mut buffer = Vec::new();
        let (path, headers, body) = read_request(&mut stream, &mut buffer).await;
        assert_eq!(path, "/master/mesos.internal.RegisterSlaveMessage");
        assert!(headers.contains(&("Libprocess-From".into(), "slave(1)@127.0.0.1:5051".into())));
        assert!(headers.contains(&(
            "User-Agent".into(),
            "libprocess/slave(1)@127.0.0.1:5051".into()
        )));
        let register: internal::RegisterSlaveMessage = decode_checked(&body);
        assert_eq!(register.version.as_deref(), Some("1.12.0"));
        assert!(!register.slave.hostname.is_empty());
        assert_eq!(register.slave.port, Some(5051));
        assert!(
            register.slave.id.is_none(),
            "a first registration has no id"
        );
        assert!(register.resource_version_uuid.is_some());
        assert!(!register.agent_capabilities.is_empty());
        // Registered: the agent sends UpdateSlaveMessage (Mesos 1.12 waits for it before offers).
        deliver(
            &link,
            &master_pid,
            &internal::SlaveRegisteredMessage {
                slave_id: mesos::AgentId {
                    value: "A-S0".into(),
                },
                connection: None,
            },
        );
        let (path, _, body) = read_request(&mut stream, &mut buffer).await;
        assert_eq!(path, "/master/mesos.internal.UpdateSlaveMessage");
        let update: internal::UpdateSlaveMessage = decode_checked(&body);
        assert_eq!(update.slave_id.value, "A-S0");
        assert_eq!(update.update_oversubscribed_resources, Some(true));
        // A status update names the agent's pid and carries the status uuid.
        let mut status = mesos::TaskStatus {
            task_id: mesos::TaskId { value: "t".into() },
            uuid: Some(vec![1, 2, 3]),
            timestamp: Some(1.0),
            ..Default::default()
        };
        status.set_state(mesos::TaskState::TaskRunning);
        link.status_update("F", status, mesos::TaskState::TaskRunning);
        let (path, _, body) = read_request(&mut stream, &mut buffer).await;
        assert_eq!(path, "/master/mesos.internal.StatusUpdateMessage");
        let message: internal::StatusUpdateMessage = decode_checked(&body);
        assert_eq!(message.pid.as_deref(), Some("slave(1)@127.0.0.1:5051"));
        assert_eq!(message.update.framework_id.value, "F");
        assert_eq!(message.update.slave_id.as_ref().unwrap().value, "A-S0");
        assert_eq!(
            message.update.status.uuid.as_deref(),
            Some(&[1u8, 2, 3][..])
        );
        assert_eq!(message.update.uuid.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(
            message.update.latest_state,
            Some(mesos::TaskState::TaskRunning as i32)
        );
        // A ping is answered to the observer that sent it.
        deliver(
            &link,
            &format!("slave-observer(1)@{addr}"),
            &internal::PingSlaveMessage { connected: true },
        );
        let (path, _, _) = read_request(&mut stream, &mut buffer).await;
        assert_eq!(path, "/slave-observer(1)/mesos.internal.PongSlaveMessage");
    }

    #[tokio::test]
    async fn foreign_malformed_and_unknown_messages_are_dropped() {
        let (link, agent) = linked();
        let run = internal::RunTaskMessage {
            framework_id: None,
            framework: framework(),
            task: task_info("x"),
            resource_version_uuids: Vec::new(),
            pid: None,
            launch_executor: None,
        };
        deliver(&link, "master@127.0.0.1:10", &run);
        deliver(&link, "impostor@127.0.0.1:9", &run);
        link.receive(Message {
            from: MASTER.parse().unwrap(),
            name: "mesos.internal.RunTaskMessage".into(),
            body: bytes::Bytes::from_static(b"\x12\xff\xff"),
        });
        link.receive(Message {
            from: MASTER.parse().unwrap(),
            name: "mesos.internal.Nonsense".into(),
            body: bytes::Bytes::new(),
        });
        assert!(agent.calls().is_empty(), "{:?}", agent.calls());
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(link.stats.foreign.load(Relaxed), 2);
        assert_eq!(link.stats.malformed.load(Relaxed), 1);
        assert_eq!(link.stats.unknown.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_ping_saying_disconnected_forces_reregistration() {
        let (link, _agent) = linked();
        deliver(
            &link,
            MASTER,
            &internal::SlaveRegisteredMessage {
                slave_id: mesos::AgentId { value: "A".into() },
                connection: None,
            },
        );
        assert!(link.is_registered());
        // Pings come from the master's slave-observer process on the master's address.
        deliver(
            &link,
            "slave-observer(1)@127.0.0.1:9",
            &internal::PingSlaveMessage { connected: true },
        );
        assert!(link.is_registered());
        deliver(
            &link,
            "slave-observer(1)@127.0.0.1:9",
            &internal::PingSlaveMessage { connected: false },
        );
        assert!(!link.is_registered());
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(1)) <= Duration::from_secs(1));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn advertise_ip_prefers_flag_then_listen_then_route() {
        let any: SocketAddr = "0.0.0.0:5051".parse().unwrap();
        let flag: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(advertise_ip(any, Some(flag), None), flag);
        let specific: SocketAddr = "127.0.0.2:5051".parse().unwrap();
        assert_eq!(advertise_ip(specific, None, None).to_string(), "127.0.0.2");
        let toward = Some("127.0.0.1:5050".parse().unwrap());
        assert!(advertise_ip(any, None, toward).is_loopback());
    }

    #[test]
    fn capabilities_are_the_implemented_ones() {
        use mesos::agent_info::capability::Type;
        let types: Vec<Type> = agent_capabilities().iter().map(|c| c.r#type()).collect();
        assert!(types.contains(&Type::MultiRole));
        assert!(!types.contains(&Type::TaskResourceLimits));
        assert!(!types.contains(&Type::AgentDraining));
        assert!(!types.contains(&Type::ResourceProvider));
    }
}
