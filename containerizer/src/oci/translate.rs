//! A runtime-spec `config.json` → berth's own launch machinery: the shim's [`ShimConfig`]
//! (argv, env, cwd, namespaces, id maps, [`FilesystemPlan`], [`SecurityPlan`]), the cgroups
//! isolator's [`Limits`] and device allow-list, and where the cgroups go. Pure except for
//! `stat(2)` of host device nodes; unit-tested against `crun spec`-like fixtures.
//!
//! What berth does differently from runc, by design or for now (each reported as a warning
//! naming the field when a config asks for it):
//! - `/dev` is always a fresh tmpfs holding the spec's default devices, the config's
//!   `linux.devices` (bound from the host node with the same numbers, which must exist) and
//!   `/dev/console` with a terminal; a `tmpfs` mount at `/dev` in the config is that tmpfs.
//! - a `cgroup` mount is `cgroup2` on v2 and, on v1, a tmpfs with a bind of the container's
//!   own cgroup directory of every hierarchy (read-only when asked), as runc lays it out.
//! - capabilities: ambient ones that are not both permitted and inheritable are dropped (the
//!   kernel refuses them; runc ignores the failure).
//! - seccomp filter `flags` are not applied; `SCMP_ACT_NOTIFY` is refused.
//! - not supported, ignored with a warning: apparmor/selinux labels, `umask`, scheduler, io
//!   priority, personality, intelRdt, memory policy, `rootfsPropagation`, `mountLabel`.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_executor::{
    CapabilitySets, DeviceSpec, FilesystemPlan, IdMapRange, IdMaps, MountSpec, ProcessUser,
    RlimitSpec, RootfsSource, SecurityPlan, ShimConfig,
};
use berth_isolators::cgroups::CgroupVersion;
use berth_isolators::security::SeccompIsolator;
use berth_isolators::{IsolationOptions, Limits};
use oci_spec::runtime::{
    Capabilities, LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, Process, Spec,
};

pub use super::placement::{CgroupPlacement, DEFAULT_CGROUP_BASE};
use super::resources;

/// The spec's default device nodes (config-linux.md "Default Devices") are the ones every berth
/// container gets; `/dev/ptmx` is a link to `pts/ptmx` made by the shim.
pub use berth_isolators::filesystem::DEFAULT_DEVICES;

/// A config that berth cannot run, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The JSON path of the offending field (`process.args`, `mounts[3]`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The cgroups a container will have, for its `cgroup` mounts.
#[derive(Debug, Clone)]
pub struct CgroupView {
    /// The hierarchy version.
    pub version: CgroupVersion,
    /// The cgroup root (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// The container's cgroup directories (one per v1 hierarchy).
    pub dirs: Vec<PathBuf>,
}

/// Everything besides the config that a translation depends on.
#[derive(Debug, Clone)]
pub struct TranslateContext {
    /// Container id.
    pub id: String,
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// The container's state directory (the shim's state dir; holds the empty `rootfs` mount
    /// point).
    pub state_dir: PathBuf,
    /// The container's cgroups.
    pub cgroups: CgroupView,
    /// Where host device nodes are looked up (`/` normally).
    pub host_root: PathBuf,
}

/// The process part of a config (shared by `create` and `exec`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessParts {
    /// argv.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory (absolute, inside the container).
    pub cwd: PathBuf,
    /// Capabilities, no_new_privs, rlimits, user (no seccomp: it is the container's).
    pub security: SecurityPlan,
    /// Allocate a terminal.
    pub terminal: bool,
    /// Terminal size (columns, rows).
    pub console_size: (u16, u16),
    /// `oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
}

/// The result of [`translate`].
#[derive(Debug, Clone)]
pub struct Translation {
    /// The shim config; `oci` is left for the caller (stdio depends on its arguments).
    pub shim: ShimConfig,
    /// The process part (terminal, console size, oom score).
    pub process: ProcessParts,
    /// cgroup limits.
    pub limits: Limits,
    /// The cgroups isolator's options (the devices to allow).
    pub options: IsolationOptions,
    /// `linux.sysctl`, sorted.
    pub sysctl: Vec<(String, String)>,
    /// `domainname`.
    pub domainname: Option<String>,
    /// What the config asks for that berth does not apply exactly.
    pub warnings: Vec<String>,
}

fn cap_names(set: &Option<Capabilities>) -> BTreeSet<String> {
    set.iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

/// The process part of `process` (`field` prefixes error paths: "process").
pub fn process_parts(
    process: &Process,
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<ProcessParts, ConfigError> {
    let f = |name: &str| format!("{field}.{name}");
    let argv = process.args().clone().unwrap_or_default();
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ConfigError::new(f("args"), "no command to run"));
    }
    let mut env = Vec::new();
    for e in process.env().iter().flatten() {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => {
                return Err(ConfigError::new(
                    f("env"),
                    format!("{e:?} is not KEY=VALUE"),
                ));
            }
        }
    }
    let cwd = process.cwd().clone();
    if !cwd.is_absolute() {
        return Err(ConfigError::new(
            f("cwd"),
            format!("{} is not an absolute path", cwd.display()),
        ));
    }
    let capabilities = process.capabilities().as_ref().map(|c| {
        let permitted = cap_names(c.permitted());
        let inheritable = cap_names(c.inheritable());
        let ambient_all = cap_names(c.ambient());
        let ambient: BTreeSet<String> = ambient_all
            .iter()
            .filter(|a| permitted.contains(*a) && inheritable.contains(*a))
            .cloned()
            .collect();
        if ambient.len() != ambient_all.len() {
            // runc ignores the kernel's refusal silently; `crun spec` asks for this.
            tracing::debug!(
                dropped = ?ambient_all.difference(&ambient).collect::<Vec<_>>(),
                "{}: ambient capabilities must be permitted and inheritable",
                f("capabilities.ambient")
            );
        }
        CapabilitySets {
            bounding: cap_names(c.bounding()).into_iter().collect(),
            effective: cap_names(c.effective())
                .into_iter()
                .filter(|e| permitted.contains(e))
                .collect(),
            permitted: permitted.iter().cloned().collect(),
            inheritable: inheritable.into_iter().collect(),
            ambient: ambient.into_iter().collect(),
        }
    });
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| RlimitSpec {
            kind: r.typ().to_string(),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    let u = process.user();
    let user = ProcessUser {
        uid: u.uid(),
        gid: u.gid(),
        additional_gids: u.additional_gids().clone().unwrap_or_default(),
    };
    let unsupported = [
        ("user.umask", u.umask().is_some()),
        ("apparmorProfile", process.apparmor_profile().is_some()),
        ("selinuxLabel", process.selinux_label().is_some()),
        ("scheduler", process.scheduler().is_some()),
        ("ioPriority", process.io_priority().is_some()),
        ("execCPUAffinity", process.exec_cpu_affinity().is_some()),
    ];
    for (name, set) in unsupported {
        if set {
            warnings.push(format!("{}: not supported, ignored", f(name)));
        }
    }
    let size = process.console_size().unwrap_or_default();
    let clamp = |v: u64| v.min(u64::from(u16::MAX)) as u16;
    Ok(ProcessParts {
        argv,
        env,
        cwd,
        security: SecurityPlan {
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            capabilities,
            seccomp: None,
            rlimits,
            user: Some(user),
        },
        terminal: process.terminal().unwrap_or(false),
        console_size: (clamp(size.width()), clamp(size.height())),
        oom_score_adj: process.oom_score_adj(),
    })
}

fn id_map(list: &Option<Vec<LinuxIdMapping>>) -> Vec<IdMapRange> {
    list.iter()
        .flatten()
        .map(|m| IdMapRange {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect()
}

/// The host id of `id` under `map` (identity without a map).
pub fn map_to_host(map: Option<&[IdMapRange]>, id: u32) -> u32 {
    let Some(map) = map else { return id };
    map.iter()
        .find(|r| id >= r.container_id && id - r.container_id < r.size)
        .map_or(id, |r| r.host_id + (id - r.container_id))
}

/// Namespaces to create (the shim's names) and to join by path, in the config's order.
type NamespaceLists = (Vec<String>, Vec<(String, PathBuf)>);

/// Names the shim knows, in the config's order; namespaces given by path go to `ns_paths`.
fn namespaces(spec: &Spec) -> Result<NamespaceLists, ConfigError> {
    let mut create = Vec::new();
    let mut join = Vec::new();
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (i, ns) in list.iter().enumerate() {
        let name = match ns.typ() {
            LinuxNamespaceType::Pid => "pid",
            LinuxNamespaceType::Network => "net",
            LinuxNamespaceType::Mount => "mount",
            LinuxNamespaceType::Ipc => "ipc",
            LinuxNamespaceType::Uts => "uts",
            LinuxNamespaceType::User => "user",
            LinuxNamespaceType::Cgroup => "cgroup",
            LinuxNamespaceType::Time => {
                return Err(ConfigError::new(
                    format!("linux.namespaces[{i}]"),
                    "time namespaces are not supported",
                ));
            }
        };
        if create.iter().any(|n| n == name) || join.iter().any(|(n, _)| n == name) {
            return Err(ConfigError::new(
                format!("linux.namespaces[{i}]"),
                format!("namespace {name} listed twice"),
            ));
        }
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => join.push((name.to_string(), p.clone())),
            _ => create.push(name.to_string()),
        }
    }
    Ok((create, join))
}

/// A host node with the same type and numbers as a `linux.devices` entry.
fn host_device(
    host_root: &Path,
    path: &Path,
    typ: LinuxDeviceType,
    major: i64,
    minor: i64,
) -> Result<PathBuf, String> {
    let want_block = match typ {
        LinuxDeviceType::B => true,
        LinuxDeviceType::C | LinuxDeviceType::U => false,
        other => return Err(format!("device type {:?} is not supported", other.as_str())),
    };
    let host = host_root.join(path.strip_prefix("/").unwrap_or(path));
    let meta = std::fs::metadata(&host)
        .map_err(|e| format!("no host node {} to bind: {e}", host.display()))?;
    let ft = meta.file_type();
    let is_dev = if want_block {
        ft.is_block_device()
    } else {
        ft.is_char_device()
    };
    let rdev = meta.rdev();
    let (ma, mi) = (libc::major(rdev) as i64, libc::minor(rdev) as i64);
    if !is_dev || ma != major || mi != minor {
        return Err(format!(
            "the host node {} is not {} {major}:{minor}",
            host.display(),
            if want_block { "block" } else { "char" }
        ));
    }
    Ok(host)
}

/// The mounts of the config, as the shim takes them.
fn mounts(
    spec: &Spec,
    ctx: &TranslateContext,
    readonly_paths: &mut Vec<String>,
) -> Result<Vec<MountSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        let mut dest = m.destination().to_string_lossy().into_owned();
        if !dest.starts_with('/') {
            dest.insert(0, '/');
        }
        let options = m.options().clone().unwrap_or_default();
        let is_bind = options.iter().any(|o| o == "bind" || o == "rbind");
        let kind = match (m.typ().as_deref(), is_bind) {
            (Some(t), _) if !t.is_empty() && t != "none" => t.to_string(),
            (_, true) => "bind".to_string(),
            _ => return Err(ConfigError::new(field, "no filesystem type")),
        };
        let source = m.source().clone();
        if kind == "bind" || is_bind {
            let src =
                source.ok_or_else(|| ConfigError::new(&field, "bind mount without a source"))?;
            let src = if src.is_absolute() {
                src
            } else {
                ctx.bundle.join(src)
            };
            if std::fs::symlink_metadata(&src).is_err() {
                return Err(ConfigError::new(
                    field,
                    format!("bind source {} does not exist", src.display()),
                ));
            }
            out.push(MountSpec {
                destination: dest,
                kind: "bind".into(),
                source: Some(src),
                options: options.into_iter().filter(|o| o != "none").collect(),
            });
            continue;
        }
        match kind.as_str() {
            // berth's fresh /dev (see the module docs) is this tmpfs.
            "tmpfs" if dest == "/dev" => {}
            "cgroup" | "cgroup2" => {
                cgroup_mounts(&dest, &options, &ctx.cgroups, &mut out, readonly_paths)
            }
            _ => out.push(MountSpec {
                destination: dest,
                kind,
                source,
                options,
            }),
        }
    }
    Ok(out)
}

/// A `cgroup` mount at `dest` (see the module docs).
fn cgroup_mounts(
    dest: &str,
    options: &[String],
    view: &CgroupView,
    out: &mut Vec<MountSpec>,
    readonly_paths: &mut Vec<String>,
) {
    let flags: Vec<String> = options
        .iter()
        .filter(|o| {
            matches!(
                o.as_str(),
                "nosuid" | "nodev" | "noexec" | "ro" | "rw" | "relatime"
            )
        })
        .cloned()
        .collect();
    match view.version {
        CgroupVersion::V2 => out.push(MountSpec {
            destination: dest.into(),
            kind: "cgroup2".into(),
            source: Some("cgroup".into()),
            options: flags,
        }),
        CgroupVersion::V1 => {
            out.push(MountSpec {
                destination: dest.into(),
                kind: "tmpfs".into(),
                source: Some("cgroup".into()),
                options: vec![
                    "nosuid".into(),
                    "nodev".into(),
                    "noexec".into(),
                    "mode=755".into(),
                ],
            });
            for dir in &view.dirs {
                let Some(hierarchy) = dir
                    .strip_prefix(&view.root)
                    .ok()
                    .and_then(|r| r.components().next())
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                else {
                    continue;
                };
                let mut opts = vec!["bind".to_string()];
                opts.extend(flags.iter().filter(|f| *f != "relatime").cloned());
                out.push(MountSpec {
                    destination: format!("{dest}/{hierarchy}"),
                    kind: "bind".into(),
                    source: Some(dir.clone()),
                    options: opts,
                });
            }
            if flags.iter().any(|f| f == "ro") {
                readonly_paths.push(dest.into());
            }
        }
    }
}

/// Translates `spec` (the bundle's config) for `ctx`.
pub fn translate(spec: &Spec, ctx: &TranslateContext) -> Result<Translation, ConfigError> {
    let mut warnings = Vec::new();
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| ConfigError::new("process", "missing"))?;
    let mut parts = process_parts(process, "process", &mut warnings)?;
    let linux = spec.linux().clone().unwrap_or_default();

    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| ConfigError::new("root", "missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        ctx.bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(ConfigError::new(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }

    let (create, join) = namespaces(spec)?;
    let has = |n: &str| create.iter().any(|c| c == n) || join.iter().any(|(j, _)| j == n);
    if !has("mount") {
        return Err(ConfigError::new(
            "linux.namespaces",
            "berth needs a mount namespace to build the container's root",
        ));
    }
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if hostname.is_some() && !has("uts") {
        return Err(ConfigError::new(
            "hostname",
            "setting the hostname needs a uts namespace",
        ));
    }
    let domainname = spec.domainname().clone().filter(|h| !h.is_empty());
    if domainname.is_some() && !has("uts") {
        return Err(ConfigError::new(
            "domainname",
            "setting the domain name needs a uts namespace",
        ));
    }

    let uid_map = id_map(linux.uid_mappings());
    let gid_map = id_map(linux.gid_mappings());
    let id_maps = if create.iter().any(|c| c == "user") {
        if uid_map.is_empty() || gid_map.is_empty() {
            return Err(ConfigError::new(
                "linux.uidMappings",
                "a new user namespace needs uidMappings and gidMappings",
            ));
        }
        Some(IdMaps { uid_map, gid_map })
    } else {
        if !uid_map.is_empty() || !gid_map.is_empty() {
            warnings.push("linux.uidMappings: ignored without a new user namespace".to_string());
        }
        None
    };

    // Devices: the defaults, then the config's (bound from the host's nodes).
    let mut devices: Vec<DeviceSpec> = DEFAULT_DEVICES
        .iter()
        .map(|d| DeviceSpec {
            path: d.to_string(),
            host_path: PathBuf::from(d),
        })
        .collect();
    let mut allowed = Vec::new();
    let mut extra_nodes = Vec::new();
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        let path = d.path();
        if !path.starts_with("/dev") || path == Path::new("/dev") {
            return Err(ConfigError::new(
                field,
                format!("{} is not under /dev", path.display()),
            ));
        }
        let host = host_device(&ctx.host_root, path, d.typ(), d.major(), d.minor())
            .map_err(|m| ConfigError::new(&field, m))?;
        if d.file_mode().is_some() || d.uid().is_some() || d.gid().is_some() {
            warnings.push(format!(
                "{field}: fileMode/uid/gid not applied (the host node is bound as it is)"
            ));
        }
        let p = path.to_string_lossy().into_owned();
        devices.retain(|x| x.path != p);
        devices.push(DeviceSpec {
            path: p,
            host_path: host.clone(),
        });
        let kind = if d.typ() == LinuxDeviceType::B {
            'b'
        } else {
            'c'
        };
        allowed.push((kind, d.major(), d.minor()));
        extra_nodes.push(host);
    }

    let mut readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
    let mounts = mounts(spec, ctx, &mut readonly_paths)?;
    let filesystem = FilesystemPlan {
        root: ctx.state_dir.join("rootfs"),
        source: RootfsSource::Directory { path: rootfs },
        readonly: root.readonly().unwrap_or(false),
        mounts,
        devices,
        masked_paths: linux.masked_paths().clone().unwrap_or_default(),
        readonly_paths,
    };

    parts.security.seccomp = seccomp_program(spec, &mut warnings)?;

    let (limits, res_warnings) =
        resources::limits(linux.resources().as_ref(), ctx.cgroups.version, &allowed)?;
    warnings.extend(res_warnings);

    let mut sysctl: Vec<(String, String)> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    sysctl.sort();
    for (k, _) in &sysctl {
        check_sysctl(k, &has)?;
    }

    let unsupported = [
        (
            "linux.rootfsPropagation",
            linux.rootfs_propagation().is_some(),
        ),
        ("linux.mountLabel", linux.mount_label().is_some()),
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.personality", linux.personality().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
        (
            "linux.netDevices",
            linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()),
        ),
    ];
    for (name, set) in unsupported {
        if set {
            warnings.push(format!("{name}: not supported, ignored"));
        }
    }

    let shim = ShimConfig {
        container_id: ctx.id.clone(),
        argv: parts.argv.clone(),
        env: parts.env.clone(),
        cwd: Some(parts.cwd.clone()),
        namespaces: create,
        hostname,
        stdout_path: PathBuf::from("/dev/null"),
        stderr_path: PathBuf::from("/dev/null"),
        state_dir: ctx.state_dir.clone(),
        id_maps,
        filesystem: Some(filesystem),
        security: parts.security.clone(),
        ns_paths: join,
        oci: None,
    };
    Ok(Translation {
        shim,
        process: parts,
        limits,
        options: IsolationOptions {
            devices: extra_nodes,
            ..IsolationOptions::default()
        },
        sysctl,
        domainname,
        warnings,
    })
}

/// The container's seccomp filter (`linux.seccomp`), compiled. The OCI profile has the JSON
/// shape of a Docker profile, so berth's compiler reads it as it is.
pub fn seccomp_program(
    spec: &Spec,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<berth_executor::BpfInstruction>>, ConfigError> {
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
        return Ok(None);
    };
    let mut seccomp = seccomp;
    if seccomp.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        warnings.push("linux.seccomp.flags: not applied".to_string());
        seccomp.set_flags(None);
    }
    let json = serde_json::to_string(&seccomp).expect("LinuxSeccomp serializes");
    SeccompIsolator::new()
        .compile_custom(&json, &[], &[])
        .map(Some)
        .map_err(|e| ConfigError::new("linux.seccomp", e.to_string()))
}

/// Sysctls a container may set: those of namespaces it has its own of (runc's rule).
fn check_sysctl(key: &str, has: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
    let field = format!("linux.sysctl.{key}");
    if key.is_empty() || key.contains("..") || key.starts_with('.') || key.contains('/') {
        return Err(ConfigError::new(field, "not a sysctl name"));
    }
    let ipc = matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.");
    let (ns, ok) = if ipc {
        ("ipc", has("ipc"))
    } else if key.starts_with("net.") {
        ("net", has("net"))
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        ("uts", has("uts"))
    } else {
        return Err(ConfigError::new(
            field,
            "not namespaced: it would change the host",
        ));
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("needs the container's own {ns} namespace"),
        ))
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
