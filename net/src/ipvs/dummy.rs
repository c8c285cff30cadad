//! rtnetlink requests for the dummy link holding the VIP addresses: find, create, set up and
//! delete a link; list, add and remove its IPv4 addresses. Synchronous, on a [`Conn`], so the
//! balancer needs no async runtime.

use std::io;
use std::net::Ipv4Addr;

use super::nl::{self, Conn, Msg, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 1;
const AF_INET: u8 = libc::AF_INET as u8;

/// `struct ifinfomsg` for link `index` (0: by name) setting `flags` under `change`.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `struct ifaddrmsg` of an IPv4 address with `prefix` on link `index`.
fn ifaddrmsg(prefix: u8, index: u32) -> [u8; 8] {
    let mut b = [AF_INET, prefix, 0, 0, 0, 0, 0, 0];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The index of link `name`, or `None` if there is no such link.
pub(super) fn index(conn: &mut Conn, name: &str) -> io::Result<Option<u32>> {
    let mut m = Msg::new(RTM_GETLINK, 0);
    m.raw(&ifinfomsg(0, 0, 0));
    m.attr(IFLA_IFNAME, &cstr(name));
    match conn.query(m) {
        Ok(reply) => {
            let idx = reply
                .payload
                .get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short ifinfomsg"))?;
            Ok(Some(idx))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates dummy link `name`, up. An existing link of that name is not an error.
pub(super) fn create(conn: &mut Conn, name: &str) -> io::Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    m.raw(&ifinfomsg(0, IFF_UP, IFF_UP));
    m.attr(IFLA_IFNAME, &cstr(name));
    let info = m.begin(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, b"dummy");
    m.end(info);
    match conn.request(m) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Sets link `index` up.
pub(super) fn set_up(conn: &mut Conn, index: u32) -> io::Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, 0);
    m.raw(&ifinfomsg(index, IFF_UP, IFF_UP));
    conn.request(m)
}

/// Deletes link `index`.
pub(super) fn delete(conn: &mut Conn, index: u32) -> io::Result<()> {
    let mut m = Msg::new(RTM_DELLINK, 0);
    m.raw(&ifinfomsg(index, 0, 0));
    conn.request(m)
}

/// The IPv4 addresses of link `index`.
pub(super) fn addrs(conn: &mut Conn, index: u32) -> io::Result<Vec<Ipv4Addr>> {
    let mut m = Msg::new(RTM_GETADDR, NLM_F_DUMP);
    m.raw(&ifaddrmsg(0, 0));
    let mut out = Vec::new();
    for reply in conn.dump(m)? {
        if reply.kind != RTM_NEWADDR || reply.payload.len() < 8 || reply.payload[0] != AF_INET {
            continue;
        }
        let idx = u32::from_ne_bytes(reply.payload[4..8].try_into().expect("4 bytes"));
        if idx != index {
            continue;
        }
        let body = &reply.payload[8..];
        let raw = nl::attr(body, IFA_LOCAL).or_else(|| nl::attr(body, IFA_ADDRESS));
        if let Some(b) = raw.and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            out.push(Ipv4Addr::from(b));
        }
    }
    Ok(out)
}

fn addr_msg(kind: u16, flags: u16, index: u32, addr: Ipv4Addr) -> Msg {
    let mut m = Msg::new(kind, flags);
    m.raw(&ifaddrmsg(32, index));
    m.attr(IFA_LOCAL, &addr.octets());
    m.attr(IFA_ADDRESS, &addr.octets());
    m
}

/// Adds `addr`/32 to link `index`; an address already there is fine.
pub(super) fn add_addr(conn: &mut Conn, index: u32, addr: Ipv4Addr) -> io::Result<()> {
    match conn.request(addr_msg(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        index,
        addr,
    )) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Removes `addr`/32 from link `index`; an address not there is fine.
pub(super) fn del_addr(conn: &mut Conn, index: u32, addr: Ipv4Addr) -> io::Result<()> {
    match conn.request(addr_msg(RTM_DELADDR, 0, index, addr)) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_messages_carry_a_host_prefix_on_the_link() {
        let m = addr_msg(RTM_NEWADDR, 0, 7, Ipv4Addr::new(11, 0, 0, 5));
        let body = m.finish(1);
        let ifa = &body[16..24];
        assert_eq!(ifa[..2], [AF_INET, 32]);
        assert_eq!(u32::from_ne_bytes(ifa[4..8].try_into().unwrap()), 7);
        assert_eq!(nl::attr(&body[24..], IFA_LOCAL), Some(&[11, 0, 0, 5][..]));
    }
}
