//! Pure parts of master detection: the `--master` value, the group's children, the leader's data.

use std::net::{IpAddr, Ipv4Addr};

use berth_proto::mesos::v1 as mesos;
use prost::Message;
use serde::Deserialize;

use super::DetectError;

/// A parsed `zk://[user:password@]host1:port1,host2:port2/path` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkUrl {
    /// The connect string (`host1:port1,host2:port2`).
    pub servers: String,
    /// The group's znode, without a trailing slash (e.g. `/mesos`).
    pub path: String,
    /// `user:password` for ZooKeeper `digest` authentication.
    pub credentials: Option<String>,
}

impl std::fmt::Debug for ZkUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkUrl")
            .field("servers", &self.servers)
            .field("path", &self.path)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

impl std::fmt::Display for ZkUrl {
    /// The URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = match &self.credentials {
            Some(c) => format!("{}:***@", c.split_once(':').map_or(c.as_str(), |(u, _)| u)),
            None => String::new(),
        };
        write!(f, "zk://{user}{}{}", self.servers, self.path)
    }
}

impl ZkUrl {
    /// Parses a ZooKeeper URL the way Mesos' `zookeeper::URL::parse` does: the path starts at
    /// the first `/` after the scheme, credentials end at the last `@` before it. The root
    /// path is refused, as Mesos' master detector does.
    pub fn parse(url: &str) -> Result<Self, DetectError> {
        let bad = |reason: &str| DetectError::BadMaster {
            value: redact(url),
            reason: reason.to_string(),
        };
        let s = url.trim();
        let rest = s
            .strip_prefix("zk://")
            .ok_or_else(|| bad("expecting 'zk://' at the start"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Err(bad(
                "expecting a (chroot) path for ZooKeeper ('/' is not supported)",
            ));
        }
        if path
            .split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("the path has an empty, '.' or '..' component"));
        }
        let (credentials, servers) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if let Some(c) = credentials
            && !c.contains(':')
        {
            return Err(bad(
                "credentials must be 'user:password' (ZooKeeper digest)",
            ));
        }
        crate::mesos::zk::parse_servers(servers).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            servers: servers.to_string(),
            path: path.to_string(),
            credentials: credentials.map(str::to_string),
        })
    }
}

/// Hides the password of a `zk://user:password@...` value in messages.
pub(crate) fn redact(value: &str) -> String {
    let Some(rest) = value.trim().strip_prefix("zk://") else {
        return value.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or(&rest[..at], |(u, _)| u);
            format!("zk://{user}:***@{}", &rest[at + 1..])
        }
        None => value.to_string(),
    }
}

/// A member of the group: a child node `[label_]sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The child's name.
    pub name: String,
    /// The label (`json.info`, `info`), None for an unlabeled node.
    pub label: Option<String>,
    /// The sequence number.
    pub sequence: i32,
}

/// Reads a child name as Mesos' `GroupProcess::cache` does: split on `_` (empty pieces
/// dropped), the first piece is the label when there are several, the last must be an int32.
/// Other nodes (e.g. `log_replicas` of the replicated log) are not members.
pub fn membership(name: &str) -> Option<Membership> {
    let tokens: Vec<&str> = name.split('_').filter(|t| !t.is_empty()).collect();
    let last = tokens.last()?;
    if !last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sequence = last.parse::<i32>().ok()?;
    let label = (tokens.len() > 1).then(|| tokens[0].to_string());
    Some(Membership {
        name: name.to_string(),
        label,
        sequence,
    })
}

/// The leader: the member with the lowest sequence number, whatever its label (masters elect
/// themselves by the same rule, so this is the master that acts as leader).
pub fn leader_of(children: &[String]) -> Option<Membership> {
    children
        .iter()
        .filter_map(|c| membership(c))
        .min_by_key(|m| m.sequence)
}

/// The leading master, as read from its znode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterLeader {
    /// `MasterInfo.id`.
    pub id: String,
    /// The libprocess pid to send messages to, e.g. `master@10.0.0.1:5050`.
    pub pid: String,
    /// The master's IP (`address.ip` when present, else the deprecated `ip` field).
    pub ip: IpAddr,
    /// The master's port (`address.port` when present, else `port`).
    pub port: u16,
    /// Hostname (`address.hostname`, else `hostname`).
    pub hostname: Option<String>,
    /// Master version, e.g. `1.12.0`.
    pub version: Option<String>,
    /// The znode it was read from (`json.info_0000000003`); None for a static `--master`.
    pub znode: Option<String>,
}

/// Why a leader's znode data was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MasterInfoError {
    /// Not JSON, or not the MasterInfo shape.
    #[error("not a MasterInfo JSON object: {0}")]
    Json(String),
    /// Not a MasterInfo protobuf.
    #[error("not a MasterInfo protobuf: {0}")]
    Protobuf(String),
    /// A field is out of range or inconsistent.
    #[error("field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A label berth does not know.
    #[error("unknown label '{0}'")]
    UnknownLabel(String),
    /// An unlabeled node that is not a `name@ip:port` pid.
    #[error("not a libprocess pid: '{0}'")]
    Pid(String),
}

/// `MasterInfo` as a Mesos master's `JSON::protobuf` writes it (unknown fields ignored;
/// `id`, `ip` and `port` are `required` in the proto, so they must be present).
#[derive(Debug, Deserialize)]
struct MasterInfoJson {
    id: String,
    ip: u32,
    port: u32,
    #[serde(default)]
    pid: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    address: Option<AddressJson>,
}

#[derive(Debug, Deserialize)]
struct AddressJson {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    port: i32,
}

/// The deprecated `MasterInfo.ip`: the master's `in_addr.s_addr` read as a host-order
/// (little-endian on the x86/arm64 hosts Mesos runs on) uint32, so its little-endian bytes are
/// the dotted quad: 127.0.0.1 is written as 16777343.
pub fn ipv4_from_network_order(ip: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip.to_le_bytes())
}

struct Fields {
    id: String,
    ip: u32,
    port: u32,
    pid: Option<String>,
    hostname: Option<String>,
    version: Option<String>,
    address: Option<(Option<String>, Option<String>, i32)>,
}

fn port_u16(field: &'static str, port: i64) -> Result<u16, MasterInfoError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(MasterInfoError::Field {
            field,
            reason: format!("{port} is not a TCP port"),
        })
}

fn leader_from(f: Fields, znode: &str) -> Result<MasterLeader, MasterInfoError> {
    let (ip, port) = match &f.address {
        Some((_, Some(ip), port)) => {
            let ip = ip.parse::<IpAddr>().map_err(|_| MasterInfoError::Field {
                field: "address.ip",
                reason: format!("'{ip}' is not an IP address"),
            })?;
            (ip, port_u16("address.port", i64::from(*port))?)
        }
        _ => (
            IpAddr::V4(ipv4_from_network_order(f.ip)),
            port_u16("port", i64::from(f.port))?,
        ),
    };
    let pid = match f.pid.filter(|p| !p.is_empty()) {
        Some(p) => {
            parse_pid(&p)?;
            p
        }
        None => match ip {
            IpAddr::V4(v4) => format!("master@{v4}:{port}"),
            IpAddr::V6(v6) => format!("master@[{v6}]:{port}"),
        },
    };
    let hostname = f
        .address
        .as_ref()
        .and_then(|(h, _, _)| h.clone())
        .or(f.hostname)
        .filter(|h| !h.is_empty());
    Ok(MasterLeader {
        id: f.id,
        pid,
        ip,
        port,
        hostname,
        version: f.version.filter(|v| !v.is_empty()),
        znode: Some(znode.to_string()),
    })
}

/// Parses `json.info_*` data.
pub fn parse_master_info_json(data: &[u8], znode: &str) -> Result<MasterLeader, MasterInfoError> {
    let j: MasterInfoJson =
        serde_json::from_slice(data).map_err(|e| MasterInfoError::Json(e.to_string()))?;
    let fields = Fields {
        id: j.id,
        ip: j.ip,
        port: j.port,
        pid: j.pid,
        hostname: j.hostname,
        version: j.version,
        address: j.address.map(|a| (a.hostname, a.ip, a.port)),
    };
    leader_from(fields, znode)
}

/// Parses `info_*` data (MasterInfo protobuf, written by masters before Mesos 0.24).
pub fn parse_master_info_protobuf(
    data: &[u8],
    znode: &str,
) -> Result<MasterLeader, MasterInfoError> {
    let m =
        mesos::MasterInfo::decode(data).map_err(|e| MasterInfoError::Protobuf(e.to_string()))?;
    let fields = Fields {
        id: m.id,
        ip: m.ip,
        port: m.port,
        pid: m.pid,
        hostname: m.hostname,
        version: m.version,
        address: m.address.map(|a| (a.hostname, a.ip, a.port)),
    };
    leader_from(fields, znode)
}

/// Splits a libprocess pid `id@host:port` into its parts.
pub fn parse_pid(pid: &str) -> Result<(&str, &str, u16), MasterInfoError> {
    let bad = || MasterInfoError::Pid(pid.to_string());
    let (id, addr) = pid.split_once('@').ok_or_else(bad)?;
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    if id.is_empty() || host.is_empty() {
        return Err(bad());
    }
    Ok((id, host, port))
}

/// Parses a leader's data by its label, as Mesos' `ZooKeeperMasterDetectorProcess::fetched`.
pub fn parse_leader_data(
    member: &Membership,
    data: &[u8],
) -> Result<MasterLeader, MasterInfoError> {
    match member.label.as_deref() {
        Some("json.info") => parse_master_info_json(data, &member.name),
        Some("info") => parse_master_info_protobuf(data, &member.name),
        None => {
            // Masters before 0.20 wrote their pid as text.
            let text =
                std::str::from_utf8(data).map_err(|_| MasterInfoError::Pid("<binary>".into()))?;
            let text = text.trim();
            let (_, host, port) = parse_pid(text)?;
            let ip = host
                .parse::<IpAddr>()
                .map_err(|_| MasterInfoError::Pid(text.to_string()))?;
            Ok(MasterLeader {
                id: text.to_string(),
                pid: text.to_string(),
                ip,
                port,
                hostname: None,
                version: None,
                znode: Some(member.name.clone()),
            })
        }
        Some(other) => Err(MasterInfoError::UnknownLabel(other.to_string())),
    }
}
