//! `berth run` in the foreground: output streaming, exit codes, env, workdir.
//! Tests named `cgroup_*` also run inside the cgroup v2 microVM (tests/run.sh).

use berth_tests::{Agent, cgroup_version, check_expected_cgroup_version};

/// Not an agent test: asserts the machine's cgroup version is what the runner expects
/// (BERTH_TEST_CGROUP=v2 in the microVM phase), so a v2 phase that silently ran on v1 fails.
#[test]
fn cgroup_version_is_as_expected() {
    check_expected_cgroup_version();
    eprintln!("cgroup version here: {}", cgroup_version());
}

#[test]
fn cgroup_run_echo_hostname() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&["run", "--", "sh", "-c", "echo hello from $(hostname)"]);
    o.assert_code(0);
    assert!(
        o.stdout.contains("hello from "),
        "stdout lacks the greeting:\n{o}"
    );
    let name = o.stdout.trim().trim_start_matches("hello from ").trim();
    assert!(!name.is_empty(), "hostname empty:\n{o}");
    // the task is finished and recorded as such
    let tasks = agent.ps_json(true);
    assert_eq!(tasks.len(), 1, "ps --all: {tasks:?}");
    assert_eq!(tasks[0]["state"], "TASK_FINISHED", "{tasks:?}");
    assert_eq!(tasks[0]["exit_code"], 0, "{tasks:?}");
    assert!(
        agent.ps_json(false).is_empty(),
        "finished task listed without --all"
    );
}

#[test]
fn cgroup_run_exit_code_propagates() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&["run", "--", "sh", "-c", "exit 3"]);
    o.assert_code(3);
    let tasks = agent.ps_json(true);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["state"], "TASK_FAILED", "{tasks:?}");
    assert_eq!(tasks[0]["exit_code"], 3, "{tasks:?}");
}

#[test]
fn run_signal_death_is_128_plus_signal() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&["run", "--", "sh", "-c", "kill -USR1 $$"]);
    o.assert_code(128 + 10);
}

#[test]
fn run_env_var() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&[
        "run",
        "--env",
        "FOO=bar",
        "--env",
        "EMPTY=",
        "--",
        "sh",
        "-c",
        "echo \"[$FOO][${EMPTY-unset}]\"",
    ]);
    o.assert_code(0);
    assert_eq!(o.stdout.trim(), "[bar][]", "{o}");
}

#[test]
fn run_workdir() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&["run", "--workdir", "/tmp", "--", "pwd"]);
    o.assert_code(0);
    assert_eq!(o.stdout.trim(), "/tmp", "{o}");
}

#[test]
fn run_no_implicit_shell() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // argv is passed as is: `$HOME` is not expanded, `;` is just an argument
    let o = agent.berth(&["run", "--", "echo", "$HOME;", "x"]);
    o.assert_code(0);
    assert_eq!(o.stdout.trim(), "$HOME; x", "{o}");
}

#[test]
fn run_stdout_and_stderr_are_separate() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; echo more-out",
    ]);
    o.assert_code(0);
    assert!(
        o.stdout.contains("to-out") && o.stdout.contains("more-out"),
        "{o}"
    );
    assert!(
        !o.stdout.contains("to-err"),
        "stderr leaked into stdout:\n{o}"
    );
    assert!(
        o.stderr.contains("to-err"),
        "task stderr not on berth's stderr:\n{o}"
    );
    assert!(
        !o.stderr.contains("to-out"),
        "stdout leaked into stderr:\n{o}"
    );
}

#[test]
fn run_large_output_is_complete() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // 20000 numbered lines (~110 KB): nothing lost or reordered on the way
    let o = agent.berth(&[
        "run",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do echo $i; i=$((i+1)); done",
    ]);
    o.assert_code(0);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 20000, "got {} lines", lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, i.to_string(), "line {i} differs");
    }
}

#[test]
fn run_missing_command_fails_cleanly() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = agent.berth(&["run", "--", "/nonexistent/berth-no-such-binary"]);
    assert_ne!(o.code(), 0, "{o}");
    assert!(!o.stderr.trim().is_empty(), "no error message:\n{o}");
}
