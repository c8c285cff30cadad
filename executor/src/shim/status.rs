//! Pure logic of the shim: the records the container init sends back over the status pipe, and
//! turning what the shim observed into an [`ExitStatus`].
//!
//! Status pipe records (init/workload → shim), each well below `PIPE_BUF` so writes are atomic:
//! - `[TAG_ENDED, kind, i32 LE]`: the workload ended; kind 0 = exit code, 1 = signal.
//! - `[TAG_EXEC_ERR, i32 LE errno]`: the workload's `execve` failed (written by the grandchild).
//! - `[TAG_SETUP_ERR, u16 LE len, bytes]`: the init failed to prepare the container.
//! - `[TAG_PREPARED]`: (OCI mode) the init assembled the container and waits for `Start`.

use nix::errno::Errno;

use crate::protocol::ExitStatus;

const TAG_ENDED: u8 = 1;
const TAG_EXEC_ERR: u8 = 2;
const TAG_SETUP_ERR: u8 = 3;
const TAG_PREPARED: u8 = 4;
/// Longest setup error message carried over the pipe.
const MAX_SETUP_MSG: usize = 1024;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Exited normally with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Ended {
    /// From a raw `waitpid` status (as filled in by `waitpid(2)`); `None` when the status is
    /// neither an exit nor a signal death (stopped/continued).
    pub fn from_wait_status(raw: i32) -> Option<Ended> {
        if libc::WIFEXITED(raw) {
            Some(Ended::Code(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Some(Ended::Signal(libc::WTERMSIG(raw)))
        } else {
            None
        }
    }

    /// The exit code a pid-1 reporting this end uses: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Ended::Code(c) => c,
            Ended::Signal(s) => 128 + s,
        }
    }
}

/// Encodes a "workload ended" record.
pub fn encode_ended(ended: Ended) -> [u8; 6] {
    let (kind, v) = match ended {
        Ended::Code(c) => (0u8, c),
        Ended::Signal(s) => (1u8, s),
    };
    let b = v.to_le_bytes();
    [TAG_ENDED, kind, b[0], b[1], b[2], b[3]]
}

/// Encodes an "exec failed" record.
pub fn encode_exec_error(errno: i32) -> [u8; 5] {
    let b = errno.to_le_bytes();
    [TAG_EXEC_ERR, b[0], b[1], b[2], b[3]]
}

/// Encodes a "setup failed" record (message truncated to a bounded length).
pub fn encode_setup_error(msg: &str) -> Vec<u8> {
    let mut end = msg.len().min(MAX_SETUP_MSG);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &msg.as_bytes()[..end];
    let mut out = Vec::with_capacity(3 + bytes.len());
    out.push(TAG_SETUP_ERR);
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Encodes a "container prepared" record (OCI mode).
pub fn encode_prepared() -> [u8; 1] {
    [TAG_PREPARED]
}

/// What the init and the workload reported over the status pipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    /// How the workload ended, as seen by the init.
    pub ended: Option<Ended>,
    /// errno of a failed `execve` of the workload.
    pub exec_errno: Option<i32>,
    /// The init could not prepare the container.
    pub setup_error: Option<String>,
    /// (OCI mode) the init assembled the container and waits for `Start`.
    pub prepared: bool,
}

/// Parses the bytes read from the status pipe. A truncated trailing record is ignored.
pub fn parse_report(mut buf: &[u8]) -> InitReport {
    let mut report = InitReport::default();
    let i32_at = |b: &[u8], at: usize| -> Option<i32> {
        b.get(at..at + 4)
            .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    while let Some(&tag) = buf.first() {
        match tag {
            TAG_ENDED => {
                let (Some(&kind), Some(v)) = (buf.get(1), i32_at(buf, 2)) else {
                    break;
                };
                report.ended = Some(if kind == 0 {
                    Ended::Code(v)
                } else {
                    Ended::Signal(v)
                });
                buf = &buf[6..];
            }
            TAG_EXEC_ERR => {
                let Some(v) = i32_at(buf, 1) else { break };
                report.exec_errno = Some(v);
                buf = &buf[5..];
            }
            TAG_SETUP_ERR => {
                let Some(len) = buf
                    .get(1..3)
                    .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
                else {
                    break;
                };
                let Some(msg) = buf.get(3..3 + len) else {
                    break;
                };
                report.setup_error = Some(String::from_utf8_lossy(msg).into_owned());
                buf = &buf[3 + len..];
            }
            TAG_PREPARED => {
                report.prepared = true;
                buf = &buf[1..];
            }
            _ => break, // garbage: stop parsing, keep what we have
        }
    }
    report
}

/// Builds the final [`ExitStatus`].
///
/// `init_end` is how the container init itself ended (from the shim's `waitpid`); the report from
/// the status pipe is preferred when it carries the workload's own end (the init exits with
/// 128 + signal when the workload is killed, which would otherwise be mistaken for a code).
pub fn build_exit_status(
    init_end: Ended,
    report: &InitReport,
    argv0: &str,
    killed_by_request: bool,
    at: f64,
) -> ExitStatus {
    let ended = report.ended.unwrap_or(init_end);
    let launch_error = match (&report.setup_error, report.exec_errno) {
        (Some(msg), _) => Some(msg.clone()),
        (None, Some(errno)) => Some(format!("exec {argv0}: {}", Errno::from_raw(errno).desc())),
        (None, None) => None,
    };
    let (code, signal) = match ended {
        Ended::Code(c) => (Some(c), None),
        Ended::Signal(s) => (None, Some(s)),
    };
    ExitStatus {
        code,
        signal,
        killed_by_request,
        launch_error,
        at,
    }
}

/// Current unix time, seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_decoding() {
        // exit(3) → status 3 << 8; killed by 9 → status 9; stopped → 0x7f | sig << 8.
        assert_eq!(Ended::from_wait_status(3 << 8), Some(Ended::Code(3)));
        assert_eq!(Ended::from_wait_status(0), Some(Ended::Code(0)));
        assert_eq!(Ended::from_wait_status(9), Some(Ended::Signal(9)));
        assert_eq!(Ended::from_wait_status(15 | 0x80), Some(Ended::Signal(15))); // core dumped
        assert_eq!(Ended::from_wait_status(0x7f | (19 << 8)), None);
        assert_eq!(Ended::Signal(15).shell_code(), 143);
        assert_eq!(Ended::Code(7).shell_code(), 7);
    }

    #[test]
    fn records_roundtrip() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&encode_exec_error(libc::ENOENT));
        buf.extend_from_slice(&encode_ended(Ended::Code(127)));
        let r = parse_report(&buf);
        assert_eq!(r.exec_errno, Some(libc::ENOENT));
        assert_eq!(r.ended, Some(Ended::Code(127)));
        assert_eq!(r.setup_error, None);

        let mut buf = encode_setup_error("sethostname: EPERM");
        buf.extend_from_slice(&encode_ended(Ended::Signal(9)));
        buf.push(TAG_ENDED); // truncated trailing record
        let r = parse_report(&buf);
        assert_eq!(r.setup_error.as_deref(), Some("sethostname: EPERM"));
        assert_eq!(r.ended, Some(Ended::Signal(9)));

        let mut buf = encode_prepared().to_vec();
        buf.extend_from_slice(&encode_exec_error(libc::EACCES));
        let r = parse_report(&buf);
        assert!(r.prepared);
        assert_eq!(r.exec_errno, Some(libc::EACCES));

        assert_eq!(parse_report(&[]), InitReport::default());
        assert_eq!(parse_report(&[0xff, 1, 2]), InitReport::default());
    }

    #[test]
    fn long_setup_message_is_truncated_on_char_boundary() {
        let msg = "é".repeat(MAX_SETUP_MSG);
        let r = parse_report(&encode_setup_error(&msg));
        let got = r.setup_error.unwrap();
        assert!(got.len() <= MAX_SETUP_MSG && got.chars().all(|c| c == 'é'));
    }

    #[test]
    fn exit_status_prefers_report() {
        // Workload killed by SIGTERM: init exits 143, the report says signal 15.
        let r = InitReport {
            ended: Some(Ended::Signal(15)),
            ..Default::default()
        };
        let e = build_exit_status(Ended::Code(143), &r, "sleep", true, 1.5);
        assert_eq!((e.code, e.signal), (None, Some(15)));
        assert!(e.killed_by_request);
        assert_eq!(e.launch_error, None);
        assert_eq!(e.at, 1.5);

        // Init SIGKILLed (grace expired): no report, the init's own status is used.
        let e = build_exit_status(Ended::Signal(9), &InitReport::default(), "x", true, 0.0);
        assert_eq!((e.code, e.signal), (None, Some(9)));

        // exec failure.
        let r = InitReport {
            ended: Some(Ended::Code(127)),
            exec_errno: Some(libc::ENOENT),
            setup_error: None,
            prepared: true,
        };
        let e = build_exit_status(Ended::Code(127), &r, "nope", false, 0.0);
        assert_eq!(e.code, Some(127));
        assert_eq!(
            e.launch_error.as_deref(),
            Some("exec nope: No such file or directory")
        );
        assert_eq!(e.shell_code(), 127);
    }
}
