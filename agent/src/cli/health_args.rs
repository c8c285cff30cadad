//! The health check flags of `berth run` (Docker's names) and their Mesos `HealthCheck`.

use berth_proto::mesos::v1 as mesos;
use clap::{ArgGroup, Args};

/// `--health-*` flags of `berth run`.
#[derive(Debug, Args, Clone, Default)]
#[command(group(ArgGroup::new("health_check").multiple(false)))]
pub struct HealthArgs {
    /// Health check: a shell command run inside the container (`/bin/sh -c CMD`); exit 0 is
    /// healthy.
    #[arg(long, value_name = "CMD", group = "health_check")]
    pub health_cmd: Option<String>,
    /// Health check: a TCP connection to 127.0.0.1:PORT in the task's network.
    #[arg(long, value_name = "PORT", group = "health_check",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub health_tcp: Option<u16>,
    /// Health check: an HTTP GET of 127.0.0.1:PORT/PATH in the task's network; status 200-399
    /// is healthy.
    #[arg(long, value_name = "PORT[/PATH]", group = "health_check", value_parser = parse_http)]
    pub health_http: Option<(u16, String)>,
    /// Time between checks (seconds, or with a unit: 500ms, 2s, 1m) [Mesos default: 10s].
    #[arg(long, value_name = "DURATION", requires = "health_check", value_parser = parse_duration)]
    pub health_interval: Option<f64>,
    /// Time one check may take; 0: unbounded [Mesos default: 20s].
    #[arg(long, value_name = "DURATION", requires = "health_check", value_parser = parse_duration)]
    pub health_timeout: Option<f64>,
    /// Failed checks in a row that kill the task [Mesos default: 3].
    #[arg(long, value_name = "N", requires = "health_check",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub health_retries: Option<u32>,
    /// Time after the start during which failures are ignored until a first success
    /// (Mesos grace period) [Mesos default: 10s].
    #[arg(long, value_name = "DURATION", requires = "health_check", value_parser = parse_duration)]
    pub health_start_period: Option<f64>,
}

impl HealthArgs {
    /// The Mesos `HealthCheck`, or `None` without a check flag. The first check runs right
    /// away (`delay_seconds` 0, as Docker's; Mesos's default is 15 s).
    pub fn to_proto(&self) -> Option<mesos::HealthCheck> {
        use mesos::health_check::{HttpCheckInfo, TcpCheckInfo, Type};
        let mut check = mesos::HealthCheck {
            delay_seconds: Some(0.0),
            interval_seconds: self.health_interval,
            timeout_seconds: self.health_timeout,
            consecutive_failures: self.health_retries,
            grace_period_seconds: self.health_start_period,
            ..Default::default()
        };
        if let Some(cmd) = &self.health_cmd {
            check.set_type(Type::Command);
            check.command = Some(mesos::CommandInfo {
                value: Some(cmd.clone()),
                shell: Some(true),
                ..Default::default()
            });
        } else if let Some(port) = self.health_tcp {
            check.set_type(Type::Tcp);
            check.tcp = Some(TcpCheckInfo {
                port: port.into(),
                protocol: None,
            });
        } else if let Some((port, path)) = &self.health_http {
            check.set_type(Type::Http);
            check.http = Some(HttpCheckInfo {
                port: (*port).into(),
                path: Some(path.clone()),
                ..Default::default()
            });
        } else {
            return None;
        }
        Some(check)
    }
}

/// `PORT[/PATH]` of `--health-http`.
pub fn parse_http(text: &str) -> Result<(u16, String), String> {
    let (port, path) = match text.find('/') {
        Some(at) => (&text[..at], text[at..].to_string()),
        None => (text, "/".to_string()),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?}: expected PORT[/PATH] with a port 1-65535"))?;
    Ok((port, path))
}

/// A duration in seconds: `1.5`, `1500ms`, `2s`, `1m`.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (1.5, 500ms, 2s, 1m)"))?;
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} must not be negative"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{HealthSpec, ProbeSpec};

    #[test]
    fn flags_parse_and_map_to_a_health_check() {
        assert_eq!(parse_http("8080").unwrap(), (8080, "/".into()));
        assert_eq!(
            parse_http("80/healthz?x=1").unwrap(),
            (80, "/healthz?x=1".into())
        );
        assert!(parse_http("0/x").is_err());
        assert!(parse_http("/x").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), 0.5);
        assert_eq!(parse_duration("2s").unwrap(), 2.0);
        assert_eq!(parse_duration("1m").unwrap(), 60.0);
        assert_eq!(parse_duration("1.5").unwrap(), 1.5);
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        let args = HealthArgs {
            health_http: Some((8080, "/ok".into())),
            health_interval: Some(1.0),
            health_retries: Some(2),
            ..Default::default()
        };
        let spec = HealthSpec::from_proto(&args.to_proto().unwrap()).unwrap();
        assert_eq!(
            spec.probe,
            ProbeSpec::Http {
                port: 8080,
                path: "/ok".into(),
                ipv6: false
            }
        );
        assert_eq!(spec.timing.consecutive_failures, 2);
        assert!(spec.timing.delay.is_zero());
        assert!(HealthArgs::default().to_proto().is_none());
    }
}
