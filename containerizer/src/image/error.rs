//! Errors of the image store, each naming the image, blob, layer or path involved.

use std::path::PathBuf;

use super::{
    digest::{DigestMismatch, InvalidDigest, Sha256},
    reference::ReferenceError,
    registry::RegistryError,
    unpack::UnpackError,
};

/// What can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference that does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A digest that does not parse (or is not sha256).
    #[error(transparent)]
    InvalidDigest(#[from] InvalidDigest),
    /// No image of that name in the store.
    #[error("image {0} is not in the store")]
    NotFound(String),
    /// A file operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was done to it.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON document (manifest, config, index) does not parse.
    #[error("{what}: invalid JSON: {reason}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A blob that an image needs is missing from the store or the archive.
    #[error("blob {digest} ({what}) is missing")]
    MissingBlob {
        /// The blob.
        digest: Sha256,
        /// What it is (config, layer, manifest) and where it was looked for.
        what: String,
    },
    /// Content with the wrong digest.
    #[error(transparent)]
    Digest(#[from] DigestMismatch),
    /// Content with the wrong size.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    Size {
        /// What was checked.
        what: String,
        /// The size announced by its descriptor.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// An image that is well-formed JSON but not a usable image.
    #[error("invalid image {what}: {reason}")]
    Invalid {
        /// The image, manifest or archive.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer could not be unpacked.
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer blob.
        layer: Sha256,
        /// The cause.
        source: UnpackError,
    },
    /// Talking to a registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(String),
}

impl ImageError {
    /// An [`ImageError::Io`] maker for `map_err`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, op, source }
    }

    /// An [`ImageError::Json`] maker for `map_err`.
    pub(crate) fn json<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |e| Self::Json {
            what,
            reason: e.to_string(),
        }
    }
}
