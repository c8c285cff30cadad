//! # berth-isolators
//!
//! Everything that confines a container once its processes exist. The model is Mesos's isolator
//! interface: the containerizer calls every isolator's [`Isolator::prepare`] before the workload
//! process exists (an isolator may ask for namespaces there), [`Isolator::isolate`] with the pid of
//! the not-yet-exec'd workload (cgroup attach happens here), [`Isolator::limitation`] after the
//! workload ended (was it OOM-killed?), [`Isolator::usage`] while it runs, and
//! [`Isolator::cleanup`] on destroy. [`Isolator::recover`] runs at agent start and removes what
//! belongs to no known container.
//!
//! Isolators in this crate:
//! - [`cgroups::CgroupsIsolator`]: cpu, memory and pids limits on cgroup v2 with a v1 fallback,
//!   nested under the agent's own cgroup in every hierarchy.
//! - [`namespaces::NamespacesIsolator`]: asks for new pid, mount, uts, ipc and (unless host
//!   networking) net namespaces.
//!
//! Every filesystem-backed API takes its root path (`/sys/fs/cgroup`, `/proc`), so the logic is
//! unit-tested against fixture trees; the privileged tests then run it for real.
#![warn(missing_docs)]

pub mod cgroups;
pub mod namespaces;

use serde::{Deserialize, Serialize};

/// A container's identity as the isolators see it: a string safe to use as a path component.
pub type ContainerId = str;

/// How a container is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Share the host's network namespace.
    Host,
    /// A new network namespace with loopback only.
    #[default]
    None,
}

/// The resources a container is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU share in cores (0.5 = half a core). Hard cap (`cpu.max`) and weight are derived from it.
    pub cpus: f64,
    /// Memory limit in bytes (`memory.max`); swap is disabled.
    pub mem_bytes: u64,
    /// Maximum number of processes/threads (`pids.max`); `None` = unlimited.
    pub pids_max: Option<u64>,
}

/// What an isolator needs to know about a container before it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container id (path-safe).
    pub id: String,
    /// Resource limits.
    pub limits: Limits,
    /// Network mode.
    pub network: NetworkMode,
    /// Hostname inside the container's UTS namespace.
    pub hostname: String,
}

/// A Linux namespace kind a container can be placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// PID namespace.
    Pid,
    /// Mount namespace.
    Mount,
    /// UTS namespace (hostname).
    Uts,
    /// IPC namespace.
    Ipc,
    /// Network namespace.
    Net,
}

/// What isolators ask of the launcher, merged across isolators by the containerizer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchInfo {
    /// Namespaces to create for the workload.
    pub namespaces: Vec<Namespace>,
    /// Hostname to set in the new UTS namespace.
    pub hostname: Option<String>,
}

impl LaunchInfo {
    /// Merges `other` into `self` (namespace union; the later hostname wins).
    pub fn merge(&mut self, other: LaunchInfo) {
        for ns in other.namespaces {
            if !self.namespaces.contains(&ns) {
                self.namespaces.push(ns);
            }
        }
        if other.hostname.is_some() {
            self.hostname = other.hostname;
        }
    }
}

/// A limit the container hit, which ended it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limitation {
    /// The kernel OOM-killed a process of the container (memory limit reached).
    Memory {
        /// Human-readable detail (limit, count of OOM kills).
        message: String,
    },
}

/// Resource usage of a container, read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Total CPU time consumed, nanoseconds.
    pub cpu_usage_ns: u64,
    /// User CPU time, nanoseconds (if the kernel reports it).
    pub cpu_user_ns: Option<u64>,
    /// System CPU time, nanoseconds (if the kernel reports it).
    pub cpu_system_ns: Option<u64>,
    /// Time throttled by the CPU hard cap, nanoseconds.
    pub cpu_throttled_ns: Option<u64>,
    /// Current memory use, bytes.
    pub mem_current_bytes: u64,
    /// Peak memory use, bytes (if the kernel reports it).
    pub mem_peak_bytes: Option<u64>,
    /// Current number of tasks (processes + threads).
    pub pids_current: u64,
}

/// The isolator interface (Mesos's `Isolator`, synchronous: every call is a few file writes).
pub trait Isolator: Send + Sync {
    /// A short name for logs and errors ("cgroups", "namespaces").
    fn name(&self) -> &'static str;
    /// Called before the workload exists; returns what the launcher must do for this isolator.
    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError>;
    /// Called with the workload's pid (host pid namespace) before it execs.
    fn isolate(&self, id: &ContainerId, pid: i32) -> Result<(), IsolatorError>;
    /// Called after the workload ended: the limit it hit, if any.
    fn limitation(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError>;
    /// Current usage of a running container. Isolators with nothing to report return default.
    fn usage(&self, id: &ContainerId) -> Result<Usage, IsolatorError>;
    /// Kills every process left in the container (cgroup.kill or equivalent). Idempotent.
    fn kill_all(&self, id: &ContainerId) -> Result<(), IsolatorError>;
    /// Removes everything this isolator made for the container. Idempotent.
    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError>;
    /// At agent start: destroys what belongs to none of `known`; returns the ids it cleaned up.
    fn recover(&self, known: &[String]) -> Result<Vec<String>, IsolatorError>;
    /// Describes where this isolator keeps the container (e.g. cgroup paths) for `inspect`.
    fn describe(&self, id: &ContainerId) -> serde_json::Value;
}

/// Errors of the isolators, each carrying the object that failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolatorError {
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    /// A container id that cannot be used as a path component.
    #[error(
        "invalid container id {0:?}: must be 1-128 chars of [A-Za-z0-9_.-] and not start with '.'"
    )]
    InvalidContainerId(String),
}

/// Checks that `id` is safe as a single path component.
pub fn validate_container_id(id: &str) -> Result<(), IsolatorError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(IsolatorError::InvalidContainerId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_path_safe() {
        assert!(validate_container_id("task-1.a_b").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_container_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn launch_info_merge_unions_namespaces() {
        let mut a = LaunchInfo {
            namespaces: vec![Namespace::Pid],
            hostname: None,
        };
        a.merge(LaunchInfo {
            namespaces: vec![Namespace::Pid, Namespace::Net],
            hostname: Some("h".into()),
        });
        assert_eq!(a.namespaces, vec![Namespace::Pid, Namespace::Net]);
        assert_eq!(a.hostname.as_deref(), Some("h"));
    }
}
