//! The agent's HTTP server: `/health`, `/state`, `/metrics`, the Mesos v1 agent operator API at
//! `/api/v1` ([`crate::operator_api`]), the operator endpoints the CLI uses under
//! `/api/berth/v1`, and (with the embedded master) `/api/v1/scheduler`. As on a Mesos agent,
//! `/state` and `/api/v1` are also served under the agent's process id, `/slave(1)/...`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    agent::{Agent, AgentError},
    master::{EmbeddedMaster, scheduler_api},
    metrics::Gauge,
    operator_api::{self, LinkStatus},
    task::{self, TaskRecord},
};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The agent.
    pub agent: Arc<Agent>,
    /// The embedded master, in `--dev` mode.
    pub master: Option<Arc<EmbeddedMaster>>,
    /// The link to the leading master.
    pub link: Option<Arc<crate::mesos::link::MesosLink>>,
    /// The node's networks (`berth net`).
    pub net: Option<NetView>,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/state", get(agent_state))
        .route("/state.json", get(agent_state))
        .route("/slave(1)/state", get(agent_state))
        .route("/slave(1)/state.json", get(agent_state))
        .route("/api/v1", post(operator))
        .route("/slave(1)/api/v1", post(operator))
        .route("/metrics", get(metrics))
        .route("/monitor/statistics", get(monitor_statistics))
        .route("/monitor/statistics.json", get(monitor_statistics))
        .route("/api/v1/scheduler", post(scheduler))
        .route("/api/berth/v1/master", get(master_link))
        .route("/api/berth/v1/net", get(net_view))
        .route("/api/berth/v1/tasks", get(list_tasks))
        .route("/api/berth/v1/tasks/{id}", get(inspect_task))
        .route("/api/berth/v1/tasks/{id}/kill", post(kill_task))
        .route("/api/berth/v1/tasks/{id}/update", post(update_task))
        .route("/api/berth/v1/tasks/{id}/logs", get(task_logs))
        .layer(DefaultBodyLimit::max(scheduler_api::MAX_CALL_BYTES))
        .with_state(state)
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::NoSuchTask(_) => StatusCode::NOT_FOUND,
            AgentError::Ambiguous(..) | AgentError::AlreadyTerminal(..) => StatusCode::CONFLICT,
            AgentError::Update(..) => StatusCode::BAD_REQUEST,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// What `berth net` reads: the bridge isolator and the overlay status.
#[derive(Clone)]
pub struct NetView {
    /// The bridge network isolator.
    pub bridge: Arc<berth_net::isolator::BridgeIsolator>,
    /// The overlay membership, with `--overlay`.
    pub overlay: Option<tokio::sync::watch::Receiver<crate::overlay::OverlayStatus>>,
    /// The load balancer's VIPs and backends, with the network services.
    pub lb: Option<tokio::sync::watch::Receiver<crate::l4lb::LbStatus>>,
}

/// The node's networks: bridge, leases, port mappings, overlay subnet and peers.
async fn net_view(State(state): State<AppState>) -> Json<Value> {
    let Some(net) = &state.net else {
        return Json(json!({"bridge": null, "overlay": null}));
    };
    Json(json!({
        "bridge": net.bridge.report(),
        "overlay": net.overlay.as_ref().map(|o| json!(*o.borrow())),
        "load_balancer": net.lb.as_ref().map(|l| json!(*l.borrow())),
    }))
}

/// The agent's view of its master: who leads, whether the agent is registered, its agent id.
async fn master_link(State(state): State<AppState>) -> Json<Value> {
    use crate::link::MasterLink;
    let link = state.link.as_ref();
    Json(json!({
        "master": link.and_then(|l| l.master()).map(|m| m.to_string()),
        "registered": link.is_some_and(|l| l.is_registered()),
        "agent_id": state.agent.agent_id(),
        "registrations": link.map(|l| l.stats.registrations.load(std::sync::atomic::Ordering::Relaxed)),
        "malformed_messages": link.map(|l| l.stats.malformed.load(std::sync::atomic::Ordering::Relaxed)),
        "foreign_messages": link.map(|l| l.stats.foreign.load(std::sync::atomic::Ordering::Relaxed)),
        "unknown_messages": link.map(|l| l.stats.unknown.load(std::sync::atomic::Ordering::Relaxed)),
        "pending_status_updates": state.agent.pending_updates(),
    }))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn scheduler(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match state.master {
        Some(master) => scheduler_api::handle(master, headers, body).await,
        // Mesos: scheduler calls belong to the leading master; point the client there.
        None => match state.link.as_ref().and_then(|l| l.master()) {
            Some(leader) => (
                StatusCode::TEMPORARY_REDIRECT,
                [(
                    axum::http::header::LOCATION,
                    format!("http://{}/api/v1/scheduler", leader.addr),
                )],
                "the scheduler API is served by the leading master",
            )
                .into_response(),
            None => (StatusCode::SERVICE_UNAVAILABLE, "no leading master").into_response(),
        },
    }
}

/// The row of `berth ps`.
fn task_summary(task: &TaskRecord) -> Value {
    json!({
        "id": task.id,
        "name": task.name,
        "state": task.state,
        "cpus": task.limits.cpus,
        "mem_mb": task.limits.mem_mb,
        "pids": task.limits.pids,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "exit_code": task.exit_code,
        "framework_id": task.framework_id,
        "container_id": task.container_id,
        "health": task.health.as_ref().map(|h| h.label()),
    })
}

#[derive(Deserialize)]
struct ListQuery {
    all: Option<String>,
}

async fn list_tasks(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Json<Value> {
    let all = query.all.is_some_and(|v| v != "0" && v != "false");
    let mut tasks = state.agent.tasks();
    tasks.sort_by(|a, b| {
        a.created_at
            .partial_cmp(&b.created_at)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Json(Value::Array(
        tasks
            .iter()
            .filter(|t| all || !task::is_terminal(&t.state))
            .map(task_summary)
            .collect(),
    ))
}

async fn inspect_task(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let task = match state.agent.find_task(&id) {
        Ok(task) => task,
        Err(err) => return err.into_response(),
    };
    let containerizer = state.agent.containerizer();
    let running = !task::is_terminal(&task.state);
    let isolation = containerizer.describe(&task.container_id);
    let usage = if running {
        containerizer
            .usage(&task.container_id)
            .ok()
            .map(|u| json!(u))
    } else {
        None
    };
    Json(json!({
        "task": {
            "id": task.id,
            "name": task.name,
            "state": task.state,
            "framework_id": task.framework_id,
            "created_at": task.created_at,
            "started_at": task.started_at,
            "exit_code": task.exit_code,
            "kill_grace_secs": task.grace_secs,
            "task_info": task.task_info,
        },
        "container": {
            "id": task.container_id,
            "pid": task.pid,
            "sandbox": containerizer.sandbox_dir(&task.container_id),
            "cgroup": isolation.get("cgroups").cloned().unwrap_or(Value::Null),
            "isolation": isolation,
        },
        "resources": {"cpus": task.limits.cpus, "mem_mb": task.limits.mem_mb, "pids": task.limits.pids},
        "usage": usage,
        "health": task.health,
        "statuses": task.statuses,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct KillQuery {
    grace: Option<f64>,
}

async fn kill_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<KillQuery>,
) -> Response {
    let grace = match query.grace {
        Some(g) if g.is_finite() && (0.0..=3600.0).contains(&g) => Some(Duration::from_secs_f64(g)),
        Some(g) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("grace {g} must be 0..=3600 seconds")})),
            )
                .into_response();
        }
        None => None,
    };
    match state.agent.kill_by_reference(&id, grace) {
        Ok(task) => (StatusCode::ACCEPTED, Json(task_summary(&task))).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `POST /api/berth/v1/tasks/{id}/update?cpus=&mem=&memory_high=&pids=` (bytes for sizes).
async fn update_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(update): Query<berth_isolators::LimitsUpdate>,
) -> Response {
    if update == berth_isolators::LimitsUpdate::default() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "nothing to update: give cpus, mem_bytes, mem_high_bytes or pids_max"})),
        )
            .into_response();
    }
    if update.cpus.is_some_and(|c| !c.is_finite() || c < 0.01) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "cpus must be at least 0.01"})),
        )
            .into_response();
    }
    match state.agent.update_limits(&id, &update) {
        Ok(task) => Json(task_summary(&task)).into_response(),
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct LogsQuery {
    stream: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
}

/// Bytes of a task's stdout or stderr from `offset`, at most `limit` (default 1 MiB). The
/// `X-Berth-Task-State` header tells the client whether more may come.
async fn task_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let task = match state.agent.find_task(&id) {
        Ok(task) => task,
        Err(err) => return err.into_response(),
    };
    let stream = query.stream.as_deref().unwrap_or("stdout");
    if stream != "stdout" && stream != "stderr" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "stream must be stdout or stderr"})),
        )
            .into_response();
    }
    let path = state
        .agent
        .containerizer()
        .sandbox_dir(&task.container_id)
        .join(stream);
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(1 << 20).min(8 << 20);
    let data = tokio::task::spawn_blocking(move || read_range(&path, offset, limit))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    match data {
        Ok(bytes) => {
            let mut response = bytes.into_response();
            if let Ok(value) = task.state.parse() {
                response.headers_mut().insert("X-Berth-Task-State", value);
            }
            response
        }
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": err.to_string()})),
        )
            .into_response(),
    }
}

fn read_range(path: &std::path::Path, offset: u64, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    file.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// What the operator APIs report about the master link.
fn link_status(state: &AppState) -> LinkStatus {
    use crate::link::MasterLink;
    let Some(link) = &state.link else {
        return LinkStatus::default();
    };
    let registered = link.is_registered();
    LinkStatus {
        registered,
        master_hostname: registered
            .then(|| link.master().map(|m| m.addr.ip().to_string()))
            .flatten(),
        capabilities: crate::mesos::link::agent_capabilities()
            .iter()
            .map(|c| c.r#type().as_str_name().to_string())
            .collect(),
    }
}

/// Mesos v0 `/state`.
async fn agent_state(State(state): State<AppState>) -> Json<Value> {
    Json(operator_api::state_document(
        &state.agent,
        &link_status(&state),
    ))
}

/// `POST /api/v1`: the Mesos v1 agent operator API.
async fn operator(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    operator_api::handle(&state.agent, &link_status(&state), &headers, &body).await
}

/// Mesos `/monitor/statistics`: resource usage of every running task's container.
async fn monitor_statistics(State(state): State<AppState>) -> Json<Value> {
    Json(crate::usage::monitor_statistics(
        &state.agent.usages().await,
    ))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let agent = &state.agent;
    let tasks = agent.tasks();
    let mut by_state: BTreeMap<String, f64> = BTreeMap::new();
    for name in [
        "TASK_STAGING",
        "TASK_STARTING",
        "TASK_RUNNING",
        "TASK_FINISHED",
        "TASK_FAILED",
        "TASK_KILLED",
        "TASK_ERROR",
        "TASK_LOST",
    ] {
        by_state.insert(name.to_string(), 0.0);
    }
    let (mut cpus_used, mut mem_used) = (0.0, 0.0);
    for task in &tasks {
        *by_state.entry(task.state.clone()).or_default() += 1.0;
        if !task::is_terminal(&task.state) {
            cpus_used += task.limits.cpus;
            mem_used += task.limits.mem_mb;
        }
    }
    let total = &agent.settings().resources;
    let resource_samples = |values: [(&'static str, f64); 2]| {
        values
            .into_iter()
            .map(|(name, v)| (vec![("resource", name.to_string())], v))
            .collect()
    };
    let mut gauges = vec![
        Gauge {
            name: "berth_tasks",
            help: "Tasks known to the agent, by state.",
            samples: by_state
                .into_iter()
                .map(|(s, v)| (vec![("state", s)], v))
                .collect(),
        },
        Gauge {
            name: "berth_containers",
            help: "Containers currently monitored.",
            samples: vec![(vec![], agent.containerizer().container_ids().len() as f64)],
        },
        Gauge {
            name: "berth_resources_total",
            help: "Resources the agent offers (cpus, mem in MB).",
            samples: resource_samples([
                ("cpus", total.scalar("cpus")),
                ("mem", total.scalar("mem")),
            ]),
        },
        Gauge {
            name: "berth_resources_used",
            help: "Resources held by running tasks (cpus, mem in MB).",
            samples: resource_samples([("cpus", cpus_used), ("mem", mem_used)]),
        },
        Gauge {
            name: "berth_uptime_seconds",
            help: "Seconds since the agent started.",
            samples: vec![(vec![], agent.uptime().as_secs_f64())],
        },
    ];
    gauges.extend(crate::usage::gauges(&agent.usages().await));
    if let Some(master) = &state.master {
        let (frameworks, offers) = master.counts();
        gauges.push(Gauge {
            name: "berth_master_frameworks",
            help: "Frameworks known to the embedded master.",
            samples: vec![(vec![], frameworks as f64)],
        });
        gauges.push(Gauge {
            name: "berth_master_outstanding_offers",
            help: "Offers not yet answered.",
            samples: vec![(vec![], offers as f64)],
        });
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        agent.metrics.render(&gauges),
    )
        .into_response()
}
