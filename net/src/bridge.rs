//! The per-node bridge and a container's veth pair, plus the `resolv.conf`/`hosts` text a
//! container gets.
//!
//! Node side: a Linux bridge (`berth0` by default) holding the subnet's gateway address.
//! Container side, in order:
//! 1. a veth pair `bv<hash>` (host) / `bp<hash>` (peer) with the network's MTU;
//! 2. the host end joins the bridge and goes up;
//! 3. the peer moves into the container's network namespace;
//! 4. inside: the peer is renamed `eth0`, gets the address and MTU, goes up; `lo` goes up;
//!    the default route points at the gateway.
//!
//! A failure after step 1 deletes the host end (the peer goes with it). Teardown deletes the
//! host end; destroying the namespace would remove the pair too.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::addr::Ipv4Net;
use crate::link::{LinkError, Netlink, check_ifname};
use crate::netns::NetnsRef;

/// Name of the container's interface inside its namespace.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Errors of bridge and veth setup.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A netlink operation failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Setting up a container's interface failed.
    #[error("container {container_id}: {source}")]
    Container {
        /// The container.
        container_id: String,
        /// What failed.
        source: LinkError,
    },
    /// The container's address is not inside the bridge subnet.
    #[error("container {container_id}: address {ip} is outside the bridge subnet {subnet}")]
    AddressOutsideSubnet {
        /// The container.
        container_id: String,
        /// The address.
        ip: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
}

/// The node bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge name (`berth0`).
    pub name: String,
    /// The node subnet; the bridge holds its gateway (`.1`) address.
    pub subnet: Ipv4Net,
    /// MTU of the bridge and of every container interface (underlay − 50 on the overlay).
    pub mtu: u32,
    /// The VIP range (`11.0.0.0/8`), routed to the bridge so connections from the node itself
    /// to a VIP have a route before the load balancer's DNAT; `None` to skip.
    pub vip_range: Option<Ipv4Net>,
}

impl BridgeConfig {
    /// The gateway address (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }
}

/// A container attached to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The host end of the veth pair.
    pub host_ifname: String,
    /// The container's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Ipv4Addr,
    /// The interface MTU.
    pub mtu: u32,
}

/// Host-side veth name of a container: `bv` + 12 hex digits of a hash of its id (15 bytes max).
pub fn host_ifname(container_id: &str) -> String {
    format!("bv{:012x}", fnv1a(container_id) & 0xffff_ffff_ffff)
}

fn peer_ifname(container_id: &str) -> String {
    format!("bp{:012x}", fnv1a(container_id) & 0xffff_ffff_ffff)
}

pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Ensures the bridge exists, holds the gateway address, has the MTU and is up; routes the VIP
/// range to it. Returns its index. Idempotent.
pub async fn ensure_bridge(nl: &Netlink, cfg: &BridgeConfig) -> Result<u32, BridgeError> {
    check_ifname(&cfg.name)?;
    if nl.link(&cfg.name).await?.is_none() {
        nl.add_link(&cfg.name, LinkBridge::new(&cfg.name).mtu(cfg.mtu).build())
            .await?;
        tracing::info!(bridge = %cfg.name, subnet = %cfg.subnet, "created bridge");
    }
    let index = nl.index(&cfg.name).await?;
    nl.ensure_address(&cfg.name, index, cfg.gateway(), cfg.subnet.prefix())
        .await?;
    nl.set_up(&cfg.name, index, Some(cfg.mtu)).await?;
    if let Some(vips) = cfg.vip_range {
        nl.replace_link_route(&cfg.name, index, vips).await?;
    }
    Ok(index)
}

/// Attaches a container: veth pair, host end on the bridge, peer as `eth0` with `ip` inside
/// `netns`, default route via the gateway, `lo` up. A stale pair of the same container (agent
/// restart mid-setup) is replaced. On error nothing is left on the host.
pub async fn attach_container(
    host: &Netlink,
    bridge: &BridgeConfig,
    container_id: &str,
    netns: &NetnsRef,
    ip: Ipv4Addr,
) -> Result<Attachment, BridgeError> {
    if !bridge.subnet.contains(ip) {
        return Err(BridgeError::AddressOutsideSubnet {
            container_id: container_id.into(),
            ip,
            subnet: bridge.subnet,
        });
    }
    let host_if = host_ifname(container_id);
    let peer_if = peer_ifname(container_id);
    host.delete_link(&host_if).await?;
    host.delete_link(&peer_if).await?;
    host.add_link(
        &host_if,
        LinkVeth::new(&host_if, &peer_if).mtu(bridge.mtu).build(),
    )
    .await?;
    let att = Attachment {
        host_ifname: host_if.clone(),
        ip,
        prefix: bridge.subnet.prefix(),
        gateway: bridge.gateway(),
        mtu: bridge.mtu,
    };
    match plumb(host, bridge, netns, &host_if, &peer_if, &att).await {
        Ok(()) => {
            tracing::info!(container_id, %ip, host_if = %host_if, "attached container to bridge");
            Ok(att)
        }
        Err(source) => {
            if let Err(e) = host.delete_link(&host_if).await {
                tracing::warn!(container_id, host_if = %host_if, error = %e, "rollback failed");
            }
            Err(BridgeError::Container {
                container_id: container_id.into(),
                source,
            })
        }
    }
}

async fn plumb(
    host: &Netlink,
    bridge: &BridgeConfig,
    netns: &NetnsRef,
    host_if: &str,
    peer_if: &str,
    att: &Attachment,
) -> Result<(), LinkError> {
    let br = host.index(&bridge.name).await?;
    let hi = host.index(host_if).await?;
    let pi = host.index(peer_if).await?;
    host.set_link(
        "attach to bridge",
        host_if,
        LinkUnspec::new_with_index(hi).controller(br).build(),
    )
    .await?;
    host.set_up(host_if, hi, None).await?;
    let fd = netns.open()?;
    // The fd stays open until the request has completed (it is dropped at the end of scope).
    host.set_link(
        "move into container namespace",
        peer_if,
        LinkUnspec::new_with_index(pi)
            .setns_by_fd(fd.as_raw_fd())
            .build(),
    )
    .await?;
    drop(fd);

    let inner = Netlink::connect_in(netns)?;
    let ci = inner.index(peer_if).await?;
    inner
        .set_link(
            "rename to eth0",
            peer_if,
            LinkUnspec::new_with_index(ci)
                .name(CONTAINER_IFNAME)
                .mtu(att.mtu)
                .build(),
        )
        .await?;
    inner
        .ensure_address(CONTAINER_IFNAME, ci, att.ip, att.prefix)
        .await?;
    inner.set_up(CONTAINER_IFNAME, ci, None).await?;
    let lo = inner.index("lo").await?;
    inner.set_up("lo", lo, None).await?;
    inner.replace_default_route(att.gateway).await?;
    Ok(())
}

/// Detaches a container: deletes the host end of its veth pair (the peer goes with it).
/// Returns whether a pair existed. Idempotent.
pub async fn detach_container(host: &Netlink, container_id: &str) -> Result<bool, BridgeError> {
    let existed = host.delete_link(&host_ifname(container_id)).await?;
    if existed {
        tracing::info!(container_id, "detached container from bridge");
    }
    Ok(existed)
}

/// Turns on IPv4 forwarding in the namespace of the calling thread (`proc_sys_root` is
/// `/proc/sys` outside tests). Routing between the bridge and the overlay needs it.
pub fn enable_ip_forward(proc_sys_root: &std::path::Path) -> std::io::Result<()> {
    crate::netns::write_sysctl(proc_sys_root, "net/ipv4/ip_forward", "1")
}

/// `/etc/resolv.conf` text for a container: its nameservers (the agent's DNS first), search
/// domains and options (`ndots:2`...). Pure; the agent writes the file.
pub fn resolv_conf(nameservers: &[IpAddr], search: &[String], options: &[String]) -> String {
    let mut out = String::from("# generated by berth\n");
    for ns in nameservers {
        let _ = writeln!(out, "nameserver {ns}");
    }
    if !search.is_empty() {
        let _ = writeln!(out, "search {}", search.join(" "));
    }
    if !options.is_empty() {
        let _ = writeln!(out, "options {}", options.join(" "));
    }
    out
}

/// `/etc/hosts` text for a container: loopback entries, its own address under `hostname`, then
/// `extra` (name, address) entries. Pure; the agent writes the file.
pub fn hosts_file(hostname: &str, ip: Option<Ipv4Addr>, extra: &[(String, IpAddr)]) -> String {
    let mut out = String::from(
        "# generated by berth\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    match ip {
        Some(ip) => {
            let _ = writeln!(out, "{ip}\t{hostname}");
        }
        None => {
            let _ = writeln!(out, "127.0.1.1\t{hostname}");
        }
    }
    for (name, addr) in extra {
        let _ = writeln!(out, "{addr}\t{name}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_ifnamsiz_and_differ_per_container() {
        let a = host_ifname("task-1.executor-abc");
        assert_eq!(a.len(), 14);
        check_ifname(&a).unwrap();
        check_ifname(&peer_ifname("x")).unwrap();
        assert_ne!(a, host_ifname("task-2.executor-abc"));
        assert_eq!(a, host_ifname("task-1.executor-abc"));
    }

    #[test]
    fn resolv_conf_and_hosts_text() {
        let r = resolv_conf(
            &["9.0.1.1".parse().unwrap(), "8.8.8.8".parse().unwrap()],
            &["berth.directory".into()],
            &["ndots:2".into()],
        );
        assert_eq!(
            r,
            "# generated by berth\nnameserver 9.0.1.1\nnameserver 8.8.8.8\n\
             search berth.directory\noptions ndots:2\n"
        );
        let h = hosts_file(
            "web-1",
            Some(Ipv4Addr::new(9, 0, 1, 5)),
            &[("db".into(), "9.0.2.7".parse().unwrap())],
        );
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("9.0.1.5\tweb-1\n"));
        assert!(h.ends_with("9.0.2.7\tdb\n"));
        assert!(hosts_file("h", None, &[]).contains("127.0.1.1\th\n"));
    }
}
