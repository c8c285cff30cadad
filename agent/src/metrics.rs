//! Agent metrics, rendered in the Prometheus text format at `/metrics`.

use std::{
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Upper bounds (seconds) of the launch latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters and histograms the agent keeps.
#[derive(Default)]
pub struct Metrics {
    launches: AtomicU64,
    launch_failures: AtomicU64,
    latency: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A gauge sample the caller provides at render time.
pub struct Gauge<'a> {
    /// Metric name.
    pub name: &'a str,
    /// Help text.
    pub help: &'a str,
    /// Samples: label pairs and value.
    pub samples: Vec<(Vec<(&'a str, String)>, f64)>,
}

impl Metrics {
    /// Records a successful launch and its latency (request to workload released).
    pub fn launch_succeeded(&self, latency: Duration) {
        self.launches.fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let mut histogram = self.latency.lock().expect("metrics lock");
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Records a failed launch.
    pub fn launch_failed(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
        self.launch_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Launches that failed so far.
    pub fn launch_failures(&self) -> u64 {
        self.launch_failures.load(Ordering::Relaxed)
    }

    /// Renders the counters, the histogram and the given gauges.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "berth_launches_total",
            "Container launches attempted.",
            self.launches.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "berth_launch_failures_total",
            "Container launches that failed.",
            self.launch_failures.load(Ordering::Relaxed),
        );
        {
            let histogram = self.latency.lock().expect("metrics lock");
            let name = "berth_launch_latency_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Time from a launch request to the workload running."
            );
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (count, bound) in histogram.buckets.iter().zip(LATENCY_BUCKETS) {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
            let _ = writeln!(out, "{name}_sum {}", histogram.sum);
            let _ = writeln!(out, "{name}_count {}", histogram.count);
        }
        for gauge in gauges {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} gauge",
                gauge.name, gauge.help, gauge.name
            );
            for (labels, value) in &gauge.samples {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                if labels.is_empty() {
                    let _ = writeln!(out, "{} {value}", gauge.name);
                } else {
                    let _ = writeln!(out, "{}{{{}}} {value}", gauge.name, labels.join(","));
                }
            }
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.launch_succeeded(Duration::from_millis(30));
        m.launch_failed();
        let text = m.render(&[Gauge {
            name: "berth_tasks",
            help: "Tasks by state.",
            samples: vec![(vec![("state", "TASK_RUNNING".into())], 2.0)],
        }]);
        assert!(text.contains("berth_launches_total 2"));
        assert!(text.contains("berth_launch_failures_total 1"));
        assert!(text.contains("berth_launch_latency_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("berth_launch_latency_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("berth_tasks{state=\"TASK_RUNNING\"} 2"));
    }
}
