//! The user namespace isolator: with `user_namespace`, the container runs in a new user
//! namespace whose uids and gids 0..count map to an unprivileged host range, so its root is
//! nobody in particular on the host. The range comes from `/etc/subuid`/`/etc/subgid`-style
//! files ([`IdRange::from_subid_files`]), or [`IdRange::DEFAULT`].
//!
//! The shim writes the maps; this isolator asks for the namespace and hands the sandbox (and
//! the container's root mount point) to the mapped root, so the container's root can write
//! its own sandbox.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_executor::{IdMapRange, IdMaps};
use tracing::debug;

use crate::{
    ContainerId, ContainerSpec, Isolator, IsolatorError, LaunchInfo, Namespace,
    validate_container_id,
};

const NAME: &str = "userns";

/// The host ids a container's ids 0..count map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// Host uid of the container's uid 0.
    pub uid_start: u32,
    /// Host gid of the container's gid 0.
    pub gid_start: u32,
    /// Number of ids mapped (uids and gids alike).
    pub count: u32,
}

fn invalid(message: String) -> IsolatorError {
    IsolatorError::Invalid {
        isolator: NAME,
        message,
    }
}

fn io_err(what: String, source: std::io::Error) -> IsolatorError {
    IsolatorError::Io {
        isolator: NAME,
        what,
        source,
    }
}

/// The first `name:start:count` line of a subid file for `user`: `Ok(None)` when there is
/// none. Blank lines and `#` comments are skipped.
pub fn parse_subid(text: &str, user: &str) -> Result<Option<(u32, u32)>, String> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split(':');
        let (Some(name), Some(start), Some(count), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            return Err(format!(
                "line {}: expected name:start:count, got {line:?}",
                n + 1
            ));
        };
        if name != user {
            continue;
        }
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|e| format!("line {}: {s:?}: {e}", n + 1))
        };
        return Ok(Some((num(start)?, num(count)?)));
    }
    Ok(None)
}

impl IdRange {
    /// Used when the subid files have no entry for the agent's user: 65536 ids from 100000,
    /// the first range `useradd` hands out.
    pub const DEFAULT: IdRange = IdRange {
        uid_start: 100000,
        gid_start: 100000,
        count: 65536,
    };

    /// The range of `user` in `subuid` and `subgid` (`/etc/subuid`, `/etc/subgid`). `Ok(None)`
    /// when neither has an entry (or neither file exists): use [`IdRange::DEFAULT`]. An entry
    /// in only one of them is an error. The count is the smaller of the two.
    pub fn from_subid_files(
        subuid: &Path,
        subgid: &Path,
        user: &str,
    ) -> Result<Option<IdRange>, IsolatorError> {
        let read = |p: &Path| -> Result<Option<(u32, u32)>, IsolatorError> {
            let text = match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(format!("read {}", p.display()), e)),
            };
            parse_subid(&text, user).map_err(|e| invalid(format!("{}: {e}", p.display())))
        };
        let range = match (read(subuid)?, read(subgid)?) {
            (None, None) => return Ok(None),
            (Some((uid_start, uc)), Some((gid_start, gc))) => IdRange {
                uid_start,
                gid_start,
                count: uc.min(gc),
            },
            (u, _) => {
                let (has, lacks) = if u.is_some() {
                    (subuid, subgid)
                } else {
                    (subgid, subuid)
                };
                return Err(invalid(format!(
                    "{user} has a range in {} but none in {}",
                    has.display(),
                    lacks.display()
                )));
            }
        };
        range.validate()?;
        Ok(Some(range))
    }

    /// Refuses empty ranges, ranges past `u32::MAX` and ranges containing host id 0.
    pub fn validate(&self) -> Result<(), IsolatorError> {
        let ok = |start: u32| start > 0 && start.checked_add(self.count).is_some();
        if self.count == 0 || !ok(self.uid_start) || !ok(self.gid_start) {
            return Err(invalid(format!(
                "invalid id range {self:?}: must be non-empty, exclude host id 0 and end \
                 below 2^32"
            )));
        }
        Ok(())
    }

    /// The uid and gid maps: container 0..count → host start..start+count.
    pub fn id_maps(&self) -> IdMaps {
        let map = |host_id| {
            vec![IdMapRange {
                container_id: 0,
                host_id,
                size: self.count,
            }]
        };
        IdMaps {
            uid_map: map(self.uid_start),
            gid_map: map(self.gid_start),
        }
    }
}

/// Asks for a user namespace for containers that want one.
#[derive(Debug)]
pub struct UserNamespaceIsolator {
    range: IdRange,
    runtime_root: PathBuf,
}

impl UserNamespaceIsolator {
    /// `runtime_root` as given to the filesystem isolator (the container's root mount point
    /// is `<runtime_root>/<id>/rootfs`).
    pub fn new(
        range: IdRange,
        runtime_root: PathBuf,
    ) -> Result<UserNamespaceIsolator, IsolatorError> {
        range.validate()?;
        Ok(UserNamespaceIsolator {
            range,
            runtime_root,
        })
    }

    /// The range containers are mapped to.
    pub fn range(&self) -> IdRange {
        self.range
    }
}

/// `lchown`s `dir` and everything below it on the same filesystem (symlinks themselves, never
/// their targets; other filesystems mounted below are left alone).
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), IsolatorError> {
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| io_err(format!("stat {}", dir.display()), e))?;
    let dev = meta.dev();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(|e| io_err(format!("chown {}", p.display()), e))?;
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|e| io_err(format!("stat {}", p.display()), e))?;
        if meta.is_dir() && meta.dev() == dev {
            let entries =
                std::fs::read_dir(&p).map_err(|e| io_err(format!("read {}", p.display()), e))?;
            for e in entries {
                let e = e.map_err(|e| io_err(format!("read {}", p.display()), e))?;
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

impl Isolator for UserNamespaceIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        if !spec.options.user_namespace {
            return Ok(LaunchInfo::default());
        }
        validate_container_id(&spec.id)?;
        let IdRange {
            uid_start,
            gid_start,
            ..
        } = self.range;
        // The sandbox is new (and holds at most what was fetched into it): the container's
        // root owns it, so it can write its own sandbox.
        chown_tree(&spec.sandbox, uid_start, gid_start)?;
        let rootfs = self.runtime_root.join(&spec.id).join("rootfs");
        if rootfs.is_dir() {
            std::os::unix::fs::lchown(&rootfs, Some(uid_start), Some(gid_start))
                .map_err(|e| io_err(format!("chown {}", rootfs.display()), e))?;
        }
        debug!(container_id = %spec.id, uid_start, gid_start, count = self.range.count,
            "user namespace");
        Ok(LaunchInfo {
            namespaces: vec![Namespace::User],
            id_maps: Some(self.range.id_maps()),
            ..Default::default()
        })
    }

    fn describe(&self, _id: &ContainerId) -> serde_json::Value {
        serde_json::json!({
            "uid_start": self.range.uid_start,
            "gid_start": self.range.gid_start,
            "count": self.range.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IsolationOptions, Limits, NetworkMode};

    #[test]
    fn subid_lines() {
        let text = "# comment\n\nalice:100000:65536\nroot:200000:1000\nroot:300000:5\n";
        assert_eq!(parse_subid(text, "root").unwrap(), Some((200000, 1000)));
        assert_eq!(parse_subid(text, "alice").unwrap(), Some((100000, 65536)));
        assert_eq!(parse_subid(text, "bob").unwrap(), None);
        assert!(parse_subid("root:1:2:3\n", "root").is_err());
        assert!(parse_subid("root:x:2\n", "root").is_err());
        assert!(parse_subid("root:1\n", "root").is_err());
        assert!(parse_subid("root:1:99999999999\n", "root").is_err());
    }

    #[test]
    fn ranges_from_files() {
        let d = tempfile::tempdir().unwrap();
        let (u, g) = (d.path().join("subuid"), d.path().join("subgid"));
        // No files, or no entries: the caller uses the default.
        assert_eq!(IdRange::from_subid_files(&u, &g, "root").unwrap(), None);
        std::fs::write(&u, "root:200000:65536\n").unwrap();
        std::fs::write(&g, "root:300000:1000\n").unwrap();
        assert_eq!(
            IdRange::from_subid_files(&u, &g, "root").unwrap(),
            Some(IdRange {
                uid_start: 200000,
                gid_start: 300000,
                count: 1000
            })
        );
        assert_eq!(IdRange::from_subid_files(&u, &g, "bob").unwrap(), None);
        std::fs::write(&g, "bob:1:2\n").unwrap();
        let e = IdRange::from_subid_files(&u, &g, "root").unwrap_err();
        assert!(e.to_string().contains("none in"), "{e}");
        // Host root inside the range is refused.
        std::fs::write(&u, "root:0:65536\n").unwrap();
        std::fs::write(&g, "root:0:65536\n").unwrap();
        assert!(IdRange::from_subid_files(&u, &g, "root").is_err());
        std::fs::write(&u, "root:x\n").unwrap();
        assert!(IdRange::from_subid_files(&u, &g, "root").is_err());
    }

    #[test]
    fn range_validation_and_maps() {
        IdRange::DEFAULT.validate().unwrap();
        let bad = [
            IdRange {
                count: 0,
                ..IdRange::DEFAULT
            },
            IdRange {
                uid_start: 0,
                ..IdRange::DEFAULT
            },
            IdRange {
                gid_start: u32::MAX,
                ..IdRange::DEFAULT
            },
        ];
        for r in bad {
            assert!(r.validate().is_err(), "{r:?}");
            assert!(UserNamespaceIsolator::new(r, "/run".into()).is_err());
        }
        let maps = IdRange::DEFAULT.id_maps();
        assert_eq!(
            maps.uid_map,
            vec![IdMapRange {
                container_id: 0,
                host_id: 100000,
                size: 65536
            }]
        );
        assert_eq!(maps.gid_map, maps.uid_map);
    }

    fn spec(sandbox: &Path, user_namespace: bool) -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            limits: Limits::default(),
            network: NetworkMode::None,
            hostname: "c1".into(),
            sandbox: sandbox.to_owned(),
            options: IsolationOptions {
                user_namespace,
                ..Default::default()
            },
            image: None,
        }
    }

    #[test]
    fn prepare_without_the_option_does_nothing() {
        let iso = UserNamespaceIsolator::new(IdRange::DEFAULT, "/nonexistent".into()).unwrap();
        let info = iso
            .prepare(&spec(Path::new("/nonexistent"), false))
            .unwrap();
        assert_eq!(info, LaunchInfo::default());
    }

    #[test]
    fn prepare_asks_for_the_namespace_and_hands_over_the_sandbox() {
        let d = tempfile::tempdir().unwrap();
        let sandbox = d.path().join("sandbox");
        std::fs::create_dir_all(sandbox.join("fetched/dir")).unwrap();
        std::fs::write(sandbox.join("fetched/dir/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", sandbox.join("link")).unwrap();
        let runtime = d.path().join("run");
        std::fs::create_dir_all(runtime.join("c1/rootfs")).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        // As root, hand out a real range; unprivileged, chown to ourselves still exercises
        // the walk.
        let range = if uid == 0 {
            IdRange::DEFAULT
        } else {
            IdRange {
                uid_start: uid.max(1),
                gid_start: gid.max(1),
                count: 1,
            }
        };
        let iso = UserNamespaceIsolator::new(range, runtime.clone()).unwrap();
        let info = iso.prepare(&spec(&sandbox, true)).unwrap();
        assert_eq!(info.namespaces, vec![Namespace::User]);
        assert_eq!(info.id_maps, Some(range.id_maps()));
        for p in ["", "fetched", "fetched/dir", "fetched/dir/f", "link"] {
            let m = std::fs::symlink_metadata(sandbox.join(p)).unwrap();
            assert_eq!(
                (m.uid(), m.gid()),
                (range.uid_start, range.gid_start),
                "{p}"
            );
        }
        let m = std::fs::metadata(runtime.join("c1/rootfs")).unwrap();
        assert_eq!(m.uid(), range.uid_start);
        // The symlink's target was not touched.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }
}
