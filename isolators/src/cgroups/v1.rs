//! cgroup v1: one directory per used hierarchy, `<own cgroup in that hierarchy>/<base>/<id>`.
//! cpu and cpuacct may be one hierarchy (`cpu,cpuacct`) or two; either way each hierarchy gets one
//! directory.

use std::collections::HashMap;
use std::path::PathBuf;

use tracing::{debug, info};

use super::{CgroupError, fs, values};
use crate::{Limitation, Limits, Usage};

/// The v1 layout of one agent: per used hierarchy, `<own>/<base>`; and which one serves a role.
#[derive(Debug, Clone)]
pub(super) struct V1 {
    /// `<own>/<base>` per distinct hierarchy.
    pub(super) bases: Vec<PathBuf>,
    cpu: usize,
    cpuacct: usize,
    memory: usize,
    pids: usize,
    freezer: Option<usize>,
}

impl V1 {
    /// Controllers used, and whether each is required.
    pub(super) const CONTROLLERS: &'static [(&'static str, bool)] = &[
        ("cpu", true),
        ("cpuacct", true),
        ("memory", true),
        ("pids", true),
        ("freezer", false),
    ];

    /// `roles` must map every required controller to an index of `own_dirs` (detect ensures it).
    pub(super) fn new(
        own_dirs: Vec<PathBuf>,
        roles: &HashMap<&'static str, usize>,
        base_name: &str,
    ) -> Self {
        V1 {
            bases: own_dirs.iter().map(|o| o.join(base_name)).collect(),
            cpu: roles["cpu"],
            cpuacct: roles["cpuacct"],
            memory: roles["memory"],
            pids: roles["pids"],
            freezer: roles.get("freezer").copied(),
        }
    }

    fn dir(&self, idx: usize, id: &str) -> PathBuf {
        self.bases[idx].join(id)
    }

    /// One directory per hierarchy; `id` must have been validated.
    pub(super) fn paths(&self, id: &str) -> Vec<PathBuf> {
        self.bases.iter().map(|b| b.join(id)).collect()
    }

    pub(super) fn prepare(&self, id: &str, limits: &Limits) -> Result<Vec<PathBuf>, CgroupError> {
        for (idx, base) in self.bases.iter().enumerate() {
            fs::mkdir(base)?;
            fs::mkdir(&self.dir(idx, id))?;
        }
        let cpu = self.dir(self.cpu, id);
        fs::write(&cpu.join("cpu.cfs_period_us"), "100000")?;
        fs::write(
            &cpu.join("cpu.cfs_quota_us"),
            &values::cpu_quota_us(limits.cpus).to_string(),
        )?;
        fs::write(
            &cpu.join("cpu.shares"),
            &values::cpu_shares(limits.cpus).to_string(),
        )?;

        let mem = self.dir(self.memory, id);
        let limit = limits.mem_bytes.to_string();
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        let has_memsw = memsw.exists();
        // memsw must stay >= limit: lowering writes limit first, raising writes memsw first.
        match fs::write(&mem.join("memory.limit_in_bytes"), &limit) {
            Err(CgroupError::Write { source, .. })
                if has_memsw && source.raw_os_error() == Some(libc::EINVAL) =>
            {
                fs::write(&memsw, &limit)?;
                fs::write(&mem.join("memory.limit_in_bytes"), &limit)?;
            }
            other => other?,
        }
        if has_memsw {
            fs::write(&memsw, &limit)?;
        }
        fs::write(
            &self.dir(self.pids, id).join("pids.max"),
            &values::pids_max(limits.pids_max),
        )?;
        let paths = self.paths(id);
        info!(?paths, ?limits, "cgroup v1 prepared");
        Ok(paths)
    }

    pub(super) fn isolate(&self, id: &str, pid: i32) -> Result<(), CgroupError> {
        for dir in self.paths(id) {
            fs::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// From the `oom_kill` count of `memory.oom_control` (kernel 4.13+; older kernels report none).
    pub(super) fn limitation(&self, id: &str) -> Result<Option<Limitation>, CgroupError> {
        let dir = self.dir(self.memory, id);
        let Some(control) = fs::read_opt(&dir.join("memory.oom_control"))? else {
            return Ok(None);
        };
        let kills = fs::keyed(&control, "oom_kill").unwrap_or(0);
        if kills == 0 {
            return Ok(None);
        }
        let limit = fs::read_opt(&dir.join("memory.limit_in_bytes"))?.unwrap_or_default();
        Ok(Some(values::oom_limitation(limit.trim(), kills)))
    }

    pub(super) fn usage(&self, id: &str) -> Result<Usage, CgroupError> {
        let acct = self.dir(self.cpuacct, id);
        let stat = fs::read_opt(&acct.join("cpuacct.stat"))?.unwrap_or_default();
        let tick_ns = 1_000_000_000 / values::clock_ticks_per_sec();
        let ticks = |key| fs::keyed(&stat, key).map(|t| t.saturating_mul(tick_ns));
        let cpu_stat = fs::read_opt(&self.dir(self.cpu, id).join("cpu.stat"))?.unwrap_or_default();
        let mem = self.dir(self.memory, id);
        Ok(Usage {
            cpu_usage_ns: fs::read_u64(&acct.join("cpuacct.usage"))?,
            cpu_user_ns: ticks("user"),
            cpu_system_ns: ticks("system"),
            cpu_throttled_ns: fs::keyed(&cpu_stat, "throttled_time"),
            mem_current_bytes: fs::read_u64(&mem.join("memory.usage_in_bytes"))?,
            mem_peak_bytes: fs::read_u64_opt(&mem.join("memory.max_usage_in_bytes"))?,
            pids_current: fs::read_u64(&self.dir(self.pids, id).join("pids.current"))?,

            ..Default::default()
        })
    }

    /// Freeze (if the freezer hierarchy is there), SIGKILL everything, thaw; until empty.
    pub(super) fn kill_all(&self, id: &str) -> Result<(), CgroupError> {
        let dirs: Vec<PathBuf> = self.paths(id).into_iter().filter(|d| d.is_dir()).collect();
        if dirs.is_empty() {
            return Ok(());
        }
        let state = self.freezer.map(|f| self.dir(f, id).join("freezer.state"));
        let state = state.filter(|s| s.exists());
        let freeze = |on: bool| -> Result<(), CgroupError> {
            let Some(state) = &state else { return Ok(()) };
            fs::write(state, if on { "FROZEN" } else { "THAWED" })?;
            if on {
                let frozen = fs::wait_for(20, || {
                    fs::read_opt(state)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.trim() == "FROZEN")
                });
                debug!(path = %state.display(), frozen, "freezer");
            }
            Ok(())
        };
        fs::kill_until_empty(&dirs, &freeze)
    }
}
