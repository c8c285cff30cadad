//! `berth health-exec --pid PID [--timeout SECS] -- CMD...`: runs a COMMAND health check inside
//! a running container. The agent is a multi-threaded tokio process and must not fork, so it
//! re-executes the berth binary as this helper, which runs before any thread exists:
//!
//! 1. pin the container's init with a pidfd (checked against its start time);
//! 2. the environment: the workload's (`/proc/<child>/environ` of the init's first child: the
//!    init is berth's shim), then the helper's own variables (the check's
//!    `CommandInfo.environment`, set by the agent) on top;
//! 3. fork through [`berth_containerizer::oci::exec::spawn`]: the child is born in the
//!    container's pid namespace; while it waits, the parent makes it a process group leader
//!    and moves it into every cgroup of the init (`/proc/<pid>/cgroup`); the child then joins
//!    the other namespaces, changes to `$MESOS_SANDBOX` (else `/`) and execs;
//! 4. wait at most `--timeout`; past it the whole process group is killed (exit 124).
//!
//! The check runs with root's privileges in the container's namespaces, without the task's
//! capability, seccomp and user settings (see DESIGN.md).

use std::{
    os::fd::{AsRawFd, OwnedFd},
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use berth_containerizer::oci::{
    OciError,
    exec::{self, Launch},
    proc::{self, PidFd},
};
use nix::{sys::signal::Signal, unistd::Pid};

/// Exit code of a check that ran past its timeout (as coreutils `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of a helper that could not start the check.
pub const EXIT_SETUP: i32 = 125;

/// Why the helper could not start the check.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The container init is gone.
    #[error("the container init {pid} is not running")]
    Gone {
        /// Its pid.
        pid: i32,
    },
    /// Reading a `/proc` file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing a cgroup's `cgroup.procs` failed.
    #[error("joining cgroup {path}: {source}")]
    JoinCgroup {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The command is not valid.
    #[error("bad command: {0}")]
    Command(String),
    /// The OCI exec layer failed (namespaces, fork, exec).
    #[error(transparent)]
    Exec(#[from] OciError),
}

/// Runs the check; returns the helper's exit code (the command's, or 124/125).
pub fn main(pid: i32, timeout: Option<f64>, argv: &[String]) -> i32 {
    match run(pid, timeout.map(Duration::from_secs_f64), argv) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth health-exec: {err}");
            EXIT_SETUP
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, HelperError> {
    std::fs::read(path).map_err(|source| HelperError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn run(pid: i32, timeout: Option<Duration>, argv: &[String]) -> Result<i32, HelperError> {
    let proc_root = Path::new("/proc");
    // 1. The init, pinned.
    let start = proc::start_time(pid).ok_or(HelperError::Gone { pid })?;
    let target = PidFd::open(pid, start)
        .map_err(|e| OciError::Sys {
            what: format!("pidfd_open({pid})"),
            source: e,
        })?
        .ok_or(HelperError::Gone { pid })?;
    // 2. Environment: the workload's (the init is berth's shim, whose first child is the
    // workload), else the init's own.
    let workload = std::fs::read_to_string(proc_root.join(format!("{pid}/task/{pid}/children")))
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string));
    let environ = match workload
        .and_then(|child| std::fs::read(proc_root.join(format!("{child}/environ"))).ok())
    {
        Some(environ) => environ,
        None => read(&proc_root.join(format!("{pid}/environ")))?,
    };
    let overrides: Vec<(String, String)> = std::env::vars().collect();
    let env = merge_env(&environ, &overrides);
    // 3. cgroups, namespaces, launch.
    let cgroup_text =
        String::from_utf8_lossy(&read(&proc_root.join(format!("{pid}/cgroup")))?).into_owned();
    let procs_files = cgroup_procs_files(Path::new("/sys/fs/cgroup"), &cgroup_text);
    let mut launch = Launch::new(argv, &env).map_err(HelperError::Command)?;
    let cwd = env
        .iter()
        .find(|(k, _)| k == "MESOS_SANDBOX")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/".into());
    launch.cwd = Some(
        std::ffi::CString::new(cwd).map_err(|_| HelperError::Command("NUL in the cwd".into()))?,
    );
    launch.namespaces = exec::differing_namespaces(proc_root, pid, exec::all_namespaces());
    let mut join_error = None;
    let spawned = exec::spawn(&target, launch, |child| {
        // A group of its own, so a timeout kills what the command started too.
        let _ = nix::unistd::setpgid(Pid::from_raw(child), Pid::from_raw(child));
        for file in &procs_files {
            if let Err(source) = std::fs::write(file, child.to_string()) {
                join_error = Some(HelperError::JoinCgroup {
                    path: file.clone(),
                    source,
                });
                return Err(OciError::Exec {
                    message: format!("joining cgroup {}", file.display()),
                });
            }
        }
        Ok(())
    });
    let spawned = match (spawned, join_error) {
        (Err(_), Some(join)) => return Err(join),
        (Err(e), None) => return Err(e.into()),
        (Ok(s), _) => s,
    };
    // 4. Wait, bounded.
    if !wait_exit(spawned.pid, timeout) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(spawned.pid), Signal::SIGKILL);
        let _ = exec::wait_child(spawned.pid);
        eprintln!(
            "timed out after {}s",
            timeout.unwrap_or_default().as_secs_f64()
        );
        return Ok(EXIT_TIMEOUT);
    }
    Ok(exec::wait_child(spawned.pid))
}

/// Waits until our child `pid` exits, at most `timeout`; whether it did. Without a pidfd it
/// waits without bound.
fn wait_exit(pid: i32, timeout: Option<Duration>) -> bool {
    let Some(fd): Option<OwnedFd> = proc::child_pidfd(pid) else {
        return true;
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, exclusively borrowed for the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            1.. => return true,
            0 => return false,
            _ if nix::errno::Errno::last() == nix::errno::Errno::EINTR => {}
            _ => return true,
        }
    }
}

/// The init's environment (`K=V\0...`) with `overrides` replacing or adding variables.
pub fn merge_env(environ: &[u8], overrides: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = environ
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (k, v) = text.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    for (key, value) in overrides {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }
    env
}

/// The `cgroup.procs` files of every cgroup in `/proc/<pid>/cgroup` text that exists under
/// `root` (v2 at the root, hybrid `unified`, v1 hierarchies by controller or joined name).
/// Processes in a hierarchy's root cgroup, and paths that leave their hierarchy, are skipped.
pub fn cgroup_procs_files(root: &Path, proc_cgroup: &str) -> Vec<PathBuf> {
    let pure_v2 = root.join("cgroup.controllers").is_file();
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(list), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(rel) = relative(path) else { continue };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mounts: Vec<PathBuf> = if id == "0" && list.is_empty() {
            if pure_v2 {
                vec![root.to_path_buf()]
            } else {
                vec![root.join("unified")]
            }
        } else if pure_v2 {
            continue;
        } else {
            let names: Vec<&str> = list
                .split(',')
                .map(|c| c.strip_prefix("name=").unwrap_or(c))
                .collect();
            std::iter::once(root.join(names.join(",")))
                .chain(names.iter().map(|n| root.join(n)))
                .collect()
        };
        if let Some(dir) = mounts
            .iter()
            .map(|m| m.join(&rel))
            .find(|d| d.join("cgroup.procs").is_file())
        {
            out.push(dir.join("cgroup.procs"));
        }
    }
    out
}

fn relative(path: &str) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(c) => rel.push(c),
            _ => return None,
        }
    }
    Some(rel)
}
