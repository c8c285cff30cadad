//! What a container's cgroups will hold, computed and validated from its [`Limits`] and
//! [`IsolationOptions`] before any cgroup is touched: bad values and unresolvable device paths
//! fail here, naming the value.

use super::devices::{self, DeviceRule};
use super::io::IoLimit;
use super::{CgroupError, values};
use crate::{HugetlbLimit, IsolationOptions, Limits, LimitsUpdate};

/// The resolved cgroup settings of one container, shared by both hierarchies.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    /// v1 `cpu.shares` (1024 per cpu).
    pub(super) cpu_shares: u64,
    /// v2 `cpu.weight` (from the shares, runc's conversion).
    pub(super) cpu_weight: u64,
    /// CFS quota per 100 ms period, only with a hard cap.
    pub(super) cpu_quota_us: Option<u64>,
    /// `memory.max`.
    pub(super) mem_max: u64,
    /// `memory.high` (v1: `memory.soft_limit_in_bytes`).
    pub(super) mem_high: Option<u64>,
    /// `memory.swap.max` (v1: memsw = mem_max + swap).
    pub(super) swap: u64,
    /// `pids.max`.
    pub(super) pids_max: Option<u64>,
    /// `cpuset.cpus`; `None` = the parent's.
    pub(super) cpuset_cpus: Option<String>,
    /// `cpuset.mems`; `None` = the parent's.
    pub(super) cpuset_mems: Option<String>,
    /// `io.weight`, 1..=10000.
    pub(super) io_weight: Option<u16>,
    /// `io.max` per device.
    pub(super) io_max: Vec<IoLimit>,
    /// `hugetlb.<size>.max`.
    pub(super) hugetlb: Vec<HugetlbLimit>,
    /// The device allow-list.
    pub(super) devices: Vec<DeviceRule>,
}

impl Plan {
    /// Validates `limits` and resolves device paths (`stat(2)`).
    pub(super) fn new(limits: &Limits, options: &IsolationOptions) -> Result<Plan, CgroupError> {
        check_cpus(limits.cpus)?;
        if limits.mem_bytes == 0 {
            return Err(invalid_limit("memory", 0));
        }
        if limits.mem_high_bytes == Some(0) {
            return Err(invalid_limit("memory.high", 0));
        }
        for (what, list) in [
            ("cpuset_cpus", &limits.cpuset_cpus),
            ("cpuset_mems", &limits.cpuset_mems),
        ] {
            if let Some(list) = list {
                check_cpu_list(what, list)?;
            }
        }
        if let Some(w) = limits.io_weight
            && !(1..=10_000).contains(&w)
        {
            return Err(invalid_limit("io_weight (1-10000)", w));
        }
        let io_max = limits
            .io_max
            .iter()
            .map(IoLimit::resolve)
            .collect::<Result<Vec<_>, _>>()?;
        for h in &limits.hugetlb {
            check_page_size(&h.page_size)?;
        }
        Ok(Plan {
            cpu_shares: values::cpu_shares(limits.cpus),
            cpu_weight: values::cpu_weight(limits.cpus),
            cpu_quota_us: limits
                .cpu_hard_cap
                .then(|| values::cpu_quota_us(limits.cpus)),
            mem_max: limits.mem_bytes,
            mem_high: limits.mem_high_bytes,
            swap: limits.swap_bytes,
            pids_max: limits.pids_max,
            cpuset_cpus: limits.cpuset_cpus.clone(),
            cpuset_mems: limits.cpuset_mems.clone(),
            io_weight: limits.io_weight,
            io_max,
            hugetlb: limits.hugetlb.clone(),
            devices: devices::rules_for(&options.devices)?,
        })
    }

    /// Whether the io controller must be there.
    pub(super) fn needs_io(&self) -> bool {
        self.io_weight.is_some() || !self.io_max.is_empty()
    }

    /// Whether the cpuset controller must be there.
    pub(super) fn needs_cpuset(&self) -> bool {
        self.cpuset_cpus.is_some() || self.cpuset_mems.is_some()
    }
}

/// Validates a live update's values.
pub(super) fn check_update(update: &LimitsUpdate) -> Result<(), CgroupError> {
    if let Some(cpus) = update.cpus {
        check_cpus(cpus)?;
    }
    if update.mem_bytes == Some(0) {
        return Err(invalid_limit("memory", 0));
    }
    if update.mem_high_bytes == Some(0) {
        return Err(invalid_limit("memory.high", 0));
    }
    Ok(())
}

fn invalid_limit(what: &'static str, value: impl ToString) -> CgroupError {
    CgroupError::InvalidLimit {
        what,
        value: value.to_string(),
    }
}

fn check_cpus(cpus: f64) -> Result<(), CgroupError> {
    if cpus.is_finite() && cpus > 0.0 {
        Ok(())
    } else {
        Err(invalid_limit("cpus", cpus))
    }
}

/// A cpu/node list ("0-3,5"): digits, commas and dashes only (the kernel checks the ranges).
fn check_cpu_list(what: &'static str, list: &str) -> Result<(), CgroupError> {
    let ok = !list.is_empty()
        && list
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::Invalid(format!(
            "{what} {list:?}: expected a list like \"0-3,5\""
        )))
    }
}

/// A huge page size as cgroup files name it ("2MB", "1GB", "64KB"); it becomes part of a file
/// name, so nothing else is accepted.
fn check_page_size(size: &str) -> Result<(), CgroupError> {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &size[digits.len()..];
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB");
    if ok {
        Ok(())
    } else {
        Err(CgroupError::Invalid(format!(
            "hugetlb page size {size:?}: expected a size like \"2MB\" or \"1GB\""
        )))
    }
}

/// The page sizes a cgroup offers, from its `hugetlb.<size>.<suffix>` files.
pub(super) fn hugetlb_sizes(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut sizes: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?;
            Some(size.strip_suffix('.')?.to_string())
        })
        .filter(|size| !size.contains('.'))
        .collect();
    sizes.sort();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoMax;

    fn limits() -> Limits {
        Limits {
            cpus: 1.0,
            mem_bytes: 1 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn hard_cap_only_when_asked() {
        let opts = IsolationOptions::default();
        let p = Plan::new(&limits(), &opts).unwrap();
        assert_eq!(p.cpu_quota_us, None);
        assert_eq!((p.cpu_shares, p.cpu_weight), (1024, 39));
        let capped = Limits {
            cpu_hard_cap: true,
            cpus: 0.5,
            ..limits()
        };
        assert_eq!(
            Plan::new(&capped, &opts).unwrap().cpu_quota_us,
            Some(50_000)
        );
        assert_eq!(p.devices, devices::default_rules());
        assert!(!p.needs_io() && !p.needs_cpuset());
    }

    #[test]
    fn bad_values_are_named() {
        let opts = IsolationOptions::default();
        let cases: Vec<(Limits, &str)> = vec![
            (
                Limits {
                    cpus: 0.0,
                    ..limits()
                },
                "cpus",
            ),
            (
                Limits {
                    cpus: f64::INFINITY,
                    ..limits()
                },
                "cpus",
            ),
            (
                Limits {
                    mem_bytes: 0,
                    ..limits()
                },
                "memory",
            ),
            (
                Limits {
                    mem_high_bytes: Some(0),
                    ..limits()
                },
                "memory.high",
            ),
            (
                Limits {
                    cpuset_cpus: Some("0\n1".into()),
                    ..limits()
                },
                "cpuset_cpus",
            ),
            (
                Limits {
                    cpuset_mems: Some(String::new()),
                    ..limits()
                },
                "cpuset_mems",
            ),
            (
                Limits {
                    io_weight: Some(0),
                    ..limits()
                },
                "io_weight",
            ),
            (
                Limits {
                    io_weight: Some(10_001),
                    ..limits()
                },
                "io_weight",
            ),
            (
                Limits {
                    io_max: vec![IoMax {
                        device: "/dev/null".into(),
                        wbps: Some(1),
                        ..Default::default()
                    }],
                    ..limits()
                },
                "/dev/null",
            ),
            (
                Limits {
                    hugetlb: vec![HugetlbLimit {
                        page_size: "../x".into(),
                        limit_bytes: 1,
                    }],
                    ..limits()
                },
                "../x",
            ),
            (
                Limits {
                    hugetlb: vec![HugetlbLimit {
                        page_size: "2M".into(),
                        limit_bytes: 1,
                    }],
                    ..limits()
                },
                "2M",
            ),
        ];
        for (l, needle) in cases {
            let err = Plan::new(&l, &opts).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let bad_device = IsolationOptions {
            devices: vec!["/etc/passwd".into()],
            ..Default::default()
        };
        let err = Plan::new(&limits(), &bad_device).unwrap_err();
        assert!(matches!(err, CgroupError::Invalid(_)), "{err}");
        assert!(check_page_size("1GB").is_ok() && check_page_size("64KB").is_ok());
        assert!(
            check_update(&LimitsUpdate {
                cpus: Some(-1.0),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            check_update(&LimitsUpdate {
                mem_bytes: Some(1),
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn hugetlb_sizes_from_files() {
        let tmp = tempfile::TempDir::new().unwrap();
        for f in [
            "hugetlb.2MB.max",
            "hugetlb.2MB.events",
            "hugetlb.1GB.max",
            "hugetlb.1GB.rsvd.max",
            "memory.max",
        ] {
            std::fs::write(tmp.path().join(f), "").unwrap();
        }
        assert_eq!(hugetlb_sizes(tmp.path(), "max"), ["1GB", "2MB"]);
        std::fs::write(tmp.path().join("hugetlb.2MB.limit_in_bytes"), "").unwrap();
        assert_eq!(hugetlb_sizes(tmp.path(), "limit_in_bytes"), ["2MB"]);
    }
}
