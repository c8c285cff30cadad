//! What the disk isolator remembers across agent restarts: one small JSON record per limited
//! container (`<state_dir>/<id>.json`), and project id allocation.

use std::collections::HashSet;
use std::io::Write;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a container's disk limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskMode {
    /// The kernel enforces a project quota on the sandbox (writes past it fail with `EDQUOT`).
    Quota,
    /// The sandbox is walked periodically and the container ended when it is over the limit.
    Accounting,
}

impl DiskMode {
    /// "quota" or "accounting".
    pub fn as_str(self) -> &'static str {
        match self {
            DiskMode::Quota => "quota",
            DiskMode::Accounting => "accounting",
        }
    }
}

/// One limited container, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The container.
    pub container_id: String,
    /// Its sandbox directory.
    pub sandbox: PathBuf,
    /// The limit asked for, bytes.
    pub limit_bytes: u64,
    /// How it is enforced.
    pub mode: DiskMode,
    /// The project id set on the sandbox (quota mode).
    #[serde(default)]
    pub project_id: Option<u32>,
    /// Whether a kernel limit was set (quota mode with enforcement on).
    #[serde(default)]
    pub kernel_limit: bool,
}

/// The record file of container `id`.
pub(crate) fn record_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(format!("{id}.json"))
}

/// Writes `record` atomically (temporary file, fsync, rename).
pub(crate) fn write_record(state_dir: &Path, record: &Record) -> std::io::Result<()> {
    let path = record_path(state_dir, &record.container_id);
    let tmp = state_dir.join(format!(".{}.json.tmp", record.container_id));
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Reads the record of container `id`; `None` when there is none.
pub(crate) fn read_record(state_dir: &Path, id: &str) -> std::io::Result<Option<Record>> {
    match std::fs::read(record_path(state_dir, id)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the record of container `id` (absent is fine).
pub(crate) fn remove_record(state_dir: &Path, id: &str) -> std::io::Result<()> {
    match std::fs::remove_file(record_path(state_dir, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The container ids that have a record (`<id>.json`), sorted.
pub(crate) fn list_records(state_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(state_dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".json")
            && !id.starts_with('.')
        {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

/// The lowest id in `range` not in `taken` for which `is_clean` holds (no usage and no limit on
/// the filesystem, so not left over by someone else); `None` when there is none.
pub(crate) fn allocate_project_id<E>(
    range: RangeInclusive<u32>,
    taken: &HashSet<u32>,
    mut is_clean: impl FnMut(u32) -> Result<bool, E>,
) -> Result<Option<u32>, E> {
    for id in range {
        if id == 0 || taken.contains(&id) {
            continue;
        }
        if is_clean(id)? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}
