//! The filesystem isolator (Mesos `filesystem/linux`): every container gets its own root
//! filesystem, assembled by the container init in its mount namespace from the
//! [`FilesystemPlan`] built here:
//!
//! - the root is a read-only recursive bind of the host's `/` (writable only with
//!   `writable_rootfs`), mounted at `<runtime_root>/<id>/rootfs` and `pivot_root`ed into;
//! - a new `/proc` (with Docker's masked and read-only paths), a minimal `/dev` (tmpfs with
//!   null, zero, full, random, urandom, tty and the devices the task asked for, a private
//!   devpts, shm and mqueue), `/sys` read-only, private `/tmp` and `/run` tmpfs;
//! - the agent's own directories (work dir with every sandbox, runtime dir) hidden under empty
//!   read-only tmpfs;
//! - the sandbox at [`SANDBOX_IN_CONTAINER`], then the task's volumes, whose sources are
//!   checked here and whose destinations the init resolves inside the new root, so symlinks
//!   can never make a mount land outside it.
//!
//! An image container (`ContainerSpec::image`) gets an overlay of the image's layers instead
//! (writable: the upper dir is in its sandbox), the same kernel filesystems, `/dev`, masks and
//! volumes, and generated `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`; its `/tmp` and
//! `/run` are the image's, and no host directory needs hiding (see the `image` submodule).

use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use berth_executor::shim::rootfs::resolve::{self, Create};
use berth_executor::{DeviceSpec, FilesystemPlan, MountSpec, RootfsSource};
use tracing::debug;

use crate::{
    ContainerId, ContainerSpec, Isolator, IsolatorError, LaunchInfo, Namespace, NetworkMode,
    VolumeSpec, validate_container_id,
};

const NAME: &str = "filesystem";

/// Where the sandbox appears inside the container (`MESOS_SANDBOX`).
pub const SANDBOX_IN_CONTAINER: &str = "/mnt/mesos/sandbox";

/// Device nodes every container gets.
pub const DEFAULT_DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Paths hidden from containers (Docker's default `MaskedPaths`).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths containers see read-only (Docker's default `ReadonlyPaths`).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Container paths a volume may not be mounted at or under (the isolator's own mounts).
const SYSTEM_DESTINATIONS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The host paths the isolator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemPaths {
    /// Host directories hidden from every container (an empty read-only tmpfs over each): the
    /// agent's work dir (all sandboxes) and runtime dir.
    pub hidden: Vec<PathBuf>,
    /// Where the containerizer keeps per-container state dirs (`<runtime_root>/<id>`, the
    /// shim's state dir); the container's root mount point is `<runtime_root>/<id>/rootfs`.
    pub runtime_root: PathBuf,
    /// The host's root directory, `/`. Mount points of the sandbox and of volumes that live
    /// in the root filesystem are created here at `prepare` (by the agent, as the host's
    /// root: the container's root cannot create them in a user namespace, nor once its root
    /// is read-only). Tests point it at a fixture tree.
    pub host_root: PathBuf,
}

impl FilesystemPaths {
    /// Paths with `host_root` = `/`.
    pub fn new(hidden: Vec<PathBuf>, runtime_root: PathBuf) -> FilesystemPaths {
        FilesystemPaths {
            hidden,
            runtime_root,
            host_root: PathBuf::from("/"),
        }
    }
}

/// Builds each container's root filesystem plan.
#[derive(Debug)]
pub struct FilesystemIsolator {
    paths: FilesystemPaths,
}

fn invalid(message: String) -> IsolatorError {
    IsolatorError::Invalid {
        isolator: NAME,
        message,
    }
}

fn io_err(what: String, source: std::io::Error) -> IsolatorError {
    IsolatorError::Io {
        isolator: NAME,
        what,
        source,
    }
}

/// True for an absolute path without `.` or `..` components (a trailing `/` is allowed).
fn is_clean_absolute(p: &Path) -> bool {
    let s = p.as_os_str().as_encoded_bytes();
    p.is_absolute() && !s.split(|b| *b == b'/').any(|c| c == b"." || c == b"..")
}

fn mount(dest: &str, kind: &str, source: Option<&Path>, options: &[&str]) -> MountSpec {
    MountSpec {
        destination: dest.to_string(),
        kind: kind.to_string(),
        source: source.map(Path::to_path_buf),
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

impl FilesystemIsolator {
    /// Creates the isolator; hidden paths must be absolute and not `/`.
    pub fn new(paths: FilesystemPaths) -> Result<FilesystemIsolator, IsolatorError> {
        for h in &paths.hidden {
            if !is_clean_absolute(h) || h.parent().is_none() || h.to_str().is_none() {
                return Err(invalid(format!(
                    "hidden path {} must be an absolute UTF-8 path other than /, without '..'",
                    h.display()
                )));
            }
        }
        Ok(FilesystemIsolator { paths })
    }

    /// The container's root mount point, `<runtime_root>/<id>/rootfs`.
    pub fn rootfs_dir(&self, id: &ContainerId) -> PathBuf {
        self.paths.runtime_root.join(id).join("rootfs")
    }

    /// The plan for `spec` (checks its volumes and devices; creates nothing).
    pub fn plan(&self, spec: &ContainerSpec) -> Result<FilesystemPlan, IsolatorError> {
        validate_container_id(&spec.id)?;
        if let Some(image) = &spec.image {
            return self.image_plan(spec, image);
        }
        let mut mounts = kernel_mounts(spec);
        mounts.push(mount(
            "/tmp",
            "tmpfs",
            Some(Path::new("tmpfs")),
            &["nosuid", "nodev", "mode=1777"],
        ));
        mounts.push(mount(
            "/run",
            "tmpfs",
            Some(Path::new("tmpfs")),
            &["nosuid", "nodev", "mode=755"],
        ));
        // /etc/resolv.conf is often a symlink into /run (systemd-resolved, NetworkManager),
        // which the container gets as an empty tmpfs: carry the file it points to over.
        if let Some((target, source)) = self.host_file_in_run(Path::new("/etc/resolv.conf")) {
            mounts.push(mount(
                &target,
                "bind",
                Some(&source),
                &["bind", "ro", "nosuid", "nodev", "noexec"],
            ));
        }
        // berth's DNS for bridge/overlay tasks: its resolv.conf over the host's.
        if let Some(resolv) = &spec.options.resolv_conf {
            mounts.push(mount(
                "/etc/resolv.conf",
                "bind",
                Some(resolv),
                &["bind", "ro", "nosuid", "nodev", "noexec"],
            ));
        }
        // The container has its own hostname (UTS namespace): /etc/hosts and /etc/hostname
        // that name it, generated into the sandbox like an image container's (the host's own
        // files are left alone; a host without them gets none).
        let etc = etc_dir(&spec.sandbox);
        for name in NATIVE_ETC_FILES {
            if self.paths.host_root.join("etc").join(name).is_file() {
                mounts.push(mount(
                    &format!("/etc/{name}"),
                    "bind",
                    Some(&etc.join(name)),
                    &["bind", "ro", "nosuid", "nodev", "noexec"],
                ));
            }
        }
        for h in &self.paths.hidden {
            mounts.push(mount(
                h.to_str().expect("checked in new"),
                "tmpfs",
                Some(Path::new("tmpfs")),
                &["ro", "nosuid", "nodev", "noexec", "mode=755", "size=4k"],
            ));
        }
        mounts.push(mount(
            SANDBOX_IN_CONTAINER,
            "bind",
            Some(&spec.sandbox),
            &["rbind", "rw", "nosuid", "nodev"],
        ));
        mounts.push(hide_generated_etc());
        mounts.extend(self.volume_mounts(spec)?);
        Ok(FilesystemPlan {
            root: self.rootfs_dir(&spec.id),
            source: RootfsSource::HostBind,
            readonly: !spec.options.writable_rootfs,
            mounts,
            devices: devices(&spec.options.devices)?,
            masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Where `path` of the host's root really is, when that is under `/run`: (path in the
    /// container, host path). Looked up inside `host_root`.
    fn host_file_in_run(&self, path: &Path) -> Option<(String, PathBuf)> {
        let root = resolve::open_root(&self.paths.host_root).ok()?;
        let base = resolve::fd_path(root.as_fd()).ok()?;
        let fd = resolve::open_in_root(root.as_fd(), path, Create::Nothing).ok()?;
        let real = resolve::fd_path(fd.as_fd()).ok()?;
        let inside = Path::new("/").join(real.strip_prefix(&base).ok()?);
        if !inside.starts_with("/run") || inside == Path::new("/run") || !real.is_file() {
            return None;
        }
        Some((inside.to_str()?.to_string(), real))
    }

    /// The bind mounts of the task's volumes (checked by [`Self::resolve_volume`]), in order.
    fn volume_mounts(&self, spec: &ContainerSpec) -> Result<Vec<MountSpec>, IsolatorError> {
        spec.options
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (host, container) = self.resolve_volume(spec, i, v)?;
                let ro = if v.read_only { "ro" } else { "rw" };
                Ok(mount(
                    &container,
                    "bind",
                    Some(&host),
                    &["rbind", ro, "nosuid", "nodev"],
                ))
            })
            .collect()
    }

    /// Checks volume `i` of `spec`: returns its host source (canonical) and container path.
    fn resolve_volume(
        &self,
        spec: &ContainerSpec,
        i: usize,
        v: &VolumeSpec,
    ) -> Result<(PathBuf, String), IsolatorError> {
        let name = format!(
            "volume {i} ({}:{})",
            v.host.display(),
            v.container.display()
        );
        // Container side: absolute, or relative to the sandbox mount point.
        let container = if v.container.is_absolute() {
            v.container.clone()
        } else {
            Path::new(SANDBOX_IN_CONTAINER).join(&v.container)
        };
        if v.container.as_os_str().is_empty() || !is_clean_absolute(&container) {
            return Err(invalid(format!(
                "{name}: the container path must not be empty nor have '.' or '..' components"
            )));
        }
        let container: PathBuf = container.components().collect();
        if container.parent().is_none() {
            return Err(invalid(format!("{name}: cannot be mounted over /")));
        }
        if let Some(sys) = SYSTEM_DESTINATIONS
            .iter()
            .find(|s| container.starts_with(s))
        {
            return Err(invalid(format!(
                "{name}: cannot be mounted at or under {sys}"
            )));
        }
        if Path::new(SANDBOX_IN_CONTAINER).starts_with(&container) {
            return Err(invalid(format!(
                "{name}: would hide the sandbox at {SANDBOX_IN_CONTAINER}"
            )));
        }
        let container_str = container
            .to_str()
            .ok_or_else(|| invalid(format!("{name}: the container path is not UTF-8")))?
            .to_string();
        // Host side: absolute (as given, must exist), or inside the sandbox, looked up with
        // RESOLVE_IN_ROOT from the sandbox so a symlink in it cannot point anywhere else.
        let host = if v.host.is_absolute() {
            if v.host.components().any(|c| c == Component::ParentDir) {
                return Err(invalid(format!(
                    "{name}: the host path has '..' components"
                )));
            }
            std::fs::canonicalize(&v.host).map_err(|e| {
                invalid(format!(
                    "{name}: host path {} is not usable: {e}",
                    v.host.display()
                ))
            })?
        } else {
            resolve_in_sandbox(&spec.sandbox, &v.host)
                .map_err(|e| invalid(format!("{name}: {e}")))?
        };
        Ok((host, container_str))
    }

    /// Creates, in the host's root, the mount points of bind mounts that live in the root
    /// filesystem (not under an earlier mount of the plan), looked up inside `host_root`.
    fn create_mount_points(&self, plan: &FilesystemPlan) -> Result<(), IsolatorError> {
        let root = resolve::open_root(&self.paths.host_root)
            .map_err(|e| io_err(format!("open {}", self.paths.host_root.display()), e.into()))?;
        let mut earlier: Vec<&Path> = vec![Path::new("/dev")];
        for m in &plan.mounts {
            let dest = Path::new(&m.destination);
            let in_root = !earlier.iter().any(|e| dest.starts_with(e));
            earlier.push(dest);
            let Some(src) = m.source.as_deref().filter(|_| m.kind == "bind") else {
                continue;
            };
            if !in_root {
                continue;
            }
            let create = if src.is_dir() {
                Create::Dir
            } else {
                Create::File
            };
            let fd = resolve::open_in_root(root.as_fd(), dest, create).map_err(|e| {
                io_err(
                    format!(
                        "create mount point {} in {}",
                        m.destination,
                        self.paths.host_root.display()
                    ),
                    e.into(),
                )
            })?;
            drop(fd);
        }
        Ok(())
    }
}

/// The kernel filesystems every container gets: a new /proc, a private devpts, /dev/shm,
/// /dev/mqueue, and /sys read-only.
fn kernel_mounts(spec: &ContainerSpec) -> Vec<MountSpec> {
    let userns = spec.options.user_namespace;
    let mut devpts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if !userns {
        // The tty group; not mapped in a user namespace.
        devpts.push("gid=5");
    }
    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            Some(Path::new("proc")),
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/dev/pts", "devpts", Some(Path::new("devpts")), &devpts),
        mount(
            "/dev/shm",
            "tmpfs",
            Some(Path::new("shm")),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            Some(Path::new("mqueue")),
            &["nosuid", "noexec", "nodev"],
        ),
    ];
    // A sysfs shows the network devices of the mounter's network namespace (and cannot be
    // mounted in a user namespace without one): with host networking, the host's /sys.
    if spec.network == NetworkMode::Host {
        mounts.push(mount(
            "/sys",
            "bind",
            Some(Path::new("/sys")),
            &["rbind", "ro", "nosuid", "noexec", "nodev"],
        ));
    } else {
        mounts.push(mount(
            "/sys",
            "sysfs",
            Some(Path::new("sysfs")),
            &["ro", "nosuid", "noexec", "nodev"],
        ));
    }
    mounts
}

/// The absolute path of `rel` inside `sandbox`, looked up without leaving it.
fn resolve_in_sandbox(sandbox: &Path, rel: &Path) -> Result<PathBuf, String> {
    let root =
        resolve::open_root(sandbox).map_err(|e| format!("sandbox {}: {e}", sandbox.display()))?;
    let fd = resolve::open_in_root(root.as_fd(), rel, Create::Nothing).map_err(|e| {
        format!(
            "host path {} in the sandbox is not usable: {e}",
            rel.display()
        )
    })?;
    let path = resolve::fd_path(fd.as_fd()).map_err(|e| format!("readlink: {e}"))?;
    let base = resolve::fd_path(root.as_fd()).map_err(|e| format!("readlink: {e}"))?;
    if !path.starts_with(&base) {
        return Err(format!(
            "host path {} resolves outside the sandbox",
            rel.display()
        ));
    }
    Ok(path)
}

/// The default devices plus the requested ones (host device nodes under /dev, same path in
/// the container).
fn devices(extra: &[PathBuf]) -> Result<Vec<DeviceSpec>, IsolatorError> {
    let mut out: Vec<DeviceSpec> = DEFAULT_DEVICES
        .iter()
        .map(|d| DeviceSpec {
            path: d.to_string(),
            host_path: PathBuf::from(d),
        })
        .collect();
    for d in extra {
        let path = d
            .to_str()
            .filter(|_| is_clean_absolute(d) && d.starts_with("/dev") && d != Path::new("/dev"))
            .ok_or_else(|| {
                invalid(format!(
                    "device {}: must be a path under /dev without '..'",
                    d.display()
                ))
            })?;
        let meta =
            std::fs::metadata(d).map_err(|e| invalid(format!("device {}: {e}", d.display())))?;
        if !meta.file_type().is_char_device() && !meta.file_type().is_block_device() {
            return Err(invalid(format!("{} is not a device node", d.display())));
        }
        if !out.iter().any(|o| o.path == path) {
            out.push(DeviceSpec {
                path: path.to_string(),
                host_path: d.clone(),
            });
        }
    }
    Ok(out)
}

impl Isolator for FilesystemIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        let plan = self.plan(spec)?;
        std::fs::create_dir_all(&plan.root)
            .map_err(|e| io_err(format!("create {}", plan.root.display()), e))?;
        if spec.image.is_some() {
            // Mount points are made by the init in the overlay (its upper dir), never on the
            // host; the /etc files the plan binds are generated now.
            self.write_etc_files(spec)?;
        } else {
            self.write_native_etc_files(spec)?;
            self.create_mount_points(&plan)?;
        }
        debug!(container_id = %spec.id, rootfs = %plan.root.display(), mounts = plan.mounts.len(),
            "filesystem plan ready");
        Ok(LaunchInfo {
            namespaces: vec![Namespace::Mount],
            filesystem: Some(plan),
            sandbox_in_container: Some(PathBuf::from(SANDBOX_IN_CONTAINER)),
            ..Default::default()
        })
    }

    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        validate_container_id(id)?;
        // The mounts lived in the container's mount namespace, gone with its last process:
        // the mount point is an empty directory again.
        let dir = self.rootfs_dir(id);
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", dir.display()), e)),
        }
    }

    fn describe(&self, id: &ContainerId) -> serde_json::Value {
        serde_json::json!({
            "rootfs": self.rootfs_dir(id),
            "sandbox_in_container": SANDBOX_IN_CONTAINER,
        })
    }
}

mod image;
use image::{NATIVE_ETC_FILES, etc_dir, hide_generated_etc};
#[cfg(test)]
mod tests;
