//! The cgroups isolator: cpu, memory and pids limits for each container, on cgroup v2 when
//! `/sys/fs/cgroup` is a cgroup2 mount and on cgroup v1 otherwise (including hybrid hosts, whose
//! `unified` mount carries no controllers).
//!
//! # Layout
//! Container cgroups live at `<own>/<base>/<id>`, where `<own>` is the agent's own cgroup in the
//! hierarchy (from `/proc/self/cgroup`): v2 has one directory per container, v1 one per used
//! hierarchy (cpu, cpuacct, memory, pids, and freezer when mounted; a co-mounted `cpu,cpuacct`
//! counts once). berth only writes to cgroups it created, with one exception on v2: enabling
//! `cpu memory pids` in `<own>/cgroup.subtree_control`. It never moves the agent: on v2, if the
//! agent's own cgroup is not the root and holds processes, the no-internal-processes rule forbids
//! that and [`CgroupError::InternalProcess`] says how to run the agent instead.
//!
//! # Kernel seam
//! All access goes through the paths given to [`CgroupsIsolator::new`], so unit tests run against
//! fixture trees in a tempdir. Writes never create control files (a missing file is a missing
//! controller), so fixture tests pre-create the files the code writes; `cleanup` removes
//! directories only (cgroupfs drops control files by itself), so fixture containers to be removed
//! are bare directories.
//!
//! # Why not `cgroups-rs`
//! The `cgroups-rs` crate was evaluated: its v2 hierarchy is hard-wired to `/sys/fs/cgroup` and its
//! v1 hierarchies are found from `/proc/self/mountinfo`, so it cannot run against fixture trees;
//! its cgroups are placed relative to each hierarchy's root rather than under the caller's own
//! (per-hierarchy, possibly different) cgroup, and it has no notion of the v2 delegation rules
//! berth must respect. What berth needs is a dozen control files, so a small file layer
//! ([`fs`]) is simpler and fully testable.

mod detect;
mod fs;
#[cfg(test)]
mod tests;
mod v1;
mod v2;
mod values;

use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::{info, warn};

use crate::{
    ContainerId, ContainerSpec, Isolator, IsolatorError, LaunchInfo, Limitation, Usage,
    validate_container_id,
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
    /// Processes survived every kill round.
    #[error("processes {pids:?} of cgroup {path} survived SIGKILL")]
    KillTimeout {
        /// The (first) container cgroup.
        path: PathBuf,
        /// Pids still listed.
        pids: Vec<i32>,
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
}

impl CgroupsIsolator {
    /// Detects the hierarchy from `cgroup_root` (normally /sys/fs/cgroup) and the agent's own
    /// cgroup membership from `proc_self_cgroup` (normally /proc/self/cgroup); all container
    /// cgroups live at `<own cgroup in that hierarchy>/<base_name>/<container id>`.
    pub fn new(
        cgroup_root: &Path,
        proc_self_cgroup: &Path,
        base_name: &str,
    ) -> Result<Self, CgroupError> {
        if validate_container_id(base_name).is_err() {
            return Err(CgroupError::InvalidBaseName(base_name.to_string()));
        }
        let layout = detect::detect(cgroup_root, proc_self_cgroup, base_name)?;
        let iso = CgroupsIsolator { layout };
        info!(version = iso.version().as_str(), bases = ?iso.base_dirs(), "cgroups isolator ready");
        Ok(iso)
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

    fn remove(&self, id: &str) -> Result<(), CgroupError> {
        for dir in self.container_paths(id) {
            fs::remove_cgroup(&dir)?;
        }
        Ok(())
    }
}

fn check_limits(spec: &ContainerSpec) -> Result<(), CgroupError> {
    let l = &spec.limits;
    if !(l.cpus.is_finite() && l.cpus > 0.0) {
        return Err(CgroupError::InvalidLimit {
            what: "cpus",
            value: l.cpus.to_string(),
        });
    }
    if l.mem_bytes == 0 {
        return Err(CgroupError::InvalidLimit {
            what: "memory",
            value: "0".into(),
        });
    }
    Ok(())
}

impl Isolator for CgroupsIsolator {
    fn name(&self) -> &'static str {
        "cgroups"
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        validate_container_id(&spec.id)?;
        check_limits(spec)?;
        let _span = tracing::info_span!("cgroups_prepare", container_id = %spec.id).entered();
        match &self.layout {
            Layout::V1(l) => drop(l.prepare(&spec.id, &spec.limits)?),
            Layout::V2(l) => drop(l.prepare(&spec.id, &spec.limits)?),
        }
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
        let _span = tracing::info_span!("cgroups_kill_all", container_id = id).entered();
        match &self.layout {
            Layout::V1(l) => l.kill_all(id)?,
            Layout::V2(l) => l.kill_all(id)?,
        }
        Ok(())
    }

    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        validate_container_id(id)?;
        self.kill_all(id)?;
        self.remove(id)?;
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
        serde_json::json!({ "version": self.version(), "paths": paths })
    }
}
