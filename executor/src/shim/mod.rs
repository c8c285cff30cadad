//! The `berth-executor` shim process: everything but `main`.
//!
//! The shim is single-threaded and synchronous (no async runtime) to stay small: its resident
//! set is a couple of megabytes, most of it the C library. See the crate docs for the life of a
//! container; [`main_with_args`] is the ordered checklist.

pub mod event_loop;
pub mod init;
pub mod oci;
pub mod rootfs;
pub mod security;
pub mod status;
pub mod userns;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::waitpid;

use crate::protocol::{ExitStatus, ShimConfig, ShimReady};

/// Errors of the shim process.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Bad command line.
    #[error("usage: berth-executor --config <state_dir>/shim.json: {0}")]
    Usage(String),
    /// The config file could not be read.
    #[error("reading config {path}: {source}")]
    ReadConfig {
        /// Config path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The config file is not a valid [`ShimConfig`].
    #[error("parsing config {path}: {source}")]
    ParseConfig {
        /// Config path.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
    /// The config is well-formed but unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A file could not be opened or created.
    #[error("opening {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// Which call, and on what.
        what: &'static str,
        /// Cause.
        source: Errno,
    },
    /// The container init could not be cloned.
    #[error("clone of the container init with {flags}: {source}")]
    Clone {
        /// The namespace flags asked for.
        flags: String,
        /// Cause.
        source: Errno,
    },
    /// The control socket could not be set up.
    #[error("listening on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A signal could not be sent.
    #[error("sending {signal} to pid {pid}: {source}")]
    Signal {
        /// Target pid.
        pid: i32,
        /// The signal.
        signal: Signal,
        /// Cause.
        source: Errno,
    },
    /// Waiting for a child failed.
    #[error("waiting for pid {pid}: {source}")]
    Wait {
        /// Awaited pid (-1: any).
        pid: i32,
        /// Cause.
        source: Errno,
    },
    /// The readiness line could not be written to stdout.
    #[error("writing the ready line to stdout: {0}")]
    Ready(io::Error),
}

impl ShimError {
    pub(crate) fn sys(what: &'static str, source: Errno) -> ShimError {
        ShimError::Sys { what, source }
    }
}

/// Parses `--config PATH` (or `--config=PATH`).
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<PathBuf, ShimError> {
    let mut it = args.into_iter();
    let mut config = None;
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy();
        if s == "--config" {
            let v = it
                .next()
                .ok_or_else(|| ShimError::Usage("--config needs a value".into()))?;
            config = Some(PathBuf::from(v));
        } else if let Some(v) = s.strip_prefix("--config=") {
            config = Some(PathBuf::from(v));
        } else {
            return Err(ShimError::Usage(format!("unexpected argument {s:?}")));
        }
    }
    config.ok_or_else(|| ShimError::Usage("--config is required".into()))
}

/// Reads and checks the config file.
pub fn load_config(path: &Path) -> Result<ShimConfig, ShimError> {
    let bytes = std::fs::read(path).map_err(|source| ShimError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    let cfg: ShimConfig =
        serde_json::from_slice(&bytes).map_err(|source| ShimError::ParseConfig {
            path: path.to_owned(),
            source,
        })?;
    if !cfg.state_dir.is_dir() {
        return Err(ShimError::InvalidConfig(format!(
            "state_dir {} is not a directory",
            cfg.state_dir.display()
        )));
    }
    Ok(cfg)
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ShimError> {
    write_atomic_with(path, bytes, true)
}

/// [`write_atomic`], with the two fsyncs only when `durable`. OCI containers' records are not
/// durable (a runtime's state root is meant for a tmpfs, and runc does not sync either); the
/// agent's containers are, since the agent recovers them after a crash.
pub fn write_atomic_with(path: &Path, bytes: &[u8], durable: bool) -> Result<(), ShimError> {
    let err = |source| ShimError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    if durable {
        f.sync_all().map_err(err)?;
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if durable {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// Writes `exit.json` atomically.
pub fn write_exit(cfg: &ShimConfig, exit: &ExitStatus) -> Result<(), ShimError> {
    let mut json = serde_json::to_vec(exit).expect("ExitStatus serializes");
    json.push(b'\n');
    write_atomic_with(&cfg.exit_path(), &json, cfg.oci.is_none())
}

fn open_output(path: &Path) -> Result<File, ShimError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| ShimError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Log line on the shim's stderr (`<state_dir>/shim.log`).
pub(crate) fn log(cfg_id: &str, msg: std::fmt::Arguments<'_>) {
    eprintln!("berth-executor[{cfg_id}]: {msg}");
}

/// The whole shim. Returns the process exit code: 0 after the workload's exit was recorded,
/// 2 for a bad command line or config, 1 for any other failure.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    // 1. Arguments and config. Errors: message on stderr, exit code 2.
    let mut cfg = match parse_args(args).and_then(|p| load_config(&p)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("berth-executor: {e}");
            return 2;
        }
    };
    // OCI mode: the workload's stdio (before the spec: a console adds /dev/console to the plan).
    let oci_io = match cfg.oci.clone().map(|mode| oci::prepare_io(&mut cfg, &mode)) {
        None => None,
        Some(Ok(io)) => Some(io),
        Some(Err(e)) => {
            eprintln!("berth-executor: {e}");
            return 2;
        }
    };
    let spec = match init::InitSpec::from_config(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-executor: {e}");
            return 2;
        }
    };
    match run(cfg.clone(), spec, oci_io) {
        Ok(()) => 0,
        Err(e) => {
            log(&cfg.container_id, format_args!("fatal: {e}"));
            1
        }
    }
}

fn run(cfg: ShimConfig, spec: init::InitSpec, oci_io: Option<oci::OciIo>) -> Result<(), ShimError> {
    let id = cfg.container_id.clone();

    // 2. Detach: own session (survives the agent), pid file, child subreaper (orphans of the
    //    container are reparented to us and reaped by the single reaper loop). SIGCHLD is blocked
    //    for good: it is read from a signalfd in the event loop.
    if let Err(e) = nix::unistd::setsid() {
        // EPERM: already a process group leader (started by hand from a shell). Not fatal.
        log(&id, format_args!("setsid: {e} (continuing)"));
    }
    let pid = std::process::id() as i32;
    write_atomic_with(
        &cfg.pid_path(),
        format!("{pid}\n").as_bytes(),
        cfg.oci.is_none(),
    )?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| ShimError::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None)
        .map_err(|e| ShimError::sys("sigprocmask(SIGCHLD)", e))?;

    // 3. The workload's output files.
    let stdout = open_output(&cfg.stdout_path)?;
    let stderr = open_output(&cfg.stderr_path)?;

    // 4. Clone the container init; it waits for the sync byte. Namespaces given by path are
    //    opened first; the pid one is joined by the shim itself (it applies to children only).
    let joins = oci::open_namespaces(&cfg.ns_paths)?;
    oci::join_pid(&joins)?;
    let (oci_fds, console) = match oci_io {
        Some(io) => (Some(io.fds), io.console),
        None => (None, None),
    };
    let extras = init::InitExtras {
        stdio: oci_fds,
        joins,
    };
    // The extras move into the clone callback: the shim's copies are closed when it returns.
    let spawned = init::spawn_init(&spec, stdout, stderr, extras)?;
    let init_pid = spawned.pid;
    // From here on the init exists: any failure must not leave it behind.
    let kill_init = |why: &ShimError| {
        log(
            &id,
            format_args!("{why}; killing the container init {init_pid}"),
        );
        let _ = nix::sys::signal::kill(init_pid, Signal::SIGKILL);
        let _ = waitpid(init_pid, None);
    };

    // 4b. User namespace: write the init's uid/gid maps now, before anyone can release it
    //     (it becomes root of the namespace right after the sync byte).
    if let Some(maps) = &cfg.id_maps
        && spec.ns.user
        && let Err(e) = userns::write_id_maps(Path::new("/proc"), init_pid.as_raw(), maps)
    {
        kill_init(&e);
        return Err(e);
    }

    // (6, early) Bind the control socket before announcing readiness, so a client may connect
    // as soon as it has read ShimReady. Created after clone: the init never holds it.
    let sock_path = cfg.socket_path();
    let listener = match bind(&sock_path) {
        Ok(l) => l,
        Err(e) => {
            kill_init(&e);
            return Err(e);
        }
    };
    let mut sup = match event_loop::Supervisor::new(cfg.clone(), &spec, spawned, listener) {
        Ok(s) => s,
        Err(e) => {
            kill_init(&e);
            let _ = std::fs::remove_file(&sock_path);
            return Err(e);
        }
    };

    // 4c. OCI mode: the terminal's master goes to the console socket; the init joins its
    //     cgroups and assembles the container now ("created"). If it fails, its exit (with the
    //     setup error) is recorded and no ready line is printed.
    if let Some(mode) = &cfg.oci {
        if let Some(console) = console
            && let Err(e) = console.send()
        {
            return sup.fail(e);
        }
        let attach = || oci::attach_cgroups(&mode.cgroup_procs, init_pid.as_raw());
        let prepared = match sup.prepare(spec.ns.cgroup, attach) {
            Ok(p) => p,
            Err(e) => return sup.fail(e),
        };
        if !prepared {
            return Err(ShimError::InvalidConfig(format!(
                "the container could not be created: {}",
                client_exit_hint(&cfg)
            )));
        }
    }

    // 5. Announce readiness on stdout (one JSON line), then point stdout at /dev/null so the
    //    containerizer's read of the pipe ends.
    let ready = ShimReady {
        shim_pid: pid,
        pid: init_pid.as_raw(),
    };
    if let Err(e) = announce(&ready) {
        kill_init(&e);
        let _ = std::fs::remove_file(&sock_path);
        return Err(e);
    }
    log(
        &id,
        format_args!("ready: shim pid {pid}, init pid {init_pid}"),
    );

    // 6-7. Serve the socket until the init exits; record the exit (also on fatal errors).
    sup.run()
}

/// The launch error recorded in `exit.json`, for the shim's own log line.
fn client_exit_hint(cfg: &ShimConfig) -> String {
    std::fs::read(cfg.exit_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<ExitStatus>(&b).ok())
        .and_then(|e| e.launch_error)
        .unwrap_or_else(|| "see exit.json".into())
}

fn bind(path: &Path) -> Result<UnixListener, ShimError> {
    let err = |source| ShimError::Listen {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let l = UnixListener::bind(path).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(err)?;
    Ok(l)
}

fn announce(ready: &ShimReady) -> Result<(), ShimError> {
    let mut line = serde_json::to_vec(ready).expect("ShimReady serializes");
    line.push(b'\n');
    let mut out = io::stdout().lock();
    out.write_all(&line)
        .and_then(|()| out.flush())
        .map_err(ShimError::Ready)?;
    let devnull = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| ShimError::Open {
            path: "/dev/null".into(),
            source,
        })?;
    nix::unistd::dup2_stdout(&devnull).map_err(|e| ShimError::sys("dup2(/dev/null, stdout)", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn args_parsing() {
        assert_eq!(
            parse_args(args(&["--config", "/s/shim.json"])).unwrap(),
            PathBuf::from("/s/shim.json")
        );
        assert_eq!(
            parse_args(args(&["--config=/a b/shim.json"])).unwrap(),
            PathBuf::from("/a b/shim.json")
        );
        assert!(matches!(parse_args(args(&[])), Err(ShimError::Usage(_))));
        assert!(matches!(
            parse_args(args(&["--config"])),
            Err(ShimError::Usage(_))
        ));
        assert!(matches!(
            parse_args(args(&["--config", "x", "--verbose"])),
            Err(ShimError::Usage(_))
        ));
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("exit.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!d.path().join("exit.json.tmp").exists());
    }

    #[test]
    fn config_errors_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shim.json");
        assert!(matches!(load_config(&p), Err(ShimError::ReadConfig { .. })));
        std::fs::write(&p, b"{").unwrap();
        assert!(matches!(
            load_config(&p),
            Err(ShimError::ParseConfig { .. })
        ));
        assert_eq!(main_with_args(args(&["--config", p.to_str().unwrap()])), 2);
        assert_eq!(main_with_args(args(&["--bogus"])), 2);
    }
}
