//! The container init: cloned by the shim into the requested namespaces, it waits for the sync
//! byte, prepares the container (mounts, hostname, loopback), then acts as a minimal pid 1
//! (like tini): forks the workload, forwards signals to it, reaps every zombie, and exits with
//! the workload's status after reporting it over the status pipe.
//!
//! Everything the init and the workload need is prepared in [`InitSpec`] *before* `clone`, so the
//! child only does system calls and small formatting (the shim is single-threaded, so allocation
//! in the child would be safe anyway).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::oci::JoinNs;
use super::security::PreparedSecurity;
use super::status::{Ended, encode_ended, encode_exec_error, encode_prepared, encode_setup_error};
use super::{ShimError, oci, rootfs, userns};
use crate::protocol::ShimConfig;

/// `PATH` used to find `argv[0]` when the workload's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Signals the init forwards to the workload.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Stack size of the cloned init (it runs ordinary Rust code before exec'ing nothing itself).
const INIT_STACK: usize = 256 * 1024;

/// Which namespaces to create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// New pid namespace: the init is pid 1.
    pub pid: bool,
    /// New mount namespace.
    pub mount: bool,
    /// New UTS namespace (hostname).
    pub uts: bool,
    /// New IPC namespace.
    pub ipc: bool,
    /// New network namespace (only loopback).
    pub net: bool,
    /// New user namespace: the shim writes its id maps before releasing the init, which then
    /// becomes root inside it.
    pub user: bool,
    /// New cgroup namespace. Not a `clone` flag: the init unshares it after the sync byte, see
    /// [`Namespaces::clone_flags`].
    pub cgroup: bool,
}

impl Namespaces {
    /// Parses the namespace names of [`ShimConfig::namespaces`].
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Namespaces, String> {
        let mut ns = Namespaces::default();
        for n in names {
            match n.as_ref() {
                "pid" => ns.pid = true,
                "mount" | "mnt" => ns.mount = true,
                "uts" => ns.uts = true,
                "ipc" => ns.ipc = true,
                "net" | "network" => ns.net = true,
                "user" => ns.user = true,
                "cgroup" => ns.cgroup = true,
                other => return Err(format!("unknown namespace {other:?}")),
            }
        }
        Ok(ns)
    }

    /// The `clone` flags creating these namespaces. `CLONE_NEWUSER` comes with them, so the
    /// others are owned by the new user namespace. `CLONE_NEWCGROUP` does not: a cgroup
    /// namespace is rooted at the cgroup its creator is in *when it is created*, and the agent
    /// attaches the init to the container's cgroups only after `clone` (while the init waits
    /// for the sync byte). Created at clone time it would be rooted at the shim's cgroup and
    /// the container would see `/../<container>` paths; so the init unshares it after the sync
    /// byte instead, when it already sits in its own cgroups.
    pub fn clone_flags(self) -> CloneFlags {
        let mut f = CloneFlags::empty();
        f.set(CloneFlags::CLONE_NEWUSER, self.user);
        f.set(CloneFlags::CLONE_NEWPID, self.pid);
        f.set(CloneFlags::CLONE_NEWNS, self.mount);
        f.set(CloneFlags::CLONE_NEWUTS, self.uts);
        f.set(CloneFlags::CLONE_NEWIPC, self.ipc);
        f.set(CloneFlags::CLONE_NEWNET, self.net);
        f
    }
}

/// The `PATH` value of an environment (last definition wins, like `getenv` on a built env).
pub fn env_path(env: &[(String, String)]) -> Option<&str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
}

/// Paths to try, in order, to execute `argv0` (the `execvpe` search): `argv0` itself when it
/// contains a slash, else each `PATH` entry joined with it (an empty entry means the cwd).
pub fn exec_candidates(argv0: &str, path: Option<&str>) -> Vec<PathBuf> {
    if argv0.contains('/') {
        return vec![PathBuf::from(argv0)];
    }
    if argv0.is_empty() {
        return Vec::new();
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                PathBuf::from(argv0)
            } else {
                Path::new(dir).join(argv0)
            }
        })
        .collect()
}

fn cstring(what: &str, bytes: &[u8]) -> Result<CString, ShimError> {
    CString::new(bytes).map_err(|_| ShimError::InvalidConfig(format!("{what} contains a NUL byte")))
}

/// Everything the init needs, prepared before `clone`.
#[derive(Debug)]
pub struct InitSpec {
    /// Namespaces to create.
    pub ns: Namespaces,
    /// Hostname for the UTS namespace.
    pub hostname: Option<String>,
    /// Working directory.
    pub cwd: Option<CString>,
    /// argv of the workload.
    pub argv: Vec<CString>,
    /// `K=V` environment of the workload.
    pub envp: Vec<CString>,
    /// Paths to try for `argv[0]`.
    pub candidates: Vec<CString>,
    /// Privilege restrictions applied right before `execve` (see [`super::security`]).
    pub security: PreparedSecurity,
    /// The container's root filesystem, assembled in the init's mount namespace.
    pub rootfs: Option<rootfs::PreparedFs>,
    /// OCI mode ([`crate::OciMode`]): the init prepares the container right after the first
    /// sync byte, reports it, and execs the workload itself after the second.
    pub oci: bool,
    /// The workload's standard streams are a terminal (OCI console).
    pub console: bool,
    /// Descriptors `0..keep_fds` survive `execve` (3, or the OCI stdio count).
    pub keep_fds: u32,
}

impl InitSpec {
    /// Validates the config and prepares every C string.
    pub fn from_config(cfg: &ShimConfig) -> Result<InitSpec, ShimError> {
        if cfg.argv.is_empty() || cfg.argv[0].is_empty() {
            return Err(ShimError::InvalidConfig("argv is empty".into()));
        }
        let ns = Namespaces::parse(&cfg.namespaces).map_err(ShimError::InvalidConfig)?;
        let argv = cfg
            .argv
            .iter()
            .map(|a| cstring("argv", a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = cfg
            .env
            .iter()
            .map(|(k, v)| {
                if k.is_empty() || k.contains('=') {
                    return Err(ShimError::InvalidConfig(format!(
                        "invalid environment variable name {k:?}"
                    )));
                }
                cstring("env", format!("{k}={v}").as_bytes())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let candidates = exec_candidates(&cfg.argv[0], env_path(&cfg.env))
            .iter()
            .map(|p| cstring("argv[0]", p.as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = cfg
            .cwd
            .as_ref()
            .map(|c| cstring("cwd", c.as_os_str().as_bytes()))
            .transpose()?;
        if let Some(h) = &cfg.hostname
            && (h.is_empty() || h.len() > 64)
        {
            return Err(ShimError::InvalidConfig(format!("invalid hostname {h:?}")));
        }
        let security = PreparedSecurity::prepare(&cfg.security)
            .map_err(|e| ShimError::InvalidConfig(format!("security plan: {e}")))?;
        let rootfs = cfg
            .filesystem
            .as_ref()
            .map(|plan| {
                rootfs::PreparedFs::from_plan(plan)
                    .map_err(|e| ShimError::InvalidConfig(format!("filesystem: {e}")))
            })
            .transpose()?;
        if rootfs.is_some() && !ns.mount {
            return Err(ShimError::InvalidConfig(
                "a filesystem plan needs a \"mount\" namespace".into(),
            ));
        }
        match (&cfg.id_maps, ns.user) {
            (Some(maps), true) => userns::validate(maps).map_err(ShimError::InvalidConfig)?,
            (None, false) => {}
            (None, true) => {
                return Err(ShimError::InvalidConfig(
                    "a \"user\" namespace needs id_maps".into(),
                ));
            }
            (Some(_), false) => {
                return Err(ShimError::InvalidConfig(
                    "id_maps given without a \"user\" namespace".into(),
                ));
            }
        }
        oci::check_ns_paths(cfg).map_err(ShimError::InvalidConfig)?;
        let (console, keep_fds) = match cfg.oci.as_ref().map(|o| &o.stdio) {
            None => (false, 3),
            Some(crate::OciStdio::Inherit { fds }) => (false, fds.len().max(3)),
            Some(crate::OciStdio::Console { extra_fds, .. }) => (true, 3 + extra_fds.len()),
        };
        Ok(InitSpec {
            ns,
            hostname: cfg.hostname.clone(),
            cwd,
            argv,
            envp,
            candidates,
            security,
            rootfs,
            oci: cfg.oci.is_some(),
            console,
            keep_fds: keep_fds as u32,
        })
    }
}

/// The shim's side of a freshly cloned init.
#[derive(Debug)]
pub struct SpawnedInit {
    /// Host pid of the init.
    pub pid: Pid,
    /// Write end of the sync pipe: one byte releases the init; closing it makes the init exit 127.
    pub sync_w: OwnedFd,
    /// Read end of the status pipe (records from the init and the workload).
    pub status_r: OwnedFd,
}

/// The init's own descriptors, moved into the clone callback (the shim's copies are closed when
/// the callback is dropped after `clone` returns).
struct ChildFds {
    sync_r: OwnedFd,
    status_w: OwnedFd,
    stdout: File,
    stderr: File,
    devnull: File,
    /// The shim's ends of the pipes: the child has copies that it must close.
    close_in_child: [RawFd; 2],
    /// OCI mode: the workload's descriptors 0.. (instead of devnull/stdout/stderr).
    oci_stdio: Option<Vec<OwnedFd>>,
    /// Namespaces to join by path (all but pid, which the shim joined before `clone`).
    joins: Vec<JoinNs>,
}

/// What the init gets besides its spec in OCI mode (nothing otherwise).
#[derive(Debug, Default)]
pub struct InitExtras {
    /// The workload's descriptors 0.. ([`oci::OciIo::fds`]).
    pub stdio: Option<Vec<OwnedFd>>,
    /// Namespaces to join by path ([`oci::open_namespaces`]).
    pub joins: Vec<JoinNs>,
}

/// Clones the container init (step 4). The init blocks until the sync byte is written.
pub fn spawn_init(
    spec: &InitSpec,
    stdout: File,
    stderr: File,
    extras: InitExtras,
) -> Result<SpawnedInit, ShimError> {
    let (sync_r, sync_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ShimError::sys("pipe2 (sync)", e))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ShimError::sys("pipe2 (status)", e))?;
    let devnull = File::open("/dev/null").map_err(|e| ShimError::Open {
        path: "/dev/null".into(),
        source: e,
    })?;
    let fds = ChildFds {
        sync_r,
        status_w,
        stdout,
        stderr,
        devnull,
        close_in_child: [sync_w.as_raw_fd(), status_r.as_raw_fd()],
        oci_stdio: extras.stdio,
        joins: extras.joins,
    };

    // Block the forwarded signals across clone so the init never runs with them deliverable:
    // it picks them up with sigwait. The shim restores its own mask right after.
    let mut block = SigSet::empty();
    for s in FORWARDED {
        block.add(s);
    }
    block.add(Signal::SIGCHLD);
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&block), Some(&mut old))
        .map_err(|e| ShimError::sys("sigprocmask", e))?;

    let mut stack = vec![0u8; INIT_STACK];
    let mut fds = Some(fds);
    let cb = Box::new(move || -> isize {
        match fds.take() {
            Some(fds) => init_main(spec, fds),
            None => 127,
        }
    });
    // SAFETY: the shim is single-threaded at this point (no threads are ever started), so the
    // child gets a consistent copy of the address space (no CLONE_VM) including allocator state;
    // `stack` is a live, exclusively borrowed buffer that outlives the call in the parent, and the
    // child runs on its own copy of it. The callback never returns into the parent's frames.
    let res =
        unsafe { nix::sched::clone(cb, &mut stack, spec.ns.clone_flags(), Some(libc::SIGCHLD)) };
    drop(stack);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    let pid = res.map_err(|e| ShimError::Clone {
        flags: format!("{:?}", spec.ns.clone_flags()),
        source: e,
    })?;
    Ok(SpawnedInit {
        pid,
        sync_w,
        status_r,
    })
}

/// `_exit(2)`: leaves the process without running destructors or atexit handlers (which belong
/// to the shim's copy of the program state).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and terminates the process immediately; no Rust
    // invariant depends on code running after it.
    unsafe { libc::_exit(code) }
}

/// Writes a record to the status pipe, ignoring errors (the shim may be gone).
fn report(fd: BorrowedFd<'_>, bytes: &[u8]) {
    let _ = nix::unistd::write(fd, bytes);
}

/// Body of the init process. Never returns to the shim's code: always `_exit`s.
fn init_main(spec: &InitSpec, fds: ChildFds) -> ! {
    let ChildFds {
        sync_r,
        status_w,
        stdout,
        stderr,
        devnull,
        close_in_child,
        oci_stdio,
        joins,
    } = fds;
    let parent = nix::unistd::getppid();
    // 1. Close the shim's ends of the pipes: otherwise our own copy of sync_w would keep the
    //    sync read from seeing EOF when the shim dies.
    for fd in close_in_child {
        // SAFETY: these descriptors are the child's copies of the shim's OwnedFds; the child
        // never uses or drops those OwnedFd values (it `_exit`s), so closing the raw fds here
        // cannot cause a double close or a use after close.
        unsafe { libc::close(fd) };
    }
    // 1b. Die with the shim: a container nobody supervises (no exit record, no kill) must not
    //     linger. With a pid namespace this takes the whole container down; the workload gets
    //     the same treatment (see exec_workload). Before Start, EOF on the sync pipe covers a
    //     shim that died before this call.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // 2. stdio: stdin from /dev/null, stdout/stderr to the workload's files. This also drops the
    //    init's copy of the pipe to the containerizer (the shim's stdout).
    //    OCI mode: the caller's descriptors (or the terminal) instead.
    match oci_stdio {
        None => {
            let _ = nix::unistd::dup2_stdin(&devnull);
            let _ = nix::unistd::dup2_stdout(&stdout);
            let _ = nix::unistd::dup2_stderr(&stderr);
        }
        Some(fds) => {
            // The sources are numbered above every target (see oci::prepare_io).
            for (target, fd) in fds.iter().enumerate() {
                // SAFETY: dup2 onto a small descriptor number; the previous descriptor there
                // (the shim's stdio copy) is owned by nobody in the init.
                unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) };
            }
        }
    }
    drop((devnull, stdout, stderr));

    // 3. Wait for the sync byte. EOF (the shim closed the pipe or died) → exit without exec.
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&sync_r, &mut b) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            _ => exit_now(127),
        }
    }

    // 3b. Namespaces given by path (the shim joined the pid one before clone).
    match oci::join_in_init(&joins) {
        Ok(false) => {}
        Ok(true) => {
            if let Err(msg) = become_userns_root() {
                report(status_w.as_fd(), &encode_setup_error(&msg));
                exit_now(127);
            }
        }
        Err(msg) => {
            report(status_w.as_fd(), &encode_setup_error(&msg));
            exit_now(127);
        }
    }
    drop(joins);

    // 4. Prepare the container; any failure is a launch error.
    if let Err(msg) = setup_container(spec) {
        report(status_w.as_fd(), &encode_setup_error(&msg));
        exit_now(127);
    }

    // OCI mode: the workload is the init itself; created → started → exec.
    if spec.oci {
        oci_exec(spec, sync_r, status_w, parent);
    }
    drop(sync_r);

    // 4b. Drop privileges here, in the init, not only in the workload: the init is the
    //     container's pid 1 and must hold no more than the workload (no capabilities outside
    //     the task's set, no_new_privs, the seccomp filter). The workload inherits all of it
    //     through fork and exec. The init only needs sigwait, waitpid, kill of its own child,
    //     write and exit afterwards, which every profile allows.
    if let Err(e) = spec.security.apply() {
        report(status_w.as_fd(), &encode_setup_error(&e.to_string()));
        exit_now(127);
    }

    // 5. Own process group and session, so the shim can kill the whole tree without a pid ns.
    let _ = nix::unistd::setsid();

    // 6. Fork the workload. Signals stay blocked in the init (it sigwaits for them).
    let my_pid = nix::unistd::getpid();
    // SAFETY: the init process is single-threaded (it is a clone of the single-threaded shim).
    let workload = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => exec_workload(spec, status_w.as_fd(), my_pid),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            report(
                status_w.as_fd(),
                &encode_setup_error(&format!("fork workload: {}", e.desc())),
            );
            exit_now(127);
        }
    };

    // 7. Act as pid 1: forward signals, reap zombies, exit with the workload's status.
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(workload, sig);
            continue;
        }
        let mut ended = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == workload => {
                    ended = Some(Ended::Code(code))
                }
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == workload => {
                    ended = Some(Ended::Signal(s as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if let Some(ended) = ended {
            report(status_w.as_fd(), &encode_ended(ended));
            exit_now(ended.shell_code());
        }
    }
}

/// OCI mode, after the container is prepared: report it, wait for `Start` (the second sync
/// byte; EOF means the shim gave up), become a session leader with the terminal (if any) as the
/// controlling one, drop privileges and exec. Never returns.
fn oci_exec(spec: &InitSpec, sync_r: OwnedFd, status_w: OwnedFd, parent: Pid) -> ! {
    // A command that cannot be found fails `create`, not `start` (as runc does).
    let found = spec.candidates.iter().any(|c| {
        nix::sys::stat::stat(c.as_c_str())
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            && nix::unistd::access(c.as_c_str(), nix::unistd::AccessFlags::X_OK).is_ok()
    });
    if !found {
        let argv0 = spec.argv.first().map(|a| a.to_string_lossy().into_owned());
        let msg = format!(
            "exec {}: executable file not found in the container",
            argv0.unwrap_or_default()
        );
        report(status_w.as_fd(), &encode_setup_error(&msg));
        exit_now(127);
    }
    report(status_w.as_fd(), &encode_prepared());
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&sync_r, &mut b) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            _ => exit_now(127),
        }
    }
    drop(sync_r);
    let _ = nix::unistd::setsid();
    if spec.console
        && let Err(msg) = oci::set_controlling_terminal()
    {
        report(status_w.as_fd(), &encode_setup_error(&msg));
        exit_now(127);
    }
    if let Err(e) = spec.security.apply() {
        report(status_w.as_fd(), &encode_setup_error(&e.to_string()));
        exit_now(127);
    }
    exec_workload(spec, status_w.as_fd(), parent)
}

/// Namespace-specific preparation, cwd. Returns a message for `launch_error` on failure.
fn setup_container(spec: &InitSpec) -> Result<(), String> {
    let ns = spec.ns;
    // a. User namespace: the shim wrote our id maps before sending the sync byte. Become its
    //    root, dropping the supplementary groups inherited from the shim first (they are host
    //    groups, gid 0 among them, and would keep their access to host files).
    if ns.user {
        become_userns_root()?;
    }
    // b. Cgroup namespace: unshared only now, after the agent attached us to the container's
    //    cgroups (see `Namespaces::clone_flags`), so that the container sees its own cgroup
    //    as the root.
    if ns.cgroup {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("unshare(CLONE_NEWCGROUP): {e}"))?;
    }
    if ns.mount {
        if let Some(fs) = &spec.rootfs {
            // c. The container's own root filesystem (mounts, /dev, pivot_root, masks).
            fs.assemble()?;
        } else {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| format!("make / private: {}", e.desc()))?;
            if ns.pid {
                mount(
                    Some("proc"),
                    "/proc",
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(|e| format!("mount /proc: {}", e.desc()))?;
            }
        }
    }
    if ns.uts
        && let Some(h) = &spec.hostname
    {
        nix::unistd::sethostname(OsStr::new(h))
            .map_err(|e| format!("sethostname {h}: {}", e.desc()))?;
    }
    if ns.net {
        loopback_up().map_err(|e| format!("bring up lo: {}", e.desc()))?;
    }
    if let Some(cwd) = &spec.cwd {
        nix::unistd::chdir(cwd.as_c_str())
            .map_err(|e| format!("chdir {}: {}", cwd.to_string_lossy(), e.desc()))?;
    }
    Ok(())
}

/// Root inside the new user namespace: no supplementary groups, gid 0, uid 0 (the mapped
/// ones). The uid change clears the parent-death signal, so it is armed again.
fn become_userns_root() -> Result<(), String> {
    let shim = nix::unistd::getppid();
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups([]) in the user namespace: {e}"))?;
    let (u, g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setresgid(g, g, g)
        .map_err(|e| format!("setresgid(0) in the user namespace: {e}"))?;
    nix::unistd::setresuid(u, u, u)
        .map_err(|e| format!("setresuid(0) in the user namespace: {e}"))?;
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != shim {
        exit_now(127); // the shim died while the signal was unarmed
    }
    Ok(())
}

/// Sets IFF_UP on "lo" with the classic ioctls on an AF_INET datagram socket.
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: plain socket(2) call; the result is checked and immediately owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is a plain C struct/union for which all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes ifru_flags of `req`, a valid,
    // exclusively borrowed ifreq; `sock` is an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the union field was just initialised by SIOCGIFFLAGS (and all-zero before).
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Body of the workload before exec (the init's child; in OCI mode the init itself, whose
/// `parent` is the shim): reset signals, exec. Never returns.
fn exec_workload(spec: &InitSpec, status_w: BorrowedFd<'_>, parent: Pid) -> ! {
    // Reset every disposition (Rust ignores SIGPIPE; ignored dispositions survive exec), then
    // unblock everything: signals the init forwarded before this point are delivered now.
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL has no memory-safety implications; invalid numbers (the
        // libc-reserved real-time signals) just fail with EINVAL, which is ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // Killed if the init dies first (it only does when SIGKILLed: by the shim's grace expiry,
    // or because the shim itself died). Survives exec; the workload may change it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        exit_now(127); // the parent is already gone
    }
    // Make every inherited descriptor above stderr (above the OCI stdio descriptors) close-on-exec
    // (leaked fds of the agent, ...).
    // The status pipe is already close-on-exec, so it stays usable for reporting exec errors.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags; failure
    // (old kernel) is harmless and ignored.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            spec.keep_fds,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    // Privilege restrictions: rlimits, no_new_privs, capabilities, user, and the seccomp filter
    // last, so nothing but the execve below (and reporting its failure) runs under it.
    // The security plan (rlimits, capabilities, no_new_privs, seccomp) was applied by the init
    // before the fork and is inherited.
    // The execvpe search: ENOENT/ENOTDIR → next candidate, EACCES → remembered, next; anything
    // else stops the search.
    let mut saw_eacces = false;
    let mut last = Errno::ENOENT;
    for cand in &spec.candidates {
        let err = match nix::unistd::execve(cand, &spec.argv, &spec.envp) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        last = err;
        match err {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE | Errno::ENODEV | Errno::ETIMEDOUT => {}
            Errno::EACCES => saw_eacces = true,
            _ => break,
        }
    }
    if saw_eacces && matches!(last, Errno::ENOENT | Errno::ENOTDIR) {
        last = Errno::EACCES;
    }
    report(status_w, &encode_exec_error(last as i32));
    exit_now(127);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        assert_eq!(
            exec_candidates("sh", Some("/a:/b/c")),
            vec![PathBuf::from("/a/sh"), PathBuf::from("/b/c/sh")]
        );
        assert_eq!(
            exec_candidates("sh", Some("/a::/b")),
            vec![
                PathBuf::from("/a/sh"),
                PathBuf::from("sh"),
                PathBuf::from("/b/sh")
            ]
        );
        assert_eq!(
            exec_candidates("./run.sh", Some("/a")),
            vec![PathBuf::from("./run.sh")]
        );
        assert_eq!(
            exec_candidates("/bin/true", None),
            vec![PathBuf::from("/bin/true")]
        );
        let d = exec_candidates("ls", None);
        assert_eq!(d.len(), 6);
        assert_eq!(d[0], PathBuf::from("/usr/local/sbin/ls"));
        assert_eq!(d[5], PathBuf::from("/bin/ls"));
        assert!(exec_candidates("", None).is_empty());
    }

    #[test]
    fn env_path_last_wins() {
        let env = vec![
            ("PATH".to_string(), "/x".to_string()),
            ("A".to_string(), "b".to_string()),
            ("PATH".to_string(), "/y".to_string()),
        ];
        assert_eq!(env_path(&env), Some("/y"));
        assert_eq!(env_path(&[]), None);
    }

    #[test]
    fn namespaces_parse() {
        let ns = Namespaces::parse(&["pid", "net"]).unwrap();
        assert!(ns.pid && ns.net && !ns.mount && !ns.uts && !ns.ipc);
        assert_eq!(
            ns.clone_flags(),
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET
        );
        let ns = Namespaces::parse(&["user", "cgroup", "mount"]).unwrap();
        assert!(ns.user && ns.cgroup && ns.mount);
        // The cgroup namespace is unshared by the init after the sync byte, not cloned.
        assert_eq!(
            ns.clone_flags(),
            CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS
        );
        assert!(Namespaces::parse(&["time"]).is_err());
        assert_eq!(
            Namespaces::parse::<&str>(&[]).unwrap().clone_flags(),
            CloneFlags::empty()
        );
    }
}
