//! The agent's metrics under the names a Mesos agent uses (`GET_METRICS`, like its
//! `/metrics/snapshot`): `slave/*` for tasks, executors, frameworks and resources, `system/*` for
//! the host. Only metrics berth can compute honestly are listed; counters Mesos keeps and berth
//! does not (status update and framework message counts, recovery errors) are left out.

use std::path::Path;

use super::model::{Model, Phase};

/// What the metrics are computed from, besides the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counters {
    /// Seconds since the agent started.
    pub uptime_secs: f64,
    /// Whether the agent is registered with a master.
    pub registered: bool,
    /// Container launches that failed since the agent started.
    pub launch_errors: u64,
}

/// The metrics, sorted by name. `proc_root` is normally `/proc` (for `system/*`).
pub fn snapshot(model: &Model<'_>, counters: Counters, proc_root: &Path) -> Vec<(String, f64)> {
    let tasks = &model.snapshot.tasks;
    let mut out: Vec<(String, f64)> = Vec::new();
    let mut put = |name: &str, value: f64| out.push((name.to_string(), value));

    put("slave/uptime_secs", counters.uptime_secs);
    put("slave/registered", f64::from(u8::from(counters.registered)));
    put(
        "slave/container_launch_errors",
        counters.launch_errors as f64,
    );

    let count = |states: &[&str]| -> f64 {
        tasks
            .iter()
            .filter(|t| states.contains(&t.state.as_str()))
            .count() as f64
    };
    put("slave/tasks_staging", count(&["TASK_STAGING"]));
    put("slave/tasks_starting", count(&["TASK_STARTING"]));
    put("slave/tasks_running", count(&["TASK_RUNNING"]));
    put("slave/tasks_killing", count(&["TASK_KILLING"]));
    put("slave/tasks_finished", count(&["TASK_FINISHED"]));
    // Mesos counts TASK_ERROR with the failed tasks: it has no metric of its own.
    put("slave/tasks_failed", count(&["TASK_FAILED", "TASK_ERROR"]));
    put("slave/tasks_killed", count(&["TASK_KILLED"]));
    put("slave/tasks_lost", count(&["TASK_LOST"]));
    put(
        "slave/tasks_gone",
        count(&["TASK_GONE", "TASK_GONE_BY_OPERATOR"]),
    );

    // One executor per task: registering while the container launches, running after, and
    // terminated once the task ended.
    let executors = |phases: &[Phase]| -> f64 {
        tasks
            .iter()
            .filter(|t| phases.contains(&Phase::of(t)))
            .count() as f64
    };
    put("slave/executors_registering", executors(&[Phase::Queued]));
    put("slave/executors_running", executors(&[Phase::Launched]));
    put("slave/executors_terminating", 0.0);
    put(
        "slave/executors_terminated",
        executors(&[Phase::Terminated, Phase::Completed]),
    );
    put("slave/executors_preempted", 0.0);
    put("slave/frameworks_active", model.frameworks.len() as f64);

    let total = &model.snapshot.resources;
    for name in ["cpus", "gpus", "mem", "disk"] {
        let have = total.scalar(name);
        let used = used(model, name);
        put(&format!("slave/{name}_total"), have);
        put(&format!("slave/{name}_used"), used);
        put(
            &format!("slave/{name}_percent"),
            if have > 0.0 { used / have } else { 0.0 },
        );
        // berth offers no revocable resources.
        put(&format!("slave/{name}_revocable_total"), 0.0);
        put(&format!("slave/{name}_revocable_used"), 0.0);
        put(&format!("slave/{name}_revocable_percent"), 0.0);
    }

    put(
        "system/cpus_total",
        std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0),
    );
    if let Some([one, five, fifteen]) = load_average(proc_root) {
        put("system/load_1min", one);
        put("system/load_5min", five);
        put("system/load_15min", fifteen);
    }
    if let Some((mem_total, mem_free)) = memory(proc_root) {
        put("system/mem_total_bytes", mem_total as f64);
        put("system/mem_free_bytes", mem_free as f64);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Resources of `name` held by tasks that have not ended.
fn used(model: &Model<'_>, name: &str) -> f64 {
    model
        .frameworks
        .iter()
        .flat_map(|f| &f.executors)
        .map(|e| berth_proto::resources::scalar_sum(&e.allocated_resources(), name))
        .sum()
}

/// `/proc/loadavg`'s three load averages.
fn load_average(proc_root: &Path) -> Option<[f64; 3]> {
    let text = std::fs::read_to_string(proc_root.join("loadavg")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// `/proc/meminfo`'s MemTotal and MemFree, bytes.
fn memory(proc_root: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(proc_root.join("meminfo")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemFree:")?))
}
