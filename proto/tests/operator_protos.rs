//! Spot checks of the v1 agent operator API descriptors (`mesos.v1.agent`) and the `mesos.v1`
//! types it answers with, against upstream Apache Mesos 1.12.

use berth_proto::{
    DESCRIPTOR_POOL,
    codec::{self, ContentType},
    mesos::v1::{self as mesos, agent},
};
use prost_reflect::Cardinality::{self, Optional as O, Repeated as R, Required as Q};

/// (field name, number, cardinality) of `message` must match.
fn assert_fields(message: &str, expected: &[(&str, u32, Cardinality)]) {
    let desc = DESCRIPTOR_POOL
        .get_message_by_name(message)
        .unwrap_or_else(|| panic!("{message} not in pool"));
    for &(name, number, cardinality) in expected {
        let field = desc
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("{message}.{name} missing"));
        assert_eq!(field.number(), number, "{message}.{name} number");
        assert_eq!(field.cardinality(), cardinality, "{message}.{name} label");
    }
}

#[test]
fn agent_call_and_response_match_upstream() {
    assert_fields(
        "mesos.v1.agent.Call",
        &[
            ("type", 1, O),
            ("get_metrics", 2, O),
            ("get_containers", 20, O),
        ],
    );
    assert_fields("mesos.v1.agent.Call.GetMetrics", &[("timeout", 1, O)]);
    assert_fields(
        "mesos.v1.agent.Call.GetContainers",
        &[("show_nested", 1, O), ("show_standalone", 2, O)],
    );
    assert_fields(
        "mesos.v1.agent.Response",
        &[
            ("type", 1, O),
            ("get_health", 2, O),
            ("get_flags", 3, O),
            ("get_version", 4, O),
            ("get_metrics", 5, O),
            ("get_state", 9, O),
            ("get_containers", 10, O),
            ("get_frameworks", 11, O),
            ("get_executors", 12, O),
            ("get_operations", 18, O),
            ("get_tasks", 13, O),
            ("get_agent", 15, O),
            ("get_resource_providers", 17, O),
        ],
    );
    assert_fields("mesos.v1.agent.Response.GetHealth", &[("healthy", 1, Q)]);
    assert_fields(
        "mesos.v1.agent.Response.GetVersion",
        &[("version_info", 1, Q)],
    );
    assert_fields(
        "mesos.v1.agent.Response.GetState",
        &[
            ("get_tasks", 1, O),
            ("get_executors", 2, O),
            ("get_frameworks", 3, O),
        ],
    );
    assert_fields(
        "mesos.v1.agent.Response.GetTasks",
        &[
            ("pending_tasks", 1, R),
            ("queued_tasks", 2, R),
            ("launched_tasks", 3, R),
            ("terminated_tasks", 4, R),
            ("completed_tasks", 5, R),
        ],
    );
    assert_fields(
        "mesos.v1.agent.Response.GetContainers.Container",
        &[
            ("framework_id", 1, O),
            ("executor_id", 2, O),
            ("executor_name", 3, O),
            ("container_id", 4, Q),
            ("container_status", 5, O),
            ("resource_statistics", 6, O),
        ],
    );
    assert_fields(
        "mesos.v1.agent.Response.GetFrameworks",
        &[("frameworks", 1, R), ("completed_frameworks", 2, R)],
    );
    assert_fields(
        "mesos.v1.agent.Response.GetExecutors",
        &[("executors", 1, R), ("completed_executors", 2, R)],
    );
    assert_fields("mesos.v1.agent.Response.GetAgent", &[("agent_info", 1, O)]);
}

#[test]
fn agent_enums_match_upstream() {
    use agent::{call, response};
    let calls = [
        (call::Type::Unknown, 0),
        (call::Type::GetHealth, 1),
        (call::Type::GetFlags, 2),
        (call::Type::GetVersion, 3),
        (call::Type::GetMetrics, 4),
        (call::Type::ReadFile, 8),
        (call::Type::GetState, 9),
        (call::Type::GetContainers, 10),
        (call::Type::GetFrameworks, 11),
        (call::Type::GetExecutors, 12),
        (call::Type::GetTasks, 13),
        (call::Type::LaunchNestedContainerSession, 17),
        (call::Type::GetAgent, 20),
        (call::Type::GetResourceProviders, 26),
        (call::Type::PruneImages, 30),
        (call::Type::GetOperations, 31),
        (call::Type::MarkResourceProviderGone, 32),
    ];
    for (ty, number) in calls {
        assert_eq!(ty as i32, number, "Call.{}", ty.as_str_name());
    }
    let all_calls = DESCRIPTOR_POOL
        .get_enum_by_name("mesos.v1.agent.Call.Type")
        .unwrap();
    assert_eq!(all_calls.values().count(), 33, "every upstream call type");
    let responses = [
        (response::Type::GetHealth, 1),
        (response::Type::GetState, 8),
        (response::Type::GetContainers, 9),
        (response::Type::GetFrameworks, 10),
        (response::Type::GetExecutors, 11),
        (response::Type::GetTasks, 12),
        (response::Type::GetAgent, 14),
        (response::Type::GetResourceProviders, 16),
        (response::Type::GetOperations, 17),
    ];
    for (ty, number) in responses {
        assert_eq!(ty as i32, number, "Response.{}", ty.as_str_name());
    }
}

#[test]
fn operator_types_match_upstream() {
    assert_fields("mesos.v1.Flag", &[("name", 1, Q), ("value", 2, O)]);
    assert_fields("mesos.v1.Metric", &[("name", 1, Q), ("value", 2, O)]);
    assert_fields(
        "mesos.v1.VersionInfo",
        &[
            ("version", 1, Q),
            ("build_date", 2, O),
            ("build_time", 3, O),
            ("build_user", 4, O),
            ("git_sha", 5, O),
            ("git_branch", 6, O),
            ("git_tag", 7, O),
        ],
    );
    assert_fields(
        "mesos.v1.ResourceStatistics",
        &[
            ("timestamp", 1, Q),
            ("processes", 30, O),
            ("threads", 31, O),
            ("cpus_user_time_secs", 2, O),
            ("cpus_system_time_secs", 3, O),
            ("cpus_limit", 4, O),
            ("cpus_nr_periods", 7, O),
            ("cpus_nr_throttled", 8, O),
            ("cpus_throttled_time_secs", 9, O),
            ("mem_total_bytes", 36, O),
            ("mem_limit_bytes", 6, O),
            ("mem_cache_bytes", 39, O),
            ("mem_rss_bytes", 5, O),
            ("disk_limit_bytes", 26, O),
            ("disk_used_bytes", 27, O),
        ],
    );
    assert_fields(
        "mesos.v1.Task",
        &[
            ("name", 1, Q),
            ("task_id", 2, Q),
            ("framework_id", 3, Q),
            ("executor_id", 4, O),
            ("agent_id", 5, Q),
            ("state", 6, Q),
            ("resources", 7, R),
            ("statuses", 8, R),
            ("labels", 11, O),
            ("container", 13, O),
            ("user", 14, O),
            ("kill_policy", 16, O),
        ],
    );
    assert_fields(
        "mesos.v1.ResourceProviderInfo",
        &[
            ("id", 1, O),
            ("attributes", 2, R),
            ("type", 3, Q),
            ("name", 4, Q),
            ("default_reservations", 5, R),
        ],
    );
}

#[test]
fn get_metrics_call_as_a_mesos_client_sends_it() {
    // What `curl -d '{"type":"GET_METRICS","get_metrics":{"timeout":{"nanoseconds":5000000000}}}'`
    // sends, and the same call in protobuf.
    let json = br#"{"type":"GET_METRICS","get_metrics":{"timeout":{"nanoseconds":5000000000}}}"#;
    let call: agent::Call = codec::decode(json, ContentType::Json).unwrap();
    assert_eq!(call.r#type(), agent::call::Type::GetMetrics);
    let timeout = call.get_metrics.as_ref().unwrap().timeout.as_ref().unwrap();
    assert_eq!(timeout.nanoseconds, 5_000_000_000);
    let bytes = codec::encode(&call, ContentType::Protobuf);
    let back: agent::Call = codec::decode(&bytes, ContentType::Protobuf).unwrap();
    assert_eq!(back, call);
    let version = agent::Response {
        r#type: Some(agent::response::Type::GetVersion as i32),
        get_version: Some(agent::response::GetVersion {
            version_info: mesos::VersionInfo {
                version: "1.12.0".into(),
                ..Default::default()
            },
        }),
        ..Default::default()
    };
    assert_eq!(
        codec::to_json(&version),
        serde_json::json!({"type": "GET_VERSION", "get_version": {"version_info": {"version": "1.12.0"}}})
    );
}
