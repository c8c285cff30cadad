//! The real overlay kernel: rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use futures::future::try_join_all;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteProtocol, RouteType,
};
use rtnetlink::{LinkVxlan, RouteMessageBuilder};

use super::{
    OverlayConfig, OverlayEntries, OverlayError, OverlayKernel, OverlayOp, VXLAN_OVERHEAD,
    overlay_mtu,
};
use crate::addr::vtep_mac;
use crate::link::{LinkError, Netlink, check_ifname};

/// The overlay kernel over an rtnetlink connection (in the node's namespace).
#[derive(Debug, Clone)]
pub struct RtnlOverlay {
    nl: Netlink,
    device: String,
}

impl RtnlOverlay {
    /// Over `nl`, for the device named `device` (for messages).
    pub fn new(nl: Netlink, device: &str) -> Self {
        Self {
            nl,
            device: device.into(),
        }
    }

    fn entry_err(
        &self,
        op: &'static str,
        o: &OverlayOp,
    ) -> impl Fn(rtnetlink::Error) -> OverlayError {
        let entry = o.to_string();
        let device = self.device.clone();
        move |source| OverlayError::Entry {
            op,
            entry: entry.clone(),
            device: device.clone(),
            source: Box::new(source),
        }
    }

    async fn run(&self, index: u32, o: &OverlayOp) -> Result<(), OverlayError> {
        let h = self.nl.handle();
        match *o {
            OverlayOp::AddRoute { dst, via } => {
                let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .gateway(via)
                    .output_interface(index)
                    .onlink()
                    .build();
                h.route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(self.entry_err("add", o))
            }
            OverlayOp::DelRoute { dst, via } => {
                // Protocol 0 matches a route of any origin (planted by hand: `proto boot`).
                let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .gateway(via)
                    .output_interface(index)
                    .protocol(RouteProtocol::Unspec)
                    .build();
                ignore_missing(h.route().del(msg).execute().await)
                    .map_err(self.entry_err("delete", o))
            }
            OverlayOp::AddNeighbour { ip, mac } => h
                .neighbours()
                .add(index, IpAddr::V4(ip))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(self.entry_err("add", o)),
            OverlayOp::DelNeighbour { ip } => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Inet;
                msg.header.ifindex = index;
                msg.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
                ignore_missing(h.neighbours().del(msg).execute().await)
                    .map_err(self.entry_err("delete", o))
            }
            OverlayOp::AddFdb { mac, dst } => h
                .neighbours()
                .add_bridge(index, &mac)
                .destination(IpAddr::V4(dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(self.entry_err("add", o)),
            OverlayOp::DelFdb { mac, dst } => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Bridge;
                msg.header.ifindex = index;
                msg.header.flags = NeighbourFlags::Own;
                msg.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
                msg.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
                ignore_missing(h.neighbours().del(msg).execute().await)
                    .map_err(self.entry_err("delete", o))
            }
        }
    }
}

fn ignore_missing(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ESRCH =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Whether an existing link is a VXLAN device matching the configuration.
fn matches_config(attrs: &[LinkAttribute], cfg: &OverlayConfig, underlay: u32) -> bool {
    let infos = attrs.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let Some(infos) = infos else { return false };
    let kind_ok = infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    });
    let Some(data) = data else { return false };
    let has = |want: &InfoVxlan| data.iter().any(|d| d == want);
    kind_ok
        && has(&InfoVxlan::Id(cfg.vni))
        && has(&InfoVxlan::Local(cfg.vtep_ip))
        && has(&InfoVxlan::Port(cfg.port))
        && has(&InfoVxlan::Learning(false))
        && has(&InfoVxlan::Link(underlay))
}

impl OverlayKernel for RtnlOverlay {
    async fn ensure_device(&self, cfg: &OverlayConfig) -> Result<u32, OverlayError> {
        check_ifname(&cfg.device)?;
        let underlay = self.nl.index(&cfg.underlay_dev).await?;
        let ul_mtu = match cfg.underlay_mtu {
            Some(m) => m,
            None => self.nl.mtu(&cfg.underlay_dev).await?,
        };
        if ul_mtu <= VXLAN_OVERHEAD + 68 {
            return Err(OverlayError::MtuTooSmall {
                device: cfg.underlay_dev.clone(),
                mtu: ul_mtu,
            });
        }
        let mtu = overlay_mtu(ul_mtu);
        if let Some(link) = self.nl.link(&cfg.device).await?
            && !matches_config(&link.attributes, cfg, underlay)
        {
            tracing::warn!(device = %cfg.device, "VXLAN device does not match the configuration: recreating");
            self.nl.delete_link(&cfg.device).await?;
        }
        if self.nl.link(&cfg.device).await?.is_none() {
            let msg = LinkVxlan::new(&cfg.device, cfg.vni)
                .dev(underlay)
                .local(cfg.vtep_ip)
                .port(cfg.port)
                .learning(false)
                .mtu(mtu)
                .address(vtep_mac(cfg.vtep_ip).to_vec())
                .build();
            self.nl.add_link(&cfg.device, msg).await?;
            tracing::info!(device = %cfg.device, vni = cfg.vni, vtep = %cfg.vtep_ip, mtu, "created VXLAN device");
        }
        let index = self.nl.index(&cfg.device).await?;
        self.nl
            .ensure_address(&cfg.device, index, cfg.subnet.network(), 32)
            .await?;
        self.nl.set_up(&cfg.device, index, Some(mtu)).await?;
        Ok(index)
    }

    async fn read(&self, index: u32) -> Result<OverlayEntries, OverlayError> {
        let h = self.nl.handle();
        let dump_err = |what| {
            let device = self.device.clone();
            move |source: rtnetlink::Error| OverlayError::Dump {
                what,
                device: device.clone(),
                source: Box::new(source),
            }
        };
        let mut e = OverlayEntries::default();
        let routes: Vec<_> = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(dump_err("routes"))?;
        for r in routes {
            let table = r
                .attributes
                .iter()
                .find_map(|a| {
                    if let RouteAttribute::Table(t) = a {
                        Some(*t)
                    } else {
                        None
                    }
                })
                .unwrap_or(r.header.table as u32);
            if table != RouteHeader::RT_TABLE_MAIN as u32 || r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut oif = None;
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    _ => {}
                }
            }
            if oif == Some(index) {
                let net = crate::addr::Ipv4Net::new(dst, r.header.destination_prefix_length);
                // A gateway-less route on the device is stale too; `0.0.0.0` never matches.
                e.routes.insert(net, gw.unwrap_or(Ipv4Addr::UNSPECIFIED));
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Bridge] {
            let neigh: Vec<_> = h
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .map_err(dump_err(if family == AddressFamily::Inet {
                    "neighbours"
                } else {
                    "fdb"
                }))?;
            for n in neigh.iter().filter(|n| n.header.ifindex == index) {
                let mut dst = None;
                let mut mac = None;
                for a in &n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => {
                            dst = Some(*d)
                        }
                        // FDB dumps (family AF_BRIDGE) carry the VTEP address as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b))
                            if b.len() == 4 =>
                        {
                            dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                        }
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            mac = Some(<[u8; 6]>::try_from(l.as_slice()).expect("6 bytes"))
                        }
                        _ => {}
                    }
                }
                match (family, dst, mac) {
                    (AddressFamily::Inet, Some(ip), m) => {
                        // An entry without lladdr (incomplete/failed) is stale: the zero MAC
                        // never matches a desired one.
                        e.neighbours.insert(ip, m.unwrap_or([0; 6]));
                    }
                    (AddressFamily::Bridge, Some(d), Some(m)) => {
                        e.fdb.insert(m, d);
                    }
                    _ => {}
                }
            }
        }
        Ok(e)
    }

    async fn write(&self, index: u32, ops: &[OverlayOp]) -> Result<(), OverlayError> {
        // Groups in diff order; each group's requests are in flight together on one socket.
        let group = |o: &OverlayOp| match o {
            OverlayOp::DelRoute { .. } => 0,
            OverlayOp::DelNeighbour { .. } => 1,
            OverlayOp::DelFdb { .. } => 2,
            OverlayOp::AddFdb { .. } => 3,
            OverlayOp::AddNeighbour { .. } => 4,
            OverlayOp::AddRoute { .. } => 5,
        };
        for g in 0..6 {
            try_join_all(
                ops.iter()
                    .filter(|o| group(o) == g)
                    .map(|o| self.run(index, o)),
            )
            .await?;
        }
        Ok(())
    }

    async fn delete_device(&self, name: &str) -> Result<bool, OverlayError> {
        self.nl
            .delete_link(name)
            .await
            .map_err(|e: LinkError| e.into())
    }
}
