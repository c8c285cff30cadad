//! An rtnetlink connection opened inside a chosen network namespace, and the link/address
//! operations the bridge and overlay code share.
//!
//! A netlink socket belongs to the namespace it was created in, whichever thread uses it later;
//! [`Netlink::connect_in`] creates it on a short-lived thread that entered the namespace and
//! drives it on the caller's tokio runtime.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use crate::addr::Ipv4Net;
use crate::netns::{NetnsError, NetnsRef};

/// Errors of netlink link and address operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The netlink socket could not be created.
    #[error("open rtnetlink socket in {ns}: {source}")]
    Connect {
        /// The namespace (or "current").
        ns: String,
        /// The error.
        source: std::io::Error,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request about a link failed.
    #[error("{op} link {link}: {source}")]
    Request {
        /// The operation (`create`, `delete`, `set up`, ...).
        op: &'static str,
        /// The link name.
        link: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// A link that must exist does not.
    #[error("link {0} not found")]
    NotFound(String),
    /// A link name is not a valid interface name.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no '/', ':' or whitespace")]
    BadName(String),
}

/// Checks a Linux interface name (IFNAMSIZ − 1 = 15 bytes).
pub fn check_ifname(name: &str) -> Result<(), LinkError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(LinkError::BadName(name.to_string()))
    }
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
    ns: String,
}

impl Netlink {
    /// Connects in the calling thread's namespace. Must be called inside a tokio runtime.
    pub fn connect() -> Result<Self, LinkError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| LinkError::Connect {
                ns: "current".into(),
                source,
            })?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            ns: "current".into(),
        })
    }

    /// Connects inside `ns`. Must be called inside a tokio runtime; briefly blocks on a
    /// helper thread that enters the namespace and creates the socket.
    pub fn connect_in(ns: &NetnsRef) -> Result<Self, LinkError> {
        let rt = tokio::runtime::Handle::current();
        let name = ns.to_string();
        let (conn, handle, _) = ns
            .run(|| {
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|source| LinkError::Connect {
                ns: name.clone(),
                source,
            })?;
        rt.spawn(conn);
        Ok(Self { handle, ns: name })
    }

    /// The underlying rtnetlink handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The namespace this connection belongs to, for messages.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The link named `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(l) => Ok(l),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(source) => Err(LinkError::Request {
                op: "get",
                link: name.into(),
                source,
            }),
        }
    }

    /// The index of link `name`, or [`LinkError::NotFound`].
    pub async fn index(&self, name: &str) -> Result<u32, LinkError> {
        self.link(name)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    /// The MTU of link `name`.
    pub async fn mtu(&self, name: &str) -> Result<u32, LinkError> {
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.into()))?;
        Ok(link
            .attributes
            .iter()
            .find_map(|a| {
                if let LinkAttribute::Mtu(m) = a {
                    Some(*m)
                } else {
                    None
                }
            })
            .unwrap_or(1500))
    }

    /// Adds a link from a built message (create).
    pub async fn add_link(&self, name: &str, msg: LinkMessage) -> Result<(), LinkError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|source| LinkError::Request {
                op: "create",
                link: name.into(),
                source,
            })
    }

    /// Changes a link (`ip link set`): `msg` built with `LinkUnspec::new_with_index`.
    pub async fn set_link(
        &self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| LinkError::Request {
                op,
                link: name.into(),
                source,
            })
    }

    /// Sets link `index` (named `name` in messages) up, optionally with an MTU.
    pub async fn set_up(&self, name: &str, index: u32, mtu: Option<u32>) -> Result<(), LinkError> {
        let mut b: LinkMessageBuilder<LinkUnspec> = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.set_link("set up", name, b.build()).await
    }

    /// Deletes link `name`; `Ok(false)` if it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(source) => Err(LinkError::Request {
                op: "delete",
                link: name.into(),
                source,
            }),
        }
    }

    /// The IPv4 addresses (with prefix length) on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Request {
                op: "list addresses of",
                link: index.to_string(),
                source,
            })?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip))
                    | AddressAttribute::Address(std::net::IpAddr::V4(ip)) => {
                        Some((*ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Ensures `addr/prefix` is on link `index` (adds it if missing; other addresses stay).
    pub async fn ensure_address(
        &self,
        name: &str,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        if self.addresses(index).await?.contains(&(addr, prefix)) {
            return Ok(());
        }
        self.handle
            .address()
            .add(index, addr.into(), prefix)
            .execute()
            .await
            .map_err(|source| LinkError::Request {
                op: "add address to",
                link: name.into(),
                source,
            })
    }

    /// Adds the default route via `gateway` (replacing an existing default route).
    pub async fn replace_default_route(&self, gateway: Ipv4Addr) -> Result<(), LinkError> {
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| LinkError::Request {
                op: "add default route on",
                link: self.ns.clone(),
                source,
            })
    }

    /// Ensures a route to `dst` on link `index` (scope link, no gateway).
    pub async fn replace_link_route(
        &self,
        name: &str,
        index: u32,
        dst: Ipv4Net,
    ) -> Result<(), LinkError> {
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .output_interface(index)
            .scope(netlink_packet_route::route::RouteScope::Link)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| LinkError::Request {
                op: "add route on",
                link: name.into(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        check_ifname("berth0").unwrap();
        check_ifname("berth.vx").unwrap();
        check_ifname("123456789012345").unwrap();
        assert!(check_ifname("1234567890123456").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
    }
}
