//! The embedded master's side of the Mesos agent wire protocol.
//!
//! [`MasterProcess`] is the libprocess process `master`: it takes `RegisterSlaveMessage`,
//! `ReregisterSlaveMessage`, `StatusUpdateMessage`, `UpdateSlaveMessage`,
//! `UnregisterSlaveMessage` and (as the agents' `slave-observer(N)`) `PongSlaveMessage`, and
//! talks back to each agent through an [`AgentHandle`], which turns [`AgentPort`] calls into
//! `RunTaskMessage`, `KillTaskMessage`, `StatusUpdateAcknowledgementMessage` and
//! `ShutdownFrameworkMessage`. Agents are pinged every `ping_interval` and marked unreachable
//! after `max_missed_pings` pings without a pong, as Mesos' `--agent_ping_timeout` and
//! `--max_agent_ping_timeouts` do. This is the same protocol a real Mesos master speaks, so the
//! agent cannot tell the two apart.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use berth_proto::mesos::{internal, v1 as mesos};
use prost::Message as _;
use tracing::{debug, info, warn};

use super::EmbeddedMaster;
use crate::{
    libprocess::{Message, Process, Processes, Upid, transport::Transport},
    link::{AgentPort, AgentRegistration},
    resources::ResourceSet,
};

/// Ping settings (Mesos master flags `--agent_ping_timeout`, `--max_agent_ping_timeouts`).
#[derive(Debug, Clone, Copy)]
pub struct PingSettings {
    /// Interval between pings, and how long a pong may take.
    pub interval: Duration,
    /// Pings without a pong before the agent is unreachable.
    pub max_missed: u32,
}

impl Default for PingSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            max_missed: 5,
        }
    }
}

struct WireAgent {
    pid: Upid,
    hostname: String,
    observer: Upid,
    outstanding_ping: bool,
    missed: u32,
    reachable: bool,
}

/// The master as a libprocess process.
pub struct MasterProcess {
    master: Arc<EmbeddedMaster>,
    transport: Arc<Transport>,
    processes: Processes,
    agents: Mutex<BTreeMap<String, WireAgent>>,
    next_agent: AtomicU64,
    ping: PingSettings,
    leading: AtomicBool,
    self_ref: std::sync::Weak<MasterProcess>,
}

impl MasterProcess {
    /// The `master` process of `transport.me()`, serving under `processes`; leading at once
    /// unless a contender says otherwise ([`Self::set_leading`]).
    pub fn start(
        master: Arc<EmbeddedMaster>,
        transport: Arc<Transport>,
        processes: Processes,
        ping: PingSettings,
    ) -> Arc<Self> {
        let process = Arc::new_cyclic(|weak| Self {
            master,
            transport: transport.clone(),
            processes: processes.clone(),
            agents: Mutex::new(BTreeMap::new()),
            next_agent: AtomicU64::new(0),
            ping,
            leading: AtomicBool::new(true),
            self_ref: weak.clone(),
        });
        processes.add(&transport.me().id, process.clone());
        let pinger = process.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ping.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                pinger.ping_round();
            }
        });
        process
    }

    /// Whether this master leads (a non-leading master drops agent messages, as Mesos does).
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    fn ping_round(&self) {
        if !self.leading.load(Ordering::Acquire) {
            return;
        }
        let mut lost = Vec::new();
        {
            let mut agents = self.agents.lock().expect("agents lock");
            for (agent_id, agent) in agents.iter_mut().filter(|(_, a)| a.reachable) {
                if agent.outstanding_ping {
                    agent.missed += 1;
                    debug!(agent_id, missed = agent.missed, "agent missed a ping");
                }
                if agent.missed >= self.ping.max_missed {
                    agent.reachable = false;
                    lost.push(agent_id.clone());
                    continue;
                }
                agent.outstanding_ping = true;
                let ping = internal::PingSlaveMessage { connected: true };
                self.transport.send_as(
                    &agent.observer,
                    &agent.pid,
                    "mesos.internal.PingSlaveMessage",
                    &ping.encode_to_vec(),
                );
            }
        }
        for agent_id in lost {
            self.master.agent_unreachable(
                &agent_id,
                &format!(
                    "agent missed {} pings ({} s apart)",
                    self.ping.max_missed,
                    self.ping.interval.as_secs_f64()
                ),
            );
        }
    }

    fn connection(&self) -> internal::MasterSlaveConnection {
        internal::MasterSlaveConnection {
            total_ping_timeout_seconds: Some(
                self.ping.interval.as_secs_f64() * f64::from(self.ping.max_missed),
            ),
        }
    }

    fn agent_handle(&self, agent_id: &str, pid: &Upid) -> Arc<dyn AgentPort> {
        Arc::new(AgentHandle {
            transport: self.transport.clone(),
            agent: pid.clone(),
            agent_id: agent_id.to_string(),
        })
    }

    /// Remembers the agent's pid and starts observing it.
    fn observe(&self, agent_id: &str, pid: &Upid, hostname: &str) {
        let mut agents = self.agents.lock().expect("agents lock");
        let observer = match agents.get(agent_id) {
            Some(existing) => existing.observer.clone(),
            None => {
                let n = self.next_agent.load(Ordering::Relaxed);
                let observer = Upid::new(
                    format!("slave-observer({})", n + 1),
                    self.transport.me().addr,
                );
                if let Some(me) = self.self_ref.upgrade() {
                    self.processes.add(&observer.id, me);
                }
                observer
            }
        };
        agents.insert(
            agent_id.to_string(),
            WireAgent {
                pid: pid.clone(),
                hostname: hostname.to_string(),
                observer,
                outstanding_ping: false,
                missed: 0,
                reachable: true,
            },
        );
    }

    fn register(&self, from: &Upid, m: internal::RegisterSlaveMessage) {
        if let Some(problem) = version_problem(m.version.as_deref()) {
            warn!(agent = %from, problem, "refusing agent registration");
            return;
        }
        // An agent that retries its registration gets its id again.
        let known = {
            let agents = self.agents.lock().expect("agents lock");
            agents
                .iter()
                .find(|(_, a)| a.pid == *from)
                .map(|(id, _)| id.clone())
        };
        let agent_id = match known {
            Some(id) => id,
            None => {
                let n = self.next_agent.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}-S{n}", self.master.id());
                self.observe(&id, from, &m.slave.hostname);
                self.master.agent_registered(
                    registration(&id, &m.slave, Vec::new(), m.checkpointed_resources),
                    self.agent_handle(&id, from),
                );
                id
            }
        };
        info!(agent = %from, agent_id = %agent_id, "agent registered");
        self.transport.send(
            from,
            &internal::SlaveRegisteredMessage {
                slave_id: mesos::AgentId { value: agent_id },
                connection: Some(self.connection()),
            },
        );
    }

    fn reregister(&self, from: &Upid, m: internal::ReregisterSlaveMessage) {
        if let Some(problem) = version_problem(m.version.as_deref()) {
            warn!(agent = %from, problem, "refusing agent re-registration");
            return;
        }
        let Some(agent_id) = m.slave.id.as_ref().map(|id| id.value.clone()) else {
            warn!(agent = %from, "re-registration without an agent id dropped");
            return;
        };
        let previous = {
            let agents = self.agents.lock().expect("agents lock");
            agents
                .get(&agent_id)
                .map(|a| (a.pid.clone(), a.hostname.clone()))
        };
        if let Some((pid, hostname)) = previous
            && (pid.addr.ip() != from.addr.ip() || hostname != m.slave.hostname)
        {
            // Mesos: an agent id may not move to another host.
            let message = format!(
                "agent {agent_id} re-registered from {from} ({}) but is known at {pid} ({hostname})",
                m.slave.hostname
            );
            warn!(agent = %from, "{message}");
            self.transport.send(
                from,
                &internal::ShutdownMessage {
                    message: Some(message),
                },
            );
            return;
        }
        // Tasks the master believes run there but the agent does not report are reconciled
        // (the agent answers for those it does not know).
        let reported: std::collections::HashSet<String> =
            m.tasks.iter().map(|t| t.task_id.value.clone()).collect();
        let reconciliations = self
            .master
            .tasks_on(&agent_id)
            .into_iter()
            .filter_map(|(framework_id, task_ids)| {
                let statuses: Vec<mesos::TaskStatus> = task_ids
                    .into_iter()
                    .filter(|id| !reported.contains(id))
                    .map(|id| {
                        let mut status = mesos::TaskStatus {
                            task_id: mesos::TaskId { value: id },
                            ..Default::default()
                        };
                        status.set_state(mesos::TaskState::TaskRunning);
                        status
                    })
                    .collect();
                (!statuses.is_empty()).then_some(internal::ReconcileTasksMessage {
                    framework_id: mesos::FrameworkId {
                        value: framework_id,
                    },
                    statuses,
                    framework: None,
                })
            })
            .collect();
        self.observe(&agent_id, from, &m.slave.hostname);
        self.master.agent_registered(
            registration(&agent_id, &m.slave, m.tasks, m.checkpointed_resources),
            self.agent_handle(&agent_id, from),
        );
        info!(agent = %from, agent_id = %agent_id, "agent re-registered");
        self.transport.send(
            from,
            &internal::SlaveReregisteredMessage {
                slave_id: mesos::AgentId { value: agent_id },
                reconciliations,
                connection: Some(self.connection()),
            },
        );
    }

    fn agent_of(&self, from: &Upid) -> Option<String> {
        let agents = self.agents.lock().expect("agents lock");
        agents
            .iter()
            .find(|(_, a)| a.pid == *from)
            .map(|(id, _)| id.clone())
    }

    fn dispatch(&self, message: &Message) -> Result<(), prost::DecodeError> {
        let body = &message.body[..];
        let from = &message.from;
        match message.name.as_str() {
            "mesos.internal.RegisterSlaveMessage" => {
                self.register(from, internal::RegisterSlaveMessage::decode(body)?)
            }
            "mesos.internal.ReregisterSlaveMessage" => {
                self.reregister(from, internal::ReregisterSlaveMessage::decode(body)?)
            }
            "mesos.internal.StatusUpdateMessage" => {
                let m = internal::StatusUpdateMessage::decode(body)?;
                let update = m.update;
                let agent_id = update.slave_id.as_ref().map(|a| a.value.clone());
                match (agent_id, self.agent_of(from)) {
                    (Some(claimed), Some(known)) if claimed == known => {
                        self.master.agent_status_update(
                            &known,
                            &update.framework_id.value,
                            update.status,
                        );
                    }
                    (claimed, known) => {
                        warn!(from = %from, ?claimed, ?known, "status update from an unknown agent dropped");
                    }
                }
            }
            "mesos.internal.PongSlaveMessage" => {
                internal::PongSlaveMessage::decode(body)?;
                let mut agents = self.agents.lock().expect("agents lock");
                if let Some(agent) = agents.values_mut().find(|a| a.pid == *from) {
                    agent.outstanding_ping = false;
                    agent.missed = 0;
                }
            }
            "mesos.internal.UpdateSlaveMessage" => {
                let m = internal::UpdateSlaveMessage::decode(body)?;
                debug!(agent_id = %m.slave_id.value, "agent update (no oversubscription in berth)");
            }
            "mesos.internal.UnregisterSlaveMessage" => {
                let m = internal::UnregisterSlaveMessage::decode(body)?;
                if self.agent_of(from).as_deref() == Some(m.slave_id.value.as_str()) {
                    self.agents
                        .lock()
                        .expect("agents lock")
                        .remove(&m.slave_id.value);
                    self.master
                        .agent_unreachable(&m.slave_id.value, "the agent unregistered");
                }
            }
            "mesos.internal.UpdateOperationStatusMessage"
            | "mesos.internal.ExitedExecutorMessage" => {
                debug!(from = %from, message = %message.name, "agent notice");
            }
            other => warn!(from = %from, message = other, "unknown message dropped"),
        }
        Ok(())
    }
}

impl Process for MasterProcess {
    fn receive(&self, message: Message) {
        if !self.leading.load(Ordering::Acquire) {
            debug!(from = %message.from, message = %message.name, "not leading: message dropped");
            return;
        }
        if let Err(err) = self.dispatch(&message) {
            warn!(from = %message.from, message = %message.name, error = %err, "malformed message dropped");
        }
    }
}

/// Mesos refuses agents without a SemVer version of at least 1.0.0.
fn version_problem(version: Option<&str>) -> Option<String> {
    let Some(version) = version else {
        return Some("the agent sent no version".into());
    };
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok());
    match major {
        Some(major) if major >= 1 && version.split('.').count() >= 3 => None,
        Some(_) => Some(format!("agent version {version} is older than 1.0.0")),
        None => Some(format!("agent version '{version}' is not SemVer")),
    }
}

fn registration(
    agent_id: &str,
    info: &mesos::AgentInfo,
    tasks: Vec<mesos::Task>,
    checkpointed_resources: Vec<mesos::Resource>,
) -> AgentRegistration {
    AgentRegistration {
        id: Some(agent_id.to_string()),
        hostname: info.hostname.clone(),
        port: info
            .port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(5051),
        resources: ResourceSet::from_proto(&info.resources),
        attributes: info
            .attributes
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.text.as_ref().map(|t| t.value.clone()).unwrap_or_default(),
                )
            })
            .collect(),
        tasks,
        frameworks: Vec::new(),
        checkpointed_resources,
    }
}

/// The master's handle on one agent: calls become messages to the agent's pid.
pub struct AgentHandle {
    transport: Arc<Transport>,
    agent: Upid,
    agent_id: String,
}

impl AgentPort for AgentHandle {
    fn pid(&self) -> Option<String> {
        Some(self.agent.to_string())
    }

    fn run_task(&self, framework: &mesos::FrameworkInfo, task: mesos::TaskInfo) {
        self.transport.send(
            &self.agent,
            &internal::RunTaskMessage {
                framework_id: framework.id.clone(),
                framework: framework.clone(),
                task,
                resource_version_uuids: Vec::new(),
                pid: None,
                launch_executor: Some(true),
            },
        );
    }

    fn kill_task(&self, framework_id: &str, task_id: &str, grace: Option<Duration>) {
        self.transport.send(
            &self.agent,
            &internal::KillTaskMessage {
                framework_id: mesos::FrameworkId {
                    value: framework_id.to_string(),
                },
                task_id: mesos::TaskId {
                    value: task_id.to_string(),
                },
                kill_policy: grace.map(|g| mesos::KillPolicy {
                    grace_period: Some(mesos::DurationInfo {
                        nanoseconds: i64::try_from(g.as_nanos()).unwrap_or(i64::MAX),
                    }),
                }),
            },
        );
    }

    fn acknowledge(&self, framework_id: &str, task_id: &str, uuid: &[u8]) {
        self.transport.send(
            &self.agent,
            &internal::StatusUpdateAcknowledgementMessage {
                slave_id: mesos::AgentId {
                    value: self.agent_id.clone(),
                },
                framework_id: mesos::FrameworkId {
                    value: framework_id.to_string(),
                },
                task_id: mesos::TaskId {
                    value: task_id.to_string(),
                },
                uuid: uuid.to_vec(),
            },
        );
    }

    fn shutdown_framework(&self, framework_id: &str) {
        self.transport.send(
            &self.agent,
            &internal::ShutdownFrameworkMessage {
                framework_id: mesos::FrameworkId {
                    value: framework_id.to_string(),
                },
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_one_or_not_semver_are_refused() {
        assert!(version_problem(Some("1.12.0")).is_none());
        assert!(version_problem(Some("0.28.2")).is_some());
        assert!(version_problem(Some("berth")).is_some());
        assert!(version_problem(None).is_some());
    }
}
