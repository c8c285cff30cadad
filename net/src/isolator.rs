//! The bridge network isolator: containers of `NetworkMode::Bridge` get a veth pair from their
//! network namespace to the node bridge (created at the first such container) and an address
//! leased from the node subnet. The lease is taken in `prepare` (checkpointed, so an agent
//! restart neither loses nor doubles it), the veth is made in `isolate` (the container's netns
//! exists then and its workload has not run yet), and both are undone in `cleanup`.
//!
//! Port mappings (`--publish`, Mesos `NetworkInfo.port_mappings`) are DNAT entries in the
//! nftables table `ip berth` ([`crate::portmap`]), added in `prepare` so a port that is taken
//! fails the launch with a clear error, removed in `cleanup`, and checkpointed in
//! `<ipam root>/ports.json` so an agent restart puts back exactly the mappings of the
//! containers it recovers.
//!
//! The isolator API is synchronous and called from the agent's async tasks; netlink work runs
//! on a short-lived thread with its own single-threaded runtime, so it never blocks or nests
//! inside the caller's runtime.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use berth_isolators::{
    ContainerId, ContainerSpec, Isolator, IsolatorError, LaunchInfo, NetworkMode,
};
use tracing::{info, warn};

use crate::{
    bridge::{self, BridgeConfig},
    ipam::Ipam,
    lb::LoadBalancer,
    link::Netlink,
    netns::NetnsRef,
    nft::{NftConfig, NftExec, Proto},
    portmap::{PortMapper, PortMapping, loopback::LoopbackProxies},
};

const NAME: &str = "network/bridge";

/// The bridge network isolator.
pub struct BridgeIsolator {
    config: BridgeConfig,
    ipam: Mutex<Ipam>,
    /// Whether the bridge was made (or checked) in this run.
    bridge_ready: Mutex<bool>,
    proc_sys: PathBuf,
    nft: Arc<dyn NftExec>,
    /// Created with the table at the first mapping (or at recovery when mappings exist).
    ports: Mutex<Option<PortMapper>>,
    ports_file: PathBuf,
    /// Bind mapped node ports and relay 127.0.0.1 to the containers (see
    /// [`crate::portmap::loopback`]).
    hold_node_ports: bool,
}

impl BridgeIsolator {
    /// An isolator for `config`, keeping its leases under `ipam_root`; `proc_sys` is `/proc/sys`
    /// (IP forwarding is enabled there with the bridge).
    pub fn new(
        config: BridgeConfig,
        ipam_root: &Path,
        proc_sys: &Path,
        nft: Arc<dyn NftExec>,
    ) -> Result<Self, IsolatorError> {
        let ipam = Ipam::open(ipam_root, config.subnet).map_err(|e| {
            invalid(format!(
                "IPAM for {} in {}: {e}",
                config.subnet,
                ipam_root.display()
            ))
        })?;
        Ok(Self {
            config,
            ipam: Mutex::new(ipam),
            bridge_ready: Mutex::new(false),
            proc_sys: proc_sys.to_path_buf(),
            nft,
            ports: Mutex::new(None),
            ports_file: ipam_root.join("ports.json"),
            hold_node_ports: false,
        })
    }

    /// Holds every mapped node port on the node (a port in use is refused) and relays
    /// connections to `127.0.0.1:<port>` to the container — what the agent does.
    pub fn holding_node_ports(mut self) -> Self {
        self.hold_node_ports = true;
        self
    }

    fn nft_config(&self) -> NftConfig {
        NftConfig {
            hairpin_subnets: vec![self.config.subnet],
            ..NftConfig::default()
        }
    }

    /// Runs `f` on the port mapper, creating the table and the mapper first if needed.
    fn with_ports<T>(
        &self,
        f: impl FnOnce(&mut PortMapper) -> Result<T, String>,
    ) -> Result<T, IsolatorError> {
        let mut ports = self.ports.lock().expect("ports lock");
        if ports.is_none() {
            LoadBalancer::new(self.nft.clone(), self.nft_config())
                .ensure_table()
                .map_err(|e| invalid(format!("nftables table for port mappings: {e}")))?;
            let mapper = PortMapper::new(self.nft.clone(), &self.nft_config());
            *ports = Some(if self.hold_node_ports {
                mapper.with_host_ports(Box::new(LoopbackProxies::new()))
            } else {
                mapper
            });
        }
        let result = f(ports.as_mut().expect("created above")).map_err(invalid);
        if result.is_ok() {
            self.save_ports(ports.as_ref().expect("created above"));
        }
        result
    }

    fn save_ports(&self, mapper: &PortMapper) {
        let mut by_owner: BTreeMap<String, Vec<PortMapping>> = BTreeMap::new();
        for (owner, mapping) in mapper.mappings() {
            by_owner.entry(owner).or_default().push(mapping);
        }
        let write = serde_json::to_vec_pretty(&by_owner)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = self.ports_file.with_extension("json.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &self.ports_file)
            });
        if let Err(err) = write {
            warn!(path = %self.ports_file.display(), error = %err, "checkpointing port mappings");
        }
    }

    fn load_ports(&self) -> BTreeMap<String, Vec<PortMapping>> {
        std::fs::read(&self.ports_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// The address leased to a container, if any.
    pub fn address_of(&self, id: &ContainerId) -> Option<Ipv4Addr> {
        self.ipam
            .lock()
            .expect("ipam lock")
            .leases()
            .get(id)
            .copied()
    }

    /// The bridge settings.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Every port mapping with the container that owns it.
    pub fn mappings(&self) -> Vec<(String, PortMapping)> {
        self.ports
            .lock()
            .expect("ports lock")
            .as_ref()
            .map(PortMapper::mappings)
            .unwrap_or_default()
    }

    /// What `berth net inspect` shows: the bridge, its leases and the port mappings.
    pub fn report(&self) -> serde_json::Value {
        let leases: BTreeMap<String, String> = self
            .ipam
            .lock()
            .expect("ipam lock")
            .leases()
            .into_iter()
            .map(|(owner, ip)| (owner, ip.to_string()))
            .collect();
        let mappings: Vec<serde_json::Value> = self
            .mappings()
            .into_iter()
            .map(|(owner, m)| serde_json::json!({"container_id": owner, "mapping": m}))
            .collect();
        serde_json::json!({
            "bridge": self.config.name,
            "subnet": self.config.subnet.to_string(),
            "gateway": self.config.gateway().to_string(),
            "mtu": self.config.mtu,
            "leases": leases,
            "port_mappings": mappings,
        })
    }

    /// Creates the node bridge (once per run; idempotent) and enables IP forwarding.
    pub fn ensure_bridge(&self) -> Result<(), IsolatorError> {
        let mut ready = self.bridge_ready.lock().expect("bridge lock");
        if *ready {
            return Ok(());
        }
        let config = self.config.clone();
        on_netlink_thread(move |nl| async move {
            bridge::ensure_bridge(&nl, &config).await.map(|_| ())
        })
        .map_err(|e| invalid(format!("bridge {}: {e}", self.config.name)))?;
        if let Err(err) = bridge::enable_ip_forward(&self.proc_sys) {
            warn!(error = %err, "could not enable IP forwarding (bridge traffic stays on the node)");
        }
        info!(bridge = %self.config.name, subnet = %self.config.subnet, "node bridge ready");
        *ready = true;
        Ok(())
    }
}

fn invalid(message: String) -> IsolatorError {
    IsolatorError::Invalid {
        isolator: NAME,
        message,
    }
}

/// Runs `work` with a host-namespace netlink connection on a thread of its own.
fn on_netlink_thread<F, Fut, T, E>(work: F) -> Result<T, String>
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, E>>,
    T: Send,
    E: std::fmt::Display,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("netlink runtime: {e}"))?;
                runtime.block_on(async move {
                    let nl = Netlink::connect().map_err(|e| e.to_string())?;
                    work(nl).await.map_err(|e| e.to_string())
                })
            })
            .join()
            .unwrap_or_else(|_| Err("netlink thread panicked".into()))
    })
}

impl Isolator for BridgeIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        if spec.network != NetworkMode::Bridge {
            return Ok(LaunchInfo::default());
        }
        self.ensure_bridge()?;
        let ip = self
            .ipam
            .lock()
            .expect("ipam lock")
            .allocate(&spec.id)
            .map_err(|e| invalid(format!("container {}: {e}", spec.id)))?;
        info!(container_id = %spec.id, %ip, "leased a bridge address");
        let mut mappings = Vec::new();
        for spec_mapping in &spec.options.port_mappings {
            let proto = match spec_mapping.protocol.as_str() {
                "udp" => Proto::Udp,
                _ => Proto::Tcp,
            };
            mappings.push(PortMapping {
                proto,
                host_port: spec_mapping.host_port,
                container_ip: ip,
                container_port: spec_mapping.container_port,
            });
        }
        if !mappings.is_empty() {
            let mapped = self.with_ports(|mapper| {
                mapper
                    .add(&spec.id, &mappings)
                    .map_err(|e| format!("container {}: {e}", spec.id))
            });
            if let Err(err) = mapped {
                // Nothing of this container stays behind.
                let _ = self.ipam.lock().expect("ipam lock").release(&spec.id);
                return Err(err);
            }
        }
        Ok(LaunchInfo::default())
    }

    fn isolate(&self, id: &ContainerId, pid: i32) -> Result<(), IsolatorError> {
        let Some(ip) = self.address_of(id) else {
            return Ok(());
        };
        let config = self.config.clone();
        let container = id.to_string();
        let netns = NetnsRef::Pid(pid as u32);
        on_netlink_thread(move |nl| async move {
            bridge::attach_container(&nl, &config, &container, &netns, ip).await
        })
        .map(|attachment| {
            info!(container_id = %id, host_ifname = %attachment.host_ifname, %ip, "container on the bridge");
        })
        .map_err(|e| invalid(format!("container {id}: attaching to {}: {e}", self.config.name)))
    }

    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError> {
        if self.address_of(id).is_none() {
            return Ok(());
        }
        let has_ports = self.mappings().iter().any(|(owner, _)| owner == id);
        if has_ports {
            self.with_ports(|mapper| {
                mapper
                    .remove_owner(id)
                    .map(|_| ())
                    .map_err(|e| format!("container {id}: removing its port mappings: {e}"))
            })?;
        }
        let container = id.to_string();
        // The veth usually went with the container's netns; remove the host end if it stayed.
        if let Err(err) =
            on_netlink_thread(
                move |nl| async move { bridge::detach_container(&nl, &container).await },
            )
        {
            warn!(container_id = %id, error = %err, "removing the container's veth");
        }
        self.ipam
            .lock()
            .expect("ipam lock")
            .release(id)
            .map_err(|e| invalid(format!("container {id}: releasing its address: {e}")))?;
        Ok(())
    }

    fn recover(&self, known: &[String]) -> Result<Vec<String>, IsolatorError> {
        // The mappings of the containers that live on go back (the table may have been
        // flushed meanwhile); those of the others go.
        let saved = self.load_ports();
        if !saved.is_empty() {
            let keep: Vec<(String, PortMapping)> = saved
                .into_iter()
                .filter(|(owner, _)| known.contains(owner))
                .flat_map(|(owner, maps)| maps.into_iter().map(move |m| (owner.clone(), m)))
                .collect();
            self.with_ports(|mapper| {
                mapper
                    .sync(&keep)
                    .map_err(|e| format!("restoring port mappings: {e}"))
            })?;
        }
        let leases = self.ipam.lock().expect("ipam lock").leases();
        let mut cleaned = Vec::new();
        for id in leases.keys().filter(|id| !known.contains(id)) {
            self.cleanup(id)?;
            cleaned.push(id.clone());
        }
        Ok(cleaned)
    }

    fn describe(&self, id: &ContainerId) -> serde_json::Value {
        match self.address_of(id) {
            Some(ip) => serde_json::json!({
                "network": "bridge",
                "port_mappings": self
                    .mappings()
                    .into_iter()
                    .filter(|(owner, _)| owner == id)
                    .map(|(_, m)| m)
                    .collect::<Vec<_>>(),
                "bridge": self.config.name,
                "ip": ip.to_string(),
                "gateway": self.config.gateway().to_string(),
                "subnet": self.config.subnet.to_string(),
                "mtu": self.config.mtu,
            }),
            None => serde_json::Value::Null,
        }
    }
}
