//! `berth run`'s isolation flags (Docker-style names) and how they become Mesos `ContainerInfo`
//! fields and `berth.*` labels of the TaskInfo.

use std::path::PathBuf;

use berth_proto::mesos::v1 as mesos;
use clap::Args;

use crate::task_spec::{labels, parse_bytes};

/// Isolation flags of `berth run`.
#[derive(Debug, Args, Clone, Default)]
pub struct IsolationArgs {
    /// Enforce --cpus as a hard cap (CFS quota), not only as a weight.
    #[arg(long)]
    pub cpu_hard_cap: bool,
    /// Soft memory limit: above it the task is throttled and reclaimed, not killed (64M).
    #[arg(long, value_parser = parse_bytes)]
    pub memory_high: Option<u64>,
    /// Swap the task may use on top of --mem (default none).
    #[arg(long, value_parser = parse_bytes)]
    pub swap: Option<u64>,
    /// Disk space of the task's sandbox (100M); exceeding it fails the task.
    #[arg(long, value_parser = parse_bytes)]
    pub disk: Option<u64>,
    /// CPUs the task may run on ("0-1,3").
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the task may use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Proportional io weight, 1-10000.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub io_weight: Option<u16>,
    /// Read rate cap on a block device: DEVICE:RATE (/dev/sda:10M). Repeatable.
    #[arg(long, value_name = "DEVICE:RATE")]
    pub device_read_bps: Vec<String>,
    /// Write rate cap on a block device: DEVICE:RATE. Repeatable.
    #[arg(long, value_name = "DEVICE:RATE")]
    pub device_write_bps: Vec<String>,
    /// Read operations per second cap: DEVICE:IOPS. Repeatable.
    #[arg(long, value_name = "DEVICE:IOPS")]
    pub device_read_iops: Vec<String>,
    /// Write operations per second cap: DEVICE:IOPS. Repeatable.
    #[arg(long, value_name = "DEVICE:IOPS")]
    pub device_write_iops: Vec<String>,
    /// Huge page limit: SIZE=LIMIT (2MB=64M). Repeatable.
    #[arg(long, value_name = "SIZE=LIMIT")]
    pub hugetlb: Vec<String>,
    /// Add a capability to the default set (NET_ADMIN). Repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the default set (ALL for every one). Repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp: default, unconfined, or the path of a profile (Docker/OCI JSON) on the agent.
    #[arg(long, default_value = "default")]
    pub seccomp: String,
    /// Resource limit NAME=SOFT[:HARD] (nofile=1024:4096; "unlimited" allowed). Repeatable.
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Volume HOST:CONTAINER[:ro|rw]; a relative HOST is a path in the sandbox. Repeatable.
    #[arg(long, short = 'v', value_name = "HOST:CONTAINER[:ro]")]
    pub volume: Vec<String>,
    /// Run in a user namespace: root in the task is an unprivileged user on the host.
    #[arg(long)]
    pub userns: bool,
    /// Leave the task's root filesystem (the host's, for native tasks) writable.
    #[arg(long)]
    pub writable_rootfs: bool,
    /// Expose a host device (/dev/fuse). Repeatable.
    #[arg(long, value_name = "PATH")]
    pub device: Vec<PathBuf>,
}

fn label(key: &str, value: &str) -> mesos::Label {
    mesos::Label {
        key: key.to_string(),
        value: Some(value.to_string()),
    }
}

/// Parses one `--volume` value.
pub fn parse_volume(text: &str) -> Result<mesos::Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, mesos::volume::Mode::Rw),
        [h, c, "ro"] => (*h, *c, mesos::volume::Mode::Ro),
        [h, c, "rw"] => (*h, *c, mesos::volume::Mode::Rw),
        _ => {
            return Err(format!(
                "volume {text:?}: expected HOST:CONTAINER or HOST:CONTAINER:ro|rw"
            ));
        }
    };
    if host.is_empty() || container.is_empty() {
        return Err(format!("volume {text:?}: empty path"));
    }
    let mut volume = mesos::Volume {
        container_path: container.to_string(),
        ..Default::default()
    };
    volume.set_mode(mode);
    if host.starts_with('/') {
        volume.host_path = Some(host.to_string());
    } else {
        let mut source = mesos::volume::Source::default();
        source.set_type(mesos::volume::source::Type::SandboxPath);
        let mut sandbox = mesos::volume::source::SandboxPath {
            path: host.to_string(),
            ..Default::default()
        };
        sandbox.set_type(mesos::volume::source::sandbox_path::Type::Self_);
        source.sandbox_path = Some(sandbox);
        volume.source = Some(source);
    }
    Ok(volume)
}

/// Parses one `--ulimit` value.
pub fn parse_ulimit(text: &str) -> Result<mesos::r_limit_info::RLimit, String> {
    use mesos::r_limit_info::r_limit::Type;
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| format!("ulimit {text:?}: expected NAME=SOFT[:HARD]"))?;
    let kind = Type::from_str_name(&format!("RLMT_{}", name.trim().to_ascii_uppercase()))
        .filter(|t| *t != Type::Unknown)
        .ok_or_else(|| format!("ulimit {text:?}: unknown limit {name:?}"))?;
    let number = |v: &str| -> Result<Option<u64>, String> {
        match v.trim() {
            "unlimited" | "-1" => Ok(None),
            n => n
                .parse()
                .map(Some)
                .map_err(|_| format!("ulimit {text:?}: {n:?} is not a number")),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (number(s)?, number(h)?),
        None => {
            let v = number(values)?;
            (v, v)
        }
    };
    let mut rlimit = mesos::r_limit_info::RLimit {
        soft,
        hard,
        ..Default::default()
    };
    // Mesos: both unset means unlimited; one unset is invalid — make "unlimited" explicit.
    if soft.is_some() != hard.is_some() {
        rlimit.soft = Some(soft.unwrap_or(u64::MAX));
        rlimit.hard = Some(hard.unwrap_or(u64::MAX));
    }
    rlimit.set_type(kind);
    Ok(rlimit)
}

impl IsolationArgs {
    /// Disk to request, MB (a `disk` resource).
    pub fn disk_mb(&self) -> Option<f64> {
        self.disk
            .map(|bytes| (bytes as f64 / (1024.0 * 1024.0) * 1000.0).ceil() / 1000.0)
    }

    /// Writes the flags into the task's ContainerInfo and labels.
    pub fn apply(
        &self,
        container: &mut mesos::ContainerInfo,
        task_labels: &mut Vec<mesos::Label>,
    ) -> Result<(), String> {
        for text in &self.volume {
            container.volumes.push(parse_volume(text)?);
        }
        if !self.ulimit.is_empty() {
            container.rlimit_info = Some(mesos::RLimitInfo {
                rlimits: self
                    .ulimit
                    .iter()
                    .map(|u| parse_ulimit(u))
                    .collect::<Result<_, _>>()?,
            });
        }
        let seccomp = match self.seccomp.as_str() {
            "default" => None,
            "unconfined" => Some(mesos::SeccompInfo {
                unconfined: Some(true),
                profile_name: None,
            }),
            path => {
                let absolute = std::fs::canonicalize(path)
                    .map_err(|e| format!("seccomp profile {path}: {e}"))?;
                Some(mesos::SeccompInfo {
                    unconfined: Some(false),
                    profile_name: Some(absolute.display().to_string()),
                })
            }
        };
        if seccomp.is_some() {
            container.linux_info = Some(mesos::LinuxInfo {
                seccomp,
                ..Default::default()
            });
        }
        let mut push = |key: &str, value: String| task_labels.push(label(key, &value));
        if self.cpu_hard_cap {
            push(labels::CPU_HARD_CAP, "true".into());
        }
        if let Some(bytes) = self.memory_high {
            push(labels::MEMORY_HIGH, bytes.to_string());
        }
        if let Some(bytes) = self.swap {
            push(labels::SWAP, bytes.to_string());
        }
        if let Some(cpus) = &self.cpuset_cpus {
            push(labels::CPUSET_CPUS, cpus.clone());
        }
        if let Some(mems) = &self.cpuset_mems {
            push(labels::CPUSET_MEMS, mems.clone());
        }
        if let Some(weight) = self.io_weight {
            push(labels::IO_WEIGHT, weight.to_string());
        }
        let io_max = self.io_max()?;
        if !io_max.is_empty() {
            push(labels::IO_MAX, io_max);
        }
        if !self.hugetlb.is_empty() {
            push(labels::HUGETLB, self.hugetlb.join(","));
        }
        if !self.cap_add.is_empty() {
            push(labels::CAP_ADD, self.cap_add.join(","));
        }
        if !self.cap_drop.is_empty() {
            push(labels::CAP_DROP, self.cap_drop.join(","));
        }
        if self.userns {
            push(labels::USERNS, "true".into());
        }
        if self.writable_rootfs {
            push(labels::WRITABLE_ROOTFS, "true".into());
        }
        if !self.device.is_empty() {
            let paths: Vec<String> = self
                .device
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            push(labels::DEVICES, paths.join(","));
        }
        Ok(())
    }

    /// The `--device-*` flags in the `berth.io_max` label syntax.
    fn io_max(&self) -> Result<String, String> {
        let mut entries = Vec::new();
        for (key, values) in [
            ("rbps", &self.device_read_bps),
            ("wbps", &self.device_write_bps),
            ("riops", &self.device_read_iops),
            ("wiops", &self.device_write_iops),
        ] {
            for text in values {
                let (device, rate) = text
                    .rsplit_once(':')
                    .filter(|(d, r)| !d.is_empty() && !r.is_empty())
                    .ok_or_else(|| format!("{text:?}: expected DEVICE:RATE"))?;
                let rate = parse_bytes(rate).map_err(|e| format!("{text:?}: {e}"))?;
                entries.push(format!("{device}:{key}={rate}"));
            }
        }
        Ok(entries.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let v = parse_volume("/srv:/data:ro").unwrap();
        assert_eq!(v.host_path.as_deref(), Some("/srv"));
        assert_eq!(v.mode(), mesos::volume::Mode::Ro);
        let v = parse_volume("cache:/cache").unwrap();
        assert!(v.host_path.is_none());
        assert_eq!(
            v.source.unwrap().sandbox_path.unwrap().path,
            "cache".to_string()
        );
        assert!(parse_volume("/a").is_err());
        assert!(parse_volume("/a:/b:rx").is_err());
        assert!(parse_volume(":/b").is_err());
    }

    #[test]
    fn ulimits() {
        let r = parse_ulimit("nofile=1024:4096").unwrap();
        assert_eq!((r.soft, r.hard), (Some(1024), Some(4096)));
        assert_eq!(r.r#type(), mesos::r_limit_info::r_limit::Type::RlmtNofile);
        let r = parse_ulimit("core=unlimited").unwrap();
        assert_eq!((r.soft, r.hard), (None, None));
        let r = parse_ulimit("nproc=10:unlimited").unwrap();
        assert_eq!((r.soft, r.hard), (Some(10), Some(u64::MAX)));
        assert!(parse_ulimit("files=3").unwrap_err().contains("files"));
        assert!(parse_ulimit("nofile=many").is_err());
    }

    #[test]
    fn apply_sets_fields_and_labels() {
        let args = IsolationArgs {
            cap_add: vec!["NET_ADMIN".into()],
            device_write_bps: vec!["/dev/loop0:1M".into()],
            seccomp: "unconfined".into(),
            userns: true,
            ..Default::default()
        };
        let mut container = mesos::ContainerInfo::default();
        let mut labels_ = Vec::new();
        args.apply(&mut container, &mut labels_).unwrap();
        let find = |k: &str| {
            labels_
                .iter()
                .find(|l| l.key == k)
                .and_then(|l| l.value.clone())
        };
        assert_eq!(find(labels::CAP_ADD).as_deref(), Some("NET_ADMIN"));
        assert_eq!(
            find(labels::IO_MAX).as_deref(),
            Some("/dev/loop0:wbps=1048576")
        );
        assert_eq!(find(labels::USERNS).as_deref(), Some("true"));
        assert_eq!(
            container.linux_info.unwrap().seccomp.unwrap().unconfined,
            Some(true)
        );
        // The label round-trips through the agent's parser.
        let parsed = crate::task_spec::parse_io_max(&find(labels::IO_MAX).unwrap()).unwrap();
        assert_eq!(parsed[0].wbps, Some(1 << 20));
    }
}
