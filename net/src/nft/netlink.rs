//! Map element changes sent to nf_tables as one nfnetlink batch, without the `nft` parser.
//!
//! With 160 000 slot elements the `nft` process spends most of its time parsing and, for a
//! small change to a big map, re-reading the map into its cache; the kernel's own work is a
//! fraction of it. This sender encodes the elements directly (the byte layout `nft
//! --debug=netlink` shows: concatenated fields padded to 4 bytes, addresses and ports in network
//! order, the `numgen` slot in host order) and sends `BATCH_BEGIN, {NEW,DEL}SETELEM..., BATCH_END`
//! in one `sendmsg`: the kernel applies the batch as one transaction, all or nothing.
//! Table and chain setup still goes through `nft` (rare, small).

use std::sync::Mutex;

use netlink_sys::{Socket, SocketAddr};

use super::{ConntrackFlow, MapChange, MapKey, NftCommand, NftError, NftExec};
use crate::netns::NetnsRef;

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NFPROTO_IPV4: u8 = 2;
/// Elements per message: keeps the nested element list under the 64 KiB attribute limit.
const CHUNK: usize = 1000;

/// An [`NftExec`] that applies map element changes over nfnetlink and everything else
/// (table setup, conntrack) through [`NftCommand`].
#[derive(Debug)]
pub struct NftNetlink {
    cmd: NftCommand,
    sock: Mutex<Socket>,
    ns: String,
}

impl NftNetlink {
    /// Opens the nfnetlink socket in the caller's namespace.
    pub fn new() -> Result<Self, NftError> {
        let sock = open().map_err(|e| sock_err("current", e))?;
        Ok(Self {
            cmd: NftCommand::new(),
            sock: Mutex::new(sock),
            ns: "current".into(),
        })
    }

    /// Opens the nfnetlink socket inside `netns` (the socket stays bound to it).
    pub fn in_netns(netns: NetnsRef) -> Result<Self, NftError> {
        let ns = netns.to_string();
        let sock = netns.run(open)?.map_err(|e| sock_err(&ns, e))?;
        Ok(Self {
            cmd: NftCommand::in_netns(netns),
            sock: Mutex::new(sock),
            ns,
        })
    }
}

fn sock_err(ns: &str, e: std::io::Error) -> NftError {
    NftError::Spawn {
        program: format!("nfnetlink socket in {ns}").into(),
        source: e,
    }
}

fn open() -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    s.set_cap_ack(true)?;
    Ok(s)
}

struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&[family, 0]);
        b.extend_from_slice(&res_id.to_be_bytes());
        Msg(b)
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.pad();
    }

    fn begin(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&self.0);
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn key_bytes(k: &MapKey) -> Vec<u8> {
    match *k {
        MapKey::Slot { addr, port, slot } => {
            let mut v = addr.octets().to_vec();
            v.extend_from_slice(&port.to_be_bytes());
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&(slot as u32).to_ne_bytes());
            v
        }
        MapKey::Port(p) => p.to_be_bytes().to_vec(),
    }
}

fn data_bytes(ip: std::net::Ipv4Addr, port: u16) -> Vec<u8> {
    let mut v = ip.octets().to_vec();
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

/// Encodes `changes` as one batch.
fn encode(table: &str, changes: &[MapChange], seq: &mut u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = || {
        *seq = seq.wrapping_add(1);
        *seq
    };
    Msg::new(NFNL_MSG_BATCH_BEGIN, 0, next(), 0, NFNL_SUBSYS_NFTABLES).finish(&mut out);
    let kind = |k: u16| (NFNL_SUBSYS_NFTABLES << 8) | k;
    let header = |m: &mut Msg, map: &str| {
        m.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        m.attr(NFTA_SET_ELEM_LIST_SET, &cstr(map));
    };
    for c in changes {
        match c {
            MapChange::Flush { map } => {
                let mut m = Msg::new(kind(NFT_MSG_DELSETELEM), 0, next(), NFPROTO_IPV4, 0);
                header(&mut m, map);
                m.finish(&mut out);
            }
            MapChange::Delete { map, keys } => {
                for chunk in keys.chunks(CHUNK) {
                    let mut m = Msg::new(kind(NFT_MSG_DELSETELEM), 0, next(), NFPROTO_IPV4, 0);
                    header(&mut m, map);
                    let list = m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                    for k in chunk {
                        let e = m.begin(NFTA_LIST_ELEM);
                        let kk = m.begin(NFTA_SET_ELEM_KEY);
                        m.attr(NFTA_DATA_VALUE, &key_bytes(k));
                        m.end(kk);
                        m.end(e);
                    }
                    m.end(list);
                    m.finish(&mut out);
                }
            }
            MapChange::Add { map, elems } => {
                for chunk in elems.chunks(CHUNK) {
                    let mut m = Msg::new(
                        kind(NFT_MSG_NEWSETELEM),
                        NLM_F_CREATE,
                        next(),
                        NFPROTO_IPV4,
                        0,
                    );
                    header(&mut m, map);
                    let list = m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                    for (k, ip, port) in chunk {
                        let e = m.begin(NFTA_LIST_ELEM);
                        let kk = m.begin(NFTA_SET_ELEM_KEY);
                        m.attr(NFTA_DATA_VALUE, &key_bytes(k));
                        m.end(kk);
                        let d = m.begin(NFTA_SET_ELEM_DATA);
                        m.attr(NFTA_DATA_VALUE, &data_bytes(*ip, *port));
                        m.end(d);
                        m.end(e);
                    }
                    m.end(list);
                    m.finish(&mut out);
                }
            }
        }
    }
    Msg::new(NFNL_MSG_BATCH_END, 0, next(), 0, NFNL_SUBSYS_NFTABLES).finish(&mut out);
    out
}

impl NftExec for NftNetlink {
    fn run(&self, script: &str) -> Result<(), NftError> {
        self.cmd.run(script)
    }

    fn flush_conntrack(&self, flow: &ConntrackFlow) -> Result<(), NftError> {
        self.cmd.flush_conntrack(flow)
    }

    fn apply_changes(&self, table: &str, changes: &[MapChange]) -> Result<(), NftError> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let mut seq = 0u32;
        let batch = encode(table, changes, &mut seq);
        let fail = |stderr: String| NftError::Transaction {
            table: table.to_string(),
            stderr,
        };
        let want = batch.len() + 65536;
        let want = i32::try_from(want).map_err(|_| fail("batch too large".into()))?;
        // SAFETY: the fd is a valid socket owned by `sock` for the call; the option value is a
        // live i32 whose size is passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&*sock),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&want as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(fail(format!(
                "SO_SNDBUFFORCE: {}",
                std::io::Error::last_os_error()
            )));
        }
        sock.send_to(&batch, &SocketAddr::new(0, 0), 0)
            .map_err(|e| {
                fail(format!(
                    "sendmsg ({} bytes) in {}: {e}",
                    batch.len(),
                    self.ns
                ))
            })?;
        // nfnetlink processes the batch synchronously inside sendmsg: any error is queued on
        // the socket by now. Without NLM_F_ACK, success sends nothing.
        let mut errors = Vec::new();
        loop {
            let mut buf = vec![0u8; 65536];
            match sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => {
                    let mut off = 0;
                    while off + 20 <= n {
                        let len =
                            u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                        if kind == NLMSG_ERROR {
                            let code =
                                i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                            if code != 0 {
                                errors.push(std::io::Error::from_raw_os_error(-code).to_string());
                            }
                        }
                        if len < 16 {
                            break;
                        }
                        off += (len + 3) & !3;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(fail(format!("recv: {e}"))),
            }
        }
        if !errors.is_empty() {
            errors.dedup();
            return Err(fail(format!(
                "nfnetlink batch rejected: {}",
                errors.join("; ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_keys_like_nft() {
        let k = MapKey::Slot {
            addr: "11.0.0.1".parse().unwrap(),
            port: 80,
            slot: 3,
        };
        let mut want = vec![11, 0, 0, 1, 0, 80, 0, 0];
        want.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(key_bytes(&k), want);
        assert_eq!(key_bytes(&MapKey::Port(8080)), [0x1f, 0x90]);
        assert_eq!(
            data_bytes("9.0.1.5".parse().unwrap(), 8080),
            [9, 0, 1, 5, 0x1f, 0x90, 0, 0]
        );
    }

    #[test]
    fn batch_is_framed_and_chunked() {
        let elems: Vec<_> = (0..2500u16)
            .map(|i| (MapKey::Port(i + 1), "9.0.1.5".parse().unwrap(), 80))
            .collect();
        let mut seq = 0;
        let b = encode(
            "berth",
            &[MapChange::Add {
                map: "ports_tcp".into(),
                elems,
            }],
            &mut seq,
        );
        // begin + 3 chunks + end
        assert_eq!(seq, 5);
        let mut off = 0;
        let mut count = 0;
        while off < b.len() {
            let len = u32::from_ne_bytes(b[off..off + 4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            off += len;
            count += 1;
        }
        assert_eq!((off, count), (b.len(), 5));
    }
}
