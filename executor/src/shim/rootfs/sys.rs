//! Thin wrappers over the mount and path-resolution system calls that libc has no functions
//! for (`openat2`, `open_tree`, `move_mount`, `mount_setattr`). Each returns an owned
//! descriptor or the raw errno; callers add the path to the error.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `open_tree`: clone the mount (tree) instead of opening it in place.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount`: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// `move_mount`: the target is the descriptor itself.
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `mount_setattr` attribute: read-only.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `mount_setattr` attribute: ignore set-user/group-id bits.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `mount_setattr` attribute: no device nodes.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// `mount_setattr` attribute: no execution.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// `mount_setattr`: mask of the access-time mode (one of the three values below).
pub const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
/// `mount_setattr` access-time mode: relatime.
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
/// `mount_setattr` access-time mode: noatime.
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
/// `mount_setattr` access-time mode: strictatime.
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
/// `mount_setattr` attribute: no directory access times.
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn owned(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the system call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `openat2(dir, path, {flags, mode, resolve})`. Retries `EAGAIN`, which the kernel returns
/// for `RESOLVE_IN_ROOT` lookups that raced with a rename elsewhere in the tree.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    let mut tries = 0;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a valid open_how of the size passed;
        // both outlive the call. The kernel only reads them.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match owned(ret) {
            Err(Errno::EAGAIN | Errno::EINTR) if tries < 64 => tries += 1,
            other => return other,
        }
    }
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE)`: a detached copy of the mount at `path`
/// (and of every mount below it when `recursive`), like the source side of a bind mount.
pub fn clone_tree(path: &CStr, recursive: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `path` is NUL-terminated and outlives the call; the kernel only reads it.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | AT_EMPTY_PATH)`: a detached copy of the mount tree at
/// the place `fd` refers to.
pub fn clone_tree_at(fd: BorrowedFd<'_>, recursive: bool) -> Result<OwnedFd, Errno> {
    let mut flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the empty path is a static NUL-terminated string; `fd` is a live descriptor.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) })
}

/// `move_mount(tree, "", target, "", F_EMPTY_PATH | T_EMPTY_PATH)`: attaches the detached
/// tree on top of whatever is mounted at `target`'s place.
pub fn move_mount(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: both descriptors are live; the empty paths are static NUL-terminated strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {set, clr, propagation})` on the
/// mount whose root `fd` refers to.
pub fn mount_setattr(
    fd: BorrowedFd<'_>,
    recursive: bool,
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `attr` is a valid mount_attr of the size passed and outlives the call; the
    // empty path is a static NUL-terminated string; `fd` is live.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The `/proc/self/fd/N` name of a descriptor: `mount(2)` onto it lands exactly where the
/// descriptor points, whatever the path it was opened by has become since.
pub fn fd_target(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
