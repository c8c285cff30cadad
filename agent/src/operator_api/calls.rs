//! The responses of the v1 agent API calls berth serves, built from a [`Model`] (pure).
//!
//! Each function returns the complete `agent::Response` of its call, with `type` set, as Mesos'
//! `Http::getX` does.

use berth_proto::mesos::v1::{
    self as mesos,
    agent::{Response, response},
};

use super::model::{ExecutorView, Model, Phase, Snapshot, agent_info};
use crate::usage::TaskUsage;

/// The Mesos release whose agent API and behaviour berth follows; reported as the agent's version
/// (Mesos tools and masters compare it, and want SemVer >= 1.0.0).
pub const MESOS_VERSION: &str = crate::mesos::link::MESOS_PROTOCOL_VERSION;

fn typed(ty: response::Type) -> Response {
    Response {
        r#type: Some(ty as i32),
        ..Default::default()
    }
}

/// `GET_HEALTH`: the agent answers, so it is healthy.
pub fn get_health() -> Response {
    Response {
        get_health: Some(response::GetHealth { healthy: true }),
        ..typed(response::Type::GetHealth)
    }
}

/// `GET_FLAGS`.
pub fn get_flags(flags: &[(String, String)]) -> Response {
    Response {
        get_flags: Some(response::GetFlags {
            flags: flags
                .iter()
                .map(|(name, value)| mesos::Flag {
                    name: name.clone(),
                    value: Some(value.clone()),
                })
                .collect(),
        }),
        ..typed(response::Type::GetFlags)
    }
}

/// The agent's version: [`MESOS_VERSION`], with berth's own version as the build's tag.
pub fn version_info() -> mesos::VersionInfo {
    mesos::VersionInfo {
        version: MESOS_VERSION.into(),
        build_user: Some("berth".into()),
        git_tag: Some(format!("berth-{}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    }
}

/// `GET_VERSION`.
pub fn get_version() -> Response {
    Response {
        get_version: Some(response::GetVersion {
            version_info: version_info(),
        }),
        ..typed(response::Type::GetVersion)
    }
}

/// `GET_METRICS`, from a `name -> value` snapshot.
pub fn get_metrics(metrics: &[(String, f64)]) -> Response {
    Response {
        get_metrics: Some(response::GetMetrics {
            metrics: metrics
                .iter()
                .map(|(name, value)| mesos::Metric {
                    name: name.clone(),
                    value: Some(*value),
                })
                .collect(),
        }),
        ..typed(response::Type::GetMetrics)
    }
}

/// The tasks by phase. Every task has its own executor, so a task's phase is its executor's.
pub fn tasks(model: &Model<'_>) -> response::GetTasks {
    let agent_id = &model.snapshot.agent_id;
    let mut out = response::GetTasks::default();
    for framework in model.all_frameworks() {
        for executor in framework
            .executors
            .iter()
            .chain(&framework.completed_executors)
        {
            let task = executor.task_proto(agent_id);
            match executor.phase {
                Phase::Queued => out.queued_tasks.push(task),
                Phase::Launched => out.launched_tasks.push(task),
                Phase::Terminated => out.terminated_tasks.push(task),
                Phase::Completed => out.completed_tasks.push(task),
            }
        }
    }
    out
}

/// The executors, active then completed.
pub fn executors(model: &Model<'_>) -> response::GetExecutors {
    let entry =
        |framework_id: &str, executor: &ExecutorView<'_>| response::get_executors::Executor {
            executor_info: executor.executor_info(framework_id),
        };
    let mut out = response::GetExecutors::default();
    for framework in model.all_frameworks() {
        out.executors
            .extend(framework.executors.iter().map(|e| entry(&framework.id, e)));
        out.completed_executors.extend(
            framework
                .completed_executors
                .iter()
                .map(|e| entry(&framework.id, e)),
        );
    }
    out
}

/// The frameworks, active and completed.
pub fn frameworks(model: &Model<'_>) -> response::GetFrameworks {
    let entry = |info: &mesos::FrameworkInfo| response::get_frameworks::Framework {
        framework_info: info.clone(),
    };
    response::GetFrameworks {
        frameworks: model.frameworks.iter().map(|f| entry(&f.info)).collect(),
        completed_frameworks: model
            .completed_frameworks
            .iter()
            .map(|f| entry(&f.info))
            .collect(),
    }
}

/// `GET_TASKS`.
pub fn get_tasks(model: &Model<'_>) -> Response {
    Response {
        get_tasks: Some(tasks(model)),
        ..typed(response::Type::GetTasks)
    }
}

/// `GET_EXECUTORS`.
pub fn get_executors(model: &Model<'_>) -> Response {
    Response {
        get_executors: Some(executors(model)),
        ..typed(response::Type::GetExecutors)
    }
}

/// `GET_FRAMEWORKS`.
pub fn get_frameworks(model: &Model<'_>) -> Response {
    Response {
        get_frameworks: Some(frameworks(model)),
        ..typed(response::Type::GetFrameworks)
    }
}

/// `GET_STATE`: tasks, executors and frameworks of one snapshot.
pub fn get_state(model: &Model<'_>) -> Response {
    Response {
        get_state: Some(response::GetState {
            get_tasks: Some(tasks(model)),
            get_executors: Some(executors(model)),
            get_frameworks: Some(frameworks(model)),
        }),
        ..typed(response::Type::GetState)
    }
}

/// `GET_AGENT`.
pub fn get_agent(snapshot: &Snapshot) -> Response {
    Response {
        get_agent: Some(response::GetAgent {
            agent_info: Some(agent_info(snapshot)),
        }),
        ..typed(response::Type::GetAgent)
    }
}

/// `GET_CONTAINERS`: the container of every executor that has not terminated, with its status
/// and, when it could be read, its resource statistics. berth has no nested or standalone
/// containers under the agent, so `show_nested`/`show_standalone` add nothing.
pub fn get_containers(model: &Model<'_>, usages: &[TaskUsage]) -> Response {
    let mut containers = Vec::new();
    for framework in &model.frameworks {
        for executor in &framework.executors {
            if !matches!(executor.phase, Phase::Queued | Phase::Launched) {
                continue;
            }
            let task = executor.task;
            let container_id = mesos::ContainerId {
                value: task.container_id.clone(),
                parent: None,
            };
            let statistics = usages
                .iter()
                .find(|u| u.task.container_id == task.container_id)
                .map(resource_statistics);
            containers.push(response::get_containers::Container {
                framework_id: Some(mesos::FrameworkId {
                    value: framework.id.clone(),
                }),
                executor_id: Some(executor.executor_id()),
                executor_name: Some(executor.name()),
                container_id: container_id.clone(),
                container_status: Some(mesos::ContainerStatus {
                    container_id: Some(container_id),
                    executor_pid: task.pid.and_then(|p| u32::try_from(p).ok()),
                    ..Default::default()
                }),
                resource_statistics: statistics,
            });
        }
    }
    Response {
        get_containers: Some(response::GetContainers { containers }),
        ..typed(response::Type::GetContainers)
    }
}

/// `GET_OPERATIONS`: berth applies no offer operations on the agent.
pub fn get_operations() -> Response {
    Response {
        get_operations: Some(response::GetOperations::default()),
        ..typed(response::Type::GetOperations)
    }
}

/// `GET_RESOURCE_PROVIDERS`: berth has none.
pub fn get_resource_providers() -> Response {
    Response {
        get_resource_providers: Some(response::GetResourceProviders::default()),
        ..typed(response::Type::GetResourceProviders)
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A container's usage as Mesos `ResourceStatistics` (`processes` counts every task of the
/// container's pids cgroup, threads included).
pub fn resource_statistics(u: &TaskUsage) -> mesos::ResourceStatistics {
    let usage = &u.usage;
    mesos::ResourceStatistics {
        timestamp: u.timestamp,
        processes: Some(saturating_u32(usage.pids_current)),
        cpus_user_time_secs: usage.cpu_user_ns.map(secs),
        cpus_system_time_secs: usage.cpu_system_ns.map(secs),
        cpus_limit: Some(u.task.limits.cpus),
        cpus_nr_periods: usage.cpu_nr_periods.map(saturating_u32),
        cpus_nr_throttled: usage.cpu_nr_throttled.map(saturating_u32),
        cpus_throttled_time_secs: usage.cpu_throttled_ns.map(secs),
        mem_total_bytes: Some(usage.mem_current_bytes),
        mem_limit_bytes: Some((u.task.limits.mem_mb * 1024.0 * 1024.0) as u64),
        mem_cache_bytes: usage.mem_cache_bytes,
        mem_rss_bytes: usage.mem_rss_bytes,
        disk_limit_bytes: usage.disk_limit_bytes,
        disk_used_bytes: usage.disk_used_bytes,
        ..Default::default()
    }
}
