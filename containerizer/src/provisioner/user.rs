//! The user an image container runs as, from the image config's `User` (`user`, `uid`,
//! `user:group`, `uid:gid`, `user:gid`, `uid:group`) and the image's own `/etc/passwd` and
//! `/etc/group`, read from its unpacked layers (never from the host).
//!
//! The files are looked up as the overlay would show them: in the top-most layer that has them,
//! stopping at a whiteout or an opaque `/etc`. Each lookup stays inside its layer
//! (`openat2(RESOLVE_IN_ROOT)`: a symlink cannot point out of it), only regular files are read,
//! and at most [`MAX_ID_FILE`] bytes of each.
//!
//! As runc and Docker do: a name must exist in the image; a numeric uid need not (gid 0 then,
//! unless `/etc/passwd` has it); the primary group is the named/numeric group, else the passwd
//! entry's; supplementary groups are those of `/etc/group` that list the user's name.

use std::{
    io::Read,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use berth_executor::{
    ProcessUser,
    shim::rootfs::resolve::{self, Create},
};
use nix::errno::Errno;

/// Largest `/etc/passwd` or `/etc/group` read from an image.
pub const MAX_ID_FILE: u64 = 4 << 20;

/// Why the image's user cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The `User` names a user the image's `/etc/passwd` does not have.
    #[error("user {user:?} is not in the image's /etc/passwd")]
    UnknownUser {
        /// The name.
        user: String,
    },
    /// The `User` names a group the image's `/etc/group` does not have.
    #[error("group {group:?} is not in the image's /etc/group")]
    UnknownGroup {
        /// The name.
        group: String,
    },
    /// An id that is not usable (-1, or a number out of range).
    #[error("invalid user {spec:?}: {reason}")]
    Invalid {
        /// The image's `User`.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading a file of a layer failed.
    #[error("reading {path} in layer {}: {source}", .layer.display())]
    Read {
        /// The layer directory.
        layer: PathBuf,
        /// The file inside it.
        path: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// The user resolved: ids for the shim, and the home directory for `HOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid, gid and supplementary groups.
    pub user: ProcessUser,
    /// Home directory from `/etc/passwd`, when the user has an entry.
    pub home: Option<String>,
}

/// The contents of the image's `/etc/passwd` and `/etc/group` (`None`: absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdFiles {
    /// `/etc/passwd`.
    pub passwd: Option<String>,
    /// `/etc/group`.
    pub group: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each `/etc/group` line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// A numeric id as `User` gives it (u32, not the reserved -1).
fn numeric(spec: &str, text: &str) -> Result<Option<u32>, UserError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(Some(id)),
        _ => Err(UserError::Invalid {
            spec: spec.to_string(),
            reason: format!("{text} is not a valid id"),
        }),
    }
}

/// Resolves an image's `User` against its id files. Pure.
pub fn resolve_user(spec: &str, files: &IdFiles) -> Result<ResolvedUser, UserError> {
    let passwd = files.passwd.as_deref().unwrap_or("");
    let groups = files.group.as_deref().unwrap_or("");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let (uid, entry) = match numeric(spec, user_part)? {
        Some(uid) => (uid, passwd_entries(passwd).find(|e| e.uid == uid)),
        None => {
            let e = passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser {
                    user: user_part.to_string(),
                })?;
            (e.uid, Some(e))
        }
    };
    let gid = match group_part.filter(|g| !g.is_empty()) {
        Some(g) => match numeric(spec, g)? {
            Some(gid) => gid,
            None => group_entries(groups)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    group: g.to_string(),
                })?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut additional_gids = Vec::new();
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(groups) {
            if members.contains(&e.name) && g != gid && !additional_gids.contains(&g) {
                additional_gids.push(g);
            }
        }
    }
    Ok(ResolvedUser {
        user: ProcessUser {
            uid,
            gid,
            additional_gids,
        },
        home: entry.map(|e| e.home.to_string()).filter(|h| !h.is_empty()),
    })
}

/// Reads the image's `/etc/passwd` and `/etc/group` from its layers (bottom to top).
pub fn read_id_files(layers: &[PathBuf]) -> Result<IdFiles, UserError> {
    Ok(IdFiles {
        passwd: read_image_file(layers, "etc/passwd")?,
        group: read_image_file(layers, "etc/group")?,
    })
}

/// What a layer says about `etc/<name>`.
enum Found {
    /// The layer has the file: its contents.
    File(String),
    /// The layer hides it from the layers below (a whiteout, an opaque or whited-out `/etc`, or
    /// something that is not a regular file).
    Hidden,
    /// The layer does not have it: look below.
    Absent,
}

/// `path` (relative, `etc/...`) as the overlay of `layers` (bottom to top) would show it.
fn read_image_file(layers: &[PathBuf], path: &'static str) -> Result<Option<String>, UserError> {
    for layer in layers.iter().rev() {
        let err = |source: std::io::Error| UserError::Read {
            layer: layer.clone(),
            path,
            source,
        };
        match in_layer(layer, path).map_err(err)? {
            Found::File(text) => return Ok(Some(text)),
            Found::Hidden => return Ok(None),
            Found::Absent => continue,
        }
    }
    Ok(None)
}

fn in_layer(layer: &Path, path: &str) -> std::io::Result<Found> {
    let root = resolve::open_root(layer)?;
    match resolve::open_in_root(root.as_fd(), Path::new(path), Create::Nothing) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(&fd)?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => read_regular(&fd, st.st_size as u64).map(Found::File),
                _ => Ok(Found::Hidden),
            }
        }
        Err(Errno::ENOENT) => {
            // Is the parent directory opaque, or itself a whiteout, in this layer?
            let parent = Path::new(path).parent().unwrap_or(Path::new(""));
            match resolve::open_in_root(root.as_fd(), parent, Create::Nothing) {
                Ok(dir) => {
                    let st = nix::sys::stat::fstat(&dir)?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR || is_opaque(&dir) {
                        Ok(Found::Hidden)
                    } else {
                        Ok(Found::Absent)
                    }
                }
                Err(Errno::ENOENT) => Ok(Found::Absent),
                Err(Errno::ENOTDIR) => Ok(Found::Hidden),
                Err(e) => Err(e.into()),
            }
        }
        // A parent that is not a directory in this layer replaces the lower ones' directory.
        Err(Errno::ENOTDIR) => Ok(Found::Hidden),
        Err(e) => Err(e.into()),
    }
}

/// The file behind an `O_PATH` descriptor, reopened for reading through `/proc/self/fd` (the
/// same inode: nothing is looked up again).
fn read_regular(fd: &OwnedFd, size: u64) -> std::io::Result<String> {
    if size > MAX_ID_FILE {
        return Err(std::io::Error::other(format!(
            "{size} bytes, more than the {MAX_ID_FILE}-byte limit"
        )));
    }
    let file = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let mut text = String::new();
    file.take(MAX_ID_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// Whether the directory has `trusted.overlay.opaque=y` (an opaque dir of an unpacked layer).
fn is_opaque(dir: &OwnedFd) -> bool {
    let path = format!("/proc/self/fd/{}\0", dir.as_raw_fd());
    let mut value = [0u8; 4];
    // SAFETY: `path` and the attribute name are NUL-terminated; `value` is a live buffer of the
    // length passed, which the kernel writes at most.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr().cast(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/usr/sbin:/bin/false\n\
                          # comment\n\
                          app:x:1000:1001:App:/home/app:/bin/sh\n\
                          broken:x:notanumber:1::/:\n";
    const GROUP: &str = "root:x:0:\n\
                         wheel:x:10:app,other\n\
                         app:x:1001:\n\
                         staff:x:50:app\n\
                         audio:x:29:daemon\n";

    fn files() -> IdFiles {
        IdFiles {
            passwd: Some(PASSWD.into()),
            group: Some(GROUP.into()),
        }
    }

    fn ids(spec: &str) -> (u32, u32, Vec<u32>) {
        let r = resolve_user(spec, &files()).unwrap();
        (r.user.uid, r.user.gid, r.user.additional_gids)
    }

    #[test]
    fn user_forms() {
        assert_eq!(ids(""), (0, 0, vec![]));
        assert_eq!(ids("root"), (0, 0, vec![]));
        assert_eq!(ids("app"), (1000, 1001, vec![10, 50]));
        assert_eq!(ids("1000"), (1000, 1001, vec![10, 50]));
        assert_eq!(ids("app:staff"), (1000, 50, vec![10]));
        assert_eq!(ids("app:7"), (1000, 7, vec![10, 50]));
        assert_eq!(ids("1000:1000"), (1000, 1000, vec![10, 50]));
        // a uid the image does not know: gid 0, no groups
        assert_eq!(ids("4242"), (4242, 0, vec![]));
        assert_eq!(ids("4242:99"), (4242, 99, vec![]));
        assert_eq!(ids(":wheel"), (0, 10, vec![]));
        let r = resolve_user("app", &files()).unwrap();
        assert_eq!(r.home.as_deref(), Some("/home/app"));
        assert_eq!(resolve_user("4242", &files()).unwrap().home, None);
    }

    #[test]
    fn unknown_names_and_bad_ids_are_refused() {
        let e = resolve_user("nobody", &files()).unwrap_err();
        assert!(e.to_string().contains("\"nobody\""), "{e}");
        let e = resolve_user("app:nogroup", &files()).unwrap_err();
        assert!(e.to_string().contains("\"nogroup\""), "{e}");
        assert!(resolve_user("4294967295", &files()).is_err());
        assert!(resolve_user("99999999999", &files()).is_err());
        assert!(resolve_user("broken", &files()).is_err());
        // without any passwd, only numbers work
        let none = IdFiles::default();
        assert!(resolve_user("app", &none).is_err());
        assert_eq!(resolve_user("5:6", &none).unwrap().user.gid, 6);
    }

    fn layer(dir: &Path, name: &str) -> PathBuf {
        let l = dir.join(name);
        std::fs::create_dir_all(l.join("etc")).unwrap();
        l
    }

    #[test]
    fn id_files_come_from_the_top_most_layer_that_has_them() {
        let tmp = tempfile::tempdir().unwrap();
        let l1 = layer(tmp.path(), "l1");
        let l2 = layer(tmp.path(), "l2");
        std::fs::write(l1.join("etc/passwd"), "a:x:1:1::/:\n").unwrap();
        std::fs::write(l1.join("etc/group"), "g:x:1:\n").unwrap();
        std::fs::write(l2.join("etc/passwd"), "b:x:2:2::/:\n").unwrap();
        let got = read_id_files(&[l1.clone(), l2.clone()]).unwrap();
        assert_eq!(got.passwd.as_deref(), Some("b:x:2:2::/:\n"));
        assert_eq!(got.group.as_deref(), Some("g:x:1:\n"));
        // bottom-only
        let got = read_id_files(std::slice::from_ref(&l1)).unwrap();
        assert_eq!(got.passwd.as_deref(), Some("a:x:1:1::/:\n"));
        // no /etc at all
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(read_id_files(&[empty]).unwrap(), IdFiles::default());
    }

    #[test]
    fn a_symlink_cannot_read_outside_its_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("host-passwd");
        std::fs::write(&outside, "host:x:0:0::/:\n").unwrap();
        let l1 = layer(tmp.path(), "l1");
        std::fs::write(l1.join("etc/passwd"), "inner:x:1:1::/:\n").unwrap();
        let l2 = layer(tmp.path(), "l2");
        // absolute and relative escapes are both clamped to the layer's root, where nothing is
        symlink(&outside, l2.join("etc/passwd")).unwrap();
        symlink("../../host-passwd", l2.join("etc/group")).unwrap();
        let got = read_id_files(&[l1, l2]);
        match got {
            Ok(files) => {
                assert!(
                    !files.passwd.unwrap_or_default().contains("host")
                        && !files.group.unwrap_or_default().contains("host")
                );
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn whiteouts_and_non_files_hide_lower_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let l1 = layer(tmp.path(), "l1");
        std::fs::write(l1.join("etc/passwd"), "a:x:1:1::/:\n").unwrap();
        std::fs::write(l1.join("etc/group"), "g:x:1:\n").unwrap();
        let l2 = layer(tmp.path(), "l2");
        // not a regular file: hides the lower one, is not read
        std::fs::create_dir(l2.join("etc/passwd")).unwrap();
        let got = read_id_files(&[l1.clone(), l2]).unwrap();
        assert_eq!(got.passwd, None);
        assert!(got.group.is_some());
        // /etc replaced by a file in the upper layer hides both
        let l3 = tmp.path().join("l3");
        std::fs::create_dir(&l3).unwrap();
        std::fs::write(l3.join("etc"), "").unwrap();
        assert_eq!(read_id_files(&[l1, l3]).unwrap(), IdFiles::default());
    }

    /// Whiteouts (0:0 character devices) and opaque directories need root to make.
    fn privileged() -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        if std::env::var("BERTH_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): whiteouts need root");
            return false;
        }
        panic!("this test makes overlayfs whiteouts (mknod, trusted.* xattrs): run it as root");
    }

    #[test]
    fn overlay_whiteouts_and_opaque_dirs_are_honoured() {
        if !privileged() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let l1 = layer(tmp.path(), "l1");
        std::fs::write(l1.join("etc/passwd"), "a:x:1:1::/:\n").unwrap();
        std::fs::write(l1.join("etc/group"), "g:x:1:\n").unwrap();
        // l2 deletes /etc/passwd
        let l2 = layer(tmp.path(), "l2");
        nix::sys::stat::mknod(
            &l2.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let got = read_id_files(&[l1.clone(), l2]).unwrap();
        assert_eq!(got.passwd, None);
        assert_eq!(got.group.as_deref(), Some("g:x:1:\n"));
        // l3 has an opaque /etc with only a group file
        let l3 = layer(tmp.path(), "l3");
        std::fs::write(l3.join("etc/group"), "h:x:2:\n").unwrap();
        let c =
            std::ffi::CString::new(l3.join("etc").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated path and name; the value buffer is live for its length.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
        let got = read_id_files(&[l1, l3]).unwrap();
        assert_eq!(got.passwd, None, "the opaque /etc hides the lower passwd");
        assert_eq!(got.group.as_deref(), Some("h:x:2:\n"));
    }

    #[test]
    fn large_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let l1 = layer(tmp.path(), "l1");
        let f = std::fs::File::create(l1.join("etc/passwd")).unwrap();
        f.set_len(MAX_ID_FILE + 1).unwrap();
        let e = read_id_files(&[l1]).unwrap_err();
        assert!(e.to_string().contains("etc/passwd"), "{e}");
    }
}
