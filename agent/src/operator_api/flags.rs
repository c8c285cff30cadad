//! The agent's flags as Mesos reports them (`GET_FLAGS`, the `flags` object of `/state`): one
//! `name -> value` string per flag, with the flag's snake_case name (`work_dir`), every flag
//! present (defaults included), and booleans as `true`/`false`.
//!
//! The values are read back from the command line the agent was started with, through the same
//! clap definition that parsed it, so every flag `berth agent` has (now or later) is listed
//! without a hand-kept table.

use std::ffi::OsString;

use clap::CommandFactory;

use crate::cli::Cli;

/// The flags of `berth agent` in `argv` (the whole command line, `argv[0]` included), sorted by
/// name. Empty when `argv` is not a valid `berth agent` command line.
pub fn from_command_line<I, T>(argv: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = Cli::command();
    command.build();
    let Ok(matches) = command.clone().try_get_matches_from(argv) else {
        return Vec::new();
    };
    let (Some(("agent", agent_matches)), Some(agent_command)) =
        (matches.subcommand(), command.find_subcommand("agent"))
    else {
        return Vec::new();
    };
    let mut flags: Vec<(String, String)> = agent_command
        .get_arguments()
        // `--agent` is the CLI client's global flag (the URL it talks to), not the daemon's.
        .filter(|arg| !arg.is_global_set())
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            let values = agent_matches.get_raw(id)?;
            let value = values
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            Some((id.to_string(), value))
        })
        .collect();
    flags.sort();
    flags
}

/// The agent's libprocess-style pid (`slave(1)@IP:PORT`) and port, from its flags: the
/// `advertise_ip`/`advertise_port` flags when present, else the `listen` address.
pub fn agent_pid(flags: &[(String, String)]) -> (String, u16) {
    let get = |name: &str| {
        flags
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let listen: Option<std::net::SocketAddr> = get("listen").and_then(|l| l.parse().ok());
    let ip = get("advertise_ip")
        .map(str::to_string)
        .or_else(|| listen.map(|l| l.ip().to_string()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = get("advertise_port")
        .and_then(|p| p.parse().ok())
        .or_else(|| listen.map(|l| l.port()))
        .unwrap_or(5051);
    (format!("slave(1)@{ip}:{port}"), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(flags: &'a [(String, String)], name: &str) -> Option<&'a str> {
        flags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn flags_of_an_agent_command_line() {
        let flags = from_command_line([
            "berth",
            "--agent",
            "http://x:1",
            "agent",
            "--dev",
            "--work-dir",
            "/srv/berth",
            "--resources",
            "cpus:2;mem:512",
        ]);
        assert_eq!(value(&flags, "dev"), Some("true"));
        assert_eq!(value(&flags, "work_dir"), Some("/srv/berth"));
        assert_eq!(value(&flags, "resources"), Some("cpus:2;mem:512"));
        // Defaults are listed too.
        assert_eq!(value(&flags, "listen"), Some("127.0.0.1:5051"));
        assert_eq!(value(&flags, "runtime_dir"), Some("/run/berth"));
        // Not the client's flag, nor clap's own.
        assert_eq!(value(&flags, "agent"), None);
        assert_eq!(value(&flags, "help"), None);
        let mut sorted = flags.clone();
        sorted.sort();
        assert_eq!(flags, sorted);
    }

    #[test]
    fn other_command_lines_have_no_agent_flags() {
        assert!(from_command_line(["berth", "ps"]).is_empty());
        assert!(from_command_line(["berth", "agent", "--no-such-flag"]).is_empty());
    }

    #[test]
    fn pid_from_listen_or_advertised_address() {
        let flags = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            agent_pid(&flags(&[("listen", "10.0.0.5:5151")])),
            ("slave(1)@10.0.0.5:5151".to_string(), 5151)
        );
        assert_eq!(
            agent_pid(&flags(&[
                ("listen", "0.0.0.0:5051"),
                ("advertise_ip", "192.0.2.7"),
                ("advertise_port", "15051"),
            ])),
            ("slave(1)@192.0.2.7:15051".to_string(), 15051)
        );
        assert_eq!(
            agent_pid(&[]),
            ("slave(1)@127.0.0.1:5051".to_string(), 5051)
        );
    }
}
