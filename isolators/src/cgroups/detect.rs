//! Hierarchy detection: which cgroup version `cgroup_root` is, and where the agent's own cgroup is
//! in each hierarchy (from `/proc/self/cgroup`).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use tracing::debug;

use super::v1::V1;
use super::v2::V2;
use super::{CgroupError, Layout};

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ProcCgroupLine {
    pub(super) hierarchy: u32,
    pub(super) controllers: Vec<String>,
    pub(super) path: String,
}

/// Parses `/proc/<pid>/cgroup`; malformed lines are skipped.
pub(super) fn parse_proc_cgroup(content: &str) -> Vec<ProcCgroupLine> {
    content
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let list = parts.next()?;
            let path = parts.next()?.to_string();
            let controllers = list
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some(ProcCgroupLine {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// The own-cgroup path of a `/proc/self/cgroup` line as a path relative to the hierarchy's mount.
/// Rejects anything that is not a plain absolute path (`..` from a foreign cgroup namespace,
/// a removed cgroup).
fn relative(own: &str, proc_self_cgroup: &Path) -> Result<PathBuf, CgroupError> {
    let bad = |reason: &str| CgroupError::OwnCgroup {
        path: proc_self_cgroup.to_path_buf(),
        reason: format!("{reason}: {own:?}"),
    };
    if !own.starts_with('/') || own.ends_with(" (deleted)") {
        return Err(bad("own cgroup path is not a live absolute path"));
    }
    let mut rel = PathBuf::new();
    for component in Path::new(own).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(c) => rel.push(c),
            _ => {
                return Err(bad(
                    "own cgroup path leaves its hierarchy (cgroup namespace?)",
                ));
            }
        }
    }
    Ok(rel)
}

/// The own cgroup directory `mount/rel`, which must exist.
fn own_dir(mount: &Path, rel: &Path, line: &str) -> Result<PathBuf, CgroupError> {
    let dir = mount.join(rel);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(CgroupError::OwnCgroup {
            path: dir,
            reason: format!("own cgroup (from {line:?}) does not exist in the mounted hierarchy"),
        })
    }
}

/// Detects the layout under `root` for the process described by `proc_self_cgroup`.
pub(super) fn detect(
    root: &Path,
    proc_self_cgroup: &Path,
    base_name: &str,
) -> Result<Layout, CgroupError> {
    let content =
        std::fs::read_to_string(proc_self_cgroup).map_err(|source| CgroupError::Read {
            path: proc_self_cgroup.to_path_buf(),
            source,
        })?;
    let lines = parse_proc_cgroup(&content);

    if root.join("cgroup.controllers").is_file() {
        // cgroup2 mounted at the root itself: pure v2.
        let line = lines
            .iter()
            .find(|l| l.hierarchy == 0 && l.controllers.is_empty())
            .ok_or_else(|| CgroupError::OwnCgroup {
                path: proc_self_cgroup.to_path_buf(),
                reason: "no `0::<path>` line for the unified hierarchy".into(),
            })?;
        let rel = relative(&line.path, proc_self_cgroup)?;
        let own = own_dir(root, &rel, &format!("0::{}", line.path))?;
        debug!(own = %own.display(), "cgroup v2 detected");
        return Ok(Layout::V2(V2::new(
            own,
            rel.as_os_str().is_empty(),
            base_name,
        )));
    }

    // v1 (or hybrid, whose `unified` mount carries no controllers we use).
    if !V1::CONTROLLERS.iter().any(|(c, _)| root.join(c).is_dir()) {
        return Err(CgroupError::NotMounted {
            root: root.to_path_buf(),
        });
    }
    let mut own_dirs: Vec<PathBuf> = Vec::new();
    let mut by_hierarchy: HashMap<u32, usize> = HashMap::new();
    let mut roles: HashMap<&'static str, usize> = HashMap::new();
    for &(controller, required) in V1::CONTROLLERS {
        let Some(line) = lines
            .iter()
            .find(|l| l.controllers.iter().any(|c| c == controller))
        else {
            if required {
                return Err(CgroupError::ControllerMissing {
                    controller,
                    path: proc_self_cgroup.to_path_buf(),
                });
            }
            continue;
        };
        let idx = match by_hierarchy.get(&line.hierarchy) {
            Some(&idx) => idx,
            None => {
                let joined = line.controllers.join(",");
                let Some(mount) = [root.join(controller), root.join(&joined)]
                    .into_iter()
                    .find(|p| p.is_dir())
                else {
                    if required {
                        return Err(CgroupError::ControllerMissing {
                            controller,
                            path: root.join(controller),
                        });
                    }
                    continue;
                };
                let rel = relative(&line.path, proc_self_cgroup)?;
                let text = format!("{}:{joined}:{}", line.hierarchy, line.path);
                own_dirs.push(own_dir(&mount, &rel, &text)?);
                by_hierarchy.insert(line.hierarchy, own_dirs.len() - 1);
                own_dirs.len() - 1
            }
        };
        roles.insert(controller, idx);
    }
    debug!(?own_dirs, "cgroup v1 detected");
    Ok(Layout::V1(V1::new(root, own_dirs, &roles, base_name)))
}
