//! The agent as the Mesos operator APIs describe it: frameworks, their executors, and the
//! executors' tasks, each in one of the phases Mesos reports.
//!
//! berth runs every task in a container of its own, the equivalent of a Mesos command task: as
//! Mesos does for those, each task has an executor whose id is the task id, whose name is
//! `Command Executor (Task: ID) (Command: ...)`, whose source is the task id, and whose container
//! is the task's container. A [`Snapshot`] is a copy of what the agent knows at one moment;
//! [`Model::new`] sorts it into frameworks and executors; the v1 calls ([`super::calls`]) and the
//! v0 `/state` document ([`super::state_v0`]) are rendered from the model. Everything here is pure.

use std::{collections::BTreeMap, path::PathBuf};

use berth_proto::{codec, mesos::v1 as mesos};
use serde_json::Value;

use crate::{
    resources::ResourceSet,
    task::{self, TaskRecord},
};

/// Most completed frameworks Mesos keeps (`MAX_COMPLETED_FRAMEWORKS`).
pub const MAX_COMPLETED_FRAMEWORKS: usize = 50;
/// Most completed executors per framework Mesos keeps by default
/// (`--max_completed_executors_per_framework`).
pub const MAX_COMPLETED_EXECUTORS_PER_FRAMEWORK: usize = 150;

/// What the operator APIs report, copied from the agent at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Agent id.
    pub agent_id: String,
    /// Hostname.
    pub hostname: String,
    /// libprocess pid, `slave(1)@IP:PORT`.
    pub pid: String,
    /// Port of the agent's HTTP API.
    pub port: u16,
    /// Total resources.
    pub resources: ResourceSet,
    /// Attributes as given (`rack:r1` is `("rack", "r1")`).
    pub attributes: Vec<(String, String)>,
    /// Flags, name and value.
    pub flags: Vec<(String, String)>,
    /// Capabilities the agent advertises to its master (`MULTI_ROLE`...).
    pub capabilities: Vec<String>,
    /// Unix time the agent started.
    pub start_time: f64,
    /// Hostname of the master the agent is registered with.
    pub master_hostname: Option<String>,
    /// Every task the agent knows.
    pub tasks: Vec<TaskRecord>,
    /// Sandbox directory of each task's container, by container id.
    pub sandboxes: BTreeMap<String, PathBuf>,
}

/// Where a task is in its life, as Mesos groups tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, its container not launched yet (`TASK_STAGING`): Mesos' queued tasks, waiting
    /// for their executor to register.
    Queued,
    /// Starting, running or being killed.
    Launched,
    /// Ended, its terminal status update not acknowledged yet.
    Terminated,
    /// Ended and acknowledged: its executor is a completed executor.
    Completed,
}

impl Phase {
    /// The phase of `task`.
    pub fn of(task: &TaskRecord) -> Phase {
        if task::is_terminal(&task.state) {
            if task.statuses.last().is_some_and(|s| s.acked) {
                Phase::Completed
            } else {
                Phase::Terminated
            }
        } else if task.state == mesos::TaskState::TaskStaging.as_str_name() {
            Phase::Queued
        } else {
            Phase::Launched
        }
    }
}

/// One task and the command executor that runs it.
#[derive(Debug, Clone)]
pub struct ExecutorView<'a> {
    /// The task.
    pub task: &'a TaskRecord,
    /// The TaskInfo the task was launched with (`None` if the checkpoint holds none).
    pub task_info: Option<mesos::TaskInfo>,
    /// The task's phase.
    pub phase: Phase,
    /// The sandbox directory.
    pub directory: String,
}

/// A framework with tasks on this agent.
#[derive(Debug, Clone)]
pub struct FrameworkView<'a> {
    /// Framework id.
    pub id: String,
    /// Its FrameworkInfo (as the latest task brought it), always with `id` set.
    pub info: mesos::FrameworkInfo,
    /// Executors still running or with unacknowledged terminal updates, oldest first.
    pub executors: Vec<ExecutorView<'a>>,
    /// Completed executors, oldest first (at most
    /// [`MAX_COMPLETED_EXECUTORS_PER_FRAMEWORK`], the most recent ones).
    pub completed_executors: Vec<ExecutorView<'a>>,
}

/// Frameworks, executors and tasks of a snapshot.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    /// The snapshot.
    pub snapshot: &'a Snapshot,
    /// Frameworks with at least one executor that is not completed.
    pub frameworks: Vec<FrameworkView<'a>>,
    /// Frameworks whose executors all completed (at most [`MAX_COMPLETED_FRAMEWORKS`], the most
    /// recent ones).
    pub completed_frameworks: Vec<FrameworkView<'a>>,
}

/// Decodes a TaskInfo kept as Mesos JSON in a checkpoint (`None` if absent or invalid).
pub fn decode_task_info(value: &Value) -> Option<mesos::TaskInfo> {
    if value.is_null() {
        return None;
    }
    codec::from_json(&serde_json::to_vec(value).ok()?).ok()
}

/// Decodes a FrameworkInfo kept as Mesos JSON in a checkpoint (`None` if absent or invalid).
pub fn decode_framework_info(value: &Value) -> Option<mesos::FrameworkInfo> {
    if value.is_null() {
        return None;
    }
    codec::from_json(&serde_json::to_vec(value).ok()?).ok()
}

impl<'a> Model<'a> {
    /// Sorts the snapshot's tasks into frameworks and executors.
    pub fn new(snapshot: &'a Snapshot) -> Model<'a> {
        let mut tasks: Vec<&TaskRecord> = snapshot.tasks.iter().collect();
        tasks.sort_by(|a, b| a.created_at.total_cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let mut by_framework: BTreeMap<&str, Vec<&TaskRecord>> = BTreeMap::new();
        for task in tasks {
            by_framework
                .entry(task.framework_id.as_str())
                .or_default()
                .push(task);
        }
        let mut frameworks = Vec::new();
        let mut completed = Vec::new();
        for (id, tasks) in by_framework {
            let info = framework_info(id, &tasks);
            let latest = tasks.last().map(|t| t.created_at).unwrap_or(0.0);
            let mut view = FrameworkView {
                id: id.to_string(),
                info,
                executors: Vec::new(),
                completed_executors: Vec::new(),
            };
            for task in tasks {
                let executor = ExecutorView {
                    task,
                    task_info: decode_task_info(&task.task_info),
                    phase: Phase::of(task),
                    directory: snapshot
                        .sandboxes
                        .get(&task.container_id)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                };
                if executor.phase == Phase::Completed {
                    view.completed_executors.push(executor);
                } else {
                    view.executors.push(executor);
                }
            }
            keep_last(
                &mut view.completed_executors,
                MAX_COMPLETED_EXECUTORS_PER_FRAMEWORK,
            );
            if view.executors.is_empty() {
                completed.push((latest, view));
            } else {
                frameworks.push(view);
            }
        }
        completed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut completed_frameworks: Vec<FrameworkView> =
            completed.into_iter().map(|(_, v)| v).collect();
        keep_last(&mut completed_frameworks, MAX_COMPLETED_FRAMEWORKS);
        Model {
            snapshot,
            frameworks,
            completed_frameworks,
        }
    }

    /// Active and completed frameworks, in that order.
    pub fn all_frameworks(&self) -> impl Iterator<Item = &FrameworkView<'a>> {
        self.frameworks.iter().chain(&self.completed_frameworks)
    }
}

fn keep_last<T>(items: &mut Vec<T>, max: usize) {
    if items.len() > max {
        items.drain(..items.len() - max);
    }
}

/// The FrameworkInfo the most recent task of the framework carried; a minimal one (empty user
/// and name) for tasks checkpointed without it.
fn framework_info(id: &str, tasks: &[&TaskRecord]) -> mesos::FrameworkInfo {
    let mut info = tasks
        .iter()
        .rev()
        .find_map(|t| decode_framework_info(&t.framework_info))
        .unwrap_or_default();
    info.id = Some(mesos::FrameworkId {
        value: id.to_string(),
    });
    info
}

impl ExecutorView<'_> {
    /// The executor id: the task id, as for Mesos command executors.
    pub fn executor_id(&self) -> mesos::ExecutorId {
        mesos::ExecutorId {
            value: self.task.id.clone(),
        }
    }

    /// The task's resources: from its TaskInfo, else from its limits.
    pub fn resources(&self) -> Vec<mesos::Resource> {
        match &self.task_info {
            Some(info) => info.resources.clone(),
            None => {
                let mut set = ResourceSet::default();
                set.scalars.insert("cpus".into(), self.task.limits.cpus);
                set.scalars.insert("mem".into(), self.task.limits.mem_mb);
                set.to_proto()
            }
        }
    }

    /// Resources the executor holds: its task's while the task has not ended (Mesos:
    /// `Executor::allocatedResources`; command executors hold none of their own).
    pub fn allocated_resources(&self) -> Vec<mesos::Resource> {
        match self.phase {
            Phase::Queued | Phase::Launched => self.resources(),
            Phase::Terminated | Phase::Completed => Vec::new(),
        }
    }

    /// The role the task's resources are allocated to (`*` when they carry none).
    pub fn role(&self) -> String {
        self.task_info
            .as_ref()
            .and_then(|i| i.resources.first())
            .and_then(|r| r.allocation_info.as_ref())
            .and_then(|a| a.role.clone())
            .unwrap_or_else(|| "*".into())
    }

    /// Mesos' name of a command executor: `Command Executor (Task: ID) (Command: sh -c '...')`.
    pub fn name(&self) -> String {
        let command = self.task_info.as_ref().and_then(|i| i.command.as_ref());
        let what = match command {
            Some(c) if c.shell() => match &c.value {
                None => "(Command: NO COMMAND)".to_string(),
                Some(v) => format!("(Command: sh -c '{}')", abbreviate(v)),
            },
            Some(c) => match &c.value {
                None => "(Command: NO EXECUTABLE)".to_string(),
                Some(v) => {
                    let args = format!("{v}, {}", c.arguments.join(", "));
                    format!("(Command: [{}])", abbreviate(&args))
                }
            },
            None => "(Command: NO COMMAND)".to_string(),
        };
        format!("Command Executor (Task: {}) {what}", self.task.id)
    }

    /// The ExecutorInfo Mesos builds for a command task (`Slave::getExecutorInfo`): id and
    /// source are the task id; the task's container, labels, URIs, environment and user (no
    /// command of its own: berth's executor is not a Mesos command).
    pub fn executor_info(&self, framework_id: &str) -> mesos::ExecutorInfo {
        let info = self.task_info.as_ref();
        let command = info.and_then(|i| i.command.as_ref());
        mesos::ExecutorInfo {
            executor_id: self.executor_id(),
            framework_id: Some(mesos::FrameworkId {
                value: framework_id.to_string(),
            }),
            name: Some(self.name()),
            source: Some(self.task.id.clone()),
            container: info.and_then(|i| i.container.clone()),
            labels: info.and_then(|i| i.labels.clone()),
            command: command
                .filter(|c| !c.uris.is_empty() || c.environment.is_some() || c.user.is_some())
                .map(|c| mesos::CommandInfo {
                    uris: c.uris.clone(),
                    environment: c.environment.clone(),
                    user: c.user.clone(),
                    ..Default::default()
                }),
            ..Default::default()
        }
    }

    /// The task as a Mesos `Task` (command tasks carry no executor id).
    pub fn task_proto(&self, agent_id: &str) -> mesos::Task {
        let task = self.task;
        let info = self.task_info.as_ref();
        let mut proto = mesos::Task {
            name: task.name.clone(),
            task_id: mesos::TaskId {
                value: task.id.clone(),
            },
            framework_id: mesos::FrameworkId {
                value: task.framework_id.clone(),
            },
            agent_id: mesos::AgentId {
                value: agent_id.to_string(),
            },
            resources: self.resources(),
            statuses: task
                .statuses
                .iter()
                .map(|s| task.status_proto(s, agent_id))
                .collect(),
            labels: info.and_then(|i| i.labels.clone()),
            container: info.and_then(|i| i.container.clone()),
            kill_policy: info.and_then(|i| i.kill_policy),
            user: info
                .and_then(|i| i.command.as_ref())
                .and_then(|c| c.user.clone()),
            ..Default::default()
        };
        proto.set_state(
            mesos::TaskState::from_str_name(&task.state).unwrap_or(mesos::TaskState::TaskUnknown),
        );
        proto
    }
}

/// The first 12 characters and `...` when longer than 15 (as Mesos names executors).
fn abbreviate(text: &str) -> String {
    if text.chars().count() > 15 {
        format!("{}...", text.chars().take(12).collect::<String>())
    } else {
        text.to_string()
    }
}

/// An attribute typed the way Mesos parses `--attributes` values: `[a-b,...]` ranges, `{a,b}` a
/// set, a number a scalar, anything else text.
pub fn attribute(name: &str, text: &str) -> mesos::Attribute {
    use mesos::value;
    let mut attribute = mesos::Attribute {
        name: name.to_string(),
        ..Default::default()
    };
    let trimmed = text.trim();
    if let Some(ranges) = parse_ranges(trimmed) {
        attribute.set_type(value::Type::Ranges);
        attribute.ranges = Some(value::Ranges {
            range: ranges
                .into_iter()
                .map(|(begin, end)| value::Range { begin, end })
                .collect(),
        });
    } else if let Some(inner) = trimmed.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        attribute.set_type(value::Type::Set);
        attribute.set = Some(value::Set {
            item: inner
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .map(str::to_string)
                .collect(),
        });
    } else if let Ok(number) = trimmed.parse::<f64>()
        && number.is_finite()
    {
        attribute.set_type(value::Type::Scalar);
        attribute.scalar = Some(value::Scalar { value: number });
    } else {
        attribute.set_type(value::Type::Text);
        attribute.text = Some(value::Text {
            value: text.to_string(),
        });
    }
    attribute
}

fn parse_ranges(text: &str) -> Option<Vec<(u64, u64)>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (b, e) = part.split_once('-')?;
            Some((b.trim().parse().ok()?, e.trim().parse().ok()?))
        })
        .collect()
}

/// The agent's `AgentInfo` (v1 name of `SlaveInfo`).
pub fn agent_info(snapshot: &Snapshot) -> mesos::AgentInfo {
    mesos::AgentInfo {
        hostname: snapshot.hostname.clone(),
        port: Some(i32::from(snapshot.port)),
        resources: snapshot.resources.to_proto(),
        attributes: snapshot
            .attributes
            .iter()
            .map(|(name, value)| attribute(name, value))
            .collect(),
        id: Some(mesos::AgentId {
            value: snapshot.agent_id.clone(),
        }),
        domain: None,
    }
}
