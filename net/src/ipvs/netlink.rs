//! [`IpvsNetlink`]: the real [`IpvsExec`], IPVS over generic netlink (family `IPVS`, resolved
//! through `nlctrl`; attribute layout from `linux/ip_vs.h`), the dummy link over rtnetlink,
//! sysctls through `/proc/sys` of the namespace.
//!
//! Wire details the kernel insists on: addresses are 16-byte `union nf_inet_addr` (IPv4 in
//! the first four bytes), ports are big-endian `u16`, everything else host order; a new
//! service needs scheduler, flags, timeout and netmask, a new destination forwarding method,
//! weight and both thresholds.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use super::nl::{self, Conn, Msg, NLM_F_DUMP};
use super::{IpvsDest, IpvsError, IpvsExec, IpvsService, dummy, service_name};
use crate::lb::{Backend, VipKey};
use crate::netns::NetnsRef;
use crate::nft::Proto;

const NETLINK_ROUTE: isize = 0;
const NETLINK_GENERIC: isize = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const IPVS_GENL_NAME: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;

const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_DEL_SERVICE: u8 = 3;
const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_DEL_DEST: u8 = 7;
const IPVS_CMD_GET_DEST: u8 = 8;
const IPVS_CMD_FLUSH: u8 = 17;

const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;

const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;

const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

const IP_VS_CONN_F_FWD_MASK: u32 = 0x7;
const IP_VS_CONN_F_MASQ: u32 = 0;
const IP_VS_CONN_F_DROUTE: u32 = 3;
const AF_INET: u16 = libc::AF_INET as u16;

/// The real seam: generic netlink for IPVS, rtnetlink for the dummy link, `/proc/sys` for
/// sysctls, all in one network namespace (the caller's, or one given).
#[derive(Debug)]
pub struct IpvsNetlink {
    genl: Mutex<Conn>,
    rtnl: Mutex<Conn>,
    family: u16,
    netns: Option<NetnsRef>,
    ns: String,
    proc_sys: PathBuf,
}

impl IpvsNetlink {
    /// Opens the sockets in the caller's namespace. Loads `ip_vs` (`modprobe`) if the family
    /// is not registered yet; fails with [`IpvsError::Unavailable`] if that does not help.
    pub fn new() -> Result<Self, IpvsError> {
        Self::open(None)
    }

    /// Opens the sockets inside `netns` (they stay bound to it); sysctls are written there.
    pub fn in_netns(netns: NetnsRef) -> Result<Self, IpvsError> {
        Self::open(Some(netns))
    }

    fn open(netns: Option<NetnsRef>) -> Result<Self, IpvsError> {
        let ns = netns
            .as_ref()
            .map_or_else(|| "current".to_string(), ToString::to_string);
        let sockets = || (Conn::open(NETLINK_GENERIC), Conn::open(NETLINK_ROUTE));
        let (genl, rtnl) = match &netns {
            Some(n) => n.run(sockets)?,
            None => sockets(),
        };
        let sock_err = |protocol| {
            let ns = ns.clone();
            move |source| IpvsError::Socket {
                protocol,
                ns,
                source,
            }
        };
        let mut genl = genl.map_err(sock_err("generic"))?;
        let rtnl = rtnl.map_err(sock_err("route"))?;
        let family = match resolve_family(&mut genl) {
            Ok(id) => id,
            Err(first) => {
                let modprobe = modprobe_ip_vs();
                resolve_family(&mut genl).map_err(|again| IpvsError::Unavailable {
                    reason: format!(
                        "{modprobe}; generic netlink family {IPVS_GENL_NAME} not registered \
                         ({first}; after modprobe: {again})"
                    ),
                })?
            }
        };
        tracing::debug!(family, ns = %ns, "IPVS generic netlink family resolved");
        Ok(Self {
            genl: Mutex::new(genl),
            rtnl: Mutex::new(rtnl),
            family,
            netns,
            ns,
            proc_sys: PathBuf::from("/proc/sys"),
        })
    }

    /// The namespace the sockets live in (`current` or its path).
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn genl(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.genl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rtnl(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.rtnl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn msg(&self, cmd: u8, flags: u16) -> Msg {
        let mut m = Msg::new(self.family, flags);
        m.raw(&[cmd, IPVS_GENL_VERSION, 0, 0]);
        m
    }

    /// The index of the dummy link, or the error `op` on it names.
    fn link_index(&self, conn: &mut Conn, name: &str, op: &'static str) -> Result<u32, IpvsError> {
        let err = |source| IpvsError::Link {
            op,
            link: name.into(),
            source,
        };
        dummy::index(conn, name)
            .map_err(err)?
            .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::ENODEV)))
    }
}

/// Whether link `name` exists in `netns` (the caller's if `None`), without needing IPVS: a
/// node switched back to the nftables balancer uses it to find what an IPVS run left behind.
pub fn link_exists(netns: Option<&NetnsRef>, name: &str) -> Result<bool, IpvsError> {
    let ns = netns.map_or_else(|| "current".to_string(), ToString::to_string);
    let look = || -> std::io::Result<bool> {
        let mut conn = Conn::open(NETLINK_ROUTE)?;
        Ok(dummy::index(&mut conn, name)?.is_some())
    };
    let found = match netns {
        Some(n) => n.run(look)?,
        None => look(),
    };
    found.map_err(|source| IpvsError::Link {
        op: "look up",
        link: format!("{name} in {ns}"),
        source,
    })
}

/// `modprobe ip_vs`, described for the error message.
fn modprobe_ip_vs() -> String {
    match Command::new("modprobe").arg("ip_vs").output() {
        Ok(out) if out.status.success() => "modprobe ip_vs succeeded".into(),
        Ok(out) => format!(
            "modprobe ip_vs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("modprobe ip_vs failed: {e}"),
    }
}

fn resolve_family(conn: &mut Conn) -> std::io::Result<u16> {
    let mut m = Msg::new(GENL_ID_CTRL, 0);
    m.raw(&[CTRL_CMD_GETFAMILY, 1, 0, 0]);
    let mut name = IPVS_GENL_NAME.as_bytes().to_vec();
    name.push(0);
    m.attr(CTRL_ATTR_FAMILY_NAME, &name);
    let reply = conn.query(m)?;
    reply
        .payload
        .get(4..)
        .and_then(|body| nl::attr(body, CTRL_ATTR_FAMILY_ID))
        .and_then(nl::u16_ne)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no family id"))
}

fn proto_number(p: Proto) -> u16 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u16,
        Proto::Udp => libc::IPPROTO_UDP as u16,
    }
}

fn addr16(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

fn addr4(p: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(p.get(..4)?).ok()?))
}

fn port_be(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

/// The nested service attribute: the identity (family, protocol, address, port) and, for a
/// new service, its settings.
fn put_service(m: &mut Msg, key: &VipKey, scheduler: Option<&str>) {
    let n = m.begin(IPVS_CMD_ATTR_SERVICE);
    m.attr(IPVS_SVC_ATTR_AF, &AF_INET.to_ne_bytes());
    m.attr(
        IPVS_SVC_ATTR_PROTOCOL,
        &proto_number(key.proto).to_ne_bytes(),
    );
    m.attr(IPVS_SVC_ATTR_ADDR, &addr16(key.addr));
    m.attr(IPVS_SVC_ATTR_PORT, &key.port.to_be_bytes());
    if let Some(sched) = scheduler {
        let mut name = sched.as_bytes().to_vec();
        name.push(0);
        m.attr(IPVS_SVC_ATTR_SCHED_NAME, &name);
        // struct ip_vs_flags { flags, mask }: no flags (not persistent, not one-packet).
        let mut flags = 0u32.to_ne_bytes().to_vec();
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        m.attr(IPVS_SVC_ATTR_FLAGS, &flags);
        m.attr(IPVS_SVC_ATTR_TIMEOUT, &0u32.to_ne_bytes());
        m.attr(IPVS_SVC_ATTR_NETMASK, &u32::MAX.to_ne_bytes());
    }
    m.end(n);
}

fn put_dest(m: &mut Msg, backend: &Backend, full: Option<&IpvsDest>) {
    let n = m.begin(IPVS_CMD_ATTR_DEST);
    m.attr(IPVS_DEST_ATTR_ADDR, &addr16(backend.ip));
    m.attr(IPVS_DEST_ATTR_PORT, &backend.port.to_be_bytes());
    m.attr(IPVS_DEST_ATTR_ADDR_FAMILY, &AF_INET.to_ne_bytes());
    if let Some(d) = full {
        let fwd = if d.masq {
            IP_VS_CONN_F_MASQ
        } else {
            IP_VS_CONN_F_DROUTE
        };
        m.attr(IPVS_DEST_ATTR_FWD_METHOD, &fwd.to_ne_bytes());
        m.attr(IPVS_DEST_ATTR_WEIGHT, &d.weight.to_ne_bytes());
        m.attr(IPVS_DEST_ATTR_U_THRESH, &0u32.to_ne_bytes());
        m.attr(IPVS_DEST_ATTR_L_THRESH, &0u32.to_ne_bytes());
    }
    m.end(n);
}

/// A service of a `GET_SERVICE` dump reply; `None` for ones berth does not manage (IPv6,
/// firewall mark, SCTP).
fn parse_service(payload: &[u8]) -> Option<IpvsService> {
    let svc = nl::attr(payload.get(4..)?, IPVS_CMD_ATTR_SERVICE)?;
    if nl::attr(svc, IPVS_SVC_ATTR_AF).and_then(nl::u16_ne)? != AF_INET {
        return None;
    }
    if nl::attr(svc, IPVS_SVC_ATTR_FWMARK)
        .and_then(nl::u32_ne)
        .is_some_and(|m| m != 0)
    {
        return None;
    }
    let proto = match nl::attr(svc, IPVS_SVC_ATTR_PROTOCOL).and_then(nl::u16_ne)? {
        p if p == libc::IPPROTO_TCP as u16 => Proto::Tcp,
        p if p == libc::IPPROTO_UDP as u16 => Proto::Udp,
        _ => return None,
    };
    let scheduler = nl::attr(svc, IPVS_SVC_ATTR_SCHED_NAME)
        .map(|b| String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or(b)).into_owned())
        .unwrap_or_default();
    Some(IpvsService {
        key: VipKey {
            addr: addr4(nl::attr(svc, IPVS_SVC_ATTR_ADDR)?)?,
            proto,
            port: port_be(nl::attr(svc, IPVS_SVC_ATTR_PORT)?)?,
        },
        scheduler,
    })
}

/// A destination of a `GET_DEST` dump reply (`None` for an IPv6 one).
fn parse_dest(payload: &[u8]) -> Option<IpvsDest> {
    let d = nl::attr(payload.get(4..)?, IPVS_CMD_ATTR_DEST)?;
    if nl::attr(d, IPVS_DEST_ATTR_ADDR_FAMILY)
        .and_then(nl::u16_ne)
        .is_some_and(|af| af != AF_INET)
    {
        return None;
    }
    let fwd = nl::attr(d, IPVS_DEST_ATTR_FWD_METHOD).and_then(nl::u32_ne)?;
    Some(IpvsDest {
        backend: Backend {
            ip: addr4(nl::attr(d, IPVS_DEST_ATTR_ADDR)?)?,
            port: port_be(nl::attr(d, IPVS_DEST_ATTR_PORT)?)?,
        },
        weight: nl::attr(d, IPVS_DEST_ATTR_WEIGHT).and_then(nl::u32_ne)?,
        masq: fwd & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ,
    })
}

impl IpvsExec for IpvsNetlink {
    fn services(&self) -> Result<Vec<IpvsService>, IpvsError> {
        let m = self.msg(IPVS_CMD_GET_SERVICE, NLM_F_DUMP);
        let replies = self
            .genl()
            .dump(m)
            .map_err(|source| IpvsError::Table { op: "list", source })?;
        Ok(replies
            .iter()
            .filter_map(|r| parse_service(&r.payload))
            .collect())
    }

    fn dests(&self, service: &VipKey) -> Result<Vec<IpvsDest>, IpvsError> {
        let mut m = self.msg(IPVS_CMD_GET_DEST, NLM_F_DUMP);
        put_service(&mut m, service, None);
        let replies = self.genl().dump(m).map_err(|source| IpvsError::Service {
            op: "list destinations of",
            service: service_name(service),
            source,
        })?;
        Ok(replies
            .iter()
            .filter_map(|r| parse_dest(&r.payload))
            .collect())
    }

    fn add_service(&self, service: &IpvsService) -> Result<(), IpvsError> {
        let mut m = self.msg(IPVS_CMD_NEW_SERVICE, 0);
        put_service(&mut m, &service.key, Some(&service.scheduler));
        self.genl().request(m).map_err(|source| IpvsError::Service {
            op: "add",
            service: format!(
                "{} (scheduler {})",
                service_name(&service.key),
                service.scheduler
            ),
            source,
        })
    }

    fn del_service(&self, service: &VipKey) -> Result<(), IpvsError> {
        let mut m = self.msg(IPVS_CMD_DEL_SERVICE, 0);
        put_service(&mut m, service, None);
        self.genl().request(m).map_err(|source| IpvsError::Service {
            op: "delete",
            service: service_name(service),
            source,
        })
    }

    fn add_dest(&self, service: &VipKey, dest: &IpvsDest) -> Result<(), IpvsError> {
        let mut m = self.msg(IPVS_CMD_NEW_DEST, 0);
        put_service(&mut m, service, None);
        put_dest(&mut m, &dest.backend, Some(dest));
        self.genl().request(m).map_err(|source| IpvsError::Dest {
            op: "add",
            service: service_name(service),
            dest: dest.backend.to_string(),
            source,
        })
    }

    fn del_dest(&self, service: &VipKey, dest: &Backend) -> Result<(), IpvsError> {
        let mut m = self.msg(IPVS_CMD_DEL_DEST, 0);
        put_service(&mut m, service, None);
        put_dest(&mut m, dest, None);
        self.genl().request(m).map_err(|source| IpvsError::Dest {
            op: "delete",
            service: service_name(service),
            dest: dest.to_string(),
            source,
        })
    }

    fn flush(&self) -> Result<(), IpvsError> {
        let m = self.msg(IPVS_CMD_FLUSH, 0);
        self.genl().request(m).map_err(|source| IpvsError::Table {
            op: "flush",
            source,
        })
    }

    fn ensure_dummy(&self, name: &str) -> Result<(), IpvsError> {
        crate::link::check_ifname(name).map_err(|e| IpvsError::Link {
            op: "create",
            link: name.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let mut conn = self.rtnl();
        let err = |op| {
            move |source| IpvsError::Link {
                op,
                link: name.into(),
                source,
            }
        };
        match dummy::index(&mut conn, name).map_err(err("look up"))? {
            Some(idx) => dummy::set_up(&mut conn, idx).map_err(err("set up")),
            None => dummy::create(&mut conn, name).map_err(err("create")),
        }
    }

    fn delete_dummy(&self, name: &str) -> Result<bool, IpvsError> {
        let mut conn = self.rtnl();
        let err = |source| IpvsError::Link {
            op: "delete",
            link: name.into(),
            source,
        };
        match dummy::index(&mut conn, name).map_err(err)? {
            Some(idx) => dummy::delete(&mut conn, idx).map(|()| true).map_err(err),
            None => Ok(false),
        }
    }

    fn dummy_addrs(&self, name: &str) -> Result<Vec<Ipv4Addr>, IpvsError> {
        let mut conn = self.rtnl();
        let err = |source| IpvsError::Link {
            op: "list addresses of",
            link: name.into(),
            source,
        };
        match dummy::index(&mut conn, name).map_err(err)? {
            Some(idx) => dummy::addrs(&mut conn, idx).map_err(err),
            None => Ok(Vec::new()),
        }
    }

    fn add_dummy_addr(&self, name: &str, addr: Ipv4Addr) -> Result<(), IpvsError> {
        let mut conn = self.rtnl();
        let idx = self.link_index(&mut conn, name, "find")?;
        dummy::add_addr(&mut conn, idx, addr).map_err(|source| IpvsError::Address {
            op: "add",
            link: name.into(),
            addr,
            source,
        })
    }

    fn del_dummy_addr(&self, name: &str, addr: Ipv4Addr) -> Result<(), IpvsError> {
        let mut conn = self.rtnl();
        let Some(idx) = dummy::index(&mut conn, name).map_err(|source| IpvsError::Link {
            op: "find",
            link: name.into(),
            source,
        })?
        else {
            return Ok(());
        };
        dummy::del_addr(&mut conn, idx, addr).map_err(|source| IpvsError::Address {
            op: "delete",
            link: name.into(),
            addr,
            source,
        })
    }

    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), IpvsError> {
        let root = self.proc_sys.clone();
        let (k, v) = (key.to_string(), value.to_string());
        let write = move || crate::netns::write_sysctl(&root, &k, &v);
        let result = match &self.netns {
            Some(ns) => ns.run(write)?,
            None => write(),
        };
        result.map_err(|source| IpvsError::Sysctl {
            key: key.into(),
            value: value.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VipKey {
        VipKey {
            addr: Ipv4Addr::new(11, 1, 2, 3),
            proto: Proto::Udp,
            port: 53,
        }
    }

    #[test]
    fn service_attributes_round_trip_through_the_dump_parser() {
        let mut m = Msg::new(0x30, 0);
        m.raw(&[IPVS_CMD_NEW_SERVICE, IPVS_GENL_VERSION, 0, 0]);
        put_service(&mut m, &key(), Some("rr"));
        let bytes = m.finish(1);
        let svc = parse_service(&bytes[16..]).expect("parsed");
        assert_eq!(svc.key, key());
        assert_eq!(svc.scheduler, "rr");
        // The port is big-endian, the address a 16-byte nf_inet_addr.
        let nested = nl::attr(&bytes[20..], IPVS_CMD_ATTR_SERVICE).unwrap();
        assert_eq!(nl::attr(nested, IPVS_SVC_ATTR_PORT), Some(&[0, 53][..]));
        assert_eq!(nl::attr(nested, IPVS_SVC_ATTR_ADDR).unwrap().len(), 16);
        // A service being deleted is named by identity only.
        let mut m = Msg::new(0x30, 0);
        m.raw(&[IPVS_CMD_DEL_SERVICE, IPVS_GENL_VERSION, 0, 0]);
        put_service(&mut m, &key(), None);
        let bytes = m.finish(2);
        let nested = nl::attr(&bytes[20..], IPVS_CMD_ATTR_SERVICE).unwrap();
        assert!(nl::attr(nested, IPVS_SVC_ATTR_SCHED_NAME).is_none());
    }

    #[test]
    fn dest_attributes_round_trip_and_foreign_services_are_skipped() {
        let d = IpvsDest::masq(Backend {
            ip: Ipv4Addr::new(9, 0, 1, 2),
            port: 8080,
        });
        let mut m = Msg::new(0x30, 0);
        m.raw(&[IPVS_CMD_NEW_DEST, IPVS_GENL_VERSION, 0, 0]);
        put_dest(&mut m, &d.backend, Some(&d));
        let bytes = m.finish(1);
        assert_eq!(parse_dest(&bytes[16..]), Some(d));
        // A firewall-mark service is not berth's.
        let mut m = Msg::new(0x30, 0);
        m.raw(&[IPVS_CMD_NEW_SERVICE, IPVS_GENL_VERSION, 0, 0]);
        let n = m.begin(IPVS_CMD_ATTR_SERVICE);
        m.attr(IPVS_SVC_ATTR_AF, &AF_INET.to_ne_bytes());
        m.attr(IPVS_SVC_ATTR_FWMARK, &7u32.to_ne_bytes());
        m.end(n);
        assert_eq!(parse_service(&m.finish(1)[16..]), None);
    }
}
