//! The `berth` binary: parses the command line and hands over to the library.

use berth_agent::cli::{Cli, Command, client::AgentClient, image, ops, run};
use clap::Parser;

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    // `berth-oci ARGS` (a symlink) is `berth oci ARGS`, for tools that take a runtime binary.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        == Some(std::ffi::OsStr::new("berth-oci"))
    {
        argv.insert(1, "oci".into());
    }
    let cli = Cli::parse_from(argv);
    // The OCI runtime forks: it runs before any thread exists, without the async runtime.
    if let Command::Oci(args) = cli.command {
        std::process::exit(berth_agent::cli::oci::main(*args));
    }
    // So does the health check helper (it forks into a container).
    if let Command::HealthExec(args) = &cli.command {
        std::process::exit(berth_agent::health::helper::main(
            args.pid,
            args.timeout,
            &args.command,
        ));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("berth: cannot start the async runtime: {err}");
            std::process::exit(run::EXIT_BERTH_ERROR);
        }
    };
    // `berth run` exits with the task's code, so its own failures use 125 (as `docker run`).
    let failure_code = match cli.command {
        Command::Run(_) => run::EXIT_BERTH_ERROR,
        _ => 1,
    };
    let code = runtime.block_on(async move {
        let client = AgentClient::new(&cli.agent);
        let result = match cli.command {
            Command::Agent(flags) => {
                init_logging(matches!(
                    flags.log_format,
                    berth_agent::daemon::LogFormat::Json
                ));
                berth_agent::daemon::run(*flags).await.map(|()| 0)
            }
            Command::Master(flags) => {
                init_logging(flags.log_json);
                berth_agent::master::server::run_master_command(flags)
                    .await
                    .map(|()| 0)
            }
            Command::Run(args) => run::run(&cli.agent, *args).await,
            Command::Ps(args) => ops::ps(&client, args).await,
            Command::Logs(args) => ops::logs(&client, args).await,
            Command::Kill(args) => ops::kill(&client, args).await,
            Command::Inspect(args) => ops::inspect(&client, args).await,
            Command::Update(args) => ops::update(&client, args).await,
            Command::Net(args) => berth_agent::cli::net::run(&client, args).await,
            Command::Image(args) => image::run(args).await,
            Command::Oci(_) | Command::HealthExec(_) => {
                unreachable!("handled before the runtime starts")
            }
        };
        match result {
            Ok(code) => code,
            Err(err) => {
                eprintln!("berth: {}", one_line(&err));
                failure_code
            }
        }
    });
    std::process::exit(code);
}

fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}
