//! The namespaces isolator: every container gets new pid, mount, uts, ipc and cgroup namespaces,
//! and a new network namespace (loopback only) unless it asked for host networking. (The user
//! namespace is the [`crate::userns`] isolator's, as an option.)

use crate::{ContainerSpec, Isolator, IsolatorError, LaunchInfo, Namespace, NetworkMode};

/// Asks the launcher for the container's namespaces.
#[derive(Debug, Default)]
pub struct NamespacesIsolator;

impl Isolator for NamespacesIsolator {
    fn name(&self) -> &'static str {
        "namespaces"
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        let mut namespaces = vec![
            Namespace::Pid,
            Namespace::Mount,
            Namespace::Uts,
            Namespace::Ipc,
            // The shim's init unshares it once it sits in the container's cgroups, so the
            // container sees its own cgroup as the root.
            Namespace::Cgroup,
        ];
        if spec.network != NetworkMode::Host {
            namespaces.push(Namespace::Net);
        }
        Ok(LaunchInfo {
            namespaces,
            hostname: Some(spec.hostname.clone()),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn spec(network: NetworkMode) -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            limits: Limits {
                cpus: 1.0,
                mem_bytes: 1 << 20,
                pids_max: None,
                cpu_hard_cap: true,
                ..Default::default()
            },
            network,
            hostname: "c1".into(),
            sandbox: std::path::PathBuf::from("/nonexistent"),
            options: Default::default(),
            image: None,
        }
    }

    #[test]
    fn net_namespace_only_without_host_network() {
        let iso = NamespacesIsolator;
        for mode in [NetworkMode::None, NetworkMode::Host] {
            let ns = iso.prepare(&spec(mode)).unwrap().namespaces;
            assert!(ns.contains(&Namespace::Cgroup) && ns.contains(&Namespace::Pid));
            assert!(!ns.contains(&Namespace::User));
        }
        assert!(
            iso.prepare(&spec(NetworkMode::None))
                .unwrap()
                .namespaces
                .contains(&Namespace::Net)
        );
        assert!(
            !iso.prepare(&spec(NetworkMode::Host))
                .unwrap()
                .namespaces
                .contains(&Namespace::Net)
        );
    }
}
