//! Running a process inside an existing container: `berth oci exec`, the createContainer and
//! startContainer hooks, and sysctls. The container's init is named by a pidfd; its namespaces
//! are joined with `setns(pidfd, flags)` (all at once, kernel ≥ 5.8), its cgroups joined by the
//! parent before the child goes on, and its security plan applied right before `execve`.
//!
//! The ordered checklist ([`spawn`]):
//! 1. the caller joins the pid namespace (`pid_for_children` only) so the child is born in it;
//! 2. fork; the child waits on a sync pipe while the parent moves it into the container's
//!    cgroups (a callback);
//! 3. the child joins the other namespaces (user first, in the same call), changes directory,
//!    takes its stdio (and a controlling terminal), applies the security plan, and execs;
//! 4. an exec failure comes back over a close-on-exec error pipe, so [`spawn`] returns only once
//!    the program runs (or with the reason it does not).
//!
//! Everything here forks: the caller must be single-threaded (the OCI CLI runs before any
//! runtime or thread exists), which also makes allocation in the child safe.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use berth_executor::shim::security::PreparedSecurity;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::unistd::{ForkResult, Pid};

use super::OciError;
use super::proc::PidFd;

/// Namespace kinds in `/proc/<pid>/ns`, user first (joining it grants the rights for the rest).
const KINDS: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
];

/// The namespaces of `pid` that differ from ours (`/proc/<pid>/ns/<kind>` vs
/// `/proc/self/ns/<kind>`, by device and inode), restricted to `wanted`.
pub fn differing_namespaces(proc_root: &Path, pid: i32, wanted: CloneFlags) -> CloneFlags {
    let mut out = CloneFlags::empty();
    for (kind, flag) in KINDS {
        if !wanted.contains(flag) {
            continue;
        }
        let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let theirs = id(&proc_root.join(format!("{pid}/ns/{kind}")));
        let ours = id(&proc_root.join(format!("self/ns/{kind}")));
        if theirs.is_some() && theirs != ours {
            out |= flag;
        }
    }
    out
}

use std::os::unix::fs::MetadataExt;

/// Every namespace flag.
pub fn all_namespaces() -> CloneFlags {
    KINDS.iter().fold(CloneFlags::empty(), |a, (_, f)| a | *f)
}

/// What to execute.
#[derive(Debug)]
pub enum Program {
    /// Paths to try in order, resolved inside the container (after joining its mount
    /// namespace): the `execvp` search.
    Search(Vec<CString>),
    /// A binary opened on the host before joining (a createContainer hook): `execveat` of the
    /// descriptor (not close-on-exec, so scripts work through `/proc/self/fd`).
    Opened(OwnedFd),
}

/// A process to start in a container.
#[derive(Debug)]
pub struct Launch {
    /// The program.
    pub program: Program,
    /// argv (argv[0] included).
    pub argv: Vec<CString>,
    /// `K=V` environment.
    pub envp: Vec<CString>,
    /// Working directory inside the container.
    pub cwd: Option<CString>,
    /// Descriptors 0.. of the process; empty keeps ours.
    pub stdio: Vec<OwnedFd>,
    /// Make descriptor 0 the controlling terminal (after `setsid`).
    pub controlling_tty: bool,
    /// Allocate a terminal inside the container (its `/dev/ptmx`, so the process sees its own
    /// `/dev/pts/N`): the slave becomes descriptors 0-2 and the controlling terminal, and the
    /// master is sent back over this socket (SCM_RIGHTS) before the exec.
    pub pty: Option<PtyRequest>,
    /// Privileges (from the container's process, or the exec's own).
    pub security: Option<PreparedSecurity>,
    /// Namespaces to join (see [`differing_namespaces`]).
    pub namespaces: CloneFlags,
}

impl Launch {
    /// argv/env as C strings, the `execvp` candidates from `PATH` of `env`.
    pub fn new(argv: &[String], env: &[(String, String)]) -> Result<Launch, String> {
        let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let argv_c = argv.iter().map(|a| c(a)).collect::<Result<Vec<_>, _>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| c(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let first = argv.first().ok_or("no command")?;
        let path = berth_executor::shim::init::env_path(env);
        let candidates = berth_executor::shim::init::exec_candidates(first, path)
            .iter()
            .map(|p| {
                CString::new(p.as_os_str().as_bytes()).map_err(|_| "NUL in a path".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Launch {
            program: Program::Search(candidates),
            argv: argv_c,
            envp,
            cwd: None,
            stdio: Vec::new(),
            controlling_tty: false,
            pty: None,
            security: None,
            namespaces: CloneFlags::empty(),
        })
    }
}

/// A terminal to allocate in the container ([`Launch::pty`]).
#[derive(Debug)]
pub struct PtyRequest {
    /// The child's end of a socket pair; the master goes back over it.
    pub back: OwnedFd,
    /// Size (columns, rows); 0 = the kernel's default.
    pub size: (u16, u16),
    /// Owner of the slave (the process's uid, gid in the container).
    pub owner: Option<(u32, u32)>,
}

/// Opens a pty in the current mount namespace's `/dev/ptmx`; (master, slave).
fn open_container_pty(req: &PtyRequest) -> Result<(OwnedFd, OwnedFd), String> {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open /dev/ptmx in the container: {}", e.desc()))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the live `unlock`.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(format!("unlock the pty: {}", Errno::last().desc()));
    }
    if req.size.0 > 0 && req.size.1 > 0 {
        let ws = libc::winsize {
            ws_col: req.size.0,
            ws_row: req.size.1,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one live `struct winsize`.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor of the slave.
    let raw = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(format!("open the pty slave: {}", Errno::last().desc()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    if let Some((uid, gid)) = req.owner {
        let _ = nix::unistd::fchown(
            &slave,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
    }
    let fds = [master.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        req.back.as_raw_fd(),
        &[std::io::IoSlice::new(b"pty")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("send the pty master: {}", e.desc()))?;
    Ok((master, slave))
}

/// A started process (our child).
#[derive(Debug)]
pub struct Spawned {
    /// Host pid.
    pub pid: i32,
}

fn sys(what: &str, e: Errno) -> OciError {
    OciError::Sys {
        what: what.to_string(),
        source: e,
    }
}

/// Starts `launch` in the container whose init is `target` (see the module docs).
/// `attach(pid)` runs in the parent while the child waits (cgroup attach).
pub fn spawn(
    target: &PidFd,
    launch: Launch,
    attach: impl FnOnce(i32) -> Result<(), OciError>,
) -> Result<Spawned, OciError> {
    // 1. Born in the container's pid namespace; our own children afterwards are not.
    let pid_ns = launch.namespaces.contains(CloneFlags::CLONE_NEWPID);
    let own_pid_ns = if pid_ns {
        let own = std::fs::File::open("/proc/self/ns/pid_for_children")
            .map_err(|e| OciError::io("opening", Path::new("/proc/self/ns/pid_for_children"), e))?;
        setns_pidfd(target.as_raw_fd(), CloneFlags::CLONE_NEWPID)
            .map_err(|e| sys("setns(pid namespace of the container)", e))?;
        Some(own)
    } else {
        None
    };
    let restore = |own: Option<std::fs::File>| -> Result<(), OciError> {
        if let Some(own) = own {
            setns_pidfd(own.as_raw_fd(), CloneFlags::CLONE_NEWPID)
                .map_err(|e| sys("setns(back to our pid namespace)", e))?;
        }
        Ok(())
    };
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sys("pipe2", e))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sys("pipe2", e))?;
    // 2. Fork.
    // SAFETY: the caller is single-threaded (module docs), so the child may run any code.
    let forked = unsafe { nix::unistd::fork() };
    let child = match forked {
        Err(e) => {
            restore(own_pid_ns)?;
            return Err(sys("fork", e));
        }
        Ok(ForkResult::Child) => {
            drop((sync_w, err_r));
            child_main(target, launch, sync_r, err_w)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop((sync_r, err_w));
    restore(own_pid_ns)?;
    let abort = |e: OciError| {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
        e
    };
    if let Err(e) = attach(child.as_raw()) {
        return Err(abort(e));
    }
    if let Err(e) = nix::unistd::write(&sync_w, &[1u8]) {
        return Err(abort(sys("releasing the new process", e)));
    }
    drop(sync_w);
    // 4. EOF: exec'd. Anything else: why not.
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match nix::unistd::read(&err_r, &mut buf) {
            Ok(0) => break,
            Ok(n) => msg.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(abort(sys("reading the exec status", e))),
        }
    }
    if !msg.is_empty() {
        let _ = nix::sys::wait::waitpid(child, None);
        return Err(OciError::Exec {
            message: String::from_utf8_lossy(&msg).into_owned(),
        });
    }
    Ok(Spawned {
        pid: child.as_raw(),
    })
}

fn setns_pidfd(fd: RawFd, flags: CloneFlags) -> Result<(), Errno> {
    // SAFETY: setns takes a descriptor and flags; no memory is passed.
    let rc = unsafe { libc::setns(fd, flags.bits()) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The child's side; never returns.
fn child_main(target: &PidFd, launch: Launch, sync_r: OwnedFd, err_w: OwnedFd) -> ! {
    let fail = |what: &str, detail: String| -> ! {
        let _ = nix::unistd::write(&err_w, format!("{what}: {detail}").as_bytes());
        // SAFETY: _exit ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(127) }
    };
    // Die with the CLI while still waiting.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&sync_r, &mut b) {
            Ok(1) => break,
            Err(Errno::EINTR) => {}
            // SAFETY: as above.
            _ => unsafe { libc::_exit(127) },
        }
    }
    drop(sync_r);
    // 3. Namespaces (all but pid, which we were born in), in one call.
    let rest = launch.namespaces.difference(CloneFlags::CLONE_NEWPID);
    if !rest.is_empty()
        && let Err(e) = setns_pidfd(target.as_raw_fd(), rest)
    {
        fail("joining the container's namespaces", e.desc().into());
    }
    if let Some(cwd) = &launch.cwd
        && let Err(e) = nix::unistd::chdir(cwd.as_c_str())
    {
        fail(&format!("chdir {}", cwd.to_string_lossy()), e.desc().into());
    }
    let mut launch = launch;
    if let Some(req) = &launch.pty {
        match open_container_pty(req) {
            Ok((_master, slave)) => {
                let mut stdio = Vec::with_capacity(3 + launch.stdio.len());
                for _ in 0..3 {
                    match slave.try_clone() {
                        Ok(s) => stdio.push(s),
                        Err(e) => fail("dup the pty slave", e.to_string()),
                    }
                }
                // Extra descriptors (--preserve-fds) after the terminal.
                stdio.extend(launch.stdio.drain(..).skip(3));
                launch.stdio = stdio;
                launch.controlling_tty = true;
            }
            Err(m) => fail("terminal", m),
        }
    }
    let n = launch.stdio.len();
    if n > 0 {
        // Sources above every target first, then into place.
        let high: Vec<RawFd> = launch
            .stdio
            .iter()
            .map(|fd| {
                // SAFETY: F_DUPFD_CLOEXEC duplicates a live descriptor; no memory is passed.
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, (n + 3) as RawFd) }
            })
            .collect();
        for (target_fd, fd) in high.into_iter().enumerate() {
            // SAFETY: dup2 onto a small descriptor number of this child.
            if fd < 0 || unsafe { libc::dup2(fd, target_fd as RawFd) } < 0 {
                fail("setting up stdio", Errno::last().desc().into());
            }
        }
    }
    if launch.controlling_tty {
        let _ = nix::unistd::setsid();
        // SAFETY: TIOCSCTTY takes an integer argument; no memory is passed.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            fail("TIOCSCTTY", Errno::last().desc().into());
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Some(sec) = &launch.security
        && let Err(e) = sec.apply()
    {
        fail("applying the security plan", e.to_string());
    }
    // The process outlives berth (`exec -d`): no parent-death signal (apply() re-arms it).
    let _ = nix::sys::prctl::set_pdeathsig(None);
    // Descriptors past stdio close on exec (the error pipe is close-on-exec already).
    let keep = n.max(3) as u32;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            keep,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    let argv: Vec<*const libc::c_char> = launch
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = launch
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    match &launch.program {
        Program::Opened(fd) => {
            // SAFETY: execveat with a live descriptor, an empty path and NULL-terminated argv and
            // envp arrays of live C strings; on success it does not return.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
            fail("exec", Errno::last().desc().into());
        }
        Program::Search(candidates) => {
            let mut last = Errno::ENOENT;
            for c in candidates {
                // SAFETY: execve with a live C string path and NULL-terminated argv/envp arrays
                // of live C strings; on success it does not return.
                unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
                last = Errno::last();
                if !matches!(last, Errno::ENOENT | Errno::ENOTDIR | Errno::EACCES) {
                    break;
                }
            }
            let name = launch
                .argv
                .first()
                .map(|a| a.to_string_lossy().into_owned());
            fail(
                &format!("exec {}", name.unwrap_or_default()),
                last.desc().into(),
            );
        }
    }
}

/// Runs `f` in a child that joined `namespaces` of `target` (sysctls); its error, if any, is
/// returned.
pub fn in_namespaces(
    target: &PidFd,
    namespaces: CloneFlags,
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), OciError> {
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sys("pipe2", e))?;
    // SAFETY: the caller is single-threaded (module docs).
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(sys("fork", e)),
        Ok(ForkResult::Child) => {
            drop(err_r);
            let res = setns_pidfd(target.as_raw_fd(), namespaces)
                .map_err(|e| format!("joining the container's namespaces: {}", e.desc()))
                .and_then(|()| f());
            let code = match res {
                Ok(()) => 0,
                Err(m) => {
                    let _ = nix::unistd::write(&err_w, m.as_bytes());
                    1
                }
            };
            // SAFETY: _exit ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(err_w);
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match nix::unistd::read(&err_r, &mut buf) {
            Ok(0) => break,
            Ok(n) => msg.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    let status = wait_child(child.as_raw());
    if !msg.is_empty() || status != 0 {
        return Err(OciError::Exec {
            message: if msg.is_empty() {
                format!("helper exited with {status}")
            } else {
                String::from_utf8_lossy(&msg).into_owned()
            },
        });
    }
    Ok(())
}

/// Waits for our child `pid`; its shell status (code, or 128 + signal).
pub fn wait_child(pid: i32) -> i32 {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return c,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return 255,
        }
    }
}

/// A pipe whose read end is given to a child as stdin with `data` already in it (up to the
/// pipe's capacity; hooks read a state document of a few hundred bytes).
pub fn stdin_with(data: &[u8]) -> Result<OwnedFd, OciError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sys("pipe2", e))?;
    let mut off = 0;
    while off < data.len() {
        match nix::unistd::write(w.as_fd(), &data[off..]) {
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(sys("writing a hook's stdin", e)),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespaces_do_not_differ() {
        let me = std::process::id() as i32;
        assert!(differing_namespaces(Path::new("/proc"), me, all_namespaces()).is_empty());
    }

    #[test]
    fn launch_search_follows_path() {
        let l = Launch::new(
            &["sh".into(), "-c".into(), "true".into()],
            &[("PATH".into(), "/a:/b".into())],
        )
        .unwrap();
        match l.program {
            Program::Search(c) => assert_eq!(c, vec![c"/a/sh".to_owned(), c"/b/sh".to_owned()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.envp, vec![c"PATH=/a:/b".to_owned()]);
        assert!(Launch::new(&[], &[]).is_err());
    }
}
