//! # berth as an OCI runtime (`berth oci`)
//!
//! A runtime-spec bundle (a `config.json` and a root filesystem) is run with berth's own
//! machinery, not a second runtime: [`translate`] turns the config into the shim's
//! [`ShimConfig`](berth_executor::ShimConfig) (namespaces, filesystem plan, security plan, id
//! maps) and the cgroups isolator's limits, and the `berth-executor` shim runs it in OCI mode
//! ([`berth_executor::OciMode`]): the container's process is the init itself, created (mounts,
//! `pivot_root`, hostname) before `create` returns and released to `execve` by `start`.
//!
//! The lifecycle, one command each ([`Runtime`]), with its state under `<root>/<id>/`
//! ([`state`]):
//! - `create`: config → cgroups → shim (ready = created) → hooks → `state.json`, pid file;
//! - `start`: startContainer hooks → `Start` → poststart hooks;
//! - `state`: the runtime-spec state document; `kill`: a signal through a pidfd (or to every
//!   process of the container's cgroup with `--all`);
//! - `delete`: kill (forced) → wait on a pidfd → cgroups removed → directory removed → poststop;
//! - `run` = create + start (+ wait, forwarding signals, and delete), `exec` ([`exec`]), `ps`,
//!   `list`, `spec`.
//!
//! Everything here is synchronous and forks: the CLI calls it before it starts any thread.

mod console;
pub mod exec;
pub mod hooks;
mod ops;
mod placement;
pub mod proc;
mod resources;
mod runtime;
mod shim;
pub mod state;
pub mod translate;

use std::path::{Path, PathBuf};

pub use ops::{ExecOptions, PsFormat, default_spec, features};
pub use runtime::{CreateOptions, Runtime};
pub use state::{OciState, Status};
pub use translate::{CgroupPlacement, ConfigError, Translation};

/// Errors of the OCI runtime, each naming the container, file or hook that failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The container id is not usable.
    #[error(
        "invalid container id {0:?}: must be 1-128 chars of [A-Za-z0-9_.-], not starting with '.'"
    )]
    InvalidId(String),
    /// A container with this id exists.
    #[error("container {id} already exists (in {root})")]
    Exists {
        /// The id.
        id: String,
        /// The state root.
        root: PathBuf,
    },
    /// No container with this id.
    #[error("container {id} does not exist (in {root})")]
    NotFound {
        /// The id.
        id: String,
        /// The state root.
        root: PathBuf,
    },
    /// The container is not in a state that allows the operation.
    #[error("container {id} is {status}: cannot {action}")]
    WrongState {
        /// The id.
        id: String,
        /// Its status.
        status: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// The bundle is missing or its config unreadable.
    #[error("bundle {path}: {message}")]
    Bundle {
        /// The bundle directory or its config.json.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The config asks for something berth cannot do, or is invalid.
    #[error("{path}: {source}")]
    Config {
        /// The config.json.
        path: PathBuf,
        /// The field and the problem.
        source: ConfigError,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state file is not what berth wrote.
    #[error("{path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its object.
        what: String,
        /// The errno.
        source: nix::errno::Errno,
    },
    /// The container's cgroups could not be set up or removed.
    #[error("container {id}: {source}")]
    Cgroup {
        /// The id.
        id: String,
        /// The isolator's error.
        source: berth_isolators::IsolatorError,
    },
    /// The shim misbehaved.
    #[error("container {id}: shim: {message}")]
    Shim {
        /// The id.
        id: String,
        /// What happened.
        message: String,
    },
    /// The container could not be created: the init's own report (a mount that failed, ...).
    #[error("container {id} could not be created: {message}")]
    Launch {
        /// The id.
        id: String,
        /// The launch error.
        message: String,
    },
    /// A process could not be started in the container.
    #[error("exec in the container: {message}")]
    Exec {
        /// Why.
        message: String,
    },
    /// A hook failed.
    #[error("{kind} hook #{index} ({path}): {message}")]
    Hook {
        /// Hook kind.
        kind: &'static str,
        /// Its index in the list.
        index: usize,
        /// Its path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// A command-line value is unusable.
    #[error("{0}")]
    Usage(String),
}

impl OciError {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> OciError {
        OciError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}
