//! The Mesos v1 agent operator API (`POST /api/v1`) and the v0 `/state` document, through a real
//! `berth agent --dev`: every GET_* call in JSON and in protobuf (decoded with berth_proto's
//! types), tasks showing up in GET_TASKS / GET_STATE / GET_EXECUTORS / GET_CONTAINERS and
//! `/state` with the right states while they run and after they end, and bad calls refused with a
//! clear 4xx/5xx while the agent keeps serving.

use std::time::Duration;

use berth_proto::{
    codec::{self, ContentType},
    mesos::v1::{
        self as mesos,
        agent::{self as api, call, response},
    },
};
use berth_tests::{Agent, Value, scaled};

/// A blocking client of the agent's HTTP API that keeps bodies as bytes.
struct Api {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Api {
    fn new(agent: &Agent) -> Api {
        Api {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            // A connection per request: the agent closes one whose body it refused (413).
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(scaled(Duration::from_secs(30)))
                .build()
                .expect("reqwest client"),
            base: agent.url().to_string(),
        }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        self.runtime.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut request = self
                .http
                .request(method, format!("{}{path}", self.base))
                .body(body);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.bytes().await.expect("response body").to_vec();
            Answer {
                status,
                content_type,
                body,
            }
        })
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        self.request("POST", path, headers, body)
    }

    /// Sends `call` encoded as `ct`, asking for `ct` back; asserts 200 and the content type.
    #[track_caller]
    fn call(&self, call: &api::Call, ct: ContentType) -> api::Response {
        let answer = self.post(
            "/api/v1",
            &[("Content-Type", ct.as_str()), ("Accept", ct.as_str())],
            codec::encode(call, ct),
        );
        let name = call.r#type().as_str_name();
        assert_eq!(answer.status, 200, "{name} in {ct}: {}", answer.text());
        assert_eq!(answer.content_type.as_deref(), Some(ct.as_str()), "{name}");
        let response: api::Response = codec::decode(&answer.body, ct)
            .unwrap_or_else(|e| panic!("{name} answer in {ct} does not decode: {e}"));
        response
    }

    /// The JSON answer to a JSON call written by hand.
    #[track_caller]
    fn call_json(&self, body: &str) -> Value {
        let answer = self.post(
            "/api/v1",
            &[("Content-Type", "application/json")],
            body.into(),
        );
        assert_eq!(answer.status, 200, "{body}: {}", answer.text());
        serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn get_json(&self, path: &str) -> Value {
        let answer = self.request("GET", path, &[], Vec::new());
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.text());
        serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

fn call_of(kind: call::Type) -> api::Call {
    let mut call = api::Call {
        r#type: Some(kind as i32),
        ..Default::default()
    };
    match kind {
        call::Type::GetMetrics => {
            call.get_metrics = Some(call::GetMetrics {
                timeout: Some(mesos::DurationInfo {
                    nanoseconds: 5_000_000_000,
                }),
            })
        }
        call::Type::GetContainers => {
            call.get_containers = Some(call::GetContainers {
                show_nested: Some(true),
                show_standalone: Some(true),
            })
        }
        _ => {}
    }
    call
}

const ENCODINGS: [ContentType; 2] = [ContentType::Json, ContentType::Protobuf];

#[test]
fn every_get_call_in_json_and_protobuf() {
    let Some(agent) = Agent::start_or_skip_with(&["--attributes", "rack:r1;level:3"]) else {
        return;
    };
    let api = Api::new(&agent);
    let agent_id = api.get_json("/state")["id"]
        .as_str()
        .expect("/state id")
        .to_string();
    use call::Type as C;
    use response::Type as R;
    let pairs = [
        (C::GetHealth, R::GetHealth),
        (C::GetFlags, R::GetFlags),
        (C::GetVersion, R::GetVersion),
        (C::GetMetrics, R::GetMetrics),
        (C::GetState, R::GetState),
        (C::GetContainers, R::GetContainers),
        (C::GetFrameworks, R::GetFrameworks),
        (C::GetExecutors, R::GetExecutors),
        (C::GetTasks, R::GetTasks),
        (C::GetAgent, R::GetAgent),
        (C::GetOperations, R::GetOperations),
        (C::GetResourceProviders, R::GetResourceProviders),
    ];
    for ct in ENCODINGS {
        for (call_type, response_type) in pairs {
            let response = api.call(&call_of(call_type), ct);
            assert_eq!(response.r#type(), response_type, "{call_type:?} in {ct}");
            let present = match response_type {
                R::GetHealth => response.get_health.is_some(),
                R::GetFlags => response.get_flags.is_some(),
                R::GetVersion => response.get_version.is_some(),
                R::GetMetrics => response.get_metrics.is_some(),
                R::GetState => response.get_state.is_some(),
                R::GetContainers => response.get_containers.is_some(),
                R::GetFrameworks => response.get_frameworks.is_some(),
                R::GetExecutors => response.get_executors.is_some(),
                R::GetTasks => response.get_tasks.is_some(),
                R::GetAgent => response.get_agent.is_some(),
                R::GetOperations => response.get_operations.is_some(),
                R::GetResourceProviders => response.get_resource_providers.is_some(),
                other => panic!("unexpected {other:?}"),
            };
            assert!(
                present,
                "{call_type:?} in {ct}: no answer message: {response:?}"
            );
        }

        assert!(
            api.call(&call_of(C::GetHealth), ct)
                .get_health
                .unwrap()
                .healthy
        );

        let flags = api.call(&call_of(C::GetFlags), ct).get_flags.unwrap().flags;
        let flag = |name: &str| {
            flags
                .iter()
                .find(|f| f.name == name)
                .and_then(|f| f.value.clone())
                .unwrap_or_else(|| panic!("flag {name} missing: {flags:?}"))
        };
        assert_eq!(flag("work_dir"), agent.work_dir().display().to_string());
        assert_eq!(flag("listen"), agent.addr().to_string());
        assert_eq!(flag("dev"), "true");
        assert_eq!(flag("attributes"), "rack:r1;level:3");

        let version = api.call(&call_of(C::GetVersion), ct);
        let version = version.get_version.unwrap().version_info.version;
        let major: u32 = version.split('.').next().unwrap().parse().unwrap();
        assert!(major >= 1, "version {version} is not SemVer >= 1.0.0");

        let metrics = api
            .call(&call_of(C::GetMetrics), ct)
            .get_metrics
            .unwrap()
            .metrics;
        let metric = |name: &str| {
            metrics
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.value)
                .unwrap_or_else(|| panic!("metric {name} missing: {metrics:?}"))
        };
        assert!(metric("slave/uptime_secs") > 0.0);
        assert_eq!(metric("slave/registered"), 1.0);
        assert!(metric("slave/cpus_total") > 0.0);
        assert!(metric("slave/mem_total") > 0.0);
        assert_eq!(metric("slave/tasks_running"), 0.0);
        assert!(metric("system/cpus_total") >= 1.0);
        assert!(metric("system/mem_total_bytes") > 0.0);

        let info = api.call(&call_of(C::GetAgent), ct).get_agent.unwrap();
        let info = info.agent_info.expect("agent_info");
        assert_eq!(info.id.unwrap().value, agent_id);
        assert_eq!(info.port, Some(i32::from(agent.addr().port())));
        assert!(berth_proto::resources::scalar_sum(&info.resources, "cpus") > 0.0);
        let attribute = |name: &str| {
            info.attributes
                .iter()
                .find(|a| a.name == name)
                .unwrap_or_else(|| panic!("attribute {name}: {:?}", info.attributes))
                .clone()
        };
        assert_eq!(attribute("rack").text.unwrap().value, "r1");
        assert_eq!(attribute("level").scalar.unwrap().value, 3.0);

        // No task yet: everything empty, nothing made up.
        let state = api.call(&call_of(C::GetState), ct).get_state.unwrap();
        let tasks = state.get_tasks.expect("get_tasks");
        assert!(tasks.launched_tasks.is_empty() && tasks.completed_tasks.is_empty());
        assert!(
            state
                .get_executors
                .expect("get_executors")
                .executors
                .is_empty()
        );
        assert!(
            state
                .get_frameworks
                .expect("get_frameworks")
                .frameworks
                .is_empty()
        );
    }

    // JSON as Mesos writes it: enum names, proto field names, every task list even when empty.
    let tasks = api.call_json(r#"{"type":"GET_TASKS"}"#);
    assert_eq!(tasks["type"], "GET_TASKS", "{tasks}");
    for list in [
        "pending_tasks",
        "queued_tasks",
        "launched_tasks",
        "terminated_tasks",
        "completed_tasks",
    ] {
        assert_eq!(
            tasks["get_tasks"][list],
            serde_json::json!([]),
            "{list}: {tasks}"
        );
    }
    // Without Accept the answer is JSON, as from a Mesos agent, even to a protobuf call.
    let answer = api.post(
        "/api/v1",
        &[("Content-Type", "application/x-protobuf")],
        codec::encode(&call_of(C::GetHealth), ContentType::Protobuf),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&answer.body).unwrap()["get_health"]["healthy"],
        true
    );
    // The API is also served under the agent's process id.
    let answer = api.post(
        "/slave(1)/api/v1",
        &[("Content-Type", "application/json")],
        br#"{"type":"GET_HEALTH"}"#.to_vec(),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// The task whose id is `id` in a list of tasks.
fn find_task<'a>(tasks: &'a [mesos::Task], id: &str) -> Option<&'a mesos::Task> {
    tasks.iter().find(|t| t.task_id.value == id)
}

/// Every executor of every framework (active and completed) of a v0 `/state` document, with the
/// list (`executors`/`completed_executors`) it is in.
fn v0_executors(state: &Value) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for frameworks in ["frameworks", "completed_frameworks"] {
        for framework in state[frameworks].as_array().expect(frameworks) {
            for list in ["executors", "completed_executors"] {
                for executor in framework[list].as_array().expect(list) {
                    out.push((list, executor.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn tasks_show_up_in_every_view_with_their_states() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let api = Api::new(&agent);
    agent
        .berth(&["run", "--name", "op-done", "--", "true"])
        .assert_code(0);
    let done_id = agent
        .ps_json(true)
        .iter()
        .find(|t| t["name"] == "op-done")
        .and_then(|t| t["id"].as_str())
        .expect("op-done in `berth ps --all`")
        .to_string();
    let id = agent.run_detached(&["--name", "op-sleep", "--", "sleep", "300"]);
    let inspect = agent.wait_for_state(&id, &["TASK_RUNNING"], Duration::from_secs(60));
    let container_id = inspect["container"]["id"].as_str().unwrap().to_string();
    let sandbox = inspect["container"]["sandbox"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = inspect["container"]["pid"].as_u64().unwrap();
    let framework_id = inspect["task"]["framework_id"]
        .as_str()
        .unwrap()
        .to_string();

    for ct in ENCODINGS {
        let tasks = api
            .call(&call_of(call::Type::GetTasks), ct)
            .get_tasks
            .unwrap();
        let running = find_task(&tasks.launched_tasks, &id)
            .unwrap_or_else(|| panic!("{id} not among launched tasks: {tasks:?}"));
        assert_eq!(running.state(), mesos::TaskState::TaskRunning);
        assert_eq!(running.name, "op-sleep");
        assert_eq!(running.framework_id.value, framework_id);
        assert_eq!(
            running.statuses.last().map(|s| s.state()),
            Some(mesos::TaskState::TaskRunning)
        );
        let done = find_task(&tasks.completed_tasks, &done_id)
            .unwrap_or_else(|| panic!("{done_id} not among completed tasks: {tasks:?}"));
        assert_eq!(done.state(), mesos::TaskState::TaskFinished);

        let state = api
            .call(&call_of(call::Type::GetState), ct)
            .get_state
            .unwrap();
        let state_tasks = state.get_tasks.unwrap();
        assert!(find_task(&state_tasks.launched_tasks, &id).is_some());
        assert!(find_task(&state_tasks.completed_tasks, &done_id).is_some());

        let executors = api
            .call(&call_of(call::Type::GetExecutors), ct)
            .get_executors
            .unwrap();
        let executor = executors
            .executors
            .iter()
            .map(|e| &e.executor_info)
            .find(|e| e.executor_id.value == id)
            .unwrap_or_else(|| panic!("no executor {id}: {executors:?}"));
        assert_eq!(executor.framework_id.as_ref().unwrap().value, framework_id);
        assert_eq!(executor.source.as_deref(), Some(id.as_str()));
        assert!(
            executor
                .name()
                .starts_with(&format!("Command Executor (Task: {id})")),
            "{executor:?}"
        );
        assert!(
            executors
                .completed_executors
                .iter()
                .any(|e| e.executor_info.executor_id.value == done_id),
            "{done_id} not among completed executors: {executors:?}"
        );

        let containers = api
            .call(&call_of(call::Type::GetContainers), ct)
            .get_containers
            .unwrap()
            .containers;
        let container = containers
            .iter()
            .find(|c| c.container_id.value == container_id)
            .unwrap_or_else(|| panic!("container {container_id} not listed: {containers:?}"));
        assert_eq!(container.executor_id.as_ref().unwrap().value, id);
        assert_eq!(container.framework_id.as_ref().unwrap().value, framework_id);
        let status = container
            .container_status
            .as_ref()
            .expect("container_status");
        assert_eq!(status.executor_pid.map(u64::from), Some(pid));
        let statistics = container
            .resource_statistics
            .as_ref()
            .expect("resource_statistics of a running container");
        assert!(statistics.timestamp > 0.0);
        assert!(
            statistics.mem_limit_bytes.unwrap_or(0) > 0,
            "{statistics:?}"
        );
        assert!(statistics.cpus_limit.unwrap_or(0.0) > 0.0, "{statistics:?}");
        assert!(statistics.processes.unwrap_or(0) >= 1, "{statistics:?}");
        assert!(
            !containers
                .iter()
                .any(|c| c.executor_id.as_ref().is_some_and(|e| e.value == done_id)),
            "a finished task's container is listed: {containers:?}"
        );

        let frameworks = api
            .call(&call_of(call::Type::GetFrameworks), ct)
            .get_frameworks
            .unwrap();
        let framework = frameworks
            .frameworks
            .iter()
            .map(|f| &f.framework_info)
            .find(|f| f.id.as_ref().is_some_and(|i| i.value == framework_id))
            .unwrap_or_else(|| panic!("framework {framework_id} not active: {frameworks:?}"));
        assert!(framework.name.starts_with("berth-run"), "{framework:?}");
        assert_eq!(framework.user, "root");
    }

    // The v0 /state document, at every path a Mesos agent serves it on.
    let state = api.get_json("/state");
    for path in ["/state.json", "/slave(1)/state", "/slave(1)/state.json"] {
        assert_eq!(api.get_json(path)["id"], state["id"], "{path}");
    }
    assert_eq!(
        state["pid"],
        format!("slave(1)@{}", agent.addr()),
        "pid: {state:#}"
    );
    assert_eq!(state["resources"]["gpus"], 0.0, "{state:#}");
    assert!(
        state["resources"]["ports"]
            .as_str()
            .is_some_and(|p| p.starts_with('['))
    );
    assert_eq!(
        state["flags"]["work_dir"],
        agent.work_dir().display().to_string()
    );
    let executors = v0_executors(&state);
    let (list, executor) = executors
        .iter()
        .find(|(_, e)| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no executor {id} in /state: {state:#}"));
    assert_eq!(*list, "executors");
    assert_eq!(executor["container"], container_id.as_str());
    assert_eq!(executor["directory"], sandbox.as_str());
    assert!(std::path::Path::new(&sandbox).is_dir(), "{sandbox}");
    assert_eq!(executor["source"], id.as_str());
    assert!(executor["resources"]["cpus"].as_f64().unwrap() > 0.0);
    let task = &executor["tasks"][0];
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["name"], "op-sleep");
    assert_eq!(task["state"], "TASK_RUNNING");
    assert_eq!(task["slave_id"], state["id"]);
    assert_eq!(task["framework_id"], framework_id.as_str());
    assert_eq!(task["executor_id"], "");
    assert!(task["resources"]["mem"].as_f64().unwrap() > 0.0);
    assert_eq!(
        task["statuses"].as_array().unwrap().last().unwrap()["state"],
        "TASK_RUNNING"
    );
    let (_, done) = executors
        .iter()
        .find(|(_, e)| e["id"] == done_id.as_str())
        .unwrap_or_else(|| panic!("no executor {done_id} in /state: {state:#}"));
    assert_eq!(
        done["completed_tasks"][0]["state"], "TASK_FINISHED",
        "{done:#}"
    );
    assert_eq!(done["tasks"], serde_json::json!([]));

    // Killed: no longer launched, no container; terminated until the (detached) framework
    // acknowledges, or completed.
    agent.berth(&["kill", &id]).assert_success();
    agent.wait_for_state(&id, &["TASK_KILLED"], Duration::from_secs(60));
    for ct in ENCODINGS {
        let tasks = api
            .call(&call_of(call::Type::GetTasks), ct)
            .get_tasks
            .unwrap();
        assert!(find_task(&tasks.launched_tasks, &id).is_none(), "{tasks:?}");
        let ended = find_task(&tasks.terminated_tasks, &id)
            .or_else(|| find_task(&tasks.completed_tasks, &id))
            .unwrap_or_else(|| panic!("{id} neither terminated nor completed: {tasks:?}"));
        assert_eq!(ended.state(), mesos::TaskState::TaskKilled);
        let containers = api
            .call(&call_of(call::Type::GetContainers), ct)
            .get_containers
            .unwrap()
            .containers;
        assert!(
            !containers
                .iter()
                .any(|c| c.container_id.value == container_id),
            "a killed task's container is listed: {containers:?}"
        );
    }
    let state = api.get_json("/state");
    let executors = v0_executors(&state);
    let (_, killed) = executors
        .iter()
        .find(|(_, e)| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no executor {id} in /state: {state:#}"));
    assert_eq!(killed["tasks"], serde_json::json!([]));
    assert_eq!(killed["completed_tasks"][0]["state"], "TASK_KILLED");
    assert_eq!(
        killed["resources"]["cpus"], 0.0,
        "an ended task holds nothing"
    );
}

#[test]
fn bad_calls_are_refused_clearly_and_the_agent_survives() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let api = Api::new(&agent);
    let json = [("Content-Type", "application/json")];
    let protobuf = [("Content-Type", "application/x-protobuf")];
    let expect = |answer: Answer, status: u16, needle: &str| {
        assert_eq!(answer.status, status, "{answer:?}: {}", answer.text());
        assert!(
            answer.text().contains(needle),
            "answer {status} does not say {needle:?}: {}",
            answer.text()
        );
    };
    // Garbage protobuf, truncated protobuf, broken JSON: 400 with the decoder's reason.
    expect(
        api.post("/api/v1", &protobuf, b"\xff\xff\xff\xff\xff".to_vec()),
        400,
        "mesos.v1.agent.Call",
    );
    let mut truncated = codec::encode(&call_of(call::Type::GetMetrics), ContentType::Protobuf);
    truncated.pop();
    expect(api.post("/api/v1", &protobuf, truncated), 400, "Call");
    expect(
        api.post("/api/v1", &json, b"{\"type\":".to_vec()),
        400,
        "JSON",
    );
    // A type no Mesos release defines (by name or number), or none at all.
    expect(
        api.post("/api/v1", &json, br#"{"type":"GET_EVERYTHING"}"#.to_vec()),
        400,
        "'type'",
    );
    expect(
        api.post("/api/v1", &protobuf, vec![0x08, 0xe7, 0x07]),
        400,
        "999",
    );
    expect(api.post("/api/v1", &json, b"{}".to_vec()), 400, "'type'");
    // GET_METRICS without its message, as Mesos refuses it.
    expect(
        api.post("/api/v1", &json, br#"{"type":"GET_METRICS"}"#.to_vec()),
        400,
        "get_metrics",
    );
    // Calls berth does not serve are named.
    expect(
        api.post(
            "/api/v1",
            &json,
            br#"{"type":"GET_LOGGING_LEVEL"}"#.to_vec(),
        ),
        501,
        "GET_LOGGING_LEVEL",
    );
    expect(
        api.post(
            "/api/v1",
            &json,
            br#"{"type":"LAUNCH_NESTED_CONTAINER_SESSION"}"#.to_vec(),
        ),
        501,
        "LAUNCH_NESTED_CONTAINER_SESSION",
    );
    expect(
        api.post("/api/v1", &json, br#"{"type":"UNKNOWN"}"#.to_vec()),
        501,
        "UNKNOWN",
    );
    // Content negotiation.
    expect(
        api.post(
            "/api/v1",
            &[("Content-Type", "text/plain")],
            b"GET_HEALTH".to_vec(),
        ),
        415,
        "Content-Type",
    );
    expect(
        api.post("/api/v1", &[], br#"{"type":"GET_HEALTH"}"#.to_vec()),
        400,
        "Content-Type",
    );
    expect(
        api.post(
            "/api/v1",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "text/html"),
            ],
            br#"{"type":"GET_HEALTH"}"#.to_vec(),
        ),
        406,
        "Accept",
    );
    // Method and size, checked by the router.
    let answer = api.request("GET", "/api/v1", &[], Vec::new());
    assert_eq!(answer.status, 405, "{answer:?}");
    let answer = api.post("/api/v1", &json, vec![b' '; 9 << 20]);
    assert_eq!(answer.status, 413, "{answer:?}");

    // Still serving, in both encodings.
    for ct in ENCODINGS {
        let health = api.call(&call_of(call::Type::GetHealth), ct);
        assert!(health.get_health.unwrap().healthy);
    }
    assert_eq!(agent.get("/health").status, 200);
}
