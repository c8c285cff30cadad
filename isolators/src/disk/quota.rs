//! Project quota: the kernel interface ([`ProjectQuota`], implemented by [`KernelQuota`]) and
//! setting a project id on a whole tree.
//!
//! A project quota charges every block of every inode carrying a project id to that id, whoever
//! owns the file; `FS_XFLAG_PROJINHERIT` on a directory makes new entries inherit its id. ext4
//! (with the `project` and `quota` features, mounted with `prjquota`) and xfs (mounted with
//! `prjquota`/`pquota`) support it; the generic `quotactl` commands used here work on both.
//!
//! `quotactl` needs the filesystem: on kernels with `quotactl_fd(2)` (5.14+) it is named by an fd
//! on any directory of it; on older ones by its block device, found in `<proc>/self/mountinfo` by
//! the directory's device number.

use std::ffi::{CString, c_int, c_uint, c_void};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::du::{WalkError, walk};

/// `PRJQUOTA` of `<linux/quota.h>`.
const PRJQUOTA: c_int = 2;
/// `Q_XGETQSTATV` of `<linux/dqblk_xfs.h>`: `XQM_CMD(8)`.
const Q_XGETQSTATV: c_int = ((b'X' as c_int) << 8) + 8;
/// `FS_QSTATV_VERSION1`.
const FS_QSTATV_VERSION1: i8 = 1;
/// Project quota usage is accounted.
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
/// Project quota limits are enforced.
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
/// `FS_XFLAG_PROJINHERIT` of `<linux/fs.h>`.
const FS_XFLAG_PROJINHERIT: u32 = 0x200;
/// Quota block limits are in units of `QIF_DQBLKSIZE` bytes.
pub(crate) const QUOTA_BLOCK: u64 = 1024;

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

nix::ioctl_read!(fs_ioc_fsgetxattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_ioc_fssetxattr, b'X', 32, FsXattr);

/// `struct fs_qfilestatv`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsQfilestatv {
    qfs_ino: u64,
    qfs_nblks: u64,
    qfs_nextents: u32,
    qfs_pad: u32,
}

/// `struct fs_quota_statv`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsQuotaStatv {
    qs_version: i8,
    qs_pad1: u8,
    qs_flags: u16,
    qs_incoredqs: u32,
    qs_uquota: FsQfilestatv,
    qs_gquota: FsQfilestatv,
    qs_pquota: FsQfilestatv,
    qs_btimelimit: i32,
    qs_itimelimit: i32,
    qs_rtbtimelimit: i32,
    qs_bwarnlimit: u16,
    qs_iwarnlimit: u16,
    qs_rtbwarnlimit: u16,
    qs_pad3: u16,
    qs_pad4: u32,
    qs_pad2: [u64; 7],
}

/// Usage and limit of one project.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProjectUsage {
    /// Bytes charged to the project (allocated and reserved).
    pub used_bytes: u64,
    /// The hard block limit in bytes; 0 = none.
    pub hard_limit_bytes: u64,
}

/// The project quota operations the disk isolator needs (kernel seam; tests use a double).
pub(crate) trait ProjectQuota: Send + Sync {
    /// Whether the filesystem holding `dir` accounts AND enforces project quota.
    fn supported(&self, dir: &Path) -> Result<bool, Errno>;
    /// Usage and hard limit of project `id` on the filesystem holding `dir` (or, if `dir` was
    /// removed, its nearest existing ancestor).
    fn get(&self, dir: &Path, id: u32) -> Result<ProjectUsage, Errno>;
    /// Sets the hard (and soft) block limit of project `id`, rounded up to 1 KiB; 0 removes it.
    fn set_limit(&self, dir: &Path, id: u32, limit_bytes: u64) -> Result<(), Errno>;
    /// The project id of the file open as `fd`.
    fn project_of(&self, fd: BorrowedFd<'_>) -> Result<u32, Errno>;
    /// Sets the project id of the file open as `fd`, with `FS_XFLAG_PROJINHERIT` when `inherit`
    /// (id 0 also clears the flag).
    fn set_project(&self, fd: BorrowedFd<'_>, id: u32, inherit: bool) -> Result<(), Errno>;
}

/// Whether this kernel has `quotactl_fd(2)` (probed once with an invalid fd: EBADF = present).
fn have_quotactl_fd() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        // SAFETY: fd -1 is never valid, so the kernel fails with EBADF (or ENOSYS) before it
        // reads `addr`; a null `addr` is never dereferenced.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_quotactl_fd,
                -1 as c_int,
                libc::QCMD(libc::Q_GETINFO, PRJQUOTA) as c_uint,
                0 as c_uint,
                std::ptr::null_mut::<c_void>(),
            )
        };
        !(ret == -1 && Errno::last() == Errno::ENOSYS)
    })
}

/// The block device of the mount with device number `major:minor`, from mountinfo text.
pub(crate) fn device_from_mountinfo(mountinfo: &str, major: u64, minor: u64) -> Option<PathBuf> {
    let wanted = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != wanted {
            return None;
        }
        // After the optional fields, " - " separates: fstype, source, super options.
        let (_, tail) = line.split_once(" - ")?;
        let source = tail.split(' ').nth(1)?;
        source.starts_with('/').then(|| PathBuf::from(source))
    })
}

/// Real project quota through `quotactl_fd`/`quotactl` and `FS_IOC_FS[GS]ETXATTR`.
#[derive(Debug, Clone)]
pub(crate) struct KernelQuota {
    /// Where `self/mountinfo` is read (the device fallback for kernels without `quotactl_fd`).
    pub proc_root: PathBuf,
}

impl KernelQuota {
    /// Opens `dir`, or its nearest existing ancestor if it is gone (same filesystem in practice).
    fn open_anchor(dir: &Path) -> Result<OwnedFd, Errno> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut at = dir;
        loop {
            match nix::fcntl::open(at, flags, Mode::empty()) {
                Err(Errno::ENOENT) => at = at.parent().ok_or(Errno::ENOENT)?,
                other => return other,
            }
        }
    }

    /// Runs the project-quota command `cmd` for `id` on the filesystem holding `dir`.
    fn quotactl(&self, dir: &Path, cmd: c_int, id: u32, addr: *mut c_void) -> Result<(), Errno> {
        let fd = Self::open_anchor(dir)?;
        let qcmd = libc::QCMD(cmd, PRJQUOTA);
        if have_quotactl_fd() {
            // SAFETY: `fd` is an open fd for the duration of the call; `addr` points to the
            // structure `cmd` reads or writes (callers pass a live, correctly sized `repr(C)`
            // value matching the command).
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_quotactl_fd,
                    fd.as_raw_fd() as c_uint,
                    qcmd as c_uint,
                    id as c_uint,
                    addr,
                )
            };
            return Errno::result(ret).map(drop);
        }
        let st = fstat(&fd)?;
        let mountinfo = std::fs::read_to_string(self.proc_root.join("self/mountinfo"))
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let dev = st.st_dev;
        let device =
            device_from_mountinfo(&mountinfo, libc::major(dev).into(), libc::minor(dev).into())
                .ok_or(Errno::ENODEV)?;
        let device = CString::new(device.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: `device` is a NUL-terminated path alive for the call; `addr` as above.
        let ret = unsafe { libc::quotactl(qcmd, device.as_ptr(), id as c_int, addr.cast()) };
        Errno::result(ret).map(drop)
    }
}

impl ProjectQuota for KernelQuota {
    fn supported(&self, dir: &Path) -> Result<bool, Errno> {
        let mut stat = FsQuotaStatv {
            qs_version: FS_QSTATV_VERSION1,
            ..Default::default()
        };
        match self.quotactl(dir, Q_XGETQSTATV, 0, (&raw mut stat).cast()) {
            Ok(()) => {
                let both = FS_QUOTA_PDQ_ACCT | FS_QUOTA_PDQ_ENFD;
                Ok(stat.qs_flags & both == both)
            }
            // No quota support in this filesystem, or quota off.
            Err(
                Errno::ENOSYS
                | Errno::ENOTTY
                | Errno::EINVAL
                | Errno::ENOTBLK
                | Errno::ENODEV
                | Errno::ESRCH
                | Errno::EOPNOTSUPP,
            ) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn get(&self, dir: &Path, id: u32) -> Result<ProjectUsage, Errno> {
        // SAFETY: `dqblk` is plain integers; all-zero is a valid value.
        let mut dq: libc::dqblk = unsafe { std::mem::zeroed() };
        match self.quotactl(dir, libc::Q_GETQUOTA, id, (&raw mut dq).cast()) {
            Ok(()) => Ok(ProjectUsage {
                used_bytes: dq.dqb_curspace,
                hard_limit_bytes: dq.dqb_bhardlimit.saturating_mul(QUOTA_BLOCK),
            }),
            // xfs has no dquot for a project that was never used.
            Err(Errno::ENOENT) => Ok(ProjectUsage::default()),
            Err(e) => Err(e),
        }
    }

    fn set_limit(&self, dir: &Path, id: u32, limit_bytes: u64) -> Result<(), Errno> {
        let blocks = limit_bytes.div_ceil(QUOTA_BLOCK);
        // SAFETY: as in `get`.
        let mut dq: libc::dqblk = unsafe { std::mem::zeroed() };
        dq.dqb_bhardlimit = blocks;
        dq.dqb_bsoftlimit = blocks;
        dq.dqb_valid = libc::QIF_LIMITS;
        self.quotactl(dir, libc::Q_SETQUOTA, id, (&raw mut dq).cast())
    }

    fn project_of(&self, fd: BorrowedFd<'_>) -> Result<u32, Errno> {
        let mut attr = FsXattr::default();
        // SAFETY: `fd` is open; the ioctl writes one `fsxattr`, which `attr` is.
        unsafe { fs_ioc_fsgetxattr(fd.as_raw_fd(), &mut attr) }?;
        Ok(attr.fsx_projid)
    }

    fn set_project(&self, fd: BorrowedFd<'_>, id: u32, inherit: bool) -> Result<(), Errno> {
        let mut attr = FsXattr::default();
        // SAFETY: as in `project_of`.
        unsafe { fs_ioc_fsgetxattr(fd.as_raw_fd(), &mut attr) }?;
        attr.fsx_projid = id;
        if inherit && id != 0 {
            attr.fsx_xflags |= FS_XFLAG_PROJINHERIT;
        } else {
            attr.fsx_xflags &= !FS_XFLAG_PROJINHERIT;
        }
        // SAFETY: `fd` is open; the ioctl reads one `fsxattr` from `attr`, which is live.
        unsafe { fs_ioc_fssetxattr(fd.as_raw_fd(), &attr) }?;
        Ok(())
    }
}

/// What [`set_project_tree`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TreeOutcome {
    /// Files and directories whose project id was set.
    pub set: usize,
    /// Entries where it failed (the first error is in `first_error`).
    pub failed: usize,
    /// The first failure: the entry's name and the error.
    pub first_error: Option<(String, Errno)>,
    /// The error setting the root itself, which makes the whole operation fail.
    pub root_error: Option<Errno>,
}

/// Sets project `id` on `root` and every directory and regular file below it (directories get
/// `FS_XFLAG_PROJINHERIT`); id 0 clears both. Symlinks and special files are left alone (a
/// symlink's few bytes stay with its previous project); other filesystems below are skipped.
pub(crate) fn set_project_tree(
    quota: &dyn ProjectQuota,
    root: &Path,
    id: u32,
) -> Result<TreeOutcome, WalkError> {
    let mut outcome = TreeOutcome::default();
    let mut first = true;
    walk(root, &mut |entry| {
        let is_root = std::mem::replace(&mut first, false);
        let kind = entry.kind();
        if kind != SFlag::S_IFDIR && kind != SFlag::S_IFREG {
            return;
        }
        let result = set_one(quota, entry.parent, entry.name, entry.stat, id, kind);
        match result {
            Ok(()) => outcome.set += 1,
            Err(e) => {
                outcome.failed += 1;
                if is_root {
                    outcome.root_error = Some(e);
                }
                if outcome.first_error.is_none() {
                    let name = entry.name.to_string_lossy().into_owned();
                    outcome.first_error = Some((name, e));
                }
            }
        }
    })?;
    Ok(outcome)
}

/// Opens one entry (never following a symlink, never blocking on a fifo) and sets its project.
fn set_one(
    quota: &dyn ProjectQuota,
    parent: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    stat: &nix::sys::stat::FileStat,
    id: u32,
    kind: SFlag,
) -> Result<(), Errno> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // Removed or replaced by a symlink since the walk saw it.
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(()),
        Err(e) => return Err(e),
    };
    let now = fstat(&fd)?;
    if (now.st_dev, now.st_ino) != (stat.st_dev, stat.st_ino) {
        // Replaced since the walk saw it: whatever is there now was created under the
        // directory's inherited project already.
        return Ok(());
    }
    quota.set_project(fd.as_fd(), id, kind == SFlag::S_IFDIR)
}
