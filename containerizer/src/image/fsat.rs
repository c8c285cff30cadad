//! Directory-relative filesystem primitives for the layer unpacker: every path is resolved from
//! the layer directory's descriptor, never through a symlink and never above the layer root.
//!
//! Parent directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`; missing ones are created component by component
//! with `mkdirat` + `openat(O_NOFOLLOW | O_DIRECTORY)`. The final component of an entry is created
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` (files), `mkdirat`, `symlinkat`, `linkat` or `mknodat`
//! relative to the parent's descriptor, so no step ever follows a link the layer planted.

use std::{
    ffi::{CString, OsStr},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2},
    sys::stat::{Mode, fstatat},
    unistd::{UnlinkatFlags, unlinkat},
};

/// Why a parent path could not be opened.
#[derive(Debug)]
pub enum ParentError {
    /// A component is a symlink (`component` is the path up to and including it).
    Symlink(String),
    /// Resolution would leave the layer directory.
    Escapes,
    /// A component exists and is not a directory.
    NotDir(String),
    /// Any other failure.
    Sys(Errno),
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

/// A directory tree rooted at one descriptor (the layer directory).
pub struct Beneath {
    root: OwnedFd,
    /// `openat2` is missing (ENOSYS): always walk component by component.
    walk_only: bool,
}

impl Beneath {
    /// Uses `root` (an open directory) as the root.
    pub fn new(root: OwnedFd) -> Self {
        Self {
            root,
            walk_only: false,
        }
    }

    /// The root's descriptor.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory `components` (relative to the root), creating missing directories
    /// (mode 0755) when `create` is set.
    pub fn open_dir(&mut self, components: &[&[u8]], create: bool) -> Result<OwnedFd, ParentError> {
        if components.is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|e| ParentError::Sys(io_errno(&e)));
        }
        if !self.walk_only {
            let path = components.join(&b'/');
            let how = OpenHow::new().flags(dir_flags()).resolve(beneath());
            match openat2(self.root.as_fd(), OsStr::from_bytes(&path), how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::ENOSYS) => self.walk_only = true,
                // which component is at fault: the walk below names it
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {}
                Err(Errno::EXDEV) => return Err(ParentError::Escapes),
                Err(errno) => return Err(ParentError::Sys(errno)),
            }
        }
        self.walk(components, create)
    }

    fn walk(&self, components: &[&[u8]], create: bool) -> Result<OwnedFd, ParentError> {
        let mut current = self
            .root
            .try_clone()
            .map_err(|e| ParentError::Sys(io_errno(&e)))?;
        for (i, component) in components.iter().enumerate() {
            let name = OsStr::from_bytes(component);
            let prefix = || String::from_utf8_lossy(&components[..=i].join(&b'/')).into_owned();
            let opened = match openat(current.as_fd(), name, dir_flags(), Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(
                        current.as_fd(),
                        name,
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => return Err(ParentError::Sys(errno)),
                    }
                    openat(current.as_fd(), name, dir_flags(), Mode::empty())
                }
                other => other,
            };
            current = match opened {
                Ok(fd) => fd,
                Err(Errno::ELOOP) => return Err(ParentError::Symlink(prefix())),
                Err(Errno::ENOTDIR) => {
                    // O_NOFOLLOW|O_DIRECTORY on a symlink may report ENOTDIR: tell them apart
                    return Err(if is_symlink_at(current.as_fd(), component) {
                        ParentError::Symlink(prefix())
                    } else {
                        ParentError::NotDir(prefix())
                    });
                }
                Err(errno) => return Err(ParentError::Sys(errno)),
            };
        }
        Ok(current)
    }
}

fn io_errno(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// Whether `name` in `dir` is a symlink (not following it).
pub fn is_symlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    fstatat(
        dir,
        OsStr::from_bytes(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

/// What is at `name` in `dir` (not following symlinks), if anything.
pub fn kind_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<libc::mode_t>, Errno> {
    match fstatat(
        dir,
        OsStr::from_bytes(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st.st_mode & libc::S_IFMT)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno),
    }
}

/// Removes whatever is at `name` in `dir` so a new entry can take its place: non-directories are
/// unlinked, directories only when empty (`ENOTEMPTY` otherwise). Nothing there is fine.
pub fn remove_existing(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let name = OsStr::from_bytes(name);
    match kind_at(dir, name.as_bytes())? {
        None => Ok(()),
        Some(libc::S_IFDIR) => unlinkat(dir, name, UnlinkatFlags::RemoveDir),
        Some(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir),
    }
}

/// Sets extended attribute `key` on the object open as `fd`.
pub fn fset_xattr(fd: BorrowedFd<'_>, key: &str, value: &[u8]) -> Result<(), Errno> {
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `fd` is a valid open descriptor for the duration of the call; `key` is a
    // NUL-terminated string and `value` a live slice whose pointer and length are passed together.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Sets extended attribute `key` on the symlink `name` in `dir` itself (not its target), through
/// `/proc/self/fd/<dir>/<name>` with `lsetxattr`: the directory is reached through its open
/// descriptor and the last component is not followed.
pub fn symlink_set_xattr(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &str,
    value: &[u8],
) -> Result<(), Errno> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `path` and `key` are NUL-terminated strings that outlive the call; `value` is a
    // live slice whose pointer and length are passed together.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Flushes the filesystem holding `fd` (one `syncfs` instead of an fsync per unpacked file).
pub fn syncfs(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(fd.as_raw_fd()) };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn open_root(path: &std::path::Path) -> Beneath {
        let fd = openat(nix::fcntl::AT_FDCWD, path, dir_flags(), Mode::empty()).unwrap();
        Beneath::new(fd)
    }

    #[test]
    fn opens_creates_and_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        symlink("/etc", root.join("link")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        let mut beneath = open_root(&root);

        beneath.open_dir(&[b"a", b"b"], true).unwrap();
        assert!(root.join("a/b").is_dir());
        assert!(matches!(
            beneath.open_dir(&[b"c"], false),
            Err(ParentError::Sys(Errno::ENOENT))
        ));
        match beneath.open_dir(&[b"link", b"ssl"], true) {
            Err(ParentError::Symlink(at)) => assert_eq!(at, "link"),
            other => panic!("{:?}", other.map(drop)),
        }
        match beneath.open_dir(&[b"file", b"x"], true) {
            Err(ParentError::NotDir(at)) => assert_eq!(at, "file"),
            other => panic!("{:?}", other.map(drop)),
        }
        // the component walk reports the same things
        beneath.walk_only = true;
        assert!(beneath.open_dir(&[b"a", b"link", b"x"], true).is_ok());
        assert!(root.join("a/link/x").is_dir(), "walk creates plain dirs");
        match beneath.open_dir(&[b"link", b"ssl"], true) {
            Err(ParentError::Symlink(at)) => assert_eq!(at, "link"),
            other => panic!("{:?}", other.map(drop)),
        }
        assert!(!std::path::Path::new("/etc/ssl/x").exists());
    }

    #[test]
    fn replacing_entries() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        std::fs::create_dir_all(tmp.path().join("full/x")).unwrap();
        symlink("/etc/passwd", tmp.path().join("link")).unwrap();
        let beneath = open_root(tmp.path());
        let root = beneath.root();
        remove_existing(root, b"empty").unwrap();
        remove_existing(root, b"link").unwrap();
        remove_existing(root, b"missing").unwrap();
        assert_eq!(remove_existing(root, b"full"), Err(Errno::ENOTEMPTY));
        assert!(std::path::Path::new("/etc/passwd").exists());
        assert_eq!(kind_at(root, b"full").unwrap(), Some(libc::S_IFDIR));
        assert_eq!(kind_at(root, b"link").unwrap(), None);
    }
}
