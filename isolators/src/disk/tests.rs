//! Unit tests of the disk isolator: the walk on fixture trees, rate limiting, messages, project id
//! allocation and persistence, and the quota-mode logic against a recording double.

use std::collections::{HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::stat::fstat;

use super::du::{WalkError, disk_usage, walk};
use super::quota::{ProjectQuota, ProjectUsage, device_from_mountinfo, set_project_tree};
use super::state::{self, Record, allocate_project_id};
use super::*;
use crate::{ContainerSpec, Isolator, Limitation, Limits, NetworkMode};

/// Records project ids by inode and limits/usage by project id.
#[derive(Default)]
struct FakeQuota {
    supported: bool,
    /// Fail the next `set_limit` with EIO.
    fail_next_set_limit: AtomicBool,
    usage: Mutex<HashMap<u32, u64>>,
    limits: Mutex<HashMap<u32, u64>>,
    projects: Mutex<HashMap<(u64, u64), (u32, bool)>>,
}

impl FakeQuota {
    fn supported() -> Arc<FakeQuota> {
        Arc::new(FakeQuota {
            supported: true,
            ..Default::default()
        })
    }

    fn project_of_path(&self, path: &Path) -> (u32, bool) {
        let md = std::fs::symlink_metadata(path).unwrap();
        let projects = self.projects.lock().unwrap();
        projects
            .get(&(md.dev(), md.ino()))
            .copied()
            .unwrap_or((0, false))
    }

    fn limit(&self, id: u32) -> u64 {
        self.limits.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl ProjectQuota for FakeQuota {
    fn supported(&self, _dir: &Path) -> Result<bool, Errno> {
        Ok(self.supported)
    }

    fn get(&self, _dir: &Path, id: u32) -> Result<ProjectUsage, Errno> {
        Ok(ProjectUsage {
            used_bytes: self.usage.lock().unwrap().get(&id).copied().unwrap_or(0),
            hard_limit_bytes: self.limit(id),
        })
    }

    fn set_limit(&self, _dir: &Path, id: u32, limit_bytes: u64) -> Result<(), Errno> {
        if self.fail_next_set_limit.swap(false, Ordering::SeqCst) {
            return Err(Errno::EIO);
        }
        let mut limits = self.limits.lock().unwrap();
        if limit_bytes == 0 {
            limits.remove(&id);
        } else {
            limits.insert(id, limit_bytes.div_ceil(1024) * 1024);
        }
        Ok(())
    }

    fn project_of(&self, fd: BorrowedFd<'_>) -> Result<u32, Errno> {
        let st = fstat(fd)?;
        let projects = self.projects.lock().unwrap();
        Ok(projects.get(&(st.st_dev, st.st_ino)).map_or(0, |p| p.0))
    }

    fn set_project(&self, fd: BorrowedFd<'_>, id: u32, inherit: bool) -> Result<(), Errno> {
        let st = fstat(fd)?;
        let mut projects = self.projects.lock().unwrap();
        projects.insert((st.st_dev, st.st_ino), (id, inherit && id != 0));
        Ok(())
    }
}

fn write_file(path: &Path, bytes: usize) {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&vec![0x5a; bytes]).unwrap();
    file.sync_all().unwrap();
}

fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().blocks() * 512
}

fn spec(id: &str, sandbox: &Path, disk_bytes: Option<u64>) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        limits: Limits {
            disk_bytes,
            ..Default::default()
        },
        network: NetworkMode::None,
        hostname: id.into(),
        sandbox: sandbox.to_path_buf(),
        options: Default::default(),
        image: None,
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    state: std::path::PathBuf,
    sandboxes: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let sandboxes = tmp.path().join("sandboxes");
        std::fs::create_dir_all(&sandboxes).unwrap();
        Fixture {
            state,
            sandboxes,
            _tmp: tmp,
        }
    }

    fn sandbox(&self, id: &str) -> std::path::PathBuf {
        let dir = self.sandboxes.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn options(&self) -> DiskOptions {
        let mut opts = DiskOptions::new(&self.state);
        opts.use_project_quota = false;
        opts.check_interval = Duration::ZERO;
        opts
    }
}

#[test]
fn human_bytes_is_exact_or_one_decimal() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(10 << 20), "10 MiB");
    assert_eq!(human_bytes(12_897_485), "12.3 MiB");
    // Just over a round limit is not printed as the limit.
    assert_eq!(human_bytes((10 << 20) + 4096), "10.0 MiB");
    assert_eq!(human_bytes(3 << 30), "3 GiB");
    assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
}

#[test]
fn limitation_messages_name_usage_limit_and_sandbox() {
    assert_eq!(
        over_limit_message(12_897_485, 10 << 20, Path::new("/work/sandboxes/t1")),
        "disk usage 12.3 MiB exceeds the 10 MiB limit of the sandbox /work/sandboxes/t1"
    );
    assert_eq!(
        quota_reached_message(1 << 20, 1 << 20, Path::new("/s")),
        "disk usage 1 MiB reached the 1 MiB quota of the sandbox /s (writes fail: disk quota exceeded)"
    );
}

#[test]
fn walks_are_rate_limited_to_the_interval() {
    let t0 = Instant::now();
    let interval = Duration::from_secs(15);
    assert!(needs_walk(None, t0, interval));
    assert!(!needs_walk(Some(t0), t0, interval));
    assert!(!needs_walk(
        Some(t0),
        t0 + Duration::from_secs(14),
        interval
    ));
    assert!(needs_walk(Some(t0), t0 + interval, interval));
    // A clock that appears to go backwards does not force a walk.
    assert!(!needs_walk(Some(t0 + interval), t0, interval));
    assert!(needs_walk(Some(t0), t0, Duration::ZERO));
}

#[test]
fn quota_is_reached_when_little_room_is_left() {
    let mib = 1 << 20;
    assert_eq!(quota_room(mib), 64 * 1024);
    assert_eq!(quota_room(10 * mib * 1024), 64 * 1024);
    assert_eq!(quota_room(16 * 1024), 4096);
    assert_eq!(quota_room(256 * 1024), 16 * 1024);
    assert!(!quota_reached(0, mib));
    assert!(!quota_reached(mib - 64 * 1024, mib));
    assert!(quota_reached(mib - 64 * 1024 + 1, mib));
    // Seen on ext4 with 1 KiB blocks: dd stopped 2 KiB short of a 1 MiB quota.
    assert!(quota_reached(1_046_528, mib));
    assert!(quota_reached(mib, mib));
    // The kernel rounds the limit up to 1 KiB.
    // (16385 bytes = 17 KiB for the kernel, 4 KiB room.)
    assert!(!quota_reached(13 * 1024, 16385));
    assert!(quota_reached(13 * 1024 + 1, 16385));
}

#[test]
fn disk_usage_counts_hard_links_once_sparse_allocated_and_no_symlink_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sandbox");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write_file(&root.join("a/data"), 64 * 1024);
    write_file(&outside.join("big"), 1 << 20);
    // A sparse file: 16 MiB apparent size, one block allocated.
    let mut sparse = std::fs::File::create(root.join("a/b/sparse")).unwrap();
    sparse.seek(SeekFrom::Start(16 << 20)).unwrap();
    sparse.write_all(b"x").unwrap();
    sparse.sync_all().unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link-to-outside")).unwrap();
    std::os::unix::fs::symlink(outside.join("big"), root.join("a/link-to-big")).unwrap();

    let expected: u64 = [
        root.clone(),
        root.join("a"),
        root.join("a/b"),
        root.join("a/data"),
        root.join("a/b/sparse"),
        root.join("link-to-outside"),
        root.join("a/link-to-big"),
    ]
    .iter()
    .map(|p| allocated(p))
    .sum();
    let before = disk_usage(&root).unwrap();
    assert_eq!(before, expected);
    assert!(
        allocated(&root.join("a/b/sparse")) < 1 << 20,
        "fixture is not sparse"
    );
    assert!(
        before < 1 << 20,
        "symlink targets or sparse holes counted: {before}"
    );

    // Two more links to the same data: counted once.
    std::fs::hard_link(root.join("a/data"), root.join("a/b/data-again")).unwrap();
    std::fs::hard_link(root.join("a/data"), root.join("data-thrice")).unwrap();
    let expected: u64 = [
        root.clone(),
        root.join("a"),
        root.join("a/b"),
        root.join("a/data"),
        root.join("a/b/sparse"),
        root.join("link-to-outside"),
        root.join("a/link-to-big"),
    ]
    .iter()
    .map(|p| allocated(p))
    .sum();
    assert_eq!(disk_usage(&root).unwrap(), expected);
}

#[test]
fn disk_usage_of_a_tree_deeper_than_the_open_fd_window() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    let mut dir = root.clone();
    let mut expected = 0;
    for level in 0..150 {
        dir.push(format!("d{level}"));
    }
    std::fs::create_dir_all(&dir).unwrap();
    write_file(&dir.join("bottom"), 8192);
    write_file(&root.join("top"), 4096);
    let mut walk_dir = root.clone();
    expected += allocated(&walk_dir);
    for level in 0..150 {
        walk_dir.push(format!("d{level}"));
        expected += allocated(&walk_dir);
    }
    expected += allocated(&dir.join("bottom")) + allocated(&root.join("top"));
    assert_eq!(disk_usage(&root).unwrap(), expected);
}

#[test]
fn walk_fails_when_a_directory_is_moved_below_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("moving");
    let mut dir = root.clone();
    for level in 0..80 {
        dir.push(format!("d{level}"));
    }
    std::fs::create_dir_all(&dir).unwrap();
    // d0/.../d66/d67: moving d67 out of d66 (whose fd the walk has closed) while the walk is
    // below it makes `..` lead elsewhere.
    let mut d66 = root.clone();
    for level in 0..=66 {
        d66.push(format!("d{level}"));
    }
    let mut moved = false;
    let result = walk(&root, &mut |entry| {
        if !moved && entry.name.to_bytes() == b"d75" {
            std::fs::rename(d66.join("d67"), root.join("elsewhere")).unwrap();
            moved = true;
        }
    });
    assert!(moved);
    assert!(
        matches!(result, Err(WalkError::Moved { .. })),
        "walk did not notice: {result:?}"
    );
}

#[test]
fn walk_does_not_follow_a_symlinked_root() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("real")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
    let err = disk_usage(&tmp.path().join("link")).unwrap_err();
    // O_DIRECTORY | O_NOFOLLOW on a symlink: ENOTDIR (or ELOOP on some kernels).
    assert!(
        matches!(
            err,
            WalkError::Open {
                source: Errno::ENOTDIR | Errno::ELOOP,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn project_tree_is_set_on_dirs_and_files_and_cleared() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sandbox");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    write_file(&root.join("sub/file"), 10);
    std::os::unix::fs::symlink("/etc/passwd", root.join("sym")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let quota = FakeQuota::supported();
    let outcome = set_project_tree(quota.as_ref(), &root, 5000).unwrap();
    assert_eq!(outcome.set, 3);
    assert_eq!(outcome.failed, 0);
    assert_eq!(quota.project_of_path(&root), (5000, true));
    assert_eq!(quota.project_of_path(&root.join("sub")), (5000, true));
    assert_eq!(quota.project_of_path(&root.join("sub/file")), (5000, false));
    assert_eq!(quota.project_of_path(&root.join("sym")), (0, false));
    assert_eq!(quota.project_of_path(&root.join("fifo")), (0, false));
    assert_eq!(quota.project_of_path(Path::new("/etc/passwd")), (0, false));

    set_project_tree(quota.as_ref(), &root, 0).unwrap();
    for path in [root.clone(), root.join("sub"), root.join("sub/file")] {
        assert_eq!(
            quota.project_of_path(&path),
            (0, false),
            "{}",
            path.display()
        );
    }
}

#[test]
fn project_ids_skip_taken_and_dirty_ids() {
    let taken: HashSet<u32> = [5000, 5002].into();
    let dirty = [5001, 5003];
    let clean = |id: u32| Ok::<_, ()>(!dirty.contains(&id));
    assert_eq!(
        allocate_project_id(5000..=5010, &taken, clean),
        Ok(Some(5004))
    );
    assert_eq!(allocate_project_id(5000..=5003, &taken, clean), Ok(None));
    assert_eq!(
        allocate_project_id(0..=1, &HashSet::new(), clean),
        Ok(Some(1))
    );
    assert_eq!(
        allocate_project_id(1..=2, &HashSet::new(), |_| Err::<bool, _>("quotactl")),
        Err("quotactl")
    );
}

#[test]
fn records_round_trip_and_listing_ignores_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let record = Record {
        container_id: "c1".into(),
        sandbox: "/work/sandboxes/c1".into(),
        limit_bytes: 1 << 20,
        mode: DiskMode::Quota,
        project_id: Some(5000),
        kernel_limit: true,
    };
    state::write_record(tmp.path(), &record).unwrap();
    std::fs::write(tmp.path().join(".c2.json.tmp"), "{").unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "").unwrap();
    assert_eq!(
        state::list_records(tmp.path()).unwrap(),
        vec!["c1".to_string()]
    );
    assert_eq!(state::read_record(tmp.path(), "c1").unwrap(), Some(record));
    assert_eq!(state::read_record(tmp.path(), "c2").unwrap(), None);
    state::remove_record(tmp.path(), "c1").unwrap();
    state::remove_record(tmp.path(), "c1").unwrap();
    assert!(state::list_records(tmp.path()).unwrap().is_empty());
}

#[test]
fn mountinfo_names_the_device_of_a_major_minor() {
    let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 7:3 / /tmp/berth-test-1-mnt rw,relatime shared:20 - ext4 /dev/loop3 rw,prjquota
36 22 0:5 / /dev rw,nosuid - devtmpfs udev rw
";
    assert_eq!(
        device_from_mountinfo(mountinfo, 7, 3).as_deref(),
        Some(Path::new("/dev/loop3"))
    );
    assert_eq!(
        device_from_mountinfo(mountinfo, 254, 0).as_deref(),
        Some(Path::new("/dev/vda"))
    );
    // A pseudo filesystem has no block device.
    assert_eq!(device_from_mountinfo(mountinfo, 0, 5), None);
    assert_eq!(device_from_mountinfo(mountinfo, 8, 1), None);
}

#[test]
fn accounting_mode_reports_over_limit_and_caches_between_walks() {
    let fx = Fixture::new();
    let mut opts = fx.options();
    opts.check_interval = Duration::from_secs(3600);
    let iso = DiskIsolator::new(opts).unwrap();
    let sandbox = fx.sandbox("c1");
    iso.prepare(&spec("c1", &sandbox, Some(1 << 20))).unwrap();
    assert_eq!(iso.mode("c1"), Some(DiskMode::Accounting));
    assert_eq!(iso.check("c1").unwrap(), None);
    let first = iso.usage("c1").unwrap();
    assert_eq!(first.disk_limit_bytes, Some(1 << 20));
    write_file(&sandbox.join("fill"), 3 << 20);
    // Within the interval: the cached walk, still under the limit.
    assert_eq!(iso.check("c1").unwrap(), None);
    assert_eq!(iso.usage("c1").unwrap(), first);

    // A second isolator recovering the same state, with no rate limit, walks again.
    let iso = DiskIsolator::new(fx.options()).unwrap();
    assert!(iso.recover(&["c1".into()]).unwrap().is_empty());
    let usage = iso.usage("c1").unwrap();
    assert!(usage.disk_used_bytes.unwrap() >= 3 << 20, "{usage:?}");
    let Some(Limitation::Disk { message }) = iso.check("c1").unwrap() else {
        panic!("no disk limitation");
    };
    assert!(
        message.contains("exceeds the 1 MiB limit of the sandbox") && message.contains("c1"),
        "{message}"
    );
    assert_eq!(iso.describe("c1")["mode"], "accounting");
    iso.cleanup("c1").unwrap();
    assert_eq!(iso.check("c1").unwrap(), None);
    assert!(state::list_records(&fx.state).unwrap().is_empty());
    assert!(
        sandbox.join("fill").exists(),
        "cleanup must keep the sandbox"
    );
}

#[test]
fn accounting_without_enforcement_only_measures() {
    let fx = Fixture::new();
    let mut opts = fx.options();
    opts.enforce = false;
    let iso = DiskIsolator::new(opts).unwrap();
    let sandbox = fx.sandbox("c1");
    iso.prepare(&spec("c1", &sandbox, Some(4096))).unwrap();
    write_file(&sandbox.join("fill"), 64 * 1024);
    assert_eq!(iso.check("c1").unwrap(), None);
    assert!(iso.usage("c1").unwrap().disk_used_bytes.unwrap() >= 64 * 1024);
}

#[test]
fn containers_without_a_disk_limit_are_not_tracked() {
    let fx = Fixture::new();
    let iso = DiskIsolator::new(fx.options()).unwrap();
    let sandbox = fx.sandbox("c1");
    iso.prepare(&spec("c1", &sandbox, None)).unwrap();
    assert_eq!(iso.mode("c1"), None);
    assert_eq!(iso.usage("c1").unwrap(), Usage::default());
    assert_eq!(iso.describe("c1"), serde_json::Value::Null);
    assert!(state::list_records(&fx.state).unwrap().is_empty());
    iso.cleanup("c1").unwrap();
}

#[test]
fn invalid_requests_are_refused() {
    let fx = Fixture::new();
    let iso = DiskIsolator::new(fx.options()).unwrap();
    let sandbox = fx.sandbox("c1");
    let err = iso.prepare(&spec("c1", &sandbox, Some(0))).unwrap_err();
    assert!(err.to_string().contains("must be positive"), "{err}");
    iso.prepare(&spec("c1", &sandbox, Some(1 << 20))).unwrap();
    let err = iso
        .prepare(&spec("c1", &sandbox, Some(1 << 20)))
        .unwrap_err();
    assert!(err.to_string().contains("already prepared"), "{err}");
    assert!(iso.prepare(&spec("../x", &sandbox, Some(1))).is_err());
    let mut opts = fx.options();
    opts.project_ids = 0..=10;
    assert!(DiskIsolator::new(opts).is_err());
}

fn quota_isolator(fx: &Fixture, quota: Arc<FakeQuota>, enforce: bool) -> DiskIsolator {
    let mut opts = fx.options();
    opts.use_project_quota = true;
    opts.enforce = enforce;
    DiskIsolator::with_quota(opts, quota).unwrap()
}

#[test]
fn quota_mode_sets_project_and_limit_and_cleanup_clears_them() {
    let fx = Fixture::new();
    let quota = FakeQuota::supported();
    // 5001 has usage left by someone else: skipped.
    quota.usage.lock().unwrap().insert(5001, 4096);
    let iso = quota_isolator(&fx, quota.clone(), true);
    let (s1, s2) = (fx.sandbox("c1"), fx.sandbox("c2"));
    write_file(&s2.join("before"), 100);
    iso.prepare(&spec("c1", &s1, Some(1 << 20))).unwrap();
    iso.prepare(&spec("c2", &s2, Some(1000))).unwrap();
    assert_eq!(iso.mode("c1"), Some(DiskMode::Quota));
    assert_eq!(
        (iso.project_id("c1"), iso.project_id("c2")),
        (Some(5000), Some(5002))
    );
    assert_eq!(quota.project_of_path(&s1), (5000, true));
    assert_eq!(quota.project_of_path(&s2.join("before")), (5002, false));
    assert_eq!(quota.limit(5000), 1 << 20);
    assert_eq!(quota.limit(5002), 1024, "rounded up to 1 KiB");
    assert_eq!(iso.describe("c2")["project_id"], 5002);

    // Usage comes from the kernel; the limitation only at the hard limit.
    quota
        .usage
        .lock()
        .unwrap()
        .insert(5000, (1 << 20) - 128 * 1024);
    assert_eq!(
        iso.usage("c1").unwrap().disk_used_bytes,
        Some((1 << 20) - 128 * 1024)
    );
    assert_eq!(iso.check("c1").unwrap(), None);
    quota.usage.lock().unwrap().insert(5000, 1 << 20);
    let Some(Limitation::Disk { message }) = iso.check("c1").unwrap() else {
        panic!("no limitation at the hard limit");
    };
    assert!(message.contains("reached the 1 MiB quota"), "{message}");

    iso.cleanup("c1").unwrap();
    assert_eq!(quota.limit(5000), 0);
    assert_eq!(quota.project_of_path(&s1), (0, false));
    assert_eq!(
        state::list_records(&fx.state).unwrap(),
        vec!["c2".to_string()]
    );
    iso.cleanup("c1").unwrap();
    // The freed id is allocated again.
    quota.usage.lock().unwrap().remove(&5000);
    let s3 = fx.sandbox("c3");
    iso.prepare(&spec("c3", &s3, Some(1 << 20))).unwrap();
    assert_eq!(iso.project_id("c3"), Some(5000));
}

#[test]
fn quota_mode_without_enforcement_sets_no_limit() {
    let fx = Fixture::new();
    let quota = FakeQuota::supported();
    let iso = quota_isolator(&fx, quota.clone(), false);
    let s1 = fx.sandbox("c1");
    iso.prepare(&spec("c1", &s1, Some(1 << 20))).unwrap();
    assert_eq!(iso.project_id("c1"), Some(5000));
    assert_eq!(quota.limit(5000), 0);
    quota.usage.lock().unwrap().insert(5000, 5 << 20);
    assert_eq!(iso.check("c1").unwrap(), None);
    assert_eq!(iso.usage("c1").unwrap().disk_used_bytes, Some(5 << 20));
}

#[test]
fn failed_quota_prepare_is_rolled_back() {
    let fx = Fixture::new();
    let quota = FakeQuota::supported();
    quota.fail_next_set_limit.store(true, Ordering::SeqCst);
    let iso = quota_isolator(&fx, quota.clone(), true);
    let s1 = fx.sandbox("c1");
    let err = iso.prepare(&spec("c1", &s1, Some(1 << 20))).unwrap_err();
    assert!(
        err.to_string().contains("Q_SETQUOTA of project 5000"),
        "{err}"
    );
    assert_eq!(iso.mode("c1"), None);
    assert_eq!(quota.project_of_path(&s1), (0, false));
    assert!(state::list_records(&fx.state).unwrap().is_empty());
    // The id is free again.
    iso.prepare(&spec("c1", &s1, Some(1 << 20))).unwrap();
    assert_eq!(iso.project_id("c1"), Some(5000));
}

#[test]
fn recover_keeps_known_containers_and_releases_the_others() {
    let fx = Fixture::new();
    let quota = FakeQuota::supported();
    let iso = quota_isolator(&fx, quota.clone(), true);
    let (s1, s2) = (fx.sandbox("known"), fx.sandbox("gone"));
    iso.prepare(&spec("known", &s1, Some(1 << 20))).unwrap();
    iso.prepare(&spec("gone", &s2, Some(2 << 20))).unwrap();
    std::fs::write(fx.state.join("garbage.json"), "not json").unwrap();
    drop(iso);

    // The agent restarts.
    let iso = quota_isolator(&fx, quota.clone(), true);
    let cleaned = iso.recover(&["known".into()]).unwrap();
    assert_eq!(cleaned, vec!["gone".to_string()]);
    assert_eq!(iso.project_id("known"), Some(5000));
    assert_eq!(iso.usage("known").unwrap().disk_limit_bytes, Some(1 << 20));
    assert_eq!(quota.limit(5001), 0);
    assert_eq!(quota.project_of_path(&s2), (0, false));
    assert_eq!(quota.project_of_path(&s1), (5000, true));
    let mut left = state::list_records(&fx.state).unwrap();
    left.sort();
    assert_eq!(left, vec!["garbage".to_string(), "known".to_string()]);
    // A new container does not get the recovered container's id.
    let s3 = fx.sandbox("new");
    iso.prepare(&spec("new", &s3, Some(1 << 20))).unwrap();
    assert_eq!(iso.project_id("new"), Some(5001));
}
