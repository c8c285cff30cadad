//! The device allow-list of a container: which device nodes its processes may open or create.
//!
//! Every container gets [`default_rules`] (the nodes any program expects: null, zero, full,
//! random, urandom, tty, ptmx and the pseudo-terminals) plus one `rwm` rule per device node named
//! in `IsolationOptions::devices`, resolved with `stat(2)` at prepare. Everything else is denied:
//! `open(2)` and `mknod(2)` of any other device fail with `EPERM` inside the container.
//!
//! Enforcement: on cgroup v1 the `devices` controller (`devices.deny a`, then one
//! `devices.allow` line per rule); on cgroup v2 an eBPF `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! assembled from the rules ([`super::bpf`]) and attached to the container's cgroup.

use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::CgroupError;

/// The kind of device a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Every device, character and block (`a`).
    All,
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
}

impl DeviceKind {
    fn letter(self) -> char {
        match self {
            DeviceKind::All => 'a',
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        }
    }
}

/// What a rule allows: read, write (both checked at `open`) and mknod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceAccess {
    /// Open for reading.
    pub read: bool,
    /// Open for writing.
    pub write: bool,
    /// Create the node with `mknod(2)`.
    pub mknod: bool,
}

impl DeviceAccess {
    /// Read, write and mknod.
    pub const RWM: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: true,
    };
    /// Read and write, no mknod.
    pub const RW: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: false,
    };

    /// The kernel's `BPF_DEVCG_ACC_*` bit set: mknod 1, read 2, write 4.
    pub fn bpf_mask(self) -> u32 {
        u32::from(self.mknod) | u32::from(self.read) << 1 | u32::from(self.write) << 2
    }
}

impl fmt::Display for DeviceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, c) in [(self.read, 'r'), (self.write, 'w'), (self.mknod, 'm')] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One allow rule: a device (or a class of devices, `None` = any number) and the access granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceRule {
    /// Character, block, or both.
    pub kind: DeviceKind,
    /// Major number; `None` matches any.
    pub major: Option<u32>,
    /// Minor number; `None` matches any.
    pub minor: Option<u32>,
    /// What is allowed.
    pub access: DeviceAccess,
}

impl DeviceRule {
    /// A character device rule.
    pub const fn char(major: u32, minor: Option<u32>, access: DeviceAccess) -> DeviceRule {
        DeviceRule {
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access,
        }
    }

    /// The `rwm` rule for the device node at `path` (`stat(2)`, following symlinks).
    pub fn for_node(path: &Path) -> Result<DeviceRule, CgroupError> {
        let invalid =
            |why: String| CgroupError::Invalid(format!("device {}: {why}", path.display()));
        if !path.is_absolute() {
            return Err(invalid("not an absolute path".into()));
        }
        let meta = std::fs::metadata(path).map_err(|e| invalid(format!("cannot stat: {e}")))?;
        let kind = if meta.file_type().is_char_device() {
            DeviceKind::Char
        } else if meta.file_type().is_block_device() {
            DeviceKind::Block
        } else {
            return Err(invalid("not a character or block device node".into()));
        };
        let rdev = meta.rdev();
        Ok(DeviceRule {
            kind,
            major: Some(libc::major(rdev)),
            minor: Some(libc::minor(rdev)),
            access: DeviceAccess::RWM,
        })
    }

    /// Whether the rule matches a device of `kind` (`Char` or `Block`), major and minor, for all
    /// of the access bits of `requested` (the kernel's semantics for both v1 and the eBPF filter).
    pub fn allows(
        &self,
        kind: DeviceKind,
        major: u32,
        minor: u32,
        requested: DeviceAccess,
    ) -> bool {
        (self.kind == DeviceKind::All || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && requested.bpf_mask() & !self.access.bpf_mask() == 0
    }
}

/// The v1 `devices.allow` syntax: `c 1:3 rwm`, `c 136:* rw`, `a *:* rwm`.
impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind.letter(),
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

/// The devices every container may use: null 1:3, zero 1:5, full 1:7, random 1:8, urandom 1:9,
/// tty 5:0, ptmx 5:2 (`rwm`), and the pseudo-terminal slaves 136:* (`rw`).
pub fn default_rules() -> Vec<DeviceRule> {
    let mut rules: Vec<DeviceRule> = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)]
        .into_iter()
        .map(|(major, minor)| DeviceRule::char(major, Some(minor), DeviceAccess::RWM))
        .collect();
    rules.push(DeviceRule::char(136, None, DeviceAccess::RW));
    rules
}

/// [`default_rules`] plus an `rwm` rule for each extra device node (duplicates dropped).
pub fn rules_for(extra: &[PathBuf]) -> Result<Vec<DeviceRule>, CgroupError> {
    let mut rules = default_rules();
    for path in extra {
        let rule = DeviceRule::for_node(path)?;
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// Loads an eBPF device filter allowing exactly `rules` and attaches it to the cgroup v2
/// directory `cgroup_dir` (replacing a filter berth attached there before). The cgroups isolator
/// does this itself on v2; this entry point lets a hybrid v1 host's unified hierarchy be used
/// directly (tests, tools). Returns the number of eBPF instructions of the program.
pub fn attach_v2_filter(cgroup_dir: &Path, rules: &[DeviceRule]) -> Result<usize, CgroupError> {
    super::bpf::install(&super::bpf::LinuxBpf, cgroup_dir, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_syntax() {
        let lines: Vec<String> = default_rules().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            lines,
            [
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:2 rwm",
                "c 136:* rw"
            ]
        );
        let all = DeviceRule {
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: DeviceAccess::RWM,
        };
        assert_eq!(all.to_string(), "a *:* rwm");
    }

    #[test]
    fn nodes_are_resolved_with_stat() {
        let rule = DeviceRule::for_node(Path::new("/dev/null")).unwrap();
        assert_eq!(rule, DeviceRule::char(1, Some(3), DeviceAccess::RWM));
        let rules = rules_for(&[PathBuf::from("/dev/null")]).unwrap();
        assert_eq!(
            rules,
            default_rules(),
            "a default device is not added twice"
        );
        for bad in ["/etc/hostname", "/nonexistent-device", "dev/null"] {
            let err = DeviceRule::for_node(Path::new(bad)).unwrap_err();
            assert!(matches!(err, CgroupError::Invalid(_)), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn matching_semantics() {
        let pts = DeviceRule::char(136, None, DeviceAccess::RW);
        let read = DeviceAccess {
            read: true,
            write: false,
            mknod: false,
        };
        let mknod = DeviceAccess {
            read: false,
            write: false,
            mknod: true,
        };
        assert!(pts.allows(DeviceKind::Char, 136, 7, read));
        assert!(pts.allows(DeviceKind::Char, 136, 7, DeviceAccess::RW));
        assert!(!pts.allows(DeviceKind::Char, 136, 7, mknod));
        assert!(!pts.allows(DeviceKind::Block, 136, 7, read));
        assert!(!pts.allows(DeviceKind::Char, 137, 7, read));
        assert_eq!(DeviceAccess::RWM.bpf_mask(), 7);
        assert_eq!(DeviceAccess::RW.bpf_mask(), 6);
        assert_eq!(mknod.bpf_mask(), 1);
    }
}
