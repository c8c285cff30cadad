//! `berth agent`: start-up checks, wiring of the components, the HTTP server, and shutdown.
//!
//! Start-up, in order:
//! 1. refuse to run unless root (namespaces and cgroups need it);
//! 2. create the work and runtime dirs and take the work dir's lock (one agent per work dir);
//! 3. detect cgroups (v2, else the v1 fallback) under the agent's own cgroup;
//! 4. detect or read the node's resources; load or create the agent id;
//! 5. open the image store (`<work-dir>/images`), build the containerizer and the agent,
//!    recover checkpointed tasks and containers;
//! 6. connect to the master (the embedded one in `--dev`) and serve HTTP.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use berth_containerizer::{Containerizer, ContainerizerPaths, image::ImageStore};
use berth_isolators::{NetworkMode, cgroups::CgroupsIsolator};
use clap::{Args, ValueEnum};
use tracing::{info, warn};

use crate::{
    agent::{Agent, AgentSettings},
    checkpoint,
    http::{self, AppState},
    isolation::{IsolationFlags, IsolatorPaths, build_isolators},
    link::AgentPort,
    master::EmbeddedMaster,
    metrics::Metrics,
    resources::{self, ResourceSet},
};

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags of `berth agent`.
#[derive(Debug, Args)]
pub struct AgentFlags {
    /// Run with an embedded single-node master (development mode).
    #[arg(long)]
    pub dev: bool,
    /// Master to register with (HOST:PORT or zk://...). Not supported yet: use --dev.
    #[arg(long)]
    pub master: Option<String>,
    /// Directory for checkpoints, sandboxes and images.
    #[arg(long, default_value = "/var/lib/berth")]
    pub work_dir: PathBuf,
    /// Directory for state that must not survive a reboot (shim sockets, pid files).
    #[arg(long, default_value = "/run/berth")]
    pub runtime_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:5051")]
    pub listen: SocketAddr,
    /// Resources to offer instead of the detected ones, Mesos syntax: `cpus:4;mem:8192;ports:[31000-32000]`.
    #[arg(long)]
    pub resources: Option<String>,
    /// Attributes, Mesos syntax: `rack:r1;zone:a`.
    #[arg(long, default_value = "")]
    pub attributes: String,
    /// Name of the cgroup (under the agent's own) that holds the containers' cgroups.
    #[arg(long, default_value = "berth")]
    pub cgroup_base: String,
    /// Network of tasks that do not ask for one.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    pub default_network: String,
    /// pids.max of tasks that do not set one.
    #[arg(long, default_value_t = 4096)]
    pub default_pids_max: u64,
    /// The berth-executor binary (default: next to this executable).
    #[arg(long)]
    pub executor_path: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Isolator choice and settings.
    #[command(flatten)]
    pub isolation: IsolationFlags,
    /// Run this command as a sample task once the agent is up, and print its output (used by
    /// the README's first command).
    #[arg(long, value_name = "SHELL COMMAND")]
    pub sample_task: Option<String>,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(flags: AgentFlags) -> anyhow::Result<()> {
    // 1. Privileges.
    if !nix::unistd::geteuid().is_root() {
        bail!("berth agent must run as root: it creates namespaces and cgroups");
    }
    if !flags.dev {
        bail!(
            "only --dev (embedded master) is supported so far; --master {} is not implemented yet",
            flags.master.as_deref().unwrap_or("HOST:PORT")
        );
    }
    // 2. Directories and the work dir lock.
    for dir in [&flags.work_dir, &flags.runtime_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _lock = lock_work_dir(&flags.work_dir)?;
    // 3. cgroups: refuse to start if they are unusable.
    let cgroups = CgroupsIsolator::new(
        Path::new("/sys/fs/cgroup"),
        Path::new("/proc/self/cgroup"),
        &flags.cgroup_base,
    )
    .context("cgroups are unusable on this host")?;
    info!(version = ?cgroups.version(), "cgroups detected");
    // 4. Resources and identity.
    let resources = match &flags.resources {
        Some(text) => {
            let mut detected = resources::detect(Path::new("/proc"), &flags.work_dir);
            let given: ResourceSet = text.parse().context("--resources")?;
            for (name, value) in given.scalars {
                detected.scalars.insert(name, value);
            }
            for (name, ranges) in given.ranges {
                detected.ranges.insert(name, ranges);
            }
            detected
        }
        None => resources::detect(Path::new("/proc"), &flags.work_dir),
    };
    let attributes = resources::parse_attributes(&flags.attributes).context("--attributes")?;
    let meta_dir = flags.work_dir.join("meta");
    let agent_id = load_or_create_agent_id(&meta_dir)?;
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    // 5. Containerizer, agent, recovery.
    let executor_bin = match &flags.executor_path {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("berth-executor"))
            .context("locating berth-executor")?,
    };
    if !executor_bin.is_file() {
        bail!(
            "the shim {} does not exist (build it, or pass --executor-path)",
            executor_bin.display()
        );
    }
    let cgroups = Arc::new(cgroups);
    let containers_runtime = flags.runtime_dir.join("containers");
    let isolators = build_isolators(
        &flags.isolation,
        cgroups.clone(),
        &IsolatorPaths {
            work_dir: flags.work_dir.clone(),
            runtime_dir: flags.runtime_dir.clone(),
            containers_runtime: containers_runtime.clone(),
        },
    )?;
    info!(
        isolators = ?isolators.iter().map(|i| i.name()).collect::<Vec<_>>(),
        "isolators enabled"
    );
    let images_dir = flags.work_dir.join("images");
    let images = ImageStore::open(&images_dir)
        .with_context(|| format!("opening the image store {}", images_dir.display()))?;
    let containerizer = Arc::new(
        Containerizer::new(
            ContainerizerPaths {
                sandboxes: flags.work_dir.join("sandboxes"),
                runtime: containers_runtime,
                executor_bin,
            },
            isolators,
        )?
        .with_image_store(Arc::new(images)),
    );
    let settings = AgentSettings {
        id: agent_id,
        hostname,
        resources,
        attributes,
        meta_dir,
        default_network: if flags.default_network == "host" {
            NetworkMode::Host
        } else {
            NetworkMode::None
        },
        default_pids_max: flags.default_pids_max,
        default_grace: Duration::from_secs(3),
        seccomp_config_dir: flags.isolation.seccomp_config_dir.clone(),
        flags: crate::operator_api::flags::from_command_line(std::env::args_os()),
    };
    let agent = Agent::new(settings, containerizer, Arc::new(Metrics::default()));
    agent
        .recover()
        .await
        .context("recovering checkpointed tasks")?;
    // 6. Master and HTTP.
    let master = EmbeddedMaster::new();
    master.attach(Arc::new(agent.clone()) as Arc<dyn AgentPort>);
    agent.connect(master.clone());
    let listener = tokio::net::TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("listening on {}", flags.listen))?;
    let app = http::router(AppState {
        agent: agent.clone(),
        master: Some(master),
    });
    info!(
        listen = %flags.listen,
        agent_id = %agent.settings().id,
        resources = %agent.settings().resources,
        "berth agent ready (embedded master)"
    );
    let server = tokio::spawn(async move {
        // Event streams carry small records: without TCP_NODELAY, Nagle + delayed ACKs hold
        // each one ~40 ms (measured by tests/bench).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    if let Some(command) = flags.sample_task.clone() {
        let agent_url = format!("http://{}", flags.listen);
        tokio::spawn(async move {
            let args = crate::cli::RunArgs::sample(&command);
            match crate::cli::run::run(&agent_url, args).await {
                Ok(code) => info!(exit_code = code, "sample task finished"),
                Err(err) => warn!(error = %err, "sample task failed"),
            }
        });
    }
    server.await??;
    info!("shutting down: killing tasks");
    agent.kill_all(Duration::from_secs(3)).await;
    // The base cgroups are berth's own: remove them when no container is left in them.
    for dir in cgroups.base_dirs() {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => warn!(path = %dir.display(), error = %err, "base cgroup left in place"),
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// An exclusive `flock` on `<work-dir>/agent.lock`, held while the agent runs.
fn lock_work_dir(work_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = work_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a valid open descriptor owned by `file`, which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another berth agent holds {} (pid {}); stop it or use another --work-dir",
            path.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    std::fs::write(&path, std::process::id().to_string())?;
    Ok(file)
}

fn load_or_create_agent_id(meta_dir: &Path) -> anyhow::Result<String> {
    let path = meta_dir.join("agent.json");
    if let Some(value) = checkpoint::read_json::<serde_json::Value>(&path)?
        && let Some(id) = value.get("id").and_then(|v| v.as_str())
    {
        return Ok(id.to_string());
    }
    let id = format!("{}-S0", uuid::Uuid::new_v4());
    checkpoint::write_json(&path, &serde_json::json!({"id": id}))?;
    Ok(id)
}
