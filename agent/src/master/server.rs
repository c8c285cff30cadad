//! Running the embedded master: its own libprocess/HTTP server (the `master` process, the v1
//! scheduler API, the v1 operator API at `/api/v1`, `/health`, `/state`), and, with ZooKeeper,
//! its election.
//!
//! `berth master` runs one; `berth agent --dev` runs one in the agent's process on its own
//! port, and the agent talks to it over the wire exactly as it would to a Mesos master.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::serve::ListenerExt;
use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio::sync::watch;
use tracing::info;

use super::{
    EmbeddedMaster, contender, operator,
    overlay_registry::{LeaseRequest, OverlayRegistry, RegistryConfig, RegistryError},
    scheduler_api,
    wire::{MasterProcess, PingSettings},
};
use crate::{
    libprocess::{self, Processes, Upid, transport::Transport},
    mesos::detector::MasterLeader,
};

/// How to run a master.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Address of its server (port 0 picks a free one).
    pub listen: SocketAddr,
    /// IP to advertise in its pid when `listen` is a wildcard.
    pub advertise_ip: Option<IpAddr>,
    /// Hostname it reports.
    pub hostname: String,
    /// Agent health checking.
    pub ping: PingSettings,
    /// `zk://...` group to contend in; None = lead at once.
    pub zk: Option<String>,
    /// ZooKeeper session timeout.
    pub zk_session_timeout: Duration,
    /// Overlay membership: the pool and lease timeout.
    pub overlay: RegistryConfig,
    /// Whether a master that starts leading waits one lease timeout for nodes to re-lease
    /// their subnets before granting new ones (`berth master`; not for `--dev`, whose master
    /// starts with its only node).
    pub overlay_recovery: bool,
}

/// A master that runs.
pub struct RunningMaster {
    /// The allocator and scheduler API state.
    pub master: Arc<EmbeddedMaster>,
    /// Its pid, `master@ip:port`.
    pub pid: Upid,
    /// Whether it leads.
    pub leading: watch::Receiver<bool>,
    /// The server task.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[derive(Clone)]
struct MasterHttp {
    master: Arc<EmbeddedMaster>,
    leading: watch::Receiver<bool>,
    leader: Option<watch::Receiver<Option<MasterLeader>>>,
    overlay: Arc<OverlayRegistry>,
}

/// Binds, starts the master process and serves until `shutdown` resolves.
pub async fn start_master(
    options: MasterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningMaster> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("master: listening on {}", options.listen))?;
    let bound = listener.local_addr()?;
    let ip = crate::mesos::link::advertise_ip(bound, options.advertise_ip, None);
    let address = SocketAddr::new(ip, bound.port());
    let master = EmbeddedMaster::new(address, &options.hostname);
    let pid = Upid::new("master", address);
    let transport = Transport::new(pid.clone());
    let processes = Processes::new();
    let process = MasterProcess::start(master.clone(), transport, processes.clone(), options.ping);
    master.start();
    let overlay = Arc::new(OverlayRegistry::new(options.overlay.clone()));
    overlay.spawn_expiry();
    let (leading, leader) = match &options.zk {
        None => {
            if options.overlay_recovery {
                overlay.start_leading(Instant::now());
            }
            (watch::channel(true).1, None)
        }
        Some(url) => {
            process.set_leading(false);
            let (leading, leader) =
                contender::contend(url, master.master_info(), options.zk_session_timeout)
                    .await
                    .context("master: joining the ZooKeeper group")?;
            let mut watch_leading = leading.clone();
            let process = process.clone();
            let overlay = overlay.clone();
            tokio::spawn(async move {
                let mut led = false;
                loop {
                    let leads = *watch_leading.borrow_and_update();
                    process.set_leading(leads);
                    if leads && !led {
                        overlay.start_leading(Instant::now());
                    }
                    led = leads;
                    if watch_leading.changed().await.is_err() {
                        return;
                    }
                }
            });
            (leading, Some(leader))
        }
    };
    let http = MasterHttp {
        master: master.clone(),
        leading: leading.clone(),
        leader,
        overlay,
    };
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/state", get(state))
        .route("/master/state", get(state))
        .route("/api/v1/scheduler", post(scheduler))
        .route("/api/v1", post(operator_api))
        .route("/overlay/v1/lease", post(overlay_lease))
        .route("/overlay/v1/members", get(overlay_members))
        .with_state(http)
        .merge(libprocess::router(processes))
        .layer(axum::extract::DefaultBodyLimit::max(
            scheduler_api::MAX_CALL_BYTES,
        ));
    info!(pid = %pid, zk = ?options.zk, "berth master serving");
    let server = tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok(RunningMaster {
        master,
        pid,
        leading,
        server,
    })
}

/// Mesos masters that do not lead redirect API calls (to `path`) to the leader.
fn not_leading(http: &MasterHttp, path: &str) -> Option<Response> {
    if *http.leading.borrow() {
        return None;
    }
    let leader = http.leader.as_ref().and_then(|l| l.borrow().clone());
    Some(match leader {
        Some(leader) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(
                header::LOCATION,
                format!("http://{}{path}", SocketAddr::new(leader.ip, leader.port)),
            )],
            "not the leading master",
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leading master").into_response(),
    })
}

async fn scheduler(State(http): State<MasterHttp>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(redirect) = not_leading(&http, "/api/v1/scheduler") {
        return redirect;
    }
    scheduler_api::handle(http.master.clone(), headers, body).await
}

async fn operator_api(State(http): State<MasterHttp>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(redirect) = not_leading(&http, "/api/v1") {
        return redirect;
    }
    operator::handle(http.master.clone(), &headers, &body).await
}

async fn overlay_lease(State(http): State<MasterHttp>, body: Bytes) -> Response {
    if let Some(redirect) = not_leading(&http, "/overlay/v1/lease") {
        return redirect;
    }
    let request: LeaseRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("bad overlay lease request: {err}"),
            )
                .into_response();
        }
    };
    match http.overlay.lease(&request, Instant::now()) {
        Ok(grant) => Json(grant).into_response(),
        Err(err @ RegistryError::Recovering { retry_after }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(
                header::RETRY_AFTER,
                retry_after.as_secs().max(1).to_string(),
            )],
            err.to_string(),
        )
            .into_response(),
        Err(err @ RegistryError::PoolExhausted { .. }) => {
            (StatusCode::CONFLICT, err.to_string()).into_response()
        }
        Err(err @ RegistryError::BadRequest(_)) => {
            (StatusCode::BAD_REQUEST, err.to_string()).into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct MembersQuery {
    after: Option<u64>,
}

async fn overlay_members(
    State(http): State<MasterHttp>,
    axum::extract::Query(query): axum::extract::Query<MembersQuery>,
) -> Response {
    if let Some(redirect) = not_leading(&http, "/overlay/v1/members") {
        return redirect;
    }
    let view = match query.after {
        Some(after) => http.overlay.members_after(after, MEMBERS_LONG_POLL).await,
        None => http.overlay.members(),
    };
    Json(view).into_response()
}

/// How long `GET /overlay/v1/members?after=V` waits for a change.
pub const MEMBERS_LONG_POLL: Duration = Duration::from_secs(10);

async fn state(State(http): State<MasterHttp>) -> Json<serde_json::Value> {
    let (frameworks, offers) = http.master.counts();
    let info = http.master.master_info();
    Json(json!({
        "id": info.id,
        "pid": info.pid,
        "hostname": info.hostname,
        "version": info.version,
        "leading": *http.leading.borrow(),
        "agents": http.master.agents(),
        "frameworks": frameworks,
        "outstanding_offers": offers,
    }))
}

/// `berth master`: runs until SIGINT/SIGTERM.
pub async fn run_master_command(flags: crate::cli::MasterFlags) -> anyhow::Result<()> {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    if flags.agent_ping_timeout.is_nan()
        || flags.agent_ping_timeout <= 0.0
        || flags.max_agent_ping_timeouts == 0
    {
        anyhow::bail!("--agent-ping-timeout and --max-agent-ping-timeouts must be positive");
    }
    if !(flags.overlay_lease_timeout.is_finite() && flags.overlay_lease_timeout >= 0.5) {
        anyhow::bail!("--overlay-lease-timeout must be at least 0.5 seconds");
    }
    let running = start_master(
        MasterOptions {
            listen: flags.listen,
            advertise_ip: flags.advertise_ip,
            hostname,
            ping: PingSettings {
                interval: Duration::from_secs_f64(flags.agent_ping_timeout),
                max_missed: flags.max_agent_ping_timeouts,
            },
            zk: flags.zk,
            zk_session_timeout: Duration::from_secs(10),
            overlay: RegistryConfig {
                pool: flags
                    .overlay_pool
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--overlay-pool {}: {e}", flags.overlay_pool))?,
                prefix: 24,
                lease_timeout: Duration::from_secs_f64(flags.overlay_lease_timeout),
            },
            overlay_recovery: true,
        },
        async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        },
    )
    .await?;
    running.server.await??;
    Ok(())
}
