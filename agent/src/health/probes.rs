//! The real probes: TCP and HTTP in the task's network namespace, COMMAND through the
//! `berth health-exec` helper.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::OwnedFd,
    path::PathBuf,
    time::Duration,
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Probe, ProbeSpec};

/// Longest response head read from an HTTP check.
const HTTP_HEAD_LIMIT: usize = 8192;
/// Longest output of a failed command check kept in its message.
const OUTPUT_TAIL: usize = 200;

/// The probe of a running task (`pid`: host pid of its container's init).
pub struct TaskProbe {
    /// What to probe.
    pub spec: ProbeSpec,
    /// Host pid of the container init.
    pub pid: i32,
    /// `/proc` (a fixture root in tests).
    pub proc_root: PathBuf,
    /// The `berth` binary that runs `health-exec` (COMMAND checks).
    pub berth_bin: PathBuf,
    /// Bound of one probe, passed on to the helper (which kills the command's process group).
    pub timeout: Option<Duration>,
}

impl Probe for TaskProbe {
    async fn check(&self) -> Result<(), String> {
        match (&self.spec, self.timeout) {
            // The helper enforces the timeout itself, killing the command's process group.
            (ProbeSpec::Command { .. }, _) | (_, None) => self.check_unbounded().await,
            (_, Some(limit)) => tokio::time::timeout(limit, self.check_unbounded())
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {}s", limit.as_secs_f64()))),
        }
    }
}

impl TaskProbe {
    async fn check_unbounded(&self) -> Result<(), String> {
        match &self.spec {
            ProbeSpec::Tcp { port, ipv6 } => {
                self.connect(*port, *ipv6).await?;
                Ok(())
            }
            ProbeSpec::Http { port, path, ipv6 } => {
                let stream = self.connect(*port, *ipv6).await?;
                let status = http_get(stream, *port, path, *ipv6).await?;
                if (200..400).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("HTTP GET {path} answered {status}"))
                }
            }
            ProbeSpec::Command { argv, env } => self.command(argv, env).await,
        }
    }

    async fn connect(&self, port: u16, ipv6: bool) -> Result<tokio::net::TcpStream, String> {
        let ns = self.proc_root.join(format!("{}/ns/net", self.pid));
        let fd = socket_in_netns(ns.clone(), ipv6)
            .await
            .map_err(|e| format!("socket in {}: {e}", ns.display()))?;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let addr = if ipv6 {
            SocketAddr::from((Ipv6Addr::LOCALHOST, port))
        } else {
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        };
        socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))
    }

    async fn command(&self, argv: &[String], env: &[(String, String)]) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(&self.berth_bin);
        cmd.arg("health-exec")
            .arg("--pid")
            .arg(self.pid.to_string());
        if let Some(limit) = self.timeout {
            cmd.arg("--timeout").arg(limit.as_secs_f64().to_string());
        }
        cmd.arg("--")
            .args(argv)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let output = cmd
            .output()
            .await
            .map_err(|e| format!("starting {}: {e}", self.berth_bin.display()))?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        let text = text.trim();
        let tail = match text.char_indices().rev().nth(OUTPUT_TAIL) {
            Some((at, _)) => &text[at..],
            None => text,
        };
        let code = output
            .status
            .code()
            .map(|c| format!("exited with status {c}"))
            .unwrap_or_else(|| "was killed".into());
        Err(if tail.is_empty() {
            format!("command {code}")
        } else {
            format!("command {code}: {tail}")
        })
    }
}

/// A non-blocking TCP socket created in the network namespace at `ns`, on a short-lived thread
/// (`berth_net::netns::NetnsRef::run`: `setns(CLONE_NEWNET)` changes only that thread; the
/// socket keeps its namespace).
pub async fn socket_in_netns(ns: PathBuf, ipv6: bool) -> std::io::Result<OwnedFd> {
    let family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let made = tokio::task::spawn_blocking(move || {
        berth_net::netns::NetnsRef::Path(ns).run(|| {
            nix::sys::socket::socket(
                family,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
        })
    })
    .await
    .map_err(|_| std::io::Error::other("the namespace thread died"))?;
    Ok(made.map_err(std::io::Error::other)??)
}

/// Sends `GET path` and returns the status code of the answer.
async fn http_get(
    mut stream: tokio::net::TcpStream,
    port: u16,
    path: &str,
    ipv6: bool,
) -> Result<u16, String> {
    let host = if ipv6 {
        format!("[::1]:{port}")
    } else {
        format!("127.0.0.1:{port}")
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        match parse_status_line(&head) {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if head.len() >= HTTP_HEAD_LIMIT {
            return Err(HttpParseError::TooLong.to_string());
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err(if head.is_empty() {
                "the server closed the connection without an answer".into()
            } else {
                HttpParseError::Truncated.to_string()
            });
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// Why an HTTP answer could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HttpParseError {
    /// Not `HTTP/1.x NNN ...`.
    #[error("not an HTTP/1 status line: {0:?}")]
    BadStatusLine(String),
    /// No status line within the limit.
    #[error("no status line in the first {HTTP_HEAD_LIMIT} bytes")]
    TooLong,
    /// The connection ended inside the status line.
    #[error("the answer ended inside its status line")]
    Truncated,
}

/// The status code of an HTTP/1 answer's first line; `Ok(None)` while the line is incomplete.
pub fn parse_status_line(head: &[u8]) -> Result<Option<u16>, HttpParseError> {
    let Some(end) = head.windows(2).position(|w| w == b"\r\n").or_else(|| {
        // Tolerate a bare LF (RFC 9112 allows recipients to).
        head.iter().position(|b| *b == b'\n')
    }) else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&head[..end]);
    let bad = || HttpParseError::BadStatusLine(line.chars().take(80).collect());
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(bad());
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok(Some(status))
}
