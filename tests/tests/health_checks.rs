//! Task health checks through the berth binary (issue 8): a TCP, an HTTP and a COMMAND check
//! make their tasks healthy (the TCP and HTTP servers listen on the loopback of the task's own
//! network namespace, the COMMAND check tests a file in the container's private /tmp, its
//! environment and its cgroups); a failing check is seen by a framework as `healthy: false` and
//! the task is killed after `consecutive_failures`; the checker comes back after an agent crash;
//! and a VIP's unhealthy backend leaves the load balancer and gets no new connection.
//! The `cgroup_` tests also run in the cgroup v2 microVM phase of tests/run.sh.

use std::{
    net::SocketAddrV4,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use berth_proto::{
    codec::ContentType,
    mesos::v1::{self as mesos},
};
use berth_tests::{
    Agent,
    framework::{Framework, launch, runtime, task},
    netns::greeting_of,
    require_privileges, scaled, wait_until,
};
use serde_json::Value;

/// Polls `berth ps --json` until the task's `health` is `want`.
#[track_caller]
fn wait_health(agent: &Agent, id: &str, want: &str) {
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    loop {
        let tasks = agent.ps_json(true);
        let task = tasks.iter().find(|t| t["id"] == id || t["name"] == id);
        if task.is_some_and(|t| t["health"] == want) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "task {id} is not {want}: {:#}\n--- agent stderr ---\n{}",
                agent.inspect(id)["health"],
                agent.stderr_tail(20)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn sandbox_of(agent: &Agent, id: &str) -> PathBuf {
    PathBuf::from(
        agent.inspect(id)["container"]["sandbox"]
            .as_str()
            .expect("a sandbox path"),
    )
}

#[test]
fn cgroup_health_checks_of_each_type_make_tasks_healthy() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // TCP: a server on the loopback of the task's private network namespace (`--network none`):
    // only a probe made inside that namespace reaches it.
    let tcp_server = "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',7001))\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.close()\n";
    let tcp = agent.run_detached(&[
        "--name",
        "tcp",
        "--cpus",
        "0.1",
        "--mem",
        "48M",
        "--health-tcp",
        "7001",
        "--health-start-period",
        "2m",
        "--health-interval",
        "300ms",
        "--",
        "python3",
        "-c",
        tcp_server,
    ]);
    // HTTP: GET /ok of a static server in the sandbox; /missing would be a 404.
    let http = agent.run_detached(&[
        "--name",
        "http",
        "--cpus",
        "0.1",
        "--mem",
        "48M",
        "--health-http",
        "7002/ok",
        "--health-start-period",
        "2m",
        "--health-interval",
        "300ms",
        "--",
        "sh",
        "-c",
        "echo fine > ok; exec python3 -m http.server 7002 --bind 127.0.0.1",
    ]);
    // COMMAND: a file in the container's private /tmp, a variable of the task's environment,
    // and the container's cgroups (in its cgroup namespace every path is the root, no `..`).
    let marker = format!("/tmp/berth-health-{}", std::process::id());
    assert!(!std::path::Path::new(&marker).exists());
    let check = format!(
        "test -f {marker} && test \"$MARK\" = inside && ! grep -q '\\.\\.' /proc/self/cgroup"
    );
    let cmd = agent.run_detached(&[
        "--name",
        "cmd",
        "--cpus",
        "0.1",
        "--mem",
        "48M",
        "--env",
        "MARK=inside",
        "--health-cmd",
        &check,
        "--health-interval",
        "300ms",
        "--health-start-period",
        "2m",
        "--",
        "sh",
        "-c",
        &format!("touch {marker}; exec sleep 300"),
    ]);
    for id in [&tcp, &http, &cmd] {
        wait_health(&agent, id, "healthy");
    }
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the file is the container's only"
    );
    // The update that made it healthy: TASK_RUNNING, healthy, reason HEALTH_CHECK...
    let inspect = agent.inspect(&cmd);
    assert_eq!(
        inspect["health"]["healthy"],
        Value::Bool(true),
        "{inspect:#}"
    );
    let status = berth_tests::last_status(&inspect);
    assert_eq!(status["state"], "TASK_RUNNING");
    assert_eq!(status["healthy"], Value::Bool(true));
    assert_eq!(status["reason"], "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED");
    // The table shows it too; the v0 /state and the v1 operator API carry `healthy`.
    let ps = agent.berth(&["ps"]);
    assert!(
        ps.stdout.contains("HEALTH") && ps.stdout.contains("healthy"),
        "{ps}"
    );
    let state = agent.get("/state").json().to_string();
    assert!(state.contains("\"healthy\":true"), "{state}");
    let tasks = agent.post("/api/v1", "application/json", br#"{"type":"GET_TASKS"}"#);
    assert!(
        tasks.json().to_string().contains("\"healthy\":true"),
        "{:?}",
        tasks.json()
    );
    for id in [&tcp, &http, &cmd] {
        agent.berth(&["kill", "--grace", "1", id]).assert_success();
    }
}

#[test]
fn bad_health_check_flags_are_refused_before_submitting() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    for (args, needle) in [
        (vec!["--health-tcp", "0"], "health-tcp"),
        (vec!["--health-http", "x/ok"], "PORT[/PATH]"),
        (
            vec!["--health-tcp", "80", "--health-interval=-1"],
            "negative",
        ),
        (
            vec!["--health-tcp", "80", "--health-interval", "0"],
            "interval_seconds",
        ),
        (vec!["--health-interval", "1"], "health"),
        (
            vec!["--health-tcp", "80", "--health-cmd", "true"],
            "cannot be used",
        ),
    ] {
        let mut all = vec!["run"];
        all.extend(args.iter().copied());
        all.extend(["--", "true"]);
        let out = agent.berth(&all);
        assert!(!out.success(), "{args:?} accepted: {out}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: the error does not say {needle:?}: {out}"
        );
    }
    assert!(agent.ps_json(true).is_empty(), "nothing was submitted");
}

fn health_task(
    id: &str,
    offer: &mesos::Offer,
    shell: &str,
    check: &str,
    failures: u32,
) -> mesos::TaskInfo {
    let mut info = task(id, &offer.agent_id, 0.1, 48.0, shell);
    let mut health = mesos::HealthCheck {
        delay_seconds: Some(0.0),
        interval_seconds: Some(0.3),
        timeout_seconds: Some(5.0),
        consecutive_failures: Some(failures),
        // Failures before the first success are ignored (the task may not have made its file).
        grace_period_seconds: Some(120.0),
        command: Some(mesos::CommandInfo {
            value: Some(check.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    health.set_type(mesos::health_check::Type::Command);
    info.health_check = Some(health);
    info
}

#[test]
fn cgroup_failing_health_check_reports_unhealthy_then_kills_the_task() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    runtime().block_on(async {
        let mut fw = Framework::subscribe(agent.url(), ContentType::Json, "health-fw").await;
        let offer = fw.offer().await;
        // Healthy while /tmp/ok exists, which the task removes once the test creates `stop` in
        // its sandbox; then 3 failures in a row kill it.
        let shell =
            "touch /tmp/ok; while [ ! -f stop ]; do sleep 0.1; done; rm /tmp/ok; exec sleep 300";
        fw.send(launch(
            &offer,
            vec![health_task("sick", &offer, shell, "test -f /tmp/ok", 3)],
        ))
        .await;
        fw.until_state("sick", mesos::TaskState::TaskRunning).await;
        let healthy = fw.update_of("sick").await;
        assert_eq!(
            (healthy.state(), healthy.healthy),
            (mesos::TaskState::TaskRunning, Some(true)),
            "{healthy:?}"
        );
        std::fs::write(sandbox_of(&agent, "sick").join("stop"), b"").unwrap();
        let mut seen = vec![(healthy.state(), healthy.healthy)];
        let killed = loop {
            let status = fw.update_of("sick").await;
            seen.push((status.state(), status.healthy));
            if berth_tests::framework::is_terminal(status.state()) {
                break status;
            }
            assert_eq!(status.state(), mesos::TaskState::TaskRunning);
            assert_eq!(
                status.reason(),
                mesos::task_status::Reason::TaskHealthCheckStatusUpdated
            );
        };
        use mesos::TaskState::*;
        assert_eq!(
            seen,
            [
                (TaskRunning, Some(true)),
                (TaskRunning, Some(false)),
                (TaskRunning, Some(false)),
                (TaskKilled, Some(false)),
            ],
            "updates: healthy, unhealthy (first failure), unhealthy (the third: kill), killed"
        );
        assert_eq!(
            killed.reason(),
            mesos::task_status::Reason::TaskHealthCheckStatusUpdated
        );
        let message = killed.message.unwrap_or_default();
        assert!(
            message.contains("3 consecutive failed health checks"),
            "{message}"
        );
        // An invalid check is a TASK_ERROR naming the field.
        let offer = fw.offer().await;
        let mut bad = health_task("bad", &offer, "sleep 1", "true", 3);
        bad.health_check.as_mut().unwrap().interval_seconds = Some(-1.0);
        fw.send(launch(&offer, vec![bad])).await;
        let error = fw.update_of("bad").await;
        assert_eq!(error.state(), TaskError);
        assert!(
            error
                .message
                .as_deref()
                .unwrap_or("")
                .contains("interval_seconds"),
            "{error:?}"
        );
    });
    let inspect = agent.inspect("sick");
    assert_eq!(
        inspect["health"]["killed"],
        Value::Bool(true),
        "{inspect:#}"
    );
}

#[test]
fn cgroup_health_checker_restarts_with_the_agent() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    // Healthy until the test creates `stop` in the sandbox.
    let id = agent.run_detached(&[
        "--name",
        "lasting",
        "--cpus",
        "0.1",
        "--mem",
        "48M",
        "--health-cmd",
        "test ! -f \"$MESOS_SANDBOX/stop\"",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "--",
        "sleep",
        "300",
    ]);
    wait_health(&agent, &id, "healthy");
    let sandbox = sandbox_of(&agent, &id);
    agent.crash_and_restart();
    assert_eq!(agent.task_state(&id), "TASK_RUNNING");
    std::fs::write(sandbox.join("stop"), b"").unwrap();
    let task = agent.wait_for_state(&id, &["TASK_KILLED"], Duration::from_secs(60));
    let status = berth_tests::last_status(&task);
    assert_eq!(status["healthy"], Value::Bool(false), "{task:#}");
    agent.assert_no_leftovers();
}

fn named_server(name: &str) -> String {
    berth_tests::netns::named_tcp_server(name, 80)
}

/// The backends of VIP `web` in `berth net inspect`.
fn vip_backends(agent: &Agent) -> Vec<String> {
    let view = agent.berth(&["net", "inspect"]).json();
    view["load_balancer"]["vips"]
        .as_object()
        .and_then(|vips| vips.iter().find(|(k, _)| k.contains("web.l4lb")))
        .and_then(|(_, b)| b.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b.as_str().map(String::from))
        .collect()
}

#[test]
fn cgroup_unhealthy_vip_backend_leaves_the_load_balancer() {
    if !require_privileges() {
        return;
    }
    berth_tests::netns::in_new_netns("health", || {
        let agent = Agent::start_with(&["--network-services"]);
        let mut ids = Vec::new();
        for n in 1..=3 {
            let name = format!("w{n}");
            ids.push(agent.run_detached(&[
                "--cpus",
                "0.1",
                "--mem",
                "48M",
                "--network",
                "bridge",
                "--name",
                &name,
                "--label",
                "VIP_0=/web:80",
                "--health-cmd",
                "test ! -f \"$MESOS_SANDBOX/down\"",
                "--health-interval",
                "1s",
                "--health-retries",
                "1000",
                "--",
                "python3",
                "-c",
                &named_server(&name),
            ]));
        }
        for id in &ids {
            wait_health(&agent, id, "healthy");
        }
        wait_until("3 VIP backends", Duration::from_secs(60), || {
            (vip_backends(&agent).len() == 3).then_some(())
        });
        let before = vip_backends(&agent);
        let vip = berth_net::lb::vip_address("web", "11.0.0.0/8".parse().unwrap());
        // w2's check starts failing now.
        let w2_ip =
            berth_tests::bridge_ip_of(&agent.inspect(&ids[1])).expect("w2 has a bridge address");
        let failing_since = Instant::now();
        std::fs::write(sandbox_of(&agent, &ids[1]).join("down"), b"").unwrap();
        loop {
            if !vip_backends(&agent)
                .iter()
                .any(|b| b.contains(&w2_ip.to_string()))
            {
                break;
            }
            assert!(
                failing_since.elapsed() < scaled(Duration::from_secs(60)),
                "w2 ({w2_ip}) is still a backend: {:?} (before: {before:?})",
                vip_backends(&agent)
            );
            thread::sleep(Duration::from_millis(20));
        }
        let lag = failing_since.elapsed();
        println!(
            "health: from the check failing to the load balancer update: {:.0} ms \
                     (interval 1 s; the issue asks for within 1 s)",
            lag.as_secs_f64() * 1000.0
        );
        assert_eq!(vip_backends(&agent).len(), 2);
        let status = berth_tests::last_status(&agent.inspect(&ids[1]));
        assert_eq!(status["healthy"], Value::Bool(false));
        assert_eq!(
            agent.task_state(&ids[1]),
            "TASK_RUNNING",
            "unhealthy, not killed"
        );
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..100 {
            *counts
                .entry(greeting_of(SocketAddrV4::new(vip, 80)))
                .or_default() += 1;
        }
        assert!(
            !counts.contains_key("w2"),
            "the unhealthy backend got connections: {counts:?}"
        );
        assert_eq!(counts.len(), 2, "{counts:?}");
        // Healthy again: back in the VIP.
        std::fs::remove_file(sandbox_of(&agent, &ids[1]).join("down")).unwrap();
        wait_until("w2 back in the VIP", Duration::from_secs(60), || {
            (vip_backends(&agent).len() == 3).then_some(())
        });
        for id in &ids {
            agent.berth(&["kill", "--grace", "1", id]).assert_success();
        }
        drop(agent);
    });
}
