//! Unit tests: validation, the state machine, the loop against a fake probe on tokio's paused
//! clock, HTTP status lines, cgroup and environment helpers of `health-exec`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_proto::mesos::v1 as mesos;

use super::{
    helper::{cgroup_procs_files, merge_env},
    probes::{HttpParseError, parse_status_line},
    *,
};

fn timing(failures: u32, grace: f64) -> Timing {
    Timing {
        delay: Duration::from_secs(2),
        interval: Duration::from_secs(1),
        timeout: Some(Duration::from_secs(3)),
        consecutive_failures: failures,
        grace: Duration::from_secs_f64(grace),
    }
}

fn tcp_check(port: u32) -> mesos::HealthCheck {
    let mut check = mesos::HealthCheck {
        tcp: Some(mesos::health_check::TcpCheckInfo {
            port,
            protocol: None,
        }),
        ..Default::default()
    };
    check.set_type(mesos::health_check::Type::Tcp);
    check
}

#[test]
fn upstream_defaults_and_validation() {
    let spec = HealthSpec::from_proto(&tcp_check(80)).unwrap();
    assert_eq!(
        spec.probe,
        ProbeSpec::Tcp {
            port: 80,
            ipv6: false
        }
    );
    assert_eq!(
        spec.timing,
        Timing {
            delay: Duration::from_secs(15),
            interval: Duration::from_secs(10),
            timeout: Some(Duration::from_secs(20)),
            consecutive_failures: 3,
            grace: Duration::from_secs(10),
        }
    );
    assert!(matches!(
        HealthSpec::from_proto(&tcp_check(0)),
        Err(HealthError::Field {
            field: "tcp.port",
            ..
        })
    ));
    assert!(HealthSpec::from_proto(&tcp_check(70000)).is_err());
    let mut negative = tcp_check(80);
    negative.interval_seconds = Some(-1.0);
    let err = HealthSpec::from_proto(&negative).unwrap_err().to_string();
    assert!(err.contains("interval_seconds"), "{err}");
    let mut zero = tcp_check(80);
    zero.interval_seconds = Some(0.0);
    assert!(HealthSpec::from_proto(&zero).is_err());
    let mut unbounded = tcp_check(80);
    unbounded.timeout_seconds = Some(0.0);
    unbounded.consecutive_failures = Some(0);
    let t = HealthSpec::from_proto(&unbounded).unwrap().timing;
    assert_eq!((t.timeout, t.consecutive_failures), (None, 1));
    // Type missing: inferred from the one field set; wrong field for the type: refused.
    let mut untyped = tcp_check(80);
    untyped.r#type = None;
    assert!(HealthSpec::from_proto(&untyped).is_ok());
    let mut wrong = tcp_check(80);
    wrong.set_type(mesos::health_check::Type::Http);
    assert!(matches!(
        HealthSpec::from_proto(&wrong),
        Err(HealthError::Field { field: "http", .. })
    ));
    assert!(HealthSpec::from_proto(&mesos::HealthCheck::default()).is_err());
    let mut https = mesos::HealthCheck {
        http: Some(mesos::health_check::HttpCheckInfo {
            port: 443,
            scheme: Some("https".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    https.set_type(mesos::health_check::Type::Http);
    assert!(HealthSpec::from_proto(&https).is_err());
    https.http.as_mut().unwrap().scheme = None;
    https.http.as_mut().unwrap().path = Some("ready".into());
    assert_eq!(
        HealthSpec::from_proto(&https).unwrap().probe,
        ProbeSpec::Http {
            port: 443,
            path: "/ready".into(),
            ipv6: false
        }
    );
}

#[test]
fn command_checks_shell_and_argv() {
    let mut check = mesos::HealthCheck {
        command: Some(mesos::CommandInfo {
            value: Some("test -f /ready".into()),
            environment: Some(mesos::Environment {
                variables: vec![mesos::environment::Variable {
                    name: "A".into(),
                    value: Some("1".into()),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    check.set_type(mesos::health_check::Type::Command);
    assert_eq!(
        HealthSpec::from_proto(&check).unwrap().probe,
        ProbeSpec::Command {
            argv: vec!["/bin/sh".into(), "-c".into(), "test -f /ready".into()],
            env: vec![("A".into(), "1".into())],
        }
    );
    let command = check.command.as_mut().unwrap();
    command.shell = Some(false);
    command.value = Some("/bin/test".into());
    command.arguments = vec!["test".into(), "-f".into(), "/ready".into()];
    let ProbeSpec::Command { argv, .. } = HealthSpec::from_proto(&check).unwrap().probe else {
        panic!("not a command");
    };
    assert_eq!(argv, ["/bin/test", "-f", "/ready"]);
    check.command.as_mut().unwrap().value = None;
    assert!(HealthSpec::from_proto(&check).is_err());
}

#[test]
fn grace_period_ignores_failures_until_the_first_success() {
    let t = timing(3, 10.0);
    let mut s = HealthState::new(None);
    let fail = || Err("refused".to_string());
    assert_eq!(s.on_result(fail(), Duration::from_secs(5), &t), None);
    assert_eq!(s.consecutive_failures, 0);
    // First success: healthy reported once.
    let v = s.on_result(Ok(()), Duration::from_secs(6), &t).unwrap();
    assert!(v.healthy && !v.kill);
    assert_eq!(s.on_result(Ok(()), Duration::from_secs(7), &t), None);
    // After a success the grace period no longer applies.
    let v = s.on_result(fail(), Duration::from_secs(8), &t).unwrap();
    assert_eq!(
        (v.healthy, v.consecutive_failures, v.kill),
        (false, 1, false)
    );
    assert_eq!(v.message.as_deref(), Some("refused"));
    assert_eq!(s.on_result(fail(), Duration::from_secs(9), &t), None);
    let v = s.on_result(fail(), Duration::from_secs(10), &t).unwrap();
    assert_eq!(
        (v.healthy, v.consecutive_failures, v.kill),
        (false, 3, true)
    );
}

#[test]
fn failures_past_the_grace_period_count_and_a_success_resets() {
    let t = timing(2, 1.0);
    let mut s = HealthState::new(None);
    let v = s
        .on_result(Err("x".into()), Duration::from_secs(2), &t)
        .unwrap();
    assert_eq!((v.healthy, v.consecutive_failures), (false, 1));
    assert!(
        s.on_result(Ok(()), Duration::from_secs(3), &t)
            .unwrap()
            .healthy
    );
    assert_eq!(s.consecutive_failures, 0);
    assert!(
        !s.on_result(Err("x".into()), Duration::from_secs(4), &t)
            .unwrap()
            .kill
    );
    assert!(
        s.on_result(Err("x".into()), Duration::from_secs(5), &t)
            .unwrap()
            .kill
    );
    // Zero grace: the first failure counts at once; a recovered healthy task reports nothing
    // new on its first success.
    let mut s = HealthState::new(Some(true));
    assert_eq!(s.on_result(Ok(()), Duration::ZERO, &timing(3, 0.0)), None);
    let mut s = HealthState::new(None);
    assert!(
        s.on_result(Err("x".into()), Duration::ZERO, &timing(3, 0.0))
            .is_some()
    );
}

/// A probe answering from a script; `None` hangs (until the checker's timeout).
struct FakeProbe {
    script: Mutex<VecDeque<Option<bool>>>,
    calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

impl Probe for FakeProbe {
    async fn check(&self) -> Result<(), String> {
        self.calls.lock().unwrap().push(tokio::time::Instant::now());
        let next = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Some(true));
        match next {
            Some(true) => Ok(()),
            Some(false) => Err("down".into()),
            None => std::future::pending().await,
        }
    }
}

#[derive(Default, Clone)]
struct Recorder {
    reports: Arc<Mutex<Vec<Verdict>>>,
    checks: Arc<Mutex<Vec<Result<(), String>>>>,
    stop_after_checks: usize,
}

impl HealthSink for Recorder {
    fn running(&self) -> bool {
        self.checks.lock().unwrap().len() < self.stop_after_checks
    }
    fn checked(&self, result: &Result<(), String>, _state: &HealthState) {
        self.checks.lock().unwrap().push(result.clone());
    }
    fn report(&self, verdict: &Verdict) {
        self.reports.lock().unwrap().push(verdict.clone());
    }
}

#[tokio::test(start_paused = true)]
async fn the_loop_waits_the_delay_times_out_and_kills() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let probe = FakeProbe {
        script: Mutex::new(VecDeque::from([Some(true), Some(false), None, Some(false)])),
        calls: calls.clone(),
    };
    let sink = Recorder {
        stop_after_checks: 100,
        ..Default::default()
    };
    let begun = tokio::time::Instant::now();
    run_checker(timing(3, 0.0), probe, sink.clone(), Resume::default()).await;
    let calls = calls.lock().unwrap().clone();
    let at: Vec<u64> = calls.iter().map(|c| (*c - begun).as_secs()).collect();
    // Delay 2 s; interval 1 s after each probe; the hanging probe is abandoned after its 3 s
    // timeout and the slack.
    assert_eq!(at, [2, 3, 4, 9]);
    let checks = sink.checks.lock().unwrap().clone();
    assert_eq!(checks[2], Err("timed out after 3s".into()));
    let reports = sink.reports.lock().unwrap().clone();
    let summary: Vec<(bool, u32, bool)> = reports
        .iter()
        .map(|v| (v.healthy, v.consecutive_failures, v.kill))
        .collect();
    assert_eq!(
        summary,
        [(true, 0, false), (false, 1, false), (false, 3, true)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_loop_ends_with_the_task_and_resumes_without_the_delay() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let probe = FakeProbe {
        script: Mutex::new(VecDeque::new()),
        calls: calls.clone(),
    };
    let sink = Recorder {
        stop_after_checks: 2,
        ..Default::default()
    };
    let begun = tokio::time::Instant::now();
    let resume = Resume {
        since_running: Duration::from_secs(60),
        known: Some(true),
    };
    run_checker(timing(3, 10.0), probe, sink.clone(), resume).await;
    let at: Vec<u64> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| (*c - begun).as_secs())
        .collect();
    assert_eq!(
        at,
        [0, 1],
        "no delay after a restart; stops when the task ends"
    );
    assert!(
        sink.reports.lock().unwrap().is_empty(),
        "already known healthy"
    );
}

#[test]
fn http_status_lines() {
    assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
    assert_eq!(
        parse_status_line(b"HTTP/1.0 302 Found\r\nLocation: /"),
        Ok(Some(302))
    );
    assert_eq!(parse_status_line(b"HTTP/1.1 503\n"), Ok(Some(503)));
    assert_eq!(parse_status_line(b"HTTP/1.1 20"), Ok(None));
    assert_eq!(parse_status_line(b""), Ok(None));
    assert!(matches!(
        parse_status_line(b"SSH-2.0-OpenSSH\r\n"),
        Err(HttpParseError::BadStatusLine(_))
    ));
    assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n").is_err());
    assert!(parse_status_line(b"HTTP/1.1 099 x\r\n").is_err());
    assert!(parse_status_line(b"HTTP/2 200\r\n").is_err());
}

#[test]
fn helper_environment_and_cgroups() {
    let env = merge_env(
        b"PATH=/bin\0HOME=/root\0MESOS_SANDBOX=/mnt/mesos/sandbox\0\0",
        &[("HOME".into(), "/tmp".into()), ("A".into(), "b=c".into())],
    );
    assert_eq!(
        env,
        [
            ("PATH".into(), "/bin".into()),
            ("HOME".into(), "/tmp".into()),
            ("MESOS_SANDBOX".into(), "/mnt/mesos/sandbox".into()),
            ("A".into(), "b=c".into()),
        ]
    );
    // Hybrid v1: co-mounted hierarchies, a named one, and `unified`.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in [
        "cpu,cpuacct/a/c1",
        "memory/a/c1",
        "systemd/sys.slice",
        "unified/sys.slice",
        "pids",
    ] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
        std::fs::write(r.join(dir).join("cgroup.procs"), "").unwrap();
    }
    let text = "12:pids:/\n5:cpu,cpuacct:/a/c1\n4:memory:/a/c1\n3:blkio:/a/c1\n1:name=systemd:/sys.slice\n0::/sys.slice\n9:freezer:/../x\n";
    let files = cgroup_procs_files(r, text);
    assert_eq!(
        files,
        [
            r.join("cpu,cpuacct/a/c1/cgroup.procs"),
            r.join("memory/a/c1/cgroup.procs"),
            r.join("systemd/sys.slice/cgroup.procs"),
            r.join("unified/sys.slice/cgroup.procs"),
        ]
    );
    // Pure v2.
    let v2 = tempfile::tempdir().unwrap();
    std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory").unwrap();
    std::fs::create_dir_all(v2.path().join("x/c1")).unwrap();
    std::fs::write(v2.path().join("x/c1/cgroup.procs"), "").unwrap();
    assert_eq!(
        cgroup_procs_files(v2.path(), "0::/x/c1\n"),
        [v2.path().join("x/c1/cgroup.procs")]
    );
}
