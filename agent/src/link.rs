//! The two directions between the agent and its master.
//!
//! [`MasterLink`] is what the agent needs from a master (register, send status updates);
//! [`AgentPort`] is what a master asks of the agent (run, kill, acknowledge, shutdown). In `--dev`
//! mode the embedded master implements `MasterLink` and holds the agent as its `AgentPort`; the
//! Mesos wire-protocol link (libprocess over HTTP) implements the same two traits for a real
//! master, so the agent's code path does not depend on which master it has.

use std::time::Duration;

use berth_proto::mesos::v1 as mesos;

use crate::resources::ResourceSet;

/// What the agent tells a master when it registers.
#[derive(Debug, Clone)]
pub struct AgentRegistration {
    /// Agent id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// Total resources.
    pub resources: ResourceSet,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// Resources already held by tasks running on the agent (after recovery).
    pub tasks: Vec<RunningTask>,
}

/// A task the agent already runs when it (re)registers.
#[derive(Debug, Clone)]
pub struct RunningTask {
    /// Framework.
    pub framework_id: String,
    /// Task id.
    pub task_id: String,
    /// Task name.
    pub name: String,
    /// Resources it holds.
    pub resources: ResourceSet,
    /// Latest state.
    pub state: mesos::TaskState,
}

/// What the agent needs from its master.
pub trait MasterLink: Send + Sync {
    /// (Re)registers the agent.
    fn register(&self, registration: AgentRegistration);
    /// Sends a status update. The master answers with [`AgentPort::acknowledge`] once the
    /// framework acknowledged it (or at once for updates without uuid).
    fn status_update(&self, framework_id: &str, status: mesos::TaskStatus);
}

/// What a master asks of the agent.
pub trait AgentPort: Send + Sync {
    /// Runs a task for a framework.
    fn run_task(&self, framework: &mesos::FrameworkInfo, task: mesos::TaskInfo);
    /// Kills a task; `grace` overrides the task's kill policy.
    fn kill_task(&self, framework_id: &str, task_id: &str, grace: Option<Duration>);
    /// A framework acknowledged a status update.
    fn acknowledge(&self, framework_id: &str, task_id: &str, uuid: &[u8]);
    /// Kills every task of the framework.
    fn shutdown_framework(&self, framework_id: &str);
}
