//! The container's root filesystem (the Mesos `filesystem/linux` isolator's work, done by the
//! container init in its own mount namespace).
//!
//! [`PreparedFs::from_plan`] validates a [`FilesystemPlan`] and parses its mount options before
//! `clone` (errors there are config errors); [`PreparedFs::assemble`] runs in the init after the
//! sync byte and is the ordered checklist. Every mount destination is resolved inside the new
//! root with `openat2(RESOLVE_IN_ROOT)` ([`resolve`]), and the mount is made onto the resulting
//! descriptor, so a symlink in the root (the host's `/`, a volume, the sandbox) can never make a
//! mount land outside the root.

pub mod options;
pub mod resolve;
pub mod sys;

use std::ffi::CString;
use std::fmt::Display;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount};

use self::options::{Bind, parse_options};
use self::resolve::{Create, open_in_root, open_root};
use crate::protocol::{DeviceSpec, FilesystemPlan, RootfsSource};

/// tmpfs options of a fresh `/dev` (the OCI runtime-spec default).
const DEV_TMPFS_DATA: &str = "mode=755,size=65536k";
/// Symlinks made in a fresh `/dev`: name, target.
const DEV_SYMLINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// What is mounted at the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Root {
    /// Recursive bind of this directory (`/` for a host bind).
    Bind(PathBuf),
    /// overlayfs with this data string.
    Overlay(String),
}

/// One validated mount.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mount {
    /// A bind mount made with `open_tree` + `mount_setattr` + `move_mount`.
    Bind {
        source: PathBuf,
        recursive: bool,
        attr_set: u64,
        attr_clr: u64,
        propagation: Option<MsFlags>,
    },
    /// Any other filesystem, made with `mount(2)` onto `/proc/self/fd/N`.
    Fs {
        fstype: String,
        source: String,
        flags: MsFlags,
        data: String,
        propagation: Option<MsFlags>,
    },
}

/// A [`FilesystemPlan`] checked and parsed, ready for the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedFs {
    root: PathBuf,
    source: Root,
    readonly: bool,
    mounts: Vec<(PathBuf, Mount)>,
    devices: Vec<DeviceSpec>,
    /// `/dev/ptmx -> pts/ptmx` is wanted (a devpts is mounted at /dev/pts, no ptmx device).
    ptmx_link: bool,
    masked: Vec<PathBuf>,
    readonly_paths: Vec<PathBuf>,
}

fn err(what: impl Display, e: Errno) -> String {
    format!("{what}: {e}")
}

/// Checks that a container path is absolute and has no `..` (nor `.`) components.
fn container_path(what: &str, p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!("{what} {p:?} is not an absolute path"));
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!("{what} {p:?} has a '.' or '..' component"));
    }
    if p.contains('\0') {
        return Err(format!("{what} {p:?} contains a NUL byte"));
    }
    Ok(path.components().collect())
}

fn host_path(what: &str, p: &Path) -> Result<PathBuf, String> {
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{what} {} must be absolute, without '..'",
            p.display()
        ));
    }
    if p.as_os_str().as_bytes().contains(&0) {
        return Err(format!("{what} {} contains a NUL byte", p.display()));
    }
    Ok(p.to_owned())
}

/// overlayfs takes ':' and ',' as separators in its options: refuse paths containing them.
fn overlay_path(what: &str, p: &Path) -> Result<String, String> {
    let p = host_path(what, p)?;
    let s = p
        .to_str()
        .ok_or_else(|| format!("{what} {} is not UTF-8", p.display()))?;
    if s.contains([':', ',', '\\']) {
        return Err(format!("overlay {what} {s:?} contains ':', ',' or '\\'"));
    }
    Ok(s.to_owned())
}

impl PreparedFs {
    /// Validates `plan`: absolute paths without `..`, device paths under `/dev`, known mount
    /// options (bind mounts with a source). Pure.
    pub fn from_plan(plan: &FilesystemPlan) -> Result<PreparedFs, String> {
        let root = host_path("filesystem root", &plan.root)?;
        let source = match &plan.source {
            RootfsSource::HostBind => Root::Bind(PathBuf::from("/")),
            RootfsSource::Directory { path } => Root::Bind(host_path("rootfs directory", path)?),
            RootfsSource::Overlay { lower, upper, work } => {
                if lower.is_empty() {
                    return Err("overlay rootfs without lower layers".into());
                }
                let lower = lower
                    .iter()
                    .map(|l| overlay_path("lower dir", l))
                    .collect::<Result<Vec<_>, _>>()?;
                Root::Overlay(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.join(":"),
                    overlay_path("upper dir", upper)?,
                    overlay_path("work dir", work)?
                ))
            }
        };
        let mut mounts = Vec::with_capacity(plan.mounts.len());
        for m in &plan.mounts {
            let dest = container_path("mount destination", &m.destination)?;
            let what = |e: String| format!("mount at {}: {e}", m.destination);
            let o = parse_options(&m.options).map_err(what)?;
            let bind = match (o.bind, m.kind.as_str()) {
                (Some(b), _) => Some(b),
                (None, "bind") => Some(Bind::Plain),
                (None, "") => return Err(what("no filesystem type".into())),
                (None, _) => None,
            };
            let mount = match bind {
                Some(b) => {
                    let src = m
                        .source
                        .as_deref()
                        .ok_or_else(|| what("bind mount without a source".into()))?;
                    if !o.data.is_empty() {
                        return Err(what(format!(
                            "bind mounts take no filesystem options, got {:?}",
                            o.data
                        )));
                    }
                    let (attr_set, attr_clr) = o.mount_attr().map_err(what)?;
                    Mount::Bind {
                        source: host_path("bind source", src).map_err(what)?,
                        recursive: b == Bind::Recursive,
                        attr_set,
                        attr_clr,
                        propagation: o.propagation,
                    }
                }
                None => Mount::Fs {
                    fstype: m.kind.clone(),
                    source: m
                        .source
                        .as_ref()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| m.kind.clone()),
                    flags: o.set,
                    data: o.data,
                    propagation: o.propagation,
                },
            };
            mounts.push((dest, mount));
        }
        for d in &plan.devices {
            let p = container_path("device", &d.path)?;
            if !p.starts_with("/dev") || p == Path::new("/dev") {
                return Err(format!("device path {:?} is not under /dev", d.path));
            }
            host_path("device host path", &d.host_path)?;
        }
        let ptmx_link = !plan.devices.is_empty()
            && mounts.iter().any(|(d, _)| d == Path::new("/dev/pts"))
            && !plan.devices.iter().any(|d| d.path == "/dev/ptmx");
        let paths = |what: &str, v: &[String]| -> Result<Vec<PathBuf>, String> {
            v.iter().map(|p| container_path(what, p)).collect()
        };
        Ok(PreparedFs {
            root,
            source,
            readonly: plan.readonly,
            mounts,
            devices: plan.devices.clone(),
            ptmx_link,
            masked: paths("masked path", &plan.masked_paths)?,
            readonly_paths: paths("read-only path", &plan.readonly_paths)?,
        })
    }

    /// Mount points that live in the root filesystem itself (not under an earlier mount of the
    /// plan): they must exist before the root is made read-only. `/dev` when devices are given.
    fn root_level_mount_points(&self) -> Vec<&Path> {
        let mut earlier: Vec<&Path> = Vec::new();
        let mut out = Vec::new();
        if !self.devices.is_empty() {
            earlier.push(Path::new("/dev"));
            out.push(Path::new("/dev"));
        }
        for (dest, _) in &self.mounts {
            if !earlier.iter().any(|e| dest.starts_with(e)) {
                out.push(dest.as_path());
            }
            earlier.push(dest);
        }
        out
    }

    /// Assembles the root and switches into it. Runs in the container init, in its own mount
    /// namespace (and user namespace, if any, already as its root). Returns the launch error.
    pub fn assemble(&self) -> Result<(), String> {
        // 1. Nothing mounted from here on may reach the host: every mount becomes a slave
        //    (host unmounts still propagate in, so a container never pins a host filesystem).
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(|e| err("make / rslave", e))?;

        // 2. The root filesystem, mounted at plan.root (a trusted path in the shim's state dir).
        let root_dir = &self.root;
        match &self.source {
            Root::Bind(src) => mount(
                Some(src.as_path()),
                root_dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| {
                err(
                    format!("bind {} at {}", src.display(), root_dir.display()),
                    e,
                )
            })?,
            Root::Overlay(data) => mount(
                Some("overlay"),
                root_dir,
                Some("overlay"),
                MsFlags::empty(),
                Some(data.as_str()),
            )
            .map_err(|e| err(format!("mount overlay at {}", root_dir.display()), e))?,
        }
        // Opened after the mount: the descriptor is the new mount's root.
        let root =
            open_root(root_dir).map_err(|e| err(format!("open {}", root_dir.display()), e))?;

        // 3. Read-only root: first make the mount points that live in it, then make the whole
        //    tree read-only (recursively: the host's other filesystems too). The plan's own
        //    mounts, made next on top, keep their own flags.
        if self.readonly {
            for dest in self.root_level_mount_points() {
                let create = match self.mounts.iter().find(|(d, _)| d == dest) {
                    Some((_, Mount::Bind { source, .. })) => create_for_source(source)?,
                    _ => Create::Dir,
                };
                open_in_root(root.as_fd(), dest, create)
                    .map_err(|e| err(format!("create mount point {}", dest.display()), e))?;
            }
            sys::mount_setattr(root.as_fd(), true, sys::MOUNT_ATTR_RDONLY, 0, 0)
                .map_err(|e| err("make the root read-only", e))?;
        }

        // 4. /dev: a fresh tmpfs with only the allowed device nodes (bind-mounted from the
        //    host onto empty files, which also works in a user namespace) and the usual links.
        if !self.devices.is_empty() {
            self.populate_dev(root.as_fd())?;
        }

        // 5. The plan's mounts, in order.
        for (dest, m) in &self.mounts {
            mount_one(root.as_fd(), dest, m)?;
        }

        // 6. Switch root: pivot_root(".", ".") stacks the old root on the new one, then a lazy
        //    unmount drops it (made a slave first so the unmount cannot propagate anywhere).
        nix::unistd::fchdir(&root).map_err(|e| err(format!("chdir {}", root_dir.display()), e))?;
        drop(root);
        nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(|e| err("make the old root rslave", e))?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| err("detach the old root", e))?;
        nix::unistd::chdir("/").map_err(|e| err("chdir /", e))?;

        // 7. Masked paths (now inside the container: /proc is the container's): /dev/null over
        //    files, an empty read-only tmpfs over directories. Missing paths are skipped.
        let root = open_root(Path::new("/")).map_err(|e| err("open /", e))?;
        for p in &self.masked {
            mask(root.as_fd(), p)?;
        }

        // 8. Read-only paths: bound onto themselves, then made read-only (recursively).
        for p in &self.readonly_paths {
            let fd = match open_in_root(root.as_fd(), p, Create::Nothing) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(err(format!("read-only path {}", p.display()), e)),
            };
            let tree = sys::clone_tree_at(fd.as_fd(), true)
                .map_err(|e| err(format!("read-only path {}: open_tree", p.display()), e))?;
            sys::mount_setattr(tree.as_fd(), true, sys::MOUNT_ATTR_RDONLY, 0, 0)
                .map_err(|e| err(format!("read-only path {}: mount_setattr", p.display()), e))?;
            sys::move_mount(tree.as_fd(), fd.as_fd())
                .map_err(|e| err(format!("read-only path {}: move_mount", p.display()), e))?;
        }
        Ok(())
    }

    fn populate_dev(&self, root: BorrowedFd<'_>) -> Result<(), String> {
        let at =
            open_in_root(root, Path::new("/dev"), Create::Dir).map_err(|e| err("open /dev", e))?;
        mount(
            Some("tmpfs"),
            sys::fd_target(at.as_fd()).as_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some(DEV_TMPFS_DATA),
        )
        .map_err(|e| err("mount tmpfs at /dev", e))?;
        for d in &self.devices {
            let dest = Path::new(&d.path);
            let target = open_in_root(root, dest, Create::File)
                .map_err(|e| err(format!("create device mount point {}", d.path), e))?;
            let src = cstring(&d.host_path)?;
            let tree = sys::clone_tree(&src, false)
                .map_err(|e| err(format!("device {}: open_tree", d.host_path.display()), e))?;
            sys::mount_setattr(
                tree.as_fd(),
                false,
                sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
                0,
                0,
            )
            .map_err(|e| err(format!("device {}: mount_setattr", d.path), e))?;
            sys::move_mount(tree.as_fd(), target.as_fd()).map_err(|e| {
                err(
                    format!("bind device {} at {}", d.host_path.display(), d.path),
                    e,
                )
            })?;
        }
        let dev = open_in_root(root, Path::new("/dev"), Create::Nothing)
            .map_err(|e| err("open /dev", e))?;
        let ptmx = [("ptmx", "pts/ptmx")];
        let links = DEV_SYMLINKS
            .iter()
            .chain(ptmx.iter().filter(|_| self.ptmx_link));
        for (name, target) in links {
            nix::unistd::symlinkat(*target, dev.as_fd(), *name)
                .map_err(|e| err(format!("symlink /dev/{name} -> {target}"), e))?;
        }
        Ok(())
    }
}

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", p.display()))
}

/// A bind of a directory needs a directory to mount on; anything else (file, device node,
/// socket) an empty file.
fn create_for_source(source: &Path) -> Result<Create, String> {
    let meta =
        std::fs::metadata(source).map_err(|e| format!("bind source {}: {e}", source.display()))?;
    Ok(if meta.is_dir() {
        Create::Dir
    } else {
        Create::File
    })
}

fn mount_one(root: BorrowedFd<'_>, dest: &Path, m: &Mount) -> Result<(), String> {
    let at = |e: Errno, step: &str| err(format!("mount at {} ({step})", dest.display()), e);
    match m {
        Mount::Bind {
            source,
            recursive,
            attr_set,
            attr_clr,
            propagation,
        } => {
            // The source is a host path chosen by the agent (validated by the isolator),
            // looked up before pivot_root; only the destination is untrusted.
            let target = open_in_root(root, dest, create_for_source(source)?)
                .map_err(|e| at(e, "resolve destination"))?;
            let tree = sys::clone_tree(&cstring(source)?, *recursive).map_err(|e| {
                err(
                    format!(
                        "mount at {}: open_tree {}",
                        dest.display(),
                        source.display()
                    ),
                    e,
                )
            })?;
            let prop = propagation.map_or(0, |p| p.difference(MsFlags::MS_REC).bits());
            if *attr_set != 0 || *attr_clr != 0 || prop != 0 {
                sys::mount_setattr(tree.as_fd(), *recursive, *attr_set, *attr_clr, prop)
                    .map_err(|e| at(e, "mount_setattr"))?;
            }
            sys::move_mount(tree.as_fd(), target.as_fd()).map_err(|e| at(e, "move_mount"))?;
        }
        Mount::Fs {
            fstype,
            source,
            flags,
            data,
            propagation,
        } => {
            let target =
                open_in_root(root, dest, Create::Dir).map_err(|e| at(e, "resolve destination"))?;
            mount(
                Some(source.as_str()),
                sys::fd_target(target.as_fd()).as_str(),
                Some(fstype.as_str()),
                *flags,
                (!data.is_empty()).then_some(data.as_str()),
            )
            .map_err(|e| at(e, fstype))?;
            if let Some(p) = propagation {
                // Looked up again: the descriptor above is the directory under the new mount.
                let on = open_in_root(root, dest, Create::Nothing)
                    .map_err(|e| at(e, "reopen for propagation"))?;
                mount(
                    None::<&str>,
                    sys::fd_target(on.as_fd()).as_str(),
                    None::<&str>,
                    *p,
                    None::<&str>,
                )
                .map_err(|e| at(e, "propagation"))?;
            }
        }
    }
    Ok(())
}

/// Hides `path` (inside the already pivoted root): `/dev/null` over a file, an empty
/// read-only tmpfs over a directory.
fn mask(root: BorrowedFd<'_>, path: &Path) -> Result<(), String> {
    let at = |e: Errno, step: &str| err(format!("mask {} ({step})", path.display()), e);
    let fd: OwnedFd = match open_in_root(root, path, Create::Nothing) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(at(e, "resolve")),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| at(e, "stat"))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(
            Some("tmpfs"),
            sys::fd_target(fd.as_fd()).as_str(),
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=0555"),
        )
        .map_err(|e| at(e, "tmpfs"))?;
    } else {
        let null =
            sys::clone_tree(c"/dev/null", false).map_err(|e| at(e, "open_tree /dev/null"))?;
        sys::move_mount(null.as_fd(), fd.as_fd()).map_err(|e| at(e, "move_mount"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
