//! Processes of the OCI runtime: pidfds (signals and waits without pid-reuse or SIGCHLD
//! races), start times, signal names.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// The start time of `pid` (`/proc/<pid>/stat` field 22, clock ticks since boot).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/<pid>/stat` line (the command, field 2, may hold spaces and parens).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; the start time is field 22, the 20th of these.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive (not a zombie) and still the process that started at `start`.
pub fn alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X") && parse_start_time(&stat) == Some(start)
}

/// `pidfd_open(pid, 0)`: the one place this runtime makes the call.
fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// A pidfd of our own unreaped child (its pid cannot be reused before we wait for it):
/// readable once it exits, so it can be polled beside other descriptors instead of waiting for
/// SIGCHLD. `None` when the kernel refuses (the caller then just waits for the child).
pub fn child_pidfd(pid: i32) -> Option<OwnedFd> {
    pidfd_open(pid).ok()
}

/// A pidfd of a process checked to be the one that started at `start`.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// `pidfd_open(pid)`, then the start time is compared (the pidfd pins the process, so
    /// the check cannot race with pid reuse). `Ok(None)`: the process is gone.
    pub fn open(pid: i32, start: u64) -> Result<Option<PidFd>, Errno> {
        let fd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(Errno::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !alive(pid, start) {
            return Ok(None);
        }
        Ok(Some(PidFd { fd, pid }))
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `pidfd_send_signal`. `Ok(false)`: the process has exited.
    pub fn signal(&self, signal: i32) -> Result<bool, Errno> {
        // SAFETY: pidfd_send_signal with a null siginfo and no flags; `fd` is a live pidfd.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(true)
        } else {
            match Errno::last() {
                Errno::ESRCH => Ok(false),
                e => Err(e),
            }
        }
    }

    /// Waits until the process has exited (the pidfd becomes readable), at most `timeout`
    /// (`None`: forever). Returns whether it exited.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    left.as_millis().min(i32::MAX as u128) as i32
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, exclusively borrowed for the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            match n {
                1.. => return true,
                0 => return false,
                _ if Errno::last() == Errno::EINTR => {}
                _ => return false,
            }
        }
    }

    /// The raw descriptor (for `poll` sets and `setns`).
    pub fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Signal names runc accepts: `KILL`, `SIGKILL`, `9`, `sigterm`.
pub fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rt) = name.strip_prefix("RTMIN") {
        let off: i32 = if rt.is_empty() { 0 } else { rt.parse().ok()? };
        let n = libc::SIGRTMIN() + off;
        return (n <= libc::SIGRTMAX()).then_some(n);
    }
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return None,
    };
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_start_time() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10";
        assert_eq!(parse_start_time(line), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
        assert!(!alive(i32::MAX, start));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("sigusr1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("RTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn pidfd_of_self() {
        let me = std::process::id() as i32;
        let fd = PidFd::open(me, start_time(me).unwrap()).unwrap().unwrap();
        assert_eq!(fd.pid(), me);
        assert!(fd.signal(0).unwrap());
        assert!(!fd.wait_exit(Some(Duration::from_millis(1))));
        assert!(PidFd::open(me, 1).unwrap().is_none());
    }
}
