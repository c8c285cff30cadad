//! `berth oci ...`: berth as an OCI runtime, with runc's command line (global `--root`,
//! `--log`, `--log-format`; `create --bundle --pid-file --console-socket`, `start`, `state`,
//! `kill [--all] ID [SIGNAL]`, `delete [--force]`, `run [--detach]`, `exec`, `ps`, `list`,
//! `spec`), so tools that drive runc can drive berth (a `berth-oci` symlink to the binary is
//! `berth oci`). The work is done by [`berth_containerizer::oci`]; this module parses, logs and
//! prints. Synchronous: it runs before (instead of) the async runtime, because the runtime forks.
//!
//! Errors go to stderr as `berth: <message>` and, with `--log`, to that file as runc writes them
//! (text, or JSON lines `{"level","msg","time"}` with `--log-format json`, which containerd
//! reads); the exit code is then 1. `run` and `exec` in the foreground exit with the container
//! process's status (code, or 128 + signal).

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use berth_containerizer::oci::{
    CreateOptions, ExecOptions, OciError, PsFormat, Runtime, default_spec, features, proc, state,
};
use clap::{Args, Subcommand};

/// Global flags and the verb.
#[derive(Debug, Args)]
pub struct OciArgs {
    /// Directory of the containers' state.
    #[arg(long, global = true, default_value = "/run/berth-oci")]
    pub root: PathBuf,
    /// Also write errors and warnings to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of the log file.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Use systemd cgroups (not supported: berth manages cgroupfs directly).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// More logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// runc's rootless switch (accepted; berth runs as root).
    #[arg(long, global = true, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// The berth-executor binary (default: next to this executable).
    #[arg(long, global = true, env = "BERTH_EXECUTOR", hide = true)]
    pub executor_path: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: OciCommand,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Create a container from a bundle; it waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start(IdArg),
    /// Print a container's state (runtime-spec JSON).
    State(IdArg),
    /// Send a signal (default SIGTERM) to a container's process.
    Kill(KillArgs),
    /// Delete a container (stopped or created; running with --force).
    Delete(DeleteArgs),
    /// Create and start a container; in the foreground wait and exit with its status.
    Run(RunArgs),
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps(PsArgs),
    /// List containers.
    List(ListArgs),
    /// Write a default config.json.
    Spec(SpecArgs),
    /// Print what this runtime supports (runtime-spec features JSON).
    Features,
}

/// A container id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Container id.
    pub id: String,
}

/// Arguments of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory.
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container process's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the terminal's master (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (berth always uses pivot_root).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility (berth creates no session keyring).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass descriptors 3..3+N to the container.
    #[arg(long, default_value = "0")]
    pub preserve_fds: u32,
    /// Container id.
    pub id: String,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// As `create`.
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once started.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

/// Arguments of `kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Container id.
    pub id: String,
    /// Signal: name (TERM, SIGTERM) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

/// Arguments of `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill a running container first (and ignore an unknown id).
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Container id.
    pub id: String,
}

/// Arguments of `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Allocate a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Environment variable (repeatable).
    #[arg(long, short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A runtime-spec process JSON file instead of the command line.
    #[arg(long, short = 'p')]
    pub process: Option<PathBuf>,
    /// Unix socket that receives the terminal's master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Write the process's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// uid[:gid].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Supplementary group (repeatable).
    #[arg(long, short = 'g')]
    pub additional_gids: Vec<u32>,
    /// Set no_new_privs.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability (repeatable).
    #[arg(long, short = 'c')]
    pub cap: Vec<String>,
    /// Pass descriptors 3..3+N.
    #[arg(long, default_value = "0")]
    pub preserve_fds: u32,
    /// Container id.
    pub id: String,
    /// The command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Arguments of `ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Container id.
    pub id: String,
    /// Arguments for ps(1) (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Ids only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Arguments of `spec`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
}

/// Where errors and warnings are written besides stderr.
struct Log {
    file: Option<std::fs::File>,
    json: bool,
}

impl Log {
    fn write(&mut self, level: &str, msg: &str) {
        let Some(f) = &mut self.file else { return };
        let time = state::rfc3339(SystemTime::now());
        let line = if self.json {
            serde_json::json!({ "level": level, "msg": msg, "time": time }).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        let _ = writeln!(f, "{line}");
    }
}

fn init_tracing(debug: bool) {
    let level = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // --debug: time since start, to see where a command spends it.
    let _ = if debug {
        builder
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .try_init()
    } else {
        builder.without_time().try_init()
    };
}

/// Runs `berth oci ...`; returns the process exit code.
pub fn main(args: OciArgs) -> i32 {
    let mut log = Log {
        file: args.log.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        }),
        json: args.log_format == "json",
    };
    init_tracing(args.debug);
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            let msg = e.to_string();
            eprintln!("berth: {msg}");
            log.write("error", &msg);
            1
        }
    }
}

fn executor(args: &OciArgs) -> Result<PathBuf, OciError> {
    if let Some(p) = &args.executor_path {
        return Ok(p.clone());
    }
    let exe =
        std::env::current_exe().map_err(|e| OciError::Usage(format!("locating berth: {e}")))?;
    Ok(exe
        .parent()
        .map(|d| d.join("berth-executor"))
        .unwrap_or_else(|| PathBuf::from("berth-executor")))
}

fn create_options(a: &CreateArgs) -> CreateOptions {
    if a.no_pivot {
        tracing::warn!("--no-pivot ignored: berth always uses pivot_root");
    }
    CreateOptions {
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
    }
}

fn parse_user(text: &str) -> Result<(u32, Option<u32>), OciError> {
    let bad = || OciError::Usage(format!("--user {text:?}: expected uid[:gid] (numbers)"));
    let (u, g) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g.parse().map_err(|_| bad())?)),
        None => (text, None),
    };
    Ok((u.parse().map_err(|_| bad())?, g))
}

fn dispatch(args: OciArgs) -> Result<i32, OciError> {
    if args.systemd_cgroup {
        return Err(OciError::Usage(
            "--systemd-cgroup is not supported: berth manages cgroupfs directly (give \
             linux.cgroupsPath as a path)"
                .into(),
        ));
    }
    let rt = Runtime::new(args.root.clone(), executor(&args)?);
    match args.command {
        OciCommand::Create(a) => {
            rt.create(&a.id, &create_options(&a))?;
            Ok(0)
        }
        OciCommand::Start(a) => rt.start(&a.id).map(|()| 0),
        OciCommand::State(a) => {
            let s = rt.state(&a.id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("state serializes")
            );
            Ok(0)
        }
        OciCommand::Kill(a) => {
            let sig = proc::parse_signal(&a.signal)
                .ok_or_else(|| OciError::Usage(format!("unknown signal {:?}", a.signal)))?;
            rt.kill(&a.id, sig, a.all).map(|()| 0)
        }
        OciCommand::Delete(a) => rt.delete(&a.id, a.force).map(|()| 0),
        OciCommand::Run(a) => rt.run(&a.create.id, &create_options(&a.create), a.detach),
        OciCommand::Exec(a) => {
            let user = a.user.as_deref().map(parse_user).transpose()?;
            rt.exec(
                &a.id,
                ExecOptions {
                    args: a.command,
                    process_file: a.process,
                    cwd: a.cwd,
                    env: a.env,
                    tty: a.tty,
                    console_socket: a.console_socket,
                    detach: a.detach,
                    pid_file: a.pid_file,
                    user,
                    additional_gids: a.additional_gids,
                    no_new_privs: a.no_new_privs,
                    caps: a.cap,
                    preserve_fds: a.preserve_fds,
                },
            )
        }
        OciCommand::Ps(a) => {
            let format = if a.format == "json" {
                PsFormat::Json
            } else {
                PsFormat::Table
            };
            print!("{}", rt.ps(&a.id, format, &a.ps_args)?);
            if format == PsFormat::Json {
                println!();
            }
            Ok(0)
        }
        OciCommand::List(a) => {
            let all = rt.list()?;
            if a.quiet {
                for (s, _) in &all {
                    println!("{}", s.id);
                }
            } else if a.format == "json" {
                let v: Vec<_> = all
                    .iter()
                    .map(|(s, owner)| {
                        let mut j = serde_json::to_value(s).expect("state serializes");
                        j["owner"] = serde_json::json!(owner.to_string());
                        j
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<24} {:<8} {:<8} {:<40} {:<31} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                );
                for (s, owner) in &all {
                    println!(
                        "{:<24} {:<8} {:<8} {:<40} {:<31} {owner}",
                        s.id,
                        s.pid.unwrap_or(0),
                        s.status.as_str(),
                        s.bundle.display(),
                        s.created.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
        OciCommand::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&features()).expect("JSON")
            );
            Ok(0)
        }
        OciCommand::Spec(a) => {
            let path = a.bundle.join("config.json");
            if path.exists() {
                return Err(OciError::Usage(format!(
                    "{} exists already",
                    path.display()
                )));
            }
            let json = serde_json::to_vec_pretty(&default_spec()).expect("spec serializes");
            std::fs::write(&path, json).map_err(|e| OciError::io("writing", &path, e))?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::path::Path;

    fn parse(args: &[&str]) -> OciArgs {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Oci(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runc_style_command_lines() {
        let a = parse(&[
            "berth",
            "oci",
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "c1",
        ]);
        assert_eq!(a.root, PathBuf::from("/r"));
        assert_eq!(a.log_format, "json");
        match a.command {
            OciCommand::Create(c) => {
                assert_eq!(c.bundle, PathBuf::from("/b"));
                assert_eq!(c.pid_file, Some(PathBuf::from("/p")));
                assert_eq!(c.id, "c1");
            }
            other => panic!("{other:?}"),
        }
        match parse(&["berth", "oci", "kill", "--all", "c1", "KILL"]).command {
            OciCommand::Kill(k) => assert!(k.all && k.signal == "KILL"),
            other => panic!("{other:?}"),
        }
        match parse(&["berth", "oci", "kill", "c1"]).command {
            OciCommand::Kill(k) => assert_eq!(k.signal, "SIGTERM"),
            other => panic!("{other:?}"),
        }
        match parse(&[
            "berth", "oci", "exec", "-e", "A=b", "c1", "sh", "-c", "echo x",
        ])
        .command
        {
            OciCommand::Exec(e) => {
                assert_eq!(e.command, ["sh", "-c", "echo x"]);
                assert_eq!(e.env, ["A=b"]);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["berth", "oci", "run", "-d", "-b", "/b", "c1"]).command {
            OciCommand::Run(r) => assert!(r.detach && r.create.bundle == Path::new("/b")),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_user("1000:100").unwrap(), (1000, Some(100)));
        assert!(parse_user("bob").is_err());
    }
}
