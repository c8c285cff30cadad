//! The IPVS backend of the L4 load balancer: a generic-netlink IPVS client of our own, the
//! [`IpvsExec`] kernel seam (real: [`IpvsNetlink`]; double: [`RecordingIpvs`]) and the
//! [`IpvsBalancer`] that applies the same [`crate::lb::LbState`] the nftables balancer does.
//!
//! The model (kube-proxy's IPVS mode): every VIP `addr:port/proto` is one IPVS virtual
//! service (scheduler `rr` by default, masquerading forwarding) whose real servers are the
//! VIP's backends. IPVS only sees packets addressed to the node itself, so every VIP address
//! is bound (/32) to the dummy link `berth-ipvs0`. Because IPVS forwards a bridge client's
//! packet to a backend on the same bridge with the client's own source address, the
//! backend's reply would go straight back to the client over the bridge; berth's nftables
//! table therefore masquerades connections whose original destination is a VIP
//! (`ct original ip daddr @ipvs_vips`) when they go from the bridge subnet back into it,
//! in a chain of its own (`ipvs_postrouting`) that the table's base script leaves alone.
//! The per-namespace sysctls kube-proxy sets are set too: `net.ipv4.vs.conntrack=1` (IPVS
//! keeps conntrack entries, which the masquerade needs), `expire_nodest_conn=1` (a removed
//! backend's connections are dropped at their next packet, UDP included) and
//! `expire_quiescent_template=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::lb::{Backend, VipKey};
use crate::netns::NetnsError;

mod balancer;
mod dummy;
mod netlink;
mod nl;

pub use balancer::{IpvsBalancer, IpvsConfig};
pub use netlink::{IpvsNetlink, link_exists};

/// The dummy link VIP addresses are bound to.
pub const DEFAULT_DUMMY: &str = "berth-ipvs0";
/// The default IPVS scheduler (round robin).
pub const DEFAULT_SCHEDULER: &str = "rr";

/// Errors of IPVS, dummy-link and sysctl operations, naming the object that failed.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no IPVS.
    #[error(
        "ip_vs not available ({reason}): the IPVS load balancer needs the ip_vs kernel module; \
         use --lb-backend nftables on this kernel"
    )]
    Unavailable {
        /// What was tried (modprobe, the generic netlink family lookup).
        reason: String,
    },
    /// A netlink socket could not be opened.
    #[error("open {protocol} netlink socket in {ns}: {source}")]
    Socket {
        /// `generic` or `route`.
        protocol: &'static str,
        /// The namespace (or "current").
        ns: String,
        /// The error.
        source: std::io::Error,
    },
    /// Adding, deleting or reading a virtual service failed.
    #[error("{op} IPVS service {service}: {source}")]
    Service {
        /// The operation (`add`, `delete`, `list destinations of`).
        op: &'static str,
        /// The service (`addr:port/proto`).
        service: String,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// Adding or deleting a real server failed.
    #[error("{op} destination {dest} of IPVS service {service}: {source}")]
    Dest {
        /// The operation.
        op: &'static str,
        /// The service (`addr:port/proto`).
        service: String,
        /// The destination (`ip:port`).
        dest: String,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// Listing or flushing all services failed.
    #[error("{op} IPVS services: {source}")]
    Table {
        /// The operation (`list`, `flush`).
        op: &'static str,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// A link operation on the dummy link failed.
    #[error("{op} link {link}: {source}")]
    Link {
        /// The operation.
        op: &'static str,
        /// The link name.
        link: String,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// An address operation on the dummy link failed.
    #[error("{op} address {addr}/32 on {link}: {source}")]
    Address {
        /// The operation.
        op: &'static str,
        /// The link.
        link: String,
        /// The address.
        addr: Ipv4Addr,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// Writing a sysctl failed.
    #[error("set sysctl {key}={value}: {source}")]
    Sysctl {
        /// The key (`net/ipv4/vs/conntrack`).
        key: String,
        /// The value.
        value: String,
        /// The error.
        source: std::io::Error,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// A virtual service as berth programs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpvsService {
    /// Address, protocol and port.
    pub key: VipKey,
    /// Scheduler name (`rr`, `wrr`, `lc`, `sh`, ...).
    pub scheduler: String,
}

/// A real server of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpvsDest {
    /// Address and port.
    pub backend: Backend,
    /// Weight (0: quiescent, gets no new connections).
    pub weight: u32,
    /// Masquerading (NAT) forwarding; `false` for direct routing or tunnelling (not berth's).
    pub masq: bool,
}

impl IpvsDest {
    /// A masquerading destination of weight 1.
    pub fn masq(backend: Backend) -> Self {
        Self {
            backend,
            weight: 1,
            masq: true,
        }
    }
}

/// `addr:port/proto`, as services are named in errors and logs.
pub fn service_name(key: &VipKey) -> String {
    format!("{}:{}/{}", key.addr, key.port, key.proto)
}

/// The kernel seam of the IPVS balancer: IPVS services and destinations, the dummy link's
/// addresses and the namespace's sysctls. [`IpvsNetlink`] talks to the kernel;
/// [`RecordingIpvs`] keeps the same state in memory for unit tests.
pub trait IpvsExec: Send + Sync {
    /// The IPv4 address/port services (firewall-mark and IPv6 services are left out).
    fn services(&self) -> Result<Vec<IpvsService>, IpvsError>;
    /// The destinations of a service.
    fn dests(&self, service: &VipKey) -> Result<Vec<IpvsDest>, IpvsError>;
    /// Adds a service (`IPVS_CMD_NEW_SERVICE`).
    fn add_service(&self, service: &IpvsService) -> Result<(), IpvsError>;
    /// Deletes a service and its destinations (`IPVS_CMD_DEL_SERVICE`).
    fn del_service(&self, service: &VipKey) -> Result<(), IpvsError>;
    /// Adds a destination (`IPVS_CMD_NEW_DEST`).
    fn add_dest(&self, service: &VipKey, dest: &IpvsDest) -> Result<(), IpvsError>;
    /// Deletes a destination (`IPVS_CMD_DEL_DEST`).
    fn del_dest(&self, service: &VipKey, dest: &Backend) -> Result<(), IpvsError>;
    /// Deletes every service of the namespace (`IPVS_CMD_FLUSH`).
    fn flush(&self) -> Result<(), IpvsError>;
    /// Creates the dummy link `name` if missing and sets it up.
    fn ensure_dummy(&self, name: &str) -> Result<(), IpvsError>;
    /// Deletes the link `name`; `false` if it did not exist.
    fn delete_dummy(&self, name: &str) -> Result<bool, IpvsError>;
    /// The IPv4 addresses on link `name` (empty if it does not exist).
    fn dummy_addrs(&self, name: &str) -> Result<Vec<Ipv4Addr>, IpvsError>;
    /// Adds `addr`/32 to link `name` (an existing one is fine).
    fn add_dummy_addr(&self, name: &str, addr: Ipv4Addr) -> Result<(), IpvsError>;
    /// Removes `addr`/32 from link `name` (a missing one is fine).
    fn del_dummy_addr(&self, name: &str, addr: Ipv4Addr) -> Result<(), IpvsError>;
    /// Writes a sysctl of the namespace (`net/ipv4/vs/conntrack`).
    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), IpvsError>;
}

/// What [`RecordingIpvs`] holds: the simulated kernel state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordedIpvs {
    /// Services → (scheduler, destinations).
    pub services: BTreeMap<VipKey, (String, BTreeSet<IpvsDest>)>,
    /// The dummy link's addresses (`None`: no link).
    pub dummy: Option<BTreeSet<Ipv4Addr>>,
    /// Sysctls written.
    pub sysctls: BTreeMap<String, String>,
}

/// The recording double: simulates the kernel's IPVS table, the dummy link and sysctls in
/// memory, logs every call that changes something, and fails on demand.
#[derive(Debug, Default)]
pub struct RecordingIpvs {
    /// The simulated state.
    pub state: Mutex<RecordedIpvs>,
    /// Changing calls, in order (`add_service 11.0.0.1:80/tcp rr`, `del_dest ...`).
    pub ops: Mutex<Vec<String>>,
    /// When set, the next changing call fails with this errno (and is not applied).
    pub fail_next: Mutex<Option<i32>>,
}

impl RecordingIpvs {
    /// The changing calls so far; clears the log.
    pub fn take_ops(&self) -> Vec<String> {
        std::mem::take(&mut *self.ops.lock().unwrap())
    }

    /// A copy of the simulated state.
    pub fn snapshot(&self) -> RecordedIpvs {
        self.state.lock().unwrap().clone()
    }

    fn op(&self, text: String) -> Result<std::sync::MutexGuard<'_, RecordedIpvs>, std::io::Error> {
        if let Some(errno) = self.fail_next.lock().unwrap().take() {
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        self.ops.lock().unwrap().push(text);
        Ok(self.state.lock().unwrap())
    }
}

fn errno(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

impl IpvsExec for RecordingIpvs {
    fn services(&self) -> Result<Vec<IpvsService>, IpvsError> {
        let st = self.state.lock().unwrap();
        Ok(st
            .services
            .iter()
            .map(|(key, (scheduler, _))| IpvsService {
                key: *key,
                scheduler: scheduler.clone(),
            })
            .collect())
    }

    fn dests(&self, service: &VipKey) -> Result<Vec<IpvsDest>, IpvsError> {
        let st = self.state.lock().unwrap();
        match st.services.get(service) {
            Some((_, dests)) => Ok(dests.iter().copied().collect()),
            None => Err(IpvsError::Service {
                op: "list destinations of",
                service: service_name(service),
                source: errno(libc::ESRCH),
            }),
        }
    }

    fn add_service(&self, service: &IpvsService) -> Result<(), IpvsError> {
        let name = service_name(&service.key);
        let err = |source| IpvsError::Service {
            op: "add",
            service: name.clone(),
            source,
        };
        let mut st = self
            .op(format!("add_service {name} {}", service.scheduler))
            .map_err(err)?;
        if st.services.contains_key(&service.key) {
            return Err(err(errno(libc::EEXIST)));
        }
        st.services
            .insert(service.key, (service.scheduler.clone(), BTreeSet::new()));
        Ok(())
    }

    fn del_service(&self, service: &VipKey) -> Result<(), IpvsError> {
        let name = service_name(service);
        let err = |source| IpvsError::Service {
            op: "delete",
            service: name.clone(),
            source,
        };
        let mut st = self.op(format!("del_service {name}")).map_err(err)?;
        st.services
            .remove(service)
            .map(|_| ())
            .ok_or_else(|| err(errno(libc::ESRCH)))
    }

    fn add_dest(&self, service: &VipKey, dest: &IpvsDest) -> Result<(), IpvsError> {
        let (name, d) = (service_name(service), dest.backend.to_string());
        let err = |source| IpvsError::Dest {
            op: "add",
            service: name.clone(),
            dest: d.clone(),
            source,
        };
        let mut st = self.op(format!("add_dest {name} {d}")).map_err(err)?;
        let (_, dests) = st
            .services
            .get_mut(service)
            .ok_or_else(|| err(errno(libc::ESRCH)))?;
        if dests.iter().any(|x| x.backend == dest.backend) {
            return Err(err(errno(libc::EEXIST)));
        }
        dests.insert(*dest);
        Ok(())
    }

    fn del_dest(&self, service: &VipKey, dest: &Backend) -> Result<(), IpvsError> {
        let (name, d) = (service_name(service), dest.to_string());
        let err = |source| IpvsError::Dest {
            op: "delete",
            service: name.clone(),
            dest: d.clone(),
            source,
        };
        let mut st = self.op(format!("del_dest {name} {d}")).map_err(err)?;
        let (_, dests) = st
            .services
            .get_mut(service)
            .ok_or_else(|| err(errno(libc::ESRCH)))?;
        let before = dests.len();
        dests.retain(|x| x.backend != *dest);
        if dests.len() == before {
            return Err(err(errno(libc::ENOENT)));
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), IpvsError> {
        let mut st = self.op("flush".into()).map_err(|source| IpvsError::Table {
            op: "flush",
            source,
        })?;
        st.services.clear();
        Ok(())
    }

    fn ensure_dummy(&self, name: &str) -> Result<(), IpvsError> {
        let mut st = self.state.lock().unwrap();
        if st.dummy.is_none() {
            drop(st);
            st = self
                .op(format!("create_dummy {name}"))
                .map_err(|source| IpvsError::Link {
                    op: "create",
                    link: name.into(),
                    source,
                })?;
            st.dummy = Some(BTreeSet::new());
        }
        Ok(())
    }

    fn delete_dummy(&self, name: &str) -> Result<bool, IpvsError> {
        let mut st = self
            .op(format!("delete_dummy {name}"))
            .map_err(|source| IpvsError::Link {
                op: "delete",
                link: name.into(),
                source,
            })?;
        Ok(st.dummy.take().is_some())
    }

    fn dummy_addrs(&self, _name: &str) -> Result<Vec<Ipv4Addr>, IpvsError> {
        let st = self.state.lock().unwrap();
        Ok(st.dummy.iter().flatten().copied().collect())
    }

    fn add_dummy_addr(&self, name: &str, addr: Ipv4Addr) -> Result<(), IpvsError> {
        let err = |source| IpvsError::Address {
            op: "add",
            link: name.into(),
            addr,
            source,
        };
        let mut st = self.op(format!("add_addr {addr}")).map_err(err)?;
        st.dummy
            .as_mut()
            .ok_or_else(|| err(errno(libc::ENODEV)))?
            .insert(addr);
        Ok(())
    }

    fn del_dummy_addr(&self, name: &str, addr: Ipv4Addr) -> Result<(), IpvsError> {
        let mut st = self
            .op(format!("del_addr {addr}"))
            .map_err(|source| IpvsError::Address {
                op: "delete",
                link: name.into(),
                addr,
                source,
            })?;
        if let Some(addrs) = st.dummy.as_mut() {
            addrs.remove(&addr);
        }
        Ok(())
    }

    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), IpvsError> {
        let mut st =
            self.op(format!("sysctl {key}={value}"))
                .map_err(|source| IpvsError::Sysctl {
                    key: key.into(),
                    value: value.into(),
                    source,
                })?;
        st.sysctls.insert(key.into(), value.into());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
