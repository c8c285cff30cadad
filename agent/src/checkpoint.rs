//! Atomic checkpoints: a file is either its old or its new content after a crash at any point
//! (write a temp file, fsync it, rename over the target, fsync the directory).

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

/// Errors of checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Writing the checkpoint failed.
    #[error("writing checkpoint {path}: {source}")]
    Write {
        /// Target path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading a checkpoint failed.
    #[error("reading checkpoint {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A checkpoint is not valid JSON of the expected shape.
    #[error("checkpoint {path} is corrupt: {source}")]
    Corrupt {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    let bytes = serde_json::to_vec_pretty(value).expect("checkpoint types serialize");
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut file = File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// Reads a JSON checkpoint; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, CheckpointError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| CheckpointError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta/x.json");
        write_json(&path, &vec![1, 2, 3]).unwrap();
        write_json(&path, &vec![4]).unwrap();
        assert_eq!(read_json::<Vec<i32>>(&path).unwrap(), Some(vec![4]));
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        assert!(
            read_json::<Vec<i32>>(&dir.path().join("none.json"))
                .unwrap()
                .is_none()
        );
        fs::write(&path, b"{").unwrap();
        assert!(matches!(
            read_json::<Vec<i32>>(&path),
            Err(CheckpointError::Corrupt { .. })
        ));
    }
}
