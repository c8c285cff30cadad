//! cgroup v2 (unified hierarchy): one directory per container, `<own>/<base>/<id>`.
//!
//! Controllers: cpu, memory and pids always (required); io whenever the parent offers it (for the
//! io byte counters), and required when the container asks for an io limit; cpuset and hugetlb
//! only when the container asks for them. Each is enabled in `cgroup.subtree_control` of the
//! agent's own cgroup and of the base, as needed. Devices are filtered by an eBPF program
//! ([`super::bpf`]) attached to the container's cgroup.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::bpf::{self, BpfSys};
use super::plan::{self, Plan};
use super::{CgroupError, fs, io, values};
use crate::{Limitation, LimitsUpdate, Usage};

/// The controllers every container needs.
const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];

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
        let base = super::join_base(&own, base_name);
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

    /// Enables `required` and, where `cgroup` offers them, `optional` controllers in
    /// `cgroup/cgroup.subtree_control` where not yet enabled. Only a missing required controller
    /// is an error; optional ones are skipped when they cannot be enabled (e.g. the agent's own
    /// cgroup holds processes).
    fn enable_controllers(
        &self,
        cgroup: &Path,
        required: &[&'static str],
        optional: &[&'static str],
        check_procs: bool,
    ) -> Result<(), CgroupError> {
        let control = cgroup.join("cgroup.subtree_control");
        let enabled = fs::controllers(&control)?;
        let offered = fs::read_opt(&cgroup.join("cgroup.controllers"))?;
        let offers = |c: &str| {
            offered
                .as_deref()
                .is_none_or(|o| o.split_whitespace().any(|a| a == c))
        };
        let is_missing = |c: &&'static str| !enabled.iter().any(|e| e == c);
        let missing_required: Vec<&str> = required.iter().copied().filter(is_missing).collect();
        let missing_optional: Vec<&str> = optional
            .iter()
            .copied()
            .filter(is_missing)
            .filter(|c| offers(c))
            .collect();
        if missing_required.is_empty() && missing_optional.is_empty() {
            return Ok(());
        }
        let internal = || CgroupError::InternalProcess {
            path: cgroup.to_path_buf(),
        };
        if check_procs && !fs::procs(cgroup)?.is_empty() {
            if missing_required.is_empty() {
                debug!(path = %cgroup.display(), ?missing_optional, "holds processes: optional controllers left off");
                return Ok(());
            }
            return Err(internal());
        }
        let value = missing_required
            .iter()
            .chain(&missing_optional)
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        match fs::write(&control, &value) {
            Ok(()) => Ok(()),
            Err(e) if missing_required.is_empty() => {
                warn!(path = %cgroup.display(), error = %e, "optional controllers not enabled");
                Ok(())
            }
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) =>
            {
                Err(internal())
            }
            Err(e) => Err(e),
        }
    }

    /// The controllers a container with `plan` needs, and those it gets when offered (io, for
    /// the byte counters); a needed one that the agent's own cgroup does not offer is an error.
    fn controllers_for(
        &self,
        plan: &Plan,
    ) -> Result<(Vec<&'static str>, Vec<&'static str>), CgroupError> {
        let available_at = self.own.join("cgroup.controllers");
        let available = fs::controllers(&available_at)?;
        let has = |c: &str| available.iter().any(|a| a == c);
        let mut required: Vec<&'static str> = REQUIRED.to_vec();
        if plan.needs_io() {
            required.push("io");
        }
        if plan.needs_cpuset() {
            required.push("cpuset");
        }
        if !plan.hugetlb.is_empty() {
            required.push("hugetlb");
        }
        if let Some(controller) = required.iter().find(|c| !has(c)) {
            return Err(CgroupError::ControllerMissing {
                controller,
                path: available_at,
            });
        }
        let optional = if required.contains(&"io") {
            vec![]
        } else {
            vec!["io"]
        };
        Ok((required, optional))
    }

    /// Creates `<base>/<id>` (and `<base>`, enabling controllers on the way) with `plan`'s
    /// limits, and attaches the device filter through `bpf`.
    pub(super) fn prepare(
        &self,
        id: &str,
        plan: &Plan,
        bpf: &dyn BpfSys,
    ) -> Result<PathBuf, CgroupError> {
        let (required, optional) = self.controllers_for(plan)?;
        self.enable_controllers(&self.own, &required, &optional, !self.own_is_root)?;
        fs::mkdir(&self.base)?;
        self.enable_controllers(&self.base, &required, &optional, true)?;
        let dir = self.dir(id);
        fs::mkdir(&dir)?;

        fs::write(&dir.join("cpu.weight"), &plan.cpu_weight.to_string())?;
        let quota = plan
            .cpu_quota_us
            .map_or("max".to_string(), |q| q.to_string());
        fs::write(
            &dir.join("cpu.max"),
            &format!("{quota} {}", values::CPU_PERIOD_US),
        )?;

        fs::write(&dir.join("memory.max"), &plan.mem_max.to_string())?;
        let high = plan.mem_high.map_or("max".to_string(), |h| h.to_string());
        let high_file = dir.join("memory.high");
        if plan.mem_high.is_some() || high_file.exists() {
            fs::write(&high_file, &high)?;
        }
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            fs::write(&swap, &plan.swap.to_string())?;
        } else if plan.swap > 0 {
            warn!(path = %dir.display(), "no memory.swap.max (swap not accounted): swap limit not applied");
        }
        fs::write(&dir.join("pids.max"), &values::pids_max(plan.pids_max))?;

        if let Some(cpus) = &plan.cpuset_cpus {
            fs::write(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &plan.cpuset_mems {
            fs::write(&dir.join("cpuset.mems"), mems)?;
        }
        if let Some(weight) = plan.io_weight {
            let file = dir.join("io.weight");
            if !file.exists() {
                return Err(CgroupError::Invalid(format!(
                    "io_weight: {} is missing (kernel without the io cost controller)",
                    file.display()
                )));
            }
            fs::write(&file, &format!("default {weight}"))?;
        }
        for limit in &plan.io_max {
            fs::write(&dir.join("io.max"), &limit.v2_line())?;
        }
        for h in &plan.hugetlb {
            let file = dir.join(format!("hugetlb.{}.max", h.page_size));
            if !file.exists() {
                return Err(CgroupError::Invalid(format!(
                    "hugetlb page size {:?} is not supported by this kernel (it has {:?})",
                    h.page_size,
                    plan::hugetlb_sizes(&dir, "max")
                )));
            }
            fs::write(&file, &h.limit_bytes.to_string())?;
        }
        bpf::install(bpf, &dir, &plan.devices)?;
        info!(path = %dir.display(), ?plan, "cgroup v2 prepared");
        Ok(dir)
    }

    pub(super) fn isolate(&self, id: &str, pid: i32) -> Result<(), CgroupError> {
        fs::write(&self.dir(id).join("cgroup.procs"), &pid.to_string())
    }

    /// The `oom_kill` count of `memory.events`: one small file read, cheap enough for the
    /// periodic check. `memory.events` is hierarchical (it counts kills in cgroups nested in the
    /// container too), unlike `memory.events.local`; with the `memory_localevents` mount option
    /// the kernel makes it local, which for berth's leaf cgroups is the same.
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
        let mem_stat = fs::read_opt(&dir.join("memory.stat"))?.unwrap_or_default();
        let events = fs::read_opt(&dir.join("memory.events"))?.unwrap_or_default();
        let io_bytes = fs::read_opt(&dir.join("io.stat"))?.map(|s| io::io_stat_bytes(&s));
        Ok(Usage {
            cpu_usage_ns: us("usage_usec").unwrap_or(0),
            cpu_user_ns: us("user_usec"),
            cpu_system_ns: us("system_usec"),
            cpu_throttled_ns: us("throttled_usec"),
            mem_current_bytes: fs::read_u64(&dir.join("memory.current"))?,
            mem_peak_bytes: fs::read_u64_opt(&dir.join("memory.peak"))?,
            pids_current: fs::read_u64(&dir.join("pids.current"))?,
            mem_cache_bytes: fs::keyed(&mem_stat, "file"),
            mem_rss_bytes: fs::keyed(&mem_stat, "anon"),
            cpu_nr_periods: fs::keyed(&stat, "nr_periods"),
            cpu_nr_throttled: fs::keyed(&stat, "nr_throttled"),
            io_read_bytes: io_bytes.map(|(r, _)| r),
            io_write_bytes: io_bytes.map(|(_, w)| w),
            oom_kills: fs::keyed(&events, "oom_kill"),
            ..Default::default()
        })
    }

    /// Live update: weight (and the quota when the container has a hard cap, i.e. its `cpu.max`
    /// is not "max ..."), `memory.max`, `memory.high`, `pids.max`.
    pub(super) fn update(&self, id: &str, update: &LimitsUpdate) -> Result<(), CgroupError> {
        let dir = self.dir(id);
        if let Some(cpus) = update.cpus {
            fs::write(
                &dir.join("cpu.weight"),
                &values::cpu_weight(cpus).to_string(),
            )?;
            let max = dir.join("cpu.max");
            if !fs::read(&max)?.trim_start().starts_with("max") {
                let value = format!("{} {}", values::cpu_quota_us(cpus), values::CPU_PERIOD_US);
                fs::write(&max, &value)?;
            }
        }
        if let Some(limit) = update.mem_bytes {
            fs::write(&dir.join("memory.max"), &limit.to_string()).map_err(|e| match e {
                CgroupError::Write { path, source, .. }
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    CgroupError::MemoryBusy { path, limit }
                }
                other => other,
            })?;
        }
        if let Some(high) = update.mem_high_bytes {
            fs::write(&dir.join("memory.high"), &high.to_string())?;
        }
        if let Some(pids) = update.pids_max {
            fs::write(&dir.join("pids.max"), &pids.to_string())?;
        }
        info!(container_id = id, ?update, "cgroup v2 limits updated");
        Ok(())
    }

    /// `cgroup.kill` when the kernel has it (5.14+; it kills frozen tasks and nested cgroups
    /// too), else SIGKILL rounds under `cgroup.freeze` (5.2+) when present; until empty or
    /// `deadline`. A missing cgroup is already dead.
    pub(super) fn kill_all(&self, id: &str, deadline: Instant) -> Result<(), CgroupError> {
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
        fs::kill_until_empty(std::slice::from_ref(&dir), &freeze, deadline)
    }

    pub(super) fn paths(&self, id: &str) -> Vec<PathBuf> {
        vec![self.dir(id)]
    }

    pub(super) fn base_dirs(&self) -> Vec<PathBuf> {
        vec![self.base.clone()]
    }
}
