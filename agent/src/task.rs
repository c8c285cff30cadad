//! The agent's record of one task: what was asked (the TaskInfo), where it runs (container), and
//! every status update it went through. Checkpointed as JSON under `<work-dir>/meta/tasks/`.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::mesos::v1 as mesos;
use serde::{Deserialize, Serialize};

/// The agent's record of a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id (unique on this agent).
    pub id: String,
    /// Task name.
    pub name: String,
    /// Framework that launched it.
    pub framework_id: String,
    /// Container running it.
    pub container_id: String,
    /// The TaskInfo as Mesos JSON (kept to answer `inspect` and `/state` exactly).
    pub task_info: serde_json::Value,
    /// Limits the container runs with.
    pub limits: TaskLimits,
    /// Latest state name (`TASK_RUNNING`...).
    pub state: String,
    /// Status updates in order, with whether the master acknowledged each.
    pub statuses: Vec<StatusRecord>,
    /// Host pid of the container init while it runs.
    pub pid: Option<i32>,
    /// Unix time the agent accepted the task.
    pub created_at: f64,
    /// Unix time it reached TASK_RUNNING.
    pub started_at: Option<f64>,
    /// Exit code (or 128 + signal) once it ended.
    pub exit_code: Option<i32>,
    /// Kill grace period, seconds.
    pub grace_secs: f64,
    /// The framework's FrameworkInfo as Mesos JSON, as the task brought it (null in checkpoints
    /// written before it was kept): the operator APIs report frameworks from it.
    #[serde(default)]
    pub framework_info: serde_json::Value,
    /// The container's address on the node bridge (`--network bridge`), once it runs.
    #[serde(default)]
    pub ip: Option<String>,
    /// Health of a task with a health check (`None` for tasks without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::TaskHealth>,
}

/// Limits of a task's container, as derived from its resources and labels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct TaskLimits {
    /// CPUs.
    pub cpus: f64,
    /// Memory, MB.
    pub mem_mb: f64,
    /// Max processes.
    pub pids: Option<u64>,
}

/// One status update as checkpointed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusRecord {
    /// State name.
    pub state: String,
    /// Unix time.
    pub timestamp: f64,
    /// Human message.
    pub message: Option<String>,
    /// Reason name (`REASON_CONTAINER_LIMITATION_MEMORY`...).
    pub reason: Option<String>,
    /// Source name (`SOURCE_EXECUTOR`...).
    pub source: String,
    /// Update uuid, hex (absent for reconciliation answers).
    pub uuid: String,
    /// Whether the master acknowledged it.
    pub acked: bool,
    /// The task's health as this update reports it (`TaskStatus.healthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

impl StatusRecord {
    /// The Mesos TaskStatus for this record.
    pub fn to_proto(&self, task_id: &str, agent_id: &str, container_id: &str) -> mesos::TaskStatus {
        let mut status = mesos::TaskStatus {
            task_id: mesos::TaskId {
                value: task_id.to_string(),
            },
            agent_id: Some(mesos::AgentId {
                value: agent_id.to_string(),
            }),
            timestamp: Some(self.timestamp),
            message: self.message.clone(),
            uuid: hex_decode(&self.uuid),
            healthy: self.healthy,
            container_status: Some(mesos::ContainerStatus {
                container_id: Some(mesos::ContainerId {
                    value: container_id.to_string(),
                    parent: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        status.set_state(
            mesos::TaskState::from_str_name(&self.state).unwrap_or(mesos::TaskState::TaskLost),
        );
        if let Some(reason) = self
            .reason
            .as_deref()
            .and_then(mesos::task_status::Reason::from_str_name)
        {
            status.set_reason(reason);
        }
        if let Some(source) = mesos::task_status::Source::from_str_name(&self.source) {
            status.set_source(source);
        }
        status
    }
}

impl TaskRecord {
    /// The Mesos TaskStatus of one of this task's updates, with the container's address in
    /// `container_status.network_infos` (where frameworks and DNS tools read task IPs).
    pub fn status_proto(&self, record: &StatusRecord, agent_id: &str) -> mesos::TaskStatus {
        let mut status = record.to_proto(&self.id, agent_id, &self.container_id);
        if let Some(ip) = &self.ip {
            let container_status = status.container_status.get_or_insert_with(Default::default);
            container_status.network_infos = vec![mesos::NetworkInfo {
                name: Some("bridge".into()),
                ip_addresses: vec![mesos::network_info::IpAddress {
                    protocol: None,
                    ip_address: Some(ip.clone()),
                }],
                ..Default::default()
            }];
        }
        status
    }

    /// Whether the task still matters to a master: running, or ended with updates the master
    /// has not acknowledged yet (Mesos keeps such tasks, and their resources, until then).
    pub fn is_active(&self) -> bool {
        !is_terminal(&self.state) || self.statuses.iter().any(|s| !s.acked && !s.uuid.is_empty())
    }

    /// The Mesos `Task` a master is told about when the agent re-registers.
    pub fn to_mesos_task(&self, agent_id: &str) -> mesos::Task {
        let info: Option<mesos::TaskInfo> = serde_json::to_vec(&self.task_info)
            .ok()
            .and_then(|bytes| berth_proto::codec::from_json(&bytes).ok());
        let latest = self.statuses.last();
        // Mesos: status_update_state/uuid name the oldest update not yet acknowledged.
        let unacked = self
            .statuses
            .iter()
            .find(|s| !s.acked && !s.uuid.is_empty());
        let state_of = |name: &str| {
            mesos::TaskState::from_str_name(name).unwrap_or(mesos::TaskState::TaskStaging) as i32
        };
        mesos::Task {
            name: self.name.clone(),
            task_id: mesos::TaskId {
                value: self.id.clone(),
            },
            framework_id: mesos::FrameworkId {
                value: self.framework_id.clone(),
            },
            executor_id: None,
            agent_id: mesos::AgentId {
                value: agent_id.to_string(),
            },
            state: state_of(&self.state),
            resources: info
                .as_ref()
                .map(|i| i.resources.clone())
                .unwrap_or_default(),
            statuses: latest
                .map(|s| vec![self.status_proto(s, agent_id)])
                .unwrap_or_default(),
            status_update_state: unacked.map(|s| state_of(&s.state)),
            status_update_uuid: unacked.and_then(|s| hex_decode(&s.uuid)),
            labels: info.as_ref().and_then(|i| i.labels.clone()),
            discovery: info.as_ref().and_then(|i| i.discovery.clone()),
            container: info.as_ref().and_then(|i| i.container.clone()),
            kill_policy: info.as_ref().and_then(|i| i.kill_policy),
            user: None,
        }
    }
}

/// Whether a state name is terminal.
pub fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "TASK_FINISHED"
            | "TASK_FAILED"
            | "TASK_KILLED"
            | "TASK_ERROR"
            | "TASK_LOST"
            | "TASK_DROPPED"
            | "TASK_GONE"
            | "TASK_GONE_BY_OPERATOR"
    )
}

/// Now as unix seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Lower-case hex of bytes.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of lower-case hex (`None` for empty or invalid input).
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_terminal_states() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex_decode(&hex_encode(&bytes)).unwrap(), bytes);
        assert!(hex_decode("abc").is_none());
        assert!(is_terminal("TASK_KILLED"));
        assert!(!is_terminal("TASK_RUNNING"));
    }

    #[test]
    fn status_record_to_proto() {
        let record = StatusRecord {
            state: "TASK_FAILED".into(),
            timestamp: 1.5,
            message: Some("oom".into()),
            reason: Some("REASON_CONTAINER_LIMITATION_MEMORY".into()),
            source: "SOURCE_EXECUTOR".into(),
            uuid: "00ff".into(),
            acked: false,
            healthy: Some(false),
        };
        let status = record.to_proto("t1", "a1", "c1");
        assert_eq!(status.state(), mesos::TaskState::TaskFailed);
        assert_eq!(
            status.reason(),
            mesos::task_status::Reason::ContainerLimitationMemory
        );
        assert_eq!(status.uuid.as_deref(), Some(&[0u8, 0xff][..]));
        assert_eq!(status.healthy, Some(false));
    }
}
