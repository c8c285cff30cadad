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
        "--cpu-hard-cap",
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
    let throttled = || -> u64 {
        cgroup_file(&paths, "cpu.stat")
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("nr_throttled "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no nr_throttled in cpu.stat of {paths:?}"))
    };
    let (u1, n1, t1) = (read(), throttled(), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let (u2, n2, t2) = (read(), throttled(), Instant::now());
    let cpus = (u2 - u1) as f64 / (t2 - t1).as_nanos() as f64;
    eprintln!(
        "measured {cpus:.3} cpus for a 0.5 cpu limit; throttled in {} periods",
        n2 - n1
    );
    // The cap is an upper bound. Below 0.4 the machine was busy enough that the hog did not even
    // get its quota: then the cap must still have been what stopped it in some periods.
    assert!(cpus <= 0.6, "cpu usage {cpus:.3} exceeds the 0.5 cap");
    assert!(
        cpus >= 0.4 || n2 > n1,
        "cpu usage {cpus:.3} is below 0.4 and the cap never throttled: is the limit too low, \
         or is the machine overloaded (load {})?",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    assert!(n2 > n1, "the hog was never throttled: is the cap set?");
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

/// Reads a cgroup file of the container (the first hierarchy that has it), trimmed.
fn read_cgroup(paths: &[std::path::PathBuf], file: &str) -> String {
    let path = cgroup_file(paths, file).unwrap_or_else(|| panic!("no {file} in {paths:?}"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn cgroup_memory_high_throttles_without_killing() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // 96 MB of page cache through a 32 MB soft limit: reclaimed and throttled, never killed.
    let o = agent.berth(&[
        "run",
        "--mem",
        "256M",
        "--memory-high",
        "32M",
        "--name",
        "high",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=$MESOS_SANDBOX/f bs=1M count=96 2>/dev/null && sync && echo wrote",
    ]);
    o.assert_code(0);
    assert!(o.stdout.contains("wrote"), "{o}");
    let v = agent.inspect("high");
    assert_eq!(v["task"]["state"], "TASK_FINISHED", "{v:#}");
}

#[test]
fn cgroup_memory_high_is_written() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&["--memory-high", "48M", "--", "sleep", "600"]);
    let paths = container_cgroup_paths(&agent.inspect(&id));
    let value = cgroup_file(&paths, "memory.high")
        .or_else(|| cgroup_file(&paths, "memory.soft_limit_in_bytes"))
        .map(|f| std::fs::read_to_string(f).unwrap())
        .unwrap_or_else(|| {
            panic!("neither memory.high nor memory.soft_limit_in_bytes in {paths:?}")
        });
    assert_eq!(value.trim(), (48u64 << 20).to_string());
    agent.berth(&["kill", "--grace", "0", &id]).assert_success();
}

#[test]
fn cgroup_live_update_of_limits() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&[
        "--mem",
        "128M",
        "--cpus",
        "1",
        "--cpu-hard-cap",
        "--pids",
        "100",
        "--",
        "sleep",
        "600",
    ]);
    let paths = container_cgroup_paths(&agent.inspect(&id));
    let mem_file = if cgroup_file(&paths, "memory.max").is_some() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    assert_eq!(read_cgroup(&paths, mem_file), (128u64 << 20).to_string());
    agent
        .berth(&[
            "update", "--mem", "64M", "--pids", "20", "--cpus", "0.5", &id,
        ])
        .assert_success();
    assert_eq!(read_cgroup(&paths, mem_file), (64u64 << 20).to_string());
    assert_eq!(read_cgroup(&paths, "pids.max"), "20");
    if cgroup_file(&paths, "cpu.max").is_some() {
        assert_eq!(read_cgroup(&paths, "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read_cgroup(&paths, "cpu.cfs_quota_us"), "50000");
    }
    let v = agent.inspect(&id);
    assert_eq!(v["resources"]["mem_mb"].as_f64(), Some(64.0), "{v:#}");
    assert_eq!(v["resources"]["cpus"].as_f64(), Some(0.5), "{v:#}");
    // bad updates are refused; the task runs on
    let bad = agent.berth(&["update", "--mem", "1M", &id]);
    assert_ne!(bad.code(), 0, "{bad}");
    let unknown = agent.berth(&["update", "--mem", "64M", "no-such-task"]);
    assert_ne!(unknown.code(), 0, "{unknown}");
    assert!(unknown.stderr.contains("no-such-task"), "{unknown}");
    assert_eq!(agent.task_state(&id), "TASK_RUNNING");
    agent.berth(&["kill", "--grace", "0", &id]).assert_success();
}

#[test]
fn cgroup_usage_matches_independent_readings() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&[
        "--cpus",
        "0.5",
        "--cpu-hard-cap",
        "--name",
        "usage",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let v = agent.inspect(&id);
    let paths = container_cgroup_paths(&v);
    thread::sleep(Duration::from_secs(2));
    // cpu: the agent's reading against the cgroup's own counter read right before and after
    let before = cgroup_cpu_usage_ns(&paths).expect("cpu usage file");
    let reported = agent.inspect(&id)["usage"]["cpu_usage_ns"]
        .as_u64()
        .expect("usage.cpu_usage_ns");
    let after = cgroup_cpu_usage_ns(&paths).expect("cpu usage file");
    assert!(
        reported as f64 >= before as f64 * 0.9 && reported as f64 <= after as f64 * 1.1,
        "reported cpu {reported} ns is not within 10% of the cgroup's {before}..{after}"
    );
    // memory: the same for memory.current / memory.usage_in_bytes
    let mem_file = if cgroup_file(&paths, "memory.current").is_some() {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let independent: f64 = read_cgroup(&paths, mem_file).parse().unwrap();
    let reported = agent.inspect(&id)["usage"]["mem_current_bytes"]
        .as_f64()
        .unwrap();
    assert!(
        (reported - independent).abs() <= independent * 0.1 + 64.0 * 1024.0,
        "memory {reported} vs {independent}"
    );
    // /metrics has per-container series, /monitor/statistics the Mesos shape
    let metrics = agent.get("/metrics").body;
    assert!(
        metrics.contains(&format!("berth_container_cpu_seconds{{task_id=\"{id}\"")),
        "no per-container cpu series in /metrics:\n{metrics}"
    );
    assert!(
        metrics.contains("berth_container_memory_bytes{"),
        "{metrics}"
    );
    let stats = agent.get("/monitor/statistics").json();
    let entry = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["executor_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in /monitor/statistics: {stats:#}"));
    assert!(
        entry["statistics"]["cpus_user_time_secs"]
            .as_f64()
            .is_some(),
        "{entry:#}"
    );
    assert_eq!(
        entry["statistics"]["cpus_limit"].as_f64(),
        Some(0.5),
        "{entry:#}"
    );
    agent.berth(&["kill", "--grace", "0", &id]).assert_success();
}

#[test]
fn cgroup_cpu_weights_split_a_contended_cpu_1_to_3_alone() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // Two hogs pinned to CPU 0 (cpuset) with weights from 0.25 and 0.75 cpus, no hard cap.
    let hog = |cpus: &str, name: &str| {
        agent.run_detached(&[
            "--cpus",
            cpus,
            "--cpuset-cpus",
            "0",
            "--name",
            name,
            "--",
            "sh",
            "-c",
            "while :; do :; done",
        ])
    };
    let light = hog("0.25", "light");
    let heavy = hog("0.75", "heavy");
    let light_paths = container_cgroup_paths(&agent.inspect(&light));
    let heavy_paths = container_cgroup_paths(&agent.inspect(&heavy));
    thread::sleep(Duration::from_secs(1));
    let read = |p: &[std::path::PathBuf]| cgroup_cpu_usage_ns(p).expect("cpu usage");
    let (l1, h1) = (read(&light_paths), read(&heavy_paths));
    thread::sleep(Duration::from_secs(4));
    let (l2, h2) = (read(&light_paths), read(&heavy_paths));
    let ratio = (h2 - h1) as f64 / (l2 - l1).max(1) as f64;
    eprintln!("heavy:light cpu = {ratio:.2} (weights 3:1)");
    assert!(
        (2.0..=4.5).contains(&ratio),
        "heavy:light cpu ratio {ratio:.2} is not ~3"
    );
    for id in [&light, &heavy] {
        agent.berth(&["kill", "--grace", "0", id]).assert_success();
    }
}

#[test]
fn cgroup_destroy_of_100_containers_leaves_nothing_alone() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    // 100 on the host; 20 in the cgroup v2 microVM, where each launch is emulated (TCG) and 100
    // would take most of the CI budget (the isolator-level test destroys 100 there).
    let count = if std::env::var("BERTH_TEST_CGROUP").as_deref() == Ok("v2") {
        20
    } else {
        100
    };
    let ids: Vec<String> = (0..count)
        .map(|i| {
            agent.run_detached(&[
                "--mem",
                "16M",
                "--cpus",
                "0.01",
                "--name",
                &format!("many-{i}"),
                "--",
                "sleep",
                "600",
            ])
        })
        .collect();
    assert_eq!(agent.ps_json(false).len(), count);
    for id in &ids {
        agent.berth(&["kill", "--grace", "0", id]).assert_success();
    }
    for id in &ids {
        agent.wait_for_state(id, &["TASK_KILLED"], Duration::from_secs(60));
    }
    // every container's cgroups and mounts are gone once the agent stops
    agent.assert_no_leftovers();
}
