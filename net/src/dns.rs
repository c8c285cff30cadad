//! berth's DNS: the agent answers names under `berth.directory` from a table it fills from the
//! cluster's task list, and forwards everything else to the node's resolvers.
//!
//! - `<name>.l4lb.berth.directory` → A: the named VIP's address ([`crate::lb::vip_address`]).
//! - `<task>.<framework>.berth.directory` → A/AAAA: one per task instance address.
//! - `_<task>._tcp.<framework>.berth.directory` (and `_udp`) → SRV: one per instance and port,
//!   targets `<task>-<hash>.<framework>.berth.directory` whose addresses ride along in the
//!   additional section.
//!
//! Names are sanitised like DC/OS does ([`dns_label`]). Unknown names under the zone get
//! NXDOMAIN, known names without records of the asked type an empty NOERROR (both with the
//! zone's SOA for negative caching).
//!
//! Pieces: [`wire`] (the RFC 1035 message format, written here: no DNS crate), [`DnsTable`]
//! (the records, swapped or updated per entry under a lock held only for a hash lookup),
//! [`DnsServer`] (tokio UDP + TCP on one address, relaying other names upstream with SERVFAIL
//! on timeout) and [`ResolvConf`] (which upstreams the node has).
//!
//! Wiring in the agent: build an `Arc<DnsTable>`, fill it with [`DnsTable::replace_all`] and
//! keep it current with [`DnsTable::upsert_task`] / [`DnsTable::remove_task`]; start
//! [`DnsServer::bind`] with [`DnsServerConfig::new`]`(gateway:53, host_upstreams(...))`.

use std::net::SocketAddr;
use std::path::PathBuf;

mod resolv;
mod server;
mod table;
pub mod wire;

pub use resolv::{ResolvConf, host_upstreams};
pub use server::{DnsCounters, DnsServer, DnsServerConfig, DnsShutdown, EDNS_UDP_PAYLOAD};
pub use table::{
    DEFAULT_DOMAIN, DEFAULT_TTL, DnsTable, Lookup, TaskPort, TaskRecord, VIP_SUBDOMAIN, VipRecord,
    ZoneData, dns_label, instance_label,
};

/// Errors of the DNS server and its configuration.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The UDP socket could not be bound.
    #[error("binding the DNS server's UDP socket on {addr}: {source}")]
    BindUdp {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TCP listener could not be bound (on the UDP socket's address).
    #[error("binding the DNS server's TCP listener on {addr}: {source}")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A resolv.conf could not be read.
    #[error("reading resolver configuration {path}: {source}")]
    ReadResolvConf {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}
