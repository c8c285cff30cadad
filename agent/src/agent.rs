//! The agent core: holds the tasks, launches them through the containerizer, turns container
//! events into status updates, and keeps every update until the master acknowledges it.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use berth_containerizer::{ContainerConfig, Containerizer, Recovered, Termination};
use berth_isolators::NetworkMode;
use berth_proto::mesos::v1 as mesos;
use tracing::{info, warn};

use crate::{
    checkpoint,
    link::{AgentCore, AgentPort, AgentRegistration, MasterLink},
    metrics::Metrics,
    resources::ResourceSet,
    status_updates::StatusUpdateManager,
    task::{self, StatusRecord, TaskLimits, TaskRecord},
};

use crate::task_spec::container_config;
pub use crate::task_spec::labels;

mod health_checks;

/// The checkpoint of the agent id a master gave (`<work-dir>/meta/agent.json`, `{"id": ...}`).
pub const AGENT_ID_FILE: &str = "agent.json";

/// Static settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The agent id checkpointed by an earlier registration (empty before the first one).
    pub id: String,
    /// The port masters reach the agent's libprocess/HTTP server on.
    pub port: u16,
    /// Hostname.
    pub hostname: String,
    /// Total resources offered.
    pub resources: ResourceSet,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// `<work-dir>/meta`.
    pub meta_dir: PathBuf,
    /// Network of tasks that do not ask for one.
    pub default_network: NetworkMode,
    /// Whether the node is on the overlay (`overlay`/`berth` networks are available).
    pub overlay: bool,
    /// The resolv.conf of bridge/overlay containers when the node runs berth's DNS.
    pub container_resolv_conf: Option<PathBuf>,
    /// pids.max of tasks that do not set one.
    pub default_pids_max: u64,
    /// Kill grace of tasks without a kill policy.
    pub default_grace: Duration,
    /// Where relative seccomp profile names of tasks are looked up.
    pub seccomp_config_dir: Option<PathBuf>,
    /// The agent's flags, name (`work_dir`) and value, for the operator APIs.
    pub flags: Vec<(String, String)>,
}

/// The agent.
pub struct Agent {
    settings: AgentSettings,
    containerizer: Arc<Containerizer>,
    tasks: Mutex<BTreeMap<String, TaskRecord>>,
    kill_requests: Mutex<BTreeMap<String, Duration>>,
    master: OnceLock<Arc<dyn MasterLink>>,
    updates: StatusUpdateManager,
    /// The id the master gave the agent (None until the first registration).
    agent_id: Mutex<Option<String>>,
    /// Resources the master asked to checkpoint (reservations, persistent volumes).
    checkpointed_resources: Mutex<Vec<mesos::Resource>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Metrics shared with the HTTP layer.
    pub metrics: Arc<Metrics>,
    started: Instant,
}

/// Errors the agent reports to its callers (the HTTP API).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No task matches.
    #[error("no task matches '{0}'")]
    NoSuchTask(String),
    /// More than one task matches a prefix.
    #[error("'{0}' matches more than one task: {1}")]
    Ambiguous(String, String),
    /// The task ended already.
    #[error("task {0} is already {1}")]
    AlreadyTerminal(String, String),
    /// A live limit change was refused.
    #[error("updating task {0}: {1}")]
    Update(String, String),
}

impl Agent {
    /// Creates the agent.
    pub fn new(
        settings: AgentSettings,
        containerizer: Arc<Containerizer>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let agent_id = Some(settings.id.clone()).filter(|id| !id.is_empty());
        let checkpointed = load_checkpointed_resources(&settings.meta_dir);
        Arc::new(Self {
            settings,
            containerizer,
            tasks: Mutex::new(BTreeMap::new()),
            kill_requests: Mutex::new(BTreeMap::new()),
            master: OnceLock::new(),
            updates: StatusUpdateManager::new(),
            agent_id: Mutex::new(agent_id),
            checkpointed_resources: Mutex::new(checkpointed),
            shutdown: tokio::sync::watch::channel(false).0,
            metrics,
            started: Instant::now(),
        })
    }

    /// The agent's settings.
    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// The containerizer.
    pub fn containerizer(&self) -> &Containerizer {
        &self.containerizer
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn tasks_dir(&self) -> PathBuf {
        self.settings.meta_dir.join("tasks")
    }

    /// The id the master gave the agent, once registered (or from the checkpoint).
    pub fn agent_id(&self) -> Option<String> {
        self.agent_id.lock().expect("agent id lock").clone()
    }

    /// Status updates not acknowledged yet.
    pub fn pending_updates(&self) -> usize {
        self.updates.pending()
    }

    /// Resolves when a master asked the agent to shut down.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|asked| *asked).await;
    }

    /// Hands the agent its master link. The link registers (it asks [`AgentCore::registration`]);
    /// every update not yet acknowledged is queued again, in order, and sent once registered.
    pub fn connect(self: &Arc<Self>, master: Arc<dyn MasterLink>) {
        let _ = self.master.set(master);
        let pending: Vec<(String, String, mesos::TaskStatus)> = {
            let agent_id = self.agent_id().unwrap_or_default();
            let tasks = self.tasks.lock().expect("tasks lock");
            tasks
                .values()
                .flat_map(|t| {
                    t.statuses
                        .iter()
                        .filter(|s| !s.acked && !s.uuid.is_empty())
                        .map(|s| {
                            (
                                t.framework_id.clone(),
                                t.id.clone(),
                                t.status_proto(s, &agent_id),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (framework_id, task_id, status) in pending {
            self.updates.enqueue(&framework_id, &task_id, status);
        }
        let agent = self.clone();
        tokio::spawn(async move { agent.retry_loop().await });
    }

    async fn retry_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.flush_updates();
        }
    }

    fn flush_updates(&self) {
        let Some(master) = self.master.get() else {
            return;
        };
        // Mesos pauses the status update manager while the agent is not registered.
        if !master.is_registered() {
            return;
        }
        for (framework_id, status) in self.updates.due(Instant::now()) {
            let latest = self
                .tasks
                .lock()
                .expect("tasks lock")
                .get(&status.task_id.value)
                .and_then(|t| mesos::TaskState::from_str_name(&t.state))
                .unwrap_or(status.state());
            // The agent id in an update is the current one (it may have been assigned after
            // the update was checkpointed).
            let mut status = status;
            if let Some(id) = self.agent_id() {
                status.agent_id = Some(mesos::AgentId { value: id });
            }
            master.status_update(&framework_id, status, latest);
        }
    }

    /// Loads checkpointed tasks and reconciles them with the containers found on the node.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let dir = self.tasks_dir();
        std::fs::create_dir_all(&dir)?;
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                match checkpoint::read_json::<TaskRecord>(&path) {
                    Ok(Some(record)) => records.push(record),
                    Ok(None) => {}
                    Err(err) => warn!(path = %path.display(), error = %err, "skipping checkpoint"),
                }
            }
        }
        let known: Vec<String> = records
            .iter()
            .filter(|r| !task::is_terminal(&r.state))
            .map(|r| r.container_id.clone())
            .collect();
        let recovered = self.containerizer.recover(&known).await?;
        {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            for record in records {
                tasks.insert(record.id.clone(), record);
            }
        }
        for (container_id, outcome) in recovered {
            let Some(task_id) = self.task_of_container(&container_id) else {
                continue;
            };
            match outcome {
                Recovered::Running { pid } => {
                    info!(task_id = %task_id, container_id = %container_id, "reattached");
                    // The agent may have died after releasing the workload but before it
                    // reported TASK_RUNNING: report it now.
                    let state = {
                        let mut tasks = self.tasks.lock().expect("tasks lock");
                        let task = tasks.get_mut(&task_id);
                        task.map(|t| {
                            t.pid = pid.or(t.pid);
                            t.state.clone()
                        })
                    };
                    if state.as_deref() != Some("TASK_RUNNING") {
                        self.update(&task_id, mesos::TaskState::TaskRunning, None, None);
                    }
                    self.start_health_check(&task_id);
                    let agent = self.clone();
                    tokio::spawn(async move { agent.wait_container(task_id, container_id).await });
                }
                Recovered::Terminated(termination) => {
                    self.finish(&task_id, &container_id, termination).await;
                }
                Recovered::LaunchInterrupted => {
                    self.update(
                        &task_id,
                        mesos::TaskState::TaskFailed,
                        Some("the agent restarted while launching the task".into()),
                        Some(mesos::task_status::Reason::ContainerLaunchFailed),
                    );
                    let _ = self.containerizer.destroy(&container_id).await;
                }
                Recovered::Gone => {
                    self.update(
                        &task_id,
                        mesos::TaskState::TaskFailed,
                        Some("the container vanished while the agent was down".into()),
                        Some(mesos::task_status::Reason::ExecutorTerminated),
                    );
                    let _ = self.containerizer.destroy(&container_id).await;
                }
            }
        }
        Ok(())
    }

    fn task_of_container(&self, container_id: &str) -> Option<String> {
        self.tasks
            .lock()
            .expect("tasks lock")
            .values()
            .find(|t| t.container_id == container_id)
            .map(|t| t.id.clone())
    }

    /// A snapshot of all task records.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.tasks
            .lock()
            .expect("tasks lock")
            .values()
            .cloned()
            .collect()
    }

    /// Finds a task by id, unique id prefix, or name (latest task of that name).
    pub fn find_task(&self, reference: &str) -> Result<TaskRecord, AgentError> {
        let tasks = self.tasks.lock().expect("tasks lock");
        if let Some(task) = tasks.get(reference) {
            return Ok(task.clone());
        }
        let by_name: Vec<&TaskRecord> = tasks.values().filter(|t| t.name == reference).collect();
        if let Some(latest) = by_name
            .iter()
            .filter(|t| !task::is_terminal(&t.state))
            .chain(by_name.iter())
            .max_by(|a, b| {
                (!task::is_terminal(&a.state), a.created_at)
                    .partial_cmp(&(!task::is_terminal(&b.state), b.created_at))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        {
            return Ok((*latest).clone());
        }
        let prefixed: Vec<&TaskRecord> = tasks
            .values()
            .filter(|t| t.id.starts_with(reference))
            .collect();
        match prefixed.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(AgentError::NoSuchTask(reference.to_string())),
            many => Err(AgentError::Ambiguous(
                reference.to_string(),
                many.iter()
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Kills a task found by reference (operator API).
    pub fn kill_by_reference(
        self: &Arc<Self>,
        reference: &str,
        grace: Option<Duration>,
    ) -> Result<TaskRecord, AgentError> {
        let task = self.find_task(reference)?;
        if task::is_terminal(&task.state) {
            return Err(AgentError::AlreadyTerminal(task.id, task.state));
        }
        self.kill_task(&task.framework_id, &task.id, grace);
        Ok(task)
    }

    /// Usage of every running task's container (file reads, done on a blocking thread).
    pub async fn usages(&self) -> Vec<crate::usage::TaskUsage> {
        let running: Vec<TaskRecord> = self
            .tasks()
            .into_iter()
            .filter(|t| !task::is_terminal(&t.state) && t.pid.is_some())
            .collect();
        let containerizer = self.containerizer.clone();
        tokio::task::spawn_blocking(move || {
            running
                .into_iter()
                .filter_map(|task| {
                    let usage = containerizer.usage(&task.container_id).ok()?;
                    Some(crate::usage::TaskUsage {
                        task,
                        usage,
                        timestamp: task::now(),
                    })
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Changes the limits of a running task's container in place, and records them.
    pub fn update_limits(
        &self,
        reference: &str,
        update: &berth_isolators::LimitsUpdate,
    ) -> Result<TaskRecord, AgentError> {
        let task = self.find_task(reference)?;
        if task::is_terminal(&task.state) {
            return Err(AgentError::AlreadyTerminal(task.id, task.state));
        }
        if update.mem_bytes.is_some_and(|m| m < 4 << 20) {
            return Err(AgentError::Update(task.id, "memory below 4 MB".into()));
        }
        self.containerizer
            .update(&task.container_id, update)
            .map_err(|e| AgentError::Update(task.id.clone(), e.to_string()))?;
        let mut tasks = self.tasks.lock().expect("tasks lock");
        let record = tasks
            .get_mut(&task.id)
            .ok_or_else(|| AgentError::NoSuchTask(task.id.clone()))?;
        if let Some(cpus) = update.cpus {
            record.limits.cpus = cpus;
        }
        if let Some(mem) = update.mem_bytes {
            record.limits.mem_mb = mem as f64 / (1024.0 * 1024.0);
        }
        if let Some(pids) = update.pids_max {
            record.limits.pids = Some(pids);
        }
        let record = record.clone();
        drop(tasks);
        self.checkpoint_task(&record);
        Ok(record)
    }

    fn checkpoint_task(&self, record: &TaskRecord) {
        let path = self.tasks_dir().join(format!("{}.json", record.id));
        if let Err(err) = checkpoint::write_json(&path, record) {
            warn!(task_id = %record.id, error = %err, "checkpoint failed");
        }
    }

    /// Records a status update, checkpoints it, and queues it for the master.
    fn update(
        &self,
        task_id: &str,
        state: mesos::TaskState,
        message: Option<String>,
        reason: Option<mesos::task_status::Reason>,
    ) {
        self.update_status(task_id, state, message, reason, None);
    }

    /// [`Self::update`] with the task's health (`TaskStatus.healthy`).
    fn update_status(
        &self,
        task_id: &str,
        state: mesos::TaskState,
        message: Option<String>,
        reason: Option<mesos::task_status::Reason>,
        healthy: Option<bool>,
    ) {
        let source = if reason.is_some_and(|r| {
            matches!(
                r,
                mesos::task_status::Reason::ContainerLaunchFailed
                    | mesos::task_status::Reason::ExecutorTerminated
            )
        }) {
            mesos::task_status::Source::Agent
        } else {
            mesos::task_status::Source::Executor
        };
        let record = StatusRecord {
            state: state.as_str_name().to_string(),
            timestamp: task::now(),
            message,
            reason: reason.map(|r| r.as_str_name().to_string()),
            source: source.as_str_name().to_string(),
            uuid: task::hex_encode(uuid::Uuid::new_v4().as_bytes()),
            acked: false,
            healthy,
        };
        let (framework_id, status) = {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            let Some(task) = tasks.get_mut(task_id) else {
                warn!(task_id, "update for unknown task");
                return;
            };
            if task::is_terminal(&task.state) {
                return;
            }
            task.state = record.state.clone();
            if state == mesos::TaskState::TaskRunning && task.started_at.is_none() {
                task.started_at = Some(record.timestamp);
            }
            let agent_id = self.agent_id.lock().expect("agent id lock").clone();
            let status = task.status_proto(&record, agent_id.as_deref().unwrap_or(""));
            task.statuses.push(record);
            // Checkpointed before it is sent: nothing is lost on a crash.
            self.checkpoint_task(task);
            crash_point_after_checkpoint(state);
            (task.framework_id.clone(), status)
        };
        info!(
            task_id,
            state = state.as_str_name(),
            ?healthy,
            "status update"
        );
        if reason == Some(mesos::task_status::Reason::TaskHealthCheckStatusUpdated)
            && state == mesos::TaskState::TaskRunning
        {
            let dropped = self.updates.enqueue_superseding(
                &framework_id,
                task_id,
                status,
                health_checks::is_health_update,
            );
            health_checks::mark_superseded(self, task_id, &dropped);
        } else {
            self.updates.enqueue(&framework_id, task_id, status);
        }
        self.flush_updates();
    }

    async fn launch(self: Arc<Self>, task_id: String, config: ContainerConfig) {
        let begun = Instant::now();
        let container_id = config.id.clone();
        match self.containerizer.launch(config).await {
            Ok(launched) => {
                self.metrics.launch_succeeded(begun.elapsed());
                let ip = self
                    .containerizer
                    .describe(&container_id)
                    .get("network/bridge")
                    .and_then(|b| b["ip"].as_str())
                    .map(str::to_string);
                if let Some(task) = self.tasks.lock().expect("tasks lock").get_mut(&task_id) {
                    task.pid = Some(launched.pid);
                    task.ip = ip;
                }
                self.update(&task_id, mesos::TaskState::TaskRunning, None, None);
                let pending_kill = self
                    .kill_requests
                    .lock()
                    .expect("kill lock")
                    .remove(&task_id);
                if let Some(grace) = pending_kill {
                    let _ = self.containerizer.kill(&container_id, grace).await;
                } else {
                    self.start_health_check(&task_id);
                }
                self.wait_container(task_id, container_id).await;
            }
            Err(err) if err.is_invalid_task() => {
                // Known only once the image's defaults are: the task has nothing to run.
                self.metrics.launch_failed();
                self.update(
                    &task_id,
                    mesos::TaskState::TaskError,
                    Some(err.to_string()),
                    Some(mesos::task_status::Reason::TaskInvalid),
                );
            }
            Err(err) => {
                self.metrics.launch_failed();
                self.update(
                    &task_id,
                    mesos::TaskState::TaskFailed,
                    Some(format!("launch failed: {err}")),
                    Some(mesos::task_status::Reason::ContainerLaunchFailed),
                );
            }
        }
    }

    async fn wait_container(self: Arc<Self>, task_id: String, container_id: String) {
        match self.containerizer.wait(&container_id).await {
            Ok(termination) => self.finish(&task_id, &container_id, termination).await,
            Err(err) => {
                self.update(
                    &task_id,
                    mesos::TaskState::TaskFailed,
                    Some(format!("waiting for the container failed: {err}")),
                    Some(mesos::task_status::Reason::ExecutorTerminated),
                );
                let _ = self.containerizer.destroy(&container_id).await;
            }
        }
    }

    async fn finish(&self, task_id: &str, container_id: &str, termination: Termination) {
        let (state, mut message, mut reason, code) = terminal_status(&termination);
        let mut healthy = None;
        if let Some(task) = self.tasks.lock().expect("tasks lock").get_mut(task_id) {
            task.exit_code = code;
            task.pid = None;
            if let Some(why) = health_checks::killed_by_check(task.health.as_ref()) {
                message = format!("{message} ({why})");
                reason = Some(mesos::task_status::Reason::TaskHealthCheckStatusUpdated);
                healthy = Some(false);
            }
        }
        self.update_status(task_id, state, Some(message), reason, healthy);
        if let Err(err) = self.containerizer.destroy(container_id).await {
            warn!(task_id, container_id, error = %err, "destroy after exit");
        }
    }

    /// Kills every running task and waits for them to end (used on shutdown in `--dev` mode).
    pub async fn kill_all(self: &Arc<Self>, grace: Duration) {
        let running: Vec<(String, String)> = self
            .tasks()
            .into_iter()
            .filter(|t| !task::is_terminal(&t.state))
            .map(|t| (t.framework_id, t.id))
            .collect();
        for (framework_id, task_id) in &running {
            self.kill_task(framework_id, task_id, Some(grace));
        }
        let deadline = Instant::now() + grace + Duration::from_secs(15);
        while Instant::now() < deadline
            && (self.tasks().iter().any(|t| !task::is_terminal(&t.state))
                || !self.containerizer.container_ids().is_empty())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn grace_of(&self, task_id: &str) -> Duration {
        self.tasks
            .lock()
            .expect("tasks lock")
            .get(task_id)
            .map(|t| Duration::from_secs_f64(t.grace_secs))
            .unwrap_or(self.settings.default_grace)
    }
}

/// Maps a container's end to a task state, message, reason and exit code.
fn terminal_status(
    termination: &Termination,
) -> (
    mesos::TaskState,
    String,
    Option<mesos::task_status::Reason>,
    Option<i32>,
) {
    use mesos::{TaskState, task_status::Reason};
    let Some(status) = &termination.status else {
        return (
            TaskState::TaskFailed,
            "the container ended without an exit record".into(),
            Some(Reason::ExecutorTerminated),
            None,
        );
    };
    let code = Some(status.shell_code());
    match &termination.limitation {
        Some(berth_isolators::Limitation::Memory { message }) => {
            return (
                TaskState::TaskFailed,
                format!("Memory limit exceeded: {message}"),
                Some(Reason::ContainerLimitationMemory),
                code,
            );
        }
        Some(berth_isolators::Limitation::Disk { message }) => {
            return (
                TaskState::TaskFailed,
                format!("Disk limit exceeded: {message}"),
                Some(Reason::ContainerLimitationDisk),
                code,
            );
        }
        None => {}
    }
    if let Some(error) = &status.launch_error {
        return (
            TaskState::TaskFailed,
            format!("Failed to launch the command: {error}"),
            Some(Reason::CommandExecutorFailed),
            code,
        );
    }
    if status.killed_by_request {
        let how = match (status.code, status.signal) {
            (_, Some(sig)) => format!("killed by signal {sig}"),
            (Some(c), _) => format!("exited with status {c}"),
            _ => "ended".into(),
        };
        return (
            TaskState::TaskKilled,
            format!("Command {how} after a kill request"),
            None,
            code,
        );
    }
    match (status.code, status.signal) {
        (Some(0), _) => (
            TaskState::TaskFinished,
            "Command exited with status 0".into(),
            None,
            code,
        ),
        (Some(c), _) => (
            TaskState::TaskFailed,
            format!("Command exited with status {c}"),
            Some(Reason::CommandExecutorFailed),
            code,
        ),
        (None, Some(sig)) => (
            TaskState::TaskFailed,
            format!(
                "Command terminated with signal {sig} ({})",
                signal_name(sig)
            ),
            Some(Reason::CommandExecutorFailed),
            code,
        ),
        (None, None) => (
            TaskState::TaskFailed,
            "Command ended in an unknown way".into(),
            Some(Reason::ExecutorTerminated),
            code,
        ),
    }
}

fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown")
}

impl AgentPort for Arc<Agent> {
    fn run_task(&self, framework: &mesos::FrameworkInfo, task: mesos::TaskInfo) {
        let framework_id = framework
            .id
            .as_ref()
            .map(|f| f.value.clone())
            .unwrap_or_default();
        let task_id = task.task_id.value.clone();
        let container_id = uuid::Uuid::new_v4().to_string();
        let sandbox = self.containerizer.sandbox_dir(&container_id);
        let grace = task
            .kill_policy
            .as_ref()
            .and_then(|k| k.grace_period.as_ref())
            .map(|d| Duration::from_nanos(d.nanoseconds.max(0) as u64))
            .unwrap_or(self.settings.default_grace);
        let agent_id = self.agent_id().unwrap_or_default();
        let built = container_config(
            &self.settings,
            &agent_id,
            &framework_id,
            &container_id,
            &task,
            &sandbox,
        );
        let limits = built.as_ref().map(|(_, l)| *l).unwrap_or(TaskLimits {
            cpus: 0.0,
            mem_mb: 0.0,
            pids: None,
        });
        {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            if tasks.contains_key(&task_id) {
                drop(tasks);
                warn!(task_id, "duplicate task id");
                // The existing task keeps its record; the master rejects duplicates before this.
                return;
            }
            let record = TaskRecord {
                id: task_id.clone(),
                name: task.name.clone(),
                framework_id: framework_id.clone(),
                container_id: container_id.clone(),
                task_info: berth_proto::codec::to_json(&task),
                limits,
                state: mesos::TaskState::TaskStaging.as_str_name().to_string(),
                statuses: Vec::new(),
                pid: None,
                created_at: task::now(),
                started_at: None,
                exit_code: None,
                grace_secs: grace.as_secs_f64(),
                framework_info: berth_proto::codec::to_json(framework),
                ip: None,
                health: None,
            };
            self.checkpoint_task(&record);
            tasks.insert(task_id.clone(), record);
        }
        match built {
            Ok((config, _)) => {
                self.update(&task_id, mesos::TaskState::TaskStarting, None, None);
                tokio::spawn(self.clone().launch(task_id, config));
            }
            Err(reason) => self.update(
                &task_id,
                mesos::TaskState::TaskError,
                Some(reason),
                Some(mesos::task_status::Reason::TaskInvalid),
            ),
        }
    }

    fn kill_task(&self, _framework_id: &str, task_id: &str, grace: Option<Duration>) {
        let grace = grace.unwrap_or_else(|| self.grace_of(task_id));
        let Some(task) = self.tasks.lock().expect("tasks lock").get(task_id).cloned() else {
            warn!(task_id, "kill of unknown task");
            return;
        };
        if task::is_terminal(&task.state) {
            return;
        }
        if task.state != "TASK_RUNNING" {
            // Still launching: the launch path kills it as soon as it runs.
            self.kill_requests
                .lock()
                .expect("kill lock")
                .insert(task_id.to_string(), grace);
        }
        let agent = self.clone();
        tokio::spawn(async move {
            if let Err(err) = agent.containerizer.kill(&task.container_id, grace).await {
                warn!(task_id = %task.id, error = %err, "kill");
            }
        });
    }

    fn acknowledge(&self, _framework_id: &str, task_id: &str, uuid: &[u8]) {
        if !self.updates.acknowledge(task_id, uuid) {
            return;
        }
        let hex = task::hex_encode(uuid);
        let mut tasks = self.tasks.lock().expect("tasks lock");
        if let Some(task) = tasks.get_mut(task_id) {
            if let Some(status) = task.statuses.iter_mut().find(|s| s.uuid == hex) {
                status.acked = true;
            }
            self.checkpoint_task(task);
        }
        drop(tasks);
        self.flush_updates();
    }

    fn shutdown_framework(&self, framework_id: &str) {
        let ids: Vec<String> = self
            .tasks()
            .into_iter()
            .filter(|t| t.framework_id == framework_id && !task::is_terminal(&t.state))
            .map(|t| t.id)
            .collect();
        for id in ids {
            self.kill_task(framework_id, &id, None);
        }
    }
}

impl AgentCore for Arc<Agent> {
    fn registration(&self) -> AgentRegistration {
        let agent_id = self.agent_id();
        let records: Vec<TaskRecord> = self.tasks().into_iter().filter(|t| t.is_active()).collect();
        let mut frameworks: BTreeMap<String, mesos::FrameworkInfo> = BTreeMap::new();
        for record in &records {
            let info = Some(&record.framework_info)
                .filter(|v| !v.is_null())
                .and_then(|v| serde_json::to_vec(v).ok())
                .and_then(|b| berth_proto::codec::from_json::<mesos::FrameworkInfo>(&b).ok())
                .unwrap_or_else(|| mesos::FrameworkInfo {
                    user: String::new(),
                    name: record.framework_id.clone(),
                    id: Some(mesos::FrameworkId {
                        value: record.framework_id.clone(),
                    }),
                    ..Default::default()
                });
            frameworks
                .entry(record.framework_id.clone())
                .or_insert(info);
        }
        AgentRegistration {
            id: agent_id.clone(),
            hostname: self.settings.hostname.clone(),
            port: self.settings.port,
            resources: self.settings.resources.clone(),
            attributes: self.settings.attributes.clone(),
            tasks: records
                .iter()
                .map(|r| r.to_mesos_task(agent_id.as_deref().unwrap_or("")))
                .collect(),
            frameworks: frameworks.into_values().collect(),
            checkpointed_resources: self
                .checkpointed_resources
                .lock()
                .expect("resources lock")
                .clone(),
        }
    }

    fn registered(&self, agent_id: &str) {
        let changed = {
            let mut current = self.agent_id.lock().expect("agent id lock");
            let changed = current.as_deref() != Some(agent_id);
            *current = Some(agent_id.to_string());
            changed
        };
        if changed {
            let path = self.settings.meta_dir.join(AGENT_ID_FILE);
            if let Err(err) = checkpoint::write_json(&path, &serde_json::json!({"id": agent_id})) {
                warn!(agent_id, error = %err, "checkpointing the agent id failed");
            }
        }
        self.updates.resume();
        self.flush_updates();
    }

    fn reconcile(&self, framework_id: &str, task_ids: Vec<String>) {
        let known: Vec<String> = task_ids
            .into_iter()
            .filter(|id| !self.tasks.lock().expect("tasks lock").contains_key(id))
            .collect();
        let Some(master) = self.master.get() else {
            return;
        };
        for task_id in known {
            // Mesos: a task the master believes in and the agent does not know is gone.
            // Reconciliation answers carry no uuid and are not acknowledged.
            let mut status = mesos::TaskStatus {
                task_id: mesos::TaskId {
                    value: task_id.clone(),
                },
                agent_id: self.agent_id().map(|value| mesos::AgentId { value }),
                timestamp: Some(task::now()),
                message: Some("the agent does not know this task".into()),
                ..Default::default()
            };
            status.set_state(mesos::TaskState::TaskLost);
            status.set_reason(mesos::task_status::Reason::Reconciliation);
            status.set_source(mesos::task_status::Source::Agent);
            info!(
                framework_id,
                task_id, "reconciliation: unknown task reported lost"
            );
            master.status_update(framework_id, status, mesos::TaskState::TaskLost);
        }
    }

    fn update_framework(&self, info: mesos::FrameworkInfo) {
        let Some(framework_id) = info.id.as_ref().map(|f| f.value.clone()) else {
            return;
        };
        let json = berth_proto::codec::to_json(&info);
        let mut tasks = self.tasks.lock().expect("tasks lock");
        for task in tasks
            .values_mut()
            .filter(|t| t.framework_id == framework_id)
        {
            task.framework_info = json.clone();
            self.checkpoint_task(task);
        }
    }

    fn checkpoint_resources(&self, resources: Vec<mesos::Resource>) {
        let record = CheckpointedResources { resources };
        let path = self.settings.meta_dir.join("resources.json");
        if let Err(err) = checkpoint::write_json(&path, &berth_proto::codec::to_json(&record)) {
            warn!(error = %err, "checkpointing resources failed");
        }
        info!(
            count = record.resources.len(),
            "checkpointed resources from the master"
        );
        *self.checkpointed_resources.lock().expect("resources lock") = record.resources;
    }

    fn shutdown(&self, message: &str) {
        warn!(
            reason = message,
            "shutting down at the master's request; the agent id is forgotten"
        );
        // A removed agent must register anew (Mesos: a new agent id) when it comes back.
        let _ = std::fs::remove_file(self.settings.meta_dir.join(AGENT_ID_FILE));
        *self.agent_id.lock().expect("agent id lock") = None;
        let _ = self.shutdown.send(true);
    }
}

/// Fault injection for the crash tests: `BERTH_TEST_CRASH_AFTER_CHECKPOINT=TASK_RUNNING` makes
/// the agent die like a `kill -9` right after it checkpointed an update of that state and
/// before it sent it. Unset in normal operation.
fn crash_point_after_checkpoint(state: mesos::TaskState) {
    if std::env::var("BERTH_TEST_CRASH_AFTER_CHECKPOINT").is_ok_and(|s| s == state.as_str_name()) {
        tracing::error!(
            state = state.as_str_name(),
            "fault injection: dying between checkpoint and send"
        );
        std::process::abort();
    }
}

/// The checkpoint of `CheckpointResourcesMessage` resources.
type CheckpointedResources = berth_proto::mesos::internal::CheckpointResourcesMessage;

fn load_checkpointed_resources(meta_dir: &std::path::Path) -> Vec<mesos::Resource> {
    let path = meta_dir.join("resources.json");
    match checkpoint::read_json::<serde_json::Value>(&path) {
        Ok(Some(value)) => serde_json::to_vec(&value)
            .ok()
            .and_then(|bytes| berth_proto::codec::from_json::<CheckpointedResources>(&bytes).ok())
            .map(|c| c.resources)
            .unwrap_or_default(),
        Ok(None) => Vec::new(),
        Err(err) => {
            warn!(path = %path.display(), error = %err, "unreadable resource checkpoint ignored");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_executor::ExitStatus;

    fn exit(code: Option<i32>, signal: Option<i32>, killed: bool) -> Termination {
        Termination {
            status: Some(ExitStatus {
                code,
                signal,
                killed_by_request: killed,
                launch_error: None,
                at: 0.0,
            }),
            limitation: None,
        }
    }

    #[test]
    fn exit_statuses_map_to_task_states() {
        use mesos::TaskState::*;
        assert_eq!(terminal_status(&exit(Some(0), None, false)).0, TaskFinished);
        let (state, message, _, code) = terminal_status(&exit(Some(3), None, false));
        assert_eq!((state, code), (TaskFailed, Some(3)));
        assert!(message.contains("status 3"));
        let (state, message, _, code) = terminal_status(&exit(None, Some(9), false));
        assert_eq!((state, code), (TaskFailed, Some(137)));
        assert!(message.contains("signal 9"), "{message}");
        assert_eq!(terminal_status(&exit(None, Some(15), true)).0, TaskKilled);
        let mut oom = exit(None, Some(9), false);
        oom.limitation = Some(berth_isolators::Limitation::Memory {
            message: "x".into(),
        });
        assert_eq!(
            terminal_status(&oom).2,
            Some(mesos::task_status::Reason::ContainerLimitationMemory)
        );
    }
}
