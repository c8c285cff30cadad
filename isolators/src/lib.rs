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
//! - [`cgroups::CgroupsIsolator`]: cpu, memory, pids, io, cpuset and hugetlb limits and a device
//!   allow-list on cgroup v2 with a v1 fallback, nested under the agent's own cgroup in every
//!   hierarchy; usage, live update, and OOM kills reported while the container runs.
//! - [`security`]: capabilities ([`security::CapabilitiesIsolator`]), seccomp
//!   ([`security::SeccompIsolator`]) and rlimits ([`security::RlimitsIsolator`]); they only
//!   compute the shim's [`SecurityPlan`], which the shim applies right before `execve`.
//! - [`disk::DiskIsolator`]: a per-sandbox disk limit, by project quota where the filesystem
//!   supports it and by periodic usage accounting elsewhere (Mesos `posix/disk` and `xfs/disk`).
//! - [`namespaces::NamespacesIsolator`]: asks for new pid, mount, uts, ipc, cgroup and (unless
//!   host networking) net namespaces.
//! - [`filesystem::FilesystemIsolator`]: the container's own root filesystem (read-only host
//!   root, new /proc with masked paths, minimal /dev, private /tmp, hidden agent directories,
//!   the sandbox at `/mnt/mesos/sandbox`, volumes resolved without symlink escapes).
//! - [`userns::UserNamespaceIsolator`]: with `user_namespace`, a user namespace mapping the
//!   container's root to an unprivileged host range (`/etc/subuid`-style).
//!
//! Every filesystem-backed API takes its root path (`/sys/fs/cgroup`, `/proc`), so the logic is
//! unit-tested against fixture trees; the privileged tests then run it for real.
#![warn(missing_docs)]

pub mod cgroups;
pub mod disk;
pub mod filesystem;
pub mod namespaces;
pub mod security;
pub mod userns;

use std::path::PathBuf;

pub use berth_executor::{
    CapabilitySets, DeviceSpec, FilesystemPlan, IdMapRange, IdMaps, MountSpec, ProcessUser,
    RlimitSpec, SecurityPlan,
};
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
    /// A new network namespace on the node bridge: a veth pair and an address from the node
    /// subnet (set up by berth-net's bridge isolator).
    Bridge,
}

/// A node port forwarded to a container port (Mesos `NetworkInfo.PortMapping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMappingSpec {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The node's port.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
}

/// The resources a container is limited to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU share in cores (0.5 = half a core): the weight (`cpu.weight`/`cpu.shares`), and the
    /// hard cap (`cpu.max`) when `cpu_hard_cap` is set.
    pub cpus: f64,
    /// Enforce `cpus` as a hard cap (CFS quota) as well as a weight.
    #[serde(default)]
    pub cpu_hard_cap: bool,
    /// Memory limit in bytes (`memory.max`).
    pub mem_bytes: u64,
    /// Soft memory limit (`memory.high`): above it the container is throttled and reclaimed,
    /// not killed.
    #[serde(default)]
    pub mem_high_bytes: Option<u64>,
    /// Swap allowed on top of `mem_bytes` (`memory.swap.max`); 0 (the default) disables swap.
    #[serde(default)]
    pub swap_bytes: u64,
    /// Maximum number of processes/threads (`pids.max`); `None` = unlimited.
    pub pids_max: Option<u64>,
    /// Disk space of the sandbox, bytes (posix/disk); `None` = unlimited.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// CPUs the container may run on (`cpuset.cpus`, list syntax "0-1,3").
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes (`cpuset.mems`).
    #[serde(default)]
    pub cpuset_mems: Option<String>,
    /// Proportional io weight 1-10000 (`io.weight`; v1 `blkio.weight` 10-1000 is scaled).
    #[serde(default)]
    pub io_weight: Option<u16>,
    /// Per-device io bandwidth/iops caps (`io.max`; v1 `blkio.throttle.*`).
    #[serde(default)]
    pub io_max: Vec<IoMax>,
    /// Huge page limits (`hugetlb.<size>.max`).
    #[serde(default)]
    pub hugetlb: Vec<HugetlbLimit>,
}

/// An io cap on one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoMax {
    /// The device: "MAJ:MIN", or a path to a block device node (resolved at `prepare`).
    pub device: String,
    /// Read bytes per second.
    #[serde(default)]
    pub rbps: Option<u64>,
    /// Write bytes per second.
    #[serde(default)]
    pub wbps: Option<u64>,
    /// Read operations per second.
    #[serde(default)]
    pub riops: Option<u64>,
    /// Write operations per second.
    #[serde(default)]
    pub wiops: Option<u64>,
}

/// A huge page limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugetlbLimit {
    /// Page size as the kernel names it in the cgroup files ("2MB", "1GB").
    pub page_size: String,
    /// Limit in bytes.
    pub limit_bytes: u64,
}

/// A live change of a running container's limits (`berth update`); `None` fields stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsUpdate {
    /// New CPU share (weight, and hard cap if the container has one).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// New memory limit, bytes.
    #[serde(default)]
    pub mem_bytes: Option<u64>,
    /// New soft memory limit, bytes.
    #[serde(default)]
    pub mem_high_bytes: Option<u64>,
    /// New process limit.
    #[serde(default)]
    pub pids_max: Option<u64>,
}

/// Which seccomp filter a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "profile", rename_all = "snake_case")]
pub enum SeccompProfile {
    /// berth's default: blocks what Docker's default profile blocks.
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A custom profile in the Docker/OCI seccomp JSON format (the JSON text).
    Custom(String),
}

/// A host path made visible in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Host path (absolute), or relative to the sandbox.
    pub host: PathBuf,
    /// Path inside the container (absolute), or relative to the sandbox mount point.
    pub container: PathBuf,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A resource limit a task asks for, by short name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitRequest {
    /// Short name: "nofile", "nproc", "core", ... (or the `RLIMIT_*` name).
    pub name: String,
    /// Soft limit; `None` = unlimited.
    pub soft: Option<u64>,
    /// Hard limit; `None` = unlimited.
    pub hard: Option<u64>,
}

/// The per-container isolation choices beyond resource limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IsolationOptions {
    /// Node ports forwarded to the container (`--network bridge` only).
    #[serde(default)]
    pub port_mappings: Vec<PortMappingSpec>,
    /// A host file to use as the container's `/etc/resolv.conf` (bridge and overlay tasks on a
    /// node running berth's DNS); `None` keeps the host's.
    #[serde(default)]
    pub resolv_conf: Option<std::path::PathBuf>,
    /// Capabilities added to the default set (`CAP_` prefix optional, case-insensitive, "ALL").
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from the default set ("ALL" drops every one).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// The seccomp filter.
    #[serde(default)]
    pub seccomp: SeccompProfile,
    /// Resource limits (`setrlimit`).
    #[serde(default)]
    pub rlimits: Vec<RlimitRequest>,
    /// Host volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Run in a user namespace: root inside is an unprivileged uid outside.
    #[serde(default)]
    pub user_namespace: bool,
    /// Leave the container's root filesystem writable (native containers: the host's `/`!).
    #[serde(default)]
    pub writable_rootfs: bool,
    /// Extra host devices to allow and expose (`/dev/fuse`).
    #[serde(default)]
    pub devices: Vec<PathBuf>,
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
    /// The container's sandbox directory on the host.
    pub sandbox: PathBuf,
    /// Isolation choices (capabilities, seccomp, volumes, ...).
    #[serde(default)]
    pub options: IsolationOptions,
    /// The image the container's root is made of; `None`: a native container (the host's root).
    #[serde(default)]
    pub image: Option<ImageRootfs>,
}

/// Where, in a container's sandbox, the containerizer keeps what an image container's root
/// filesystem needs (overlay upper and work dirs, generated `/etc` files). Hidden from the
/// container.
pub const IMAGE_ROOTFS_DIR: &str = ".rootfs";

/// An image container's root filesystem: an overlay of the image's unpacked layers with a
/// writable upper directory of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRootfs {
    /// Unpacked layer directories, bottom to top.
    pub layers: Vec<PathBuf>,
    /// The overlay's upper directory (the container's writes), in the sandbox.
    pub upper: PathBuf,
    /// The overlay's work directory, on the same filesystem as `upper`.
    pub work: PathBuf,
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
    /// User namespace.
    User,
    /// Cgroup namespace.
    Cgroup,
}

/// What isolators ask of the launcher, merged across isolators by the containerizer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchInfo {
    /// Namespaces to create for the workload.
    pub namespaces: Vec<Namespace>,
    /// Hostname to set in the new UTS namespace.
    pub hostname: Option<String>,
    /// User namespace id maps (user namespace isolator).
    pub id_maps: Option<IdMaps>,
    /// The container's root filesystem (filesystem isolator).
    pub filesystem: Option<FilesystemPlan>,
    /// Where the sandbox appears inside the container, when not at its host path; the
    /// containerizer points `MESOS_SANDBOX` and the default working directory there.
    pub sandbox_in_container: Option<PathBuf>,
    /// No new privileges (capabilities isolator).
    pub no_new_privileges: bool,
    /// Capability sets (capabilities isolator).
    pub capabilities: Option<CapabilitySets>,
    /// Compiled seccomp filter (seccomp isolator).
    pub seccomp: Option<Vec<berth_executor::BpfInstruction>>,
    /// Resource limits (rlimits isolator).
    pub rlimits: Vec<RlimitSpec>,
    /// The user the workload runs as (an image's `User`); `None` keeps root.
    #[serde(default)]
    pub user: Option<ProcessUser>,
}

impl LaunchInfo {
    /// Merges `other` into `self`: namespaces, rlimits and mounts are unions; for the single
    /// values, the later isolator's wins.
    pub fn merge(&mut self, other: LaunchInfo) {
        for ns in other.namespaces {
            if !self.namespaces.contains(&ns) {
                self.namespaces.push(ns);
            }
        }
        if other.hostname.is_some() {
            self.hostname = other.hostname;
        }
        if other.id_maps.is_some() {
            self.id_maps = other.id_maps;
        }
        match (&mut self.filesystem, other.filesystem) {
            (Some(mine), Some(theirs)) => {
                mine.mounts.extend(theirs.mounts);
                mine.devices.extend(theirs.devices);
                mine.masked_paths.extend(theirs.masked_paths);
                mine.readonly_paths.extend(theirs.readonly_paths);
            }
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        if other.sandbox_in_container.is_some() {
            self.sandbox_in_container = other.sandbox_in_container;
        }
        self.no_new_privileges |= other.no_new_privileges;
        if other.capabilities.is_some() {
            self.capabilities = other.capabilities;
        }
        if other.seccomp.is_some() {
            self.seccomp = other.seccomp;
        }
        self.rlimits.extend(other.rlimits);
        if other.user.is_some() {
            self.user = other.user;
        }
    }

    /// The part the shim applies right before `execve`.
    pub fn security_plan(&self) -> SecurityPlan {
        SecurityPlan {
            no_new_privileges: self.no_new_privileges,
            capabilities: self.capabilities.clone(),
            seccomp: self.seccomp.clone(),
            rlimits: self.rlimits.clone(),
            user: self.user.clone(),
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
    /// The sandbox grew past its disk limit.
    Disk {
        /// Human-readable detail (limit, usage).
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
    /// Page cache, bytes (`file` in memory.stat; v1 `total_cache`).
    #[serde(default)]
    pub mem_cache_bytes: Option<u64>,
    /// Anonymous memory, bytes (`anon`; v1 `total_rss`).
    #[serde(default)]
    pub mem_rss_bytes: Option<u64>,
    /// Number of CFS periods, and of those throttled (cpu.stat).
    #[serde(default)]
    pub cpu_nr_periods: Option<u64>,
    /// Throttled periods.
    #[serde(default)]
    pub cpu_nr_throttled: Option<u64>,
    /// Bytes read from block devices.
    #[serde(default)]
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    #[serde(default)]
    pub io_write_bytes: Option<u64>,
    /// OOM kills so far (memory.events `oom_kill`).
    #[serde(default)]
    pub oom_kills: Option<u64>,
    /// Sandbox disk usage, bytes (disk isolator).
    #[serde(default)]
    pub disk_used_bytes: Option<u64>,
    /// Sandbox disk limit, bytes.
    #[serde(default)]
    pub disk_limit_bytes: Option<u64>,
}

impl Usage {
    /// Combines the readings of several isolators: each field from whichever reports it.
    pub fn combine(mut self, other: Usage) -> Usage {
        fn pick(a: &mut Option<u64>, b: Option<u64>) {
            if a.is_none() {
                *a = b;
            }
        }
        if self.cpu_usage_ns == 0 {
            self.cpu_usage_ns = other.cpu_usage_ns;
        }
        if self.mem_current_bytes == 0 {
            self.mem_current_bytes = other.mem_current_bytes;
        }
        if self.pids_current == 0 {
            self.pids_current = other.pids_current;
        }
        pick(&mut self.cpu_user_ns, other.cpu_user_ns);
        pick(&mut self.cpu_system_ns, other.cpu_system_ns);
        pick(&mut self.cpu_throttled_ns, other.cpu_throttled_ns);
        pick(&mut self.mem_peak_bytes, other.mem_peak_bytes);
        pick(&mut self.mem_cache_bytes, other.mem_cache_bytes);
        pick(&mut self.mem_rss_bytes, other.mem_rss_bytes);
        pick(&mut self.cpu_nr_periods, other.cpu_nr_periods);
        pick(&mut self.cpu_nr_throttled, other.cpu_nr_throttled);
        pick(&mut self.io_read_bytes, other.io_read_bytes);
        pick(&mut self.io_write_bytes, other.io_write_bytes);
        pick(&mut self.oom_kills, other.oom_kills);
        pick(&mut self.disk_used_bytes, other.disk_used_bytes);
        pick(&mut self.disk_limit_bytes, other.disk_limit_bytes);
        self
    }
}

/// The isolator interface (Mesos's `Isolator`, synchronous: every call is a few file writes).
pub trait Isolator: Send + Sync {
    /// A short name for logs and errors ("cgroups", "namespaces").
    fn name(&self) -> &'static str;
    /// Called before the workload exists; returns what the launcher must do for this isolator.
    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError>;
    /// Called with the workload's pid (host pid namespace) before it execs.
    fn isolate(&self, _id: &ContainerId, _pid: i32) -> Result<(), IsolatorError> {
        Ok(())
    }
    /// Called after the workload ended: the limit it hit, if any.
    fn limitation(&self, _id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        Ok(None)
    }
    /// Current usage of a running container. Isolators with nothing to report return default.
    fn usage(&self, _id: &ContainerId) -> Result<Usage, IsolatorError> {
        Ok(Usage::default())
    }
    /// Kills every process left in the container (cgroup.kill or equivalent). Idempotent.
    fn kill_all(&self, _id: &ContainerId) -> Result<(), IsolatorError> {
        Ok(())
    }
    /// Removes everything this isolator made for the container. Idempotent.
    fn cleanup(&self, _id: &ContainerId) -> Result<(), IsolatorError> {
        Ok(())
    }
    /// At agent start: destroys what belongs to none of `known`; returns the ids it cleaned up.
    fn recover(&self, _known: &[String]) -> Result<Vec<String>, IsolatorError> {
        Ok(Vec::new())
    }
    /// Describes where this isolator keeps the container (e.g. cgroup paths) for `inspect`.
    fn describe(&self, _id: &ContainerId) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Changes the limits of a running container. Isolators without live limits ignore it.
    fn update(&self, _id: &ContainerId, _update: &LimitsUpdate) -> Result<(), IsolatorError> {
        Ok(())
    }
    /// Called periodically while the container runs: a limit it has hit that must end it now
    /// (OOM kill of a child process, disk quota exceeded). `None` while within limits.
    fn check(&self, _id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        Ok(None)
    }
}

/// Errors of the isolators, each carrying the object that failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolatorError {
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    /// A container asked for something this node cannot give or that is unsafe; the message
    /// names the offending value.
    #[error("{isolator}: {message}")]
    Invalid {
        /// Which isolator refused.
        isolator: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A system call or file operation failed.
    #[error("{isolator}: {what}: {source}")]
    Io {
        /// Which isolator.
        isolator: &'static str,
        /// The operation and its object.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
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
            ..Default::default()
        };
        a.merge(LaunchInfo {
            namespaces: vec![Namespace::Pid, Namespace::Net],
            hostname: Some("h".into()),
            ..Default::default()
        });
        assert_eq!(a.namespaces, vec![Namespace::Pid, Namespace::Net]);
        assert_eq!(a.hostname.as_deref(), Some("h"));
    }
}
