//! cgroup v2 (unified hierarchy): one directory per container, `<own>/<base>/<id>`.

use std::path::{Path, PathBuf};

use tracing::{debug, info};

use super::{CgroupError, fs, values};
use crate::{Limitation, Limits, Usage};

/// The controllers berth enables for its containers.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The v2 layout of one agent.
#[derive(Debug, Clone)]
pub(super) struct V2 {
    /// The agent's own cgroup directory.
    own: PathBuf,
    /// Whether `own` is the hierarchy root (exempt from the no-internal-processes rule).
    own_is_root: bool,
    /// `<own>/<base>`: parent of every container cgroup.
    pub(super) base: PathBuf,
}

impl V2 {
    pub(super) fn new(own: PathBuf, own_is_root: bool, base_name: &str) -> Self {
        let base = own.join(base_name);
        V2 {
            own,
            own_is_root,
            base,
        }
    }

    /// `<base>/<id>`; `id` must have been validated.
    pub(super) fn dir(&self, id: &str) -> PathBuf {
        self.base.join(id)
    }

    /// Enables berth's controllers in `cgroup/cgroup.subtree_control` unless already enabled.
    fn enable_controllers(&self, cgroup: &Path, check_procs: bool) -> Result<(), CgroupError> {
        let control = cgroup.join("cgroup.subtree_control");
        let enabled = fs::controllers(&control)?;
        let missing: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !enabled.iter().any(|e| e == c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let internal = || CgroupError::InternalProcess {
            path: cgroup.to_path_buf(),
        };
        if check_procs && !fs::procs(cgroup)?.is_empty() {
            return Err(internal());
        }
        let value = missing
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        match fs::write(&control, &value) {
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) =>
            {
                Err(internal())
            }
            other => other,
        }
    }

    /// Creates `<base>/<id>` (and `<base>`, enabling controllers on the way) with `limits`.
    pub(super) fn prepare(&self, id: &str, limits: &Limits) -> Result<PathBuf, CgroupError> {
        let available_at = self.own.join("cgroup.controllers");
        let available = fs::controllers(&available_at)?;
        for controller in CONTROLLERS {
            if !available.iter().any(|c| c == controller) {
                return Err(CgroupError::ControllerMissing {
                    controller,
                    path: available_at,
                });
            }
        }
        self.enable_controllers(&self.own, !self.own_is_root)?;
        fs::mkdir(&self.base)?;
        self.enable_controllers(&self.base, true)?;
        let dir = self.dir(id);
        fs::mkdir(&dir)?;
        fs::write(
            &dir.join("cpu.max"),
            &format!("{} 100000", values::cpu_quota_us(limits.cpus)),
        )?;
        fs::write(
            &dir.join("cpu.weight"),
            &values::cpu_weight(limits.cpus).to_string(),
        )?;
        fs::write(&dir.join("memory.max"), &limits.mem_bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            fs::write(&swap, "0")?;
        }
        fs::write(&dir.join("pids.max"), &values::pids_max(limits.pids_max))?;
        info!(path = %dir.display(), ?limits, "cgroup v2 prepared");
        Ok(dir)
    }

    pub(super) fn isolate(&self, id: &str, pid: i32) -> Result<(), CgroupError> {
        fs::write(&self.dir(id).join("cgroup.procs"), &pid.to_string())
    }

    pub(super) fn limitation(&self, id: &str) -> Result<Option<Limitation>, CgroupError> {
        let dir = self.dir(id);
        let Some(events) = fs::read_opt(&dir.join("memory.events"))? else {
            return Ok(None);
        };
        let kills = fs::keyed(&events, "oom_kill").unwrap_or(0);
        if kills == 0 {
            return Ok(None);
        }
        let limit = fs::read_opt(&dir.join("memory.max"))?.unwrap_or_default();
        Ok(Some(values::oom_limitation(limit.trim(), kills)))
    }

    pub(super) fn usage(&self, id: &str) -> Result<Usage, CgroupError> {
        let dir = self.dir(id);
        let stat = fs::read(&dir.join("cpu.stat"))?;
        let us = |key| fs::keyed(&stat, key).map(|v| v.saturating_mul(1000));
        Ok(Usage {
            cpu_usage_ns: us("usage_usec").unwrap_or(0),
            cpu_user_ns: us("user_usec"),
            cpu_system_ns: us("system_usec"),
            cpu_throttled_ns: us("throttled_usec"),
            mem_current_bytes: fs::read_u64(&dir.join("memory.current"))?,
            mem_peak_bytes: fs::read_u64_opt(&dir.join("memory.peak"))?,
            pids_current: fs::read_u64(&dir.join("pids.current"))?,

            ..Default::default()
        })
    }

    /// `cgroup.kill` when the kernel has it (5.14+), else SIGKILL rounds under `cgroup.freeze`
    /// (5.2+) when present. A missing cgroup is already dead.
    pub(super) fn kill_all(&self, id: &str) -> Result<(), CgroupError> {
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Ok(());
        }
        let kill = dir.join("cgroup.kill");
        if kill.exists() {
            fs::write(&kill, "1")?;
            debug!(path = %dir.display(), "cgroup.kill written");
        }
        let freeze_file = dir.join("cgroup.freeze");
        let has_freeze = freeze_file.exists();
        let freeze = |on: bool| -> Result<(), CgroupError> {
            if !has_freeze {
                return Ok(());
            }
            fs::write(&freeze_file, if on { "1" } else { "0" })?;
            if on {
                let events = dir.join("cgroup.events");
                fs::wait_for(20, || {
                    fs::read_opt(&events)
                        .ok()
                        .flatten()
                        .and_then(|e| fs::keyed(&e, "frozen"))
                        == Some(1)
                });
            }
            Ok(())
        };
        fs::kill_until_empty(std::slice::from_ref(&dir), &freeze)
    }

    pub(super) fn paths(&self, id: &str) -> Vec<PathBuf> {
        vec![self.dir(id)]
    }

    pub(super) fn base_dirs(&self) -> Vec<PathBuf> {
        vec![self.base.clone()]
    }
}
