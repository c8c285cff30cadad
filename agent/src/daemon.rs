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
use berth_net::{bridge::BridgeConfig, isolator::BridgeIsolator};
use clap::{Args, ValueEnum};
use tracing::{info, warn};

use crate::{
    agent::{Agent, AgentSettings},
    checkpoint,
    http::{self, AppState},
    isolation::{IsolationFlags, IsolatorPaths, build_isolators},
    libprocess::{self, Processes, Upid, transport::Transport},
    master::{
        server::{MasterOptions, start_master},
        wire::PingSettings,
    },
    mesos::{
        detector::{DetectOptions, MasterSource, detect_with, parse_master},
        link::{AGENT_PROCESS_ID, MesosLink, advertise_ip},
    },
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
    /// Run with an embedded master (development mode): it gets its own port (--dev-master-listen)
    /// and the agent registers with it over the Mesos wire protocol, as with --master.
    #[arg(long, conflicts_with = "master")]
    pub dev: bool,
    /// Master to register with: `HOST:PORT`, `master@IP:PORT`, `zk://[user:pass@]h1:2181,h2:2181/mesos`
    /// or `file:///path` holding one of those.
    #[arg(long, required_unless_present = "dev")]
    pub master: Option<String>,
    /// Address of the embedded master in --dev mode (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub dev_master_listen: SocketAddr,
    /// IP masters reach this agent on (NAT), when it differs from --listen.
    #[arg(long)]
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Port masters reach this agent on (NAT), when it differs from --listen.
    #[arg(long)]
    pub advertise_port: Option<u16>,
    /// Upper bound of the random delay before the first registration attempt, seconds; later
    /// attempts double it up to 60 s (Mesos' --registration_backoff_factor).
    #[arg(long, default_value_t = 1.0)]
    pub registration_backoff_factor: f64,
    /// ZooKeeper session timeout for --master zk://..., seconds.
    #[arg(long, default_value_t = 10.0)]
    pub zk_session_timeout: f64,
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
    #[arg(long, default_value = "none", value_parser = ["none", "host", "bridge"])]
    pub default_network: String,
    /// The node bridge of `bridge` tasks (created at the first one).
    #[arg(long, default_value = "berth0")]
    pub bridge_name: String,
    /// The node subnet `bridge` tasks get addresses from (the bridge holds its first address).
    #[arg(long, default_value = "9.0.1.0/24")]
    pub bridge_subnet: String,
    /// MTU of the bridge and the containers' eth0 (with --overlay: the underlay's minus 50).
    #[arg(long, default_value_t = 1500)]
    pub bridge_mtu: u32,
    /// Join the VXLAN overlay (`--network overlay` tasks; Mesos network name `berth`): the node
    /// subnet is leased (in ZooKeeper, or from the master) and replaces --bridge-subnet.
    #[arg(long)]
    pub overlay: bool,
    /// ZooKeeper for overlay membership (default: --master when it is a zk:// URL; otherwise
    /// the master keeps it: --dev's embedded one, or the `berth master` --master names).
    #[arg(long)]
    pub overlay_zk: Option<String>,
    /// The node's VTEP address (default: the address the agent advertises to the master).
    #[arg(long)]
    pub overlay_vtep_ip: Option<std::net::Ipv4Addr>,
    /// The underlay device holding the VTEP address (default: found from the address).
    #[arg(long)]
    pub overlay_underlay: Option<String>,
    /// Run the node's network services for bridge/overlay tasks (implied by --overlay): the
    /// bridge at start, the L4 load balancer for VIP_n labels (11.0.0.0/8) and DNS on the
    /// bridge gateway (`*.l4lb.berth.directory`, `task.framework.berth.directory`).
    #[arg(long)]
    pub network_services: bool,
    /// The load balancer of the network services: `nftables` (slot maps in the `berth` table)
    /// or `ipvs` (IPVS virtual services, VIP addresses on the dummy link `berth-ipvs0`; needs
    /// the ip_vs kernel module, the agent refuses to start without it).
    #[arg(long, default_value = "nftables", value_name = "nftables|ipvs")]
    pub lb_backend: berth_net::lb::LbBackend,
    /// The range node subnets are leased from.
    #[arg(long, default_value = "9.0.0.0/8")]
    pub overlay_pool: String,
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
    if !flags.dev && flags.master.is_none() {
        bail!("berth agent needs --master HOST:PORT|zk://... or --dev");
    }
    if flags.lb_backend == berth_net::lb::LbBackend::Ipvs
        && !(flags.overlay || flags.network_services)
    {
        bail!("--lb-backend ipvs needs the network services (--network-services or --overlay)");
    }
    if flags.lb_backend == berth_net::lb::LbBackend::Ipvs {
        // Refuse at once, before anything is created, on a kernel without ip_vs.
        berth_net::ipvs::IpvsNetlink::new().context("--lb-backend ipvs")?;
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
    let agent_id = load_agent_id(&meta_dir)?;
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
    let listener = tokio::net::TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("listening on {}", flags.listen))?;
    let bound = listener.local_addr()?;
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
    let mut isolators = isolators;
    let overlay_pool = parse_net("--overlay-pool", &flags.overlay_pool)?;
    check_network_ranges(&flags, overlay_pool)?;
    // The embedded master (--dev) and the master detector: the overlay may need them.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let embedded = if flags.dev {
        let mut rx = shutdown_rx.clone();
        let running = start_master(
            MasterOptions {
                listen: flags.dev_master_listen,
                advertise_ip: None,
                hostname: hostname.clone(),
                ping: PingSettings::default(),
                zk: None,
                zk_session_timeout: Duration::from_secs(10),
                overlay: crate::master::overlay_registry::RegistryConfig {
                    pool: overlay_pool,
                    prefix: 24,
                    lease_timeout: crate::master::overlay_registry::DEFAULT_LEASE_TIMEOUT,
                },
                overlay_recovery: false,
            },
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            },
        )
        .await?;
        Some(running)
    } else {
        None
    };
    let master_flag = match &embedded {
        Some(running) => running.pid.to_string(),
        None => flags.master.clone().unwrap_or_default(),
    };
    let detector = detect_with(
        &master_flag,
        DetectOptions {
            zk_session_timeout: Duration::from_secs_f64(flags.zk_session_timeout.max(1.0)),
        },
    )
    .await
    .context("--master")?;
    // The node subnet: leased on the overlay, or --bridge-subnet.
    let overlay = if flags.overlay {
        Some(join_overlay(&flags, overlay_pool, bound, detector.leader(), &master_flag).await?)
    } else {
        None
    };
    let (subnet, mtu): (berth_net::Ipv4Net, u32) = match &overlay {
        Some(node) => (node.subnet, node.mtu),
        None => (
            flags
                .bridge_subnet
                .parse()
                .map_err(|e| anyhow::anyhow!("--bridge-subnet {}: {e}", flags.bridge_subnet))?,
            flags.bridge_mtu,
        ),
    };
    let bridge = Arc::new(
        BridgeIsolator::new(
            BridgeConfig {
                name: flags.bridge_name.clone(),
                subnet,
                mtu,
                vip_range: (flags.overlay || flags.network_services).then(crate::l4lb::vip_range),
            },
            &flags.work_dir.join("meta").join(format!(
                "ipam-{}_{}",
                subnet.network(),
                subnet.prefix()
            )),
            Path::new("/proc/sys"),
            Arc::new(berth_net::nft::NftCommand::new()),
        )
        .context("the bridge network")?
        .holding_node_ports(),
    );
    isolators.push(bridge.clone());
    let net_view = http::NetView {
        bridge,
        overlay: overlay.as_ref().map(|o| o.status.clone()),
        lb: None,
    };
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
        port: flags.advertise_port.unwrap_or(bound.port()),
        hostname,
        resources,
        attributes,
        meta_dir,
        default_network: match flags.default_network.as_str() {
            "host" => NetworkMode::Host,
            "bridge" => NetworkMode::Bridge,
            _ => NetworkMode::None,
        },
        overlay: flags.overlay,
        container_resolv_conf: (flags.overlay || flags.network_services)
            .then(|| flags.runtime_dir.join("dns").join("resolv.conf")),
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
    // 6. The master link (libprocess over the agent's HTTP server), HTTP.
    let toward = detector
        .leader()
        .borrow()
        .as_ref()
        .map(|l| SocketAddr::new(l.ip, l.port))
        .or_else(|| first_zk_server(&master_flag));
    let ip = advertise_ip(bound, flags.advertise_ip, toward);
    let me = Upid::new(AGENT_PROCESS_ID, SocketAddr::new(ip, agent.settings().port));
    let transport = Transport::new(me.clone());
    let processes = Processes::new();
    let link = MesosLink::new(
        transport,
        Duration::from_secs_f64(flags.registration_backoff_factor.clamp(0.0, 60.0)),
    );
    processes.add(AGENT_PROCESS_ID, link.clone());
    agent.connect(link.clone());
    // The node's network services (LB, DNS) for bridge and overlay tasks.
    let mut net_view = net_view;
    let _services = if flags.overlay || flags.network_services {
        let nft: Arc<dyn berth_net::nft::NftExec> = Arc::new(
            berth_net::nft::NftNetlink::new().context("nftables netlink for the load balancer")?,
        );
        // The whole cluster's tasks (VIP backends anywhere, DNS names of every task), from the
        // leading master's operator event stream.
        let (stream, tasks) = crate::netservices::cluster_tasks(detector.leader());
        let services = crate::netservices::start(
            net_view.bridge.clone(),
            nft,
            flags.lb_backend,
            tasks,
            &flags.runtime_dir,
        )
        .await?;
        net_view.lb = Some(services.lb.clone());
        Some((services, stream))
    } else {
        None
    };
    let app = http::router(AppState {
        agent: agent.clone(),
        master: embedded.as_ref().map(|m| m.master.clone()),
        link: Some(link.clone()),
        net: Some(net_view),
    })
    .merge(libprocess::router(processes));
    info!(
        listen = %bound,
        pid = %me,
        master = %master_flag,
        agent_id = ?agent.agent_id(),
        resources = %agent.settings().resources,
        "berth agent ready"
    );
    let server_agent = agent.clone();
    let server = tokio::spawn(async move {
        // Event streams carry small records: without TCP_NODELAY, Nagle + delayed ACKs hold
        // each one ~40 ms (measured by tests/bench).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = server_agent.shutdown_requested() => {}
                }
            })
            .await
    });
    link.start(Arc::new(agent.clone()), detector.leader());
    let listen = bound;
    if let Some(command) = flags.sample_task.clone() {
        let agent_url = format!("http://{listen}");
        tokio::spawn(async move {
            let args = crate::cli::RunArgs::sample(&command);
            match crate::cli::run::run(&agent_url, args).await {
                Ok(code) => info!(exit_code = code, "sample task finished"),
                Err(err) => warn!(error = %err, "sample task failed"),
            }
        });
    }
    server.await??;
    let _ = shutdown_tx.send(true);
    drop(detector);
    // Mesos semantics: an agent that stops leaves its tasks running and recovers them when it
    // starts again; only --dev (a throw-away node) or a master's shutdown order kill them.
    if flags.dev || agent.agent_id().is_none() {
        info!("shutting down: killing tasks");
        agent.kill_all(Duration::from_secs(3)).await;
    } else {
        info!("shutting down: tasks keep running and are recovered at the next start");
    }
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

/// The agent id a master gave in an earlier run (empty before the first registration).
fn load_agent_id(meta_dir: &Path) -> anyhow::Result<String> {
    let path = meta_dir.join(crate::agent::AGENT_ID_FILE);
    Ok(checkpoint::read_json::<serde_json::Value>(&path)?
        .and_then(|value| value.get("id").and_then(|v| v.as_str()).map(str::to_string))
        .unwrap_or_default())
}

/// The first ZooKeeper server of a `zk://` master (to pick the interface to advertise).
fn first_zk_server(master: &str) -> Option<SocketAddr> {
    let MasterSource::ZooKeeper(url) = parse_master(master).ok()? else {
        return None;
    };
    let first = url.servers.split(',').next()?;
    std::net::ToSocketAddrs::to_socket_addrs(first).ok()?.next()
}

/// Joins the overlay (`--overlay`). Membership is kept in ZooKeeper with --overlay-zk or a
/// zk:// --master, else by the master (--dev's embedded one, or the `berth master` --master
/// names). The VTEP address is --overlay-vtep-ip, else the advertised IP, else the listen IP,
/// else the address that routes to ZooKeeper or the master.
async fn join_overlay(
    flags: &AgentFlags,
    pool: berth_net::Ipv4Net,
    bound: SocketAddr,
    leader: tokio::sync::watch::Receiver<Option<crate::mesos::detector::MasterLeader>>,
    master_flag: &str,
) -> anyhow::Result<crate::overlay::OverlayNode> {
    use crate::overlay::Membership;
    let session_timeout = Duration::from_secs_f64(flags.zk_session_timeout.max(1.0));
    let (membership, toward) = match (&flags.overlay_zk, &flags.master) {
        (Some(zk), _) => (
            Membership::ZooKeeper {
                url: zk.clone(),
                session_timeout,
            },
            first_zk_server(zk),
        ),
        (None, Some(master)) if master.starts_with("zk://") && !flags.dev => (
            Membership::ZooKeeper {
                url: master.clone(),
                session_timeout,
            },
            first_zk_server(master),
        ),
        _ => {
            let toward = leader
                .borrow()
                .as_ref()
                .map(|l| SocketAddr::new(l.ip, l.port))
                .or_else(|| first_zk_server(master_flag));
            (
                Membership::Master {
                    leader,
                    join_timeout: Duration::from_secs(60),
                },
                toward,
            )
        }
    };
    let vtep_ip = match flags.overlay_vtep_ip {
        Some(ip) => ip,
        None => match advertise_ip(bound, flags.advertise_ip, toward) {
            std::net::IpAddr::V4(v4) if !v4.is_loopback() => v4,
            other => bail!(
                "--overlay: the VTEP address {other} is not a usable IPv4 address; pass --overlay-vtep-ip"
            ),
        },
    };
    let underlay_dev = match &flags.overlay_underlay {
        Some(dev) => dev.clone(),
        None => crate::overlay::device_with_address(vtep_ip)?,
    };
    crate::overlay::join(crate::overlay::OverlaySettings {
        membership,
        vtep_ip,
        underlay_dev,
        pool,
        prefix: 24,
        state_file: flags.work_dir.join("meta").join("overlay.json"),
    })
    .await
}

fn parse_net(flag: &str, value: &str) -> anyhow::Result<berth_net::Ipv4Net> {
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("{flag} {value}: {e}"))
}

/// Refuses overlapping network ranges before anything is set up: the bridge subnet (without
/// --overlay), the overlay pool (with it) and the VIP range must not overlap.
fn check_network_ranges(
    flags: &AgentFlags,
    overlay_pool: berth_net::Ipv4Net,
) -> anyhow::Result<()> {
    let vips = crate::l4lb::vip_range();
    let mut nets = vec![("the VIP range", vips)];
    if flags.overlay {
        nets.push(("--overlay-pool", overlay_pool));
    } else {
        nets.push((
            "--bridge-subnet",
            parse_net("--bridge-subnet", &flags.bridge_subnet)?,
        ));
    }
    berth_net::ipam::check_disjoint(&nets).context("network ranges")?;
    Ok(())
}
