//! The agent's choice of isolators (`--isolation`, Mesos names accepted) and their settings.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use berth_isolators::{
    Isolator,
    cgroups::CgroupsIsolator,
    disk::{DiskIsolator, DiskOptions},
    filesystem::{FilesystemIsolator, FilesystemPaths},
    namespaces::NamespacesIsolator,
    security::{CapabilitiesIsolator, RlimitsIsolator, SeccompIsolator},
    userns::{IdRange, UserNamespaceIsolator},
};
use clap::Args;

/// The isolators berth has, in launch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IsolatorKind {
    /// cgroups: cpu, memory, pids, io, cpuset, hugetlb, devices.
    Cgroups,
    /// pid, mount, uts, ipc, net and cgroup namespaces.
    Namespaces,
    /// Per-container user namespace (for tasks that ask for one).
    UserNamespace,
    /// The container's own root: read-only host root, private /tmp, /dev, /proc masks, volumes.
    Filesystem,
    /// Capability sets and no_new_privs.
    Capabilities,
    /// seccomp filter.
    Seccomp,
    /// Resource limits (setrlimit).
    Rlimits,
    /// Sandbox disk limit.
    Disk,
}

impl IsolatorKind {
    /// Every isolator: the default `--isolation`.
    pub const ALL: [IsolatorKind; 8] = [
        IsolatorKind::Cgroups,
        IsolatorKind::Namespaces,
        IsolatorKind::UserNamespace,
        IsolatorKind::Filesystem,
        IsolatorKind::Capabilities,
        IsolatorKind::Seccomp,
        IsolatorKind::Rlimits,
        IsolatorKind::Disk,
    ];

    /// berth's name of the isolator.
    pub fn name(self) -> &'static str {
        match self {
            IsolatorKind::Cgroups => "cgroups",
            IsolatorKind::Namespaces => "namespaces",
            IsolatorKind::UserNamespace => "userns",
            IsolatorKind::Filesystem => "filesystem",
            IsolatorKind::Capabilities => "capabilities",
            IsolatorKind::Seccomp => "seccomp",
            IsolatorKind::Rlimits => "rlimits",
            IsolatorKind::Disk => "disk",
        }
    }
}

/// A set of isolators parsed from `--isolation`: berth names or the Mesos agent's
/// (`cgroups/cpu,cgroups/mem,filesystem/linux,namespaces/pid,linux/capabilities,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationSet(pub BTreeSet<IsolatorKind>);

impl IsolationSet {
    /// Whether `kind` is enabled.
    pub fn has(&self, kind: IsolatorKind) -> bool {
        self.0.contains(&kind)
    }
}

impl FromStr for IsolationSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let kind = match name {
                "all" => {
                    set.extend(IsolatorKind::ALL);
                    continue;
                }
                "cgroups" | "linux/devices" => IsolatorKind::Cgroups,
                n if n.starts_with("cgroups/") => IsolatorKind::Cgroups,
                "posix/cpu" | "posix/mem" => IsolatorKind::Cgroups,
                "namespaces" => IsolatorKind::Namespaces,
                n if n.starts_with("namespaces/") => IsolatorKind::Namespaces,
                "userns" | "user" => IsolatorKind::UserNamespace,
                "filesystem" | "filesystem/linux" | "filesystem/posix" => IsolatorKind::Filesystem,
                "capabilities" | "linux/capabilities" => IsolatorKind::Capabilities,
                "seccomp" | "linux/seccomp" => IsolatorKind::Seccomp,
                "rlimits" | "posix/rlimits" => IsolatorKind::Rlimits,
                "disk" | "disk/du" | "disk/xfs" | "posix/disk" => IsolatorKind::Disk,
                other => {
                    return Err(format!(
                        "unknown isolator {other:?} (berth has: all, {})",
                        IsolatorKind::ALL.map(IsolatorKind::name).join(", ")
                    ));
                }
            };
            set.insert(kind);
        }
        if !set.contains(&IsolatorKind::Cgroups) {
            return Err("--isolation must include cgroups: berth cannot run without them".into());
        }
        Ok(IsolationSet(set))
    }
}

/// Flags of `berth agent` that choose and tune the isolators.
#[derive(Debug, Clone, Args)]
pub struct IsolationFlags {
    /// Isolators to enable, comma-separated: all, or any of cgroups, namespaces, userns,
    /// filesystem, capabilities, seccomp, rlimits, disk (Mesos names such as cgroups/cpu,
    /// filesystem/linux, linux/capabilities, posix/disk are accepted).
    #[arg(long, default_value = "all", value_parser = IsolationSet::from_str)]
    pub isolation: IsolationSet,
    /// Directory of seccomp profiles that tasks name in `linux_info.seccomp.profile_name`.
    #[arg(long)]
    pub seccomp_config_dir: Option<PathBuf>,
    /// `/etc/subuid`-style file with the id range (the `berth` line) for user namespaces;
    /// without one, 100000:65536.
    #[arg(long, default_value = "/etc/subuid")]
    pub subuid_file: PathBuf,
    /// `/etc/subgid`-style file with the group id range for user namespaces.
    #[arg(long, default_value = "/etc/subgid")]
    pub subgid_file: PathBuf,
    /// How often sandboxes without a kernel quota are measured against their disk limit.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub container_disk_watch_interval: Duration,
    /// Kill tasks that exceed their disk limit (else only report the usage).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enforce_container_disk_quota: bool,
}

/// Where the isolators keep their state, from the agent's directories.
#[derive(Debug, Clone)]
pub struct IsolatorPaths {
    /// The agent's work dir (hidden from containers).
    pub work_dir: PathBuf,
    /// The agent's runtime dir (hidden from containers).
    pub runtime_dir: PathBuf,
    /// The containerizer's per-container runtime root (`<runtime-dir>/containers`).
    pub containers_runtime: PathBuf,
}

/// Builds the enabled isolators, in launch order (later isolators' launch needs win on merge).
pub fn build_isolators(
    flags: &IsolationFlags,
    cgroups: Arc<CgroupsIsolator>,
    paths: &IsolatorPaths,
) -> anyhow::Result<Vec<Arc<dyn Isolator>>> {
    let mut isolators: Vec<Arc<dyn Isolator>> = Vec::new();
    for kind in &flags.isolation.0 {
        match kind {
            IsolatorKind::Cgroups => isolators.push(cgroups.clone()),
            IsolatorKind::Namespaces => isolators.push(Arc::new(NamespacesIsolator)),
            IsolatorKind::UserNamespace => {
                let range =
                    IdRange::from_subid_files(&flags.subuid_file, &flags.subgid_file, "berth")?
                        .unwrap_or(IdRange::DEFAULT);
                isolators.push(Arc::new(UserNamespaceIsolator::new(
                    range,
                    paths.containers_runtime.clone(),
                )?));
            }
            IsolatorKind::Filesystem => {
                isolators.push(Arc::new(FilesystemIsolator::new(FilesystemPaths::new(
                    vec![paths.work_dir.clone(), paths.runtime_dir.clone()],
                    paths.containers_runtime.clone(),
                ))?));
            }
            IsolatorKind::Capabilities => {
                isolators.push(Arc::new(CapabilitiesIsolator::new(Path::new("/proc"))))
            }
            IsolatorKind::Seccomp => isolators.push(Arc::new(SeccompIsolator::new())),
            IsolatorKind::Rlimits => isolators.push(Arc::new(RlimitsIsolator::new())),
            IsolatorKind::Disk => {
                let mut options = DiskOptions::new(paths.work_dir.join("meta").join("disk"));
                options.check_interval = flags.container_disk_watch_interval;
                options.enforce = flags.enforce_container_disk_quota;
                isolators.push(Arc::new(DiskIsolator::new(options)?));
            }
        }
    }
    Ok(isolators)
}

/// Parses "15s", "500ms", "2m" or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 15s or 500ms"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{text} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_names() {
        let all: IsolationSet = "all".parse().unwrap();
        assert_eq!(all.0.len(), IsolatorKind::ALL.len());
        let mesos: IsolationSet =
            "cgroups/cpu,cgroups/mem,filesystem/linux,namespaces/pid,linux/capabilities,posix/disk"
                .parse()
                .unwrap();
        assert!(mesos.has(IsolatorKind::Filesystem) && mesos.has(IsolatorKind::Disk));
        assert!(!mesos.has(IsolatorKind::Seccomp));
        let err = "cgroups,gpu/nvidia".parse::<IsolationSet>().unwrap_err();
        assert!(err.contains("gpu/nvidia"), "{err}");
        assert!("namespaces".parse::<IsolationSet>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
