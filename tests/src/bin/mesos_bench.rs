//! Benchmark of berth's Mesos agent protocol (issue 7), run by hand as root on a quiet machine:
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release --bins
//! BERTH_BIN_DIR=/work/target-bench/release /work/target-bench/release/mesos_bench
//! ```
//!
//! Everything runs on loopback: one `berth master` and `berth agent --master` processes.
//! 1. Registration + first offer: a framework is subscribed to the master; a fresh agent (new
//!    work dir) is started; the time from its spawn to the first offer of its resources (agent
//!    start-up included; the harness polls the agent's health every 10 ms), N times,
//!    with `--registration-backoff-factor 0` (no random start delay) and with the Mesos default of
//!    1 s (a uniformly random delay in [0, 1 s] before the first attempt, as mesos-agent has).
//! 2. Status update throughput: 1000 tasks launched in one ACCEPT that the agent refuses at once
//!    (TASK_ERROR: nothing to run), so the updates are bound by the protocol path (checkpoint,
//!    libprocess message, master, framework, acknowledgement back): acknowledged updates/s.
//!    Then 1000 real `sleep` tasks: time until all are TASK_RUNNING and acknowledged.
//! 3. The agent with those 1000 running tasks: CPU use (utime+stime over 20 s) and VmRSS.
//!
//! Environment: N_REG (registrations per setting, default 10), N_TASKS (default 1000).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use berth_proto::{
    codec::ContentType,
    mesos::v1::{self as mesos, scheduler},
};
use berth_tests::{
    Agent,
    framework::{Framework, call, launch, runtime, task},
    master::Master,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{label}: n={} p50={:.1} ms p90={:.1} ms min={:.1} ms max={:.1} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        ms.first().copied().unwrap_or(f64::NAN),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

fn proc_cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: index 11 and 12 after the comm.
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

fn vm_rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn registration_latency(n: usize, backoff: &str) -> Vec<f64> {
    let master = Master::start(&[]);
    let mut samples = Vec::new();
    runtime().block_on(async {
        let mut fw = Framework::subscribe(&master.url(), ContentType::Protobuf, "bench").await;
        let mut seen: HashSet<String> = HashSet::new();
        for _ in 0..n {
            let began = Instant::now();
            let agent = Agent::start_with_master(
                &master.addr().to_string(),
                &["--registration-backoff-factor", backoff],
            );
            let offer = loop {
                let offer = fw.offer().await;
                if seen.insert(offer.agent_id.value.clone()) {
                    break offer;
                }
                fw.decline(&offer).await;
            };
            samples.push(began.elapsed().as_secs_f64() * 1000.0);
            fw.decline(&offer).await;
            drop(agent);
        }
    });
    samples
}

fn main() {
    let n_reg = env_usize("N_REG", 10);
    let n_tasks = env_usize("N_TASKS", 1000);
    println!(
        "# berth Mesos agent protocol benchmark (loopback, berth master + berth agent --master)"
    );
    summary(
        "registration + first offer, backoff factor 0 (agent spawn -> offer)",
        registration_latency(n_reg, "0"),
    );
    summary(
        "registration + first offer, backoff factor 1 s (Mesos default)",
        registration_latency(n_reg, "1"),
    );

    let master = Master::start(&[]);
    let resources = format!("cpus:{};mem:{}", n_tasks * 2, n_tasks * 64);
    let agent = Agent::start_with_master(
        &master.addr().to_string(),
        &[
            "--resources",
            &resources,
            "--registration-backoff-factor",
            "0",
        ],
    );
    runtime().block_on(async {
        let mut fw = Framework::subscribe(&master.url(), ContentType::Protobuf, "bench").await;
        // 2a. Updates bound by the protocol: tasks with nothing to run fail at once.
        let offer = fw.offer().await;
        let tasks: Vec<mesos::TaskInfo> = (0..n_tasks)
            .map(|i| {
                let mut t = task(&format!("err-{i}"), &offer.agent_id, 0.01, 1.0, "");
                t.command = None;
                t
            })
            .collect();
        let began = Instant::now();
        fw.send(launch(&offer, tasks)).await;
        for i in 0..n_tasks {
            let status = fw.update_of(&format!("err-{i}")).await;
            assert_eq!(status.state(), mesos::TaskState::TaskError, "{status:?}");
        }
        let elapsed = began.elapsed().as_secs_f64();
        println!(
            "status updates (TASK_ERROR, no container): {n_tasks} acknowledged in {:.2} s = {:.0} updates/s",
            elapsed,
            n_tasks as f64 / elapsed
        );
        // 2b. Real containers.
        let offer = fw.offer().await;
        let tasks: Vec<mesos::TaskInfo> = (0..n_tasks)
            .map(|i| task(&format!("run-{i}"), &offer.agent_id, 0.01, 8.0, "sleep 600"))
            .collect();
        let began = Instant::now();
        fw.send(launch(&offer, tasks)).await;
        let mut updates = 0usize;
        for i in 0..n_tasks {
            loop {
                let status = fw.update_of(&format!("run-{i}")).await;
                updates += 1;
                if status.state() == mesos::TaskState::TaskRunning {
                    break;
                }
                assert_eq!(status.state(), mesos::TaskState::TaskStarting, "{status:?}");
            }
        }
        let elapsed = began.elapsed().as_secs_f64();
        println!(
            "{n_tasks} real tasks RUNNING and acknowledged in {:.1} s ({updates} updates, {:.0} updates/s, launch-bound)",
            elapsed,
            updates as f64 / elapsed
        );
        // 3. Agent CPU and RSS with the tasks running.
        let pid = agent.pid();
        // SAFETY: sysconf has no preconditions.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let before = proc_cpu_ticks(pid);
        let window = Duration::from_secs(20);
        tokio::time::sleep(window).await;
        let used = (proc_cpu_ticks(pid) - before) as f64 / ticks_per_s;
        println!(
            "agent with {n_tasks} running tasks: CPU {:.2}% of one core over {} s, VmRSS {} kB",
            100.0 * used / window.as_secs_f64(),
            window.as_secs(),
            vm_rss_kb(pid)
        );
        let master_pid = master.pid();
        println!("master VmRSS {} kB", vm_rss_kb(master_pid));
        // Tear down: the agent kills every task.
        let began = Instant::now();
        fw.send(call(scheduler::call::Type::Teardown)).await;
        loop {
            let live = berth_tests::http_request(
                agent.addr(),
                "GET",
                "/api/berth/v1/tasks",
                None,
                b"",
                Duration::from_secs(30),
            )
            .map(|r| r.json().to_string().matches("TASK_RUNNING").count())
            .unwrap_or(usize::MAX);
            if live == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "teardown of {n_tasks} tasks: {:.1} s",
            began.elapsed().as_secs_f64()
        );
    });
}
