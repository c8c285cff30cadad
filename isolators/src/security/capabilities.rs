//! The capabilities isolator (Mesos `linux/capabilities`): the workload gets containerd's
//! default capability set, changed by the task's `cap_add` / `cap_drop`, and
//! `no_new_privileges`.
//!
//! Rules, as Docker applies them:
//! - names are case-insensitive, the `CAP_` prefix is optional, `ALL` means every capability;
//! - `cap_add: [ALL]` gives every capability the agent has, minus `cap_drop`;
//! - `cap_drop: [ALL]` gives exactly `cap_add`;
//! - otherwise the result is (default ∪ `cap_add`) − `cap_drop`: a capability both added and
//!   dropped is dropped (Docker keeps it; berth takes the safer reading).
//!
//! A capability the agent itself lacks in its bounding set cannot be given to a workload (the
//! kernel would refuse it at `capset`); asking for one explicitly is an
//! [`IsolatorError::Invalid`] at `prepare`, naming it. Default capabilities the agent lacks are
//! left out quietly, so a restricted agent still runs containers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::Capability;

use crate::{CapabilitySets, ContainerSpec, Isolator, IsolatorError, LaunchInfo};

const NAME: &str = "capabilities";

/// containerd's (and Docker's) default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// A capability name as a task gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapName {
    /// `ALL`: every capability.
    All,
    /// One capability.
    One(Capability),
}

/// Parses `net_admin`, `CAP_NET_ADMIN`, `Net_Admin`, `all`, ...; `None` for an unknown name.
pub fn parse_capability(name: &str) -> Option<CapName> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("ALL") {
        return Some(CapName::All);
    }
    Capability::from_str(&caps::to_canonical(name))
        .ok()
        .map(CapName::One)
}

fn parse_list(names: &[String], what: &str) -> Result<(bool, HashSet<Capability>), IsolatorError> {
    let mut all = false;
    let mut set = HashSet::new();
    for n in names {
        match parse_capability(n) {
            Some(CapName::All) => all = true,
            Some(CapName::One(c)) => {
                set.insert(c);
            }
            None => {
                return Err(IsolatorError::Invalid {
                    isolator: NAME,
                    message: format!("unknown capability {n:?} in {what}"),
                });
            }
        }
    }
    Ok((all, set))
}

/// Parses the `CapBnd:` line of a `/proc/PID/status` text into the capabilities it holds
/// (bits the `caps` crate does not know are ignored).
pub fn parse_bounding_set(status: &str) -> Option<HashSet<Capability>> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    Some(
        caps::all()
            .into_iter()
            .filter(|c| mask & c.bitmask() != 0)
            .collect(),
    )
}

/// The workload's capability set for `cap_add` / `cap_drop`, given the capabilities the agent
/// has (its bounding set).
pub fn resolve_capabilities(
    cap_add: &[String],
    cap_drop: &[String],
    available: &HashSet<Capability>,
) -> Result<Vec<Capability>, IsolatorError> {
    let (add_all, add) = parse_list(cap_add, "cap_add")?;
    let (drop_all, drop) = parse_list(cap_drop, "cap_drop")?;
    let mut missing: Vec<Capability> = add.difference(available).copied().collect();
    if let Some(c) = sorted(&mut missing).first() {
        return Err(IsolatorError::Invalid {
            isolator: NAME,
            message: format!(
                "capability {c} is not available to the agent (not in its bounding set)"
            ),
        });
    }
    let set: HashSet<Capability> = if add_all {
        available.difference(&drop).copied().collect()
    } else if drop_all {
        add
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter(|c| available.contains(c))
            .chain(add.iter())
            .filter(|c| !drop.contains(c))
            .copied()
            .collect()
    };
    let mut out: Vec<Capability> = set.into_iter().collect();
    sorted(&mut out);
    Ok(out)
}

fn sorted(v: &mut [Capability]) -> &[Capability] {
    v.sort_by_key(|c| c.index());
    v
}

/// Builds the capabilities isolator's part of the launch: bounding = effective = permitted =
/// `set`, nothing inheritable or ambient, no new privileges.
pub fn launch_info(set: &[Capability]) -> LaunchInfo {
    let names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    LaunchInfo {
        capabilities: Some(CapabilitySets {
            bounding: names.clone(),
            effective: names.clone(),
            permitted: names,
            inheritable: Vec::new(),
            ambient: Vec::new(),
        }),
        no_new_privileges: true,
        ..Default::default()
    }
}

/// The capabilities isolator.
#[derive(Debug, Clone)]
pub struct CapabilitiesIsolator {
    proc_root: PathBuf,
}

impl CapabilitiesIsolator {
    /// An isolator reading the agent's own bounding set from `<proc_root>/self/status`.
    pub fn new(proc_root: &Path) -> CapabilitiesIsolator {
        CapabilitiesIsolator {
            proc_root: proc_root.to_owned(),
        }
    }

    /// The capabilities in the agent's bounding set.
    pub fn agent_bounding_set(&self) -> Result<HashSet<Capability>, IsolatorError> {
        let path = self.proc_root.join("self/status");
        let text = std::fs::read_to_string(&path).map_err(|source| IsolatorError::Io {
            isolator: NAME,
            what: format!("reading {}", path.display()),
            source,
        })?;
        parse_bounding_set(&text).ok_or_else(|| IsolatorError::Invalid {
            isolator: NAME,
            message: format!("no valid CapBnd line in {}", path.display()),
        })
    }
}

impl Isolator for CapabilitiesIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        let available = self.agent_bounding_set()?;
        let set = resolve_capabilities(&spec.options.cap_add, &spec.options.cap_drop, &available)?;
        tracing::debug!(container_id = %spec.id, capabilities = ?set, "capability set");
        Ok(launch_info(&set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn names(v: &[Capability]) -> Vec<String> {
        v.iter().map(|c| c.to_string()).collect()
    }

    fn all_but_sys_resource() -> HashSet<Capability> {
        let mut a = caps::all();
        a.remove(&Capability::CAP_SYS_RESOURCE);
        a
    }

    #[test]
    fn names_are_case_insensitive_with_optional_prefix() {
        let admin = Some(CapName::One(Capability::CAP_NET_ADMIN));
        for n in [
            "net_admin",
            "CAP_NET_ADMIN",
            "Net_Admin",
            "cap_net_admin",
            " NET_ADMIN ",
        ] {
            assert_eq!(parse_capability(n), admin, "{n}");
        }
        assert_eq!(parse_capability("all"), Some(CapName::All));
        assert_eq!(parse_capability("ALL"), Some(CapName::All));
        assert_eq!(parse_capability("CAP_ALL"), None);
        assert_eq!(parse_capability("net_admn"), None);
        assert_eq!(parse_capability(""), None);
    }

    #[test]
    fn default_set_is_containerds() {
        let set = resolve_capabilities(&[], &[], &caps::all()).unwrap();
        let mask: u64 = set.iter().map(|c| c.bitmask()).sum();
        // Docker's well-known CapEff of a default container.
        assert_eq!(mask, 0xa80425fb);
        assert_eq!(set.len(), 14);
        assert_eq!(set[0], Capability::CAP_CHOWN, "sorted by number");
    }

    #[test]
    fn add_and_drop() {
        let avail = caps::all();
        let set =
            resolve_capabilities(&s(&["net_admin"]), &s(&["CAP_MKNOD", "kill"]), &avail).unwrap();
        assert!(set.contains(&Capability::CAP_NET_ADMIN));
        assert!(!set.contains(&Capability::CAP_MKNOD) && !set.contains(&Capability::CAP_KILL));
        assert_eq!(set.len(), 13);
        // Dropped after added: dropped.
        let set = resolve_capabilities(&s(&["net_admin"]), &s(&["net_admin"]), &avail).unwrap();
        assert!(!set.contains(&Capability::CAP_NET_ADMIN));
        // Drop ALL keeps exactly the adds.
        let set = resolve_capabilities(&s(&["chown"]), &s(&["all"]), &avail).unwrap();
        assert_eq!(names(&set), vec!["CAP_CHOWN"]);
        let set = resolve_capabilities(&[], &s(&["ALL"]), &avail).unwrap();
        assert!(set.is_empty());
        // Add ALL gives every available one minus the drops.
        let avail = all_but_sys_resource();
        let set = resolve_capabilities(&s(&["all"]), &s(&["sys_admin"]), &avail).unwrap();
        assert_eq!(set.len(), avail.len() - 1);
        assert!(!set.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!set.contains(&Capability::CAP_SYS_RESOURCE));
    }

    #[test]
    fn unknown_names_are_invalid_and_named() {
        let e = resolve_capabilities(&s(&["net_admn"]), &[], &caps::all()).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown capability \"net_admn\" in cap_add"),
            "{e}"
        );
        let e = resolve_capabilities(&[], &s(&["bogus"]), &caps::all()).unwrap_err();
        assert!(e.to_string().contains("\"bogus\" in cap_drop"), "{e}");
    }

    #[test]
    fn capability_outside_the_agents_bounding_set_is_refused() {
        let avail = all_but_sys_resource();
        let e = resolve_capabilities(&s(&["sys_resource"]), &[], &avail).unwrap_err();
        assert_eq!(
            e.to_string(),
            "capabilities: capability CAP_SYS_RESOURCE is not available to the agent (not in \
             its bounding set)"
        );
        // A default capability the agent lacks is left out, not an error.
        let mut avail = caps::all();
        avail.remove(&Capability::CAP_MKNOD);
        let set = resolve_capabilities(&[], &[], &avail).unwrap();
        assert_eq!(set.len(), 13);
    }

    fn fixture(capbnd: &str) -> (tempfile::TempDir, CapabilitiesIsolator) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("self")).unwrap();
        std::fs::write(
            d.path().join("self/status"),
            format!(
                "Name:\tberth\nCapInh:\t0000000000000000\nCapPrm:\t{capbnd}\nCapEff:\t{capbnd}\n\
                 CapBnd:\t{capbnd}\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n"
            ),
        )
        .unwrap();
        let iso = CapabilitiesIsolator::new(d.path());
        (d, iso)
    }

    fn spec(add: &[&str], drop: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            limits: Default::default(),
            network: Default::default(),
            hostname: "h".into(),
            sandbox: "/tmp/x".into(),
            options: crate::IsolationOptions {
                cap_add: s(add),
                cap_drop: s(drop),
                ..Default::default()
            },
            image: None,
        }
    }

    #[test]
    fn prepare_reads_the_bounding_set_from_proc() {
        // This machine's: everything up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE (24).
        let (_d, iso) = fixture("000001fffeffffff");
        let li = iso.prepare(&spec(&["NET_ADMIN"], &[])).unwrap();
        assert!(li.no_new_privileges);
        let c = li.capabilities.unwrap();
        assert_eq!(c.bounding, c.effective);
        assert_eq!(c.bounding, c.permitted);
        assert!(c.inheritable.is_empty() && c.ambient.is_empty());
        assert!(c.bounding.contains(&"CAP_NET_ADMIN".to_string()));
        assert_eq!(c.bounding.len(), 15);
        let e = iso.prepare(&spec(&["sys_resource"], &[])).unwrap_err();
        assert!(
            e.to_string().contains("CAP_SYS_RESOURCE is not available"),
            "{e}"
        );
        // add ALL stops at the agent's bounding set.
        let li = iso.prepare(&spec(&["all"], &[])).unwrap();
        let c = li.capabilities.unwrap();
        assert_eq!(c.bounding.len(), 40);
        assert!(!c.bounding.contains(&"CAP_SYS_RESOURCE".to_string()));
        // Only CAP_CHOWN and CAP_KILL in the bounding set.
        let (_d, iso) = fixture("0000000000000021");
        let c = iso.prepare(&spec(&[], &[])).unwrap().capabilities.unwrap();
        assert_eq!(c.bounding, vec!["CAP_CHOWN", "CAP_KILL"]);
    }

    #[test]
    fn unreadable_or_malformed_status_is_an_error() {
        let iso = CapabilitiesIsolator::new(Path::new("/nonexistent-proc"));
        assert!(matches!(
            iso.prepare(&spec(&[], &[])),
            Err(IsolatorError::Io { .. })
        ));
        let (_d, iso) = fixture("zz");
        assert!(matches!(
            iso.prepare(&spec(&[], &[])),
            Err(IsolatorError::Invalid { .. })
        ));
        assert_eq!(
            parse_bounding_set("CapBnd:\t0000000000000001\n")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(parse_bounding_set("Name: x\n"), None);
    }
}
