//! The agent's side of task health checks ([`crate::health`]): a checker is started when a task
//! with a `health_check` reaches `TASK_RUNNING` (and again for a task recovered after an agent
//! restart), its probe results are kept in the task record, a change of health becomes a
//! `TASK_RUNNING` update with `healthy` set, and the task is killed once the check gives up.

use std::{
    path::PathBuf,
    sync::{Arc, Weak},
    time::Duration,
};

use berth_proto::mesos::v1 as mesos;
use tracing::{info, warn};

use super::Agent;
use crate::{
    health::{
        HealthSink, HealthSpec, HealthState, Resume, TaskHealth, Verdict, probes::TaskProbe,
        run_checker,
    },
    task,
};

/// The agent as a checker's sink (weak: a checker never keeps the agent alive).
struct AgentSink {
    agent: Weak<Agent>,
    task_id: String,
}

impl HealthSink for AgentSink {
    fn running(&self) -> bool {
        let Some(agent) = self.agent.upgrade() else {
            return false;
        };
        let tasks = agent.tasks.lock().expect("tasks lock");
        tasks.get(&self.task_id).is_some_and(|t| {
            t.state == "TASK_RUNNING" && !t.health.as_ref().is_some_and(|h| h.killed)
        })
    }

    fn checked(&self, result: &Result<(), String>, state: &HealthState) {
        let Some(agent) = self.agent.upgrade() else {
            return;
        };
        let mut tasks = agent.tasks.lock().expect("tasks lock");
        if let Some(health) = tasks.get_mut(&self.task_id).and_then(|t| t.health.as_mut()) {
            health.last_check = Some(task::now());
            health.last_error = result.as_ref().err().cloned();
            health.consecutive_failures = state.consecutive_failures;
        }
    }

    fn report(&self, verdict: &Verdict) {
        if let Some(agent) = self.agent.upgrade() {
            agent.report_health(&self.task_id, verdict);
        }
    }
}

impl Agent {
    /// Starts the health checker of a running task, if it has a health check.
    pub(super) fn start_health_check(self: &Arc<Self>, task_id: &str) {
        let (info, pid, started_at, known) = {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            let Some(record) = tasks.get_mut(task_id) else {
                return;
            };
            let info: Option<mesos::TaskInfo> = serde_json::to_vec(&record.task_info)
                .ok()
                .and_then(|bytes| berth_proto::codec::from_json(&bytes).ok());
            if info.as_ref().is_none_or(|i| i.health_check.is_none()) {
                return;
            }
            let health = record.health.get_or_insert_with(TaskHealth::default);
            (info, record.pid, record.started_at, health.healthy)
        };
        let Some(check) = info.and_then(|i| i.health_check) else {
            return;
        };
        let spec = match HealthSpec::from_proto(&check) {
            Ok(spec) => spec,
            Err(err) => {
                // Validated when the task was accepted; a checkpoint from an older berth only.
                warn!(task_id, error = %err, "health check not started");
                return;
            }
        };
        let Some(pid) = pid else {
            warn!(
                task_id,
                "health check not started: the container's pid is unknown"
            );
            return;
        };
        let since_running = started_at
            .map(|at| Duration::from_secs_f64((task::now() - at).max(0.0)))
            .unwrap_or_default();
        let probe = TaskProbe {
            spec: spec.probe,
            pid,
            proc_root: PathBuf::from("/proc"),
            // Re-executes this very binary (still valid if the file was replaced).
            berth_bin: PathBuf::from("/proc/self/exe"),
            timeout: spec.timing.timeout,
        };
        let sink = AgentSink {
            agent: Arc::downgrade(self),
            task_id: task_id.to_string(),
        };
        info!(task_id, pid, ?since_running, "health checker started");
        tokio::spawn(run_checker(
            spec.timing,
            probe,
            sink,
            Resume {
                since_running,
                known,
            },
        ));
    }

    /// Records a verdict, sends it as a status update, and kills the task when it says so.
    fn report_health(self: &Arc<Self>, task_id: &str, verdict: &Verdict) {
        let framework_id = {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            let Some(record) = tasks.get_mut(task_id) else {
                return;
            };
            let health = record.health.get_or_insert_with(TaskHealth::default);
            health.healthy = Some(verdict.healthy);
            health.consecutive_failures = verdict.consecutive_failures;
            health.killed |= verdict.kill;
            record.framework_id.clone()
        };
        let message = if verdict.healthy {
            "health check passed".to_string()
        } else {
            format!(
                "health check failed {} time(s) in a row: {}",
                verdict.consecutive_failures,
                verdict.message.as_deref().unwrap_or("")
            )
        };
        info!(
            task_id,
            healthy = verdict.healthy,
            consecutive_failures = verdict.consecutive_failures,
            kill = verdict.kill,
            "task health changed"
        );
        self.update_status(
            task_id,
            mesos::TaskState::TaskRunning,
            Some(message),
            Some(mesos::task_status::Reason::TaskHealthCheckStatusUpdated),
            Some(verdict.healthy),
        );
        if verdict.kill {
            warn!(
                task_id,
                consecutive_failures = verdict.consecutive_failures,
                "killing the task: health check failed"
            );
            crate::link::AgentPort::kill_task(self, &framework_id, task_id, None);
        }
    }
}

/// How the terminal update of a task the health check killed differs: `healthy: false` and
/// reason `REASON_TASK_HEALTH_CHECK_STATUS_UPDATED` (upstream sets only `healthy`).
pub(super) fn killed_by_check(health: Option<&TaskHealth>) -> Option<String> {
    health.filter(|h| h.killed).map(|h| {
        format!(
            "killed after {} consecutive failed health checks",
            h.consecutive_failures
        )
    })
}

/// Whether a queued update only reports health (superseded by a newer health update).
pub(super) fn is_health_update(status: &mesos::TaskStatus) -> bool {
    status.state() == mesos::TaskState::TaskRunning
        && status.reason() == mesos::task_status::Reason::TaskHealthCheckStatusUpdated
}

/// Marks the checkpointed updates a newer health update superseded as no longer to be sent
/// (`acked`), so a restarted agent does not queue them again.
pub(super) fn mark_superseded(agent: &Agent, task_id: &str, uuids: &[Vec<u8>]) {
    if uuids.is_empty() {
        return;
    }
    let hexes: Vec<String> = uuids.iter().map(|u| task::hex_encode(u)).collect();
    let mut tasks = agent.tasks.lock().expect("tasks lock");
    if let Some(record) = tasks.get_mut(task_id) {
        for status in record
            .statuses
            .iter_mut()
            .filter(|s| hexes.contains(&s.uuid))
        {
            status.acked = true;
        }
        agent.checkpoint_task(record);
    }
}
