//! `berth run`: a small Mesos v1 framework. It subscribes to the scheduler API, waits for an offer
//! that fits, launches one task, acknowledges its status updates, streams its output, and exits
//! with its exit code. With `--detach` it prints the task id once the task runs, and leaves it
//! running (the framework's failover timeout keeps the task alive after the CLI leaves).

use std::{io::Write, time::Duration};

use anyhow::{Context, anyhow, bail};
use berth_proto::{
    codec,
    mesos::v1::{self as mesos, scheduler},
    recordio,
};
use futures::StreamExt;
use serde_json::Value;

use super::{RunArgs, client::AgentClient};
use crate::{agent::labels, resources::ResourceSet, task};

/// How long a detached task's framework survives without a connection.
const DETACHED_FAILOVER_TIMEOUT: f64 = 7.0 * 24.0 * 3600.0;

/// The exit code for berth's own failures (as `docker run`).
pub const EXIT_BERTH_ERROR: i32 = 125;

/// Runs a task; returns the process exit code.
pub async fn run(agent_url: &str, args: RunArgs) -> anyhow::Result<i32> {
    let client = AgentClient::new(agent_url);
    let request = requested(&args);
    // Bad isolation flags are reported before anything is sent to the agent.
    args.isolation
        .apply(&mut mesos::ContainerInfo::default(), &mut Vec::new())
        .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(check) = args.health.to_proto() {
        crate::health::HealthSpec::from_proto(&check).map_err(|e| anyhow::anyhow!(e))?;
    }
    check_against_node(&client, &request).await?;
    let task_id = format!(
        "{}-{}",
        args.name
            .as_deref()
            .map(sanitize)
            .unwrap_or_else(|| "task".into()),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // SUBSCRIBE, and follow the event stream.
    let mut framework_info = mesos::FrameworkInfo {
        user: "root".into(),
        name: format!("berth-run {task_id}"),
        failover_timeout: Some(if args.detach {
            DETACHED_FAILOVER_TIMEOUT
        } else {
            0.0
        }),
        ..Default::default()
    };
    framework_info.hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    let subscribe = scheduler::Call {
        r#type: Some(scheduler::call::Type::Subscribe as i32),
        subscribe: Some(scheduler::call::Subscribe {
            framework_info,
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = client
        .scheduler_call(codec::to_json_string(&subscribe).into_bytes(), None)
        .await?;
    let stream_id = response
        .headers()
        .get("Mesos-Stream-Id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .ok_or_else(|| anyhow!("the scheduler API did not return a Mesos-Stream-Id"))?;
    let mut body = response.bytes_stream();
    let mut decoder = recordio::Decoder::new();
    let mut session = Session {
        client: client.clone(),
        stream_id,
        framework_id: None,
        task_id,
        args,
        request,
        // Older agents without the endpoint: any agent's offer will do.
        agent_id: client
            .get_json("/api/berth/v1/master")
            .await
            .ok()
            .and_then(|v| v["agent_id"].as_str().map(String::from)),
        launched: false,
        logs: None,
        interrupted: false,
    };
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = &mut interrupt, if !session.interrupted => {
                session.interrupted = true;
                if session.launched {
                    let _ = client.post_json(&format!("/api/berth/v1/tasks/{}/kill", session.task_id)).await;
                    continue;
                }
                bail!("interrupted before the task was launched");
            }
        };
        let Some(chunk) = chunk else {
            bail!("the master closed the event stream")
        };
        decoder.feed(&chunk.context("reading the event stream")?);
        while let Some(record) = decoder.next_record()? {
            let event: scheduler::Event =
                codec::decode(&record, codec::ContentType::Json).context("decoding an event")?;
            if let Some(code) = session.handle(event).await? {
                return Ok(code);
            }
        }
    }
}

struct Session {
    client: AgentClient,
    stream_id: String,
    framework_id: Option<mesos::FrameworkId>,
    task_id: String,
    args: RunArgs,
    request: ResourceSet,
    /// The agent this CLI talks to: only its offers are used (its logs are read from it).
    agent_id: Option<String>,
    launched: bool,
    logs: Option<LogFollower>,
    interrupted: bool,
}

impl Session {
    async fn call(&self, mut call: scheduler::Call) -> anyhow::Result<()> {
        call.framework_id = self.framework_id.clone();
        self.client
            .scheduler_call(
                codec::to_json_string(&call).into_bytes(),
                Some(&self.stream_id),
            )
            .await?;
        Ok(())
    }

    /// Handles one event; `Some(code)` ends the run.
    async fn handle(&mut self, event: scheduler::Event) -> anyhow::Result<Option<i32>> {
        use scheduler::event::Type;
        match event.r#type.and_then(|t| Type::try_from(t).ok()) {
            Some(Type::Subscribed) => {
                self.framework_id = event.subscribed.map(|s| s.framework_id);
            }
            Some(Type::Offers) => {
                for offer in event.offers.map(|o| o.offers).unwrap_or_default() {
                    self.on_offer(offer).await?;
                }
            }
            Some(Type::Update) => {
                if let Some(update) = event.update {
                    return self.on_update(update.status).await;
                }
            }
            Some(Type::Error) => {
                bail!(
                    "the master reported an error: {}",
                    event.error.map(|e| e.message).unwrap_or_default()
                )
            }
            _ => {}
        }
        Ok(None)
    }

    async fn on_offer(&mut self, offer: mesos::Offer) -> anyhow::Result<()> {
        let offered = ResourceSet::from_proto(&offer.resources);
        let elsewhere = self
            .agent_id
            .as_ref()
            .is_some_and(|id| *id != offer.agent_id.value);
        if self.launched || elsewhere || !offered.contains(&self.request) {
            let decline = scheduler::Call {
                r#type: Some(scheduler::call::Type::Decline as i32),
                decline: Some(scheduler::call::Decline {
                    offer_ids: vec![offer.id],
                    filters: Some(mesos::Filters {
                        refuse_seconds: Some(if self.launched { 3600.0 } else { 0.2 }),
                    }),
                }),
                ..Default::default()
            };
            return self.call(decline).await;
        }
        let task = self.task_info(offer.agent_id.clone());
        let mut operation = mesos::offer::Operation {
            launch: Some(mesos::offer::operation::Launch {
                task_infos: vec![task],
            }),
            ..Default::default()
        };
        operation.set_type(mesos::offer::operation::Type::Launch);
        let accept = scheduler::Call {
            r#type: Some(scheduler::call::Type::Accept as i32),
            accept: Some(scheduler::call::Accept {
                offer_ids: vec![offer.id],
                operations: vec![operation],
                filters: Some(mesos::Filters {
                    refuse_seconds: Some(0.0),
                }),
            }),
            ..Default::default()
        };
        self.launched = true;
        self.call(accept).await?;
        if !self.args.detach {
            self.logs = Some(LogFollower::start(
                self.client.clone(),
                self.task_id.clone(),
            ));
        }
        // One task only: stop receiving offers.
        self.call(scheduler::Call {
            r#type: Some(scheduler::call::Type::Suppress as i32),
            suppress: Some(Default::default()),
            ..Default::default()
        })
        .await
    }

    fn task_info(&self, agent_id: mesos::AgentId) -> mesos::TaskInfo {
        let args = &self.args;
        // With an image, the command is arguments only (shell=false, no value): it replaces
        // the image's Cmd and keeps its Entrypoint, as `docker run IMAGE CMD...` does.
        let mut command = mesos::CommandInfo {
            value: match &args.image {
                Some(_) => None,
                None => args.command.first().cloned(),
            },
            arguments: args.command.clone(),
            shell: Some(false),
            ..Default::default()
        };
        if !args.env.is_empty() {
            command.environment = Some(mesos::Environment {
                variables: args
                    .env
                    .iter()
                    .map(|(k, v)| mesos::environment::Variable {
                        name: k.clone(),
                        value: Some(v.clone()),
                        ..Default::default()
                    })
                    .collect(),
            });
        }
        let mut labels_list: Vec<mesos::Label> =
            args.labels.iter().map(|(k, v)| label(k, v)).collect();
        if let Some(pids) = args.pids {
            labels_list.push(label(labels::PIDS_MAX, &pids.to_string()));
        }
        if let Some(dir) = &args.workdir {
            labels_list.push(label(labels::WORKDIR, dir));
        }
        let mut container = mesos::ContainerInfo {
            network_infos: vec![mesos::NetworkInfo {
                name: Some(args.network.clone()),
                port_mappings: args
                    .publish
                    .iter()
                    .map(
                        |(host, container, proto)| mesos::network_info::PortMapping {
                            host_port: *host,
                            container_port: *container,
                            protocol: Some(proto.clone()),
                        },
                    )
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        container.set_type(mesos::container_info::Type::Mesos);
        if let Some(name) = &args.image {
            let mut image = mesos::Image {
                docker: Some(mesos::image::Docker { name: name.clone() }),
                ..Default::default()
            };
            image.set_type(mesos::image::Type::Docker);
            container.mesos = Some(mesos::container_info::MesosInfo { image: Some(image) });
        }
        // Checked before the framework subscribed (see `run`), so this cannot fail here.
        let _ = args.isolation.apply(&mut container, &mut labels_list);
        mesos::TaskInfo {
            name: args.name.clone().unwrap_or_else(|| self.task_id.clone()),
            task_id: mesos::TaskId {
                value: self.task_id.clone(),
            },
            agent_id,
            resources: self.request.to_proto(),
            command: Some(command),
            container: Some(container),
            kill_policy: Some(mesos::KillPolicy {
                grace_period: Some(mesos::DurationInfo {
                    nanoseconds: (args.grace * 1e9) as i64,
                }),
            }),
            labels: (!labels_list.is_empty()).then_some(mesos::Labels {
                labels: labels_list,
            }),
            health_check: args.health.to_proto(),
            ..Default::default()
        }
    }

    async fn on_update(&mut self, status: mesos::TaskStatus) -> anyhow::Result<Option<i32>> {
        if let Some(uuid) = status.uuid.clone() {
            let ack = scheduler::Call {
                r#type: Some(scheduler::call::Type::Acknowledge as i32),
                acknowledge: Some(scheduler::call::Acknowledge {
                    agent_id: status.agent_id.clone().unwrap_or_default(),
                    task_id: status.task_id.clone(),
                    uuid,
                }),
                ..Default::default()
            };
            self.call(ack).await?;
        }
        if status.task_id.value != self.task_id {
            return Ok(None);
        }
        let state = status.state();
        match state {
            mesos::TaskState::TaskRunning if self.args.detach => {
                println!("{}", self.task_id);
                return Ok(Some(0));
            }
            _ if !task::is_terminal(state.as_str_name()) => {
                if status.reason() == mesos::task_status::Reason::TaskHealthCheckStatusUpdated {
                    eprintln!("berth: {}", status.message.unwrap_or_default());
                }
                return Ok(None);
            }
            _ => {}
        }
        // Terminal: flush the output, then exit like the task did.
        if let Some(logs) = self.logs.take() {
            logs.finish().await;
        }
        let message = status.message.clone().unwrap_or_default();
        let code = match state {
            mesos::TaskState::TaskFinished => 0,
            mesos::TaskState::TaskKilled => {
                if status.healthy == Some(false) {
                    eprintln!("berth: {message}");
                }
                137
            }
            mesos::TaskState::TaskFailed => {
                let record = self
                    .client
                    .get_json(&format!("/api/berth/v1/tasks/{}", self.task_id))
                    .await
                    .ok();
                let code = record
                    .as_ref()
                    .and_then(|r| r.pointer("/task/exit_code"))
                    .and_then(Value::as_i64)
                    .map(|c| c as i32);
                match code {
                    Some(code) => {
                        let launch_failed = message.starts_with("Failed to launch");
                        let oom = status.reason()
                            == mesos::task_status::Reason::ContainerLimitationMemory;
                        if launch_failed || oom {
                            eprintln!("berth: {message}");
                        }
                        code
                    }
                    None => {
                        eprintln!("berth: task failed: {message}");
                        EXIT_BERTH_ERROR
                    }
                }
            }
            _ => {
                eprintln!("berth: task {}: {message}", state.as_str_name());
                EXIT_BERTH_ERROR
            }
        };
        if !self.args.detach {
            let teardown = scheduler::Call {
                r#type: Some(scheduler::call::Type::Teardown as i32),
                ..Default::default()
            };
            let _ = self.call(teardown).await;
        }
        Ok(Some(code))
    }
}

fn label(key: &str, value: &str) -> mesos::Label {
    mesos::Label {
        key: key.to_string(),
        value: Some(value.to_string()),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn requested(args: &RunArgs) -> ResourceSet {
    let mut set = ResourceSet::default();
    set.scalars.insert("cpus".into(), args.cpus);
    set.scalars.insert(
        "mem".into(),
        (args.mem as f64 / (1024.0 * 1024.0) * 1000.0).ceil() / 1000.0,
    );
    if let Some(disk) = args.isolation.disk_mb() {
        set.scalars.insert("disk".into(), disk);
    }
    set
}

/// Fails at once when the node could never run the task.
async fn check_against_node(client: &AgentClient, request: &ResourceSet) -> anyhow::Result<()> {
    let state = client.get_json("/state").await?;
    let total = state.get("resources").cloned().unwrap_or_default();
    for (name, wanted) in &request.scalars {
        let have = total.get(name).and_then(Value::as_f64).unwrap_or(0.0);
        if *wanted > have + 1e-9 {
            bail!("the task asks for {name} {wanted} but the node has {have} in total");
        }
    }
    Ok(())
}

/// Copies a task's stdout/stderr to ours while it runs.
struct LogFollower {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl LogFollower {
    fn start(client: AgentClient, task_id: String) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut offsets = [Some(0), Some(0)];
            loop {
                let last = *stopped.borrow();
                // Ignore errors while the task is being created; the final pass reports nothing new.
                let _ = copy_new_output(&client, &task_id, &mut offsets).await;
                if last {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
            }
        });
        Self { stop, handle }
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// Copies what is new in stdout and stderr (a stream whose offset is `None` is skipped);
/// returns the task state the server reported.
pub async fn copy_new_output(
    client: &AgentClient,
    task: &str,
    offsets: &mut [Option<u64>; 2],
) -> anyhow::Result<Option<String>> {
    let mut state = None;
    for (index, stream) in ["stdout", "stderr"].into_iter().enumerate() {
        let Some(offset) = offsets[index].as_mut() else {
            continue;
        };
        loop {
            let (bytes, task_state) = client.get_logs(task, stream, *offset).await?;
            state = task_state;
            if bytes.is_empty() {
                break;
            }
            *offset += bytes.len() as u64;
            if index == 0 {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)?;
                out.flush()?;
            } else {
                let mut err = std::io::stderr().lock();
                err.write_all(&bytes)?;
                err.flush()?;
            }
            if bytes.len() < (1 << 20) {
                break;
            }
        }
    }
    Ok(state)
}
