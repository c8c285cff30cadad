//! The v0 `/state` document, in the shape the Mesos agent serves (upstream `Http::state`,
//! `FrameworkWriter`, `ExecutorWriter` and the `json()` writers of `src/common/http.cpp`): the
//! DC/OS UI and Mesos tools read `frameworks[].executors[].tasks[]` and each executor's
//! `directory` from it.
//!
//! Resources are objects of `name -> value`: scalars as numbers (`cpus`, `gpus`, `mem` and
//! `disk` always present), ranges as `"[31000-32000, 33000-33010]"`, sets as `"{a, b}"`.

use std::collections::BTreeMap;

use berth_proto::{codec, mesos::v1 as mesos};
use serde_json::{Map, Value, json};

use super::{
    calls::version_info,
    model::{ExecutorView, FrameworkView, Model, Phase, Snapshot, attribute},
};

/// The `/state` document of a snapshot.
pub fn state(model: &Model<'_>) -> Value {
    let snapshot = model.snapshot;
    let version = version_info();
    let total = snapshot.resources.to_proto();
    let allocated: Vec<mesos::Resource> = model
        .frameworks
        .iter()
        .flat_map(|f| &f.executors)
        .flat_map(ExecutorView::allocated_resources)
        .collect();
    let mut doc = json!({
        "version": version.version,
        "git_tag": version.git_tag,
        "build_date": version.build_date.unwrap_or_default(),
        "build_time": version.build_time.unwrap_or_default(),
        "build_user": version.build_user.unwrap_or_default(),
        "start_time": snapshot.start_time,
        "id": snapshot.agent_id,
        "pid": snapshot.pid,
        "hostname": snapshot.hostname,
        "capabilities": snapshot.capabilities,
        "resources": resources(&total),
        // berth has no reservations: every resource is unreserved, role `*`.
        "reserved_resources": {},
        "unreserved_resources": resources(&total),
        "reserved_resources_full": {},
        "unreserved_resources_full": total.iter().map(resource_full).collect::<Vec<_>>(),
        "reserved_resources_allocated": {},
        "unreserved_resources_allocated": resources(&allocated),
        "resource_providers": [],
        "attributes": attributes(&snapshot.attributes),
        "flags": flags(snapshot),
        "frameworks": model.frameworks.iter().map(|f| framework(model, f)).collect::<Vec<_>>(),
        "completed_frameworks": model
            .completed_frameworks
            .iter()
            .map(|f| framework(model, f))
            .collect::<Vec<_>>(),
    });
    if let Some(master) = &snapshot.master_hostname {
        doc["master_hostname"] = json!(master);
    }
    doc
}

fn flags(snapshot: &Snapshot) -> Value {
    Value::Object(
        snapshot
            .flags
            .iter()
            .map(|(name, value)| (name.clone(), json!(value)))
            .collect(),
    )
}

/// Attributes as `name -> value`: scalars as numbers, ranges and sets as text, text as is.
pub fn attributes(attributes: &[(String, String)]) -> Value {
    let mut object = Map::new();
    for (name, text) in attributes {
        let attribute = attribute(name, text);
        let value = match (&attribute.scalar, &attribute.ranges, &attribute.set) {
            (Some(scalar), _, _) => json!(scalar.value),
            (_, Some(ranges), _) => json!(ranges_text(ranges)),
            (_, _, Some(set)) => json!(format!("{{{}}}", set.item.join(", "))),
            _ => json!(text),
        };
        object.insert(name.clone(), value);
    }
    Value::Object(object)
}

fn ranges_text(ranges: &mesos::value::Ranges) -> String {
    let list: Vec<String> = ranges
        .range
        .iter()
        .map(|r| format!("{}-{}", r.begin, r.end))
        .collect();
    format!("[{}]", list.join(", "))
}

/// Resources as Mesos' v0 `json(Resources)` writes them.
pub fn resources(resources: &[mesos::Resource]) -> Value {
    let mut scalars: BTreeMap<String, f64> = ["cpus", "gpus", "mem", "disk"]
        .into_iter()
        .map(|n| (n.to_string(), 0.0))
        .collect();
    let mut ranges: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for resource in resources {
        let name = if resource.revocable.is_some() {
            format!("{}_revocable", resource.name)
        } else {
            resource.name.clone()
        };
        if let Some(scalar) = &resource.scalar {
            *scalars.entry(name).or_default() += scalar.value;
        } else if let Some(r) = &resource.ranges {
            ranges
                .entry(name)
                .or_default()
                .extend(r.range.iter().map(|r| (r.begin, r.end)));
        } else if let Some(s) = &resource.set {
            sets.entry(name).or_default().extend(s.item.iter().cloned());
        }
    }
    let mut object = Map::new();
    for (name, value) in scalars {
        // Mesos keeps scalars in fixed point with three decimals.
        object.insert(name, json!((value * 1000.0).round() / 1000.0));
    }
    for (name, list) in ranges {
        let merged = berth_proto::resources::range_list(
            &[berth_proto::resources::ranges(&name, &list)],
            &name,
        );
        let ranges = mesos::value::Ranges {
            range: merged
                .into_iter()
                .map(|(begin, end)| mesos::value::Range { begin, end })
                .collect(),
        };
        object.insert(name, json!(ranges_text(&ranges)));
    }
    for (name, items) in sets {
        object.insert(name, json!(format!("{{{}}}", items.join(", "))));
    }
    Value::Object(object)
}

/// One resource as protobuf JSON, with the pre-refinement `role` Mesos still writes.
fn resource_full(resource: &mesos::Resource) -> Value {
    let mut value = codec::to_json(resource);
    if value.get("role").is_none() {
        value["role"] = json!("*");
    }
    value
}

fn framework(model: &Model<'_>, framework: &FrameworkView<'_>) -> Value {
    let info = &framework.info;
    let multi_role = info
        .capabilities
        .iter()
        .any(|c| c.r#type() == mesos::framework_info::capability::Type::MultiRole);
    let mut value = json!({
        "id": framework.id,
        "name": info.name,
        "user": info.user,
        "failover_timeout": info.failover_timeout(),
        "checkpoint": info.checkpoint(),
        "hostname": info.hostname(),
    });
    if let Some(principal) = &info.principal {
        value["principal"] = json!(principal);
    }
    // For multi-role frameworks Mesos writes `roles` and leaves `role` out.
    if multi_role {
        value["roles"] = json!(info.roles);
    } else {
        value["role"] = json!(info.role());
    }
    value["executors"] = framework
        .executors
        .iter()
        .map(|e| executor(model, e))
        .collect();
    value["completed_executors"] = framework
        .completed_executors
        .iter()
        .map(|e| executor(model, e))
        .collect();
    value
}

fn executor(model: &Model<'_>, executor: &ExecutorView<'_>) -> Value {
    let info = executor.executor_info(&executor.task.framework_id);
    let mut value = json!({
        "id": info.executor_id.value,
        "name": info.name.clone().unwrap_or_default(),
        "source": info.source.clone().unwrap_or_default(),
        "container": executor.task.container_id,
        "directory": executor.directory,
        "resources": resources(&executor.allocated_resources()),
    });
    if let Some(labels) = &info.labels {
        value["labels"] = labels_json(labels);
    }
    let (tasks, queued, completed) = match executor.phase {
        Phase::Queued => (vec![], vec![queued_task(model, executor)], vec![]),
        Phase::Launched => (vec![task(model, executor)], vec![], vec![]),
        // Mesos lists terminated (unacknowledged) tasks with the completed ones.
        Phase::Terminated | Phase::Completed => (vec![], vec![], vec![task(model, executor)]),
    };
    value["tasks"] = json!(tasks);
    value["queued_tasks"] = json!(queued);
    value["completed_tasks"] = json!(completed);
    value
}

fn labels_json(labels: &mesos::Labels) -> Value {
    labels.labels.iter().map(codec::to_json).collect()
}

/// A task as Mesos' `json(Task)` writes it.
fn task(model: &Model<'_>, executor: &ExecutorView<'_>) -> Value {
    let agent_id = &model.snapshot.agent_id;
    let proto = executor.task_proto(agent_id);
    let mut value = json!({
        "id": proto.task_id.value,
        "name": proto.name,
        "framework_id": proto.framework_id.value,
        // Command tasks have no executor id in their `Task` (the executor's id is the task's).
        "executor_id": "",
        "slave_id": agent_id,
        "state": proto.state().as_str_name(),
        "resources": resources(&proto.resources),
        "role": executor.role(),
        "statuses": proto.statuses.iter().map(status).collect::<Vec<_>>(),
    });
    if let Some(user) = &proto.user {
        value["user"] = json!(user);
    }
    if let Some(labels) = &proto.labels {
        value["labels"] = labels_json(labels);
    }
    if let Some(container) = &proto.container {
        value["container"] = codec::to_json(container);
    }
    value
}

/// A task that waits for its executor, as Mesos' `json(TaskInfo)` writes it.
fn queued_task(model: &Model<'_>, executor: &ExecutorView<'_>) -> Value {
    let task = executor.task;
    let mut value = json!({
        "id": task.id,
        "name": task.name,
        "slave_id": model.snapshot.agent_id,
        "resources": resources(&executor.resources()),
        "role": executor.role(),
    });
    if let Some(command) = executor.task_info.as_ref().and_then(|i| i.command.as_ref()) {
        value["command"] = command_json(command);
    }
    value
}

fn command_json(command: &mesos::CommandInfo) -> Value {
    let mut value = json!({
        "argv": command.arguments,
        "uris": command
            .uris
            .iter()
            .map(|u| json!({"value": u.value, "executable": u.executable()}))
            .collect::<Vec<_>>(),
    });
    if let Some(shell) = command.shell {
        value["shell"] = json!(shell);
    }
    if let Some(v) = &command.value {
        value["value"] = json!(v);
    }
    if let Some(environment) = &command.environment {
        value["environment"] = codec::to_json(environment);
    }
    value
}

/// A status as Mesos' `json(TaskStatus)` writes it.
fn status(status: &mesos::TaskStatus) -> Value {
    let mut value = json!({
        "state": status.state().as_str_name(),
        "timestamp": status.timestamp(),
    });
    if let Some(labels) = &status.labels {
        value["labels"] = labels_json(labels);
    }
    if let Some(container) = &status.container_status {
        let mut c = Map::new();
        if let Some(id) = &container.container_id {
            c.insert("container_id".into(), codec::to_json(id));
        }
        if !container.network_infos.is_empty() {
            c.insert(
                "network_infos".into(),
                container.network_infos.iter().map(codec::to_json).collect(),
            );
        }
        value["container_status"] = Value::Object(c);
    }
    if let Some(healthy) = status.healthy {
        value["healthy"] = json!(healthy);
    }
    value
}
