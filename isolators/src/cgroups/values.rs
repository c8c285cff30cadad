//! The values written for [`Limits`](crate::Limits), shared by both hierarchies.

use crate::Limitation;

/// The CFS period berth uses, µs (both `cpu.max` and `cpu.cfs_period_us`).
pub(super) const CPU_PERIOD_US: u64 = 100_000;

/// Hard-cap quota per period: round(cpus × 100000), at least 1000 µs (the kernel minimum).
pub(super) fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// v1 `cpu.shares`: 1024 per cpu as in Mesos, clamped to the kernel's 2..=262144.
pub(super) fn cpu_shares(cpus: f64) -> u64 {
    ((cpus * 1024.0).round() as u64).clamp(2, 262_144)
}

/// v2 `cpu.weight` from the v1 shares of `cpus`, with runc's conversion
/// `1 + ((shares - 2) * 9999) / 262142`, which maps 2..=262144 linearly onto 1..=10000.
pub(super) fn cpu_weight(cpus: f64) -> u64 {
    1 + ((cpu_shares(cpus) - 2) * 9999) / 262_142
}

/// `pids.max`: the number, or "max" for unlimited.
pub(super) fn pids_max(pids: Option<u64>) -> String {
    pids.map_or_else(|| "max".to_string(), |n| n.to_string())
}

/// The limitation reported after `kills` OOM kills under the limit read from the kernel (`raw`).
pub(super) fn oom_limitation(raw: &str, kills: u64) -> Limitation {
    let limit = raw
        .parse::<u64>()
        .map_or_else(|_| raw.to_string(), super::fs::human_bytes);
    let noun = if kills == 1 { "process" } else { "processes" };
    Limitation::Memory {
        message: format!("memory limit {limit} reached: {kills} {noun} OOM-killed"),
    }
}

/// `USER_HZ`, the unit of v1 `cpuacct.stat` (100 nearly everywhere).
pub(super) fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf takes a plain integer name and touches no memory of ours; it is always
    // safe to call and returns -1 for names it does not know, which we replace by the default.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}
