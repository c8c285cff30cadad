//! The two directions between the agent and its master.
//!
//! [`MasterLink`] is what the agent needs from a master (send status updates, know whether it
//! is registered); [`AgentPort`] is what a master asks of an agent (run, kill, acknowledge,
//! shut a framework down) and [`AgentCore`] adds what the agent's side of the link needs to
//! (re)register. There is one implementation of the link: the Mesos wire protocol (libprocess
//! messages, [`crate::mesos::link`]), used with a real Mesos master and with berth's embedded
//! master alike, so the agent's code path does not depend on which master it has. On the
//! master's side, [`AgentPort`] is implemented by a handle that turns each call into the
//! matching libprocess message to the agent ([`crate::master::wire`]).

use std::time::Duration;

use berth_proto::mesos::v1 as mesos;

use crate::resources::ResourceSet;

/// What the agent tells a master when it (re)registers.
#[derive(Debug, Clone)]
pub struct AgentRegistration {
    /// The agent id the master gave it; None before the first registration.
    pub id: Option<String>,
    /// Hostname.
    pub hostname: String,
    /// Port of the agent's libprocess/HTTP server.
    pub port: u16,
    /// Total resources.
    pub resources: ResourceSet,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// Tasks the agent knows that are not done (running, or with unacknowledged updates).
    pub tasks: Vec<mesos::Task>,
    /// The frameworks of those tasks.
    pub frameworks: Vec<mesos::FrameworkInfo>,
    /// Resources the master asked the agent to checkpoint (reservations, volumes).
    pub checkpointed_resources: Vec<mesos::Resource>,
}

/// What the agent needs from its master.
pub trait MasterLink: Send + Sync {
    /// Sends a status update; `latest` is the task's latest state at the agent. The master
    /// answers with [`AgentPort::acknowledge`] once the framework acknowledged it.
    fn status_update(
        &self,
        framework_id: &str,
        status: mesos::TaskStatus,
        latest: mesos::TaskState,
    );
    /// Whether the agent is registered with a master now (updates wait while it is not).
    fn is_registered(&self) -> bool;
}

/// What a master asks of an agent.
pub trait AgentPort: Send + Sync {
    /// Runs a task for a framework.
    fn run_task(&self, framework: &mesos::FrameworkInfo, task: mesos::TaskInfo);
    /// Kills a task; `grace` overrides the task's kill policy.
    fn kill_task(&self, framework_id: &str, task_id: &str, grace: Option<Duration>);
    /// A framework acknowledged a status update.
    fn acknowledge(&self, framework_id: &str, task_id: &str, uuid: &[u8]);
    /// Kills every task of the framework.
    fn shutdown_framework(&self, framework_id: &str);
    /// The agent's libprocess pid (`slave(1)@IP:PORT`) when the port is a remote agent, for the
    /// master's operator API.
    fn pid(&self) -> Option<String> {
        None
    }
}

/// The agent as its side of the link sees it.
pub trait AgentCore: AgentPort {
    /// What to (re)register with.
    fn registration(&self) -> AgentRegistration;
    /// The master (re)registered the agent under `agent_id`: remember it and resume sending
    /// status updates.
    fn registered(&self, agent_id: &str);
    /// The master believes these tasks of a framework run here; the agent answers for those it
    /// does not know.
    fn reconcile(&self, framework_id: &str, task_ids: Vec<String>);
    /// A framework's info changed.
    fn update_framework(&self, info: mesos::FrameworkInfo);
    /// The master's resources to checkpoint (replaces the previous set).
    fn checkpoint_resources(&self, resources: Vec<mesos::Resource>);
    /// The master asked the agent to shut down (it was removed, or refused).
    fn shutdown(&self, message: &str);
}
