//! The small file layer under both hierarchies: every kernel access of the cgroups isolator goes
//! through these functions, each mapping its failure to a [`CgroupError`] carrying the path.
//!
//! Writes open the control file write-only with `O_TRUNC` and never create it: on cgroupfs the
//! kernel creates control files at `mkdir`, so a missing file means a missing controller, and in a
//! fixture tree the test creates the files it expects to be written.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::CgroupError;

/// Reads a control file as a string.
pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a control file; `None` if it does not exist (optional kernel feature or removed cgroup).
pub(super) fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `value` to an existing control file in a single `write(2)`.
pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    debug!(path = %path.display(), value, "cgroup write");
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

/// Creates a cgroup directory; an existing one is fine. Returns whether it was created.
pub(super) fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => {
            debug!(path = %path.display(), "cgroup created");
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(source) => Err(CgroupError::Mkdir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Subdirectories of `dir` (cgroups are directories); a missing `dir` has none.
pub(super) fn subdirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let err = |source| CgroupError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(err(source)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err)?;
        if !entry.file_type().map_err(err)?.is_dir() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the cgroup `dir` and any cgroups nested in it (depth first), removing directories
/// only: cgroupfs drops control files by itself. A missing `dir` is success. `EBUSY` (tasks still
/// exiting) is retried with backoff (10 ms doubling, capped at 500 ms) until `deadline`, but at
/// least for one second.
pub(super) fn remove_cgroup(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    for child in subdirs(dir)? {
        remove_cgroup(&dir.join(child), deadline)?;
    }
    let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    let mut delay = Duration::from_millis(10);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match std::fs::remove_dir(dir) {
            Ok(()) => {
                debug!(path = %dir.display(), attempts, "cgroup removed");
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() >= deadline {
                    return Err(CgroupError::RemoveBusy {
                        path: dir.to_path_buf(),
                        attempts,
                    });
                }
                sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// The pids in `dir/cgroup.procs`; a missing cgroup has none.
pub(super) fn procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let Some(content) = read_opt(&path)? else {
        return Ok(Vec::new());
    };
    content
        .split_whitespace()
        .map(|t| {
            t.parse().map_err(|_| CgroupError::Parse {
                path: path.clone(),
                content: t.into(),
            })
        })
        .collect()
}

/// The pids of every cgroup in the trees rooted at `dirs` (`cgroup.procs` lists only a cgroup's
/// own members, so nested cgroups are walked), with the cgroups that hold them.
pub(super) fn procs_tree(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<i32>)>, CgroupError> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
    while let Some(dir) = stack.pop() {
        let pids = procs(&dir)?;
        if !pids.is_empty() {
            found.push((dir.clone(), pids));
        }
        for child in subdirs(&dir)?.into_iter().rev() {
            stack.push(dir.join(child));
        }
    }
    Ok(found)
}

/// Sends SIGKILL to each pid. Pids `<= 0` (0 = not visible in our pid namespace) and our own pid
/// are never signalled: `kill(0)`/`kill(-n)` would hit whole process groups.
pub(super) fn kill_pids(pids: &BTreeSet<i32>) {
    let me = std::process::id() as i32;
    for &pid in pids {
        if pid <= 0 || pid == me {
            continue;
        }
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => warn!(pid, error = %e, "SIGKILL failed"),
        }
    }
}

/// Kills every process in the trees rooted at `dirs` until they are empty: `freeze(true)` before
/// each round's SIGKILLs and `freeze(false)` after, so nothing forks in between (and pids cannot be
/// reused while frozen). Rounds are 10 ms apart, doubling up to 200 ms, until `deadline`; then
/// [`CgroupError::KillTimeout`] names a cgroup still holding processes (a nested one if any) and
/// the pids (processes in uninterruptible sleep, or frozen by a freezer nested in the container,
/// cannot die).
pub(super) fn kill_until_empty(
    dirs: &[PathBuf],
    freeze: &dyn Fn(bool) -> Result<(), CgroupError>,
    deadline: Instant,
) -> Result<(), CgroupError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    let mut round = 0u32;
    loop {
        let held = procs_tree(dirs)?;
        if held.is_empty() {
            return Ok(());
        }
        let pids: BTreeSet<i32> = held.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        if Instant::now() >= deadline {
            // A nested cgroup (a freezer the workload made?) tells more than the container's.
            let path = held
                .iter()
                .find(|(dir, _)| !dirs.contains(dir))
                .or(held.first())
                .map(|(dir, _)| dir.clone())
                .unwrap_or_default();
            return Err(CgroupError::KillTimeout {
                path,
                pids: pids.into_iter().collect(),
                waited: start.elapsed(),
            });
        }
        debug!(round, ?pids, "killing cgroup processes");
        freeze(true)?;
        kill_pids(&pids);
        freeze(false)?;
        round += 1;
        sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Polls `check` up to `tries` times, 5 ms apart; true once it holds.
pub(super) fn wait_for(tries: u32, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if check() {
            return true;
        }
        sleep(Duration::from_millis(5));
    }
    check()
}

/// The value of `key` in a flat-keyed file (`key value` lines: cpu.stat, memory.events, ...).
pub(super) fn keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// Reads a file holding a single number.
pub(super) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let content = read(path)?;
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: content.trim().into(),
    })
}

/// Reads a file holding a single number, `None` if the file does not exist.
pub(super) fn read_u64_opt(path: &Path) -> Result<Option<u64>, CgroupError> {
    if !path.exists() {
        return Ok(None);
    }
    read_u64(path).map(Some)
}

/// Reads a whitespace-separated list of controller names (`cgroup.controllers`,
/// `cgroup.subtree_control`), tolerating a leading `+` as a fixture written by us would contain.
pub(super) fn controllers(path: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(read(path)?
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_string())
        .collect())
}

/// "64 MiB" when whole MiB, else bytes.
pub(super) fn human_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= MIB && bytes & (MIB - 1) == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}
