//! Resource limits enforced through cgroups: memory (OOM), pids (fork bomb), cpu (quota).
//! All are `cgroup_*`: they also run inside the cgroup v2 microVM.

use std::thread;
use std::time::{Duration, Instant};

use berth_tests::{
    Agent, cgroup_cpu_usage_ns, cgroup_file, cgroup_pids_current, container_cgroup_paths,
    last_status, scaled, wait_paths_gone,
};

#[test]
fn cgroup_oom_memory_limit_fails_task_with_memory_reason() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&[
        "run",
        "--mem",
        "32M",
        "--name",
        "hog",
        "--",
        "sh",
        "-c",
        "head -c 300m /dev/zero | tail",
    ]);
    assert_ne!(
        o.code(),
        0,
        "a 300 MB hog under a 32 MB limit must not succeed:\n{o}"
    );
    let v = agent.inspect("hog");
    assert_eq!(v["task"]["state"], "TASK_FAILED", "{v:#}");
    let last = last_status(&v);
    assert_eq!(last["state"], "TASK_FAILED", "last status: {last:#}");
    assert_eq!(
        last["reason"], "REASON_CONTAINER_LIMITATION_MEMORY",
        "last status: {last:#}"
    );
    assert_eq!(v["resources"]["mem_mb"].as_f64(), Some(32.0), "{v:#}");
}

#[test]
fn cgroup_memory_limit_allows_small_usage() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // 8 MB through a pipe into a byte counter: fine under 64 MB
    let o = agent.berth(&[
        "run",
        "--mem",
        "64M",
        "--",
        "sh",
        "-c",
        "head -c 8m /dev/zero | wc -c",
    ]);
    o.assert_code(0);
    assert_eq!(o.stdout.trim(), "8388608", "{o}");
}

#[test]
fn cgroup_pids_limit_stops_fork_bomb_and_agent_stays_responsive() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // A bounded "bomb" in a subshell: up to 200 sleepers; the pids limit of 64 must stop it well
    // before that. The task's main shell survives the subshell's fork failure and then `exec`s
    // (no fork needed) so the container stays up to be inspected.
    let id = agent.run_detached(&[
        "--pids",
        "64",
        "--name",
        "bomb",
        "--",
        "sh",
        "-c",
        "(i=0; while [ $i -lt 200 ]; do sleep 20 & i=$((i+1)); done; wait); echo bomb-stopped; exec sleep 60",
    ]);
    let v = agent.inspect(&id);
    assert_eq!(v["resources"]["pids"].as_u64(), Some(64), "{v:#}");
    let paths = container_cgroup_paths(&v);
    let max_file =
        cgroup_file(&paths, "pids.max").unwrap_or_else(|| panic!("no pids.max in {paths:?}"));
    assert_eq!(
        std::fs::read_to_string(&max_file).unwrap().trim(),
        "64",
        "{}",
        max_file.display()
    );

    // while the bomb runs (and after it hit the limit) the agent answers promptly
    let start = Instant::now();
    let mut peak = 0;
    let mut health_worst = Duration::ZERO;
    let mut stopped = false;
    while start.elapsed() < scaled(Duration::from_secs(4)) || !stopped {
        assert!(
            start.elapsed() < scaled(Duration::from_secs(60)),
            "the bomb did not report being stopped (peak pids {peak})"
        );
        if let Some(n) = cgroup_pids_current(&paths) {
            peak = peak.max(n);
        }
        let t = Instant::now();
        let h = agent.get("/health");
        health_worst = health_worst.max(t.elapsed());
        assert_eq!(h.status, 200, "agent unhealthy during the fork bomb: {h:?}");
        agent.berth(&["ps"]).assert_success();
        if !stopped {
            let logs = agent.berth(&["logs", &id]);
            stopped = logs.stdout.contains("bomb-stopped");
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(peak <= 64, "pids.current reached {peak} > 64");
    assert!(
        peak >= 10,
        "the bomb never forked much (peak {peak}): is the test broken?"
    );
    assert!(
        health_worst < scaled(Duration::from_secs(5)),
        "/health took {health_worst:?} during the fork bomb"
    );
    // the kernel refused forks at the limit (pids.events: "max N", N > 0)
    let events = cgroup_file(&paths, "pids.events")
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    let refused: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        refused > 0,
        "no fork was refused at the limit: pids.events = {events:?}"
    );
    assert_eq!(agent.task_state(&id), "TASK_RUNNING");
    agent.berth(&["kill", "--grace", "1", &id]).assert_success();
    agent.wait_for_state(&id, &["TASK_KILLED"], Duration::from_secs(30));
    wait_paths_gone(&paths, Duration::from_secs(20));
}

#[test]
fn cgroup_cpu_limit_half_a_cpu_alone() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&[
        "--cpus",
        "0.5",
        "--name",
        "spin",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let v = agent.inspect(&id);
    assert_eq!(v["resources"]["cpus"].as_f64(), Some(0.5), "{v:#}");
    let paths = container_cgroup_paths(&v);
    thread::sleep(Duration::from_secs(3));
    let read = || -> u64 {
        cgroup_cpu_usage_ns(&paths)
            .or_else(|| agent.inspect(&id)["usage"]["cpu_usage_ns"].as_u64())
            .unwrap_or_else(|| panic!("no cpu usage in cgroup files {paths:?} nor in inspect"))
    };
    let (u1, t1) = (read(), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let (u2, t2) = (read(), Instant::now());
    let cpus = (u2 - u1) as f64 / (t2 - t1).as_nanos() as f64;
    eprintln!("measured {cpus:.3} cpus for a 0.5 cpu limit");
    assert!(
        (0.4..=0.6).contains(&cpus),
        "cpu usage {cpus:.3} is not 0.5 ± 0.1"
    );
    // inspect's own usage agrees that the task burns cpu
    let usage = agent.inspect(&id)["usage"]["cpu_usage_ns"].as_u64();
    assert!(
        usage.is_some_and(|u| u > 0),
        "inspect usage.cpu_usage_ns missing or zero"
    );
    agent.berth(&["kill", &id]).assert_success();
    agent.wait_for_state(&id, &["TASK_KILLED"], Duration::from_secs(30));
    wait_paths_gone(&paths, Duration::from_secs(20));
}
