//! The per-entry half of the unpacker: path checks, whiteout conversion, and creating each
//! entry relative to the layer directory's descriptor (see the parent module for the rules).

use std::{
    collections::HashSet,
    ffi::OsStr,
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use nix::{
    errno::Errno,
    fcntl::{AtFlags, OFlag, openat},
    sys::{
        stat::{
            FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, makedev, mknodat,
            utimensat,
        },
        time::TimeSpec,
    },
    unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat},
};
use tracing::{debug, warn};

use super::{UnpackError, UnpackOptions, read_error};
use crate::image::fsat::{self, Beneath, ParentError};

/// Splits a tar path into its components: empty and `.` components dropped (so a leading `/` is
/// relative), `..` refused.
pub(super) fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut out = Vec::new();
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("its path has a `..` component"),
            _ if component.contains(&0) => return Err("its path has a NUL byte"),
            _ => out.push(component),
        }
    }
    Ok(out)
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// What a whiteout marker asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Whiteout<'a> {
    /// Not a marker.
    None,
    /// Hide `name` of lower layers.
    Remove(&'a [u8]),
    /// Hide every lower entry of the directory.
    Opaque,
    /// AUFS metadata (`.wh..wh.plnk`, ...): dropped.
    Ignore,
}

pub(super) fn whiteout(name: &[u8]) -> Whiteout<'_> {
    if name == OPAQUE {
        Whiteout::Opaque
    } else if name.starts_with(b".wh..wh.") {
        Whiteout::Ignore
    } else if let Some(target) = name.strip_prefix(WHITEOUT) {
        Whiteout::Remove(target)
    } else {
        Whiteout::None
    }
}

/// Which xattrs of a layer are restored.
pub(super) fn xattr_allowed(key: &str) -> bool {
    key.starts_with("user.")
        || (key.starts_with("trusted.") && !key.starts_with("trusted.overlay."))
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

pub(super) struct Unpacker<'o> {
    tree: Beneath,
    options: &'o UnpackOptions,
    /// Non-directory entries created so far (hard-link targets must be among them).
    created: HashSet<Vec<u8>>,
    /// Directories whose mtime is set once everything is in place.
    dir_mtimes: Vec<(Vec<u8>, TimeSpec)>,
    pub(super) entries: u64,
    pub(super) whiteouts: u64,
    /// Stream offset just past the last entry's data (where the end marker must be).
    pub(super) end: u64,
    last: Option<String>,
    skipped_xattrs: u64,
    buffer: Vec<u8>,
}

impl<'o> Unpacker<'o> {
    pub(super) fn new(root: OwnedFd, options: &'o UnpackOptions) -> Self {
        Self {
            tree: Beneath::new(root),
            options,
            created: HashSet::new(),
            dir_mtimes: Vec::new(),
            entries: 0,
            whiteouts: 0,
            end: 0,
            last: None,
            skipped_xattrs: 0,
            buffer: vec![0; 128 << 10],
        }
    }

    pub(super) fn last_entry_name(&self) -> String {
        match &self.last {
            Some(name) => format!("entry {name:?}"),
            None => "the start".to_string(),
        }
    }

    pub(super) fn run<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<(), UnpackError> {
        let entries = archive
            .entries()
            .map_err(|e| read_error(e, "the start", self.options))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                let at = format!("after {}", self.last_entry_name());
                read_error(e, &at, self.options)
            })?;
            self.entry(&mut entry)?;
        }
        self.finish_dirs()?;
        if self.skipped_xattrs > 0 {
            warn!(
                count = self.skipped_xattrs,
                "layer xattrs outside user.* and trusted.* (or trusted.overlay.*) were not restored"
            );
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        let disk_size = if kind.is_gnu_sparse() {
            entry.header().entry_size().unwrap_or(0)
        } else {
            entry.size()
        };
        self.end = entry.raw_file_position() + disk_size.div_ceil(512) * 512;
        self.last = Some(shown.clone());
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        self.entries += 1;
        if self.entries > self.options.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.options.max_entries,
                entry: shown,
            });
        }
        if self.end > self.options.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.options.max_bytes,
                at: format!("entry {shown:?} of {} bytes", entry.size()),
            });
        }
        let hostile = |reason: &str| UnpackError::Hostile {
            entry: shown.clone(),
            reason: reason.to_string(),
        };
        let comps = components(&raw_path).map_err(hostile)?;
        let meta = self.meta(entry, &shown)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            // the layer root itself ("./")
            if !kind.is_dir() {
                return Err(hostile("a non-directory entry for the layer root"));
            }
            let root = self
                .tree
                .root()
                .try_clone_to_owned()
                .map_err(|e| self.create_err(&shown, "dup", io_errno(&e)))?;
            self.apply_meta(root.as_fd(), &meta, &shown)?;
            self.dir_mtimes.push((Vec::new(), meta.mtime));
            return Ok(());
        };
        let parent = self.open_parent(parent_comps, &shown)?;
        let key = comps.join(&b'/');
        match whiteout(name) {
            Whiteout::None => {}
            Whiteout::Ignore => return Ok(()),
            Whiteout::Opaque => {
                fsat::fset_xattr(parent.as_fd(), "trusted.overlay.opaque", b"y")
                    .map_err(|e| self.create_err(&shown, "setting trusted.overlay.opaque", e))?;
                self.whiteouts += 1;
                return Ok(());
            }
            Whiteout::Remove(target) => {
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(hostile("a whiteout without a valid name to remove"));
                }
                fsat::remove_existing(parent.as_fd(), target).map_err(|e| {
                    self.create_err(&shown, "replacing an entry with a whiteout", e)
                })?;
                mknodat(
                    parent.as_fd(),
                    OsStr::from_bytes(target),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    makedev(0, 0),
                )
                .map_err(|e| {
                    self.create_err(&shown, "creating the overlay whiteout (char 0:0)", e)
                })?;
                let mut removed = parent_comps.join(&b'/');
                if !removed.is_empty() {
                    removed.push(b'/');
                }
                removed.extend_from_slice(target);
                self.created.remove(&removed);
                self.whiteouts += 1;
                return Ok(());
            }
        }
        let name_os = OsStr::from_bytes(name);
        if kind.is_dir() {
            self.make_dir(parent.as_fd(), name, &shown)?;
            let dir = openat(
                parent.as_fd(),
                name_os,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.create_err(&shown, "opening the directory", e))?;
            self.apply_meta(dir.as_fd(), &meta, &shown)?;
            self.dir_mtimes.push((key, meta.mtime));
            return Ok(());
        }
        if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            self.write_file(parent.as_fd(), name, entry, &meta, &shown)?;
        } else if kind.is_symlink() {
            let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
                return Err(hostile("a symlink without a target"));
            };
            if target.is_empty() {
                return Err(hostile("a symlink without a target"));
            }
            self.replace(parent.as_fd(), name, &shown)?;
            symlinkat(OsStr::from_bytes(&target), parent.as_fd(), name_os)
                .map_err(|e| self.create_err(&shown, "symlinkat", e))?;
            self.link_meta(parent.as_fd(), name, &meta, &shown)?;
        } else if kind.is_hard_link() {
            self.hard_link(parent.as_fd(), name, entry, &shown)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let (sflag, what) = if kind.is_fifo() {
                (SFlag::S_IFIFO, "fifo")
            } else if kind.is_character_special() {
                (SFlag::S_IFCHR, "char")
            } else {
                (SFlag::S_IFBLK, "block")
            };
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            if !kind.is_fifo() && !self.options.allow_devices {
                return Err(hostile(&format!(
                    "a {what} device node ({major}:{minor}); devices are not allowed in layers"
                )));
            }
            self.replace(parent.as_fd(), name, &shown)?;
            let dev = if kind.is_fifo() {
                0
            } else {
                makedev(major as u64, minor as u64)
            };
            mknodat(parent.as_fd(), name_os, sflag, Mode::empty(), dev)
                .map_err(|e| self.create_err(&shown, "mknodat", e))?;
            fchmodat(
                parent.as_fd(),
                name_os,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|e| {
                if e == Errno::EOPNOTSUPP {
                    fchmodat(
                        parent.as_fd(),
                        name_os,
                        Mode::from_bits_truncate(meta.mode),
                        FchmodatFlags::FollowSymlink,
                    )
                } else {
                    Err(e)
                }
            })
            .map_err(|e| self.create_err(&shown, "fchmodat", e))?;
            self.link_meta(parent.as_fd(), name, &meta, &shown)?;
        } else {
            warn!(entry = %shown, kind = ?kind, "skipping a layer entry of an unsupported type");
            return Ok(());
        }
        self.created.insert(key);
        Ok(())
    }

    fn create_err(&self, entry: &str, op: &'static str, source: Errno) -> UnpackError {
        UnpackError::Create {
            entry: entry.to_string(),
            op,
            source,
        }
    }

    fn open_parent(&mut self, comps: &[&[u8]], shown: &str) -> Result<OwnedFd, UnpackError> {
        self.tree.open_dir(comps, true).map_err(|e| match e {
            ParentError::Symlink(at) => UnpackError::Hostile {
                entry: shown.to_string(),
                reason: format!("its parent path goes through the symlink {at:?}"),
            },
            ParentError::Escapes => UnpackError::Hostile {
                entry: shown.to_string(),
                reason: "its parent path leaves the layer directory".to_string(),
            },
            ParentError::NotDir(at) => UnpackError::Hostile {
                entry: shown.to_string(),
                reason: format!("its parent {at:?} is not a directory"),
            },
            ParentError::Sys(errno) => {
                self.create_err(shown, "opening the parent directory", errno)
            }
        })
    }

    fn meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Meta, UnpackError> {
        let header = entry.header();
        let bad = |field: &str, e: io::Error| UnpackError::Hostile {
            entry: shown.to_string(),
            reason: format!("unreadable {field} in its header: {e}"),
        };
        // an all-NUL (empty) numeric field reads as 0, as GNU tar does
        let old = header.as_old();
        let mode = lenient(header.mode().map(u64::from), &old.mode).map_err(|e| bad("mode", e))?
            as u32
            & 0o7777;
        let uid = lenient(header.uid(), &old.uid).map_err(|e| bad("uid", e))?;
        let gid = lenient(header.gid(), &old.gid).map_err(|e| bad("gid", e))?;
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(bad(
                "owner",
                io::Error::other(format!("{uid}:{gid} out of range")),
            ));
        };
        let mut mtime = TimeSpec::new(header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64, 0);
        let mut xattrs = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if xattr_allowed(name) {
                        xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                    } else {
                        debug!(entry = %shown, xattr = name, "xattr not restored");
                        self.skipped_xattrs += 1;
                    }
                } else if key == "mtime"
                    && let Some(t) = ext.value().ok().and_then(parse_pax_time)
                {
                    mtime = t;
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Owner, then mode (chown clears setuid), then xattrs, on an open directory or file.
    fn apply_meta(&self, fd: BorrowedFd<'_>, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| self.create_err(shown, "fchown", e))?;
        fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| self.create_err(shown, "fchmod", e))?;
        for (key, value) in &meta.xattrs {
            match fsat::fset_xattr(fd, key, value) {
                Ok(()) => {}
                Err(Errno::EOPNOTSUPP | Errno::EPERM) => {
                    warn!(entry = %shown, xattr = %key, "xattr not supported here; not restored");
                }
                Err(e) => return Err(self.create_err(shown, "fsetxattr", e)),
            }
        }
        Ok(())
    }

    /// Owner, xattrs and mtime of a symlink or node, without following it.
    fn link_meta(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let name_os = OsStr::from_bytes(name);
        fchownat(
            parent,
            name_os,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.create_err(shown, "lchown", e))?;
        for (key, value) in &meta.xattrs {
            if let Err(e) = fsat::symlink_set_xattr(parent, name, key, value) {
                warn!(entry = %shown, xattr = %key, error = %e, "xattr on a link or node not restored");
            }
        }
        utimensat(
            parent,
            name_os,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.create_err(shown, "utimensat", e))
    }

    fn make_dir(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let name_os = OsStr::from_bytes(name);
        match nix::sys::stat::mkdirat(parent, name_os, Mode::from_bits_truncate(0o700)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => match fsat::kind_at(parent, name) {
                Ok(Some(libc::S_IFDIR)) => Ok(()),
                _ => {
                    self.replace(parent, name, shown)?;
                    nix::sys::stat::mkdirat(parent, name_os, Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.create_err(shown, "mkdirat", e))
                }
            },
            Err(e) => Err(self.create_err(shown, "mkdirat", e)),
        }
    }

    fn replace(&self, parent: BorrowedFd<'_>, name: &[u8], shown: &str) -> Result<(), UnpackError> {
        fsat::remove_existing(parent, name).map_err(|e| match e {
            Errno::ENOTEMPTY => UnpackError::Hostile {
                entry: shown.to_string(),
                reason: "it replaces a non-empty directory of the same layer".to_string(),
            },
            e => self.create_err(shown, "removing the entry it replaces", e),
        })
    }

    fn write_file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let name_os = OsStr::from_bytes(name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(parent, name_os, flags, Mode::from_bits_truncate(0o600)) {
            Err(Errno::EEXIST) => {
                self.replace(parent, name, shown)?;
                openat(parent, name_os, flags, Mode::from_bits_truncate(0o600))
            }
            other => other,
        }
        .map_err(|e| self.create_err(shown, "creating the file", e))?;
        let mut file = File::from(fd);
        let size = entry.size();
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e, &format!("entry {shown:?}"), self.options)),
            };
            file.write_all(&self.buffer[..n])
                .map_err(|e| self.create_err(shown, "writing the file", io_errno(&e)))?;
            written += n as u64;
        }
        if written < size {
            return Err(UnpackError::Truncated {
                at: format!("entry {shown:?} has {written} of its {size} bytes"),
            });
        }
        self.apply_meta(file.as_fd(), meta, shown)?;
        nix::sys::stat::futimens(file.as_fd(), &meta.mtime, &meta.mtime)
            .map_err(|e| self.create_err(shown, "futimens", e))
    }

    fn hard_link<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let hostile = |reason: String| UnpackError::Hostile {
            entry: shown.to_string(),
            reason,
        };
        let Some(raw_target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
            return Err(hostile("a hard link without a target".to_string()));
        };
        let target_shown = String::from_utf8_lossy(&raw_target).into_owned();
        let target = components(&raw_target)
            .map_err(|reason| hostile(format!("hard link target {target_shown:?}: {reason}")))?;
        let key = target.join(&b'/');
        if target.is_empty() || !self.created.contains(&key) {
            return Err(hostile(format!(
                "a hard link to {target_shown:?}, which is not an earlier file of this layer"
            )));
        }
        let Some((target_name, target_parent)) = target.split_last() else {
            return Err(hostile("a hard link without a target".to_string()));
        };
        let target_dir = self.open_parent(target_parent, shown)?;
        self.replace(parent, name, shown)?;
        linkat(
            target_dir.as_fd(),
            OsStr::from_bytes(target_name),
            parent,
            OsStr::from_bytes(name),
            AtFlags::empty(),
        )
        .map_err(|e| self.create_err(shown, "linkat", e))
    }

    /// Sets directory mtimes last (creating children changed them).
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dir_mtimes);
        for (path, mtime) in dirs.iter().rev() {
            let comps: Vec<&[u8]> = path
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty())
                .collect();
            let shown = String::from_utf8_lossy(path).into_owned();
            // a directory that a later entry of the layer replaced (by a file, a symlink or a
            // whiteout) keeps no mtime to set; never follow what replaced it
            let Ok(dir) = self.tree.open_dir(&comps, false) else {
                debug!(entry = %shown, "directory replaced later in the layer; mtime not set");
                continue;
            };
            nix::sys::stat::futimens(dir.as_fd(), mtime, mtime)
                .map_err(|e| self.create_err(&shown, "setting the directory mtime", e))?;
        }
        Ok(())
    }
}

fn io_errno(err: &io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// A numeric header field, or 0 when the field is empty (all NUL or spaces).
fn lenient(value: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match value {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

/// PAX `mtime`: `seconds[.fraction]`.
pub(super) fn parse_pax_time(text: &str) -> Option<TimeSpec> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some(TimeSpec::new(secs, if secs < 0 { 0 } else { nanos }))
}
