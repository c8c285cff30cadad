//! Port mappings: a node port → a container's address and port, as elements of the `ports_tcp`/`ports_udp` maps
//! of berth's nftables table (DNAT for traffic to any local address of the node, from outside
//! and from the node itself; hairpin SNAT for containers on the same bridge). The node port
//! itself is held by the agent ([`loopback`]): a port a node process uses is refused, and
//! `127.0.0.1:<port>` is relayed to the container.

pub mod loopback;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::nft::{MapChange, MapKey, NftConfig, NftError, NftExec, Proto};

/// Errors of port mappings.
#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    /// The node port is already mapped to another container.
    #[error("{proto} port {host_port} is already mapped (to {ip}:{port} of container {owner})")]
    AlreadyMapped {
        /// Protocol.
        proto: Proto,
        /// The node port.
        host_port: u16,
        /// The container holding it.
        owner: String,
        /// Its address.
        ip: Ipv4Addr,
        /// Its port.
        port: u16,
    },
    /// The node port is in use on the node (a node process listens on it).
    #[error("{proto} port {host_port} is in use on this node: {source}")]
    HostPortInUse {
        /// Protocol.
        proto: Proto,
        /// The node port.
        host_port: u16,
        /// The bind error.
        source: std::io::Error,
    },
    /// Port 0 is not a port.
    #[error("port 0 is not a valid {0} port")]
    ZeroPort(Proto),
    /// The nftables transaction failed (nothing was changed).
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// One mapping.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// Protocol.
    pub proto: Proto,
    /// The node port.
    pub host_port: u16,
    /// The container's address.
    pub container_ip: Ipv4Addr,
    /// The container's port.
    pub container_port: u16,
}

/// The node's port mappings, keyed by (protocol, node port), each owned by a container.
pub struct PortMapper {
    exec: Arc<dyn NftExec>,
    table: String,
    mapped: BTreeMap<(Proto, u16), (String, PortMapping)>,
    host_ports: Option<Box<dyn loopback::HostPorts>>,
}

impl std::fmt::Debug for PortMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortMapper")
            .field("table", &self.table)
            .field("mapped", &self.mapped)
            .finish()
    }
}

fn changes(flush: bool, delete: &[&PortMapping], add: &[&PortMapping]) -> Vec<MapChange> {
    let mut out = Vec::new();
    for p in [Proto::Tcp, Proto::Udp] {
        let map = format!("ports_{p}");
        if flush {
            out.push(MapChange::Flush { map: map.clone() });
        }
        let keys: Vec<MapKey> = delete
            .iter()
            .filter(|m| m.proto == p)
            .map(|m| MapKey::Port(m.host_port))
            .collect();
        if !keys.is_empty() {
            out.push(MapChange::Delete {
                map: map.clone(),
                keys,
            });
        }
        let elems: Vec<_> = add
            .iter()
            .filter(|m| m.proto == p)
            .map(|m| (MapKey::Port(m.host_port), m.container_ip, m.container_port))
            .collect();
        if !elems.is_empty() {
            out.push(MapChange::Add { map, elems });
        }
    }
    out
}

impl PortMapper {
    /// A mapper over the `ports_*` maps of `cfg.table` (the table must exist: see
    /// [`crate::lb::LoadBalancer::ensure_table`], which creates both maps).
    pub fn new(exec: Arc<dyn NftExec>, cfg: &NftConfig) -> Self {
        Self {
            exec,
            table: cfg.table.clone(),
            mapped: BTreeMap::new(),
            host_ports: None,
        }
    }

    /// Also holds every mapped node port with `host_ports` (see [`loopback`]).
    pub fn with_host_ports(mut self, host_ports: Box<dyn loopback::HostPorts>) -> Self {
        self.host_ports = Some(host_ports);
        self
    }

    /// Replaces every mapping with `all` (agent start / recovery) in one transaction.
    /// Conflicts inside `all` are an error and change nothing.
    pub fn sync(&mut self, all: &[(String, PortMapping)]) -> Result<(), PortMapError> {
        let mut next = BTreeMap::new();
        for (owner, m) in all {
            check(m)?;
            if let Some((o, prev)) = next.insert((m.proto, m.host_port), (owner.clone(), m.clone()))
            {
                return Err(already(&o, &prev));
            }
        }
        let all: Vec<&PortMapping> = next.values().map(|(_, m)| m).collect();
        self.exec
            .apply_changes(&self.table, &changes(true, &[], &all))?;
        if let Some(host_ports) = self.host_ports.as_mut() {
            for (key, (_, old)) in &self.mapped {
                if next.get(key).is_none_or(|(_, m)| m != old) {
                    host_ports.release(old);
                }
            }
            for (owner, m) in next.values() {
                // A restored mapping keeps its DNAT even when its port cannot be held now.
                if let Err(err) = host_ports.hold(m) {
                    tracing::warn!(owner, error = %err, "restored port mapping: node port not held");
                }
            }
        }
        self.mapped = next;
        Ok(())
    }

    /// Adds `owner`'s mappings in one transaction; a port mapped already (to anyone else, or
    /// twice in `maps`) is [`PortMapError::AlreadyMapped`] and nothing changes. Re-adding the
    /// identical mapping for the same owner is a no-op.
    pub fn add(&mut self, owner: &str, maps: &[PortMapping]) -> Result<(), PortMapError> {
        let mut new = Vec::new();
        let mut seen = BTreeMap::new();
        for m in maps {
            check(m)?;
            if let Some((o, prev)) = self.mapped.get(&(m.proto, m.host_port)) {
                if o == owner && prev == m {
                    continue;
                }
                return Err(already(o, prev));
            }
            if let Some(prev) = seen.insert((m.proto, m.host_port), m) {
                return Err(already(owner, prev));
            }
            new.push(m.clone());
        }
        if new.is_empty() {
            return Ok(());
        }
        if let Some(host_ports) = self.host_ports.as_mut() {
            for (i, m) in new.iter().enumerate() {
                if let Err(err) = host_ports.hold(m) {
                    for held in &new[..i] {
                        host_ports.release(held);
                    }
                    return Err(err);
                }
            }
        }
        let add: Vec<&PortMapping> = new.iter().collect();
        if let Err(err) = self
            .exec
            .apply_changes(&self.table, &changes(false, &[], &add))
        {
            if let Some(host_ports) = self.host_ports.as_mut() {
                for m in &new {
                    host_ports.release(m);
                }
            }
            return Err(err.into());
        }
        for m in new {
            tracing::info!(owner, proto = %m.proto, host_port = m.host_port,
                ip = %m.container_ip, port = m.container_port, "mapped port");
            self.mapped
                .insert((m.proto, m.host_port), (owner.to_string(), m));
        }
        Ok(())
    }

    /// Removes every mapping of `owner` (container destroyed) in one transaction; returns them.
    pub fn remove_owner(&mut self, owner: &str) -> Result<Vec<PortMapping>, PortMapError> {
        let gone: Vec<PortMapping> = self
            .mapped
            .values()
            .filter(|(o, _)| o == owner)
            .map(|(_, m)| m.clone())
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let del: Vec<&PortMapping> = gone.iter().collect();
        self.exec
            .apply_changes(&self.table, &changes(false, &del, &[]))?;
        for m in &gone {
            self.mapped.remove(&(m.proto, m.host_port));
            if let Some(host_ports) = self.host_ports.as_mut() {
                host_ports.release(m);
            }
        }
        Ok(gone)
    }

    /// The current mappings with their owners.
    pub fn mappings(&self) -> Vec<(String, PortMapping)> {
        self.mapped.values().cloned().collect()
    }
}

fn check(m: &PortMapping) -> Result<(), PortMapError> {
    if m.host_port == 0 || m.container_port == 0 {
        return Err(PortMapError::ZeroPort(m.proto));
    }
    Ok(())
}

fn already(owner: &str, m: &PortMapping) -> PortMapError {
    PortMapError::AlreadyMapped {
        proto: m.proto,
        host_port: m.host_port,
        owner: owner.to_string(),
        ip: m.container_ip,
        port: m.container_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::RecordingNft;

    fn pm(proto: Proto, hp: u16, ip: [u8; 4], cp: u16) -> PortMapping {
        PortMapping {
            proto,
            host_port: hp,
            container_ip: Ipv4Addr::from(ip),
            container_port: cp,
        }
    }

    #[test]
    fn add_conflict_remove_and_sync() {
        let rec = Arc::new(RecordingNft::default());
        let mut p = PortMapper::new(rec.clone(), &NftConfig::default());
        p.add("c1", &[pm(Proto::Tcp, 8080, [9, 0, 1, 2], 80)])
            .unwrap();
        assert_eq!(
            rec.scripts()[0],
            "add element ip berth ports_tcp { 8080 : 9.0.1.2 . 80 }\n"
        );
        // Same mapping again for the same owner: no transaction.
        p.add("c1", &[pm(Proto::Tcp, 8080, [9, 0, 1, 2], 80)])
            .unwrap();
        assert_eq!(rec.scripts().len(), 1);
        let err = p
            .add("c2", &[pm(Proto::Tcp, 8080, [9, 0, 1, 3], 80)])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tcp port 8080 is already mapped (to 9.0.1.2:80 of container c1)"
        );
        // UDP 8080 is a different port.
        p.add("c2", &[pm(Proto::Udp, 8080, [9, 0, 1, 3], 53)])
            .unwrap();
        let dup = [
            pm(Proto::Tcp, 9000, [9, 0, 1, 3], 1),
            pm(Proto::Tcp, 9000, [9, 0, 1, 3], 2),
        ];
        assert!(matches!(
            p.add("c3", &dup),
            Err(PortMapError::AlreadyMapped { .. })
        ));
        assert!(matches!(
            p.add("c3", &[pm(Proto::Tcp, 0, [9, 0, 1, 3], 1)]),
            Err(PortMapError::ZeroPort(_))
        ));
        assert_eq!(p.remove_owner("c1").unwrap().len(), 1);
        assert_eq!(
            rec.scripts().last().unwrap(),
            "delete element ip berth ports_tcp { 8080 }\n"
        );
        assert!(p.remove_owner("c1").unwrap().is_empty());
        p.sync(&[("c9".into(), pm(Proto::Tcp, 1, [9, 0, 1, 9], 2))])
            .unwrap();
        assert!(
            rec.scripts()
                .last()
                .unwrap()
                .starts_with("flush map ip berth ports_tcp\n")
        );
        assert_eq!(p.mappings().len(), 1);
    }

    #[test]
    fn node_ports_are_held_while_mapped_and_a_busy_one_refuses_the_mapping() {
        let rec = Arc::new(RecordingNft::default());
        let ports = loopback::RecordingHostPorts {
            busy: vec![(Proto::Tcp, 9090)],
            ..Default::default()
        };
        let calls = ports.calls.clone();
        let mut p =
            PortMapper::new(rec.clone(), &NftConfig::default()).with_host_ports(Box::new(ports));
        p.add(
            "c1",
            &[
                pm(Proto::Tcp, 8080, [9, 0, 1, 2], 80),
                pm(Proto::Udp, 8080, [9, 0, 1, 2], 53),
            ],
        )
        .unwrap();
        // The busy port: refused with the reason, the port held before it let go, no DNAT.
        let err = p
            .add(
                "c2",
                &[
                    pm(Proto::Tcp, 7070, [9, 0, 1, 3], 80),
                    pm(Proto::Tcp, 9090, [9, 0, 1, 3], 80),
                ],
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("tcp port 9090 is in use on this node"),
            "{err}"
        );
        assert_eq!(
            rec.scripts().len(),
            1,
            "no transaction for a refused mapping"
        );
        p.remove_owner("c1").unwrap();
        p.sync(&[("c9".into(), pm(Proto::Tcp, 1, [9, 0, 1, 9], 2))])
            .unwrap();
        assert_eq!(
            *calls.lock().unwrap(),
            vec![
                ("hold", Proto::Tcp, 8080),
                ("hold", Proto::Udp, 8080),
                ("hold", Proto::Tcp, 7070),
                ("release", Proto::Tcp, 7070),
                ("release", Proto::Tcp, 8080),
                ("release", Proto::Udp, 8080),
                ("hold", Proto::Tcp, 1),
            ]
        );
    }

    #[test]
    fn loopback_proxies_hold_the_port_and_relay_tcp_and_udp() {
        // Loopback only: a "container" server on 127.0.0.1 and the held ports on 0.0.0.0.
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in server.incoming().flatten() {
                let mut c = c;
                let _ = std::io::Write::write_all(&mut c, b"hello");
            }
        });
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_target = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let free = |proto: Proto| match proto {
            Proto::Tcp => std::net::TcpListener::bind("0.0.0.0:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            Proto::Udp => std::net::UdpSocket::bind("0.0.0.0:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        };
        let (tcp_port, udp_port) = (free(Proto::Tcp), free(Proto::Udp));
        let mut proxies = loopback::LoopbackProxies::new();
        let tcp = pm(Proto::Tcp, tcp_port, [127, 0, 0, 1], target);
        let udp = pm(Proto::Udp, udp_port, [127, 0, 0, 1], udp_target);
        use loopback::HostPorts;
        proxies.hold(&tcp).unwrap();
        proxies.hold(&udp).unwrap();
        // Held: nobody else can bind it.
        assert!(std::net::TcpListener::bind(("0.0.0.0", tcp_port)).is_err());
        let mut c = std::net::TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut c, &mut got).unwrap();
        assert_eq!(got, "hello");
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        u.send_to(b"ping", ("127.0.0.1", udp_port)).unwrap();
        let mut buf = [0u8; 16];
        let n = u.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        // Released: the port is free again.
        proxies.release(&tcp);
        proxies.release(&udp);
        std::net::TcpListener::bind(("0.0.0.0", tcp_port)).unwrap();
        std::net::UdpSocket::bind(("0.0.0.0", udp_port)).unwrap();
    }
}
