//! Client side of the shim protocol (used by the containerizer): spawning a shim, talking to it
//! over its socket, and reading what it left on disk. Async (tokio); the shim itself is not.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::{ExitStatus, ShimConfig, ShimEvent, ShimReady, ShimRequest};

/// How long [`spawn_shim`] waits for the ready line before killing the shim.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the end of `shim.log` goes into spawn errors.
const LOG_TAIL_BYTES: u64 = 2048;

/// Errors of the shim client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file in the state directory could not be written/created.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The shim binary could not be started.
    #[error("spawning {bin}: {source}")]
    Spawn {
        /// The executor binary.
        bin: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The shim exited (or closed its stdout) before printing its ready line.
    #[error("shim {bin} exited before it was ready ({status}); tail of {log}:\n{tail}")]
    ShimDied {
        /// The executor binary.
        bin: PathBuf,
        /// Its exit status, as text.
        status: String,
        /// The shim's log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// The shim did not print its ready line in time; it was killed.
    #[error("shim {bin} not ready after {timeout:?}, killed; tail of {log}:\n{tail}")]
    ReadyTimeout {
        /// The executor binary.
        bin: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// The shim's log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// The ready line was not a [`ShimReady`]; the shim was killed.
    #[error("bad ready line from shim {bin}: {line:?}: {source}")]
    BadReady {
        /// The executor binary.
        bin: PathBuf,
        /// What it printed.
        line: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// Could not connect to the shim's socket.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Reading from / writing to the shim's socket (or its stdout) failed.
    #[error("I/O with shim at {path}: {source}")]
    Io {
        /// Socket path (or binary for the stdout pipe).
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The shim sent something that is not a [`ShimEvent`].
    #[error("bad event from shim at {path}: {line:?}: {source}")]
    BadEvent {
        /// Socket path.
        path: PathBuf,
        /// The line received.
        line: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// A file in the state directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A file in the state directory is not valid JSON of the expected type.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Path of the config file the shim is started with.
pub fn config_path(state_dir: &Path) -> PathBuf {
    state_dir.join("shim.json")
}

/// Path of the shim's own log (its stderr).
pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("shim.log")
}

/// The last bytes of `shim.log` (empty if unreadable).
pub fn log_tail(state_dir: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut f = std::fs::File::open(log_path(state_dir))?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
    };
    read().unwrap_or_default()
}

fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let err = |source| ClientError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes config to `<state_dir>/shim.json`, spawns `executor_bin --config ...` detached
/// (stdin null, stdout piped, stderr appended to `<state_dir>/shim.log`), reads the
/// [`ShimReady`] line and returns it.
///
/// Errors if the shim exits first (with the tail of `shim.log`), prints garbage, or is not
/// ready within [`READY_TIMEOUT`] (then it is killed). When this returns Ok the shim's socket
/// is already listening, so [`ShimClient::connect`] can follow at once.
///
/// The shim stays our child process even after its `setsid()`: a task waiting for it is spawned
/// on the current tokio runtime so it is reaped when it exits. Must be called within a runtime.
pub async fn spawn_shim(
    executor_bin: &Path,
    config: &ShimConfig,
) -> Result<ShimReady, ClientError> {
    let state_dir = &config.state_dir;
    let cfg_path = config_path(state_dir);
    let json = serde_json::to_vec_pretty(config).expect("ShimConfig serializes");
    write_file_atomic(&cfg_path, &json)?;
    let log = log_path(state_dir);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|source| ClientError::Write {
            path: log.clone(),
            source,
        })?;

    let bin = executor_bin.to_owned();
    let mut child = tokio::process::Command::new(executor_bin)
        .arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| ClientError::Spawn {
            bin: bin.clone(),
            source,
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let read = tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await;
    drop(reader);
    let result = match read {
        Err(_elapsed) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(ClientError::ReadyTimeout {
                bin,
                timeout: READY_TIMEOUT,
                log,
                tail: log_tail(state_dir),
            })
        }
        Ok(Err(source)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(ClientError::Io { path: bin, source })
        }
        Ok(Ok(0)) => {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            Err(ClientError::ShimDied {
                bin,
                status,
                log,
                tail: log_tail(state_dir),
            })
        }
        Ok(Ok(_)) => match serde_json::from_str::<ShimReady>(line.trim()) {
            Ok(ready) => Ok(ready),
            Err(source) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(ClientError::BadReady {
                    bin,
                    line: line.trim_end().to_string(),
                    source,
                })
            }
        },
    };
    if result.is_ok() {
        // Reap the shim whenever it exits (it is our child until then).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }
    result
}

/// A connection to a running shim's control socket.
#[derive(Debug)]
pub struct ShimClient {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Bytes of the event line being read (kept across cancelled `next_event` calls).
    buf: Vec<u8>,
}

impl ShimClient {
    /// Connects to `<state_dir>/shim.sock`.
    pub async fn connect(state_dir: &Path) -> Result<Self, ClientError> {
        let path = state_dir.join("shim.sock");
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.clone(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(ShimClient {
            path,
            reader: BufReader::new(r),
            writer: w,
            buf: Vec::new(),
        })
    }

    /// Sends one request.
    pub async fn send(&mut self, req: &ShimRequest) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).expect("ShimRequest serializes");
        line.push(b'\n');
        let res = async {
            self.writer.write_all(&line).await?;
            self.writer.flush().await
        }
        .await;
        res.map_err(|source| ClientError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Next event; `Ok(None)` when the shim closed the connection (after `Exited`, or because it
    /// died: then look at [`read_exit`]). Cancel-safe: a partially read line is kept.
    pub async fn next_event(&mut self) -> Result<Option<ShimEvent>, ClientError> {
        loop {
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .await
                .map_err(|source| ClientError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 && self.buf.is_empty() {
                return Ok(None);
            }
            let line = std::mem::take(&mut self.buf);
            if line.trim_ascii().is_empty() {
                if n == 0 {
                    return Ok(None);
                }
                continue;
            }
            return serde_json::from_slice(line.trim_ascii())
                .map(Some)
                .map_err(|source| ClientError::BadEvent {
                    path: self.path.clone(),
                    line: String::from_utf8_lossy(&line).trim_end().to_string(),
                    source,
                });
        }
    }
}

/// Reads `<state_dir>/exit.json` if present.
pub fn read_exit(state_dir: &Path) -> Result<Option<ExitStatus>, ClientError> {
    let path = state_dir.join("exit.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ClientError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ClientError::Parse { path, source })
}

/// The shim pid recorded in `<state_dir>/shim.pid`, if readable.
pub fn shim_pid(state_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(state_dir.join("shim.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the shim recorded in `<state_dir>/shim.pid` is alive: the pid exists
/// (`kill(pid, 0)`) and `/proc/<pid>/cmdline` mentions `berth-executor` (guards against pid
/// reuse; a zombie has an empty cmdline and counts as dead).
pub fn shim_alive(state_dir: &Path) -> bool {
    let Some(pid) = shim_pid(state_dir) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline
            .windows(b"berth-executor".len())
            .any(|w| w == b"berth-executor"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_exit_absent_present_corrupt() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_exit(d.path()).unwrap().is_none());
        let e = ExitStatus {
            code: Some(3),
            signal: None,
            killed_by_request: false,
            launch_error: None,
            at: 12.5,
        };
        std::fs::write(d.path().join("exit.json"), serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(read_exit(d.path()).unwrap(), Some(e));
        std::fs::write(d.path().join("exit.json"), b"{").unwrap();
        assert!(matches!(
            read_exit(d.path()),
            Err(ClientError::Parse { .. })
        ));
    }

    #[test]
    fn shim_alive_checks_pid_and_cmdline() {
        let d = tempfile::tempdir().unwrap();
        assert!(!shim_alive(d.path()));
        // Our own pid is alive but is not a berth-executor (the test binary's name is
        // berth_executor-<hash>, with an underscore).
        std::fs::write(
            d.path().join("shim.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert!(!shim_alive(d.path()));
        std::fs::write(d.path().join("shim.pid"), b"garbage").unwrap();
        assert!(!shim_alive(d.path()));
    }
}
