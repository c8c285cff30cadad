//! From a Mesos `TaskInfo` to a container config: the command and its environment, the limits
//! derived from the task's resources, and the isolation options, read from the Mesos fields that
//! carry them (`ContainerInfo.linux_info`, `.rlimit_info`, `.volumes`) and from `berth.*` labels
//! for what Mesos has no field for (see [`labels`]).
//!
//! Every function here is pure: a task that cannot be run gets a message naming the offending
//! field, which the agent turns into `TASK_ERROR`.

use std::path::{Path, PathBuf};

use berth_containerizer::{ArgvKind, ContainerConfig};
use berth_isolators::{
    HugetlbLimit, IoMax, IsolationOptions, Limits, NetworkMode, RlimitRequest, SeccompProfile,
    VolumeSpec,
};
use berth_proto::mesos::v1 as mesos;

use crate::{agent::AgentSettings, resources::ResourceSet, task::TaskLimits};

/// Label keys berth reads from a TaskInfo (berth extensions; Mesos has no field for them).
pub mod labels {
    /// Max processes of the task's container.
    pub const PIDS_MAX: &str = "berth.pids_max";
    /// Working directory of the task.
    pub const WORKDIR: &str = "berth.workdir";
    /// "true": the cpus are a hard cap (CFS quota / `cpu.max`), not only a weight.
    pub const CPU_HARD_CAP: &str = "berth.cpu_hard_cap";
    /// Soft memory limit (`memory.high`), a size ("48M").
    pub const MEMORY_HIGH: &str = "berth.memory_high";
    /// Swap allowed on top of the memory limit, a size.
    pub const SWAP: &str = "berth.swap";
    /// CPUs the task may run on ("0-1,3").
    pub const CPUSET_CPUS: &str = "berth.cpuset_cpus";
    /// Memory nodes the task may use.
    pub const CPUSET_MEMS: &str = "berth.cpuset_mems";
    /// io weight 1-10000.
    pub const IO_WEIGHT: &str = "berth.io_weight";
    /// io caps: `DEVICE:KEY=VALUE[,KEY=VALUE]...[;...]`, DEVICE a block device path or MAJ:MIN,
    /// KEY one of rbps, wbps, riops, wiops ("/dev/loop0:wbps=1M").
    pub const IO_MAX: &str = "berth.io_max";
    /// Huge page limits: `SIZE=LIMIT[,...]` ("2MB=64M").
    pub const HUGETLB: &str = "berth.hugetlb";
    /// Capabilities added to the default set, comma-separated ("NET_ADMIN,SYS_TIME").
    pub const CAP_ADD: &str = "berth.cap_add";
    /// Capabilities dropped from the default set, comma-separated ("ALL" for every one).
    pub const CAP_DROP: &str = "berth.cap_drop";
    /// "true": run the task in a user namespace (root inside is unprivileged outside).
    pub const USERNS: &str = "berth.userns";
    /// "true": leave the root filesystem writable.
    pub const WRITABLE_ROOTFS: &str = "berth.writable_rootfs";
    /// Extra host devices to expose, comma-separated paths ("/dev/fuse").
    pub const DEVICES: &str = "berth.devices";
}

/// Default PATH of tasks.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The value of a task label.
pub fn label<'a>(task: &'a mesos::TaskInfo, key: &str) -> Option<&'a str> {
    task.labels
        .as_ref()?
        .labels
        .iter()
        .find(|l| l.key == key)
        .and_then(|l| l.value.as_deref())
}

/// Parses a size: bytes, or a number with a suffix K, M, G, T (binary; "KiB"/"KB" accepted).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let lower = lower.trim_end_matches("ib").trim_end_matches('b');
    let (number, multiplier) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{trimmed:?} is not a size like 64M, 1G or a number of bytes"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{trimmed} must be a positive size"));
    }
    let bytes = value * multiplier as f64;
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{trimmed} is too large"));
    }
    Ok(bytes as u64)
}

fn parse_bool(key: &str, text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("label {key}={text:?} is not true or false")),
    }
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parses the `berth.io_max` syntax (see [`labels::IO_MAX`]).
pub fn parse_io_max(text: &str) -> Result<Vec<IoMax>, String> {
    let mut out = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        // The device is everything before the first ':' followed by KEY=...; MAJ:MIN itself
        // contains a ':' — split at the last ':' that precedes a '='.
        let eq = entry
            .find('=')
            .ok_or_else(|| format!("io limit {entry:?}: expected DEVICE:KEY=VALUE"))?;
        let colon = entry[..eq]
            .rfind(':')
            .ok_or_else(|| format!("io limit {entry:?}: expected DEVICE:KEY=VALUE"))?;
        let mut limit = IoMax {
            device: entry[..colon].to_string(),
            ..Default::default()
        };
        if limit.device.is_empty() {
            return Err(format!("io limit {entry:?}: no device"));
        }
        for pair in entry[colon + 1..].split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("io limit {entry:?}: {pair:?} is not KEY=VALUE"))?;
            let value = parse_bytes(value).map_err(|e| format!("io limit {entry:?}: {e}"))?;
            match key.trim() {
                "rbps" => limit.rbps = Some(value),
                "wbps" => limit.wbps = Some(value),
                "riops" => limit.riops = Some(value),
                "wiops" => limit.wiops = Some(value),
                other => {
                    return Err(format!(
                        "io limit {entry:?}: unknown key {other:?} (rbps, wbps, riops, wiops)"
                    ));
                }
            }
        }
        out.push(limit);
    }
    Ok(out)
}

/// Parses the `berth.hugetlb` syntax (see [`labels::HUGETLB`]).
pub fn parse_hugetlb(text: &str) -> Result<Vec<HugetlbLimit>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (size, limit) = entry
                .split_once('=')
                .ok_or_else(|| format!("hugetlb limit {entry:?}: expected SIZE=LIMIT (2MB=64M)"))?;
            Ok(HugetlbLimit {
                page_size: size.trim().to_ascii_uppercase(),
                limit_bytes: parse_bytes(limit)
                    .map_err(|e| format!("hugetlb limit {entry:?}: {e}"))?,
            })
        })
        .collect()
}

/// The short rlimit name of a Mesos `RLimitInfo.RLimit.Type` ("RLMT_NOFILE" → "nofile").
fn rlimit_name(kind: mesos::r_limit_info::r_limit::Type) -> Option<String> {
    let name = kind.as_str_name().strip_prefix("RLMT_")?;
    Some(name.to_ascii_lowercase())
}

/// The capability name of a Mesos `CapabilityInfo.Capability` ("NET_ADMIN").
fn capability_names(info: &mesos::CapabilityInfo) -> Result<Vec<String>, String> {
    info.capabilities
        .iter()
        .map(|c| match mesos::capability_info::Capability::try_from(*c) {
            Ok(mesos::capability_info::Capability::Unknown) | Err(_) => {
                Err(format!("unknown capability number {c} in linux_info"))
            }
            Ok(cap) => Ok(cap.as_str_name().to_string()),
        })
        .collect()
}

/// The volumes of a `ContainerInfo`: host paths (`host_path` or source HOST_PATH) and the
/// sandbox's own paths (source SANDBOX_PATH of type SELF).
fn volumes(container: &mesos::ContainerInfo) -> Result<Vec<VolumeSpec>, String> {
    use mesos::volume::source::{Type as SourceType, sandbox_path::Type as SandboxType};
    let mut out = Vec::new();
    for volume in &container.volumes {
        let read_only = volume.mode() == mesos::volume::Mode::Ro;
        let container_path = PathBuf::from(&volume.container_path);
        if volume.image.is_some() {
            return Err(format!(
                "volume {}: image volumes are not supported",
                volume.container_path
            ));
        }
        let host = match (&volume.host_path, &volume.source) {
            (Some(host), None) => PathBuf::from(host),
            (None, Some(source)) => match source.r#type() {
                SourceType::HostPath => PathBuf::from(
                    &source
                        .host_path
                        .as_ref()
                        .ok_or_else(|| {
                            format!(
                                "volume {}: HOST_PATH without host_path",
                                volume.container_path
                            )
                        })?
                        .path,
                ),
                SourceType::SandboxPath => {
                    let sandbox = source.sandbox_path.as_ref().ok_or_else(|| {
                        format!(
                            "volume {}: SANDBOX_PATH without sandbox_path",
                            volume.container_path
                        )
                    })?;
                    if sandbox.r#type() == SandboxType::Parent {
                        return Err(format!(
                            "volume {}: SANDBOX_PATH of type PARENT needs a task group's executor",
                            volume.container_path
                        ));
                    }
                    let path = PathBuf::from(&sandbox.path);
                    if path.is_absolute() {
                        return Err(format!(
                            "volume {}: a SANDBOX_PATH must be relative, not {}",
                            volume.container_path, sandbox.path
                        ));
                    }
                    path
                }
                other => {
                    return Err(format!(
                        "volume {}: source type {} is not supported",
                        volume.container_path,
                        other.as_str_name()
                    ));
                }
            },
            (Some(_), Some(_)) => {
                return Err(format!(
                    "volume {}: both host_path and source are set",
                    volume.container_path
                ));
            }
            (None, None) => {
                return Err(format!(
                    "volume {}: neither host_path nor source is set",
                    volume.container_path
                ));
            }
        };
        out.push(VolumeSpec {
            host,
            container: container_path,
            read_only,
        });
    }
    Ok(out)
}

/// Port mappings of the task's networks (Mesos `NetworkInfo.port_mappings`).
fn port_mappings(
    container: &mesos::ContainerInfo,
) -> Result<Vec<berth_isolators::PortMappingSpec>, String> {
    let mut out = Vec::new();
    for network in &container.network_infos {
        for mapping in &network.port_mappings {
            let protocol = mapping
                .protocol
                .as_deref()
                .unwrap_or("tcp")
                .to_ascii_lowercase();
            if protocol != "tcp" && protocol != "udp" {
                return Err(format!(
                    "port mapping protocol {protocol:?}: berth maps tcp and udp"
                ));
            }
            let port = |value: u32, what: &str| {
                u16::try_from(value)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("port mapping {what} {value} is not a port (1-65535)"))
            };
            out.push(berth_isolators::PortMappingSpec {
                protocol,
                host_port: port(mapping.host_port, "host_port")?,
                container_port: port(mapping.container_port, "container_port")?,
            });
        }
    }
    if !out.is_empty()
        && container
            .network_infos
            .first()
            .and_then(|n| n.name.as_deref())
            .is_none_or(|name| !matches!(name, "bridge" | "overlay" | "berth"))
    {
        return Err("port mappings need the bridge or overlay network".into());
    }
    Ok(out)
}

/// The isolation options and extra limits of a task.
pub fn isolation_of(
    task: &mesos::TaskInfo,
    seccomp_dir: Option<&Path>,
) -> Result<(IsolationOptions, Limits), String> {
    let mut options = IsolationOptions::default();
    let mut limits = Limits::default();
    if let Some(container) = &task.container {
        options.volumes = volumes(container)?;
        options.port_mappings = port_mappings(container)?;
        if let Some(linux) = &container.linux_info {
            // `capability_info` is the deprecated name of the effective set; Mesos still honours it.
            #[allow(deprecated)]
            let effective = linux
                .effective_capabilities
                .as_ref()
                .or(linux.capability_info.as_ref());
            if let Some(effective) = effective {
                // An exact set: start from nothing.
                options.cap_drop = vec!["ALL".into()];
                options.cap_add = capability_names(effective)?;
            }
            if let Some(seccomp) = &linux.seccomp {
                options.seccomp = match (seccomp.unconfined(), &seccomp.profile_name) {
                    (true, Some(_)) => {
                        return Err("linux_info.seccomp: unconfined with a profile_name".into());
                    }
                    (true, None) => SeccompProfile::Unconfined,
                    (false, Some(name)) => {
                        SeccompProfile::Custom(read_seccomp_profile(name, seccomp_dir)?)
                    }
                    (false, None) => SeccompProfile::Default,
                };
            }
        }
        if let Some(rlimit_info) = &container.rlimit_info {
            for rlimit in &rlimit_info.rlimits {
                let name = rlimit_name(rlimit.r#type()).ok_or_else(|| {
                    format!("rlimit_info: unknown rlimit type {:?}", rlimit.r#type)
                })?;
                // Mesos: both unset = unlimited; both must be set otherwise.
                if rlimit.soft.is_some() != rlimit.hard.is_some() {
                    return Err(format!(
                        "rlimit {name}: soft and hard must both be set or both be unset"
                    ));
                }
                options.rlimits.push(RlimitRequest {
                    name,
                    soft: rlimit.soft,
                    hard: rlimit.hard,
                });
            }
        }
    }
    let size = |key: &str| -> Result<Option<u64>, String> {
        label(task, key)
            .map(|text| parse_bytes(text).map_err(|e| format!("label {key}: {e}")))
            .transpose()
    };
    let flag = |key: &str| -> Result<bool, String> {
        label(task, key).map_or(Ok(false), |text| parse_bool(key, text))
    };
    limits.cpu_hard_cap = flag(labels::CPU_HARD_CAP)?;
    limits.mem_high_bytes = size(labels::MEMORY_HIGH)?;
    limits.swap_bytes = size(labels::SWAP)?.unwrap_or(0);
    limits.cpuset_cpus = label(task, labels::CPUSET_CPUS).map(String::from);
    limits.cpuset_mems = label(task, labels::CPUSET_MEMS).map(String::from);
    limits.io_weight = label(task, labels::IO_WEIGHT)
        .map(|text| {
            text.trim()
                .parse::<u16>()
                .ok()
                .filter(|w| (1..=10000).contains(w))
                .ok_or_else(|| format!("label {}={text:?} is not 1-10000", labels::IO_WEIGHT))
        })
        .transpose()?;
    limits.io_max = label(task, labels::IO_MAX)
        .map(parse_io_max)
        .transpose()?
        .unwrap_or_default();
    limits.hugetlb = label(task, labels::HUGETLB)
        .map(parse_hugetlb)
        .transpose()?
        .unwrap_or_default();
    if let Some(add) = label(task, labels::CAP_ADD) {
        options.cap_add.extend(list(add));
    }
    if let Some(drop) = label(task, labels::CAP_DROP) {
        options.cap_drop.extend(list(drop));
    }
    options.user_namespace = flag(labels::USERNS)?;
    options.writable_rootfs = flag(labels::WRITABLE_ROOTFS)?;
    if let Some(devices) = label(task, labels::DEVICES) {
        options.devices = list(devices).into_iter().map(PathBuf::from).collect();
    }
    Ok((options, limits))
}

/// A seccomp profile named in `linux_info.seccomp.profile_name`: an absolute path, or a name in
/// the agent's seccomp config dir (Mesos `--seccomp_config_dir`).
fn read_seccomp_profile(name: &str, dir: Option<&Path>) -> Result<String, String> {
    let path = if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        if name.split('/').any(|c| c == "..") {
            return Err(format!("seccomp profile {name:?} must not contain '..'"));
        }
        dir.ok_or_else(|| {
            format!(
                "seccomp profile {name:?} is relative but the agent has no --seccomp-config-dir"
            )
        })?
        .join(name)
    };
    let meta =
        std::fs::metadata(&path).map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
    if meta.len() > 1 << 20 {
        return Err(format!(
            "seccomp profile {}: {} bytes is larger than the 1 MiB limit",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read_to_string(&path).map_err(|e| format!("seccomp profile {}: {e}", path.display()))
}

/// Builds the container config of a task, or says why the task is invalid.
pub(crate) fn container_config(
    settings: &AgentSettings,
    agent_id: &str,
    framework_id: &str,
    container_id: &str,
    task: &mesos::TaskInfo,
    sandbox: &Path,
) -> Result<(ContainerConfig, TaskLimits), String> {
    let image = image_of(task)?;
    if let Some(check) = &task.health_check {
        crate::health::HealthSpec::from_proto(check).map_err(|e| e.to_string())?;
    }
    let (argv, argv_kind) = command_of(task, image.is_some())?;
    let resources = ResourceSet::from_proto(&task.resources);
    let cpus = resources.scalar("cpus");
    let mem_mb = resources.scalar("mem");
    let disk_mb = resources.scalar("disk");
    if cpus <= 0.0 {
        return Err("the task asks for no cpus".into());
    }
    if mem_mb < 4.0 {
        return Err(format!(
            "the task asks for {mem_mb} MB of memory; at least 4 MB are needed"
        ));
    }
    let pids = match label(task, labels::PIDS_MAX) {
        Some(text) => Some(text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!(
                "label {}={text:?} is not a positive number",
                labels::PIDS_MAX
            )
        })?),
        None => Some(settings.default_pids_max),
    };
    let network = match task
        .container
        .as_ref()
        .and_then(|c| c.network_infos.first())
        .and_then(|n| n.name.as_deref())
    {
        None => settings.default_network,
        Some("host") => NetworkMode::Host,
        Some("none") => NetworkMode::None,
        Some("bridge") => NetworkMode::Bridge,
        // The overlay is the node bridge with its subnet routed across nodes.
        Some("overlay" | "berth") if settings.overlay => NetworkMode::Bridge,
        Some(name @ ("overlay" | "berth")) => {
            return Err(format!(
                "network {name:?}: this agent is not on the overlay (start it with --overlay)"
            ));
        }
        Some(other) => {
            return Err(format!(
                "unknown network {other:?} (berth has 'host', 'none', 'bridge' and 'overlay')"
            ));
        }
    };
    let (mut options, extra) = isolation_of(task, settings.seccomp_config_dir.as_deref())?;
    if network == NetworkMode::Bridge {
        options.resolv_conf = settings.container_resolv_conf.clone();
    }
    // An image brings its own PATH (and HOME follows its user): the containerizer fills them
    // in after the image's Env.
    let mut env = Vec::new();
    if image.is_none() {
        env.push(("PATH".to_string(), DEFAULT_PATH.to_string()));
        env.push(("HOME".to_string(), "/root".to_string()));
    }
    env.extend([
        ("MESOS_SANDBOX".to_string(), sandbox.display().to_string()),
        ("MESOS_TASK_ID".to_string(), task.task_id.value.clone()),
        ("MESOS_FRAMEWORK_ID".to_string(), framework_id.to_string()),
        ("MESOS_AGENT_ID".to_string(), agent_id.to_string()),
        ("MESOS_CONTAINER_ID".to_string(), container_id.to_string()),
    ]);
    if let Some(environment) = task.command.as_ref().and_then(|c| c.environment.as_ref()) {
        for variable in &environment.variables {
            let value = variable.value.clone().unwrap_or_default();
            env.retain(|(k, _)| k != &variable.name);
            env.push((variable.name.clone(), value));
        }
    }
    let hostname = sanitize_hostname(&task.task_id.value);
    let limits = TaskLimits { cpus, mem_mb, pids };
    Ok((
        ContainerConfig {
            id: container_id.to_string(),
            argv,
            env,
            cwd: label(task, labels::WORKDIR).map(PathBuf::from),
            limits: Limits {
                cpus,
                mem_bytes: (mem_mb * 1024.0 * 1024.0) as u64,
                pids_max: pids,
                disk_bytes: (disk_mb > 0.0).then_some((disk_mb * 1024.0 * 1024.0) as u64),
                ..extra
            },
            network,
            hostname,
            options,
            image,
            argv_kind,
        },
        limits,
    ))
}

/// The image of a task's container: `ContainerInfo` of type MESOS with `mesos.image` (a DOCKER
/// image's name, or an APPC image's name taken as a plain reference); `None` for a native
/// container.
pub fn image_of(task: &mesos::TaskInfo) -> Result<Option<String>, String> {
    use mesos::{container_info::Type as ContainerType, image::Type as ImageType};
    let Some(container) = &task.container else {
        return Ok(None);
    };
    if container.r#type() == ContainerType::Docker {
        return Err(
            "ContainerInfo type DOCKER (the Docker containerizer) is not supported: use type \
             MESOS with mesos.image"
                .into(),
        );
    }
    let Some(image) = container.mesos.as_ref().and_then(|m| m.image.as_ref()) else {
        return Ok(None);
    };
    let name = match image.r#type() {
        ImageType::Docker => image.docker.as_ref().map(|d| d.name.as_str()),
        ImageType::Appc => image.appc.as_ref().map(|a| a.name.as_str()),
    };
    match name.map(str::trim) {
        Some(name) if !name.is_empty() => Ok(Some(name.to_string())),
        _ => Err(format!(
            "container image of type {} without a name",
            image.r#type().as_str_name()
        )),
    }
}

/// The argv of a task (Mesos `CommandInfo`) and how it combines with an image's Entrypoint and
/// Cmd: a shell command runs `/bin/sh -c value`; `shell=false` with a value runs `arguments`
/// (or the value alone); with an image, `shell=false` without a value gives arguments for the
/// image's Entrypoint (none: its Cmd), and a task without a command runs the image's defaults.
pub fn command_of(
    task: &mesos::TaskInfo,
    has_image: bool,
) -> Result<(Vec<String>, ArgvKind), String> {
    let Some(command) = task.command.as_ref() else {
        if has_image {
            return Ok((Vec::new(), ArgvKind::Arguments));
        }
        return Err("the task has no command (executors are not supported yet)".into());
    };
    if command.shell() {
        let value = command
            .value
            .clone()
            .ok_or("shell command without a value")?;
        return Ok((
            vec!["/bin/sh".to_string(), "-c".to_string(), value],
            ArgvKind::Command,
        ));
    }
    match (&command.value, command.arguments.is_empty()) {
        (Some(_), false) => Ok((command.arguments.clone(), ArgvKind::Command)),
        (Some(value), true) => Ok((vec![value.clone()], ArgvKind::Command)),
        (None, _) if has_image => Ok((command.arguments.clone(), ArgvKind::Arguments)),
        (None, false) => Ok((command.arguments.clone(), ArgvKind::Command)),
        (None, true) => Err("command without a value".into()),
    }
}

/// A hostname from a task id: lower-case alphanumerics and '-', at most 63 characters.
pub fn sanitize_hostname(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "berth".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests;
