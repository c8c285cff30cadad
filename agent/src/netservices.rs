//! The node's network services for bridge and overlay tasks (`--network-services`, implied by
//! `--overlay`): the node bridge made at start with a route for the VIP range, the L4 load
//! balancer ([`crate::l4lb`]; nftables slot maps, or IPVS with `--lb-backend ipvs`) and the DNS
//! server (`berth_net::dns`) on the bridge gateway, port 53,
//! both fed from the cluster's task list; and the resolv.conf bridge containers get (the gateway
//! as nameserver, `berth.directory` searched).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use berth_net::{
    Ipv4Net,
    dns::{DnsServer, DnsServerConfig, DnsTable, TaskRecord as DnsTask, VipRecord, host_upstreams},
    ipvs::{IpvsBalancer, IpvsConfig, IpvsNetlink},
    isolator::BridgeIsolator,
    lb::{LbBackend, LoadBalancer, VipBalancer, VipTarget},
    nft::{NftConfig, NftExec},
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::l4lb::{self, LbStatus, ServiceTask};

/// The running services.
pub struct NetServices {
    /// The load balancer's state, for `berth net`.
    pub lb: watch::Receiver<LbStatus>,
    /// The DNS server's address.
    pub dns: SocketAddr,
    /// The resolv.conf bridge containers get.
    pub resolv_conf: PathBuf,
    _server: DnsServer,
}

/// Starts the services on the node bridge; `tasks` is the cluster's task list. With
/// `LbBackend::Ipvs` on a kernel without `ip_vs` this fails (`ip_vs not available ...`).
pub async fn start(
    bridge: Arc<BridgeIsolator>,
    nft: Arc<dyn NftExec>,
    lb_backend: LbBackend,
    tasks: watch::Receiver<Vec<ServiceTask>>,
    runtime_dir: &Path,
) -> anyhow::Result<NetServices> {
    let vip_range = l4lb::vip_range();
    let gateway = bridge.config().gateway();
    // The load balancer.
    let cfg = NftConfig {
        hairpin_subnets: vec![bridge.config().subnet],
        ..NftConfig::default()
    };
    let mut lb: Box<dyn VipBalancer> = match lb_backend {
        LbBackend::Nftables => {
            remove_ipvs_leftovers(nft.clone(), &cfg, vip_range).await;
            Box::new(LoadBalancer::new(nft, cfg))
        }
        LbBackend::Ipvs => {
            let ipvs = Arc::new(IpvsNetlink::new().context("--lb-backend ipvs")?);
            let cfg = IpvsConfig {
                vip_range,
                nft: cfg,
                ..IpvsConfig::default()
            };
            Box::new(IpvsBalancer::new(ipvs, nft, cfg))
        }
    };
    bridge
        .ensure_bridge()
        .context("creating the node bridge for the network services")?;
    let lb = tokio::task::spawn_blocking(move || lb.setup().map(|()| lb))
        .await?
        .with_context(|| format!("setting up the {lb_backend} load balancer"))?;
    let lb_status = l4lb::spawn(lb, tasks.clone(), vip_range);
    // DNS on the gateway: the node's own resolvers upstream (a loopback stub is unreachable
    // from containers, so it is skipped).
    let upstreams = host_upstreams(Path::new("/"), true).unwrap_or_else(|err| {
        warn!(error = %err, "no upstream resolvers: only berth.directory names will resolve");
        Vec::new()
    });
    let table = Arc::new(DnsTable::default());
    let listen = SocketAddr::new(IpAddr::V4(gateway), 53);
    let server = DnsServer::bind(DnsServerConfig::new(listen, upstreams), table.clone())
        .await
        .with_context(|| format!("DNS server on {listen}"))?;
    tokio::spawn(fill_dns(table, tasks, vip_range));
    let dir = runtime_dir.join("dns");
    std::fs::create_dir_all(&dir)?;
    let resolv_conf = dir.join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        berth_net::bridge::resolv_conf(
            &[IpAddr::V4(gateway)],
            &["berth.directory".to_string()],
            &["ndots:2".to_string()],
        ),
    )?;
    info!(dns = %listen, vips = %vip_range, lb_backend = %lb_backend, "node network services ready");
    Ok(NetServices {
        lb: lb_status,
        dns: listen,
        resolv_conf,
        _server: server,
    })
}

/// After a run with `--lb-backend ipvs`, the nftables balancer would share VIPs with IPVS
/// services still there: removes berth's services, the dummy link and the masquerade set. Only
/// where the dummy link exists, so a kernel without ip_vs is never asked to load it.
async fn remove_ipvs_leftovers(nft: Arc<dyn NftExec>, cfg: &NftConfig, vip_range: Ipv4Net) {
    let cfg = IpvsConfig {
        vip_range,
        nft: cfg.clone(),
        ..IpvsConfig::default()
    };
    let removed = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        if !berth_net::ipvs::link_exists(None, &cfg.dummy)? {
            return Ok(false);
        }
        let ipvs = Arc::new(IpvsNetlink::new()?);
        IpvsBalancer::new(ipvs, nft, cfg).teardown()?;
        Ok(true)
    })
    .await;
    match removed {
        Ok(Ok(true)) => info!("removed the IPVS services and VIP addresses of an earlier run"),
        Ok(Ok(false)) => {}
        Ok(Err(err)) => warn!(error = %err, "removing IPVS leftovers of an earlier run"),
        Err(err) => warn!(error = %err, "removing IPVS leftovers of an earlier run"),
    }
}

/// Keeps the DNS table in step with the tasks: VIP names of running backends, task names of
/// running tasks with an address.
async fn fill_dns(
    table: Arc<DnsTable>,
    mut tasks: watch::Receiver<Vec<ServiceTask>>,
    range: Ipv4Net,
) {
    loop {
        let current = tasks.borrow_and_update().clone();
        let (vips, records) = dns_records(&current, range);
        table.replace_all(vips, records);
        if tasks.changed().await.is_err() {
            return;
        }
    }
}

/// The DNS records of `tasks`.
pub fn dns_records(tasks: &[ServiceTask], range: Ipv4Net) -> (Vec<VipRecord>, Vec<DnsTask>) {
    let mut vips: Vec<VipRecord> = Vec::new();
    let mut records = Vec::new();
    for task in tasks.iter().filter(|t| t.serving) {
        // Label errors are the load balancer's to report (`berth net ls`).
        for (_, vip) in task.vip_labels().unwrap_or_default() {
            if let VipTarget::Named(name) = vip.target
                && !vips.iter().any(|v| v.name == name)
            {
                vips.push(VipRecord::named(&name, range));
            }
        }
        if let Some(ip) = task.ip {
            records.push(DnsTask {
                task_id: task.task_id.clone(),
                name: task.name.clone(),
                framework: task.framework.clone(),
                ips: vec![IpAddr::V4(ip)],
                ports: task
                    .ports
                    .iter()
                    .map(|(port, protocol, name)| berth_net::dns::TaskPort {
                        protocol: *protocol,
                        port: *port,
                        name: name.clone(),
                    })
                    .collect(),
            });
        }
    }
    (vips, records)
}

/// The cluster's tasks as service tasks, from the leading master's operator event stream
/// (`mesos::operator_stream`: a Mesos 1.x master or berth's own, `--dev` included). The
/// returned guard keeps the stream open.
pub fn cluster_tasks(
    leader: watch::Receiver<Option<crate::mesos::detector::MasterLeader>>,
) -> (
    crate::mesos::operator_stream::ClusterTasks,
    watch::Receiver<Vec<ServiceTask>>,
) {
    let stream = crate::mesos::operator_stream::ClusterTasks::start(leader);
    let mut state = stream.state();
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        loop {
            let tasks: Vec<ServiceTask> = state
                .borrow_and_update()
                .tasks
                .values()
                .map(|task| ServiceTask {
                    task_id: task.id.clone(),
                    name: task.name.clone(),
                    framework: task.framework_name.clone(),
                    // VIP labels may sit on the task or on its discovery ports (Marathon).
                    labels: task
                        .labels
                        .iter()
                        .chain(task.ports.iter().flat_map(|p| p.labels.iter()))
                        .cloned()
                        .collect(),
                    ip: task.ips.iter().find_map(|ip| match ip {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    }),
                    serving: task.is_serving(),
                    ports: task
                        .ports
                        .iter()
                        .filter_map(|p| {
                            let protocol = match p.protocol.as_deref() {
                                Some("udp") => berth_net::nft::Proto::Udp,
                                _ => berth_net::nft::Proto::Tcp,
                            };
                            Some((u16::try_from(p.number).ok()?, protocol, p.name.clone()))
                        })
                        .collect(),
                })
                .collect();
            tx.send_if_modified(|current| {
                if *current == tasks {
                    false
                } else {
                    *current = tasks;
                    true
                }
            });
            if state.changed().await.is_err() {
                return;
            }
        }
    });
    (stream, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_has_vips_of_serving_backends_and_task_names() {
        let range = l4lb::vip_range();
        let task = |id: &str, serving: bool| ServiceTask {
            task_id: id.into(),
            name: "web".into(),
            framework: "marathon".into(),
            labels: vec![("VIP_0".into(), "/web:80".into())],
            ip: Some("9.0.1.2".parse().unwrap()),
            serving,
            ports: vec![(80, berth_net::nft::Proto::Tcp, Some("http".into()))],
        };
        let (vips, records) =
            dns_records(&[task("a", true), task("b", true), task("c", false)], range);
        assert_eq!(vips.len(), 1);
        assert_eq!(vips[0].addr, berth_net::lb::vip_address("web", range));
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].ports.len(),
            1,
            "SRV records come from the discovery ports"
        );
        let (vips, records) = dns_records(&[task("c", false)], range);
        assert!(vips.is_empty() && records.is_empty());
    }
}
