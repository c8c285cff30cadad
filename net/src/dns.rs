//! berth's DNS (in progress): [`wire`], the RFC 1035 message format, [`DnsTable`], the
//! records berth serves, and [`ResolvConf`], the node's upstream resolvers.

use std::net::SocketAddr;
use std::path::PathBuf;

mod resolv;
mod table;
pub mod wire;

pub use resolv::{ResolvConf, host_upstreams};
pub use table::{
    DEFAULT_DOMAIN, DEFAULT_TTL, DnsTable, Lookup, TaskPort, TaskRecord, VIP_SUBDOMAIN,
    VipRecord, ZoneData, dns_label, instance_label,
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
