//! # berth-containerizer
//!
//! Owns the lifecycle of every container on the node: `launch`, `wait`, `kill`, `destroy`,
//! `usage` and `recover`, plus the container's sandbox (its working files and stdout/stderr logs)
//! and its runtime state (shim socket, pid and exit records).
//!
//! A launch is one straight line (see [`Containerizer::launch`]):
//! sandbox → the image, if any ([`provisioner`]: pull, lease, unpack, merge with the task) →
//! every isolator's `prepare` → the `berth-executor` shim clones the workload into its
//! namespaces, blocked → every isolator's `isolate(pid)` (cgroup attach) → `Start` → the workload
//! execs. A monitor task per container follows the shim's events; when the workload ends it asks
//! the isolators what limit (if any) ended it, and publishes a [`Termination`].
//!
//! Paths: sandboxes live under `<work-dir>/sandboxes/<container-id>`, runtime state under
//! `<runtime-dir>/containers/<container-id>`. A container's runtime state survives an agent
//! restart (the shim keeps running), which is what [`Containerizer::recover`] reattaches to.
#![warn(missing_docs)]

mod container;
mod error;
pub mod image;
pub mod oci;
pub mod provisioner;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_executor::{RootfsSource, ShimConfig, ShimEvent, ShimRequest, client};
use berth_isolators::{
    ContainerSpec, IsolationOptions, Isolator, LaunchInfo, Limits, LimitsUpdate, NetworkMode, Usage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

pub use container::Termination;
use container::{ContainerHandle, monitor};
pub use error::ContainerizerError;
use image::ImageStore;
pub use provisioner::process::ArgvKind;
use provisioner::{Provisioned, TaskProcess};

/// What to run in a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Container id (path-safe; checked).
    pub id: String,
    /// argv of the workload (with an image, see `argv_kind`).
    pub argv: Vec<String>,
    /// Environment of the workload (complete: nothing is inherited; with an image, the image's
    /// `Env` comes first and this overrides it).
    pub env: Vec<(String, String)>,
    /// Working directory inside the container; when `None`, the sandbox (native containers) or
    /// the image's `WorkingDir`, else `/` (image containers).
    pub cwd: Option<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// Networking.
    pub network: NetworkMode,
    /// Hostname inside the container.
    pub hostname: String,
    /// Isolation choices (capabilities, seccomp, volumes, user namespace, ...).
    #[serde(default)]
    pub options: IsolationOptions,
    /// The image the container's root filesystem is made of (a reference, pulled into the
    /// image store when absent); `None`: the host's root (a native container).
    #[serde(default)]
    pub image: Option<String>,
    /// With an image: whether `argv` is the whole command or the Entrypoint's arguments.
    #[serde(default)]
    pub argv_kind: ArgvKind,
}

/// Where the containerizer keeps its files, and which shim binary it runs.
#[derive(Debug, Clone)]
pub struct ContainerizerPaths {
    /// Sandboxes root (`<work-dir>/sandboxes`).
    pub sandboxes: PathBuf,
    /// Runtime state root (`<runtime-dir>/containers`).
    pub runtime: PathBuf,
    /// The `berth-executor` binary.
    pub executor_bin: PathBuf,
}

/// The result of a successful launch.
#[derive(Debug, Clone, Serialize)]
pub struct Launched {
    /// Host pid of the container's init process.
    pub pid: i32,
    /// Pid of the supervising shim.
    pub shim_pid: i32,
    /// The container's sandbox directory.
    pub sandbox: PathBuf,
}

/// What recovery found for one container the agent already knew.
#[derive(Debug)]
pub enum Recovered {
    /// The shim is alive: the container is running and being monitored again.
    Running {
        /// Host pid of the container init, when known.
        pid: Option<i32>,
    },
    /// The container ended while the agent was away.
    Terminated(Termination),
    /// No trace of the container was left (no shim, no exit record).
    Gone,
    /// The agent died in the middle of launching it: the workload never started. Its shim
    /// was told to kill it; the caller destroys the container.
    LaunchInterrupted,
}

/// The containerizer. Cheap to share behind an `Arc`.
pub struct Containerizer {
    paths: ContainerizerPaths,
    isolators: Vec<Arc<dyn Isolator>>,
    images: Option<Arc<ImageStore>>,
    containers: Mutex<HashMap<String, Arc<ContainerHandle>>>,
}

impl Containerizer {
    /// Creates the containerizer; creates the sandboxes and runtime roots.
    pub fn new(
        paths: ContainerizerPaths,
        isolators: Vec<Arc<dyn Isolator>>,
    ) -> Result<Self, ContainerizerError> {
        for dir in [&paths.sandboxes, &paths.runtime] {
            std::fs::create_dir_all(dir).map_err(|source| ContainerizerError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Self {
            paths,
            isolators,
            images: None,
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// Uses `store` for image containers (without one, a config with an image fails to launch).
    pub fn with_image_store(mut self, store: Arc<ImageStore>) -> Self {
        self.images = Some(store);
        self
    }

    /// The image store, if any.
    pub fn image_store(&self) -> Option<&Arc<ImageStore>> {
        self.images.as_ref()
    }

    /// The sandbox directory of a container.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.paths.sandboxes.join(id)
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.paths.runtime.join(id)
    }

    /// Ids of the containers currently monitored.
    pub fn container_ids(&self) -> Vec<String> {
        self.containers
            .lock()
            .expect("containers lock")
            .keys()
            .cloned()
            .collect()
    }

    fn handle(&self, id: &str) -> Result<Arc<ContainerHandle>, ContainerizerError> {
        self.containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerizerError::UnknownContainer(id.to_string()))
    }

    /// Launches a container and returns once its workload has been released to exec.
    ///
    /// On any failure everything made so far is removed again before the error is returned.
    pub async fn launch(&self, config: ContainerConfig) -> Result<Launched, ContainerizerError> {
        berth_isolators::validate_container_id(&config.id)?;
        if config.argv.is_empty() && config.image.is_none() {
            return Err(ContainerizerError::EmptyCommand(config.id));
        }
        if self
            .containers
            .lock()
            .expect("containers lock")
            .contains_key(&config.id)
        {
            return Err(ContainerizerError::AlreadyExists(config.id));
        }
        let id = config.id.clone();
        match self.launch_steps(config).await {
            Ok(launched) => Ok(launched),
            Err(err) => {
                warn!(container_id = %id, error = %err, "launch failed; cleaning up");
                if let Err(cleanup_err) = self.cleanup(&id).await {
                    warn!(container_id = %id, error = %cleanup_err, "cleanup after failed launch");
                }
                Err(err)
            }
        }
    }

    async fn launch_steps(&self, config: ContainerConfig) -> Result<Launched, ContainerizerError> {
        let id = config.id.clone();
        // 1. Sandbox (workload files and logs) and runtime state dir (shim socket, exit record).
        let sandbox = self.sandbox_dir(&id);
        let state_dir = self.state_dir(&id);
        for dir in [&sandbox, &state_dir] {
            std::fs::create_dir_all(dir).map_err(|source| ContainerizerError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        // 2. The image, if any: pulled, leased, unpacked, merged with the task's command.
        let image = match &config.image {
            Some(reference) => {
                let task = TaskProcess {
                    argv: &config.argv,
                    kind: config.argv_kind,
                    env: &config.env,
                    cwd: config.cwd.as_deref(),
                };
                let provisioned =
                    provisioner::provision(self.images.as_ref(), &id, reference, &sandbox, task)
                        .await
                        .map_err(|source| ContainerizerError::Provision {
                            id: id.clone(),
                            source: Box::new(source),
                        })?;
                Some(provisioned)
            }
            None => None,
        };
        // 3. Every isolator prepares; their launch needs are merged for the shim.
        let spec = ContainerSpec {
            id: id.clone(),
            limits: config.limits,
            network: config.network,
            hostname: config.hostname.clone(),
            sandbox: sandbox.clone(),
            options: config.options.clone(),
            image: image.as_ref().map(|p| p.rootfs.clone()),
        };
        let mut launch_info = LaunchInfo::default();
        for isolator in &self.isolators {
            let info = isolator
                .prepare(&spec)
                .map_err(|source| ContainerizerError::Isolator {
                    id: id.clone(),
                    isolator: isolator.name(),
                    step: "prepare",
                    source,
                })?;
            launch_info.merge(info);
        }
        let (argv, mut env, cwd) = match image {
            Some(Provisioned {
                argv,
                env,
                cwd,
                user,
                ..
            }) => {
                let overlay = launch_info
                    .filesystem
                    .as_ref()
                    .is_some_and(|fs| matches!(fs.source, RootfsSource::Overlay { .. }));
                if !overlay {
                    return Err(ContainerizerError::ImageNeedsFilesystem(id));
                }
                launch_info.user = user;
                (argv, env, Some(cwd))
            }
            None => (config.argv, config.env, config.cwd),
        };
        // 4. The shim clones the workload into its namespaces; the workload waits for Start.
        let sandbox_seen = launch_info
            .sandbox_in_container
            .clone()
            .unwrap_or_else(|| sandbox.clone());
        if launch_info.sandbox_in_container.is_some() {
            let seen = sandbox_seen.display().to_string();
            for (key, value) in env.iter_mut() {
                if key == "MESOS_SANDBOX" {
                    *value = seen.clone();
                }
            }
        }
        let security = launch_info.security_plan();
        let shim_config = ShimConfig {
            container_id: id.clone(),
            argv,
            env,
            cwd: Some(cwd.unwrap_or(sandbox_seen)),
            namespaces: launch_info
                .namespaces
                .iter()
                .map(|ns| {
                    serde_json::to_value(ns)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                })
                .map(|ns| ns.unwrap_or_default())
                .collect(),
            hostname: launch_info.hostname,
            stdout_path: sandbox.join("stdout"),
            stderr_path: sandbox.join("stderr"),
            state_dir: state_dir.clone(),
            id_maps: launch_info.id_maps,
            filesystem: launch_info.filesystem,
            security,
            ns_paths: Vec::new(),
            oci: None,
        };
        let ready = client::spawn_shim(&self.paths.executor_bin, &shim_config)
            .await
            .map_err(|source| ContainerizerError::Shim {
                id: id.clone(),
                source,
            })?;
        // Register now so a failure below is cleaned up through the normal path.
        let (exit_tx, exit_rx) = watch::channel(None);
        let handle = Arc::new(ContainerHandle {
            id: id.clone(),
            pid: Some(ready.pid),
            state_dir: state_dir.clone(),
            exit: exit_rx,
        });
        self.containers
            .lock()
            .expect("containers lock")
            .insert(id.clone(), handle);
        // 5. Isolate the blocked workload (cgroup attach) before it execs.
        for isolator in &self.isolators {
            isolator
                .isolate(&id, ready.pid)
                .map_err(|source| ContainerizerError::Isolator {
                    id: id.clone(),
                    isolator: isolator.name(),
                    step: "isolate",
                    source,
                })?;
        }
        // 6. Release the workload and follow the shim until it exits.
        let mut shim = client::ShimClient::connect(&state_dir)
            .await
            .map_err(|source| ContainerizerError::Shim {
                id: id.clone(),
                source,
            })?;
        shim.send(&ShimRequest::Start)
            .await
            .map_err(|source| ContainerizerError::Shim {
                id: id.clone(),
                source,
            })?;
        tokio::spawn(monitor(
            shim,
            state_dir,
            self.isolators.clone(),
            id.clone(),
            exit_tx,
        ));
        info!(container_id = %id, pid = ready.pid, shim_pid = ready.shim_pid, "container launched");
        Ok(Launched {
            pid: ready.pid,
            shim_pid: ready.shim_pid,
            sandbox,
        })
    }

    /// Waits until the container's workload has ended.
    pub async fn wait(&self, id: &str) -> Result<Termination, ContainerizerError> {
        let mut rx = self.handle(id)?.exit.clone();
        loop {
            if let Some(termination) = rx.borrow_and_update().clone() {
                return Ok(termination);
            }
            if rx.changed().await.is_err() {
                // The monitor is gone without a result: read the durable record.
                let status = client::read_exit(&self.state_dir(id)).map_err(|source| {
                    ContainerizerError::Shim {
                        id: id.to_string(),
                        source,
                    }
                })?;
                return Ok(Termination::from_exit(status, None));
            }
        }
    }

    /// Asks the shim to stop the workload: SIGTERM, then SIGKILL after `grace`.
    pub async fn kill(&self, id: &str, grace: Duration) -> Result<(), ContainerizerError> {
        let handle = self.handle(id)?;
        if handle.exit.borrow().is_some() {
            return Ok(());
        }
        let mut shim = client::ShimClient::connect(&handle.state_dir)
            .await
            .map_err(|source| ContainerizerError::Shim {
                id: id.to_string(),
                source,
            })?;
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        shim.send(&ShimRequest::Kill { grace_ms })
            .await
            .map_err(|source| ContainerizerError::Shim {
                id: id.to_string(),
                source,
            })
    }

    /// Kills whatever is left of the container and removes everything made for it, except
    /// the sandbox (kept for logs until garbage collection). Idempotent.
    pub async fn destroy(&self, id: &str) -> Result<(), ContainerizerError> {
        berth_isolators::validate_container_id(id)?;
        if let Ok(handle) = self.handle(id) {
            let running = handle.exit.borrow().is_none();
            if running && self.kill(id, Duration::ZERO).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
            }
        } else if let Some(pid) = read_shim_pid(&self.state_dir(id)) {
            // An unknown container's shim (found by recovery): end it by pid.
            if client::shim_alive(&self.state_dir(id)) {
                kill_pid(pid);
            }
        }
        self.cleanup(id).await
    }

    async fn cleanup(&self, id: &str) -> Result<(), ContainerizerError> {
        let isolators = self.isolators.clone();
        let images = self.images.clone();
        let owned_id = id.to_string();
        let result = tokio::task::spawn_blocking(move || {
            let mut first_error = None;
            for isolator in isolators.iter().rev() {
                let step = isolator
                    .kill_all(&owned_id)
                    .and_then(|()| isolator.cleanup(&owned_id));
                if let Err(source) = step {
                    first_error.get_or_insert(ContainerizerError::Isolator {
                        id: owned_id.clone(),
                        isolator: isolator.name(),
                        step: "cleanup",
                        source,
                    });
                }
            }
            // Every process of the container is gone now: its image may be collected.
            if let Err(err) = provisioner::release(images.as_ref(), &owned_id) {
                warn!(container_id = %owned_id, error = %err, "releasing the image lease");
            }
            first_error.map_or(Ok(()), Err)
        })
        .await
        .map_err(|e| ContainerizerError::Join(e.to_string()))?;
        self.containers.lock().expect("containers lock").remove(id);
        let state_dir = self.state_dir(id);
        if let Err(source) = std::fs::remove_dir_all(&state_dir)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ContainerizerError::RemoveDir {
                path: state_dir,
                source,
            });
        }
        result
    }

    /// Usage of a running container: every isolator's readings combined.
    pub fn usage(&self, id: &str) -> Result<Usage, ContainerizerError> {
        berth_isolators::validate_container_id(id)?;
        let mut total = Usage::default();
        for isolator in &self.isolators {
            let usage = isolator
                .usage(id)
                .map_err(|source| ContainerizerError::Isolator {
                    id: id.to_string(),
                    isolator: isolator.name(),
                    step: "usage",
                    source,
                })?;
            total = total.combine(usage);
        }
        Ok(total)
    }

    /// Changes the limits of a running container, isolator by isolator.
    pub fn update(&self, id: &str, update: &LimitsUpdate) -> Result<(), ContainerizerError> {
        let handle = self.handle(id)?;
        if handle.exit.borrow().is_some() {
            return Err(ContainerizerError::NotRunning(id.to_string()));
        }
        for isolator in &self.isolators {
            isolator
                .update(id, update)
                .map_err(|source| ContainerizerError::Isolator {
                    id: id.to_string(),
                    isolator: isolator.name(),
                    step: "update",
                    source,
                })?;
        }
        info!(container_id = %id, ?update, "limits updated");
        Ok(())
    }

    /// What each isolator says about where the container lives (cgroup paths...), by isolator name.
    pub fn describe(&self, id: &str) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for isolator in &self.isolators {
            let value = isolator.describe(id);
            if !value.is_null() {
                map.insert(isolator.name().to_string(), value);
            }
        }
        serde_json::Value::Object(map)
    }

    /// At agent start: reattaches to the containers in `known` and destroys every other
    /// container found in the runtime dir or in the isolators (cgroups).
    pub async fn recover(
        &self,
        known: &[String],
    ) -> Result<HashMap<String, Recovered>, ContainerizerError> {
        let mut result = HashMap::new();
        for id in known {
            result.insert(id.clone(), self.recover_one(id).await);
        }
        // Unknown containers with runtime state: end their shims and remove their state.
        let entries = std::fs::read_dir(&self.paths.runtime).map_err(|source| {
            ContainerizerError::ReadDir {
                path: self.paths.runtime.clone(),
                source,
            }
        })?;
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&id) && berth_isolators::validate_container_id(&id).is_ok() {
                warn!(container_id = %id, "destroying unknown container found in the runtime dir");
                if let Err(err) = self.destroy(&id).await {
                    warn!(container_id = %id, error = %err, "destroying unknown container");
                }
            }
        }
        // Image leases of containers that no longer exist (a crash between lease and launch).
        if let Some(store) = &self.images {
            let holders = store.lease_holders().unwrap_or_else(|err| {
                warn!(error = %err, "listing image leases");
                Vec::new()
            });
            for holder in holders.iter().filter(|h| !known.contains(h)) {
                info!(container_id = %holder, "releasing the image lease of an unknown container");
                if let Err(err) = store.release(holder) {
                    warn!(container_id = %holder, error = %err, "releasing an image lease");
                }
            }
        }
        // Unknown containers the isolators still hold (cgroups left by a crash mid-launch).
        for isolator in &self.isolators {
            let orphans =
                isolator
                    .recover(known)
                    .map_err(|source| ContainerizerError::Isolator {
                        id: String::from("*"),
                        isolator: isolator.name(),
                        step: "recover",
                        source,
                    })?;
            for id in orphans {
                info!(container_id = %id, isolator = isolator.name(), "removed orphan");
            }
        }
        Ok(result)
    }

    async fn recover_one(&self, id: &str) -> Recovered {
        let state_dir = self.state_dir(id);
        if client::shim_alive(&state_dir) {
            match self.reattach(id, &state_dir).await {
                Ok(recovered) => return recovered,
                Err(err) => warn!(container_id = %id, error = %err, "shim alive but unreachable"),
            }
        }
        match client::read_exit(&state_dir) {
            Ok(Some(status)) => {
                let limitation = container::limitation_of(&self.isolators, id);
                Recovered::Terminated(Termination::from_exit(Some(status), limitation))
            }
            _ => Recovered::Gone,
        }
    }

    /// Asks a live shim for its state and resumes monitoring it; a workload that was never
    /// released (the agent died mid-launch) is killed instead.
    async fn reattach(&self, id: &str, state_dir: &Path) -> Result<Recovered, ContainerizerError> {
        let shim_err = |source| ContainerizerError::Shim {
            id: id.to_string(),
            source,
        };
        let mut shim = client::ShimClient::connect(state_dir)
            .await
            .map_err(shim_err)?;
        shim.send(&ShimRequest::State).await.map_err(shim_err)?;
        let (pid, started) = loop {
            match shim.next_event().await.map_err(shim_err)? {
                Some(ShimEvent::State { pid, started, .. }) => break (pid, started),
                Some(ShimEvent::Exited(status)) => {
                    let limitation = container::limitation_of(&self.isolators, id);
                    return Ok(Recovered::Terminated(Termination::from_exit(
                        Some(status),
                        limitation,
                    )));
                }
                Some(_) => continue,
                None => {
                    return Ok(match client::read_exit(state_dir).map_err(shim_err)? {
                        Some(status) => {
                            Recovered::Terminated(Termination::from_exit(Some(status), None))
                        }
                        None => Recovered::Gone,
                    });
                }
            }
        };
        if !started {
            warn!(container_id = %id, "workload was never started (agent died mid-launch): killing it");
            shim.send(&ShimRequest::Kill { grace_ms: 0 })
                .await
                .map_err(shim_err)?;
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Ok(Some(event)) = shim.next_event().await {
                    if matches!(event, ShimEvent::Exited(_)) {
                        break;
                    }
                }
            })
            .await;
            return Ok(Recovered::LaunchInterrupted);
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let handle = Arc::new(ContainerHandle {
            id: id.to_string(),
            pid: Some(pid),
            state_dir: state_dir.to_path_buf(),
            exit: exit_rx,
        });
        self.containers
            .lock()
            .expect("containers lock")
            .insert(id.to_string(), handle);
        tokio::spawn(monitor(
            shim,
            state_dir.to_path_buf(),
            self.isolators.clone(),
            id.to_string(),
            exit_tx,
        ));
        Ok(Recovered::Running { pid: Some(pid) })
    }
}

fn read_shim_pid(state_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(state_dir.join("shim.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn kill_pid(pid: i32) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
