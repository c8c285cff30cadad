//! Input validation, the HTTP endpoints (/health, /state, /metrics) and the scheduler API's
//! error handling. Host-only (no `cgroup_` prefix).

use berth_tests::{Agent, berth_no_agent};

/// berth's own errors: exit 125 with exactly one `berth: <reason>` line; clap usage errors: exit 2.
#[track_caller]
fn assert_rejected(o: &berth_tests::Output) {
    assert_ne!(o.code(), 0, "should have been rejected:\n{o}");
    let err = o.stderr.trim();
    assert!(!err.is_empty(), "no error message on stderr:\n{o}");
    match o.code() {
        2 => assert!(err.starts_with("error:"), "usage error not from clap?\n{o}"),
        125 => {
            assert_eq!(err.lines().count(), 1, "error must be one line:\n{o}");
            assert!(
                err.starts_with("berth: "),
                "error must start with 'berth: ':\n{o}"
            );
        }
        c => {
            panic!("unexpected exit code {c} (want 2 for usage errors, 125 for berth errors):\n{o}")
        }
    }
    assert!(
        o.stdout.trim().is_empty(),
        "rejected command printed on stdout:\n{o}"
    );
}

#[test]
fn bad_cli_input_is_rejected_and_nothing_launched() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let cases: &[&[&str]] = &[
        &["run", "--no-such-flag", "--", "true"],
        &["run", "--mem", "-5", "--", "true"],
        &["run", "--mem", "lots", "--", "true"],
        &["run", "--cpus", "0", "--", "true"],
        &["run", "--cpus", "-1", "--", "true"],
        &["run", "--cpus", "1000", "--", "true"],
        &["run", "--network", "bogus", "--", "true"],
        &["run"],
        &["no-such-subcommand"],
    ];
    for args in cases {
        let o = agent.berth(args);
        assert_rejected(&o);
    }
    let all = agent.ps_json(true);
    assert!(all.is_empty(), "rejected runs launched tasks: {all:?}");
    assert!(agent.stray_processes().is_empty());
    assert_eq!(
        agent.get("/health").status,
        200,
        "agent unhealthy after bad input"
    );
}

#[test]
fn cli_without_agent_fails_clearly() {
    // nothing listens on port 9 of loopback
    let o = berth_no_agent(&["--agent", "http://127.0.0.1:9", "ps"]);
    assert_ne!(o.code(), 0, "{o}");
    let err = o.stderr.trim();
    assert!(
        err.starts_with("berth: ") && err.lines().count() == 1,
        "{o}"
    );
}

#[test]
fn agent_url_from_env_var() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let mut cmd = std::process::Command::new(berth_tests::berth_bin());
    cmd.args(["ps", "--all", "--json"])
        .env("BERTH_AGENT", agent.url());
    let o = berth_tests::run_with_timeout(
        cmd,
        vec!["ps".into(), "--all".into(), "--json".into()],
        std::time::Duration::from_secs(60),
    );
    o.assert_success();
    assert!(o.json().is_array(), "{o}");
}

#[test]
fn malformed_scheduler_call_is_400_with_reason() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let r = agent.post("/api/v1/scheduler", "application/json", b"{\"type\":");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.body.trim().is_empty(), "400 without a reason: {r:?}");
    // a well-formed JSON that is not a valid call is also a 400
    let r = agent.post(
        "/api/v1/scheduler",
        "application/json",
        b"{\"type\":\"NO_SUCH_CALL\"}",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.body.trim().is_empty(), "{r:?}");
    assert_eq!(agent.get("/health").status, 200);
}

#[test]
fn http_health_state_metrics() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let h = agent.get("/health");
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.json()["status"], "ok", "{h:?}");

    agent
        .berth(&["run", "--name", "m1", "--", "true"])
        .assert_code(0);

    let s = agent.get("/state");
    assert_eq!(s.status, 200, "{s:?}");
    let st = s.json();
    assert!(st["id"].is_string(), "/state id: {st:#}");
    assert!(st["hostname"].is_string(), "/state hostname: {st:#}");
    assert!(
        st["resources"]["cpus"].as_f64().is_some_and(|c| c > 0.0),
        "/state resources: {st:#}"
    );
    assert!(
        st["resources"]["mem"].as_f64().is_some_and(|m| m > 0.0),
        "/state resources: {st:#}"
    );
    assert!(st["frameworks"].is_array(), "/state frameworks: {st:#}");
    assert!(
        st["completed_frameworks"].is_array(),
        "/state completed_frameworks: {st:#}"
    );
    // the finished task appears somewhere in /state
    assert!(
        s.body.contains("m1"),
        "/state does not mention task m1: {st:#}"
    );

    let m = agent.get("/metrics");
    assert_eq!(m.status, 200, "{m:?}");
    assert!(m.body.contains("berth_tasks"), "{}", m.body);
    let launches: f64 = m
        .body
        .lines()
        .filter(|l| l.starts_with("berth_launches_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        launches >= 1.0,
        "berth_launches_total < 1 after a run:\n{}",
        m.body
    );
    for name in [
        "berth_launch_latency_seconds_bucket",
        "berth_containers",
        "berth_resources_total",
    ] {
        assert!(m.body.contains(name), "/metrics lacks {name}:\n{}", m.body);
    }
    // every non-comment line is `name{labels} value`
    for l in m
        .body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let v = l.rsplit(' ').next().unwrap_or_default();
        assert!(
            v.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&v),
            "bad metrics line {l:?}"
        );
    }

    // the task API agrees with the CLI
    let t = agent.get("/api/berth/v1/tasks?all=1");
    assert_eq!(t.status, 200, "{t:?}");
    assert!(t.body.contains("m1"), "{t:?}");
}
