//! Unit tests of the operator API: content negotiation, call decoding and validation, the model
//! (phases, frameworks, executors), every v1 response, the v0 `/state` shape, metrics.

use std::{collections::BTreeMap, path::PathBuf};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use berth_proto::{
    codec::{self, ContentType},
    mesos::v1::{self as mesos, agent},
};
use serde_json::{Value, json};

use super::{
    OperatorApiError, accepts, calls, decode_call, fill_empty_lists, metrics,
    model::{Model, Phase, Snapshot, attribute},
    negotiate, state_v0,
};
use crate::{
    task::{StatusRecord, TaskLimits, TaskRecord},
    usage::TaskUsage,
};

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_static(value));
    }
    map
}

#[test]
fn accept_header_follows_mesos() {
    let json = ContentType::JSON;
    let pb = ContentType::PROTOBUF;
    assert!(accepts(None, json));
    assert!(accepts(Some("*/*"), pb));
    assert!(accepts(Some("application/*"), json));
    assert!(!accepts(Some("application/x-protobuf"), json));
    assert!(accepts(Some("application/x-protobuf"), pb));
    // The most specific entry decides.
    assert!(!accepts(Some("application/json;q=0, */*"), json));
    assert!(accepts(Some("application/json;q=0, */*"), pb));
    assert!(!accepts(Some("text/html"), json));
}

#[test]
fn negotiation_picks_encodings_like_mesos() {
    let pb = ContentType::Protobuf;
    let js = ContentType::Json;
    // No Accept: JSON, whatever the request's encoding.
    assert_eq!(
        negotiate(&headers(&[("content-type", "application/x-protobuf")])).unwrap(),
        (pb, js)
    );
    assert_eq!(
        negotiate(&headers(&[
            ("content-type", "application/json"),
            ("accept", "application/x-protobuf")
        ]))
        .unwrap(),
        (js, pb)
    );
    // JSON wins when both are allowed.
    assert_eq!(
        negotiate(&headers(&[
            ("content-type", "application/x-protobuf"),
            ("accept", "application/x-protobuf, application/json")
        ]))
        .unwrap(),
        (pb, js)
    );
    let status = |h: &[(&'static str, &'static str)]| negotiate(&headers(h)).unwrap_err().status();
    assert_eq!(status(&[]), StatusCode::BAD_REQUEST);
    assert_eq!(
        status(&[("content-type", "text/plain")]),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        status(&[("content-type", "application/recordio")]),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        status(&[
            ("content-type", "application/json"),
            ("accept", "text/html")
        ]),
        StatusCode::NOT_ACCEPTABLE
    );
    assert_eq!(
        status(&[
            ("content-type", "application/json"),
            ("message-accept", "application/json")
        ]),
        StatusCode::NOT_ACCEPTABLE
    );
    assert_eq!(
        status(&[
            ("content-type", "application/json"),
            ("message-content-type", "application/json")
        ]),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

#[test]
fn calls_decode_and_validate() {
    use agent::call::Type;
    let (_, kind) = decode_call(br#"{"type":"GET_STATE"}"#, ContentType::Json).unwrap();
    assert_eq!(kind, Type::GetState);
    let protobuf = codec::encode(
        &agent::Call {
            r#type: Some(Type::GetContainers as i32),
            get_containers: Some(agent::call::GetContainers {
                show_nested: Some(true),
                show_standalone: Some(false),
            }),
            ..Default::default()
        },
        ContentType::Protobuf,
    );
    let (call, kind) = decode_call(&protobuf, ContentType::Protobuf).unwrap();
    assert_eq!(kind, Type::GetContainers);
    assert_eq!(call.get_containers.unwrap().show_nested, Some(true));
    // GET_METRICS needs its message (the timeout in it is optional).
    let err = decode_call(br#"{"type":"GET_METRICS"}"#, ContentType::Json).unwrap_err();
    assert!(
        matches!(
            err,
            OperatorApiError::MissingArgument {
                field: "get_metrics",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        decode_call(
            br#"{"type":"GET_METRICS","get_metrics":{}}"#,
            ContentType::Json
        )
        .is_ok()
    );
    // Unknown names read as "no type"; unknown numbers are named.
    let err = decode_call(br#"{"type":"GET_EVERYTHING"}"#, ContentType::Json).unwrap_err();
    assert!(matches!(err, OperatorApiError::MissingType), "{err}");
    let mut unknown = Vec::new();
    prost::encoding::int32::encode(1, &999, &mut unknown);
    let err = decode_call(&unknown, ContentType::Protobuf).unwrap_err();
    assert!(matches!(err, OperatorApiError::UnknownType(999)), "{err}");
    // Garbage in either encoding is a decode error with the reason.
    let err = decode_call(b"\xff\xff\xff\xff", ContentType::Protobuf).unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(err.to_string().contains("mesos.v1.agent.Call"), "{err}");
    let err = decode_call(b"{\"type\":", ContentType::Json).unwrap_err();
    assert!(matches!(err, OperatorApiError::Decode(_)), "{err}");
    // UNKNOWN itself is a valid call that no agent implements.
    let (_, kind) = decode_call(br#"{"type":"UNKNOWN"}"#, ContentType::Json).unwrap();
    assert_eq!(kind, Type::Unknown);
}

// ---------------------------------------------------------------------------------------------
// fixtures
// ---------------------------------------------------------------------------------------------

fn status(state: &str, at: f64, acked: bool) -> StatusRecord {
    StatusRecord {
        state: state.into(),
        timestamp: at,
        message: None,
        reason: None,
        source: "SOURCE_EXECUTOR".into(),
        uuid: "00ff".into(),
        acked,
        healthy: None,
    }
}

fn framework_json(name: &str, multi_role: bool) -> Value {
    let mut info = mesos::FrameworkInfo {
        user: "root".into(),
        name: name.into(),
        principal: Some("ops".into()),
        ..Default::default()
    };
    if multi_role {
        info.roles = vec!["web".into()];
        info.capabilities = vec![mesos::framework_info::Capability {
            r#type: Some(mesos::framework_info::capability::Type::MultiRole as i32),
        }];
    }
    codec::to_json(&info)
}

fn task(id: &str, framework: &str, created: f64, statuses: Vec<StatusRecord>) -> TaskRecord {
    let info = mesos::TaskInfo {
        name: format!("{id}-name"),
        task_id: mesos::TaskId { value: id.into() },
        agent_id: mesos::AgentId {
            value: "agent-1".into(),
        },
        resources: vec![
            berth_proto::resources::scalar("cpus", 0.5),
            berth_proto::resources::scalar("mem", 64.0),
            berth_proto::resources::ranges("ports", &[(31000, 31001)]),
        ],
        command: Some(mesos::CommandInfo {
            value: Some("sleep 1000 && echo done".into()),
            user: Some("nobody".into()),
            ..Default::default()
        }),
        labels: Some(mesos::Labels {
            labels: vec![mesos::Label {
                key: "tier".into(),
                value: Some("web".into()),
            }],
        }),
        ..Default::default()
    };
    TaskRecord {
        id: id.into(),
        name: format!("{id}-name"),
        framework_id: framework.into(),
        container_id: format!("c-{id}"),
        task_info: codec::to_json(&info),
        limits: TaskLimits {
            cpus: 0.5,
            mem_mb: 64.0,
            pids: None,
        },
        state: statuses
            .last()
            .map(|s| s.state.clone())
            .unwrap_or_else(|| "TASK_STAGING".into()),
        statuses,
        pid: Some(4242),
        created_at: created,
        started_at: None,
        exit_code: None,
        grace_secs: 3.0,
        framework_info: framework_json(&format!("{framework}-name"), framework == "fw-multi"),
        ip: None,
        health: None,
    }
}

/// fw-a: one running, one queued, one terminated (unacked), one completed task;
/// fw-multi: a running multi-role task; fw-done: only completed tasks;
/// fw-old: a completed task checkpointed without a FrameworkInfo.
fn snapshot() -> Snapshot {
    let running = task(
        "running",
        "fw-a",
        10.0,
        vec![
            status("TASK_STARTING", 10.0, true),
            status("TASK_RUNNING", 11.0, true),
        ],
    );
    let queued = task("queued", "fw-a", 12.0, vec![]);
    let terminated = task(
        "terminated",
        "fw-a",
        13.0,
        vec![
            status("TASK_RUNNING", 13.0, true),
            status("TASK_FAILED", 14.0, false),
        ],
    );
    let completed = task(
        "completed",
        "fw-a",
        9.0,
        vec![status("TASK_FINISHED", 9.5, true)],
    );
    let multi = task(
        "multi",
        "fw-multi",
        15.0,
        vec![status("TASK_RUNNING", 15.0, true)],
    );
    let done = task(
        "done",
        "fw-done",
        5.0,
        vec![status("TASK_KILLED", 6.0, true)],
    );
    let mut old = task(
        "old",
        "fw-old",
        1.0,
        vec![status("TASK_FINISHED", 2.0, true)],
    );
    old.framework_info = Value::Null;
    old.task_info = Value::Null;
    let tasks = vec![running, queued, terminated, completed, multi, done, old];
    let sandboxes: BTreeMap<String, PathBuf> = tasks
        .iter()
        .map(|t| {
            (
                t.container_id.clone(),
                PathBuf::from(format!("/work/sandboxes/{}", t.container_id)),
            )
        })
        .collect();
    Snapshot {
        agent_id: "agent-1".into(),
        hostname: "node-1".into(),
        pid: "slave(1)@10.0.0.1:5051".into(),
        port: 5051,
        resources: "cpus:4;mem:8192;disk:1000;ports:[31000-32000,33000-33010]"
            .parse()
            .unwrap(),
        attributes: vec![
            ("rack".into(), "r1".into()),
            ("level".into(), "3".into()),
            ("slots".into(), "[1-4]".into()),
            ("zones".into(), "{a,b}".into()),
        ],
        flags: vec![
            ("dev".into(), "true".into()),
            ("work_dir".into(), "/work".into()),
        ],
        capabilities: vec!["MULTI_ROLE".into()],
        start_time: 1.0,
        master_hostname: Some("master-1".into()),
        tasks,
        sandboxes,
    }
}

fn ids(tasks: &[mesos::Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.task_id.value.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// model and v1 responses
// ---------------------------------------------------------------------------------------------

#[test]
fn tasks_are_grouped_by_phase() {
    let snapshot = snapshot();
    let phase = |id: &str| Phase::of(snapshot.tasks.iter().find(|t| t.id == id).unwrap());
    assert_eq!(phase("queued"), Phase::Queued);
    assert_eq!(phase("running"), Phase::Launched);
    assert_eq!(phase("terminated"), Phase::Terminated);
    assert_eq!(phase("completed"), Phase::Completed);

    let model = Model::new(&snapshot);
    let tasks = calls::tasks(&model);
    assert!(tasks.pending_tasks.is_empty());
    assert_eq!(ids(&tasks.queued_tasks), ["queued"]);
    assert_eq!(ids(&tasks.launched_tasks), ["running", "multi"]);
    assert_eq!(ids(&tasks.terminated_tasks), ["terminated"]);
    assert_eq!(ids(&tasks.completed_tasks), ["completed", "old", "done"]);

    let running = &tasks.launched_tasks[0];
    assert_eq!(running.state(), mesos::TaskState::TaskRunning);
    assert_eq!(running.framework_id.value, "fw-a");
    assert_eq!(running.agent_id.value, "agent-1");
    assert_eq!(
        running.executor_id, None,
        "command tasks carry no executor id"
    );
    assert_eq!(running.user.as_deref(), Some("nobody"));
    assert_eq!(running.statuses.len(), 2);
    assert_eq!(
        running.statuses[1]
            .container_status
            .as_ref()
            .unwrap()
            .container_id
            .as_ref()
            .unwrap()
            .value,
        "c-running"
    );
    assert_eq!(
        berth_proto::resources::scalar_sum(&running.resources, "mem"),
        64.0
    );
    // A checkpoint without TaskInfo still gives resources from the limits.
    let old = tasks
        .completed_tasks
        .iter()
        .find(|t| t.task_id.value == "old")
        .unwrap();
    assert_eq!(
        berth_proto::resources::scalar_sum(&old.resources, "cpus"),
        0.5
    );
    // Every message is complete (required fields set).
    codec::check_required(&calls::get_tasks(&model)).unwrap();
}

#[test]
fn frameworks_and_executors() {
    let snapshot = snapshot();
    let model = Model::new(&snapshot);
    let frameworks = calls::frameworks(&model);
    let names = |list: &[agent::response::get_frameworks::Framework]| -> Vec<(String, String)> {
        list.iter()
            .map(|f| {
                (
                    f.framework_info.id.as_ref().unwrap().value.clone(),
                    f.framework_info.name.clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        names(&frameworks.frameworks),
        [
            ("fw-a".to_string(), "fw-a-name".to_string()),
            ("fw-multi".into(), "fw-multi-name".into())
        ]
    );
    // Completed frameworks, oldest first; one without a FrameworkInfo still has its id.
    assert_eq!(
        names(&frameworks.completed_frameworks),
        [
            ("fw-old".to_string(), String::new()),
            ("fw-done".into(), "fw-done-name".into())
        ]
    );

    let executors = calls::executors(&model);
    let executor_ids = |list: &[agent::response::get_executors::Executor]| -> Vec<String> {
        list.iter()
            .map(|e| e.executor_info.executor_id.value.clone())
            .collect()
    };
    assert_eq!(
        executor_ids(&executors.executors),
        ["running", "queued", "terminated", "multi"]
    );
    assert_eq!(
        executor_ids(&executors.completed_executors),
        ["completed", "old", "done"]
    );
    let running = &executors.executors[0].executor_info;
    assert_eq!(running.framework_id.as_ref().unwrap().value, "fw-a");
    assert_eq!(running.source.as_deref(), Some("running"));
    assert_eq!(
        running.name.as_deref(),
        Some("Command Executor (Task: running) (Command: sh -c 'sleep 1000 &...')")
    );
    assert_eq!(running.labels.as_ref().unwrap().labels[0].key, "tier");
    codec::check_required(&calls::get_state(&model)).unwrap();
}

#[test]
fn executor_names_follow_mesos() {
    let mut snapshot = snapshot();
    let mut short = snapshot.tasks[0].clone();
    let info = mesos::TaskInfo {
        command: Some(mesos::CommandInfo {
            shell: Some(false),
            value: Some("/bin/ls".into()),
            arguments: vec!["ls".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    short.task_info = codec::to_json(&info);
    snapshot.tasks = vec![short];
    let model = Model::new(&snapshot);
    let executor = &model.frameworks[0].executors[0];
    assert_eq!(
        executor.name(),
        "Command Executor (Task: running) (Command: [/bin/ls, ls])"
    );
}

#[test]
fn state_response_has_everything_and_empty_lists_in_json() {
    let snapshot = Snapshot::default();
    let model = Model::new(&snapshot);
    let mut value = codec::to_json(&calls::get_state(&model));
    fill_empty_lists(&mut value);
    assert_eq!(
        value,
        json!({
            "type": "GET_STATE",
            "get_state": {
                "get_tasks": {
                    "pending_tasks": [], "queued_tasks": [], "launched_tasks": [],
                    "terminated_tasks": [], "completed_tasks": []
                },
                "get_executors": {"executors": [], "completed_executors": []},
                "get_frameworks": {"frameworks": [], "completed_frameworks": []}
            }
        })
    );
    // The same response round-trips through protobuf.
    let response = calls::get_state(&Model::new(&self::snapshot()));
    let bytes = codec::encode(&response, ContentType::Protobuf);
    let back: agent::Response = codec::decode(&bytes, ContentType::Protobuf).unwrap();
    assert_eq!(back, response);
}

#[test]
fn simple_responses() {
    let health = calls::get_health();
    assert_eq!(
        codec::to_json(&health),
        json!({"type": "GET_HEALTH", "get_health": {"healthy": true}})
    );
    let flags = calls::get_flags(&[("work_dir".into(), "/w".into())]);
    assert_eq!(
        codec::to_json(&flags),
        json!({"type": "GET_FLAGS", "get_flags": {"flags": [{"name": "work_dir", "value": "/w"}]}})
    );
    let version = calls::get_version();
    assert_eq!(version.r#type(), agent::response::Type::GetVersion);
    assert_eq!(
        version.get_version.unwrap().version_info.version,
        calls::MESOS_VERSION
    );
    let metrics = calls::get_metrics(&[("slave/registered".into(), 1.0)]);
    assert_eq!(
        codec::to_json(&metrics)["get_metrics"]["metrics"],
        json!([{"name": "slave/registered", "value": 1.0}])
    );
    let mut empty = codec::to_json(&calls::get_metrics(&[]));
    fill_empty_lists(&mut empty);
    assert_eq!(
        empty,
        json!({"type": "GET_METRICS", "get_metrics": {"metrics": []}})
    );
    assert_eq!(
        codec::to_json(&calls::get_operations()),
        json!({"type": "GET_OPERATIONS", "get_operations": {}})
    );
    assert_eq!(
        codec::to_json(&calls::get_resource_providers()),
        json!({"type": "GET_RESOURCE_PROVIDERS", "get_resource_providers": {}})
    );
}

#[test]
fn agent_info_types_attributes() {
    let snapshot = snapshot();
    let response = calls::get_agent(&snapshot);
    let info = response.get_agent.unwrap().agent_info.unwrap();
    assert_eq!(info.id.unwrap().value, "agent-1");
    assert_eq!(info.hostname, "node-1");
    assert_eq!(info.port, Some(5051));
    assert_eq!(
        berth_proto::resources::scalar_sum(&info.resources, "cpus"),
        4.0
    );
    assert_eq!(
        berth_proto::resources::range_list(&info.resources, "ports"),
        [(31000, 32000), (33000, 33010)]
    );
    use mesos::value::Type;
    let types: Vec<(String, Type)> = info
        .attributes
        .iter()
        .map(|a| (a.name.clone(), a.r#type()))
        .collect();
    assert_eq!(
        types,
        [
            ("rack".to_string(), Type::Text),
            ("level".into(), Type::Scalar),
            ("slots".into(), Type::Ranges),
            ("zones".into(), Type::Set)
        ]
    );
    assert_eq!(attribute("zones", "{a, b}").set.unwrap().item, ["a", "b"]);
}

#[test]
fn containers_of_running_executors_with_statistics() {
    let snapshot = snapshot();
    let model = Model::new(&snapshot);
    let running = snapshot.tasks.iter().find(|t| t.id == "running").unwrap();
    let usage = TaskUsage {
        task: running.clone(),
        usage: berth_isolators::Usage {
            cpu_usage_ns: 3_000_000_000,
            cpu_user_ns: Some(2_000_000_000),
            cpu_system_ns: Some(1_000_000_000),
            mem_current_bytes: 10 << 20,
            mem_rss_bytes: Some(8 << 20),
            pids_current: 3,
            cpu_nr_periods: Some(10),
            cpu_nr_throttled: Some(2),
            disk_used_bytes: Some(4096),
            ..Default::default()
        },
        timestamp: 100.0,
    };
    let response = calls::get_containers(&model, &[usage]);
    let containers = response.get_containers.unwrap().containers;
    let listed: Vec<&str> = containers
        .iter()
        .map(|c| c.container_id.value.as_str())
        .collect();
    // Running and queued executors; not the terminated or completed ones.
    assert_eq!(listed, ["c-running", "c-queued", "c-multi"]);
    let c = &containers[0];
    assert_eq!(c.executor_id.as_ref().unwrap().value, "running");
    assert_eq!(c.framework_id.as_ref().unwrap().value, "fw-a");
    assert_eq!(
        c.container_status.as_ref().unwrap().executor_pid,
        Some(4242)
    );
    let stats = c.resource_statistics.as_ref().unwrap();
    assert_eq!(stats.timestamp, 100.0);
    assert_eq!(stats.cpus_user_time_secs, Some(2.0));
    assert_eq!(stats.cpus_system_time_secs, Some(1.0));
    assert_eq!(stats.cpus_limit, Some(0.5));
    assert_eq!(stats.mem_total_bytes, Some(10 << 20));
    assert_eq!(stats.mem_limit_bytes, Some(64 << 20));
    assert_eq!(stats.mem_rss_bytes, Some(8 << 20));
    assert_eq!(stats.processes, Some(3));
    assert_eq!(stats.cpus_nr_throttled, Some(2));
    assert_eq!(stats.disk_used_bytes, Some(4096));
    assert!(containers[1].resource_statistics.is_none());
    let json = codec::to_json(&calls::get_containers(&model, &[]));
    assert_eq!(
        json["get_containers"]["containers"][0]["container_id"]["value"],
        "c-running"
    );
}

// ---------------------------------------------------------------------------------------------
// v0 /state
// ---------------------------------------------------------------------------------------------

#[test]
fn v0_state_has_the_mesos_shape() {
    let snapshot = snapshot();
    let state = state_v0::state(&Model::new(&snapshot));
    assert_eq!(state["id"], "agent-1");
    assert_eq!(state["pid"], "slave(1)@10.0.0.1:5051");
    assert_eq!(state["hostname"], "node-1");
    assert_eq!(state["version"], calls::MESOS_VERSION);
    assert_eq!(state["master_hostname"], "master-1");
    assert_eq!(state["capabilities"], json!(["MULTI_ROLE"]));
    assert_eq!(
        state["resources"],
        json!({"cpus": 4.0, "gpus": 0.0, "mem": 8192.0, "disk": 1000.0,
               "ports": "[31000-32000, 33000-33010]"})
    );
    assert_eq!(state["unreserved_resources"], state["resources"]);
    assert_eq!(state["reserved_resources"], json!({}));
    assert_eq!(state["unreserved_resources_full"][0]["role"], "*");
    // Allocated: running + queued + multi (3 x 0.5 cpus, 3 x 2 ports).
    assert_eq!(state["unreserved_resources_allocated"]["cpus"], 1.5);
    assert_eq!(
        state["unreserved_resources_allocated"]["ports"],
        "[31000-31001]"
    );
    assert_eq!(
        state["attributes"],
        json!({"rack": "r1", "level": 3.0, "slots": "[1-4]", "zones": "{a, b}"})
    );
    assert_eq!(state["flags"], json!({"dev": "true", "work_dir": "/work"}));
    for key in ["start_time", "build_date", "build_time", "build_user"] {
        assert!(state.get(key).is_some(), "{key} missing: {state:#}");
    }

    let frameworks = state["frameworks"].as_array().unwrap();
    assert_eq!(frameworks.len(), 2);
    let fw = &frameworks[0];
    assert_eq!(fw["id"], "fw-a");
    assert_eq!(fw["name"], "fw-a-name");
    assert_eq!(fw["user"], "root");
    assert_eq!(fw["role"], "*");
    assert_eq!(fw["principal"], "ops");
    assert!(fw.get("roles").is_none());
    assert_eq!(frameworks[1]["roles"], json!(["web"]));
    assert!(frameworks[1].get("role").is_none());

    let executors = fw["executors"].as_array().unwrap();
    let executor_ids: Vec<&str> = executors
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(executor_ids, ["running", "queued", "terminated"]);
    let running = &executors[0];
    assert_eq!(running["source"], "running");
    assert_eq!(running["container"], "c-running");
    assert_eq!(running["directory"], "/work/sandboxes/c-running");
    assert_eq!(running["resources"]["cpus"], 0.5);
    assert_eq!(running["labels"], json!([{"key": "tier", "value": "web"}]));
    let task = &running["tasks"][0];
    assert_eq!(task["id"], "running");
    assert_eq!(task["name"], "running-name");
    assert_eq!(task["framework_id"], "fw-a");
    assert_eq!(task["executor_id"], "");
    assert_eq!(task["slave_id"], "agent-1");
    assert_eq!(task["state"], "TASK_RUNNING");
    assert_eq!(task["role"], "*");
    assert_eq!(task["user"], "nobody");
    assert_eq!(task["resources"]["mem"], 64.0);
    assert_eq!(task["resources"]["ports"], "[31000-31001]");
    assert_eq!(
        task["statuses"][1],
        json!({"state": "TASK_RUNNING", "timestamp": 11.0,
               "container_status": {"container_id": {"value": "c-running"}}})
    );
    assert_eq!(running["queued_tasks"], json!([]));
    assert_eq!(running["completed_tasks"], json!([]));
    // A queued task is a TaskInfo, with its command.
    let queued = &executors[1]["queued_tasks"][0];
    assert_eq!(queued["id"], "queued");
    assert_eq!(queued["command"]["value"], "sleep 1000 && echo done");
    assert_eq!(queued["command"]["argv"], json!([]));
    assert_eq!(executors[1]["tasks"], json!([]));
    // Terminated (unacked) tasks are listed with the completed ones; they hold nothing.
    assert_eq!(executors[2]["completed_tasks"][0]["state"], "TASK_FAILED");
    assert_eq!(executors[2]["resources"]["cpus"], 0.0);
    assert_eq!(fw["completed_executors"][0]["id"], "completed");

    let completed: Vec<&str> = state["completed_frameworks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(completed, ["fw-old", "fw-done"]);
}

#[test]
fn completed_frameworks_are_capped_like_mesos() {
    let mut snapshot = snapshot();
    snapshot.tasks = (0..60)
        .map(|i| {
            task(
                &format!("t{i}"),
                &format!("fw-{i:02}"),
                f64::from(i),
                vec![status("TASK_FINISHED", f64::from(i), true)],
            )
        })
        .collect();
    let model = Model::new(&snapshot);
    assert!(model.frameworks.is_empty());
    assert_eq!(
        model.completed_frameworks.len(),
        super::model::MAX_COMPLETED_FRAMEWORKS
    );
    // The most recent ones are kept.
    assert_eq!(model.completed_frameworks[0].id, "fw-10");
    assert_eq!(model.completed_frameworks.last().unwrap().id, "fw-59");
}

// ---------------------------------------------------------------------------------------------
// metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_use_mesos_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("loadavg"), "0.50 0.25 0.10 1/100 4242\n").unwrap();
    std::fs::write(
        dir.path().join("meminfo"),
        "MemTotal:        4194304 kB\nMemFree:         1048576 kB\n",
    )
    .unwrap();
    let snapshot = snapshot();
    let model = Model::new(&snapshot);
    let counters = metrics::Counters {
        uptime_secs: 12.5,
        registered: true,
        launch_errors: 2,
    };
    let list = metrics::snapshot(&model, counters, dir.path());
    let get = |name: &str| {
        list.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{name} missing from {list:?}"))
    };
    assert_eq!(get("slave/uptime_secs"), 12.5);
    assert_eq!(get("slave/registered"), 1.0);
    assert_eq!(get("slave/container_launch_errors"), 2.0);
    assert_eq!(get("slave/tasks_running"), 2.0);
    assert_eq!(get("slave/tasks_staging"), 1.0);
    assert_eq!(get("slave/tasks_failed"), 1.0);
    assert_eq!(get("slave/tasks_finished"), 2.0);
    assert_eq!(get("slave/tasks_killed"), 1.0);
    assert_eq!(get("slave/executors_running"), 2.0);
    assert_eq!(get("slave/executors_registering"), 1.0);
    assert_eq!(get("slave/executors_terminated"), 4.0);
    assert_eq!(get("slave/frameworks_active"), 2.0);
    assert_eq!(get("slave/cpus_total"), 4.0);
    assert_eq!(get("slave/cpus_used"), 1.5);
    assert_eq!(get("slave/cpus_percent"), 1.5 / 4.0);
    assert_eq!(get("slave/mem_used"), 192.0);
    assert_eq!(get("slave/gpus_percent"), 0.0);
    assert_eq!(get("system/load_1min"), 0.5);
    assert_eq!(get("system/load_15min"), 0.1);
    assert_eq!(get("system/mem_total_bytes"), 4_294_967_296.0);
    assert_eq!(get("system/mem_free_bytes"), 1_073_741_824.0);
    assert!(get("system/cpus_total") >= 1.0);
    let mut sorted = list.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(list, sorted);
    // Without /proc files the system load and memory are left out, not made up.
    let empty = tempfile::tempdir().unwrap();
    let list = metrics::snapshot(&model, counters, empty.path());
    assert!(!list.iter().any(|(n, _)| n.starts_with("system/load")));
}

#[test]
fn checkpoints_written_before_framework_info_still_load() {
    let mut record = serde_json::to_value(&snapshot().tasks[0]).unwrap();
    record.as_object_mut().unwrap().remove("framework_info");
    let task: TaskRecord = serde_json::from_value(record).unwrap();
    assert_eq!(task.framework_info, Value::Null);
    let snapshot = Snapshot {
        tasks: vec![task],
        ..Snapshot::default()
    };
    let model = Model::new(&snapshot);
    let info = &model.frameworks[0].info;
    assert_eq!(info.id.as_ref().unwrap().value, "fw-a");
    codec::check_required(&calls::get_frameworks(&model)).unwrap();
}
