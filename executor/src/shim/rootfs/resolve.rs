//! Opening paths *inside* a directory tree that may contain hostile symlinks.
//!
//! Every lookup goes through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..` and
//! absolute symlinks are clamped at the given root, and `/proc` magic links are refused, so a
//! symlink planted by a workload can redirect a lookup only to another place under the same
//! root. Missing components are created one at a time in the directory the previous lookup
//! returned, then looked up again the same way. The result is an `O_PATH` descriptor: mount
//! onto it (`/proc/self/fd/N`, or `move_mount`) and the mount lands where the lookup ended.
//!
//! Used by the container init (mount destinations inside the new root) and by the filesystem
//! isolator (volume sources inside the sandbox, mount points on the host).

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::sys;

/// What to create when the looked-up path does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing path is `ENOENT`.
    Nothing,
    /// Directories for every missing component (mode 0755).
    Dir,
    /// Directories for the missing parents, an empty regular file (mode 0644) for the last
    /// component (a mount point for a file bind mount).
    File,
}

const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// Opens a directory to be used as a root for [`open_in_root`] (`O_PATH | O_DIRECTORY`).
pub fn open_root(path: &Path) -> Result<OwnedFd, Errno> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    nix::fcntl::open(
        c.as_c_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The components of `path` relative to a root: `/` and `.` are dropped, `..` is refused
/// (`EINVAL`) so that what is created is exactly what the path names.
pub fn relative_components(path: &Path) -> Result<Vec<&OsStr>, Errno> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return Err(Errno::EINVAL),
        }
    }
    Ok(out)
}

fn lookup(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let bytes = if rel.as_os_str().is_empty() {
        b".".as_slice()
    } else {
        rel.as_os_str().as_bytes()
    };
    let c = CString::new(bytes).map_err(|_| Errno::EINVAL)?;
    sys::openat2(root, &c, libc::O_PATH, 0, RESOLVE)
}

/// Opens `path` (absolute or relative, always interpreted inside `root`) as an `O_PATH`
/// descriptor, creating what is missing as `create` says. The lookup never leaves `root`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, create: Create) -> Result<OwnedFd, Errno> {
    let comps = relative_components(path)?;
    let full: PathBuf = comps.iter().collect();
    match lookup(root, &full) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        Err(e) => return Err(e),
    }
    // Walk prefix by prefix; each prefix is looked up from the root again, so a symlink met
    // on the way is followed (inside the root) exactly as the full lookup would.
    let mut parent = lookup(root, Path::new(""))?;
    let mut prefix = PathBuf::new();
    for (i, name) in comps.iter().enumerate() {
        prefix.push(name);
        let fd = match lookup(root, &prefix) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let last = i + 1 == comps.len();
                let made = if last && create == Create::File {
                    make_file(parent.as_fd(), name)
                } else {
                    nix::sys::stat::mkdirat(parent.as_fd(), *name, Mode::from_bits_truncate(0o755))
                };
                match made {
                    // EEXIST: somebody else made it (or it is a dangling symlink, which the
                    // lookup below reports as ENOENT).
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                lookup(root, &prefix)?
            }
            Err(e) => return Err(e),
        };
        parent = fd;
    }
    Ok(parent)
}

fn make_file(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    // O_EXCL never follows a symlink in the last component; O_NOFOLLOW says so again.
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map(drop)
}

/// The absolute path a descriptor refers to, as the kernel names it (`/proc/self/fd/N`).
pub fn fd_path(fd: BorrowedFd<'_>) -> Result<PathBuf, Errno> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::fcntl::readlink(link.as_str()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn root_of(d: &tempfile::TempDir) -> OwnedFd {
        open_root(d.path()).unwrap()
    }

    #[test]
    fn components_refuse_dotdot() {
        assert_eq!(
            relative_components(Path::new("/a/./b/")).unwrap(),
            vec![OsStr::new("a"), OsStr::new("b")]
        );
        assert!(relative_components(Path::new("/")).unwrap().is_empty());
        assert_eq!(
            relative_components(Path::new("/a/../b")),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn creates_missing_dirs_and_files_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = root_of(&d);
        let fd = open_in_root(root.as_fd(), Path::new("/a/b/c"), Create::Dir).unwrap();
        assert_eq!(fd_path(fd.as_fd()).unwrap(), d.path().join("a/b/c"));
        assert!(d.path().join("a/b/c").is_dir());
        let fd = open_in_root(root.as_fd(), Path::new("a/f"), Create::File).unwrap();
        assert_eq!(fd_path(fd.as_fd()).unwrap(), d.path().join("a/f"));
        assert!(d.path().join("a/f").is_file());
        // Existing paths are just opened.
        open_in_root(root.as_fd(), Path::new("/a/b"), Create::Nothing).unwrap();
        assert_eq!(
            open_in_root(root.as_fd(), Path::new("/nope"), Create::Nothing).unwrap_err(),
            Errno::ENOENT
        );
        // The root itself.
        let fd = open_in_root(root.as_fd(), Path::new("/"), Create::Nothing).unwrap();
        assert_eq!(fd_path(fd.as_fd()).unwrap(), d.path());
    }

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = root_of(&d);
        std::fs::create_dir(d.path().join("vol")).unwrap();
        // Absolute and relative symlinks pointing outside.
        symlink(outside.path(), d.path().join("vol/abs")).unwrap();
        symlink("../../../../../..", d.path().join("vol/rel")).unwrap();
        // Followed inside the root, where the target does not exist (yet): refused.
        assert_eq!(
            open_in_root(root.as_fd(), Path::new("/vol/abs/x"), Create::Dir).unwrap_err(),
            Errno::ENOENT
        );
        // Once it exists inside the root, the lookup lands there.
        let inside = d.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let fd = open_in_root(root.as_fd(), Path::new("/vol/abs/x/y"), Create::Dir).unwrap();
        assert_eq!(fd_path(fd.as_fd()).unwrap(), inside.join("x/y"));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let fd = open_in_root(root.as_fd(), Path::new("/vol/rel/z"), Create::File).unwrap();
        assert_eq!(fd_path(fd.as_fd()).unwrap(), d.path().join("z"));
        // Magic links are refused (a root with a procfs under it: the real one).
        let real_root = open_root(Path::new("/")).unwrap();
        assert_eq!(
            open_in_root(
                real_root.as_fd(),
                Path::new("/proc/self/root/etc"),
                Create::Nothing
            )
            .unwrap_err(),
            Errno::ELOOP
        );
    }

    #[test]
    fn a_dangling_symlink_is_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let root = root_of(&d);
        symlink("/missing/target", d.path().join("link")).unwrap();
        // Followed inside the root, where its target is missing: not created, not replaced.
        let err = open_in_root(root.as_fd(), Path::new("/link/x"), Create::Dir).unwrap_err();
        assert_eq!(err, Errno::ENOENT);
        assert!(d.path().join("link").is_symlink());
        assert!(!d.path().join("missing").exists());
    }
}
