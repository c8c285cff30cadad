//! Where a container's cgroups go: `linux.cgroupsPath` in the cgroups isolator's terms. Pure.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::translate::ConfigError;

/// Where a container's cgroups go, from `linux.cgroupsPath`, in the cgroups isolator's terms:
/// `<own cgroup or hierarchy root>/<prefix...>/<base>/<leaf>`. The prefix must exist; the base
/// and the leaf are created (and the leaf removed at delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlacement {
    /// An absolute `cgroupsPath`: from the hierarchy root, not from the caller's own cgroup.
    pub from_root: bool,
    /// Components between the own cgroup (or the root) and the base.
    pub prefix: Vec<String>,
    /// The isolator's base name; empty for none.
    pub base: String,
    /// The container's cgroup name (the id the isolator is called with).
    pub leaf: String,
}

/// Base of containers without a `cgroupsPath`: `<own>/berth-oci/<id>`.
pub const DEFAULT_CGROUP_BASE: &str = "berth-oci";

fn safe_component(c: &str) -> bool {
    berth_isolators::validate_container_id(c).is_ok()
}

impl CgroupPlacement {
    /// The placement for `cgroups_path` (none: `<own>/berth-oci/<id>`). Systemd-style
    /// `slice:prefix:name` paths are refused.
    pub fn new(cgroups_path: Option<&Path>, id: &str) -> Result<CgroupPlacement, ConfigError> {
        let err = |m: String| ConfigError::new("linux.cgroupsPath", m);
        let Some(path) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(CgroupPlacement {
                from_root: false,
                prefix: Vec::new(),
                base: DEFAULT_CGROUP_BASE.into(),
                leaf: id.into(),
            });
        };
        let text = path.to_string_lossy();
        if !text.starts_with('/') && text.contains(':') {
            return Err(err(format!(
                "{text:?} is a systemd slice path: berth manages cgroupfs directly \
                 (--systemd-cgroup is not supported)"
            )));
        }
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => {
                    let n = n.to_string_lossy().into_owned();
                    if !safe_component(&n) {
                        return Err(err(format!(
                            "component {n:?} of {text:?} is not a plain name"
                        )));
                    }
                    parts.push(n);
                }
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(err(format!("{text:?} has a '..' component")));
                }
            }
        }
        let Some(leaf) = parts.pop() else {
            return Err(err(format!("{text:?} names no cgroup")));
        };
        let base = parts.pop().unwrap_or_default();
        Ok(CgroupPlacement {
            from_root: path.is_absolute(),
            prefix: parts,
            base,
            leaf,
        })
    }

    /// The `/proc/self/cgroup` the isolator is built from: the caller's own (`own`), with every
    /// path extended by the prefix, or replaced by it for a path from the root.
    pub fn own_cgroup_file(&self, own: &str) -> String {
        let mut out = String::new();
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(h), Some(c), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let mut path = if self.from_root {
                String::new()
            } else {
                p.trim_end_matches('/').to_string()
            };
            for comp in &self.prefix {
                path.push('/');
                path.push_str(comp);
            }
            if path.is_empty() {
                path.push('/');
            }
            out.push_str(&format!("{h}:{c}:{path}\n"));
        }
        out
    }
}
