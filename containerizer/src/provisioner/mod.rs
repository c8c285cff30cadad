//! The provisioner (Mesos's name): turns a container's image reference into what its launch
//! needs, before any isolator runs. In order:
//!
//! 1. the image is pulled into the agent's [`ImageStore`] unless it is there already;
//! 2. the container takes a lease on it (so `berth image rm` + `gc` cannot delete its layers
//!    while it exists; released when the container is destroyed);
//! 3. its layers are unpacked (once per store) and its config read, by manifest digest, so an
//!    `rm` racing with the launch cannot swap the image;
//! 4. the overlay's upper and work dirs are made in the sandbox (`<sandbox>/.rootfs/`);
//! 5. the task's command, environment and working directory are merged with the image's
//!    defaults ([`process`]) and its `User` is resolved against the image's own `/etc/passwd`
//!    and `/etc/group` ([`user`]).

pub mod process;
pub mod user;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use berth_executor::ProcessUser;
use berth_isolators::{IMAGE_ROOTFS_DIR, ImageRootfs};
use tracing::{debug, info};

use crate::image::{ImageError, ImageStore, PullProgress, Sha256};
use process::{ArgvKind, ImageDefaults, merge, with_home};
use user::{UserError, read_id_files, resolve_user};

/// Why an image container could not be provisioned; each names the image.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The agent was started without an image store.
    #[error("image {image}: this containerizer has no image store")]
    NoStore {
        /// The reference.
        image: String,
    },
    /// Looking the image up, pulling it, leasing it, unpacking it or reading its config failed.
    #[error("{step} image {image}: {source}")]
    Image {
        /// What was being done ("pulling", "unpacking", ...).
        step: &'static str,
        /// The reference.
        image: String,
        /// The cause.
        source: ImageError,
    },
    /// Neither the task nor the image gives a command.
    #[error("no command: the task gives none and image {image} has neither Entrypoint nor Cmd")]
    NoCommand {
        /// The reference.
        image: String,
    },
    /// The image's `User` cannot be resolved.
    #[error("image {image}: {source}")]
    User {
        /// The reference.
        image: String,
        /// The cause.
        source: UserError,
    },
    /// Creating the overlay's upper or work dir failed.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(String),
}

impl ProvisionError {
    /// Whether the task itself is at fault (no command): `TASK_ERROR` rather than a failure.
    pub fn is_invalid_task(&self) -> bool {
        matches!(self, ProvisionError::NoCommand { .. })
    }
}

/// What the task asks to run, as the container config carries it.
#[derive(Debug, Clone, Copy)]
pub struct TaskProcess<'a> {
    /// argv (the whole command, or the Entrypoint's arguments: see `kind`).
    pub argv: &'a [String],
    /// How `argv` combines with the image's Entrypoint and Cmd.
    pub kind: ArgvKind,
    /// The task's environment (the agent's `MESOS_*` variables included).
    pub env: &'a [(String, String)],
    /// The task's working directory, if it asks for one.
    pub cwd: Option<&'a Path>,
}

/// An image container, provisioned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The manifest digest leased.
    pub digest: Sha256,
    /// The root filesystem for the filesystem isolator.
    pub rootfs: ImageRootfs,
    /// argv inside the container.
    pub argv: Vec<String>,
    /// Complete environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
    /// The user to switch to (`None`: root).
    pub user: Option<ProcessUser>,
}

/// Logs a pull with `tracing`.
struct PullLog {
    container_id: String,
}

impl PullProgress for PullLog {
    fn resolved(&self, reference: &str, digest: &Sha256, blobs: &[(Sha256, u64)]) {
        let bytes: u64 = blobs.iter().map(|(_, size)| size).sum();
        info!(container_id = %self.container_id, image = reference, digest = %digest,
            blobs = blobs.len(), bytes, "pulling image");
    }

    fn layer_started(&self, digest: &Sha256, size: u64, offset: u64) {
        debug!(container_id = %self.container_id, blob = %digest, size, offset, "downloading blob");
    }

    fn layer_done(&self, digest: &Sha256, cached: bool) {
        info!(container_id = %self.container_id, blob = %digest, cached, "blob ready");
    }
}

/// Runs a blocking store call on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<Result<T, ImageError>, ProvisionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProvisionError::Join(e.to_string()))
}

/// Provisions container `id`'s image `reference` (see the module docs). On failure after the
/// lease, the caller's cleanup releases it ([`release`]).
pub async fn provision(
    store: Option<&Arc<ImageStore>>,
    id: &str,
    reference: &str,
    sandbox: &Path,
    task: TaskProcess<'_>,
) -> Result<Provisioned, ProvisionError> {
    let image = reference.to_string();
    let store = store.ok_or_else(|| ProvisionError::NoStore {
        image: image.clone(),
    })?;
    let fail = |step: &'static str| {
        let image = image.clone();
        move |source| ProvisionError::Image {
            step,
            image,
            source,
        }
    };
    // 1. Pull unless present.
    let present = {
        let (store, name) = (store.clone(), image.clone());
        blocking(move || store.inspect(&name)).await?
    };
    match present {
        Ok(info) => debug!(container_id = id, image = %info.reference, "image present"),
        Err(ImageError::NotFound(_)) => {
            let progress = PullLog {
                container_id: id.to_string(),
            };
            let info = store
                .pull(reference, &progress)
                .await
                .map_err(fail("pulling"))?;
            info!(container_id = id, image = %info.reference, digest = %info.digest, "image pulled");
        }
        Err(e) => return Err(fail("looking up")(e)),
    }
    // 2. Lease it; 3. layers and config by digest.
    let digest = {
        let (store, holder, name) = (store.clone(), id.to_string(), image.clone());
        blocking(move || store.lease(&holder, &name))
            .await?
            .map_err(fail("leasing"))?
    };
    let layers = {
        let (store, digest) = (store.clone(), digest.clone());
        blocking(move || store.rootfs_layers_by_digest(&digest))
            .await?
            .map_err(fail("unpacking"))?
    };
    let config = {
        let (store, digest) = (store.clone(), digest.clone());
        blocking(move || store.config_by_digest(&digest))
            .await?
            .map_err(fail("reading the config of"))?
    };
    // 4. The overlay's own dirs.
    let dir = sandbox.join(IMAGE_ROOTFS_DIR);
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|source| ProvisionError::CreateDir {
            path: d.clone(),
            source,
        })?;
    }
    // 5. The process.
    let defaults = ImageDefaults::from_config(&config);
    let merged = merge(&defaults, task.argv, task.kind, task.env, task.cwd).ok_or_else(|| {
        ProvisionError::NoCommand {
            image: image.clone(),
        }
    })?;
    let files = {
        let layers = layers.clone();
        tokio::task::spawn_blocking(move || read_id_files(&layers))
            .await
            .map_err(|e| ProvisionError::Join(e.to_string()))?
    };
    let (user, home) = match (&defaults.user, files) {
        (Some(spec), files) => {
            let resolved =
                files
                    .and_then(|files| resolve_user(spec, &files))
                    .map_err(|source| ProvisionError::User {
                        image: image.clone(),
                        source,
                    })?;
            (Some(resolved.user), resolved.home)
        }
        // root: only HOME is wanted from its passwd entry, if the image has one
        (None, files) => {
            let home = files
                .ok()
                .and_then(|files| resolve_user("0", &files).ok())
                .and_then(|r| r.home);
            (None, home)
        }
    };
    info!(container_id = id, image = %image, digest = %digest, layers = layers.len(),
        argv = ?merged.argv, ?user, "image provisioned");
    Ok(Provisioned {
        digest,
        rootfs: ImageRootfs {
            layers,
            upper,
            work,
        },
        argv: merged.argv,
        env: with_home(merged.env, home.as_deref()),
        cwd: merged.cwd,
        user,
    })
}

/// Drops container `id`'s lease, if it has one. Blocking (one unlink).
pub fn release(store: Option<&Arc<ImageStore>>, id: &str) -> Result<(), ImageError> {
    match store {
        Some(store) => store.release(id),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent provisions from a spawned task: the future must be `Send` (a stream over a
    /// closure in `pull` once made it not provably so).
    #[test]
    fn provisioning_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let sandbox = PathBuf::from("/nonexistent");
        let task = TaskProcess {
            argv: &[],
            kind: ArgvKind::Arguments,
            env: &[],
            cwd: None,
        };
        let future = provision(None, "c", "busybox", &sandbox, task);
        is_send(&future);
    }

    #[tokio::test]
    async fn without_a_store_the_image_is_named() {
        let task = TaskProcess {
            argv: &[],
            kind: ArgvKind::Arguments,
            env: &[],
            cwd: None,
        };
        let err = provision(None, "c", "busybox", Path::new("/nonexistent"), task)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("busybox"), "{err}");
        assert!(!err.is_invalid_task());
    }
}
