//! libprocess messaging over HTTP, as Mesos masters and agents speak it.
//!
//! A message is `POST /<receiver id>/<message name>` with the serialized protobuf as body and
//! the sender's process id in the `Libprocess-From` (and `User-Agent: libprocess/<pid>`) header;
//! the receiver answers `202 Accepted` (or `404` when no such process lives there) and delivers
//! the message to the process. Messages are one-way: a reply is a new message sent on a
//! connection the replier opens to the sender's advertised address.
//!
//! - [`Upid`]: a process id, `name@ip:port`.
//! - [`transport::Transport`]: outgoing messages, one kept-alive connection per peer, in order.
//! - [`router`]: the inbound side, an axum route delivering to registered [`Process`]es.

pub mod transport;

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use tracing::{debug, warn};

/// A libprocess process id: `id@ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upid {
    /// The process name, e.g. `slave(1)` or `master`.
    pub id: String,
    /// Where the process's libprocess server listens.
    pub addr: SocketAddr,
}

/// A process id that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a libprocess pid (expected NAME@IP:PORT)")]
pub struct BadUpid(pub String);

impl Upid {
    /// A pid from its parts.
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            id: id.into(),
            addr,
        }
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

impl FromStr for Upid {
    type Err = BadUpid;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadUpid(text.to_string());
        let (id, addr) = text.trim().split_once('@').ok_or_else(bad)?;
        if id.is_empty() || id.contains('/') {
            return Err(bad());
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host.parse().map_err(|_| bad())?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(Self::new(id, SocketAddr::new(ip, port)))
    }
}

/// An inbound message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sender, from `Libprocess-From` (or the legacy `User-Agent`).
    pub from: Upid,
    /// The message name, e.g. `mesos.internal.RunTaskMessage`.
    pub name: String,
    /// The serialized protobuf.
    pub body: Bytes,
}

/// Something that receives messages under a process id.
pub trait Process: Send + Sync {
    /// Delivers one message. Called on the HTTP server's task: handle quickly (spawn for work).
    fn receive(&self, message: Message);
}

/// The processes served by one libprocess server.
#[derive(Clone, Default)]
pub struct Processes {
    by_id: Arc<RwLock<HashMap<String, Arc<dyn Process>>>>,
}

impl Processes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `process` under `id`.
    pub fn add(&self, id: &str, process: Arc<dyn Process>) {
        self.by_id
            .write()
            .expect("processes lock")
            .insert(id.to_string(), process);
    }

    fn get(&self, id: &str) -> Option<Arc<dyn Process>> {
        self.by_id.read().expect("processes lock").get(id).cloned()
    }
}

/// The sender of a libprocess request, or None when the request is plain HTTP.
pub fn sender_of(headers: &HeaderMap) -> Option<Result<Upid, BadUpid>> {
    if let Some(from) = headers.get("libprocess-from") {
        let text = String::from_utf8_lossy(from.as_bytes()).to_string();
        return Some(text.parse());
    }
    let agent = headers.get("user-agent")?.to_str().ok()?;
    let pid = agent.strip_prefix("libprocess/")?;
    Some(pid.parse())
}

/// The inbound route: `POST /{process}/{message}` delivered to `processes`. Merge it into the
/// server's router.
pub fn router(processes: Processes) -> Router {
    Router::new()
        .route("/{process}/{message}", post(deliver))
        .with_state(processes)
}

async fn deliver(
    State(processes): State<Processes>,
    Path((process, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let from = match sender_of(&headers) {
        Some(Ok(from)) => from,
        Some(Err(err)) => {
            warn!(process, message = name, error = %err, "libprocess message with a bad sender dropped");
            return (StatusCode::BAD_REQUEST, err.to_string());
        }
        None => {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "no HTTP endpoint /{process}/{name} (libprocess messages need a Libprocess-From header)"
                ),
            );
        }
    };
    let Some(receiver) = processes.get(&process) else {
        debug!(process, message = name, from = %from, "message for an unknown process");
        return (
            StatusCode::NOT_FOUND,
            format!("no process '{process}' here"),
        );
    };
    receiver.receive(Message { from, name, body });
    (StatusCode::ACCEPTED, String::new())
}

/// The libprocess message name of a protobuf type (its full name).
pub fn message_name<M: prost_reflect::ReflectMessage + Default>() -> String {
    M::default().descriptor().full_name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_parse_and_print() {
        let pid: Upid = "slave(1)@10.0.0.2:5051".parse().unwrap();
        assert_eq!(pid.id, "slave(1)");
        assert_eq!(pid.addr, "10.0.0.2:5051".parse().unwrap());
        assert_eq!(pid.to_string(), "slave(1)@10.0.0.2:5051");
        let v6: Upid = "master@[::1]:5050".parse().unwrap();
        assert_eq!(v6.to_string(), "master@[::1]:5050");
        for bad in [
            "",
            "master",
            "@1.2.3.4:5",
            "m@host:5050",
            "m@1.2.3.4",
            "a/b@1.2.3.4:1",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sender_comes_from_libprocess_from_then_user_agent() {
        let mut headers = HeaderMap::new();
        assert!(sender_of(&headers).is_none());
        headers.insert("user-agent", "curl/8".parse().unwrap());
        assert!(sender_of(&headers).is_none());
        headers.insert(
            "user-agent",
            "libprocess/master@127.0.0.1:5050".parse().unwrap(),
        );
        assert_eq!(
            sender_of(&headers).unwrap().unwrap().to_string(),
            "master@127.0.0.1:5050"
        );
        headers.insert(
            "libprocess-from",
            "slave-observer(3)@127.0.0.1:5050".parse().unwrap(),
        );
        assert_eq!(
            sender_of(&headers).unwrap().unwrap().id,
            "slave-observer(3)"
        );
        headers.insert("libprocess-from", "garbage".parse().unwrap());
        assert!(sender_of(&headers).unwrap().is_err());
    }

    #[test]
    fn message_names_are_full_protobuf_names() {
        use berth_proto::mesos::internal::RunTaskMessage;
        assert_eq!(
            message_name::<RunTaskMessage>(),
            "mesos.internal.RunTaskMessage"
        );
    }
}
