//! cgroup v1: one directory per used hierarchy, `<own cgroup in that hierarchy>/<base>/<id>`.
//! cpu and cpuacct may be one hierarchy (`cpu,cpuacct`) or two; either way each hierarchy gets one
//! directory. cpu, cpuacct, memory and pids are required; freezer, devices, blkio, cpuset and
//! hugetlb are used when mounted, and a container that asks for what a missing one provides is
//! refused naming it (the devices allow-list is always asked for).
//!
//! Weaker than v2 where v1 has no equivalent: `memory.high` becomes
//! `memory.soft_limit_in_bytes`, which only steers reclaim under global memory pressure and never
//! throttles; swap is limited through `memory.memsw.limit_in_bytes` (= memory + swap) only when
//! the kernel accounts swap; the io weight needs `blkio.weight` (CFQ) or `blkio.bfq.weight` (BFQ).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info};

use super::plan::{self, Plan};
use super::{CgroupError, fs, io, values};
use crate::{Limitation, LimitsUpdate, Usage};

/// The v1 layout of one agent: per used hierarchy, `<own>/<base>`; and which one serves a role.
#[derive(Debug, Clone)]
pub(super) struct V1 {
    /// The cgroup root (for naming missing controllers).
    root: PathBuf,
    /// `<own>/<base>` per distinct hierarchy.
    pub(super) bases: Vec<PathBuf>,
    /// Controller name → index into `bases`.
    roles: HashMap<&'static str, usize>,
}

impl V1 {
    /// Controllers used, and whether each is required.
    pub(super) const CONTROLLERS: &'static [(&'static str, bool)] = &[
        ("cpu", true),
        ("cpuacct", true),
        ("memory", true),
        ("pids", true),
        ("freezer", false),
        ("devices", false),
        ("blkio", false),
        ("cpuset", false),
        ("hugetlb", false),
    ];

    /// `roles` must map every required controller to an index of `own_dirs` (detect ensures it).
    pub(super) fn new(
        root: &Path,
        own_dirs: Vec<PathBuf>,
        roles: &HashMap<&'static str, usize>,
        base_name: &str,
    ) -> Self {
        V1 {
            root: root.to_path_buf(),
            bases: own_dirs
                .iter()
                .map(|o| super::join_base(o, base_name))
                .collect(),
            roles: roles.clone(),
        }
    }

    /// The container's directory in the hierarchy of `controller`, if mounted.
    fn dir_of(&self, controller: &str, id: &str) -> Option<PathBuf> {
        self.roles.get(controller).map(|&i| self.bases[i].join(id))
    }

    /// The container's directory for a required controller, or for one the container needs.
    fn need(&self, controller: &'static str, id: &str) -> Result<PathBuf, CgroupError> {
        self.dir_of(controller, id)
            .ok_or_else(|| CgroupError::ControllerMissing {
                controller,
                path: self.root.join(controller),
            })
    }

    /// One directory per hierarchy; `id` must have been validated.
    pub(super) fn paths(&self, id: &str) -> Vec<PathBuf> {
        self.bases.iter().map(|b| b.join(id)).collect()
    }

    pub(super) fn prepare(&self, id: &str, plan: &Plan) -> Result<Vec<PathBuf>, CgroupError> {
        let cpuset = self.roles.get("cpuset").copied();
        for (idx, base) in self.bases.iter().enumerate() {
            fs::mkdir(base)?;
            let dir = base.join(id);
            fs::mkdir(&dir)?;
            if Some(idx) == cpuset {
                // A new cpuset cgroup has no cpus and mems: no task could join it.
                inherit_cpuset(base, None, None)?;
                inherit_cpuset(
                    &dir,
                    plan.cpuset_cpus.as_deref(),
                    plan.cpuset_mems.as_deref(),
                )?;
            }
        }
        if plan.needs_cpuset() {
            self.need("cpuset", id)?;
        }

        let cpu = self.need("cpu", id)?;
        fs::write(
            &cpu.join("cpu.cfs_period_us"),
            &values::CPU_PERIOD_US.to_string(),
        )?;
        let quota = plan
            .cpu_quota_us
            .map_or("-1".to_string(), |q| q.to_string());
        fs::write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        fs::write(&cpu.join("cpu.shares"), &plan.cpu_shares.to_string())?;

        let mem = self.need("memory", id)?;
        write_memory(&mem, plan.mem_max, Some(plan.swap))?;
        let soft = plan.mem_high.map_or("-1".to_string(), |h| h.to_string());
        let soft_file = mem.join("memory.soft_limit_in_bytes");
        if plan.mem_high.is_some() || soft_file.exists() {
            fs::write(&soft_file, &soft)?;
        }
        fs::write(
            &self.need("pids", id)?.join("pids.max"),
            &values::pids_max(plan.pids_max),
        )?;

        let devices = self.need("devices", id)?;
        fs::write(&devices.join("devices.deny"), "a")?;
        for rule in &plan.devices {
            fs::write(&devices.join("devices.allow"), &rule.to_string())?;
        }

        if plan.needs_io() {
            self.prepare_blkio(&self.need("blkio", id)?, plan)?;
        }
        if !plan.hugetlb.is_empty() {
            let dir = self.need("hugetlb", id)?;
            for h in &plan.hugetlb {
                let file = dir.join(format!("hugetlb.{}.limit_in_bytes", h.page_size));
                if !file.exists() {
                    return Err(CgroupError::Invalid(format!(
                        "hugetlb page size {:?} is not supported by this kernel (it has {:?})",
                        h.page_size,
                        plan::hugetlb_sizes(&dir, "limit_in_bytes")
                    )));
                }
                fs::write(&file, &h.limit_bytes.to_string())?;
            }
        }
        let paths = self.paths(id);
        info!(?paths, ?plan, "cgroup v1 prepared");
        Ok(paths)
    }

    fn prepare_blkio(&self, dir: &Path, plan: &Plan) -> Result<(), CgroupError> {
        if let Some(weight) = plan.io_weight {
            let file = ["blkio.weight", "blkio.bfq.weight"]
                .into_iter()
                .map(|f| dir.join(f))
                .find(|f| f.exists())
                .ok_or_else(|| {
                    CgroupError::Invalid(format!(
                        "io_weight: cgroup v1 has no blkio.weight or blkio.bfq.weight in {} (no \
                         proportional io scheduler for cgroups on this kernel)",
                        dir.display()
                    ))
                })?;
            fs::write(&file, &io::blkio_weight(weight).to_string())?;
        }
        for limit in &plan.io_max {
            for (name, line) in limit.v1_lines() {
                let file = dir.join(name);
                if !file.exists() {
                    return Err(CgroupError::Invalid(format!(
                        "io_max: {} is missing (kernel without blk-throttle)",
                        file.display()
                    )));
                }
                fs::write(&file, &line)?;
            }
        }
        Ok(())
    }

    pub(super) fn isolate(&self, id: &str, pid: i32) -> Result<(), CgroupError> {
        for dir in self.paths(id) {
            fs::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The `oom_kill` count of `memory.oom_control` (kernel 4.13+; older kernels report none):
    /// one small file read, cheap enough for the periodic check.
    pub(super) fn limitation(&self, id: &str) -> Result<Option<Limitation>, CgroupError> {
        let dir = self.need("memory", id)?;
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
        let acct = self.need("cpuacct", id)?;
        let stat = fs::read_opt(&acct.join("cpuacct.stat"))?.unwrap_or_default();
        let tick_ns = 1_000_000_000 / values::clock_ticks_per_sec();
        let ticks = |key| fs::keyed(&stat, key).map(|t| t.saturating_mul(tick_ns));
        let cpu_stat = fs::read_opt(&self.need("cpu", id)?.join("cpu.stat"))?.unwrap_or_default();
        let mem = self.need("memory", id)?;
        let mem_stat = fs::read_opt(&mem.join("memory.stat"))?.unwrap_or_default();
        let oom = fs::read_opt(&mem.join("memory.oom_control"))?.unwrap_or_default();
        let (io_read, io_write) = match self.dir_of("blkio", id) {
            Some(blkio) => {
                let recursive = blkio.join("blkio.throttle.io_service_bytes_recursive");
                let file = if recursive.exists() {
                    recursive
                } else {
                    blkio.join("blkio.throttle.io_service_bytes")
                };
                match fs::read_opt(&file)? {
                    Some(content) => {
                        let (r, w) = io::blkio_service_bytes(&content);
                        (Some(r), Some(w))
                    }
                    None => (None, None),
                }
            }
            None => (None, None),
        };
        Ok(Usage {
            cpu_usage_ns: fs::read_u64(&acct.join("cpuacct.usage"))?,
            cpu_user_ns: ticks("user"),
            cpu_system_ns: ticks("system"),
            cpu_throttled_ns: fs::keyed(&cpu_stat, "throttled_time"),
            mem_current_bytes: fs::read_u64(&mem.join("memory.usage_in_bytes"))?,
            mem_peak_bytes: fs::read_u64_opt(&mem.join("memory.max_usage_in_bytes"))?,
            pids_current: fs::read_u64(&self.need("pids", id)?.join("pids.current"))?,
            mem_cache_bytes: fs::keyed(&mem_stat, "total_cache"),
            mem_rss_bytes: fs::keyed(&mem_stat, "total_rss"),
            cpu_nr_periods: fs::keyed(&cpu_stat, "nr_periods"),
            cpu_nr_throttled: fs::keyed(&cpu_stat, "nr_throttled"),
            io_read_bytes: io_read,
            io_write_bytes: io_write,
            oom_kills: fs::keyed(&oom, "oom_kill"),
            ..Default::default()
        })
    }

    /// Live update: shares (and the quota when the container has a hard cap, i.e. its
    /// `cpu.cfs_quota_us` is not -1), memory limit (memsw keeps the container's swap allowance),
    /// soft limit, pids.
    pub(super) fn update(&self, id: &str, update: &LimitsUpdate) -> Result<(), CgroupError> {
        if let Some(cpus) = update.cpus {
            let cpu = self.need("cpu", id)?;
            fs::write(
                &cpu.join("cpu.shares"),
                &values::cpu_shares(cpus).to_string(),
            )?;
            let quota = cpu.join("cpu.cfs_quota_us");
            if fs::read(&quota)?.trim() != "-1" {
                fs::write(&quota, &values::cpu_quota_us(cpus).to_string())?;
            }
        }
        let mem = self.need("memory", id)?;
        if let Some(limit) = update.mem_bytes {
            write_memory(&mem, limit, None)?;
        }
        if let Some(high) = update.mem_high_bytes {
            fs::write(&mem.join("memory.soft_limit_in_bytes"), &high.to_string())?;
        }
        if let Some(pids) = update.pids_max {
            fs::write(&self.need("pids", id)?.join("pids.max"), &pids.to_string())?;
        }
        info!(container_id = id, ?update, "cgroup v1 limits updated");
        Ok(())
    }

    /// Freeze (if the freezer hierarchy is there), SIGKILL everything, thaw; until empty or
    /// `deadline`.
    pub(super) fn kill_all(&self, id: &str, deadline: Instant) -> Result<(), CgroupError> {
        let dirs: Vec<PathBuf> = self.paths(id).into_iter().filter(|d| d.is_dir()).collect();
        if dirs.is_empty() {
            return Ok(());
        }
        let state = self.dir_of("freezer", id).map(|f| f.join("freezer.state"));
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
        fs::kill_until_empty(&dirs, &freeze, deadline)
    }

    /// The kernel's view of the allow-list (`devices.list`), if the hierarchy is mounted.
    pub(super) fn device_list(&self, id: &str) -> Option<Vec<String>> {
        let list = fs::read_opt(&self.dir_of("devices", id)?.join("devices.list")).ok()??;
        Some(list.lines().map(str::to_string).collect())
    }
}

/// Copies `cpuset.cpus`/`cpuset.mems` from the parent of `dir` where not given and `dir`'s own
/// is empty (v1 cpusets start empty unless `cgroup.clone_children` is set).
fn inherit_cpuset(dir: &Path, cpus: Option<&str>, mems: Option<&str>) -> Result<(), CgroupError> {
    for (file, given) in [("cpuset.cpus", cpus), ("cpuset.mems", mems)] {
        let path = dir.join(file);
        let value = match given {
            Some(v) => v.to_string(),
            None => {
                if !fs::read_opt(&path)?.unwrap_or_default().trim().is_empty() {
                    continue;
                }
                let parent = dir.parent().unwrap_or(dir).join(file);
                fs::read(&parent)?.trim().to_string()
            }
        };
        fs::write(&path, &value)?;
    }
    Ok(())
}

/// Sets `memory.limit_in_bytes` and, when the kernel accounts swap, `memory.memsw.limit_in_bytes`
/// to limit + swap (`swap` `None` keeps the current allowance, memsw - limit). memsw must never
/// be below the limit: raising writes memsw first, lowering the limit first. `EBUSY` (usage
/// cannot be reclaimed below a lower limit) becomes [`CgroupError::MemoryBusy`].
fn write_memory(dir: &Path, limit: u64, swap: Option<u64>) -> Result<(), CgroupError> {
    let limit_file = dir.join("memory.limit_in_bytes");
    let memsw_file = dir.join("memory.memsw.limit_in_bytes");
    let current = |f: &Path| -> Result<Option<u64>, CgroupError> {
        Ok(fs::read_opt(f)?.and_then(|s| s.trim().parse().ok()))
    };
    let busy = |e: CgroupError| match e {
        CgroupError::Write { path, source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            CgroupError::MemoryBusy { path, limit }
        }
        other => other,
    };
    if !memsw_file.exists() {
        return fs::write(&limit_file, &limit.to_string()).map_err(busy);
    }
    let old_limit = current(&limit_file)?;
    let swap = match swap {
        Some(s) => s,
        None => match (current(&memsw_file)?, old_limit) {
            (Some(sw), Some(l)) => sw.saturating_sub(l),
            _ => 0,
        },
    };
    let memsw = limit.saturating_add(swap).to_string();
    let value = limit.to_string();
    if old_limit.is_some_and(|old| limit > old) {
        fs::write(&memsw_file, &memsw)?;
        fs::write(&limit_file, &value).map_err(busy)?;
    } else {
        fs::write(&limit_file, &value).map_err(busy)?;
        fs::write(&memsw_file, &memsw)?;
    }
    Ok(())
}
