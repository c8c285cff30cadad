//! A small synchronous client of the shim for the OCI CLI (the containerizer's own client is
//! async; the CLI has no runtime and wants none): spawn and read the ready line, then JSON lines
//! over the control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_executor::client::{config_path, log_path, log_tail, read_exit};
use berth_executor::{ShimConfig, ShimEvent, ShimReady, ShimRequest};

use super::OciError;

/// How long `create` waits for the shim to report the container created.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes `shim.json` and starts the shim; returns its ready line and the child (the caller
/// reaps it if it stays around, `run` in the foreground). The shim inherits every descriptor
/// of ours that is not close-on-exec: the caller's stdio copies named in the config.
pub fn spawn(executor_bin: &Path, cfg: &ShimConfig) -> Result<(ShimReady, Child), OciError> {
    let id = &cfg.container_id;
    let cfg_path = config_path(&cfg.state_dir);
    let json = serde_json::to_vec(cfg).expect("ShimConfig serializes");
    std::fs::write(&cfg_path, json).map_err(|e| OciError::io("writing", &cfg_path, e))?;
    let log = log_path(&cfg.state_dir);
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| OciError::io("opening", &log, e))?;
    let mut child = Command::new(executor_bin)
        .arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| OciError::io("starting", executor_bin, e))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = Vec::new();
    let got = read_line_timeout(stdout, &mut line, READY_TIMEOUT);
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        why
    };
    let message = match got {
        Ok(true) => match serde_json::from_slice::<ShimReady>(line.trim_ascii()) {
            Ok(ready) => return Ok((ready, child)),
            Err(e) => fail(
                &mut child,
                format!(
                    "bad ready line {:?}: {e}",
                    String::from_utf8_lossy(&line).trim()
                ),
            ),
        },
        Ok(false) => {
            let _ = child.wait();
            // The shim recorded why the container could not be created.
            match read_exit(&cfg.state_dir) {
                Ok(Some(exit)) if exit.launch_error.is_some() => {
                    return Err(OciError::Launch {
                        id: id.clone(),
                        message: exit.launch_error.unwrap_or_default(),
                    });
                }
                _ => format!("the shim exited: {}", log_tail(&cfg.state_dir)),
            }
        }
        Err(e) => fail(&mut child, e),
    };
    Err(OciError::Shim {
        id: id.clone(),
        message,
    })
}

/// Reads one line from `r` within `timeout`. `Ok(false)` on EOF before a newline.
fn read_line_timeout(
    mut r: impl Read + AsRawFd,
    line: &mut Vec<u8>,
    timeout: Duration,
) -> Result<bool, String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!("not ready after {timeout:?}"));
        }
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, exclusively borrowed for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if n == 0 {
            continue;
        }
        match r.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(k) => {
                line.extend_from_slice(&buf[..k]);
                if line.contains(&b'\n') {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the ready line: {e}")),
        }
    }
}

/// A connection to a shim's control socket.
#[derive(Debug)]
pub struct Conn {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    /// Connects to `<state_dir>/shim.sock`.
    pub fn connect(state_dir: &Path) -> Result<Conn, OciError> {
        let path = state_dir.join("shim.sock");
        let stream =
            UnixStream::connect(&path).map_err(|e| OciError::io("connecting to", &path, e))?;
        let writer = stream
            .try_clone()
            .map_err(|e| OciError::io("connecting to", &path, e))?;
        Ok(Conn {
            path,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request.
    pub fn send(&mut self, req: &ShimRequest) -> Result<(), OciError> {
        let mut line = serde_json::to_vec(req).expect("ShimRequest serializes");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| OciError::io("writing to", &self.path, e))
    }

    /// The next event; `Ok(None)` when the shim closed the connection. `timeout` bounds the
    /// wait (`None`: forever).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<ShimEvent>, OciError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|e| OciError::io("reading from", &self.path, e))?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .map_err(|e| OciError::io("reading from", &self.path, e))?;
            if n == 0 {
                return Ok(None);
            }
            if line.trim_ascii().is_empty() {
                continue;
            }
            return serde_json::from_slice(line.trim_ascii())
                .map(Some)
                .map_err(|e| OciError::Shim {
                    id: self.path.display().to_string(),
                    message: format!("bad event {:?}: {e}", String::from_utf8_lossy(&line)),
                });
        }
    }

    /// Whether an event line (or part of one) is already buffered (then `poll` on the socket
    /// would not see it).
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// The raw socket (for `poll`).
    pub fn as_raw_fd(&self) -> i32 {
        self.reader.get_ref().as_raw_fd()
    }
}
