//! Walking a sandbox: disk usage the way `du -sx` counts it, and the same walk for setting project
//! ids on every file.
//!
//! The walk is fd-based so that a workload racing it cannot redirect it outside the sandbox: every
//! entry is examined with `fstatat(AT_SYMLINK_NOFOLLOW)` relative to its parent directory's fd and
//! directories are entered with `openat(O_NOFOLLOW | O_DIRECTORY)`, then checked to be the inode
//! that was examined. Symlinks are never followed and entries on another device (mount points) are
//! skipped with everything below them. The walk is iterative (no recursion, so a deeply nested
//! tree cannot overflow the stack); the directory fds of the first [`KEEP_OPEN`] levels stay open,
//! deeper levels are left and re-entered through `..`, verifying that `..` is still the directory
//! the walk came from (a workload moving directories during the walk makes it fail with
//! [`WalkError::Moved`] rather than count the wrong tree).

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Directory levels whose fds stay open during a walk; deeper ones are re-entered through `..`.
const KEEP_OPEN: usize = 64;

/// A failed walk, naming the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// Opening a directory failed.
    #[error("cannot open directory {path}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// `stat` of an entry failed.
    #[error("cannot stat {path}")]
    Stat {
        /// The entry.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Listing a directory failed.
    #[error("cannot list directory {path}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// A directory was moved while the walk was below it.
    #[error("directory {path} was moved during the walk")]
    Moved {
        /// The directory whose `..` no longer led back.
        path: PathBuf,
    },
}

impl WalkError {
    /// The underlying OS error (`ESTALE` for a moved directory).
    pub fn errno(&self) -> Errno {
        match self {
            WalkError::Open { source, .. }
            | WalkError::Stat { source, .. }
            | WalkError::List { source, .. } => *source,
            WalkError::Moved { .. } => Errno::ESTALE,
        }
    }
}

/// One entry met by [`walk`]: its parent directory (as an fd), its name there and its `lstat`.
/// The root itself is visited first, as `.` of its own fd.
pub(crate) struct Entry<'a> {
    /// The directory holding the entry.
    pub parent: BorrowedFd<'a>,
    /// The entry's name in `parent`.
    pub name: &'a CStr,
    /// The entry's metadata (not following symlinks).
    pub stat: &'a FileStat,
}

impl Entry<'_> {
    /// The file type bits of the entry.
    pub fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits())
    }
}

/// One directory on the walk's stack.
struct Frame {
    /// Name in the parent (empty for the root).
    name: CString,
    dev: u64,
    ino: u64,
    /// The directory's fd; `None` while the walk is below it and it is deeper than [`KEEP_OPEN`].
    fd: Option<OwnedFd>,
    /// The entries not yet visited, in reverse order.
    pending: Vec<CString>,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The path of `name` below the frames on `stack`, for error messages.
fn path_of(root: &Path, stack: &[Frame], name: Option<&CStr>) -> PathBuf {
    let mut path = root.to_path_buf();
    for frame in stack.iter().skip(1) {
        path.push(std::ffi::OsStr::from_bytes(frame.name.to_bytes()));
    }
    if let Some(name) = name {
        path.push(std::ffi::OsStr::from_bytes(name.to_bytes()));
    }
    path
}

/// The names in the directory open as `fd`, without `.` and `..`.
fn list(fd: BorrowedFd<'_>) -> Result<Vec<CString>, Errno> {
    let mut dir = Dir::openat(fd, c".", dir_flags(), Mode::empty())?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    // Popped from the end: reverse so entries are visited in directory order.
    names.reverse();
    Ok(names)
}

/// Visits every entry below `root` (and `root` itself, first), depth first, without following
/// symlinks and without crossing into other filesystems. Entries that vanish during the walk are
/// skipped.
pub(crate) fn walk(root: &Path, visit: &mut dyn FnMut(&Entry<'_>)) -> Result<(), WalkError> {
    let root_fd =
        nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(|source| WalkError::Open {
            path: root.to_path_buf(),
            source,
        })?;
    let root_stat = fstat(&root_fd).map_err(|source| WalkError::Stat {
        path: root.to_path_buf(),
        source,
    })?;
    let device = root_stat.st_dev;
    visit(&Entry {
        parent: root_fd.as_fd(),
        name: c".",
        stat: &root_stat,
    });
    let pending = list(root_fd.as_fd()).map_err(|source| WalkError::List {
        path: root.to_path_buf(),
        source,
    })?;
    let mut stack = vec![Frame {
        name: CString::default(),
        dev: root_stat.st_dev,
        ino: root_stat.st_ino,
        fd: Some(root_fd),
        pending,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.pending.pop() else {
            // This directory is done: go back up.
            let done = stack.pop().expect("stack is not empty");
            if let Some(parent) = stack.last_mut()
                && parent.fd.is_none()
            {
                let from = done.fd.as_ref().expect("the current directory is open");
                let up = openat(from, c"..", dir_flags(), Mode::empty()).map_err(|source| {
                    WalkError::Open {
                        path: path_of(root, &stack, None),
                        source,
                    }
                })?;
                let st = fstat(&up).map_err(|source| WalkError::Stat {
                    path: path_of(root, &stack, None),
                    source,
                })?;
                let parent = stack.last_mut().expect("parent checked above");
                if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
                    return Err(WalkError::Moved {
                        path: path_of(root, &stack, None),
                    });
                }
                parent.fd = Some(up);
            }
            continue;
        };
        let cur = top.fd.take().expect("the current directory is open");
        match enter(root, &stack, cur.as_fd(), &name, device, visit)? {
            Step::Next => stack.last_mut().expect("not empty").fd = Some(cur),
            Step::Enter { fd, stat, pending } => {
                if stack.len() <= KEEP_OPEN {
                    stack.last_mut().expect("not empty").fd = Some(cur);
                }
                // Else `cur` closes here; it is re-entered through `..` when the subtree is done.
                stack.push(Frame {
                    name,
                    dev: stat.st_dev,
                    ino: stat.st_ino,
                    fd: Some(fd),
                    pending,
                });
            }
        }
    }
    Ok(())
}

/// What to do after visiting one entry.
enum Step {
    /// Go on with the next entry of the same directory.
    Next,
    /// Walk into this directory.
    Enter {
        fd: OwnedFd,
        stat: FileStat,
        pending: Vec<CString>,
    },
}

/// Examines and visits the entry `name` of the directory `cur` (at `stack`'s position).
fn enter(
    root: &Path,
    stack: &[Frame],
    cur: BorrowedFd<'_>,
    name: &CStr,
    device: u64,
    visit: &mut dyn FnMut(&Entry<'_>),
) -> Result<Step, WalkError> {
    let st = match fstatat(cur, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Step::Next),
        Err(source) => {
            return Err(WalkError::Stat {
                path: path_of(root, stack, Some(name)),
                source,
            });
        }
    };
    if st.st_dev != device {
        // A mount point: another filesystem's space is not the sandbox's.
        return Ok(Step::Next);
    }
    let is_dir = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR;
    if !is_dir {
        visit(&Entry {
            parent: cur,
            name,
            stat: &st,
        });
        return Ok(Step::Next);
    }
    let fd = match openat(cur, name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        // Removed or replaced (by a symlink or a file) since the stat.
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(Step::Next),
        Err(source) => {
            return Err(WalkError::Open {
                path: path_of(root, stack, Some(name)),
                source,
            });
        }
    };
    let stat = fstat(&fd).map_err(|source| WalkError::Stat {
        path: path_of(root, stack, Some(name)),
        source,
    })?;
    if (stat.st_dev, stat.st_ino) != (st.st_dev, st.st_ino) {
        // Replaced by another directory since the stat (or a mount appeared): skip it.
        return Ok(Step::Next);
    }
    visit(&Entry {
        parent: cur,
        name,
        stat: &stat,
    });
    let pending = list(fd.as_fd()).map_err(|source| WalkError::List {
        path: path_of(root, stack, Some(name)),
        source,
    })?;
    Ok(Step::Enter { fd, stat, pending })
}

/// Bytes allocated below `root` (`du -sx --block-size=1`): the sum of `st_blocks * 512` of every
/// entry including directories and `root` itself, each hard-linked inode counted once, symlinks
/// not followed (their own blocks counted), other filesystems skipped. Sparse files count only
/// their allocated blocks.
pub fn disk_usage(root: &Path) -> Result<u64, WalkError> {
    let mut seen = HashSet::new();
    let mut total: u64 = 0;
    walk(root, &mut |entry| {
        if entry.kind() != SFlag::S_IFDIR
            && entry.stat.st_nlink > 1
            && !seen.insert((entry.stat.st_dev, entry.stat.st_ino))
        {
            return;
        }
        let blocks = u64::try_from(entry.stat.st_blocks).unwrap_or(0);
        total = total.saturating_add(blocks.saturating_mul(512));
    })?;
    Ok(total)
}
