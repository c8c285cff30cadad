//! The disk isolator: a per-sandbox disk limit (Mesos `posix/disk` and `xfs/disk`), for
//! containers whose [`Limits::disk_bytes`](crate::Limits::disk_bytes) is set.
//!
//! # Two modes
//! - **Quota** ([`DiskMode::Quota`]), when the filesystem holding the sandbox accounts and
//!   enforces project quota (ext4 with the `project,quota` features mounted `prjquota`, or xfs
//!   mounted `prjquota`): `prepare` allocates a project id from [`DiskOptions::project_ids`] that
//!   no tracked container holds and that has neither usage nor a limit on the filesystem, sets it
//!   (with `FS_XFLAG_PROJINHERIT` on directories) on the sandbox and everything already in it, and
//!   sets the project's hard block limit to the container's limit (rounded up to 1 KiB). The
//!   kernel then refuses writes past the limit with `EDQUOT` ("Disk quota exceeded"; xfs says
//!   `ENOSPC` for project quotas); usage comes from `Q_GETQUOTA`, which is cheap, so it is read on
//!   every call.
//! - **Accounting** ([`DiskMode::Accounting`]) everywhere else: the sandbox is walked like
//!   `du -sx` ([`disk_usage`]) at most once per [`DiskOptions::check_interval`] (the result is
//!   cached between walks), and [`Isolator::check`] reports a [`Limitation::Disk`] once usage is
//!   over the limit, which makes the containerizer kill the container (`posix/disk` with
//!   `--enforce_container_disk_quota`).
//!
//! # When a quota-mode container is ended
//! Mesos's `xfs/disk` can kill a container over a soft limit (`--xfs_kill_containers`). berth sets
//! soft = hard = the limit and keeps the container alive while the kernel enforces the limit: the
//! workload sees `EDQUOT` and may recover (delete files). `check` reports a limitation only when
//! the project is *at* its hard limit. The kernel never lets usage pass the hard limit, and a
//! write that would cross it fails whole pages (whole folios on kernels with large folios) short
//! of it, so "at" means less than [`quota_room`] is left (1/16 of the limit, between 4 and
//! 64 KiB). A heuristic: a workload failing a write of a large folio may leave more room than that
//! and then lives on with `EDQUOT` (the kernel still enforces the limit). A workload that hits the
//! quota and exits by itself before the next check ends with its own exit status (its stderr says
//! "Disk quota exceeded"); [`Isolator::limitation`] reports nothing for disk, because a limitation
//! overrides a successful exit.
//!
//! Root with `CAP_SYS_RESOURCE` is exempt from quota limits: a container given that capability
//! can write past the hard limit, and is then ended by `check` (usage over the limit) as in
//! accounting mode.
//!
//! # `enforce`
//! With [`DiskOptions::enforce`] off (Mesos `--enforce_container_disk_quota=false`) usage is only
//! measured: no limitation is ever reported and, in quota mode, the project id is set but no kernel
//! limit (so usage still comes from the kernel).
//!
//! # State and recovery
//! Each limited container has a record `<state_dir>/<id>.json` (sandbox, limit, mode, project id),
//! written before any kernel change and removed by `cleanup` after the project id and limit are
//! cleared. The project id is also on the sandbox directory itself (`FS_IOC_FSGETXATTR`), which
//! `recover` compares with the record. `recover` re-registers the records of known containers
//! (`prepare` is not run again) and releases the others. Put `state_dir` on persistent storage
//! (under the work dir): project ids and limits live on disk and outlive a reboot.
//!
//! `cleanup` clears the limit and resets the project id of the sandbox and everything in it to 0
//! (the sandbox itself is kept for its logs), so the id can be reused without inheriting usage.

mod du;
mod quota;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tracing::{debug, info, warn};

pub use self::du::{WalkError, disk_usage};
use self::quota::{KernelQuota, ProjectQuota, ProjectUsage, QUOTA_BLOCK, set_project_tree};
pub use self::state::DiskMode;
use self::state::{Record, allocate_project_id};
use crate::{
    ContainerId, ContainerSpec, Isolator, IsolatorError, LaunchInfo, Limitation, Usage,
    validate_container_id,
};

/// Mesos's `--container_disk_watch_interval` default.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// The project ids berth uses by default.
pub const DEFAULT_PROJECT_IDS: RangeInclusive<u32> = 5000..=9999;

/// How the disk isolator works.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Where the per-container records are kept; should survive reboots (under the work dir).
    pub state_dir: PathBuf,
    /// The shortest time between two walks of a sandbox in accounting mode.
    pub check_interval: Duration,
    /// Report (and, in quota mode, let the kernel enforce) the limit; off = measure only.
    pub enforce: bool,
    /// Project ids this isolator may allocate (none may be 0).
    pub project_ids: RangeInclusive<u32>,
    /// Use project quota where the filesystem supports it; off = always accounting.
    pub use_project_quota: bool,
    /// The proc root (`/proc`): block device lookup on kernels without `quotactl_fd`.
    pub proc_root: PathBuf,
}

impl DiskOptions {
    /// The defaults (15 s interval, enforcing, ids 5000-9999, quota where supported) with
    /// records in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> DiskOptions {
        DiskOptions {
            state_dir: state_dir.into(),
            check_interval: DEFAULT_CHECK_INTERVAL,
            enforce: true,
            project_ids: DEFAULT_PROJECT_IDS,
            use_project_quota: true,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// A failed disk isolator operation, naming its object (the OS error is the `source`).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Creating or listing the state directory failed.
    #[error("state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Reading, writing or removing a container's record failed.
    #[error("disk record of container {container_id} in {path}")]
    Record {
        /// The container.
        container_id: String,
        /// The state directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Walking a sandbox failed.
    #[error("walking the sandbox: {0}")]
    Walk(#[from] WalkError),
    /// A `quotactl` command failed.
    #[error("{op} of project {project_id} on the filesystem of {path}")]
    Quota {
        /// The command.
        op: &'static str,
        /// The project id.
        project_id: u32,
        /// The sandbox.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Setting (or reading) the project id of the sandbox directory failed.
    #[error("setting project id {project_id} on {path}")]
    Project {
        /// The project id.
        project_id: u32,
        /// The sandbox.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Every project id of the range is in use.
    #[error("no free project id in {first}-{last} on the filesystem of {path}")]
    NoFreeProjectId {
        /// First id of the range.
        first: u32,
        /// Last id of the range.
        last: u32,
        /// The sandbox.
        path: PathBuf,
    },
}

impl From<DiskError> for IsolatorError {
    fn from(err: DiskError) -> Self {
        let what = err.to_string();
        let source = match err {
            DiskError::StateDir { source, .. } | DiskError::Record { source, .. } => source,
            DiskError::Walk(walk) => walk.errno().into(),
            DiskError::Quota { source, .. } | DiskError::Project { source, .. } => source.into(),
            DiskError::NoFreeProjectId { .. } => {
                return IsolatorError::Invalid {
                    isolator: "disk",
                    message: what,
                };
            }
        };
        IsolatorError::Io {
            isolator: "disk",
            what,
            source,
        }
    }
}

/// The last walk of an accounting-mode sandbox.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When the walk was attempted.
    at: Instant,
    /// The usage of the last walk that succeeded.
    used_bytes: Option<u64>,
}

/// A limited container.
#[derive(Debug)]
struct Tracked {
    record: Record,
    /// Accounting mode: the cached walk (the lock also serialises walks of one sandbox).
    sample: Mutex<Option<Sample>>,
}

impl Tracked {
    fn new(record: Record) -> Tracked {
        Tracked {
            record,
            sample: Mutex::new(None),
        }
    }
}

/// Whether a sandbox last walked at `last` must be walked again at `now`.
fn needs_walk(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    match last {
        None => true,
        Some(at) => now.saturating_duration_since(at) >= interval,
    }
}

/// The room under which a project quota of `limit_bytes` counts as reached: 1/16 of the limit,
/// at least 4 KiB (a page), at most 64 KiB.
pub fn quota_room(limit_bytes: u64) -> u64 {
    (limit_bytes / 16).clamp(4096, 64 * 1024)
}

/// Whether a project quota of `limit_bytes` (rounded up to 1 KiB by the kernel) is reached: less
/// than [`quota_room`] left.
fn quota_reached(used_bytes: u64, limit_bytes: u64) -> bool {
    let kernel_limit = limit_bytes.div_ceil(QUOTA_BLOCK) * QUOTA_BLOCK;
    used_bytes.saturating_add(quota_room(limit_bytes)) > kernel_limit
}

/// `n` bytes for people: "512 B", "10 MiB" when exact, else one decimal ("12.3 MiB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut div: u64 = 1;
    while unit + 1 < UNITS.len() && n / div >= 1024 {
        div *= 1024;
        unit += 1;
    }
    if n.is_multiple_of(div) {
        return format!("{} {}", n / div, UNITS[unit]);
    }
    let tenths = (u128::from(n) * 10 + u128::from(div) / 2) / u128::from(div);
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// The message of an accounting-mode limitation.
fn over_limit_message(used: u64, limit: u64, sandbox: &Path) -> String {
    format!(
        "disk usage {} exceeds the {} limit of the sandbox {}",
        human_bytes(used),
        human_bytes(limit),
        sandbox.display()
    )
}

/// The message of a quota-mode limitation.
fn quota_reached_message(used: u64, limit: u64, sandbox: &Path) -> String {
    format!(
        "disk usage {} reached the {} quota of the sandbox {} (writes fail: disk quota exceeded)",
        human_bytes(used),
        human_bytes(limit),
        sandbox.display()
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Limits the disk space of container sandboxes (see the module docs).
pub struct DiskIsolator {
    opts: DiskOptions,
    quota: Arc<dyn ProjectQuota>,
    containers: Mutex<HashMap<String, Arc<Tracked>>>,
}

impl std::fmt::Debug for DiskIsolator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskIsolator")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl DiskIsolator {
    /// Creates the isolator; creates `opts.state_dir`. Fails on an empty project id range or one
    /// containing 0.
    pub fn new(opts: DiskOptions) -> Result<DiskIsolator, IsolatorError> {
        let quota = Arc::new(KernelQuota {
            proc_root: opts.proc_root.clone(),
        });
        Self::with_quota(opts, quota)
    }

    /// [`DiskIsolator::new`] with another project quota implementation (tests).
    pub(crate) fn with_quota(
        opts: DiskOptions,
        quota: Arc<dyn ProjectQuota>,
    ) -> Result<DiskIsolator, IsolatorError> {
        let ids = &opts.project_ids;
        if ids.is_empty() || *ids.start() == 0 {
            return Err(IsolatorError::Invalid {
                isolator: "disk",
                message: format!(
                    "project id range {}-{} must be non-empty and not include 0",
                    ids.start(),
                    ids.end()
                ),
            });
        }
        std::fs::create_dir_all(&opts.state_dir).map_err(|source| DiskError::StateDir {
            path: opts.state_dir.clone(),
            source,
        })?;
        Ok(DiskIsolator {
            opts,
            quota,
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// How the limit of container `id` is enforced; `None` when it has no disk limit.
    pub fn mode(&self, id: &ContainerId) -> Option<DiskMode> {
        self.tracked(id).map(|t| t.record.mode)
    }

    /// The project id of container `id` (quota mode).
    pub fn project_id(&self, id: &ContainerId) -> Option<u32> {
        self.tracked(id).and_then(|t| t.record.project_id)
    }

    fn tracked(&self, id: &str) -> Option<Arc<Tracked>> {
        lock(&self.containers).get(id).cloned()
    }

    fn record_error(&self, id: &str, source: std::io::Error) -> DiskError {
        DiskError::Record {
            container_id: id.to_string(),
            path: self.opts.state_dir.clone(),
            source,
        }
    }

    /// Quota where the sandbox's filesystem enforces project quota (and it is wanted).
    fn choose_mode(&self, sandbox: &Path) -> DiskMode {
        if !self.opts.use_project_quota {
            return DiskMode::Accounting;
        }
        match self.quota.supported(sandbox) {
            Ok(true) => DiskMode::Quota,
            Ok(false) => DiskMode::Accounting,
            Err(error) => {
                warn!(path = %sandbox.display(), %error, "project quota probe failed; accounting");
                DiskMode::Accounting
            }
        }
    }

    /// Allocates a project id and registers (and persists) the container, before any kernel
    /// change, so that recovery can always undo what follows.
    fn register_quota(&self, spec: &ContainerSpec, limit: u64) -> Result<Arc<Tracked>, DiskError> {
        let sandbox = &spec.sandbox;
        let mut containers = lock(&self.containers);
        let taken: HashSet<u32> = containers
            .values()
            .filter_map(|t| t.record.project_id)
            .collect();
        let project_id = allocate_project_id(self.opts.project_ids.clone(), &taken, |pid| {
            self.quota
                .get(sandbox, pid)
                .map(|usage| usage == ProjectUsage::default())
                .map_err(|source| DiskError::Quota {
                    op: "Q_GETQUOTA",
                    project_id: pid,
                    path: sandbox.clone(),
                    source,
                })
        })?
        .ok_or_else(|| DiskError::NoFreeProjectId {
            first: *self.opts.project_ids.start(),
            last: *self.opts.project_ids.end(),
            path: sandbox.clone(),
        })?;
        let record = Record {
            container_id: spec.id.clone(),
            sandbox: sandbox.clone(),
            limit_bytes: limit,
            mode: DiskMode::Quota,
            project_id: Some(project_id),
            kernel_limit: self.opts.enforce,
        };
        state::write_record(&self.opts.state_dir, &record)
            .map_err(|e| self.record_error(&spec.id, e))?;
        let tracked = Arc::new(Tracked::new(record));
        containers.insert(spec.id.clone(), tracked.clone());
        Ok(tracked)
    }

    /// Puts the sandbox tree into its project and sets the limit.
    fn apply_quota(&self, record: &Record) -> Result<(), DiskError> {
        let project_id = record.project_id.unwrap_or(0);
        let outcome = set_project_tree(self.quota.as_ref(), &record.sandbox, project_id)?;
        if let Some(source) = outcome.root_error {
            return Err(DiskError::Project {
                project_id,
                path: record.sandbox.clone(),
                source,
            });
        }
        if let Some((name, error)) = &outcome.first_error {
            warn!(
                container_id = %record.container_id, failed = outcome.failed, first = %name,
                %error, "some sandbox entries keep their project id (not counted)"
            );
        }
        if record.kernel_limit {
            self.quota
                .set_limit(&record.sandbox, project_id, record.limit_bytes)
                .map_err(|source| DiskError::Quota {
                    op: "Q_SETQUOTA",
                    project_id,
                    path: record.sandbox.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Undoes what `prepare` did for `record` and forgets it: clears the limit, resets the
    /// project id of the sandbox tree (if the sandbox still exists), removes the record.
    fn release(&self, record: &Record) -> Result<(), DiskError> {
        if let (DiskMode::Quota, Some(project_id)) = (record.mode, record.project_id) {
            self.quota
                .set_limit(&record.sandbox, project_id, 0)
                .map_err(|source| DiskError::Quota {
                    op: "Q_SETQUOTA",
                    project_id,
                    path: record.sandbox.clone(),
                    source,
                })?;
            if record.sandbox.exists() {
                let outcome = set_project_tree(self.quota.as_ref(), &record.sandbox, 0)?;
                if let Some(source) = outcome.root_error {
                    return Err(DiskError::Project {
                        project_id: 0,
                        path: record.sandbox.clone(),
                        source,
                    });
                }
                if let Some((name, error)) = &outcome.first_error {
                    warn!(
                        container_id = %record.container_id, project_id, failed = outcome.failed,
                        first = %name, %error,
                        "some sandbox entries keep the project id; it stays unused while they exist"
                    );
                }
            }
        }
        state::remove_record(&self.opts.state_dir, &record.container_id)
            .map_err(|e| self.record_error(&record.container_id, e))
    }

    /// Accounting-mode usage: the cached walk, walking again when it is older than the interval.
    /// `None` until a walk has succeeded.
    fn walked_usage(&self, tracked: &Tracked) -> Result<Option<u64>, DiskError> {
        let mut sample = lock(&tracked.sample);
        let now = Instant::now();
        if !needs_walk(sample.map(|s| s.at), now, self.opts.check_interval) {
            return Ok(sample.and_then(|s| s.used_bytes));
        }
        let previous = sample.and_then(|s| s.used_bytes);
        let started = Instant::now();
        match disk_usage(&tracked.record.sandbox) {
            Ok(used) => {
                *sample = Some(Sample {
                    at: now,
                    used_bytes: Some(used),
                });
                debug!(
                    container_id = %tracked.record.container_id, used_bytes = used,
                    took_ms = started.elapsed().as_millis() as u64, "sandbox walked"
                );
                Ok(Some(used))
            }
            Err(error) => {
                // Rate-limit failing walks too; keep the last good value.
                *sample = Some(Sample {
                    at: now,
                    used_bytes: previous,
                });
                Err(error.into())
            }
        }
    }

    /// Quota-mode usage from the kernel.
    fn quota_usage(&self, record: &Record) -> Result<ProjectUsage, DiskError> {
        let project_id = record.project_id.unwrap_or(0);
        self.quota
            .get(&record.sandbox, project_id)
            .map_err(|source| DiskError::Quota {
                op: "Q_GETQUOTA",
                project_id,
                path: record.sandbox.clone(),
                source,
            })
    }

    /// The current usage of a tracked container (`None` = not measured yet).
    fn used_bytes(&self, tracked: &Tracked) -> Result<Option<u64>, DiskError> {
        match tracked.record.mode {
            DiskMode::Accounting => self.walked_usage(tracked),
            DiskMode::Quota => Ok(Some(self.quota_usage(&tracked.record)?.used_bytes)),
        }
    }

    /// Compares the project id on a recovered sandbox with its record.
    fn verify_project(&self, record: &Record) {
        let Some(expected) = record.project_id else {
            return;
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let found = nix::fcntl::open(&record.sandbox, flags, Mode::empty())
            .and_then(|fd| self.quota.project_of(std::os::fd::AsFd::as_fd(&fd)));
        match found {
            Ok(found) if found == expected => {}
            Ok(found) => warn!(
                container_id = %record.container_id, expected, found,
                path = %record.sandbox.display(), "sandbox project id differs from the record"
            ),
            Err(error) => warn!(
                container_id = %record.container_id, path = %record.sandbox.display(), %error,
                "cannot read the sandbox project id"
            ),
        }
    }
}

impl Isolator for DiskIsolator {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        validate_container_id(&spec.id)?;
        let Some(limit) = spec.limits.disk_bytes else {
            return Ok(LaunchInfo::default());
        };
        let invalid = |message: String| IsolatorError::Invalid {
            isolator: "disk",
            message,
        };
        if limit == 0 {
            return Err(invalid("disk limit of 0 bytes: must be positive".into()));
        }
        if self.tracked(&spec.id).is_some() {
            return Err(invalid(format!(
                "container {} is already prepared",
                spec.id
            )));
        }
        let mode = self.choose_mode(&spec.sandbox);
        let tracked = match mode {
            DiskMode::Accounting => {
                let record = Record {
                    container_id: spec.id.clone(),
                    sandbox: spec.sandbox.clone(),
                    limit_bytes: limit,
                    mode,
                    project_id: None,
                    kernel_limit: false,
                };
                state::write_record(&self.opts.state_dir, &record)
                    .map_err(|e| self.record_error(&spec.id, e))?;
                let tracked = Arc::new(Tracked::new(record));
                lock(&self.containers).insert(spec.id.clone(), tracked.clone());
                tracked
            }
            DiskMode::Quota => {
                let tracked = self.register_quota(spec, limit)?;
                if let Err(err) = self.apply_quota(&tracked.record) {
                    lock(&self.containers).remove(&spec.id);
                    if let Err(undo) = self.release(&tracked.record) {
                        warn!(container_id = %spec.id, error = %undo, "undoing a failed prepare");
                    }
                    return Err(err.into());
                }
                tracked
            }
        };
        info!(
            container_id = %spec.id, mode = mode.as_str(), project_id = ?tracked.record.project_id,
            limit_bytes = limit, path = %spec.sandbox.display(), "disk limit set up"
        );
        Ok(LaunchInfo::default())
    }

    fn usage(&self, id: &ContainerId) -> Result<Usage, IsolatorError> {
        let Some(tracked) = self.tracked(id) else {
            return Ok(Usage::default());
        };
        Ok(Usage {
            disk_used_bytes: self.used_bytes(&tracked)?,
            disk_limit_bytes: Some(tracked.record.limit_bytes),
            ..Default::default()
        })
    }

    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        validate_container_id(id)?;
        let tracked = lock(&self.containers).remove(id);
        let record = match tracked {
            Some(tracked) => tracked.record.clone(),
            None => match state::read_record(&self.opts.state_dir, id) {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.record_error(id, e).into()),
            },
        };
        self.release(&record)?;
        info!(container_id = %id, project_id = ?record.project_id, "disk limit released");
        Ok(())
    }

    fn recover(&self, known: &[String]) -> Result<Vec<String>, IsolatorError> {
        let state_dir = &self.opts.state_dir;
        lock(&self.containers).retain(|id, _| known.contains(id));
        let ids = state::list_records(state_dir).map_err(|source| DiskError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let mut cleaned = Vec::new();
        for id in ids {
            let record = match state::read_record(state_dir, &id) {
                Ok(Some(record)) if record.container_id == id => record,
                Ok(Some(_)) | Ok(None) | Err(_) => {
                    warn!(container_id = %id, path = %state_dir.display(), "unreadable disk record");
                    continue;
                }
            };
            if known.contains(&id) {
                if record.mode == DiskMode::Quota {
                    self.verify_project(&record);
                }
                lock(&self.containers)
                    .entry(id)
                    .or_insert_with(|| Arc::new(Tracked::new(record)));
                continue;
            }
            match self.release(&record) {
                Ok(()) => {
                    info!(container_id = %id, "released the disk limit of an unknown container");
                    cleaned.push(id);
                }
                Err(error) => {
                    warn!(container_id = %id, %error, "cannot release an unknown container's disk limit")
                }
            }
        }
        Ok(cleaned)
    }

    fn describe(&self, id: &ContainerId) -> serde_json::Value {
        let Some(tracked) = self.tracked(id) else {
            return serde_json::Value::Null;
        };
        let record = &tracked.record;
        serde_json::json!({
            "mode": record.mode.as_str(),
            "project_id": record.project_id,
            "limit_bytes": record.limit_bytes,
            "kernel_limit": record.kernel_limit,
            "enforce": self.opts.enforce,
            "sandbox": record.sandbox.display().to_string(),
        })
    }

    fn check(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError> {
        if !self.opts.enforce {
            return Ok(None);
        }
        let Some(tracked) = self.tracked(id) else {
            return Ok(None);
        };
        let record = &tracked.record;
        let Some(used) = self.used_bytes(&tracked)? else {
            return Ok(None);
        };
        let message = if record.kernel_limit {
            quota_reached(used, record.limit_bytes)
                .then(|| quota_reached_message(used, record.limit_bytes, &record.sandbox))
        } else {
            (used > record.limit_bytes)
                .then(|| over_limit_message(used, record.limit_bytes, &record.sandbox))
        };
        Ok(message.map(|message| {
            warn!(container_id = %id, used_bytes = used, limit_bytes = record.limit_bytes, "disk limit reached");
            Limitation::Disk { message }
        }))
    }
}
