//! Detached tasks: run --detach, ps, logs, inspect, kill (with grace escalation), unknown ids.
//! `cgroup_*` tests also run inside the cgroup v2 microVM.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_tests::{
    Agent, cgroup_version, container_cgroup_paths, last_status, wait_paths_gone, wait_until,
};

#[test]
fn cgroup_detached_task_ps_logs_inspect_kill() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&[
        "--name",
        "web",
        "--cpus",
        "0.25",
        "--mem",
        "64M",
        "--",
        "sh",
        "-c",
        "echo started; echo on-err >&2; exec sleep 300",
    ]);
    assert!(!id.is_empty());

    // ps (table): a line with the name and RUNNING
    let ps = agent.berth(&["ps"]);
    ps.assert_success();
    let header = ps.stdout.lines().next().unwrap_or_default();
    for col in ["ID", "NAME", "STATE", "CPUS", "MEM", "STARTED", "EXIT"] {
        assert!(header.contains(col), "ps header lacks {col}:\n{ps}");
    }
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.contains("web") && l.contains("RUNNING")),
        "ps does not show web RUNNING:\n{ps}"
    );

    // ps --json
    let tasks = agent.ps_json(false);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let t = &tasks[0];
    assert_eq!(t["id"], id.as_str(), "{t}");
    assert_eq!(t["name"], "web", "{t}");
    assert_eq!(t["state"], "TASK_RUNNING", "{t}");
    assert_eq!(t["cpus"].as_f64(), Some(0.25), "{t}");
    assert_eq!(t["mem_mb"].as_f64(), Some(64.0), "{t}");
    assert!(
        t["started_at"].as_f64().is_some_and(|s| s > 1.0e9),
        "started_at: {t}"
    );
    assert!(t["exit_code"].is_null(), "{t}");
    assert!(
        t["framework_id"].is_string() && t["container_id"].is_string(),
        "{t}"
    );

    // logs (stdout and stderr, separately selectable); output may lag a little
    let logs = wait_until(
        "`berth logs` to show the task's output",
        Duration::from_secs(15),
        || {
            let o = agent.berth(&["logs", &id]);
            (o.success() && o.stdout.contains("started")).then_some(o)
        },
    );
    assert!(
        !logs.stdout.contains("on-err"),
        "stderr in stdout of `berth logs`:\n{logs}"
    );
    let err = agent.berth(&["logs", "--stderr-only", &id]);
    err.assert_success();
    assert!(
        err.stdout.contains("on-err") || err.stderr.contains("on-err"),
        "{err}"
    );
    assert!(
        !err.stdout.contains("started") && !err.stderr.contains("started"),
        "{err}"
    );

    // inspect, by id, by unique prefix and by name
    let v = agent.inspect(&id);
    assert_eq!(v["task"]["id"], id.as_str(), "{v:#}");
    assert_eq!(v["task"]["name"], "web", "{v:#}");
    assert_eq!(v["task"]["state"], "TASK_RUNNING", "{v:#}");
    assert!(v["task"]["framework_id"].is_string(), "{v:#}");
    assert!(v["container"]["id"].is_string(), "{v:#}");
    let pid = v["container"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("container.pid: {v:#}"));
    assert!(
        pid > 1 && Path::new(&format!("/proc/{pid}")).exists(),
        "container pid {pid} not alive"
    );
    assert_eq!(
        v["container"]["cgroup"]["version"],
        cgroup_version().as_str(),
        "{v:#}"
    );
    let paths = container_cgroup_paths(&v);
    assert!(!paths.is_empty(), "{v:#}");
    for p in &paths {
        assert!(
            p.is_dir(),
            "container cgroup {} does not exist",
            p.display()
        );
        assert!(
            p.to_string_lossy().contains(agent.cgroup_base()),
            "container cgroup {} is not under the agent's --cgroup-base {}",
            p.display(),
            agent.cgroup_base()
        );
    }
    // the container's main process really is in its cgroup
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        own.contains(agent.cgroup_base()),
        "pid {pid} cgroups:\n{own}"
    );
    assert_eq!(v["resources"]["cpus"].as_f64(), Some(0.25), "{v:#}");
    assert_eq!(v["resources"]["mem_mb"].as_f64(), Some(64.0), "{v:#}");
    assert!(
        v["statuses"].as_array().is_some_and(|a| !a.is_empty()),
        "{v:#}"
    );
    assert_eq!(last_status(&v)["state"], "TASK_RUNNING", "{v:#}");
    assert!(v["usage"].is_object(), "usage missing while running: {v:#}");
    assert_eq!(agent.inspect("web")["task"]["id"], id.as_str());
    if id.len() > 8 {
        assert_eq!(agent.inspect(&id[..8])["task"]["id"], id.as_str());
    }

    // kill
    let k = agent.berth(&["kill", &id]);
    k.assert_success();
    let v = agent.inspect(&id);
    assert_eq!(
        v["task"]["state"], "TASK_KILLED",
        "kill returned before the task was terminal: {v:#}"
    );
    assert_eq!(last_status(&v)["state"], "TASK_KILLED", "{v:#}");
    assert!(
        agent.ps_json(false).is_empty(),
        "killed task still listed without --all"
    );
    let all = agent.ps_json(true);
    assert!(
        all.iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "TASK_KILLED"),
        "{all:?}"
    );
    wait_paths_gone(&paths, Duration::from_secs(20));
    wait_until(
        "the container's process to go",
        Duration::from_secs(10),
        || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
    );
    // no shim of that container any more
    let strays = agent.stray_processes();
    assert!(strays.is_empty(), "processes left after kill: {strays:?}");
}

#[test]
fn cgroup_kill_escalates_to_sigkill_after_grace() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&[
        "--name",
        "stubborn",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 1; done",
    ]);
    wait_until(
        "the task to install its TERM trap",
        Duration::from_secs(15),
        || {
            let o = agent.berth(&["logs", &id]);
            o.stdout.contains("ready").then_some(())
        },
    );
    let t = Instant::now();
    let k = agent.berth(&["kill", "--grace", "1", &id]);
    let took = t.elapsed();
    k.assert_success();
    assert!(
        took >= Duration::from_millis(900),
        "kill returned after {took:?}: the grace period was not honoured\n{k}"
    );
    assert!(
        took < berth_tests::scaled(Duration::from_secs(15)),
        "kill took {took:?}\n{k}"
    );
    let v = agent.inspect(&id);
    assert_eq!(v["task"]["state"], "TASK_KILLED", "{v:#}");
}

#[test]
fn cgroup_attached_run_killed_from_outside_exits_137() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    std::thread::scope(|s| {
        let runner = s.spawn(|| agent.berth(&["run", "--name", "victim", "--", "sleep", "300"]));
        let id = wait_until(
            "the attached task to be RUNNING",
            Duration::from_secs(30),
            || {
                agent
                    .ps_json(false)
                    .into_iter()
                    .find(|t| t["name"] == "victim" && t["state"] == "TASK_RUNNING")
                    .and_then(|t| t["id"].as_str().map(str::to_string))
            },
        );
        agent.berth(&["kill", &id]).assert_success();
        let o = runner.join().expect("runner thread");
        o.assert_code(137);
    });
}

#[test]
fn kill_unknown_task_fails_with_clear_error() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&["kill", "nosuch"]);
    o.assert_code(1);
    let line = o.stderr.trim();
    assert!(
        line.starts_with("berth: ") && line.contains("nosuch"),
        "stderr: {o}"
    );
    let o = agent.berth(&["inspect", "nosuch"]);
    assert_ne!(o.code(), 0, "{o}");
    assert!(o.stderr.contains("nosuch"), "{o}");
}

#[test]
fn names_are_resolvable_and_ps_all_keeps_history() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    agent
        .berth(&["run", "--name", "one", "--", "true"])
        .assert_code(0);
    agent
        .berth(&["run", "--name", "two", "--", "false"])
        .assert_code(1);
    let all = agent.ps_json(true);
    assert_eq!(all.len(), 2, "{all:?}");
    let by = |n: &str| {
        all.iter()
            .find(|t| t["name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by("one")["state"], "TASK_FINISHED");
    assert_eq!(by("one")["exit_code"], 0);
    assert_eq!(by("two")["state"], "TASK_FAILED");
    assert_eq!(by("two")["exit_code"], 1);
    assert!(agent.ps_json(false).is_empty());
}
