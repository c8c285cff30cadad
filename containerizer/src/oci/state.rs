//! A container's lifecycle record under `<root>/<id>/`, and the runtime-spec state derived
//! from it.
//!
//! Files of `<root>/<id>/` (the directory is also the shim's state directory):
//! - `state.json`: [`Record`] (bundle, init pid and its start time, timestamps, cgroup
//!   placement), written atomically by `create` and `start`;
//! - `config.json`: the bundle's config as it was at `create` (hooks, exec and delete read it);
//! - `cgroup.own`: the `/proc/self/cgroup` the cgroups isolator is built from (the creator's
//!   own cgroups, adjusted for `cgroupsPath`), so every later command finds the same cgroups;
//! - the shim's `shim.json`, `shim.sock`, `shim.pid`, `shim.log`, `exit.json`, and the empty
//!   `rootfs` mount point.
//!
//! The status is never stored: `stopped` when the shim recorded an exit or the init (pid and
//! start time) is gone, else `running` once started, else `created`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::proc;
use super::translate::CgroupPlacement;
use crate::oci::OciError;

/// The runtime-spec version berth implements.
pub const OCI_VERSION: &str = "1.2.0";

/// What `create` and `start` record about a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub id: String,
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// Host pid of the container's process.
    pub pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22), against pid reuse.
    pub pid_start: u64,
    /// Pid of the supervising shim.
    pub shim_pid: i32,
    /// Its start time.
    #[serde(default)]
    pub shim_start: u64,
    /// RFC 3339 creation time.
    pub created: String,
    /// RFC 3339 start time, once started.
    #[serde(default)]
    pub started: Option<String>,
    /// The config's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Where the cgroups are.
    pub cgroup: CgroupPlacement,
    /// uid of the creator.
    #[serde(default)]
    pub owner: u32,
    /// The config has hooks (`start` and `delete` read the config only then).
    #[serde(default)]
    pub has_hooks: bool,
}

/// Container status (runtime-spec `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created (only hooks see it).
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// Started and its process alive.
    Running,
    /// Its process has exited.
    Stopped,
}

impl Status {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// The runtime-spec state document (`berth oci state`, and hooks' stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// Spec version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Host pid of the container's process (absent once stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Creation time (runc's extension, for `list`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

impl Record {
    /// The state document for `status`.
    pub fn oci_state(&self, status: Status) -> OciState {
        OciState {
            oci_version: OCI_VERSION.into(),
            id: self.id.clone(),
            status,
            pid: (status != Status::Stopped).then_some(self.pid),
            bundle: self.bundle.clone(),
            annotations: self.annotations.clone(),
            created: Some(self.created.clone()),
        }
    }
}

/// `<root>/<id>/`.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    /// The directory.
    pub dir: PathBuf,
}

impl ContainerDir {
    /// The container `id` under `root`.
    pub fn new(root: &Path, id: &str) -> ContainerDir {
        ContainerDir { dir: root.join(id) }
    }
    /// `state.json`.
    pub fn record_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// `config.json` (the snapshot).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// `cgroup.own`.
    pub fn own_cgroup_path(&self) -> PathBuf {
        self.dir.join("cgroup.own")
    }

    /// Reads `state.json`; `None` when the container is still being created (no record yet).
    pub fn read_record(&self) -> Result<Option<Record>, OciError> {
        let path = self.record_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(OciError::io("reading", &path, source)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| OciError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    /// Writes `state.json` atomically (temp file + rename; the root is a tmpfs normally, so no
    /// fsync: a reboot loses every container anyway).
    pub fn write_record(&self, record: &Record) -> Result<(), OciError> {
        let path = self.record_path();
        let tmp = self.dir.join("state.json.tmp");
        let json = serde_json::to_vec(record).expect("Record serializes");
        std::fs::write(&tmp, json).map_err(|e| OciError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| OciError::io("renaming", &path, e))
    }

    /// The current status of a container with `record`.
    pub fn status(&self, record: &Record) -> Status {
        if self.dir.join("exit.json").exists() || !proc::alive(record.pid, record.pid_start) {
            Status::Stopped
        } else if record.started.is_some() {
            Status::Running
        } else {
            Status::Created
        }
    }

    /// Takes the container's lock (`flock` on the directory), held until the guard drops:
    /// commands that change a container run one at a time.
    pub fn lock(&self) -> Result<Lock, OciError> {
        let f = File::open(&self.dir).map_err(|e| OciError::io("opening", &self.dir, e))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } < 0 {
            return Err(OciError::io(
                "locking",
                &self.dir,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Lock { _file: f })
    }
}

/// A held container lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Writes `text` to `path` (pid files): temp file in the same directory, then rename, as runc.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), OciError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| OciError::io("creating", &tmp, e))?;
    f.write_all(pid.to_string().as_bytes())
        .map_err(|e| OciError::io("writing", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| OciError::io("renaming", path, e))
}

/// `t` (seconds since the epoch, UTC) as RFC 3339 with nanoseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400 + 3_723, 5);
        assert_eq!(rfc3339(t), "2000-02-29T01:02:03.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(rfc3339(t), "2025-12-31T23:59:59.000000000Z");
    }

    fn record() -> Record {
        Record {
            id: "c1".into(),
            bundle: "/b".into(),
            pid: i32::MAX,
            pid_start: 1,
            shim_pid: 1,
            shim_start: 0,
            created: "t".into(),
            started: None,
            annotations: BTreeMap::from([("a".into(), "b".into())]),
            cgroup: CgroupPlacement::new(None, "c1").unwrap(),
            owner: 0,
            has_hooks: false,
        }
    }

    #[test]
    fn record_roundtrip_and_status() {
        let d = tempfile::tempdir().unwrap();
        let c = ContainerDir::new(d.path(), "c1");
        std::fs::create_dir(&c.dir).unwrap();
        assert_eq!(c.read_record().unwrap(), None);
        let mut r = record();
        c.write_record(&r).unwrap();
        assert_eq!(c.read_record().unwrap(), Some(r.clone()));
        // A pid that cannot exist: stopped.
        assert_eq!(c.status(&r), Status::Stopped);
        // Our own process with its real start time: created, then running.
        r.pid = std::process::id() as i32;
        r.pid_start = proc::start_time(r.pid).unwrap();
        assert_eq!(c.status(&r), Status::Created);
        r.started = Some("t2".into());
        assert_eq!(c.status(&r), Status::Running);
        // Same pid, other start time (pid reuse): stopped.
        r.pid_start += 1;
        assert_eq!(c.status(&r), Status::Stopped);
        r.pid_start -= 1;
        std::fs::write(c.dir.join("exit.json"), b"{}").unwrap();
        assert_eq!(c.status(&r), Status::Stopped);
        std::fs::write(c.record_path(), b"{").unwrap();
        assert!(matches!(c.read_record(), Err(OciError::Corrupt { .. })));
        let _lock = c.lock().unwrap();
    }

    #[test]
    fn state_document_shape() {
        let s = serde_json::to_value(record().oci_state(Status::Running)).unwrap();
        assert_eq!(s["ociVersion"], OCI_VERSION);
        assert_eq!(s["status"], "running");
        assert_eq!(s["pid"], i32::MAX);
        assert_eq!(s["bundle"], "/b");
        assert_eq!(s["annotations"]["a"], "b");
        let s = serde_json::to_value(record().oci_state(Status::Stopped)).unwrap();
        assert!(s.get("pid").is_none());
    }
}
