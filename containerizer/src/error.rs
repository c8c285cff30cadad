//! Errors of the containerizer, each naming the container or path that failed.

use std::path::PathBuf;

use berth_executor::client::ClientError;
use berth_isolators::IsolatorError;

use crate::provisioner::ProvisionError;

/// What can go wrong in the containerizer.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizerError {
    /// The id is not a valid container id.
    #[error(transparent)]
    InvalidId(#[from] IsolatorError),
    /// No command to run.
    #[error("container {0}: empty command")]
    EmptyCommand(String),
    /// A container with this id exists already.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// The container's workload has already ended.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// No container with this id is known.
    #[error("unknown container {0}")]
    UnknownContainer(String),
    /// Creating a directory failed.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading a directory failed.
    #[error("reading {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Removing a directory failed.
    #[error("removing {path}: {source}")]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An isolator step failed.
    #[error("container {id}: isolator {isolator} {step}: {source}")]
    Isolator {
        /// The container.
        id: String,
        /// The isolator's name.
        isolator: &'static str,
        /// prepare, isolate, usage, cleanup or recover.
        step: &'static str,
        /// The cause.
        source: IsolatorError,
    },
    /// Talking to the container's shim failed.
    #[error("container {id}: shim: {source}")]
    Shim {
        /// The container.
        id: String,
        /// The cause.
        source: ClientError,
    },
    /// The container's image could not be provisioned (pulled, unpacked, merged with the task).
    #[error("container {id}: {source}")]
    Provision {
        /// The container.
        id: String,
        /// The cause, naming the image (boxed: image errors are large).
        source: Box<ProvisionError>,
    },
    /// An image container needs the filesystem isolator, which is not enabled.
    #[error("container {0}: image containers need the filesystem isolator (--isolation)")]
    ImageNeedsFilesystem(String),
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(String),
}

impl ContainerizerError {
    /// Whether the task itself is at fault (it has no command): the agent reports `TASK_ERROR`,
    /// not a failed launch.
    pub fn is_invalid_task(&self) -> bool {
        match self {
            ContainerizerError::EmptyCommand(_) => true,
            ContainerizerError::Provision { source, .. } => source.is_invalid_task(),
            _ => false,
        }
    }
}
