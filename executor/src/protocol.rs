//! Types shared by the shim and its client. Stable on disk: `shim.json` and `exit.json` are read
//! again after an agent restart.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the shim needs to start a container, written by the containerizer to
/// `<state_dir>/shim.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// Container id (for logs).
    pub container_id: String,
    /// argv of the workload; `argv[0]` is looked up in `PATH` of `env`.
    pub argv: Vec<String>,
    /// Complete environment of the workload (nothing is inherited from the shim).
    pub env: Vec<(String, String)>,
    /// Working directory of the workload (defaults to the sandbox).
    pub cwd: Option<PathBuf>,
    /// Namespaces to create: any of "pid", "mount", "uts", "ipc", "net".
    pub namespaces: Vec<String>,
    /// Hostname to set when a UTS namespace is created.
    pub hostname: Option<String>,
    /// File that receives the workload's stdout (appended, created 0640).
    pub stdout_path: PathBuf,
    /// File that receives the workload's stderr.
    pub stderr_path: PathBuf,
    /// Directory of the shim's own state (socket, exit.json, shim.pid). Must exist.
    pub state_dir: PathBuf,
}

impl ShimConfig {
    /// Path of the control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("shim.sock")
    }
    /// Path of the durable exit record.
    pub fn exit_path(&self) -> PathBuf {
        self.state_dir.join("exit.json")
    }
    /// Path of the shim's pid file.
    pub fn pid_path(&self) -> PathBuf {
        self.state_dir.join("shim.pid")
    }
}

/// The single line the shim prints on stdout once the workload is cloned and waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimReady {
    /// The shim's own pid.
    pub shim_pid: i32,
    /// The workload's (container init's) pid in the host pid namespace.
    pub pid: i32,
}

/// Requests from the agent to the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimRequest {
    /// Release the workload (it execs). Idempotent.
    Start,
    /// Send SIGTERM, wait `grace_ms`, then SIGKILL the whole container.
    Kill {
        /// Grace period between SIGTERM and SIGKILL, milliseconds (0 = SIGKILL at once).
        grace_ms: u64,
    },
    /// Ask for a [`ShimEvent::State`].
    State,
}

/// Events from the shim to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimEvent {
    /// The workload was released and exec'd (or failed to).
    Started {
        /// Host pid of the container init.
        pid: i32,
    },
    /// Reply to [`ShimRequest::State`].
    State {
        /// Host pid of the container init.
        pid: i32,
        /// Whether [`ShimRequest::Start`] was received.
        started: bool,
        /// The exit status once the workload ended.
        exit: Option<ExitStatus>,
    },
    /// The workload ended; also persisted to `exit.json` before this is sent.
    Exited(ExitStatus),
    /// A request could not be parsed or carried out.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// True when the shim sent a kill (Kill request) before it ended.
    pub killed_by_request: bool,
    /// Set when the workload could not be started at all (exec failed: command not found, ...).
    pub launch_error: Option<String>,
    /// Unix time (seconds, fractional) of the exit.
    pub at: f64,
}

impl ExitStatus {
    /// The conventional shell status: code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}
