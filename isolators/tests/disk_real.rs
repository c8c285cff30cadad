//! Privileged tests of the disk isolator against real filesystems.
//!
//! - Accounting mode on a directory under /tmp: a sandbox over its limit is reported.
//! - Quota mode, on ext4 (`mkfs.ext4 -O quota,project`) and on xfs, each made by the test as a
//!   sparse image file on a loop device, mounted `prjquota`: writes past the limit fail with
//!   EDQUOT (ENOSPC on xfs) for a writer without `CAP_SYS_RESOURCE` (root keeping it may ignore quota limits; a
//!   container's default capabilities drop it), usage comes from the kernel, cleanup and recovery
//!   clear the limit. The same filesystem mounted without `prjquota` falls back to accounting.
//!
//! Kernel: ext4 quota needs `CONFIG_QUOTA` + `CONFIG_QFMT_V2` (module `quota_v2`), xfs quota
//! `CONFIG_XFS_QUOTA`, both loop devices. The CI host's kernel has neither quota option, so the
//! `quota_mode_on_*` tests run in the microVM (`tests/vm/berth-v2vm --modules "loop ext4 xfs
//! quota_v2"`). Packages: e2fsprogs (`mkfs.ext4`, `lsattr`), xfsprogs (`mkfs.xfs`), util-linux
//! (`losetup`), coreutils (`dd`, `du`). Without them (or root) the tests FAIL saying why, unless
//! `BERTH_TEST_ALLOW_SKIP=1` is set. Everything lives under `/tmp/berth-test-<pid>-disk-*`; a Drop
//! guard unmounts, detaches the loop device and removes the files on every path.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_isolators::disk::{DiskIsolator, DiskMode, DiskOptions};
use berth_isolators::{ContainerSpec, Isolator, Limitation, Limits, NetworkMode};

const MIB: u64 = 1 << 20;

/// Fails the test with `reason`, or returns (skip) when `BERTH_TEST_ALLOW_SKIP=1`.
fn cannot_run(reason: &str) {
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): {reason}");
        return;
    }
    panic!("privileged disk test cannot run: {reason} (set BERTH_TEST_ALLOW_SKIP=1 to skip)");
}

fn spec(id: &str, sandbox: &Path, disk_bytes: u64) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        limits: Limits {
            disk_bytes: Some(disk_bytes),
            ..Default::default()
        },
        network: NetworkMode::None,
        hostname: id.into(),
        sandbox: sandbox.to_path_buf(),
        options: Default::default(),
        image: None,
    }
}

/// Writes `total` bytes in 64 KiB chunks, fsyncing; returns the bytes written and the error that
/// stopped it, if any.
fn fill(path: &Path, total: u64) -> (u64, Option<std::io::Error>) {
    let mut file = std::fs::File::create(path).expect("create fill file");
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0;
    while written < total {
        if let Err(e) = file.write_all(&chunk) {
            return (written, Some(e));
        }
        written += chunk.len() as u64;
    }
    match file.sync_all() {
        Ok(()) => (written, None),
        Err(e) => (written, Some(e)),
    }
}

/// `CAP_SYS_RESOURCE` (root with it ignores quota limits, as the kernel's quota code says).
const CAP_SYS_RESOURCE: libc::c_int = 24;

/// Writes `total` bytes into `path` like a container workload would: `dd` as root but without
/// `CAP_SYS_RESOURCE` (dropped from the bounding set before exec). Returns the size the file
/// reached and dd's stderr when it failed.
fn fill_as_workload(path: &Path, total: u64) -> (u64, Option<String>) {
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .arg("bs=65536")
        .arg(format!("count={}", total / 65536))
        .arg("conv=fsync");
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run dd");
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if out.status.success() {
        (size, None)
    } else {
        (
            size,
            Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        )
    }
}

/// `syncfs` of the filesystem holding `dir`.
fn sync_fs(dir: &Path) {
    let fd = std::fs::File::open(dir).expect("open dir");
    nix::unistd::syncfs(&fd).expect("syncfs");
}

/// `du -sx --block-size=1`: an independent reading.
fn du(path: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-sx", "--block-size=1"])
        .arg(path)
        .output()
        .expect("run du");
    assert!(out.status.success(), "du failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// The project id of `path` as `lsattr -pd` shows it.
fn lsattr_project(path: &Path) -> u32 {
    let out = Command::new("lsattr")
        .arg("-pd")
        .arg(path)
        .output()
        .expect("run lsattr");
    assert!(out.status.success(), "lsattr failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Q_GETQUOTA of project `id` on the filesystem holding `dir`, done here independently of the
/// isolator: (used bytes, hard limit in 1 KiB blocks).
fn kernel_quota(dir: &Path, id: u32) -> (u64, u64) {
    let fd = std::fs::File::open(dir).expect("open dir");
    // SAFETY: all-zero is a valid dqblk (plain integers).
    let mut dq: libc::dqblk = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `dq` is a live dqblk, which Q_GETQUOTA writes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd() as libc::c_uint,
            libc::QCMD(libc::Q_GETQUOTA, 2) as libc::c_uint,
            id as libc::c_uint,
            &raw mut dq,
        )
    };
    if ret != 0 {
        let err = std::io::Error::last_os_error();
        // xfs has no dquot for a project without usage or limits.
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "Q_GETQUOTA: {err}");
        return (0, 0);
    }
    (dq.dqb_curspace, dq.dqb_bhardlimit)
}

#[test]
fn accounting_mode_reports_a_sandbox_over_its_limit() {
    if !nix::unistd::geteuid().is_root() {
        return cannot_run("not running as root");
    }
    let base = PathBuf::from(format!("/tmp/berth-test-{}-disk-acct", std::process::id()));
    let _cleanup = RemoveDir(base.clone());
    let sandbox = base.join("sandbox");
    std::fs::create_dir_all(&sandbox).unwrap();
    let mut opts = DiskOptions::new(base.join("state"));
    opts.check_interval = Duration::ZERO;
    // Force the mode: /tmp may be on a filesystem with project quota elsewhere.
    opts.use_project_quota = false;
    let iso = DiskIsolator::new(opts).unwrap();
    iso.prepare(&spec("acct", &sandbox, MIB)).unwrap();
    assert_eq!(iso.mode("acct"), Some(DiskMode::Accounting));

    let (_, err) = fill(&sandbox.join("half"), MIB / 2);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(iso.check("acct").unwrap(), None, "under the limit");
    let (_, err) = fill(&sandbox.join("more"), 3 * MIB);
    assert!(err.is_none(), "{err:?}");
    let used = iso.usage("acct").unwrap().disk_used_bytes.unwrap();
    assert_eq!(used, du(&sandbox), "walk and du disagree");
    let Some(Limitation::Disk { message }) = iso.check("acct").unwrap() else {
        panic!("3.5 MiB in a 1 MiB sandbox not reported");
    };
    assert!(message.contains("exceeds the 1 MiB limit"), "{message}");
    std::fs::remove_file(sandbox.join("more")).unwrap();
    assert_eq!(iso.check("acct").unwrap(), None, "back under the limit");
    iso.cleanup("acct").unwrap();
    assert!(sandbox.join("half").exists(), "cleanup kept the sandbox");
}

/// Whether /proc/config.gz (when present) says the kernel lacks `option` (`CONFIG_QFMT_V2`).
fn kernel_lacks(option: &str) -> bool {
    let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat /proc/config.gz 2>/dev/null | grep -c '^{option}='"
        ))
        .output()
    else {
        return false;
    };
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::path::Path::new("/proc/config.gz").exists() && found == "0"
}

/// A filesystem type with project quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Image size (xfs refuses filesystems under 300 MiB) and the mkfs command.
    fn mkfs(self) -> (u64, &'static str, &'static [&'static str], &'static str) {
        match self {
            // 256-byte inodes hold the project id; small filesystems default to 128.
            FsType::Ext4 => (
                64 * MIB,
                "mkfs.ext4",
                &["-q", "-F", "-I", "256", "-O", "quota,project"],
                "e2fsprogs",
            ),
            FsType::Xfs => (320 * MIB, "mkfs.xfs", &["-q", "-f"], "xfsprogs"),
        }
    }

    /// How a write past a project quota fails: xfs reports ENOSPC for project quotas (the tree
    /// is "full", as `df` of it shows), ext4 EDQUOT.
    fn quota_error(self) -> &'static str {
        match self {
            FsType::Ext4 => "Disk quota exceeded",
            FsType::Xfs => "No space left on device",
        }
    }

    /// The kernel options quota on this filesystem needs.
    fn kernel_options(self) -> &'static [&'static str] {
        match self {
            FsType::Ext4 => &["CONFIG_QUOTA", "CONFIG_QFMT_V2"],
            FsType::Xfs => &["CONFIG_XFS_QUOTA"],
        }
    }
}

/// Removes a directory tree on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loop-mounted filesystem with project quota; unmounted, detached and removed on drop.
struct LoopFs {
    fstype: FsType,
    base: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
    device: Option<String>,
    mounted: bool,
}

impl LoopFs {
    /// Makes the image and attaches it; `Err` says what is missing.
    fn create(fstype: FsType) -> Result<LoopFs, String> {
        let base = PathBuf::from(format!(
            "/tmp/berth-test-{}-disk-{}",
            std::process::id(),
            fstype.name()
        ));
        let mut fs = LoopFs {
            fstype,
            image: base.join("fs.img"),
            mnt: base.join("mnt"),
            base,
            device: None,
            mounted: false,
        };
        let (size, mkfs, args, package) = fstype.mkfs();
        std::fs::create_dir_all(&fs.mnt).map_err(|e| format!("mkdir {}: {e}", fs.mnt.display()))?;
        let image = std::fs::File::create(&fs.image).map_err(|e| format!("image: {e}"))?;
        image.set_len(size).map_err(|e| format!("image: {e}"))?;
        drop(image);
        let out = Command::new(mkfs)
            .args(args)
            .arg(&fs.image)
            .output()
            .map_err(|e| format!("{mkfs} not runnable (install {package}): {e}"))?;
        if !out.status.success() {
            return Err(format!("{mkfs} {args:?} failed: {out:?}"));
        }
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&fs.image)
            .output()
            .map_err(|e| format!("losetup not runnable (install util-linux): {e}"))?;
        if !out.status.success() {
            return Err(format!("no loop device (losetup -f --show): {out:?}"));
        }
        fs.device = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Ok(fs)
    }

    /// Mounts the filesystem; `Err` says why the kernel refused.
    fn mount(&mut self, options: Option<&str>) -> Result<(), String> {
        let device = self.device.as_deref().unwrap();
        let fstype = self.fstype.name();
        nix::mount::mount(
            Some(device),
            &self.mnt,
            Some(fstype),
            nix::mount::MsFlags::empty(),
            options,
        )
        .map_err(|e| {
            let needs = self.fstype.kernel_options();
            let missing: Vec<&str> = needs.iter().copied().filter(|o| kernel_lacks(o)).collect();
            format!(
                "mount -t {fstype} {device} {} (options {options:?}) failed: {e}; quota on \
                 {fstype} needs a kernel with {needs:?}{} (see dmesg)",
                self.mnt.display(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(": this kernel's /proc/config.gz lacks {missing:?}")
                }
            )
        })?;
        self.mounted = true;
        Ok(())
    }

    fn umount(&mut self) {
        if self.mounted {
            if let Err(e) = nix::mount::umount(&self.mnt) {
                eprintln!("umount {}: {e}; detaching lazily", self.mnt.display());
                let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            }
            self.mounted = false;
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.umount();
        if let Some(device) = self.device.take() {
            let status = Command::new("losetup").arg("-d").arg(&device).status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("losetup -d {device} failed: {status:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

#[test]
fn quota_mode_on_ext4_with_project_quota() {
    quota_mode_on(FsType::Ext4);
}

#[test]
fn quota_mode_on_xfs_with_project_quota() {
    quota_mode_on(FsType::Xfs);
}

/// The quota-mode scenario on a fresh loop-mounted filesystem of type `fstype`.
fn quota_mode_on(fstype: FsType) {
    if !nix::unistd::geteuid().is_root() {
        return cannot_run("not running as root");
    }
    let mut fs = match LoopFs::create(fstype) {
        Ok(fs) => fs,
        Err(reason) => return cannot_run(&reason),
    };
    let state_dir = fs.base.join("state");
    let options = || {
        let mut opts = DiskOptions::new(&state_dir);
        opts.check_interval = Duration::ZERO;
        opts
    };

    // 1. Without `prjquota` the kernel does not enforce project quota (ext4 still accounts it):
    //    accounting mode.
    if let Err(reason) = fs.mount(None) {
        return cannot_run(&reason);
    }
    let sandbox = fs.mnt.join("sandboxes/plain");
    std::fs::create_dir_all(&sandbox).unwrap();
    let iso = DiskIsolator::new(options()).unwrap();
    iso.prepare(&spec("plain", &sandbox, MIB)).unwrap();
    assert_eq!(iso.mode("plain"), Some(DiskMode::Accounting));
    iso.cleanup("plain").unwrap();
    fs.umount();

    // 2. With `prjquota`: quota mode.
    if let Err(reason) = fs.mount(Some("prjquota")) {
        return cannot_run(&reason);
    }
    let sandbox = fs.mnt.join("sandboxes/q1");
    std::fs::create_dir_all(&sandbox).unwrap();
    let iso = DiskIsolator::new(options()).unwrap();
    iso.prepare(&spec("q1", &sandbox, MIB)).unwrap();
    assert_eq!(iso.mode("q1"), Some(DiskMode::Quota));
    let project = iso.project_id("q1").expect("a project id");
    assert!((5000..=9999).contains(&project), "{project}");
    assert_eq!(
        lsattr_project(&sandbox),
        project,
        "project id on the sandbox"
    );
    assert_eq!(kernel_quota(&fs.mnt, project).1, 1024, "hard limit in KiB");
    assert_eq!(iso.check("q1").unwrap(), None);

    // Writing past the limit fails (EDQUOT; ENOSPC on xfs); a subdirectory inherits the project.
    std::fs::create_dir(sandbox.join("sub")).unwrap();
    assert_eq!(lsattr_project(&sandbox.join("sub")), project);
    let (written, err) = fill_as_workload(&sandbox.join("sub/fill"), 3 * MIB);
    let err = err.expect("3 MiB fit in a 1 MiB quota");
    assert!(err.contains(fstype.quota_error()), "{err}");
    assert!(written <= MIB, "wrote {written} bytes");
    let usage = iso.usage("q1").unwrap();
    let used = usage.disk_used_bytes.unwrap();
    assert_eq!(usage.disk_limit_bytes, Some(MIB));
    assert!(used <= MIB && used > MIB - 128 * 1024, "used {used}");
    assert_eq!(used, kernel_quota(&fs.mnt, project).0);
    let independent = du(&sandbox);
    assert!(
        used.abs_diff(independent) <= 64 * 1024,
        "quota {used} vs du {independent}"
    );
    let Some(Limitation::Disk { message }) = iso.check("q1").unwrap() else {
        panic!("a full quota is not reported (used {used})");
    };
    assert!(message.contains("reached the 1 MiB quota"), "{message}");
    std::fs::remove_file(sandbox.join("sub/fill")).unwrap();
    // xfs frees a deleted file's blocks in the background (inode gc): sync and wait for it
    // (30 s is a bound for a stuck kernel, not a timing expectation).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        sync_fs(&fs.mnt);
        let found = iso.check("q1").unwrap();
        if found.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after deleting: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. A restarted agent that knows q1 keeps it; one that does not releases it.
    let iso = DiskIsolator::new(options()).unwrap();
    assert!(iso.recover(&["q1".into()]).unwrap().is_empty());
    assert_eq!(iso.project_id("q1"), Some(project));
    assert_eq!(iso.mode("q1"), Some(DiskMode::Quota));
    let iso = DiskIsolator::new(options()).unwrap();
    assert_eq!(iso.recover(&[]).unwrap(), vec!["q1".to_string()]);
    assert_eq!(
        kernel_quota(&fs.mnt, project).1,
        0,
        "limit left after recover"
    );
    assert_eq!(lsattr_project(&sandbox), 0);
    assert_eq!(lsattr_project(&sandbox.join("sub")), 0);

    // 4. cleanup clears the limit and the project id; the sandbox stays, writes are free.
    let sandbox = fs.mnt.join("sandboxes/q2");
    std::fs::create_dir_all(&sandbox).unwrap();
    iso.prepare(&spec("q2", &sandbox, MIB)).unwrap();
    let project = iso.project_id("q2").unwrap();
    let (_, err) = fill_as_workload(&sandbox.join("fill"), 2 * MIB);
    assert!(err.is_some_and(|e| e.contains(fstype.quota_error())));
    iso.cleanup("q2").unwrap();
    assert_eq!(
        kernel_quota(&fs.mnt, project),
        (0, 0),
        "usage or limit left after cleanup"
    );
    assert_eq!(lsattr_project(&sandbox), 0);
    assert_eq!(lsattr_project(&sandbox.join("fill")), 0);
    let (size, err) = fill_as_workload(&sandbox.join("free"), 2 * MIB);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(size, 2 * MIB);
    iso.cleanup("q2").unwrap();
}
