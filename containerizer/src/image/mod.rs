//! OCI images: a content-addressed store of blobs, image references, a registry client, archive
//! loading, and safe layer unpacking for overlayfs.
//!
//! The model: an image is a *manifest* (JSON) naming a *config* (JSON: Entrypoint, Cmd, Env, …,
//! and the `diff_ids` of the uncompressed layers) and *layers* (tar archives, usually
//! compressed). All three are blobs addressed by their SHA-256 in [`ImageStore`]; an index maps
//! names (`docker.io/library/busybox:latest`) to manifest digests. Blobs arrive from
//! [`ImageStore::load`] (OCI layout, OCI archive, docker-archive) or [`ImageStore::pull`] (a
//! registry), digests verified before anything is stored. Each layer is unpacked once, on first
//! use ([`ImageStore::rootfs_layers`]), into `layers/<diff_id>/` with its whiteouts converted to
//! overlayfs form (see [`unpack`]); a container's root filesystem is then an overlay of those
//! directories (top layer first in `lowerdir=`) with its upper and work dirs in the sandbox.
//! Hostile layers (escapes through `..`, symlinks or hard links, device nodes, decompression
//! bombs, digest mismatches, truncation) are refused with an error naming the entry.

mod archive;
pub mod digest;
mod error;
mod fsat;
mod pull;
pub mod reference;
pub mod registry;
mod store;
pub mod unpack;

pub use archive::OCI_MANIFEST;
pub use digest::Sha256;
pub use error::ImageError;
pub use oci_spec::image::ImageConfiguration;
pub use pull::{NoProgress, PullOptions, PullProgress};
pub use reference::Reference;
pub use store::{GcReport, ImageInfo, ImageStore, MAX_DOCUMENT_BYTES};
pub use unpack::{UnpackError, UnpackOptions};
