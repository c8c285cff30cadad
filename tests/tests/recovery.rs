//! Nothing is lost when the agent is killed with SIGKILL: running tasks are reattached after a
//! restart, tasks that ended while the agent was down are reported with their real exit, and a
//! kill at any moment of a launch leaves every task either running or ended with a reason — no
//! task stuck half-launched, no orphan process or cgroup.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use berth_tests::{Agent, berth_bin, scaled};

#[test]
fn cgroup_restart_reattaches_running_task() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&[
        "--name",
        "survivor",
        "--",
        "sh",
        "-c",
        "while :; do echo tick; sleep 0.2; done",
    ]);
    let pid_before = agent.inspect(&id)["container"]["pid"].as_i64();
    assert!(pid_before.is_some(), "a running task has a pid");
    agent.crash_and_restart();
    assert_eq!(
        agent.task_state(&id),
        "TASK_RUNNING",
        "the task survives the agent's crash"
    );
    assert_eq!(agent.inspect(&id)["container"]["pid"].as_i64(), pid_before);
    // Still supervised: output keeps flowing and a kill goes through the reattached shim.
    thread::sleep(Duration::from_millis(500));
    let logs = agent.berth(&["logs", &id]);
    assert!(logs.stdout.matches("tick").count() >= 2, "{logs}");
    agent.berth(&["kill", "--grace", "1", &id]).assert_success();
    assert_eq!(agent.task_state(&id), "TASK_KILLED");
    agent.assert_no_leftovers();
}

#[test]
fn cgroup_exit_while_agent_down_is_reported() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&["--", "sh", "-c", "sleep 1; echo done; exit 4"]);
    // Kill the agent now, let the workload exit while no agent runs (its shim records the exit
    // durably), then start the agent again.
    nix_kill9(agent.pid());
    thread::sleep(Duration::from_secs(2));
    agent.crash_and_restart();
    let task = agent.wait_for_state(&id, &["TASK_FAILED"], scaled(Duration::from_secs(20)));
    assert_eq!(task["task"]["exit_code"].as_i64(), Some(4), "{task}");
    assert!(agent.berth(&["logs", &id]).stdout.contains("done"));
    agent.assert_no_leftovers();
}

/// SIGKILL to the agent the test started (by pid).
fn nix_kill9(pid: i32) {
    let status = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn cgroup_kill_9_mid_launch_loses_nothing() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    for round in 0..6u64 {
        // A launch in flight, and the agent killed at a different moment of it each round.
        let mut cli = Command::new(berth_bin())
            .args([
                "--agent",
                agent.url(),
                "run",
                "--detach",
                "--name",
                &format!("r{round}"),
                "--",
                "sleep",
                "300",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start berth run");
        thread::sleep(Duration::from_millis(5 + round * 9));
        agent.crash_and_restart();
        let _ = cli.kill();
        let _ = cli.wait();
    }
    // Every task the agent accepted is now running or ended with a reason, never stuck.
    thread::sleep(scaled(Duration::from_secs(2)));
    let tasks = agent.ps_json(true);
    for task in &tasks {
        let id = task["id"].as_str().unwrap().to_string();
        let state = agent.task_state(&id);
        match state.as_str() {
            "TASK_RUNNING" => {
                agent.berth(&["kill", "--grace", "0", &id]).assert_success();
            }
            "TASK_FAILED" | "TASK_KILLED" | "TASK_FINISHED" => {
                let last = agent.inspect(&id)["statuses"]
                    .as_array()
                    .and_then(|s| s.last().cloned());
                assert!(
                    last.as_ref()
                        .and_then(|s| s["message"].as_str())
                        .is_some_and(|m| !m.is_empty()),
                    "task {id} ended without a message: {last:?}"
                );
            }
            other => panic!("task {id} is stuck in {other} after the agent restarted"),
        }
    }
    agent.assert_no_leftovers();
}
