//! The node's L4 load balancer: every node programs every VIP of the cluster.
//!
//! Tasks labelled `VIP_<n>=/name:port` (a named VIP, `name.l4lb.berth.directory`, its address
//! hashed into 11.0.0.0/8) or `VIP_<n>=ip:port` are backends of that VIP while they run (and are
//! healthy, when they have a health check), at their container address and the VIP's port.
//! `VIP_<n>_PROTOCOL=udp` makes VIP n a UDP one (TCP otherwise). The desired state is rebuilt from
//! the cluster's task list on every change and applied by the node's `VipBalancer`: by default
//! `berth_net::lb::LoadBalancer`, one nftables transaction that touches only the changed map
//! elements (UDP conntrack entries of a removed backend are flushed); with `--lb-backend ipvs`
//! `berth_net::ipvs::IpvsBalancer`, IPVS services and destinations added and removed one by
//! one.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Instant};

use berth_net::{
    Ipv4Net,
    lb::{Backend, LbBackend, LbState, VipBalancer, VipLabel, parse_vip_labels},
    nft::Proto,
};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

/// The VIP range of named VIPs (DESIGN.md).
pub const VIP_RANGE: &str = "11.0.0.0/8";

/// A task of the cluster as the network services (load balancer, DNS) need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTask {
    /// Task id.
    pub task_id: String,
    /// Task name.
    pub name: String,
    /// Framework name.
    pub framework: String,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// Its container address (bridge or overlay), once known.
    pub ip: Option<Ipv4Addr>,
    /// Running, and not reported unhealthy.
    pub serving: bool,
    /// Its service ports (Mesos `DiscoveryInfo`): number, protocol, name; published as DNS
    /// SRV records.
    pub ports: Vec<(u16, Proto, Option<String>)>,
}

impl ServiceTask {
    /// The task's VIP labels (`VIP_<n>`, not their `_PROTOCOL` companions), parsed, each with
    /// its key.
    pub fn vip_labels(&self) -> Result<Vec<(String, VipLabel)>, berth_net::lb::LbError> {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with("VIP_") && !k.ends_with("_PROTOCOL"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let vips = parse_vip_labels(labels.iter().copied())?;
        Ok(labels
            .iter()
            .map(|(k, _)| k.to_string())
            .zip(vips)
            .collect())
    }
}

/// The VIP range as a network.
pub fn vip_range() -> Ipv4Net {
    VIP_RANGE.parse().expect("VIP_RANGE is a valid network")
}

/// What `berth net` shows of the load balancer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LbStatus {
    /// The balancer in use (`nftables` or `ipvs`).
    pub backend: LbBackend,
    /// VIP (`addr:port/proto`, with its name) → backends (`ip:port`).
    pub vips: BTreeMap<String, Vec<String>>,
    /// Label problems of tasks (typos), by task.
    pub errors: Vec<String>,
    /// Duration of the last apply, ms.
    pub last_apply_ms: f64,
    /// Elements added and deleted by the last apply.
    pub last_changes: (usize, usize),
    /// The last apply's error.
    pub apply_error: Option<String>,
}

/// The desired state for `tasks`, and the label errors found (tasks with bad labels are left out
/// of the VIPs they name wrongly, the rest of the cluster is unaffected).
pub fn desired(tasks: &[ServiceTask], range: Ipv4Net) -> (LbState, Vec<String>) {
    let mut state = LbState::default();
    let mut errors = Vec::new();
    for task in tasks {
        let protocols: BTreeMap<String, String> = task
            .labels
            .iter()
            .filter_map(|(k, v)| {
                k.strip_suffix("_PROTOCOL")
                    .filter(|n| n.starts_with("VIP_"))
                    .map(|n| (n.to_string(), v.to_ascii_lowercase()))
            })
            .collect();
        let parsed = match task.vip_labels() {
            Ok(parsed) if parsed.is_empty() => continue,
            Ok(parsed) => parsed,
            Err(err) => {
                errors.push(format!("task {}: {err}", task.task_id));
                continue;
            }
        };
        let (Some(ip), true) = (task.ip, task.serving) else {
            continue;
        };
        for (key, vip) in parsed {
            let proto = match protocols.get(&key).map(String::as_str) {
                None | Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                Some(other) => {
                    errors.push(format!(
                        "task {}: {key}_PROTOCOL={other}: tcp or udp",
                        task.task_id
                    ));
                    continue;
                }
            };
            let backend = Backend { ip, port: vip.port };
            if let Err(err) = state.add(&vip, proto, backend, range) {
                errors.push(format!("task {}: {err}", task.task_id));
            }
        }
    }
    (state, errors)
}

fn describe(state: &LbState) -> BTreeMap<String, Vec<String>> {
    state
        .vips
        .iter()
        .map(|(key, backends)| {
            let name = state
                .name_of(key.addr)
                .map(|n| format!(" ({n}.l4lb.berth.directory)"))
                .unwrap_or_default();
            (
                format!("{}:{}/{}{name}", key.addr, key.port, key.proto.as_str()),
                backends
                    .iter()
                    .map(|b| format!("{}:{}", b.ip, b.port))
                    .collect(),
            )
        })
        .collect()
}

/// Applies the VIPs of `tasks` on every change, until the sender is gone.
pub fn spawn(
    lb: Box<dyn VipBalancer>,
    mut tasks: watch::Receiver<Vec<ServiceTask>>,
    range: Ipv4Net,
) -> watch::Receiver<LbStatus> {
    let (status_tx, status) = watch::channel(LbStatus {
        backend: lb.backend(),
        ..LbStatus::default()
    });
    let lb = Arc::new(std::sync::Mutex::new(lb));
    tokio::spawn(async move {
        loop {
            let current = tasks.borrow_and_update().clone();
            let (state, errors) = desired(&current, range);
            for error in &errors {
                warn!(error, "VIP label refused");
            }
            let lb = lb.clone();
            let applied_state = state.clone();
            let began = Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                lb.lock().expect("lb lock").apply(&applied_state)
            })
            .await;
            let elapsed = began.elapsed().as_secs_f64() * 1000.0;
            status_tx.send_modify(|s| {
                s.vips = describe(&state);
                s.errors = errors;
                s.last_apply_ms = elapsed;
                match result {
                    Ok(Ok(stats)) => {
                        if stats.added + stats.deleted > 0 {
                            info!(
                                added = stats.added,
                                deleted = stats.deleted,
                                flushed = stats.flushed,
                                ms = elapsed,
                                "VIPs applied"
                            );
                        }
                        s.last_changes = (stats.added, stats.deleted);
                        s.apply_error = None;
                    }
                    Ok(Err(err)) => {
                        warn!(error = %err, "applying VIPs failed");
                        s.apply_error = Some(err.to_string());
                    }
                    Err(err) => s.apply_error = Some(err.to_string()),
                }
            });
            if tasks.changed().await.is_err() {
                return;
            }
        }
    });
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, labels: &[(&str, &str)], ip: &str, serving: bool) -> ServiceTask {
        ServiceTask {
            task_id: id.into(),
            name: id.into(),
            framework: "fw".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: Some(ip.parse().unwrap()),
            serving,
            ports: Vec::new(),
        }
    }

    #[test]
    fn running_labelled_tasks_become_backends_of_their_vips() {
        let range = vip_range();
        let tasks = vec![
            task("a", &[("VIP_0", "/web:80")], "9.0.1.2", true),
            task("b", &[("VIP_0", "/web:80")], "9.0.2.2", true),
            task("c", &[("VIP_0", "/web:80")], "9.0.3.2", false),
            task(
                "d",
                &[("VIP_0", "/dns:53"), ("VIP_0_PROTOCOL", "udp")],
                "9.0.1.3",
                true,
            ),
            task("e", &[("VIP_0", "10.0.0.9:8080")], "9.0.1.4", true),
            task("typo", &[("VIP_0", "web:80")], "9.0.1.5", true),
            task("plain", &[("OTHER", "x")], "9.0.1.6", true),
        ];
        let (state, errors) = desired(&tasks, range);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("typo"), "{errors:?}");
        let shown = describe(&state);
        let web = shown
            .iter()
            .find(|(k, _)| k.contains("web.l4lb"))
            .expect("web VIP");
        assert_eq!(
            web.1,
            &vec!["9.0.1.2:80".to_string(), "9.0.2.2:80".to_string()]
        );
        assert!(
            shown.keys().any(|k| k.contains("/udp (dns.l4lb")),
            "{shown:?}"
        );
        assert!(shown.contains_key("10.0.0.9:8080/tcp"), "{shown:?}");
    }
}
