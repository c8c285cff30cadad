//! `linux.resources` of a runtime-spec config → berth's [`Limits`] (what the cgroups isolator
//! enforces). Pure.
//!
//! berth's limits are coarser than the runtime spec's in a few places; what cannot be expressed
//! is reported as a warning naming the field, never silently dropped:
//! - cpu: one number of cpus drives both the weight and, when there is a quota, the hard cap.
//!   A quota gives `cpus = quota / period` (berth's CFS period is 100 ms, so the *ratio* is kept)
//!   and the weight follows it; without a quota `cpus = shares / 1024`.
//! - memory: `limit`, `swap` (memory + swap, as in the spec) and, on cgroup v1 only,
//!   `reservation` (`memory.soft_limit_in_bytes`; on v2 berth's soft limit is `memory.high`,
//!   which throttles, so a reservation is not mapped to it).
//! - blockIO `weight` (v1 scale 10-1000, converted to the v2 scale as runc does) and the four
//!   throttle lists; hugepage limits; pids.
//! - device rules: berth allows its default nodes plus the config's `linux.devices`; other
//!   allow rules are reported.

use std::collections::BTreeMap;

use berth_isolators::cgroups::CgroupVersion;
use berth_isolators::{HugetlbLimit, IoMax, Limits};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use super::translate::ConfigError;

/// berth's CFS period (the isolator's), µs.
const PERIOD_US: u64 = 100_000;

/// Limits for `resources`, and warnings about what could not be applied exactly.
pub fn limits(
    resources: Option<&LinuxResources>,
    version: CgroupVersion,
    devices_allowed: &[(char, i64, i64)],
) -> Result<(Limits, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let mut l = Limits {
        cpus: 1.0,
        mem_bytes: u64::MAX,
        swap_bytes: u64::MAX,
        ..Limits::default()
    };
    let Some(r) = resources else {
        return Ok((l, warnings));
    };
    let field = |f: &str| format!("linux.resources.{f}");

    if let Some(cpu) = r.cpu() {
        let period = cpu.period().filter(|p| *p > 0).unwrap_or(PERIOD_US);
        let shares = cpu.shares().filter(|s| *s > 0);
        match cpu.quota().filter(|q| *q > 0) {
            Some(q) => {
                l.cpus = q as f64 / period as f64;
                l.cpu_hard_cap = true;
                if let Some(s) = shares
                    && (s as f64 - l.cpus * 1024.0).abs() > 1.0
                {
                    warnings.push(format!(
                        "{}: {s} not applied, the weight follows the quota ({} cpus)",
                        field("cpu.shares"),
                        l.cpus
                    ));
                }
                if period != PERIOD_US {
                    warnings.push(format!(
                        "{}: {period} µs applied as {PERIOD_US} µs with the same quota ratio",
                        field("cpu.period")
                    ));
                }
            }
            None => {
                if let Some(s) = shares {
                    l.cpus = s as f64 / 1024.0;
                }
            }
        }
        l.cpuset_cpus = cpu.cpus().clone().filter(|s| !s.is_empty());
        l.cpuset_mems = cpu.mems().clone().filter(|s| !s.is_empty());
        let ignored = [
            ("cpu.realtimeRuntime", cpu.realtime_runtime().is_some()),
            ("cpu.realtimePeriod", cpu.realtime_period().is_some()),
            ("cpu.idle", cpu.idle().is_some_and(|i| i != 0)),
            ("cpu.burst", cpu.burst().is_some_and(|b| b != 0)),
        ];
        for (name, set) in ignored {
            if set {
                warnings.push(format!("{}: not supported, ignored", field(name)));
            }
        }
    }

    if let Some(m) = r.memory() {
        let limit = m.limit().filter(|v| *v > 0).map(|v| v as u64);
        if let Some(v) = limit {
            l.mem_bytes = v;
        }
        match (m.swap(), limit) {
            (Some(s), Some(lim)) if s > 0 => {
                let s = s as u64;
                if s < lim {
                    return Err(ConfigError::new(
                        field("memory.swap"),
                        format!("{s} is below memory.limit {lim} (swap counts memory + swap)"),
                    ));
                }
                l.swap_bytes = s - lim;
            }
            (Some(s), None) if s > 0 => warnings.push(format!(
                "{}: {s} without a memory limit, swap left unlimited",
                field("memory.swap")
            )),
            _ => {}
        }
        if let Some(res) = m.reservation().filter(|v| *v > 0) {
            match version {
                CgroupVersion::V1 => l.mem_high_bytes = Some(res as u64),
                CgroupVersion::V2 => warnings.push(format!(
                    "{}: not applied on cgroup v2",
                    field("memory.reservation")
                )),
            }
        }
        let ignored = [
            ("memory.kernel", m.kernel().is_some()),
            ("memory.kernelTCP", m.kernel_tcp().is_some()),
            ("memory.swappiness", m.swappiness().is_some()),
            (
                "memory.disableOOMKiller",
                m.disable_oom_killer() == Some(true),
            ),
        ];
        for (name, set) in ignored {
            if set {
                warnings.push(format!("{}: not supported, ignored", field(name)));
            }
        }
    }

    if let Some(p) = r.pids()
        && p.limit() > 0
    {
        l.pids_max = Some(p.limit() as u64);
    }

    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            if !(10..=1000).contains(&w) {
                return Err(ConfigError::new(
                    field("blockIO.weight"),
                    format!("{w} is outside 10-1000"),
                ));
            }
            l.io_weight = Some((1 + (u32::from(w) - 10) * 9999 / 990) as u16);
        }
        if b.leaf_weight().is_some() || b.weight_device().as_ref().is_some_and(|v| !v.is_empty()) {
            warnings.push(format!(
                "{}: per-device and leaf weights are not supported, ignored",
                field("blockIO")
            ));
        }
        let mut io: BTreeMap<(i64, i64), IoMax> = BTreeMap::new();
        let lists = [
            (b.throttle_read_bps_device(), 0),
            (b.throttle_write_bps_device(), 1),
            (b.throttle_read_iops_device(), 2),
            (b.throttle_write_iops_device(), 3),
        ];
        for (list, which) in lists {
            for d in list.iter().flatten() {
                let e = io.entry((d.major(), d.minor())).or_insert_with(|| IoMax {
                    device: format!("{}:{}", d.major(), d.minor()),
                    ..IoMax::default()
                });
                let slot = match which {
                    0 => &mut e.rbps,
                    1 => &mut e.wbps,
                    2 => &mut e.riops,
                    _ => &mut e.wiops,
                };
                *slot = Some(d.rate());
            }
        }
        l.io_max = io.into_values().collect();
    }

    for h in r.hugepage_limits().iter().flatten() {
        if h.limit() < 0 {
            return Err(ConfigError::new(
                field("hugepageLimits"),
                format!("negative limit for {}", h.page_size()),
            ));
        }
        l.hugetlb.push(HugetlbLimit {
            page_size: h.page_size().clone(),
            limit_bytes: h.limit() as u64,
        });
    }

    if r.network().is_some() {
        warnings.push(format!("{}: not supported, ignored", field("network")));
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        warnings.push(format!("{}: not supported, ignored", field("rdma")));
    }
    if r.unified().as_ref().is_some_and(|m| !m.is_empty()) {
        warnings.push(format!("{}: not supported, ignored", field("unified")));
    }
    for rule in r.devices().iter().flatten() {
        if rule.allow() && !rule_is_covered(rule, devices_allowed) {
            warnings.push(format!(
                "{}: allow rule {} not applied (berth allows its default nodes and \
                 linux.devices only)",
                field("devices"),
                describe_rule(rule)
            ));
        }
    }
    Ok((l, warnings))
}

/// Device numbers berth always allows: null, zero, full, random, urandom, tty, ptmx, pts.
const DEFAULT_ALLOWED: [(char, i64, i64); 7] = [
    ('c', 1, 3),
    ('c', 1, 5),
    ('c', 1, 7),
    ('c', 1, 8),
    ('c', 1, 9),
    ('c', 5, 0),
    ('c', 5, 2),
];

/// Whether an allow rule grants nothing beyond the default nodes and `allowed`.
fn rule_is_covered(rule: &LinuxDeviceCgroup, allowed: &[(char, i64, i64)]) -> bool {
    let kind = rule
        .typ()
        .map(|t| t.as_str().chars().next().unwrap_or('a'))
        .unwrap_or('a');
    let (Some(major), Some(minor)) = (rule.major(), rule.minor()) else {
        // The pty range (c 136:*) is in berth's defaults.
        return kind == 'c' && rule.major() == Some(136);
    };
    if kind == 'a' {
        return false;
    }
    DEFAULT_ALLOWED
        .iter()
        .chain(allowed)
        .any(|&(k, ma, mi)| k == kind && ma == major && mi == minor)
}

fn describe_rule(rule: &LinuxDeviceCgroup) -> String {
    let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
    format!(
        "{} {}:{} {}",
        rule.typ()
            .map_or_else(|| "a".to_string(), |t| t.as_str().to_string()),
        n(rule.major()),
        n(rule.minor()),
        rule.access().as_deref().unwrap_or("rwm")
    )
}
