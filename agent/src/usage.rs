//! Resource usage of the running containers: collected from the isolators (cgroup files, the
//! disk isolator's measurements), rendered as per-container Prometheus gauges for `/metrics` and
//! as Mesos `ResourceStatistics` for `/monitor/statistics` (the shape Mesos agents serve).

use berth_isolators::Usage;
use serde_json::{Value, json};

use crate::{metrics::Gauge, task::TaskRecord};

/// One running task's usage.
#[derive(Debug, Clone)]
pub struct TaskUsage {
    /// The task.
    pub task: TaskRecord,
    /// Its container's usage.
    pub usage: Usage,
    /// Unix time of the reading.
    pub timestamp: f64,
}

fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Per-container gauges for `/metrics`. Counters of cumulative time are exported as gauges
/// of seconds (the container may go away at any scrape).
pub fn gauges(usages: &[TaskUsage]) -> Vec<Gauge<'static>> {
    let labels = |u: &TaskUsage| {
        vec![
            ("task_id", u.task.id.clone()),
            ("container_id", u.task.container_id.clone()),
        ]
    };
    let with = |u: &TaskUsage, key: &'static str, value: &str| {
        let mut l = labels(u);
        l.push((key, value.to_string()));
        l
    };
    let mut cpu = Vec::new();
    let mut memory = Vec::new();
    let mut pids = Vec::new();
    let mut io = Vec::new();
    let mut disk = Vec::new();
    let mut ooms = Vec::new();
    let mut throttled_periods = Vec::new();
    for u in usages {
        let usage = &u.usage;
        cpu.push((with(u, "mode", "total"), ns_to_secs(usage.cpu_usage_ns)));
        for (mode, value) in [
            ("user", usage.cpu_user_ns),
            ("system", usage.cpu_system_ns),
            ("throttled", usage.cpu_throttled_ns),
        ] {
            if let Some(ns) = value {
                cpu.push((with(u, "mode", mode), ns_to_secs(ns)));
            }
        }
        memory.push((with(u, "kind", "current"), usage.mem_current_bytes as f64));
        for (kind, value) in [
            ("peak", usage.mem_peak_bytes),
            ("cache", usage.mem_cache_bytes),
            ("rss", usage.mem_rss_bytes),
        ] {
            if let Some(bytes) = value {
                memory.push((with(u, "kind", kind), bytes as f64));
            }
        }
        pids.push((labels(u), usage.pids_current as f64));
        for (direction, value) in [
            ("read", usage.io_read_bytes),
            ("write", usage.io_write_bytes),
        ] {
            if let Some(bytes) = value {
                io.push((with(u, "direction", direction), bytes as f64));
            }
        }
        for (kind, value) in [
            ("used", usage.disk_used_bytes),
            ("limit", usage.disk_limit_bytes),
        ] {
            if let Some(bytes) = value {
                disk.push((with(u, "kind", kind), bytes as f64));
            }
        }
        if let Some(kills) = usage.oom_kills {
            ooms.push((labels(u), kills as f64));
        }
        if let Some(throttled) = usage.cpu_nr_throttled {
            throttled_periods.push((labels(u), throttled as f64));
        }
    }
    vec![
        Gauge {
            name: "berth_container_cpu_seconds",
            help: "CPU time used by a task's container, by mode (total, user, system, throttled).",
            samples: cpu,
        },
        Gauge {
            name: "berth_container_memory_bytes",
            help: "Memory of a task's container, by kind (current, peak, cache, rss).",
            samples: memory,
        },
        Gauge {
            name: "berth_container_pids",
            help: "Processes and threads in a task's container.",
            samples: pids,
        },
        Gauge {
            name: "berth_container_io_bytes",
            help: "Block device bytes of a task's container, by direction.",
            samples: io,
        },
        Gauge {
            name: "berth_container_disk_bytes",
            help: "Sandbox disk of a task's container, by kind (used, limit).",
            samples: disk,
        },
        Gauge {
            name: "berth_container_oom_kills",
            help: "Processes of a task's container killed by the OOM killer.",
            samples: ooms,
        },
        Gauge {
            name: "berth_container_cpu_throttled_periods",
            help: "CFS periods in which a task's container was throttled.",
            samples: throttled_periods,
        },
    ]
}

/// Mesos `ResourceStatistics` of one container (field names of mesos.proto).
pub fn resource_statistics(u: &TaskUsage) -> Value {
    let usage = &u.usage;
    let mut stats = json!({
        "timestamp": u.timestamp,
        "cpus_limit": u.task.limits.cpus,
        "mem_limit_bytes": (u.task.limits.mem_mb * 1024.0 * 1024.0) as u64,
        "mem_total_bytes": usage.mem_current_bytes,
        "processes": usage.pids_current,
    });
    let object = stats.as_object_mut().expect("object");
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            object.insert(key.to_string(), value);
        }
    };
    put(
        "cpus_user_time_secs",
        usage.cpu_user_ns.map(|n| json!(ns_to_secs(n))),
    );
    put(
        "cpus_system_time_secs",
        usage.cpu_system_ns.map(|n| json!(ns_to_secs(n))),
    );
    put(
        "cpus_throttled_time_secs",
        usage.cpu_throttled_ns.map(|n| json!(ns_to_secs(n))),
    );
    put("cpus_nr_periods", usage.cpu_nr_periods.map(|n| json!(n)));
    put(
        "cpus_nr_throttled",
        usage.cpu_nr_throttled.map(|n| json!(n)),
    );
    put("mem_max_bytes", usage.mem_peak_bytes.map(|n| json!(n)));
    put("mem_cache_bytes", usage.mem_cache_bytes.map(|n| json!(n)));
    put("mem_rss_bytes", usage.mem_rss_bytes.map(|n| json!(n)));
    put("disk_used_bytes", usage.disk_used_bytes.map(|n| json!(n)));
    put("disk_limit_bytes", usage.disk_limit_bytes.map(|n| json!(n)));
    stats
}

/// The `/monitor/statistics` document: one entry per running task (Mesos shape: executor id
/// and name, framework id, source, statistics).
pub fn monitor_statistics(usages: &[TaskUsage]) -> Value {
    Value::Array(
        usages
            .iter()
            .map(|u| {
                json!({
                    "executor_id": u.task.id,
                    "executor_name": format!("Command Executor (Task: {})", u.task.id),
                    "framework_id": u.task.framework_id,
                    "source": u.task.name,
                    "container_id": u.task.container_id,
                    "statistics": resource_statistics(u),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskLimits;

    fn sample() -> TaskUsage {
        TaskUsage {
            task: TaskRecord {
                id: "t1".into(),
                name: "web".into(),
                framework_id: "f1".into(),
                container_id: "c1".into(),
                task_info: Value::Null,
                limits: TaskLimits {
                    cpus: 0.5,
                    mem_mb: 64.0,
                    pids: None,
                },
                state: "TASK_RUNNING".into(),
                statuses: Vec::new(),
                pid: None,
                created_at: 0.0,
                started_at: None,
                exit_code: None,
                grace_secs: 3.0,
                framework_info: Value::Null,
                ip: None,
                health: None,
            },
            usage: Usage {
                cpu_usage_ns: 2_500_000_000,
                cpu_user_ns: Some(2_000_000_000),
                mem_current_bytes: 1 << 20,
                mem_rss_bytes: Some(4096),
                pids_current: 3,
                disk_used_bytes: Some(10),
                ..Default::default()
            },
            timestamp: 1.0,
        }
    }

    #[test]
    fn statistics_use_mesos_names() {
        let stats = resource_statistics(&sample());
        assert_eq!(stats["cpus_user_time_secs"], json!(2.0));
        assert_eq!(stats["mem_limit_bytes"], json!(64u64 << 20));
        assert_eq!(stats["mem_rss_bytes"], json!(4096));
        assert_eq!(stats["disk_used_bytes"], json!(10));
        assert!(stats.get("cpus_system_time_secs").is_none());
        let doc = monitor_statistics(&[sample()]);
        assert_eq!(doc[0]["executor_id"], json!("t1"));
    }

    #[test]
    fn gauges_label_each_container() {
        let gauges = gauges(&[sample()]);
        let cpu = gauges
            .iter()
            .find(|g| g.name == "berth_container_cpu_seconds")
            .unwrap();
        assert!(cpu.samples.iter().any(|(labels, value)| {
            labels.contains(&("mode", "total".to_string())) && (*value - 2.5).abs() < 1e-9
        }));
        assert!(
            cpu.samples
                .iter()
                .all(|(labels, _)| labels.contains(&("container_id", "c1".to_string())))
        );
    }
}
