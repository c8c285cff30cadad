//! Task health checks, as the Mesos command executor runs them (`TaskInfo.health_check`).
//!
//! # Model
//! A task with a health check gets one checker (a tokio task) once it is `TASK_RUNNING`. The
//! checker waits `delay_seconds`, then probes every `interval_seconds` (counted from the end of
//! the previous probe, as upstream), each probe bounded by `timeout_seconds` (0: no bound; a
//! timed-out probe is a failure). [`HealthState`] is the pure state machine:
//! - failures while the task has never been healthy and is younger than
//!   `grace_period_seconds` (counted from `TASK_RUNNING`, `delay_seconds` included) are ignored;
//! - a success reports `healthy: true` when it is the first one or ends a run of failures;
//! - a counted failure reports `healthy: false` when it starts a run of failures, and again with
//!   the verdict to kill once `consecutive_failures` failures in a row are reached.
//!
//! Reporting policy (a documented difference from upstream, whose executors send a
//! `TASK_RUNNING` update for every failure after the grace period): berth sends one
//! `TASK_RUNNING` update (reason `REASON_TASK_HEALTH_CHECK_STATUS_UPDATED`, `healthy` set) per
//! change of health, and the kill, so a flapping check does not flood the status update stream
//! (one update in flight per task, each checkpointed). The count of failures is visible in
//! `berth inspect` (`health.consecutive_failures`). A newer health update replaces
//! unacknowledged health updates in the task's stream
//! ([`crate::status_updates::StatusUpdateManager::enqueue_superseding`]), so a framework that
//! never acknowledges (a detached `berth run`) does not hold the master's view of health back.
//!
//! # Probes ([`probes`])
//! - TCP: a connection to `127.0.0.1:port` in the task's network namespace: the socket is made
//!   by a short-lived thread that `setns`es into `/proc/<pid>/ns/net` (a namespace is per
//!   thread), then connected on the runtime. Host-network tasks share the host's namespace.
//! - HTTP: a GET of `path` over such a socket; status 200–399 is healthy (upstream's default).
//! - COMMAND: the hidden `berth health-exec` helper ([`helper`]), a single-threaded re-exec of
//!   the berth binary, starts the command inside the container (its namespaces and cgroups, the
//!   environment of the container's init plus the check's own); exit 0 is healthy.
//!
//! # Seams
//! [`Probe`] and [`HealthSink`] let the state machine and the loop ([`run_checker`]) run in
//! unit tests against a fake probe and tokio's paused clock.

pub mod helper;
pub mod probes;
#[cfg(test)]
mod tests;

use std::{future::Future, time::Duration};

use berth_proto::mesos::v1 as mesos;
use serde::{Deserialize, Serialize};
use tracing::debug;

/// Why a `HealthCheck` cannot be run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HealthError {
    /// Neither `type` nor exactly one of `command`, `http`, `tcp` is set.
    #[error("health_check: {0}")]
    Type(String),
    /// The field for the type is missing or incomplete.
    #[error("health_check.{field}: {reason}")]
    Field {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn field_error(field: &'static str, reason: impl Into<String>) -> HealthError {
    HealthError::Field {
        field,
        reason: reason.into(),
    }
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    /// A TCP connection to the loopback address.
    Tcp {
        /// Port.
        port: u16,
        /// Probe `::1` instead of `127.0.0.1`.
        ipv6: bool,
    },
    /// An HTTP GET on the loopback address.
    Http {
        /// Port.
        port: u16,
        /// Request path (starts with `/`).
        path: String,
        /// Probe `::1` instead of `127.0.0.1`.
        ipv6: bool,
    },
    /// A command run in the container.
    Command {
        /// argv (`/bin/sh -c VALUE` for shell commands).
        argv: Vec<String>,
        /// Variables of the check, on top of the container's environment.
        env: Vec<(String, String)>,
    },
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    /// What is probed.
    pub probe: ProbeSpec,
    /// Timing and the kill threshold.
    pub timing: Timing,
}

/// When a checker probes, and when it gives up on a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Wait before the first probe (from `TASK_RUNNING`).
    pub delay: Duration,
    /// Wait between the end of a probe and the next one.
    pub interval: Duration,
    /// Bound of one probe; `None`: unbounded.
    pub timeout: Option<Duration>,
    /// Failures in a row that kill the task (at least 1).
    pub consecutive_failures: u32,
    /// Failures before the first success and within this time of `TASK_RUNNING` are ignored.
    pub grace: Duration,
}

fn seconds(field: &'static str, value: f64) -> Result<Duration, HealthError> {
    if !value.is_finite() || value < 0.0 {
        return Err(field_error(
            field,
            format!("{value} is not a non-negative number of seconds"),
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|e| field_error(field, e.to_string()))
}

fn port(field: &'static str, value: u32) -> Result<u16, HealthError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| field_error(field, format!("{value} is not a port (1-65535)")))
}

impl HealthSpec {
    /// Validates a Mesos `HealthCheck` (upstream defaults apply to unset fields).
    pub fn from_proto(check: &mesos::HealthCheck) -> Result<HealthSpec, HealthError> {
        use mesos::health_check::Type;
        let kind = match check.r#type() {
            Type::Unknown => match (&check.command, &check.http, &check.tcp) {
                (Some(_), None, None) => Type::Command,
                (None, Some(_), None) => Type::Http,
                (None, None, Some(_)) => Type::Tcp,
                _ => {
                    return Err(HealthError::Type(
                        "no `type`, and not exactly one of command, http, tcp is set".into(),
                    ));
                }
            },
            kind => kind,
        };
        let ipv6_of = |p: Option<i32>| p == Some(mesos::network_info::Protocol::IPv6 as i32);
        let probe = match kind {
            Type::Tcp => {
                let tcp = check
                    .tcp
                    .as_ref()
                    .ok_or_else(|| field_error("tcp", "type TCP needs `tcp`"))?;
                ProbeSpec::Tcp {
                    port: port("tcp.port", tcp.port)?,
                    ipv6: ipv6_of(tcp.protocol),
                }
            }
            Type::Http => {
                let http = check
                    .http
                    .as_ref()
                    .ok_or_else(|| field_error("http", "type HTTP needs `http`"))?;
                match http.scheme.as_deref() {
                    None | Some("http") => {}
                    Some(other) => {
                        return Err(field_error(
                            "http.scheme",
                            format!("{other:?} is not supported (berth probes plain http)"),
                        ));
                    }
                }
                let path = http.path.clone().unwrap_or_else(|| "/".into());
                if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
                    return Err(field_error(
                        "http.path",
                        format!("{path:?} holds spaces or control characters"),
                    ));
                }
                ProbeSpec::Http {
                    port: port("http.port", http.port)?,
                    path: if path.starts_with('/') {
                        path
                    } else {
                        format!("/{path}")
                    },
                    ipv6: ipv6_of(http.protocol),
                }
            }
            Type::Command => {
                let command = check
                    .command
                    .as_ref()
                    .ok_or_else(|| field_error("command", "type COMMAND needs `command`"))?;
                command_probe(command)?
            }
            Type::Unknown => unreachable!("resolved above"),
        };
        let interval = seconds("interval_seconds", check.interval_seconds())?;
        if interval.is_zero() {
            return Err(field_error("interval_seconds", "must be above 0"));
        }
        let timeout = seconds("timeout_seconds", check.timeout_seconds())?;
        Ok(HealthSpec {
            probe,
            timing: Timing {
                delay: seconds("delay_seconds", check.delay_seconds())?,
                interval,
                timeout: (!timeout.is_zero()).then_some(timeout),
                // Upstream kills when failures >= consecutive_failures: 0 acts as 1.
                consecutive_failures: check.consecutive_failures().max(1),
                grace: seconds("grace_period_seconds", check.grace_period_seconds())?,
            },
        })
    }
}

fn command_probe(command: &mesos::CommandInfo) -> Result<ProbeSpec, HealthError> {
    let argv = if command.shell() {
        let value = command
            .value
            .clone()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| field_error("command.value", "a shell command needs a value"))?;
        vec!["/bin/sh".into(), "-c".into(), value]
    } else {
        let program = command
            .value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| field_error("command.value", "the executable is missing"))?;
        if command.arguments.is_empty() {
            vec![program]
        } else {
            let mut argv = command.arguments.clone();
            // Upstream execs `value` with `arguments` as argv (argv[0] included).
            argv[0] = program;
            argv
        }
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(field_error("command", "holds a NUL byte"));
    }
    let env = command
        .environment
        .as_ref()
        .map(|e| {
            e.variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Ok(ProbeSpec::Command { argv, env })
}

/// What a probe answered, folded into a verdict by [`HealthState::on_result`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The health to report.
    pub healthy: bool,
    /// Failures in a row so far (0 when healthy).
    pub consecutive_failures: u32,
    /// The task must be killed.
    pub kill: bool,
    /// Why the last probe failed.
    pub message: Option<String>,
}

/// The health checker's state machine (pure; time comes in as "since TASK_RUNNING").
#[derive(Debug, Clone, PartialEq)]
pub struct HealthState {
    /// No success yet (the grace period applies only then).
    pub initializing: bool,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

impl HealthState {
    /// A checker's state: `known` is the health reported before (an agent restart).
    pub fn new(known: Option<bool>) -> HealthState {
        HealthState {
            initializing: known.is_none(),
            consecutive_failures: 0,
        }
    }

    /// Folds one probe result in; `Some` when an update is due (see the module docs).
    pub fn on_result(
        &mut self,
        result: Result<(), String>,
        since_running: Duration,
        timing: &Timing,
    ) -> Option<Verdict> {
        match result {
            Ok(()) => {
                let report = self.initializing || self.consecutive_failures > 0;
                self.initializing = false;
                self.consecutive_failures = 0;
                report.then_some(Verdict {
                    healthy: true,
                    consecutive_failures: 0,
                    kill: false,
                    message: None,
                })
            }
            Err(message) => {
                if self.initializing && !timing.grace.is_zero() && since_running <= timing.grace {
                    debug!(%message, "health check failure ignored: grace period");
                    return None;
                }
                self.consecutive_failures += 1;
                let kill = self.consecutive_failures >= timing.consecutive_failures;
                (self.consecutive_failures == 1 || kill).then_some(Verdict {
                    healthy: false,
                    consecutive_failures: self.consecutive_failures,
                    kill,
                    message: Some(message),
                })
            }
        }
    }
}

/// How long past its timeout the loop waits for a probe before abandoning it.
pub const PROBE_TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// One probe of a task (bounded by the check's timeout itself; see [`PROBE_TIMEOUT_SLACK`]).
pub trait Probe: Send + Sync + 'static {
    /// Probes once: `Err(why)` is a failure.
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where a checker's results go (the agent; a recorder in tests).
pub trait HealthSink: Send + Sync + 'static {
    /// Whether the task still runs (the checker ends when it does not).
    fn running(&self) -> bool;
    /// Every probe's outcome, with the state after it (for `berth inspect`).
    fn checked(&self, result: &Result<(), String>, state: &HealthState);
    /// A change of health to report; with `kill`, the task is to be killed.
    fn report(&self, verdict: &Verdict);
}

/// Where a checker starts: a new task, or one recovered after an agent restart.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume {
    /// Time since the task reached `TASK_RUNNING`.
    pub since_running: Duration,
    /// The health last reported.
    pub known: Option<bool>,
}

/// The checker loop: delay, then probe, fold, report, sleep `interval`, until the task ends
/// or is killed by the check.
pub async fn run_checker<P: Probe, S: HealthSink>(
    timing: Timing,
    probe: P,
    sink: S,
    resume: Resume,
) {
    let started = tokio::time::Instant::now();
    let since_running = || resume.since_running + started.elapsed();
    let mut state = HealthState::new(resume.known);
    let delay = timing.delay.saturating_sub(resume.since_running);
    tokio::time::sleep(delay).await;
    loop {
        if !sink.running() {
            return;
        }
        let result = match timing.timeout {
            // Real probes bound themselves (a COMMAND's helper kills its process group, which
            // dropping it from here would not); this bound is the backstop.
            Some(limit) => {
                match tokio::time::timeout(limit + PROBE_TIMEOUT_SLACK, probe.check()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("timed out after {}s", limit.as_secs_f64())),
                }
            }
            None => probe.check().await,
        };
        if !sink.running() {
            return;
        }
        let verdict = state.on_result(result.clone(), since_running(), &timing);
        sink.checked(&result, &state);
        if let Some(verdict) = verdict {
            sink.report(&verdict);
            if verdict.kill {
                return;
            }
        }
        tokio::time::sleep(timing.interval).await;
    }
}

/// The health of a task as the agent keeps it (checkpointed with the task record).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskHealth {
    /// Last reported health; `None` until the first verdict.
    pub healthy: Option<bool>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Unix time of the last probe.
    pub last_check: Option<f64>,
    /// Why the last probe failed (`None` after a success).
    pub last_error: Option<String>,
    /// The check killed the task.
    #[serde(default)]
    pub killed: bool,
}

impl TaskHealth {
    /// The word `berth ps` shows: healthy, unhealthy, or starting (no verdict yet).
    pub fn label(&self) -> &'static str {
        match self.healthy {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "starting",
        }
    }
}
