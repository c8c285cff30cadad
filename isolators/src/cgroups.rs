//! The cgroups isolator: every resource limit a task can ask for, on cgroup v2 when
//! `/sys/fs/cgroup` is a cgroup2 mount and on cgroup v1 otherwise (including hybrid hosts, whose
//! `unified` mount carries no controllers).
//!
//! # What a container gets
//! - cpu: a weight from its cpus (Mesos: 1024 shares per cpu; v2 `cpu.weight` converted from the
//!   shares with runc's formula), and a CFS quota (`cpu.max`, v1 `cpu.cfs_quota_us`) only when
//!   `Limits::cpu_hard_cap` is set.
//! - memory: `memory.max`, `memory.high` (v1: the weaker `memory.soft_limit_in_bytes`),
//!   `memory.swap.max` (v1: memsw = memory + swap, when swap is accounted). An OOM kill ends the
//!   container: [`Isolator::check`] reports it while the main process still runs,
//!   [`Isolator::limitation`] after it exited.
//! - pids, io (`io.weight`, `io.max`; v1 blkio), cpuset, hugetlb, and a device allow-list
//!   ([`devices`]: v1 devices controller, v2 eBPF program).
//! - usage: cpu time and throttling, memory current/peak/cache/rss, pids, io bytes, OOM kills.
//! - live [`Isolator::update`] of cpus, memory, memory.high and pids.
//!
//! # Layout
//! Container cgroups live at `<own>/<base>/<id>`, where `<own>` is the agent's own cgroup in the
//! hierarchy (from `/proc/self/cgroup`): v2 has one directory per container, v1 one per used
//! hierarchy (cpu, cpuacct, memory, pids, and freezer, devices, blkio, cpuset, hugetlb when
//! mounted; a co-mounted `cpu,cpuacct` counts once). berth only writes to cgroups it created, with
//! one exception on v2: enabling controllers in `<own>/cgroup.subtree_control`. It never moves
//! the agent: on v2, if the agent's own cgroup is not the root and holds processes, the
//! no-internal-processes rule forbids that and [`CgroupError::InternalProcess`] says how to run
//! the agent instead.
//!
//! # Destruction
//! `kill_all` kills until the container's cgroups (nested ones included) are empty, and `cleanup`
//! then removes them, retrying `EBUSY`; both are bounded by
//! [`CgroupsIsolator::with_removal_timeout`] (10 s by default). Processes that cannot die
//! (uninterruptible sleep, a freezer nested in the container) end in [`CgroupError::KillTimeout`]
//! naming the cgroup and the pids, never in a hang.
//!
//! # Kernel seam
//! All file access goes through the paths given to [`CgroupsIsolator::new`], so unit tests run
//! against fixture trees in a tempdir. Writes never create control files (a missing file is a
//! missing controller), so fixture tests pre-create the files the code writes; `cleanup` removes
//! directories only (cgroupfs drops control files by itself), so fixture containers to be removed
//! are bare directories. The `bpf(2)` calls of the v2 device filter are behind a trait with a
//! recording double for those tests.
//!
//! # Why not `cgroups-rs`
//! The `cgroups-rs` crate was evaluated: its v2 hierarchy is hard-wired to `/sys/fs/cgroup` and its
//! v1 hierarchies are found from `/proc/self/mountinfo`, so it cannot run against fixture trees;
//! its cgroups are placed relative to each hierarchy's root rather than under the caller's own
//! (per-hierarchy, possibly different) cgroup, and it has no notion of the v2 delegation rules
//! berth must respect. What berth needs is a few dozen control files, so a small file layer
//! ([`fs`]) is simpler and fully testable.

mod bpf;
mod detect;
pub mod devices;
mod fs;
mod io;
mod plan;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
mod v1;
mod v2;
mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use self::bpf::BpfSys;
use self::devices::DeviceRule;
use self::plan::Plan;
use crate::{
    ContainerId, ContainerSpec, Isolator, IsolatorError, LaunchInfo, Limitation, LimitsUpdate,
    Usage, validate_container_id,
};

/// Which cgroup hierarchy the isolator drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Per-controller hierarchies (legacy or hybrid hosts).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// "v1" or "v2".
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// A failed cgroup operation, naming the file or directory it failed on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a cgroup2 mount nor v1 controller hierarchies under the root.
    #[error("no cgroup hierarchy mounted at {root}: neither cgroup2 nor v1 controller directories")]
    NotMounted {
        /// The cgroup root that was probed.
        root: PathBuf,
    },
    /// The agent's own cgroup cannot be determined or does not exist.
    #[error("cannot use the agent's own cgroup ({path}): {reason}")]
    OwnCgroup {
        /// `/proc/self/cgroup` or the own cgroup directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A controller berth needs is not available.
    #[error("cgroup controller {controller:?} is not available (looked at {path})")]
    ControllerMissing {
        /// Controller name.
        controller: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// v2 controllers cannot be enabled in a cgroup that holds processes.
    #[error(
        "cgroup v2: cannot enable cpu/memory/pids for children of {path}: it holds processes (the \
         agent's own cgroup is not a leaf-free cgroup; no-internal-processes rule). Run the agent \
         in the root cgroup, or in a delegated cgroup whose own processes live in a child leaf \
         (e.g. `systemd-run --scope -p Delegate=yes`, then move the agent into <cgroup>/agent and \
         point berth at <cgroup>); berth does not move processes itself"
    )]
    InternalProcess {
        /// The cgroup whose subtree_control could not be written.
        path: PathBuf,
    },
    /// Reading a control file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A control file held something unexpected.
    #[error("cannot parse {path}: unexpected content {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending content.
        content: String,
    },
    /// Writing a control file failed.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating a cgroup failed.
    #[error("cannot create cgroup {path}: {source}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Listing cgroups failed.
    #[error("cannot list cgroups in {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Removing a cgroup failed.
    #[error("cannot remove cgroup {path}: {source}")]
    Rmdir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A cgroup stayed busy (tasks still exiting) through every removal attempt.
    #[error("cgroup {path} still busy after {attempts} removal attempts")]
    RemoveBusy {
        /// The directory.
        path: PathBuf,
        /// Attempts made.
        attempts: u32,
    },
    /// Processes survived every kill round until the removal timeout.
    #[error(
        "processes {pids:?} in cgroup {path} survived SIGKILL for {waited:?} (uninterruptible \
         sleep, or frozen by a freezer nested in the container): the container's cgroups cannot \
         be removed"
    )]
    KillTimeout {
        /// A cgroup still holding them (a nested one if there is one).
        path: PathBuf,
        /// Pids still listed in the container's cgroups.
        pids: Vec<i32>,
        /// How long the kill went on.
        waited: Duration,
    },
    /// The kernel could not reclaim memory down to a lower limit (v1 `EBUSY`).
    #[error(
        "cannot lower the memory limit in {path} to {limit} bytes: the kernel could not reclaim \
         the container's usage below it (EBUSY)"
    )]
    MemoryBusy {
        /// The limit file.
        path: PathBuf,
        /// The limit asked for.
        limit: u64,
    },
    /// A limit the container asked for that this node cannot apply (unknown huge page size, a
    /// device path that is not a device node, ...); the message names the value.
    #[error("{0}")]
    Invalid(String),
    /// The eBPF device filter could not be loaded; the verifier's log says why.
    #[error("cannot load the eBPF device filter for {path}: {source}; verifier log: {log}")]
    BpfLoad {
        /// The container cgroup.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// The verifier's log (level 1).
        log: String,
    },
    /// A `bpf(2)` operation on a cgroup's device filter failed.
    #[error("eBPF device filter of cgroup {path}: {op} failed: {source}")]
    Bpf {
        /// The container cgroup.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The base name is not a single safe path component.
    #[error(
        "invalid cgroup base name {0:?}: must be 1-128 chars of [A-Za-z0-9_.-], not starting with '.'"
    )]
    InvalidBaseName(String),
    /// A limit that cannot be written.
    #[error("invalid {what} limit {value}")]
    InvalidLimit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        value: String,
    },
}

/// The detected hierarchy layout.
#[derive(Debug, Clone)]
enum Layout {
    V1(v1::V1),
    V2(v2::V2),
}

/// Limits containers with cgroups nested under the agent's own cgroup.
#[derive(Debug, Clone)]
pub struct CgroupsIsolator {
    layout: Layout,
    /// The `bpf(2)` seam of the v2 device filter.
    bpf: Arc<dyn BpfSys>,
    /// Bound on kill + removal of one container.
    removal_timeout: Duration,
    /// The device rules of the containers this agent process prepared (for `describe`).
    device_rules: Arc<Mutex<HashMap<String, Vec<DeviceRule>>>>,
}

impl CgroupsIsolator {
    /// Detects the hierarchy from `cgroup_root` (normally /sys/fs/cgroup) and the agent's own
    /// cgroup membership from `proc_self_cgroup` (normally /proc/self/cgroup); all container
    /// cgroups live at `<own cgroup in that hierarchy>/<base_name>/<container id>`. An empty
    /// `base_name` puts them directly under the own cgroup (`berth oci` with a `cgroupsPath`).
    pub fn new(
        cgroup_root: &Path,
        proc_self_cgroup: &Path,
        base_name: &str,
    ) -> Result<Self, CgroupError> {
        if !base_name.is_empty() && validate_container_id(base_name).is_err() {
            return Err(CgroupError::InvalidBaseName(base_name.to_string()));
        }
        let layout = detect::detect(cgroup_root, proc_self_cgroup, base_name)?;
        let iso = CgroupsIsolator {
            layout,
            bpf: Arc::new(bpf::LinuxBpf),
            removal_timeout: Duration::from_secs(10),
            device_rules: Arc::default(),
        };
        info!(version = iso.version().as_str(), bases = ?iso.base_dirs(), "cgroups isolator ready");
        Ok(iso)
    }

    /// Bounds how long `kill_all` keeps killing and `cleanup` keeps retrying removal of one
    /// container before giving up with an error naming the cgroup and its pids (default 10 s).
    pub fn with_removal_timeout(mut self, timeout: Duration) -> Self {
        self.removal_timeout = timeout;
        self
    }

    /// Replaces the `bpf(2)` seam (fixture tests).
    #[cfg(test)]
    fn with_bpf(mut self, bpf: Arc<dyn BpfSys>) -> Self {
        self.bpf = bpf;
        self
    }

    /// Production defaults: ("/sys/fs/cgroup", "/proc/self/cgroup", "berth").
    pub fn detect() -> Result<Self, CgroupError> {
        Self::new(
            Path::new("/sys/fs/cgroup"),
            Path::new("/proc/self/cgroup"),
            "berth",
        )
    }

    /// The hierarchy version in use.
    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V1(_) => CgroupVersion::V1,
            Layout::V2(_) => CgroupVersion::V2,
        }
    }

    /// Paths of the container's cgroup directories (one for v2; one per v1 controller hierarchy
    /// used). Empty for an invalid id (no path is ever built from one).
    pub fn container_paths(&self, id: &str) -> Vec<PathBuf> {
        if validate_container_id(id).is_err() {
            warn!(container_id = id, "invalid container id: no cgroup paths");
            return Vec::new();
        }
        match &self.layout {
            Layout::V1(l) => l.paths(id),
            Layout::V2(l) => l.paths(id),
        }
    }

    /// The `<own>/<base>` directories (one per hierarchy), parents of every container cgroup.
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1(l) => l.bases.clone(),
            Layout::V2(l) => l.base_dirs(),
        }
    }

    /// Ids of containers that have a cgroup under the base in any hierarchy (sorted). Directories
    /// whose names are not valid container ids are not berth's and are ignored.
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut ids = Vec::new();
        for base in self.base_dirs() {
            ids.extend(
                fs::subdirs(&base)?
                    .into_iter()
                    .filter(|n| validate_container_id(n).is_ok()),
            );
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn remove(&self, id: &str, deadline: Instant) -> Result<(), CgroupError> {
        for dir in self.container_paths(id) {
            fs::remove_cgroup(&dir, deadline)?;
        }
        Ok(())
    }

    fn kill_until(&self, id: &str, deadline: Instant) -> Result<(), CgroupError> {
        let _span = tracing::info_span!("cgroups_kill_all", container_id = id).entered();
        match &self.layout {
            Layout::V1(l) => l.kill_all(id, deadline),
            Layout::V2(l) => l.kill_all(id, deadline),
        }
    }
}

/// `own/base`, or `own` itself for an empty base.
fn join_base(own: &Path, base: &str) -> PathBuf {
    if base.is_empty() {
        own.to_path_buf()
    } else {
        own.join(base)
    }
}

/// A cgroup error as the isolator interface reports it: refusals of what the container asked
/// for become [`IsolatorError::Invalid`].
fn isolator_error(e: CgroupError) -> IsolatorError {
    match e {
        CgroupError::Invalid(message) => IsolatorError::Invalid {
            isolator: "cgroups",
            message,
        },
        other => IsolatorError::Cgroup(other),
    }
}

impl Isolator for CgroupsIsolator {
    fn name(&self) -> &'static str {
        "cgroups"
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        validate_container_id(&spec.id)?;
        let _span = tracing::info_span!("cgroups_prepare", container_id = %spec.id).entered();
        let plan = Plan::new(&spec.limits, &spec.options).map_err(isolator_error)?;
        match &self.layout {
            Layout::V1(l) => drop(l.prepare(&spec.id, &plan).map_err(isolator_error)?),
            Layout::V2(l) => drop(
                l.prepare(&spec.id, &plan, self.bpf.as_ref())
                    .map_err(isolator_error)?,
            ),
        }
        self.device_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.id.clone(), plan.devices);
        Ok(LaunchInfo::default())
    }

    fn isolate(&self, id: &ContainerId, pid: i32) -> Result<(), IsolatorError> {
        validate_container_id(id)?;
        match &self.layout {
            Layout::V1(l) => l.isolate(id, pid)?,
            Layout::V2(l) => l.isolate(id, pid)?,
        }
        info!(
            container_id = id,
            pid, "process moved into container cgroups"
        );
        Ok(())
    }

    fn limitation(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        validate_container_id(id)?;
        let limitation = match &self.layout {
            Layout::V1(l) => l.limitation(id)?,
            Layout::V2(l) => l.limitation(id)?,
        };
        if let Some(Limitation::Memory { message }) = &limitation {
            info!(container_id = id, message, "container hit its memory limit");
        }
        Ok(limitation)
    }

    fn usage(&self, id: &ContainerId) -> Result<Usage, IsolatorError> {
        validate_container_id(id)?;
        Ok(match &self.layout {
            Layout::V1(l) => l.usage(id)?,
            Layout::V2(l) => l.usage(id)?,
        })
    }

    fn kill_all(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        validate_container_id(id)?;
        Ok(self.kill_until(id, Instant::now() + self.removal_timeout)?)
    }

    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        validate_container_id(id)?;
        let deadline = Instant::now() + self.removal_timeout;
        self.kill_until(id, deadline)?;
        self.remove(id, deadline)?;
        self.device_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        info!(container_id = id, "container cgroups removed");
        Ok(())
    }

    fn recover(&self, known: &[String]) -> Result<Vec<String>, IsolatorError> {
        // Every orphan is attempted; the first failure is returned after the others were tried.
        let mut cleaned = Vec::new();
        let mut first_error = None;
        for id in self.list()? {
            if known.contains(&id) {
                continue;
            }
            warn!(container_id = %id, "destroying orphaned container cgroups");
            match self.cleanup(&id) {
                Ok(()) => cleaned.push(id),
                Err(e) => {
                    warn!(container_id = %id, error = %e, "orphan cleanup failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(cleaned), Err)
    }

    fn describe(&self, id: &ContainerId) -> serde_json::Value {
        if let Err(e) = validate_container_id(id) {
            return serde_json::json!({ "error": e.to_string() });
        }
        let paths: Vec<String> = self
            .container_paths(id)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let rules: Option<Vec<String>> = self
            .device_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|rules| rules.iter().map(ToString::to_string).collect());
        let (enforcement, kernel_list) = match &self.layout {
            Layout::V1(l) => ("v1 devices controller", l.device_list(id)),
            Layout::V2(_) => ("eBPF cgroup device program", None),
        };
        serde_json::json!({
            "version": self.version(),
            "paths": paths,
            "devices": {
                "enforcement": enforcement,
                "allowed": rules,
                "kernel_list": kernel_list,
            },
        })
    }

    fn update(&self, id: &ContainerId, update: &LimitsUpdate) -> Result<(), IsolatorError> {
        validate_container_id(id)?;
        plan::check_update(update).map_err(isolator_error)?;
        match &self.layout {
            Layout::V1(l) => l.update(id, update)?,
            Layout::V2(l) => l.update(id, update)?,
        }
        Ok(())
    }

    fn check(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        validate_container_id(id)?;
        let limitation = match &self.layout {
            Layout::V1(l) => l.limitation(id)?,
            Layout::V2(l) => l.limitation(id)?,
        };
        if let Some(Limitation::Memory { message }) = &limitation {
            info!(
                container_id = id,
                message, "a process of the running container was OOM-killed"
            );
        }
        Ok(limitation)
    }
}
