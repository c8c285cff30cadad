//! `state`, `kill`, `delete`, `run`, `exec`, `ps`, `list`, `spec`.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use berth_executor::shim::security::PreparedSecurity;
use berth_executor::{ShimEvent, client};
use berth_isolators::Isolator;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use oci_spec::runtime::{Process, Spec};
use tracing::warn;

use super::OciError;
use super::console;
use super::exec::{self, Launch, differing_namespaces};
use super::hooks::{self, HookKind};
use super::proc::{PidFd, child_pidfd};
use super::runtime::{CreateOptions, Runtime, read_spec};
use super::shim;
use super::state::{OciState, Status, write_pid_file};
use super::translate::{self, ConfigError};

/// Signals `run` and `exec` forward to the container's process.
const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Output of `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsFormat {
    /// `ps` output filtered to the container's processes.
    Table,
    /// A JSON array of pids.
    Json,
}

/// Arguments of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command (unless `process_file`).
    pub args: Vec<String>,
    /// A runtime-spec `process` JSON file.
    pub process_file: Option<PathBuf>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Extra `K=V` environment.
    pub env: Vec<String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Send the terminal's master there (else berth relays it to its own stdio).
    pub console_socket: Option<PathBuf>,
    /// Do not wait for the process.
    pub detach: bool,
    /// Where to write the process's pid.
    pub pid_file: Option<PathBuf>,
    /// `uid[:gid]`.
    pub user: Option<(u32, Option<u32>)>,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Capabilities to add (`CAP_X`).
    pub caps: Vec<String>,
    /// Extra descriptors (3..3+N) passed on.
    pub preserve_fds: u32,
}

impl Runtime {
    /// The runtime-spec state of `id`.
    pub fn state(&self, id: &str) -> Result<OciState, OciError> {
        let l = self.load(id)?;
        Ok(l.record.oci_state(l.dir.status(&l.record)))
    }

    /// Sends `signal` to the container's process, or with `all` to every process in its
    /// cgroups.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
        let l = self.load(id)?;
        let status = l.dir.status(&l.record);
        if status == Status::Stopped && !all {
            return Err(OciError::WrongState {
                id: id.into(),
                status: status.as_str(),
                action: "signal it (not running)",
            });
        }
        if all {
            for pid in self.pids(id)? {
                // SAFETY: kill(2) of a process listed in the container's own cgroup.
                unsafe { libc::kill(pid, signal) };
            }
            return Ok(());
        }
        let target = self.target(&l.record)?;
        target.signal(signal).map_err(|e| OciError::Sys {
            what: format!("pidfd_send_signal({}, {signal})", l.record.pid),
            source: e,
        })?;
        Ok(())
    }

    /// Deletes a container: a created one is killed; a running one only with `force`.
    /// With `force`, an unknown id is not an error.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        let (dir, record) = match self.open(id) {
            Ok(x) => x,
            Err(OciError::NotFound { .. }) if force => return Ok(()),
            Err(e) => return Err(e),
        };
        let _lock = dir.lock()?;
        let spec = match &record {
            Some(r) => {
                let status = dir.status(r);
                if status == Status::Running && !force {
                    return Err(OciError::WrongState {
                        id: id.into(),
                        status: status.as_str(),
                        action: "delete it without --force",
                    });
                }
                if r.has_hooks {
                    read_spec(&dir.config_path()).ok()
                } else {
                    None
                }
            }
            None => None,
        };
        self.destroy(id, &dir)?;
        if let (Some(spec), Some(r)) = (spec, record) {
            let state = r.oci_state(Status::Stopped);
            if let Err(e) = hooks::run_host(
                HookKind::Poststop,
                &hooks::of(&spec, HookKind::Poststop),
                &state,
            ) {
                warn!(container_id = id, error = %e, "poststop hook failed");
            }
        }
        Ok(())
    }

    /// create + start; in the foreground waits (forwarding signals), deletes, and returns the
    /// process's status (code, or 128 + signal).
    pub fn run(&self, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32, OciError> {
        // A terminal without a console socket in the foreground: berth relays it.
        let mut opts = opts.clone();
        let mut console = None;
        if !detach && opts.console_socket.is_none() && wants_terminal(&opts.bundle) {
            Self::check_id(id)?;
            std::fs::create_dir_all(&self.root)
                .map_err(|e| OciError::io("creating", &self.root, e))?;
            let path = self.root.join(format!(".{id}.console"));
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| OciError::io("listening on", &path, e))?;
            opts.console_socket = Some(path.clone());
            console = Some((listener, path));
        }
        let created = self.create(id, &opts);
        let relay = match console {
            Some((listener, path)) => {
                let master = created.as_ref().ok().map(|_| console::recv_fd(&listener));
                let _ = std::fs::remove_file(&path);
                match master {
                    Some(Ok(m)) => Some(console::Relay::new(m)?),
                    Some(Err(e)) => {
                        let _ = self.delete(id, true);
                        return Err(e);
                    }
                    None => None,
                }
            }
            None => None,
        };
        let (record, mut shim_child) = created?;
        let l = self.load(id)?;
        let started = {
            let _lock = l.dir.lock()?;
            if detach {
                self.start_loaded(l, None).map(|()| None)
            } else {
                // Block the forwarded signals before the process runs, so none is lost.
                let sfd = forward_signals()?;
                let mut conn = shim::Conn::connect(&self.root.join(id))?;
                self.start_loaded(l, Some(&mut conn))
                    .map(|()| Some((sfd, conn)))
            }
        };
        let started = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = self.delete(id, true);
                let _ = shim_child.wait();
                return Err(e);
            }
        };
        let Some((sfd, mut conn)) = started else {
            return Ok(0);
        };
        let target = self.target(&record).ok();
        if let (Some(relay), Some(t)) = (&relay, &target) {
            relay.pump(t.as_raw_fd(), &sfd, &|sig| {
                let _ = t.signal(sig);
            });
        }
        drop(relay);
        let code = wait_exited(&mut conn, &sfd, target.as_ref(), &self.root.join(id));
        let _ = shim_child.wait();
        self.delete(id, true)?;
        code
    }

    /// Pids in the container's cgroups (nested ones included), sorted.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>, OciError> {
        let l = self.load(id)?;
        let iso = self.isolator(&l.dir, &l.record.cgroup)?;
        let mut pids = BTreeSet::new();
        if let Some(dir) = iso.container_paths(&l.record.cgroup.leaf).first() {
            collect_pids(dir, &mut pids);
        }
        Ok(pids.into_iter().collect())
    }

    /// `ps`: the container's processes.
    pub fn ps(&self, id: &str, format: PsFormat, ps_args: &[String]) -> Result<String, OciError> {
        let pids = self.pids(id)?;
        if format == PsFormat::Json {
            return Ok(serde_json::to_string(&pids).expect("pids serialize"));
        }
        let args: Vec<String> = if ps_args.is_empty() {
            vec!["-ef".into()]
        } else {
            ps_args.to_vec()
        };
        let out = std::process::Command::new("ps")
            .args(&args)
            .output()
            .map_err(|e| OciError::io("running", Path::new("ps"), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let col = header
            .split_whitespace()
            .position(|h| h == "PID")
            .ok_or_else(|| OciError::Usage(format!("no PID column in ps {args:?} output")))?;
        let mut result = format!("{header}\n");
        for line in lines {
            let pid = line
                .split_whitespace()
                .nth(col)
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| pids.binary_search(&p).is_ok()) {
                result.push_str(line);
                result.push('\n');
            }
        }
        Ok(result)
    }

    /// Every container under the root with its state (sorted by id). Directories without a
    /// record are reported as `creating`.
    pub fn list(&self) -> Result<Vec<(OciState, u32)>, OciError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(OciError::io("listing", &self.root, e)),
        };
        for entry in rd.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok((dir, Some(record))) = self.open(&id) else {
                continue;
            };
            out.push((record.oci_state(dir.status(&record)), record.owner));
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    /// Runs a new process in the container; in the foreground, its status.
    pub fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32, OciError> {
        let l = self.load(id)?;
        let status = l.dir.status(&l.record);
        if status == Status::Stopped {
            return Err(OciError::WrongState {
                id: id.into(),
                status: status.as_str(),
                action: "exec in it",
            });
        }
        let spec = read_spec(&l.dir.config_path())?;
        let process = exec_process(&spec, &opts)?;
        let cfg_err = |source| OciError::Config {
            path: l.dir.config_path(),
            source,
        };
        let mut warnings = Vec::new();
        let mut parts =
            translate::process_parts(&process, "process", &mut warnings).map_err(cfg_err)?;
        for w in &warnings {
            warn!(container_id = id, "{w}");
        }
        apply_exec_overrides(&mut parts, &opts);
        parts.security.seccomp =
            translate::seccomp_program(&spec, &mut Vec::new()).map_err(cfg_err)?;
        let security = PreparedSecurity::prepare(&parts.security)
            .map_err(|m| cfg_err(ConfigError::new("process", m)))?;
        let mut launch = Launch::new(&parts.argv, &parts.env)
            .map_err(|m| cfg_err(ConfigError::new("process.args", m)))?;
        launch.cwd = Some(
            std::ffi::CString::new(parts.cwd.as_os_str().as_encoded_bytes())
                .map_err(|_| cfg_err(ConfigError::new("process.cwd", "NUL byte")))?,
        );
        launch.security = Some(security);
        launch.namespaces =
            differing_namespaces(&self.proc_root, l.record.pid, exec::all_namespaces());
        let mut relay = None;
        if opts.preserve_fds > 0 {
            launch.stdio = super::runtime::inherit_fds(3 + opts.preserve_fds)?;
        }
        // A terminal is allocated by the child in the container's devpts; its master comes
        // back over this pair.
        let mut pty_back = None;
        if parts.terminal {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| OciError::io("socketpair", Path::new("(pty)"), e))?;
            let owner = parts.security.user.as_ref().map(|u| (u.uid, u.gid));
            launch.pty = Some(exec::PtyRequest {
                back: theirs.into(),
                size: parts.console_size,
                owner,
            });
            pty_back = Some(ours);
        }
        let iso = self.isolator(&l.dir, &l.record.cgroup)?;
        let leaf = l.record.cgroup.leaf.clone();
        let target = self.target(&l.record)?;
        let sfd = if opts.detach {
            None
        } else {
            Some(forward_signals()?)
        };
        let spawned = exec::spawn(&target, launch, |pid| {
            iso.isolate(&leaf, pid).map_err(|source| OciError::Cgroup {
                id: id.into(),
                source,
            })
        })?;
        if let Some(back) = pty_back {
            let master = console::recv_fd_from(&back)?;
            match &opts.console_socket {
                Some(sock) => console::send_fd(sock, &master, "pty")?,
                None => relay = Some(console::Relay::new(master)?),
            }
        }
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, spawned.pid)?;
        }
        if opts.detach {
            return Ok(0);
        }
        let sfd = sfd.expect("not detached");
        Ok(match relay {
            Some(r) => r.run(spawned.pid, &sfd),
            None => wait_child_forwarding(spawned.pid, &sfd),
        })
    }
}

/// Whether the bundle's config asks for a terminal (a cheap look before `create`).
fn wants_terminal(bundle: &Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["process"]["terminal"] == serde_json::Value::Bool(true))
}

/// The process an `exec` runs: a `--process` file, or the container's process with the
/// command line's arguments.
fn exec_process(spec: &Spec, opts: &ExecOptions) -> Result<Process, OciError> {
    if let Some(file) = &opts.process_file {
        let bytes = std::fs::read(file).map_err(|e| OciError::io("reading", file, e))?;
        return serde_json::from_slice(&bytes).map_err(|e| OciError::Bundle {
            path: file.clone(),
            message: format!("invalid process JSON: {e}"),
        });
    }
    if opts.args.is_empty() {
        return Err(OciError::Usage(
            "exec needs a command (or --process)".into(),
        ));
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(opts.args.clone()));
    p.set_terminal(Some(opts.tty));
    Ok(p)
}

fn apply_exec_overrides(parts: &mut translate::ProcessParts, opts: &ExecOptions) {
    if let Some(cwd) = &opts.cwd {
        parts.cwd = cwd.clone();
    }
    for e in &opts.env {
        if let Some((k, v)) = e.split_once('=') {
            parts.env.retain(|(ek, _)| ek != k);
            parts.env.push((k.into(), v.into()));
        }
    }
    if opts.tty {
        parts.terminal = true;
    }
    if let Some(user) = &mut parts.security.user {
        if let Some((uid, gid)) = opts.user {
            user.uid = uid;
            if let Some(g) = gid {
                user.gid = g;
            }
        }
        if !opts.additional_gids.is_empty() {
            user.additional_gids = opts.additional_gids.clone();
        }
    }
    parts.security.no_new_privileges |= opts.no_new_privs;
    if let Some(c) = &mut parts.security.capabilities {
        for cap in &opts.caps {
            for set in [&mut c.bounding, &mut c.effective, &mut c.permitted] {
                if !set.contains(cap) {
                    set.push(cap.clone());
                }
            }
        }
    }
}

fn collect_pids(dir: &Path, out: &mut BTreeSet<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// Blocks [`FORWARDED`] and returns a signalfd reading them.
fn forward_signals() -> Result<SignalFd, OciError> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(|e| OciError::Sys {
        what: "sigprocmask".into(),
        source: e,
    })?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| {
        OciError::Sys {
            what: "signalfd".into(),
            source: e,
        }
    })
}

/// Polls `fds` (readable), at most `timeout_ms` (-1: forever); the revents.
pub(super) fn poll_in(fds: &[i32], timeout_ms: i32) -> Vec<i16> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a live, exclusively borrowed array of `len` pollfds for the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return vec![0; fds.len()];
    }
    pfds.iter().map(|p| p.revents).collect()
}

/// Forwards pending signals of `sfd` to `target`.
pub(super) fn forward_pending(sfd: &SignalFd, send: &dyn Fn(i32)) {
    while let Ok(Some(info)) = sfd.read_signal() {
        send(info.ssi_signo as i32);
    }
}

/// `run` in the foreground: until the shim reports the exit, forwarding signals.
fn wait_exited(
    conn: &mut shim::Conn,
    sfd: &SignalFd,
    target: Option<&PidFd>,
    state_dir: &Path,
) -> Result<i32, OciError> {
    let send = |sig: i32| {
        if let Some(t) = target {
            let _ = t.signal(sig);
        }
    };
    loop {
        let ready = if conn.has_buffered() {
            vec![libc::POLLIN, 0]
        } else {
            poll_in(&[conn.as_raw_fd(), sfd.as_raw_fd()], -1)
        };
        if ready[1] != 0 {
            forward_pending(sfd, &send);
        }
        if ready[0] == 0 {
            continue;
        }
        match conn.next_event(None)? {
            Some(ShimEvent::Exited(exit)) => {
                if let Some(e) = &exit.launch_error {
                    warn!("{e}");
                }
                return Ok(exit.shell_code());
            }
            Some(_) => {}
            None => {
                return match client::read_exit(state_dir) {
                    Ok(Some(exit)) => Ok(exit.shell_code()),
                    _ => Err(OciError::Shim {
                        id: state_dir.display().to_string(),
                        message: "the shim ended without recording the exit".into(),
                    }),
                };
            }
        }
    }
}

/// Waits for our child `pid` (a pidfd, so no SIGCHLD handling), forwarding signals to it.
pub(super) fn wait_child_forwarding(pid: i32, sfd: &SignalFd) -> i32 {
    if let Some(pidfd) = child_pidfd(pid) {
        let send = |sig: i32| {
            // SAFETY: kill(2) of our own unreaped child.
            unsafe { libc::kill(pid, sig) };
        };
        loop {
            let ready = poll_in(&[pidfd.as_raw_fd(), sfd.as_raw_fd()], -1);
            if ready[1] != 0 {
                forward_pending(sfd, &send);
            }
            if ready[0] != 0 {
                break;
            }
        }
    }
    exec::wait_child(pid)
}

/// What this runtime supports (`berth oci features`, runtime-spec `features.md`).
pub fn features() -> serde_json::Value {
    let caps: Vec<String> = caps::all().into_iter().map(|c| c.to_string()).collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": super::state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "sync", "async", "dirsync", "noatime", "atime", "relatime", "norelatime",
            "strictatime", "nostrictatime", "nodiratime", "diratime", "bind", "rbind",
            "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable",
            "runbindable", "defaults"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
                    "SCMP_ACT_LOG"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ",
                    "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": [match std::env::consts::ARCH {
                    "x86_64" => "SCMP_ARCH_X86_64",
                    "aarch64" => "SCMP_ARCH_AARCH64",
                    other => other,
                }],
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
    })
}

/// A default bundle config (`berth oci spec`): runc's, running `sh` with a terminal.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("berth".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec
}
