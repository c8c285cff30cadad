//! The cluster's task list, from the leading master's operator event stream.
//!
//! [`ClusterTasks`] follows the leading master (a `watch` of [`MasterLeader`] from the
//! [detector](super::detector)) and keeps a [`ClusterState`]: every task that is not terminal
//! (its framework, agent, state, labels, discovery ports, IPs and health from its latest status)
//! and the registered agents. It subscribes with the Mesos v1 master operator API (`POST
//! /api/v1`, `{"type": "SUBSCRIBE"}`), which both a Mesos 1.x master and `berth master` (and the
//! master embedded in `berth agent --dev`) serve:
//!
//! 1. the first record, `SUBSCRIBED`, carries the whole state; it replaces what was known;
//! 2. `TASK_ADDED`, `TASK_UPDATED`, `AGENT_ADDED`, `AGENT_REMOVED`, `FRAMEWORK_*` change it
//!    ([`ClusterState::apply`], pure and unit-tested with recorded streams);
//! 3. `HEARTBEAT`s keep the connection alive; a stream silent for
//!    [`StreamOptions::heartbeat_misses`] heartbeat intervals is dead.
//!
//! When the stream ends or fails, the client reconnects with a jittered, doubling backoff; when
//! the leader changes it drops the stream and subscribes to the new leader at once (which sends
//! the full state again). Between streams the last state stays published with
//! [`ClusterState::synced`] false, so consumers (the L4 load balancer, DNS) keep serving the
//! last known backends through a master failover instead of flapping to empty.
//!
//! A non-leading Mesos master answers `307` with a `Location` of the leader (scheme-relative,
//! `//host:port/api/v1`); the client follows it. Events are asked for in protobuf; a response in
//! JSON (by its `Content-Type`, or `Message-Content-Type` of an `application/recordio` stream) is
//! read as well.

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use berth_proto::{
    codec::{self, ContentType},
    mesos::v1::{self as mesos, master},
    recordio,
};
use futures::StreamExt;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::detector::MasterLeader;
use crate::task;

/// A task of the cluster as the leading master reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTask {
    /// Task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Framework id.
    pub framework_id: String,
    /// Framework name (empty while the framework is unknown).
    pub framework_name: String,
    /// Agent id.
    pub agent_id: String,
    /// Latest state (never terminal: terminal tasks leave the list).
    pub state: mesos::TaskState,
    /// `TaskInfo.labels` (`VIP_0=/web:80`...), in order.
    pub labels: Vec<(String, String)>,
    /// `TaskInfo.discovery.ports` (Marathon puts VIP labels on these).
    pub ports: Vec<DiscoveryPort>,
    /// IP addresses of the task's container, from its latest status that had any.
    pub ips: Vec<IpAddr>,
    /// Health from the latest status that reported it; None without a health check.
    pub healthy: Option<bool>,
}

impl ClusterTask {
    /// Whether the task runs (TASK_RUNNING), and is healthy if it has a health check: what makes
    /// it a load balancer backend.
    pub fn is_serving(&self) -> bool {
        self.state == mesos::TaskState::TaskRunning && self.healthy != Some(false)
    }
}

/// A port of a task's `DiscoveryInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryPort {
    /// Port number.
    pub number: u32,
    /// Name, e.g. `http`.
    pub name: Option<String>,
    /// Protocol, e.g. `tcp`.
    pub protocol: Option<String>,
    /// Labels of the port (`VIP_0=/web:80`...).
    pub labels: Vec<(String, String)>,
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAgent {
    /// Agent id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// Port of the agent's HTTP server.
    pub port: u16,
    /// The agent's IP, from its pid (`slave(1)@IP:PORT`) when the master reports one.
    pub ip: Option<IpAddr>,
    /// Whether the master considers it active.
    pub active: bool,
}

/// The cluster as the leading master's event stream shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// The master the state comes from, `IP:PORT`.
    pub master: Option<SocketAddr>,
    /// Whether the state is live: a `SUBSCRIBED` was received on the stream that is open now.
    /// False before the first one and between streams (the last state is kept).
    pub synced: bool,
    /// Incremented on every `SUBSCRIBED` (every full resynchronisation).
    pub generation: u64,
    /// Tasks that are not terminal, by task id.
    pub tasks: BTreeMap<String, ClusterTask>,
    /// Registered agents, by agent id.
    pub agents: BTreeMap<String, ClusterAgent>,
    /// Framework names, by framework id.
    pub frameworks: BTreeMap<String, String>,
}

/// Why an event stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The request failed (connection refused, reset...).
    #[error("operator API of {url}: request failed: {source}")]
    Request {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The master answered something other than 200 (or a redirect).
    #[error("operator API of {url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// Too many redirects, or one without a usable `Location`.
    #[error("operator API of {url}: bad redirect ({location:?})")]
    Redirect {
        /// The URL that redirected.
        url: String,
        /// Its `Location`.
        location: Option<String>,
    },
    /// The response is neither JSON nor protobuf.
    #[error("operator API of {url}: unsupported content type {content_type:?}")]
    ContentType {
        /// The URL.
        url: String,
        /// The `Content-Type`.
        content_type: String,
    },
    /// Reading the stream failed.
    #[error("event stream of {url}: {source}")]
    Read {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The stream is not valid RecordIO.
    #[error("event stream of {url}: {source}")]
    Framing {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: recordio::RecordIoError,
    },
    /// A record is not a `master::Event`.
    #[error("event stream of {url}: undecodable event: {source}")]
    Decode {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: codec::CodecError,
    },
    /// The first event is not SUBSCRIBED.
    #[error("event stream of {url}: first event is {kind}, not SUBSCRIBED")]
    NotSubscribed {
        /// The URL.
        url: String,
        /// The first event's type.
        kind: &'static str,
    },
    /// Nothing arrived for too long.
    #[error("event stream of {url}: nothing received for {silent:?}")]
    Silent {
        /// The URL.
        url: String,
        /// How long it was silent.
        silent: Duration,
    },
    /// The master closed the stream.
    #[error("event stream of {url}: closed by the master")]
    Closed {
        /// The URL.
        url: String,
    },
}

/// Settings of [`ClusterTasks`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// First reconnection delay (jittered: a random time up to it), doubled per failure.
    pub min_backoff: Duration,
    /// Longest reconnection delay.
    pub max_backoff: Duration,
    /// Time to wait for the response headers and for `SUBSCRIBED`.
    pub connect_timeout: Duration,
    /// A stream silent for this many heartbeat intervals is dropped.
    pub heartbeat_misses: u32,
    /// Encoding asked for (`Accept`).
    pub accept: ContentType,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            heartbeat_misses: 3,
            accept: ContentType::Protobuf,
        }
    }
}

/// Follows the leading master's operator event stream (see the module docs).
pub struct ClusterTasks {
    state: watch::Receiver<ClusterState>,
    task: JoinHandle<()>,
}

impl Drop for ClusterTasks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ClusterTasks {
    /// Starts following `leader` with the default settings.
    pub fn start(leader: watch::Receiver<Option<MasterLeader>>) -> ClusterTasks {
        Self::start_with(leader, StreamOptions::default())
    }

    /// Starts following `leader`.
    pub fn start_with(
        leader: watch::Receiver<Option<MasterLeader>>,
        options: StreamOptions,
    ) -> ClusterTasks {
        let (tx, rx) = watch::channel(ClusterState::default());
        let task = tokio::spawn(follow_leader(leader, tx, options));
        ClusterTasks { state: rx, task }
    }

    /// The cluster state, updated on every event.
    pub fn state(&self) -> watch::Receiver<ClusterState> {
        self.state.clone()
    }
}

fn labels_of(labels: Option<&mesos::Labels>) -> Vec<(String, String)> {
    labels
        .map(|l| {
            l.labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn ips_of(status: &mesos::TaskStatus) -> Vec<IpAddr> {
    status
        .container_status
        .iter()
        .flat_map(|c| &c.network_infos)
        .flat_map(|n| &n.ip_addresses)
        .filter_map(|a| a.ip_address.as_deref()?.parse().ok())
        .collect()
}

/// The IP of a libprocess pid `id@IP:PORT`.
fn ip_of_pid(pid: &str) -> Option<IpAddr> {
    let addr = pid.rsplit_once('@')?.1;
    addr.parse::<SocketAddr>().ok().map(|a| a.ip())
}

fn is_terminal(state: mesos::TaskState) -> bool {
    task::is_terminal(state.as_str_name())
}

impl ClusterState {
    /// Applies one event of the stream. `SUBSCRIBED` replaces everything.
    pub fn apply(&mut self, event: &master::Event) {
        use master::event::Type;
        match event.r#type() {
            Type::Subscribed => {
                let get_state = event
                    .subscribed
                    .as_ref()
                    .and_then(|s| s.get_state.clone())
                    .unwrap_or_default();
                self.replace(&get_state);
            }
            Type::TaskAdded => {
                if let Some(added) = &event.task_added {
                    self.add_task(&added.task);
                }
            }
            Type::TaskUpdated => {
                if let Some(updated) = &event.task_updated {
                    self.update_task(updated);
                }
            }
            Type::AgentAdded => {
                if let Some(added) = &event.agent_added {
                    self.add_agent(&added.agent);
                }
            }
            Type::AgentRemoved => {
                if let Some(removed) = &event.agent_removed {
                    self.remove_agent(&removed.agent_id.value);
                }
            }
            Type::FrameworkAdded => {
                if let Some(added) = &event.framework_added {
                    self.add_framework(&added.framework.framework_info);
                }
            }
            Type::FrameworkUpdated => {
                if let Some(updated) = &event.framework_updated {
                    self.add_framework(&updated.framework.framework_info);
                }
            }
            Type::FrameworkRemoved => {
                if let Some(removed) = &event.framework_removed {
                    let id = removed
                        .framework_info
                        .id
                        .as_ref()
                        .map(|id| id.value.clone())
                        .unwrap_or_default();
                    self.frameworks.remove(&id);
                    // Its tasks are gone with it (Mesos kills them on teardown).
                    self.tasks.retain(|_, t| t.framework_id != id);
                }
            }
            Type::Heartbeat | Type::Unknown => {}
        }
    }

    fn replace(&mut self, state: &master::response::GetState) {
        self.tasks.clear();
        self.agents.clear();
        self.frameworks.clear();
        self.generation += 1;
        if let Some(frameworks) = &state.get_frameworks {
            for framework in &frameworks.frameworks {
                self.add_framework(&framework.framework_info);
            }
        }
        if let Some(agents) = &state.get_agents {
            for agent in &agents.agents {
                self.add_agent(agent);
            }
        }
        if let Some(tasks) = &state.get_tasks {
            for task in tasks.tasks.iter().chain(&tasks.unreachable_tasks) {
                self.add_task(task);
            }
        }
    }

    fn add_framework(&mut self, info: &mesos::FrameworkInfo) {
        let Some(id) = info.id.as_ref().map(|id| id.value.clone()) else {
            return;
        };
        for task in self.tasks.values_mut().filter(|t| t.framework_id == id) {
            task.framework_name = info.name.clone();
        }
        self.frameworks.insert(id, info.name.clone());
    }

    fn add_agent(&mut self, agent: &master::response::get_agents::Agent) {
        let info = &agent.agent_info;
        let Some(id) = info.id.as_ref().map(|id| id.value.clone()) else {
            return;
        };
        self.agents.insert(
            id.clone(),
            ClusterAgent {
                id,
                hostname: info.hostname.clone(),
                port: u16::try_from(info.port()).unwrap_or(0),
                ip: agent.pid.as_deref().and_then(ip_of_pid),
                active: agent.active,
            },
        );
    }

    fn remove_agent(&mut self, agent_id: &str) {
        self.agents.remove(agent_id);
        // Mesos sends TASK_UPDATED (UNREACHABLE, LOST, GONE...) for its tasks; until then they
        // are not served. A returning agent's tasks come back with TASK_ADDED/TASK_UPDATED.
        for task in self.tasks.values_mut().filter(|t| t.agent_id == agent_id) {
            if task.state != mesos::TaskState::TaskUnreachable {
                task.state = mesos::TaskState::TaskUnreachable;
            }
        }
    }

    fn add_task(&mut self, task: &mesos::Task) {
        let id = task.task_id.value.clone();
        if is_terminal(task.state()) {
            self.tasks.remove(&id);
            return;
        }
        let latest_with_ips = task
            .statuses
            .iter()
            .rev()
            .map(ips_of)
            .find(|ips| !ips.is_empty());
        let healthy = task.statuses.iter().rev().find_map(|s| s.healthy);
        let ports = task
            .discovery
            .as_ref()
            .and_then(|d| d.ports.as_ref())
            .map(|p| {
                p.ports
                    .iter()
                    .map(|port| DiscoveryPort {
                        number: port.number,
                        name: port.name.clone(),
                        protocol: port.protocol.clone(),
                        labels: labels_of(port.labels.as_ref()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let framework_id = task.framework_id.value.clone();
        self.tasks.insert(
            id.clone(),
            ClusterTask {
                id,
                name: task.name.clone(),
                framework_name: self
                    .frameworks
                    .get(&framework_id)
                    .cloned()
                    .unwrap_or_default(),
                framework_id,
                agent_id: task.agent_id.value.clone(),
                state: task.state(),
                labels: labels_of(task.labels.as_ref()),
                ports,
                ips: latest_with_ips.unwrap_or_default(),
                healthy,
            },
        );
    }

    fn update_task(&mut self, updated: &master::event::TaskUpdated) {
        let status = &updated.status;
        let id = status.task_id.value.clone();
        let state = updated.state();
        if is_terminal(state) {
            self.tasks.remove(&id);
            return;
        }
        let framework_id = updated.framework_id.value.clone();
        let framework_name = self
            .frameworks
            .get(&framework_id)
            .cloned()
            .unwrap_or_default();
        let task = self.tasks.entry(id.clone()).or_insert_with(|| {
            // An update of a task this stream did not add: keep what the update tells.
            ClusterTask {
                id,
                name: String::new(),
                framework_id,
                framework_name,
                agent_id: String::new(),
                state,
                labels: Vec::new(),
                ports: Vec::new(),
                ips: Vec::new(),
                healthy: None,
            }
        });
        task.state = state;
        if let Some(agent_id) = &status.agent_id {
            task.agent_id = agent_id.value.clone();
        }
        let ips = ips_of(status);
        if !ips.is_empty() {
            task.ips = ips;
        }
        if status.healthy.is_some() {
            task.healthy = status.healthy;
        }
    }
}

/// How one subscription ended.
struct Ended {
    /// Whether SUBSCRIBED was received (the backoff restarts).
    subscribed: bool,
    error: StreamError,
}

async fn follow_leader(
    mut leader: watch::Receiver<Option<MasterLeader>>,
    state: watch::Sender<ClusterState>,
    options: StreamOptions,
) {
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            warn!(%error, "operator stream: cannot build an HTTP client");
            return;
        }
    };
    let mut backoff = options.min_backoff;
    loop {
        let current = leader.borrow_and_update().clone();
        let Some(current) = current else {
            state.send_if_modified(|s| std::mem::replace(&mut s.synced, false));
            if leader.changed().await.is_err() {
                return; // the detector is gone and never named a leader
            }
            continue;
        };
        let addr = SocketAddr::new(current.ip, current.port);
        let ended = tokio::select! {
            ended = subscribe(&http, addr, &state, &options) => Some(ended),
            () = leader_moved(&mut leader, addr) => None,
        };
        state.send_if_modified(|s| std::mem::replace(&mut s.synced, false));
        match ended {
            None => {
                info!(master = %addr, "operator stream: the leading master changed");
                backoff = options.min_backoff;
            }
            Some(ended) => {
                if ended.subscribed {
                    backoff = options.min_backoff;
                }
                warn!(master = %addr, error = %ended.error, "operator stream ended; reconnecting");
                let delay = jitter(backoff);
                backoff = (backoff * 2).min(options.max_backoff);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = leader_moved(&mut leader, addr) => {
                        backoff = options.min_backoff;
                    }
                }
            }
        }
    }
}

/// Resolves when the leader is no longer `addr` (never if the detector is gone).
async fn leader_moved(leader: &mut watch::Receiver<Option<MasterLeader>>, addr: SocketAddr) {
    loop {
        if leader.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = leader
            .borrow()
            .as_ref()
            .map(|l| SocketAddr::new(l.ip, l.port));
        if now != Some(addr) {
            return;
        }
    }
}

/// A random duration in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    Duration::from_nanos(random % (max.as_nanos() as u64).max(1))
}

/// The content type of a streamed response.
fn stream_content_type(headers: &reqwest::header::HeaderMap) -> Result<ContentType, String> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let content_type = text("content-type");
    if content_type.eq_ignore_ascii_case("application/recordio") {
        let message = text("message-content-type");
        return ContentType::from_header(&message).ok_or(message);
    }
    ContentType::from_header(&content_type).ok_or(content_type)
}

/// `Location` of a redirect, resolved against `base` (`http://IP:PORT`).
fn resolve_location(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        Some(location.to_string())
    } else if let Some(rest) = location.strip_prefix("//") {
        Some(format!("http://{rest}"))
    } else if location.starts_with('/') {
        Some(format!("{base}{location}"))
    } else {
        None
    }
}

/// One subscription: connects, follows redirects, reads events into `state` until the stream
/// ends.
async fn subscribe(
    http: &reqwest::Client,
    master: SocketAddr,
    state: &watch::Sender<ClusterState>,
    options: &StreamOptions,
) -> Ended {
    let fail = |error| Ended {
        subscribed: false,
        error,
    };
    let call = master::Call {
        r#type: Some(master::call::Type::Subscribe as i32),
    };
    let body = codec::encode(&call, ContentType::Protobuf);
    let base = format!("http://{master}");
    let mut url = format!("{base}/api/v1");
    let mut redirects = 0;
    let response = loop {
        let sent = http
            .post(&url)
            .header("Content-Type", ContentType::PROTOBUF)
            .header("Accept", options.accept.as_str())
            .body(body.clone())
            .send();
        let response = match tokio::time::timeout(options.connect_timeout, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(source)) => return fail(StreamError::Request { url, source }),
            Err(_) => {
                return fail(StreamError::Silent {
                    url,
                    silent: options.connect_timeout,
                });
            }
        };
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            redirects += 1;
            match location.as_deref().and_then(|l| resolve_location(&base, l)) {
                Some(next) if redirects <= 3 => {
                    debug!(from = %url, to = %next, "operator stream: redirected to the leader");
                    url = next;
                    continue;
                }
                _ => return fail(StreamError::Redirect { url, location }),
            }
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return fail(StreamError::Status {
                url,
                status: status.as_u16(),
                body: text.chars().take(200).collect(),
            });
        }
        break response;
    };
    let content_type = match stream_content_type(response.headers()) {
        Ok(ct) => ct,
        Err(content_type) => return fail(StreamError::ContentType { url, content_type }),
    };
    let mut bytes = response.bytes_stream();
    let mut decoder = recordio::Decoder::new();
    let mut silence = options.connect_timeout;
    let mut subscribed = false;
    loop {
        // Every complete record first.
        loop {
            let record = match decoder.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(source) => {
                    return Ended {
                        subscribed,
                        error: StreamError::Framing { url, source },
                    };
                }
            };
            let event: master::Event = match codec::decode(&record, content_type) {
                Ok(event) => event,
                Err(source) => {
                    return Ended {
                        subscribed,
                        error: StreamError::Decode { url, source },
                    };
                }
            };
            if !subscribed {
                if event.r#type() != master::event::Type::Subscribed {
                    return fail(StreamError::NotSubscribed {
                        url,
                        kind: event.r#type().as_str_name(),
                    });
                }
                subscribed = true;
                let interval = event
                    .subscribed
                    .as_ref()
                    .and_then(|s| s.heartbeat_interval_seconds)
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .unwrap_or(15.0)
                    .min(3600.0);
                silence = Duration::from_secs_f64(interval) * options.heartbeat_misses.max(1);
                let tasks = event
                    .subscribed
                    .as_ref()
                    .and_then(|s| s.get_state.as_ref())
                    .and_then(|s| s.get_tasks.as_ref())
                    .map_or(0, |t| t.tasks.len());
                info!(master = %master, tasks, "operator stream subscribed");
            }
            debug!(event = event.r#type().as_str_name(), "operator event");
            state.send_if_modified(|s| {
                let was = (s.master, s.synced);
                s.apply(&event);
                s.master = Some(master);
                s.synced = true;
                event.r#type() != master::event::Type::Heartbeat || was != (s.master, s.synced)
            });
        }
        match tokio::time::timeout(silence, bytes.next()).await {
            Ok(Some(Ok(chunk))) => decoder.feed(&chunk),
            Ok(Some(Err(source))) => {
                return Ended {
                    subscribed,
                    error: StreamError::Read { url, source },
                };
            }
            Ok(None) => {
                return Ended {
                    subscribed,
                    error: StreamError::Closed { url },
                };
            }
            Err(_) => {
                return Ended {
                    subscribed,
                    error: StreamError::Silent {
                        url,
                        silent: silence,
                    },
                };
            }
        }
    }
}
