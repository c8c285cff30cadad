//! The shim's OCI mode ([`OciMode`], used by `berth oci`): the workload's standard streams
//! (descriptors inherited from the caller, or a new pseudo-terminal whose master goes to the
//! caller's console socket) and namespaces joined by path ([`ShimConfig::ns_paths`]).
//!
//! Everything that opens files or allocates happens in the shim before `clone`; the init only
//! makes system calls with what it is handed ([`join_in_init`], [`set_controlling_terminal`]).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::sched::CloneFlags;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use super::ShimError;
use crate::protocol::{DeviceSpec, OciMode, OciStdio, ShimConfig};

/// Standard streams of an OCI workload, ready to be handed to the init.
#[derive(Debug)]
pub struct OciIo {
    /// Descriptor `i` of the workload is `fds[i]` (close-on-exec copies numbered above every
    /// target, so the init can `dup2` them in order without clobbering one).
    pub fds: Vec<OwnedFd>,
    /// The pseudo-terminal master to send to the console socket, if any.
    pub console: Option<ConsoleMaster>,
}

/// The master side of the workload's terminal, and where it goes.
#[derive(Debug)]
pub struct ConsoleMaster {
    master: OwnedFd,
    socket: PathBuf,
    /// The slave's name on the host (`/dev/pts/3`), sent as the message payload.
    name: String,
}

/// A namespace to join: its `setns` flag and an open descriptor of its file.
#[derive(Debug)]
pub struct JoinNs {
    /// `CLONE_NEW*` of its kind.
    pub flag: CloneFlags,
    /// The namespace file, opened by the shim.
    pub fd: OwnedFd,
    /// Where it was opened from (for errors).
    pub path: PathBuf,
}

fn sys(what: &'static str) -> impl Fn(Errno) -> ShimError {
    move |e| ShimError::sys(what, e)
}

/// A descriptor at or above `min`, close-on-exec, replacing `fd`.
fn dup_above(fd: OwnedFd, min: RawFd) -> Result<OwnedFd, ShimError> {
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(min)).map_err(sys("fcntl(F_DUPFD_CLOEXEC)"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Takes ownership of descriptors the shim inherited, as named by the config. Descriptors 0-2
/// are the shim's own (null, the ready pipe, the log) and are refused.
fn take_inherited(fds: &[i32]) -> Result<Vec<OwnedFd>, ShimError> {
    let mut out = Vec::with_capacity(fds.len());
    for (i, &fd) in fds.iter().enumerate() {
        if fd < 3 || fds[..i].contains(&fd) {
            return Err(ShimError::InvalidConfig(format!(
                "inherited descriptor {fd} is reserved or listed twice"
            )));
        }
        // SAFETY: F_GETFD only reads the descriptor flags of `fd`.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(ShimError::InvalidConfig(format!(
                "inherited descriptor {fd} is not open"
            )));
        }
        // SAFETY: `fd` is open (checked above), was handed to this process by its parent for
        // the workload, and is named once in the config, so nothing else in the shim owns it.
        out.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(out)
}

/// Opens the workload's standard streams for `mode`; with a console, also adds `/dev/console`
/// (bound from the pty's slave) to the filesystem plan when the plan populates `/dev`.
pub fn prepare_io(cfg: &mut ShimConfig, mode: &OciMode) -> Result<OciIo, ShimError> {
    let (mut fds, console) = match &mode.stdio {
        OciStdio::Inherit { fds } => (take_inherited(fds)?, None),
        OciStdio::Console {
            socket,
            size,
            owner,
            extra_fds,
        } => {
            let extra = take_inherited(extra_fds)?;
            let pty = nix::pty::openpty(None, None).map_err(sys("openpty"))?;
            let name = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
                .map_err(|source| ShimError::Open {
                    path: "the pty slave's /proc/self/fd link".into(),
                    source,
                })?;
            if let Some((uid, gid)) = owner {
                nix::unistd::fchown(
                    &pty.slave,
                    Some(nix::unistd::Uid::from_raw(*uid)),
                    Some(nix::unistd::Gid::from_raw(*gid)),
                )
                .map_err(sys("fchown(pty slave)"))?;
            }
            if size.0 > 0 && size.1 > 0 {
                let ws = libc::winsize {
                    ws_col: size.0,
                    ws_row: size.1,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ reads one `struct winsize` from the live `ws`.
                let rc = unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                if rc < 0 {
                    return Err(ShimError::sys("ioctl(TIOCSWINSZ)", Errno::last()));
                }
            }
            if let Some(fs) = &mut cfg.filesystem
                && !fs.devices.is_empty()
                && !fs.devices.iter().any(|d| d.path == "/dev/console")
            {
                fs.devices.push(DeviceSpec {
                    path: "/dev/console".into(),
                    host_path: name.clone(),
                });
            }
            let master = dup_above(pty.master, 3)?;
            let slave = pty.slave;
            let mut fds = vec![
                slave.try_clone().map_err(|e| io_sys("dup(pty slave)", e))?,
                slave.try_clone().map_err(|e| io_sys("dup(pty slave)", e))?,
                slave,
            ];
            fds.extend(extra);
            let console = ConsoleMaster {
                master,
                socket: socket.clone(),
                name: name.to_string_lossy().into_owned(),
            };
            (fds, Some(console))
        }
    };
    // Renumber above every target descriptor (and above the shim's own 0-2).
    let min = fds.len().max(3) as RawFd + 1;
    fds = fds
        .into_iter()
        .map(|fd| dup_above(fd, min))
        .collect::<Result<_, _>>()?;
    Ok(OciIo { fds, console })
}

fn io_sys(what: &'static str, e: std::io::Error) -> ShimError {
    ShimError::sys(what, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

impl ConsoleMaster {
    /// Sends the master over the console socket (one message: the pty's name as payload, the
    /// descriptor as SCM_RIGHTS), then closes the shim's copy.
    pub fn send(self) -> Result<(), ShimError> {
        let stream = UnixStream::connect(&self.socket).map_err(|source| ShimError::Open {
            path: self.socket.clone(),
            source,
        })?;
        let fds = [self.master.as_raw_fd()];
        let iov = [IoSlice::new(self.name.as_bytes())];
        sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(sys("sendmsg(console socket)"))?;
        Ok(())
    }
}

/// The `setns` flag of a namespace kind as [`ShimConfig::namespaces`] names it.
pub fn ns_flag(kind: &str) -> Option<CloneFlags> {
    Some(match kind {
        "pid" => CloneFlags::CLONE_NEWPID,
        "mount" | "mnt" => CloneFlags::CLONE_NEWNS,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "net" | "network" => CloneFlags::CLONE_NEWNET,
        "user" => CloneFlags::CLONE_NEWUSER,
        "cgroup" => CloneFlags::CLONE_NEWCGROUP,
        _ => return None,
    })
}

/// Validates [`ShimConfig::ns_paths`] against the namespaces to create. Pure.
pub fn check_ns_paths(cfg: &ShimConfig) -> Result<(), String> {
    let mut seen = CloneFlags::empty();
    for (kind, path) in &cfg.ns_paths {
        let flag = ns_flag(kind).ok_or_else(|| format!("unknown namespace {kind:?}"))?;
        if seen.contains(flag) {
            return Err(format!("namespace {kind:?} is to be joined twice"));
        }
        seen |= flag;
        if cfg.namespaces.iter().any(|n| ns_flag(n) == Some(flag)) {
            return Err(format!(
                "namespace {kind:?} is both created and joined ({})",
                path.display()
            ));
        }
        if !path.is_absolute() {
            return Err(format!("namespace path {} is not absolute", path.display()));
        }
    }
    Ok(())
}

/// Opens every namespace file of `ns_paths` (in the shim, before `clone`).
pub fn open_namespaces(list: &[(String, PathBuf)]) -> Result<Vec<JoinNs>, ShimError> {
    list.iter()
        .map(|(kind, path)| {
            let flag = ns_flag(kind)
                .ok_or_else(|| ShimError::InvalidConfig(format!("unknown namespace {kind:?}")))?;
            let file = std::fs::File::open(path).map_err(|source| ShimError::Open {
                path: path.clone(),
                source,
            })?;
            Ok(JoinNs {
                flag,
                fd: file.into(),
                path: path.clone(),
            })
        })
        .collect()
}

/// Joins the pid namespace among `joins`, if any: only the shim's future children (the init)
/// enter it, so this runs in the shim right before `clone`.
pub fn join_pid(joins: &[JoinNs]) -> Result<(), ShimError> {
    for j in joins.iter().filter(|j| j.flag == CloneFlags::CLONE_NEWPID) {
        nix::sched::setns(j.fd.as_fd(), j.flag).map_err(|e| {
            ShimError::InvalidConfig(format!("joining pid namespace {}: {e}", j.path.display()))
        })?;
    }
    Ok(())
}

/// In the init: joins every namespace but pid, the user namespace first (it grants the
/// capabilities needed for the others). Returns whether a user namespace was joined.
pub fn join_in_init(joins: &[JoinNs]) -> Result<bool, String> {
    let mut user = false;
    let ordered =
        joins
            .iter()
            .filter(|j| j.flag == CloneFlags::CLONE_NEWUSER)
            .chain(joins.iter().filter(|j| {
                j.flag != CloneFlags::CLONE_NEWUSER && j.flag != CloneFlags::CLONE_NEWPID
            }));
    for j in ordered {
        nix::sched::setns(j.fd.as_fd(), j.flag)
            .map_err(|e| format!("setns {}: {}", j.path.display(), e.desc()))?;
        user |= j.flag == CloneFlags::CLONE_NEWUSER;
    }
    Ok(user)
}

/// In the init, after `setsid`: makes descriptor 0 (the pty slave) the controlling terminal.
pub fn set_controlling_terminal() -> Result<(), String> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); no memory is passed.
    let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    if rc < 0 {
        return Err(format!(
            "make the terminal the controlling terminal: {}",
            Errno::last().desc()
        ));
    }
    Ok(())
}

/// Writes the init's pid into each `cgroup.procs` file (OCI mode, before the init prepares).
pub fn attach_cgroups(files: &[PathBuf], pid: i32) -> Result<(), ShimError> {
    for f in files {
        write_pid(f, pid)?;
    }
    Ok(())
}

fn write_pid(file: &Path, pid: i32) -> Result<(), ShimError> {
    std::fs::write(file, pid.to_string()).map_err(|source| ShimError::Write {
        path: file.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ns: &[&str], paths: &[(&str, &str)]) -> ShimConfig {
        ShimConfig {
            container_id: "t".into(),
            argv: vec!["true".into()],
            env: vec![],
            cwd: None,
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            hostname: None,
            stdout_path: "/dev/null".into(),
            stderr_path: "/dev/null".into(),
            state_dir: "/tmp".into(),
            id_maps: None,
            filesystem: None,
            security: Default::default(),
            ns_paths: paths
                .iter()
                .map(|(k, p)| (k.to_string(), PathBuf::from(p)))
                .collect(),
            oci: None,
        }
    }

    #[test]
    fn ns_paths_are_checked() {
        assert!(check_ns_paths(&cfg(&["pid"], &[("net", "/proc/1/ns/net")])).is_ok());
        let e = check_ns_paths(&cfg(&["net"], &[("network", "/proc/1/ns/net")])).unwrap_err();
        assert!(e.contains("both created and joined"), "{e}");
        let e = check_ns_paths(&cfg(&[], &[("time", "/proc/1/ns/time")])).unwrap_err();
        assert!(e.contains("unknown namespace"), "{e}");
        let e = check_ns_paths(&cfg(&[], &[("uts", "a"), ("ipc", "/b")])).unwrap_err();
        assert!(e.contains("not absolute"), "{e}");
        let e = check_ns_paths(&cfg(&[], &[("uts", "/a"), ("uts", "/b")])).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn inherited_descriptors_are_checked() {
        assert!(take_inherited(&[1]).is_err());
        assert!(take_inherited(&[100_000]).is_err());
    }
}
