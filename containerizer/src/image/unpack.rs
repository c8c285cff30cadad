//! Unpacking one image layer (a tar, gzip- or zstd-compressed or not) into its own directory,
//! safely, for use as an overlayfs lower layer.
//!
//! ## Whiteouts become overlayfs whiteouts
//! Image layers delete files of lower layers with AUFS-style markers: an empty `dir/.wh.name`
//! removes `dir/name`, and `dir/.wh..wh..opq` makes `dir` opaque (it hides every lower entry of
//! `dir`). Each layer is unpacked into a directory of its own and the layers are stacked with
//! overlayfs, so the markers are converted to what overlayfs understands in a lower layer:
//! - `.wh.name` → a character device `name` with device number 0:0 (an overlayfs whiteout);
//! - `.wh..wh..opq` → the xattr `trusted.overlay.opaque=y` on the directory;
//! - other `.wh..wh.*` names (AUFS hard-link bookkeeping) are dropped.
//!
//! Overlayfs honours both markers in lower layers too, so `lowerdir=top:…:bottom` gives the
//! image's root filesystem. (`trusted.*` xattrs need CAP_SYS_ADMIN: unpack as root.)
//!
//! ## What is refused (hostile layers)
//! Every entry is created relative to the layer directory's descriptor, without following any
//! symlink (see `fsat`); an entry is rejected, naming it, when its path has a `..` component
//! (a leading `/` is read as relative), when its parent path goes through a symlink, when it is
//! a hard link to anything but an earlier entry of the same layer, when it is a device node and
//! devices are not allowed, when the layer has more entries or more bytes than the caps of
//! [`UnpackOptions`] (decompression bombs), when it is truncated, and when the compressed blob's
//! or the uncompressed tar's (diff_id) digest is not the expected one. The caller
//! ([`unpack_layer`]) unpacks into a temporary directory and renames it into place only when
//! everything passed; on any error the temporary directory is removed.
//!
//! Preserved: ownership (`fchown`/`lchown`), permission bits including setuid/setgid/sticky,
//! mtimes (atime = mtime), hard links, symlinks (stored as is, never followed), fifos, and the
//! xattrs `user.*` and `trusted.*` (except `trusted.overlay.*`, which belongs to overlayfs);
//! other xattrs (`security.*`, `system.*`) are skipped with a warning.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, openat},
    sys::stat::Mode,
};
use tracing::{debug, warn};

use super::{
    digest::{DigestMismatch, HashingReader, Sha256},
    fsat,
};
use entries::Unpacker;

/// Limits and permissions of one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Most bytes the uncompressed layer tar may have (decompression-bomb cap).
    pub max_bytes: u64,
    /// Most entries the layer may have.
    pub max_entries: u64,
    /// Create character and block device nodes found in the layer (refused by default).
    pub allow_devices: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 30,
            max_entries: 2_000_000,
            allow_devices: false,
        }
    }
}

/// The digests a layer must have, when known.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Digest of the blob as stored (compressed).
    pub blob: Option<Sha256>,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Option<Sha256>,
}

/// How a layer blob was compressed (sniffed from its magic bytes, not its media type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// What an unpack did.
#[derive(Debug, Clone)]
pub struct UnpackStats {
    /// The compression that was found.
    pub compression: Compression,
    /// Digest of the blob as read.
    pub blob_digest: Sha256,
    /// Digest of the uncompressed tar.
    pub diff_id: Sha256,
    /// Size of the uncompressed tar.
    pub tar_bytes: u64,
    /// Entries in the tar.
    pub entries: u64,
    /// Whiteouts and opaque markers converted.
    pub whiteouts: u64,
}

/// Why a layer could not be unpacked. Every variant names the entry or path involved.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tries to do something that is never allowed.
    #[error("layer entry {entry:?} rejected: {reason}")]
    Hostile {
        /// The entry's path as written in the tar.
        entry: String,
        /// What it tried.
        reason: String,
    },
    /// The layer has more entries than allowed.
    #[error("layer has more than {limit} entries (at entry {entry:?})")]
    TooManyEntries {
        /// The cap.
        limit: u64,
        /// The first entry over it.
        entry: String,
    },
    /// The uncompressed layer is larger than allowed.
    #[error("layer is larger than {limit} bytes uncompressed (at {at})")]
    TooLarge {
        /// The cap.
        limit: u64,
        /// The entry being read, or "the end of the archive".
        at: String,
    },
    /// The archive ends early.
    #[error("layer archive is truncated ({at})")]
    Truncated {
        /// Where it ended.
        at: String,
    },
    /// Reading or decompressing the archive failed.
    #[error("reading the layer archive ({at}): {source}")]
    Read {
        /// The last entry read, or "its start".
        at: String,
        /// The cause.
        source: io::Error,
    },
    /// Creating an entry failed.
    #[error("layer entry {entry:?}: {op}: {source}")]
    Create {
        /// The entry.
        entry: String,
        /// The operation that failed.
        op: &'static str,
        /// The cause.
        source: Errno,
    },
    /// A digest did not match.
    #[error(transparent)]
    Digest(#[from] DigestMismatch),
    /// The layer directory (or its temporary directory) could not be prepared or committed.
    #[error("layer directory {path}: {op}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The cause.
        source: io::Error,
    },
}

/// Marker error of [`LimitedReader`] once the cap is exceeded.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size cap exceeded")
    }
}

impl std::error::Error for OverLimit {}

/// Fails reads once more than `limit` bytes went through (so no tar header extension, trailing
/// garbage or entry can make us read or buffer more than the cap).
struct LimitedReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // one probe byte tells a stream that ends exactly at the cap from a larger one
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(OverLimit)),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

type Blob = BufReader<HashingReader<File>>;

enum Decoder {
    Plain(Blob),
    Gzip(flate2::bufread::MultiGzDecoder<Blob>),
    Zstd(zstd::stream::read::Decoder<'static, Blob>),
}

impl Decoder {
    fn new(mut blob: Blob, what: &str) -> Result<(Self, Compression), UnpackError> {
        let head = blob.fill_buf().map_err(|source| UnpackError::Read {
            at: format!("{what}: its start"),
            source,
        })?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            (
                Self::Gzip(flate2::bufread::MultiGzDecoder::new(blob)),
                Compression::Gzip,
            )
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let decoder = zstd::stream::read::Decoder::with_buffer(blob).map_err(|source| {
                UnpackError::Read {
                    at: format!("{what}: zstd header"),
                    source,
                }
            })?;
            (Self::Zstd(decoder), Compression::Zstd)
        } else {
            (Self::Plain(blob), Compression::None)
        })
    }

    fn into_blob(self) -> Blob {
        match self {
            Self::Plain(blob) => blob,
            Self::Gzip(decoder) => decoder.into_inner(),
            Self::Zstd(decoder) => decoder.finish(),
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
            Self::Zstd(r) => r.read(buf),
        }
    }
}

/// Unpacks the layer blob at `blob` into the new directory `dest` (which must not exist): into a
/// temporary sibling first, flushed with `syncfs`, then renamed, so a crash never leaves a
/// partial layer under `dest`. If `dest` appears meanwhile (another unpack of the same layer),
/// that one is kept. On error nothing is left behind.
pub fn unpack_layer(
    blob: &Path,
    dest: &Path,
    expected: &Expected,
    options: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let dir_err = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |source| UnpackError::Dir { path, op, source }
    };
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".tmp-{name}-{}-{}", std::process::id(), unique()));
    std::fs::create_dir(&tmp).map_err(dir_err(&tmp, "creating"))?;
    let result = (|| {
        let file = File::open(blob).map_err(dir_err(blob, "opening the blob"))?;
        let stats = unpack_file(file, &tmp, expected, options)?;
        let root = File::open(&tmp).map_err(dir_err(&tmp, "opening"))?;
        fsat::syncfs(root.as_fd()).map_err(|e| UnpackError::Dir {
            path: tmp.clone(),
            op: "syncfs",
            source: e.into(),
        })?;
        Ok(stats)
    })();
    let stats = match result {
        Ok(stats) => stats,
        Err(err) => {
            if let Err(e) = std::fs::remove_dir_all(&tmp) {
                warn!(path = %tmp.display(), error = %e, "cannot remove a failed layer unpack");
            }
            return Err(err);
        }
    };
    match std::fs::rename(&tmp, dest) {
        Ok(()) => {
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
            Ok(stats)
        }
        Err(e) if dest.is_dir() => {
            debug!(path = %dest.display(), error = %e, "layer unpacked concurrently; keeping it");
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(stats)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(UnpackError::Dir {
                path: dest.to_path_buf(),
                op: "renaming the unpacked layer into place",
                source: e,
            })
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos << 16) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Unpacks the layer read from `file` into the existing, empty directory `dir`, verifying the
/// digests in `expected`. On error `dir` holds a partial layer: the caller removes it.
pub fn unpack_file(
    file: File,
    dir: &Path,
    expected: &Expected,
    options: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let root = openat(
        nix::fcntl::AT_FDCWD,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Dir {
        path: dir.to_path_buf(),
        op: "opening",
        source: e.into(),
    })?;
    let blob = BufReader::with_capacity(256 << 10, HashingReader::new(file));
    let (decoder, compression) = Decoder::new(blob, "layer")?;
    let limited = LimitedReader {
        inner: decoder,
        left: options.max_bytes,
    };
    let mut archive = tar::Archive::new(HashingReader::new(limited));
    let mut unpacker = Unpacker::new(root, options);
    unpacker.run(&mut archive)?;
    let whiteouts = unpacker.whiteouts;
    let entries = unpacker.entries;
    let end = unpacker.end;
    let last = unpacker.last_entry_name();
    drop(unpacker);

    // The tar stream must have ended with its end-of-archive block, not at an entry boundary.
    let mut tar_stream = archive.into_inner();
    if tar_stream.count() < end + 512 {
        return Err(UnpackError::Truncated {
            at: format!("no end-of-archive marker after {last}"),
        });
    }
    // Hash the padding after the end marker too (it is part of the diff_id).
    io::copy(&mut tar_stream, &mut io::sink()).map_err(|e| read_error(e, &last, options))?;
    let (limited, diff_id, tar_bytes) = tar_stream.finish();
    let mut blob = limited.inner.into_blob();
    io::copy(&mut blob, &mut io::sink()).map_err(|e| read_error(e, &last, options))?;
    let (_, blob_digest, _) = blob.into_inner().finish();
    if let Some(want) = &expected.blob {
        want.verify("layer blob", &blob_digest)?;
    }
    if let Some(want) = &expected.diff_id {
        want.verify(
            &format!("layer {blob_digest} uncompressed (diff_id)"),
            &diff_id,
        )?;
    }
    Ok(UnpackStats {
        compression,
        blob_digest,
        diff_id,
        tar_bytes,
        entries,
        whiteouts,
    })
}

fn read_error(source: io::Error, at: &str, options: &UnpackOptions) -> UnpackError {
    if source.get_ref().is_some_and(|e| e.is::<OverLimit>()) {
        UnpackError::TooLarge {
            limit: options.max_bytes,
            at: at.to_string(),
        }
    } else if source.kind() == io::ErrorKind::UnexpectedEof {
        UnpackError::Truncated {
            at: format!("{at}: {source}"),
        }
    } else {
        UnpackError::Read {
            at: at.to_string(),
            source,
        }
    }
}

mod entries;

#[cfg(test)]
mod tests;
