//! The `berth` command line: argument tables (clap) and one module per verb. Every verb talks to
//! an agent's HTTP API; `run` is a Mesos v1 scheduler (a framework) of its own.

pub mod client;
pub mod health_args;
pub mod image;
pub mod isolation_args;
pub mod net;
pub mod oci;
pub mod ops;
pub mod run;

use clap::{Args, Parser, Subcommand};

use crate::daemon::AgentFlags;
use isolation_args::IsolationArgs;

/// berth: a container node agent with an embedded master for development.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
pub struct Cli {
    /// The agent's HTTP address.
    #[arg(
        long,
        global = true,
        env = "BERTH_AGENT",
        default_value = "http://127.0.0.1:5051"
    )]
    pub agent: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent.
    Agent(Box<AgentFlags>),
    /// Run berth's offer-based master (the one `agent --dev` embeds) on its own: agents
    /// register with it over the Mesos agent protocol; frameworks use the v1 scheduler API.
    Master(MasterFlags),
    /// Run a command as a task (a framework on the scheduler API) and stream its output.
    Run(Box<RunArgs>),
    /// List tasks.
    Ps(PsArgs),
    /// Print a task's stdout and stderr.
    Logs(LogsArgs),
    /// Kill a task: SIGTERM, grace period, SIGKILL.
    Kill(KillArgs),
    /// Show everything about a task as JSON.
    Inspect(TaskRef),
    /// Change a running task's limits (cpus, memory, memory.high, pids) in place.
    Update(UpdateArgs),
    /// The node's networks: bridge subnet and leases, port mappings, overlay peers.
    Net(net::NetArgs),
    /// Manage the local image store (load, pull, ls, rm, gc); needs no running agent.
    Image(image::ImageArgs),
    /// berth as an OCI runtime (runc's command line: create, start, state, kill, delete, ...).
    Oci(Box<oci::OciArgs>),
    /// (internal) Runs a COMMAND health check inside a running container; the agent starts it.
    #[command(name = "health-exec", hide = true)]
    HealthExec(HealthExecArgs),
}

/// Arguments of the hidden `berth health-exec` (see [`crate::health::helper`]).
#[derive(Debug, Args)]
pub struct HealthExecArgs {
    /// Host pid of the container's init.
    #[arg(long)]
    pub pid: i32,
    /// Seconds the command may run before its process group is killed.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Flags of `berth master`.
#[derive(Debug, Args)]
pub struct MasterFlags {
    /// Address of the master's server (libprocess messages, /api/v1/scheduler, /state).
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub listen: std::net::SocketAddr,
    /// IP to advertise in the master's pid when --listen is a wildcard.
    #[arg(long)]
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Contend for leadership in this ZooKeeper group (`zk://host:2181/mesos`).
    #[arg(long)]
    pub zk: Option<String>,
    /// Seconds between pings of an agent, and how long each pong may take (Mesos
    /// --agent_ping_timeout).
    #[arg(long, default_value_t = 15.0)]
    pub agent_ping_timeout: f64,
    /// Pings an agent may miss before it is unreachable (Mesos --max_agent_ping_timeouts).
    #[arg(long, default_value_t = 5)]
    pub max_agent_ping_timeouts: u32,
    /// The overlay range node subnets (/24) are leased from, for agents that keep overlay
    /// membership in this master (agents with --overlay and no ZooKeeper).
    #[arg(long, default_value = "9.0.0.0/8")]
    pub overlay_pool: String,
    /// Seconds an overlay lease lasts without renewal: a dead node's routes go this long
    /// after it stops renewing.
    #[arg(long, default_value_t = 10.0)]
    pub overlay_lease_timeout: f64,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

/// Arguments of `berth update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// New CPU share.
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<f64>,
    /// New memory limit (64M).
    #[arg(long, value_parser = parse_size)]
    pub mem: Option<u64>,
    /// New soft memory limit.
    #[arg(long, value_parser = crate::task_spec::parse_bytes)]
    pub memory_high: Option<u64>,
    /// New process limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub pids: Option<u64>,
    /// Print the task's new limits as JSON.
    #[arg(long)]
    pub json: bool,
    /// Task id, unique id prefix, or name.
    pub task: String,
}

/// Arguments of `berth run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// CPUs (fractional, e.g. 0.5).
    #[arg(long, default_value = "1", value_parser = parse_cpus)]
    pub cpus: f64,
    /// Memory limit: bytes, or with a suffix K, M, G (e.g. 64M).
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    pub mem: u64,
    /// Max processes and threads in the container.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub pids: Option<u64>,
    /// Task name (also usable as its reference in other commands).
    #[arg(long)]
    pub name: Option<String>,
    /// Print the task id once it runs, and leave it running.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Environment variable (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Task label (repeatable), e.g. `VIP_0=/web:80` to make the task a backend of VIP
    /// `web.l4lb.berth.directory:80`.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub labels: Vec<(String, String)>,
    /// Working directory of the command (default: the task's sandbox).
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Network: none (private, loopback only), host, or bridge (the node bridge: an address from
    /// the node subnet, reachable from the node and the node's other bridge tasks).
    #[arg(long, default_value = "none", value_parser = ["none", "host", "bridge", "overlay"])]
    pub network: String,
    /// Forward a node port to the task (`--network bridge`): `HOST:CONTAINER[/tcp|/udp]`.
    #[arg(long, short = 'p', value_name = "HOST:CONTAINER[/PROTO]", value_parser = parse_publish)]
    pub publish: Vec<(u32, u32, String)>,
    /// Seconds between SIGTERM and SIGKILL when the task is killed.
    #[arg(long, default_value = "3", value_parser = parse_grace)]
    pub grace: f64,
    /// Isolation: limits beyond cpus/mem, capabilities, seccomp, volumes, user namespace.
    #[command(flatten)]
    pub isolation: IsolationArgs,
    /// Health check of the task (Mesos `TaskInfo.health_check`).
    #[command(flatten)]
    pub health: health_args::HealthArgs,
    /// Run in this image's root filesystem (pulled by the agent when absent); the command
    /// then replaces the image's Cmd and may be omitted (its Entrypoint and Cmd run).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// The command and its arguments (run directly, not through a shell).
    #[arg(last = true, required_unless_present = "image", value_name = "CMD")]
    pub command: Vec<String>,
}

impl RunArgs {
    /// The sample task of `berth agent --sample-task`.
    pub fn sample(shell_command: &str) -> Self {
        Self {
            cpus: 0.5,
            mem: 64 << 20,
            pids: None,
            name: Some("sample".into()),
            detach: false,
            env: Vec::new(),
            workdir: None,
            network: "none".into(),
            publish: Vec::new(),
            labels: Vec::new(),
            grace: 3.0,
            isolation: IsolationArgs {
                seccomp: "default".into(),
                ..Default::default()
            },
            health: Default::default(),
            image: None,
            command: vec!["/bin/sh".into(), "-c".into(), shell_command.into()],
        }
    }
}

/// Arguments of `berth ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Include finished tasks.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `berth logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output until the task ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only stdout.
    #[arg(long, conflicts_with = "stderr_only")]
    pub stdout_only: bool,
    /// Only stderr.
    #[arg(long)]
    pub stderr_only: bool,
    /// Task id, unique id prefix, or name.
    pub task: String,
}

/// Arguments of `berth kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Seconds between SIGTERM and SIGKILL (default: the task's kill policy).
    #[arg(long, value_parser = parse_grace)]
    pub grace: Option<f64>,
    /// Task id, unique id prefix, or name.
    pub task: String,
}

/// A task reference.
#[derive(Debug, Args)]
pub struct TaskRef {
    /// Task id, unique id prefix, or name.
    pub task: String,
}

fn parse_cpus(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !value.is_finite() || value < 0.01 {
        return Err(format!("{text} must be at least 0.01"));
    }
    Ok(value)
}

fn parse_grace(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !value.is_finite() || !(0.0..=3600.0).contains(&value) {
        return Err(format!("{text} must be between 0 and 3600 seconds"));
    }
    Ok(value)
}

/// Parses `64M`, `1G`, `512k`, `1048576` (bytes) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bytes = crate::task_spec::parse_bytes(text)?;
    if bytes < 4 << 20 {
        return Err(format!("{} is below the 4M minimum", text.trim()));
    }
    Ok(bytes)
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') && !value.contains('\0') => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `HOST:CONTAINER[/PROTO]` of `--publish`.
fn parse_publish(text: &str) -> Result<(u32, u32, String), String> {
    let (ports, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let (host, container) = ports
        .split_once(':')
        .ok_or_else(|| format!("'{text}' is not HOST:CONTAINER[/tcp|/udp]"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(u32::from)
            .ok_or_else(|| format!("'{p}' is not a port (1-65535)"))
    };
    if proto != "tcp" && proto != "udp" {
        return Err(format!("protocol '{proto}': tcp or udp"));
    }
    Ok((port(host)?, port(container)?, proto.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("8388608").unwrap(), 8 << 20);
        assert!(parse_size("-5").is_err());
        assert!(parse_size("1k").unwrap_err().contains("minimum"));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cpus_env_grace() {
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("nan").is_err());
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_grace("-1").is_err());
    }

    #[test]
    fn cli_parses_run_with_trailing_command() {
        let cli =
            Cli::try_parse_from(["berth", "run", "--cpus", "0.5", "--", "sh", "-c", "echo hi"])
                .unwrap();
        match cli.command {
            Command::Run(args) => assert_eq!(args.command, ["sh", "-c", "echo hi"]),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["berth", "run", "--mem", "-5", "--", "true"]).is_err());
        assert!(
            Cli::try_parse_from(["berth", "run"]).is_err(),
            "no command, no image"
        );
        match Cli::try_parse_from(["berth", "run", "--image", "busybox"])
            .unwrap()
            .command
        {
            Command::Run(args) => {
                assert_eq!(args.image.as_deref(), Some("busybox"));
                assert!(args.command.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["berth", "run", "--bogus", "--", "true"]).is_err());
    }

    #[test]
    fn publish_values_parse() {
        assert_eq!(parse_publish("8080:80").unwrap(), (8080, 80, "tcp".into()));
        assert_eq!(
            parse_publish("53:5353/udp").unwrap(),
            (53, 5353, "udp".into())
        );
        for bad in ["8080", "0:80", "8080:70000", "1:2/sctp", "a:b"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}
