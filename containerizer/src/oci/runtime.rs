//! The runtime: `create` and `start`, and what every command shares (loading a container,
//! its cgroups isolator, tearing it down).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime};

use berth_executor::{IdMapRange, OciMode, OciStdio, ShimEvent, ShimRequest};
use berth_isolators::cgroups::CgroupsIsolator;
use berth_isolators::{ContainerSpec, Isolator, NetworkMode};
use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;
use tracing::{debug, warn};

use super::OciError;
use super::exec::{self, differing_namespaces};
use super::hooks::{self, HookKind};
use super::proc::{self, PidFd};
use super::shim;
use super::state::{ContainerDir, Record, Status, rfc3339, write_pid_file};
use super::translate::{self, CgroupPlacement, CgroupView, TranslateContext, map_to_host};

/// How long `start` waits for the shim to confirm, and `delete` for processes to die.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The OCI runtime over a state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// State root (`--root`, default `/run/berth-oci`).
    pub root: PathBuf,
    /// The `berth-executor` binary.
    pub executor_bin: PathBuf,
    /// The cgroup root (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The proc root (`/proc`).
    pub proc_root: PathBuf,
}

/// Arguments of `create` (and `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where to write the container process's pid.
    pub pid_file: Option<PathBuf>,
    /// The console socket (with `process.terminal`).
    pub console_socket: Option<PathBuf>,
    /// Extra descriptors (3..3+N) passed to the container.
    pub preserve_fds: u32,
}

/// A container loaded from its directory.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) dir: ContainerDir,
    pub(super) record: Record,
}

/// The container's config snapshot.
pub(super) fn read_spec(path: &Path) -> Result<Spec, OciError> {
    let bytes = std::fs::read(path).map_err(|e| OciError::Bundle {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| OciError::Bundle {
        path: path.to_owned(),
        message: format!("invalid config: {e}"),
    })
}

impl Runtime {
    /// A runtime with the production paths for `root` and `executor_bin`.
    pub fn new(root: PathBuf, executor_bin: PathBuf) -> Runtime {
        Runtime {
            root,
            executor_bin,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            proc_root: PathBuf::from("/proc"),
        }
    }

    pub(super) fn check_id(id: &str) -> Result<(), OciError> {
        berth_isolators::validate_container_id(id).map_err(|_| OciError::InvalidId(id.into()))
    }

    /// The container `id` with its record (`Ok(None)` for a directory without one: a create
    /// in progress or one that died half-way).
    pub(super) fn open(&self, id: &str) -> Result<(ContainerDir, Option<Record>), OciError> {
        Self::check_id(id)?;
        let dir = ContainerDir::new(&self.root, id);
        if !dir.dir.is_dir() {
            return Err(OciError::NotFound {
                id: id.into(),
                root: self.root.clone(),
            });
        }
        let record = dir.read_record()?;
        Ok((dir, record))
    }

    /// The container `id`, which must have a record.
    pub(super) fn load(&self, id: &str) -> Result<Loaded, OciError> {
        match self.open(id)? {
            (dir, Some(record)) => Ok(Loaded { dir, record }),
            (_, None) => Err(OciError::WrongState {
                id: id.into(),
                status: "creating",
                action: "operate on a container that is still being created",
            }),
        }
    }

    /// The cgroups isolator of a container directory (built from its `cgroup.own`).
    pub(super) fn isolator(
        &self,
        dir: &ContainerDir,
        placement: &CgroupPlacement,
    ) -> Result<CgroupsIsolator, OciError> {
        CgroupsIsolator::new(&self.cgroup_root, &dir.own_cgroup_path(), &placement.base).map_err(
            |e| OciError::Cgroup {
                id: placement.leaf.clone(),
                source: e.into(),
            },
        )
    }

    /// Creates container `id` (see the module docs). Returns the record and the shim child
    /// (`run` reaps it).
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<(Record, Child), OciError> {
        Self::check_id(id)?;
        let bundle = std::fs::canonicalize(&opts.bundle).map_err(|e| OciError::Bundle {
            path: opts.bundle.clone(),
            message: e.to_string(),
        })?;
        let config_path = bundle.join("config.json");
        let config = std::fs::read(&config_path).map_err(|e| OciError::Bundle {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let spec: Spec = serde_json::from_slice(&config).map_err(|e| OciError::Bundle {
            path: config_path.clone(),
            message: format!("invalid config: {e}"),
        })?;
        std::fs::create_dir_all(&self.root).map_err(|e| OciError::io("creating", &self.root, e))?;
        let dir = ContainerDir::new(&self.root, id);
        match std::fs::create_dir(&dir.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(OciError::Exists {
                    id: id.into(),
                    root: self.root.clone(),
                });
            }
            Err(e) => return Err(OciError::io("creating", &dir.dir, e)),
        }
        let _lock = dir.lock()?;
        match self.create_in(id, &dir, bundle, &config, &spec, opts) {
            Ok(done) => Ok(done),
            Err(e) => {
                if let Err(cleanup) = self.destroy(id, &dir) {
                    warn!(container_id = id, error = %cleanup, "cleanup after a failed create");
                }
                Err(e)
            }
        }
    }

    fn create_in(
        &self,
        id: &str,
        dir: &ContainerDir,
        bundle: PathBuf,
        config: &[u8],
        spec: &Spec,
        opts: &CreateOptions,
    ) -> Result<(Record, Child), OciError> {
        let config_path = bundle.join("config.json");
        let cfg_err = |source| OciError::Config {
            path: config_path.clone(),
            source,
        };
        std::fs::write(dir.config_path(), config)
            .map_err(|e| OciError::io("writing", &dir.config_path(), e))?;
        // Cgroups: placement, the creator's own cgroups, the isolator.
        let linux = spec.linux().clone().unwrap_or_default();
        let placement =
            CgroupPlacement::new(linux.cgroups_path().as_deref(), id).map_err(cfg_err)?;
        let self_cgroup = self.proc_root.join("self/cgroup");
        let own = std::fs::read_to_string(&self_cgroup)
            .map_err(|e| OciError::io("reading", &self_cgroup, e))?;
        std::fs::write(dir.own_cgroup_path(), placement.own_cgroup_file(&own))
            .map_err(|e| OciError::io("writing", &dir.own_cgroup_path(), e))?;
        let isolator = self.isolator(dir, &placement)?;
        let cgroup_dirs = isolator.container_paths(&placement.leaf);
        let ctx = TranslateContext {
            id: id.into(),
            bundle: bundle.clone(),
            state_dir: dir.dir.clone(),
            cgroups: CgroupView {
                version: isolator.version(),
                root: self.cgroup_root.clone(),
                dirs: cgroup_dirs.clone(),
            },
            host_root: PathBuf::from("/"),
        };
        let mut t = translate::translate(spec, &ctx).map_err(cfg_err)?;
        for w in &t.warnings {
            warn!(container_id = id, "{w}");
        }
        debug!(container_id = id, "config translated");
        isolator
            .prepare(&ContainerSpec {
                id: placement.leaf.clone(),
                limits: t.limits.clone(),
                network: NetworkMode::None,
                hostname: String::new(),
                sandbox: dir.dir.clone(),
                options: t.options.clone(),
                image: None,
            })
            .map_err(|source| OciError::Cgroup {
                id: id.into(),
                source,
            })?;
        debug!(container_id = id, "cgroups created");
        let rootfs_mnt = dir.dir.join("rootfs");
        std::fs::create_dir(&rootfs_mnt).map_err(|e| OciError::io("creating", &rootfs_mnt, e))?;

        // The process's stdio: our descriptors, or a terminal for the console socket.
        let inherited = inherit_fds(3 + opts.preserve_fds)?;
        let raw: Vec<i32> = inherited
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        let stdio = if t.process.terminal {
            let socket = opts.console_socket.clone().ok_or_else(|| {
                OciError::Usage(
                    "process.terminal is true: --console-socket is required (or set it false)"
                        .into(),
                )
            })?;
            let maps = t.shim.id_maps.as_ref();
            let user = t.process.security.user.clone().unwrap_or_default();
            let host = |m: Option<&Vec<IdMapRange>>, v| map_to_host(m.map(Vec::as_slice), v);
            OciStdio::Console {
                socket,
                size: t.process.console_size,
                owner: Some((
                    host(maps.map(|m| &m.uid_map), user.uid),
                    host(maps.map(|m| &m.gid_map), user.gid),
                )),
                extra_fds: raw[3..].to_vec(),
            }
        } else {
            OciStdio::Inherit { fds: raw.clone() }
        };
        t.shim.oci = Some(OciMode {
            cgroup_procs: cgroup_dirs.iter().map(|d| d.join("cgroup.procs")).collect(),
            stdio,
        });
        let (ready, child) = shim::spawn(&self.executor_bin, &t.shim)?;
        drop(inherited);
        debug!(
            container_id = id,
            pid = ready.pid,
            shim = ready.shim_pid,
            "created"
        );
        let pid_start = proc::start_time(ready.pid).ok_or_else(|| OciError::Launch {
            id: id.into(),
            message: format!("the container process {} is gone", ready.pid),
        })?;
        let annotations = spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let record = Record {
            id: id.into(),
            bundle,
            pid: ready.pid,
            pid_start,
            shim_pid: ready.shim_pid,
            shim_start: proc::start_time(ready.shim_pid).unwrap_or(0),
            created: rfc3339(SystemTime::now()),
            started: None,
            annotations,
            cgroup: placement,
            // SAFETY: getuid has no preconditions and cannot fail.
            owner: unsafe { libc::getuid() },
            has_hooks: spec.hooks().is_some(),
        };
        dir.write_record(&record)?;

        if let Some(adj) = t.process.oom_score_adj {
            let p = self.proc_root.join(format!("{}/oom_score_adj", ready.pid));
            std::fs::write(&p, adj.to_string()).map_err(|e| OciError::io("writing", &p, e))?;
        }
        let mut sysctl = t.sysctl.clone();
        if let Some(d) = &t.domainname {
            sysctl.push(("kernel.domainname".into(), d.clone()));
        }
        if !sysctl.is_empty() {
            self.apply_sysctl(&record, &sysctl)?;
        }
        if record.has_hooks {
            let target = self.target(&record)?;
            hooks::run_host(
                HookKind::Prestart,
                &hooks::of(spec, HookKind::Prestart),
                &record.oci_state(Status::Created),
            )?;
            let creating = record.oci_state(Status::Creating);
            hooks::run_host(
                HookKind::CreateRuntime,
                &hooks::of(spec, HookKind::CreateRuntime),
                &creating,
            )?;
            let ns = differing_namespaces(&self.proc_root, record.pid, exec::all_namespaces());
            hooks::run_in_container(
                HookKind::CreateContainer,
                &hooks::of(spec, HookKind::CreateContainer),
                &creating,
                &target,
                ns,
                true,
            )?;
        }
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, record.pid)?;
        }
        Ok((record, child))
    }

    /// Sysctls and the domain name, written in the container's net/ipc/uts namespaces through
    /// the host's `/proc/sys` (its entries follow the writer's namespaces).
    fn apply_sysctl(&self, record: &Record, sysctl: &[(String, String)]) -> Result<(), OciError> {
        let target = self.target(record)?;
        let ns = differing_namespaces(
            &self.proc_root,
            record.pid,
            CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
        );
        let proc_sys = self.proc_root.join("sys");
        exec::in_namespaces(&target, ns, || {
            for (k, v) in sysctl {
                let p = proc_sys.join(k.replace('.', "/"));
                std::fs::write(&p, v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
            }
            Ok(())
        })
    }

    /// A pidfd of the container's process.
    pub(super) fn target(&self, record: &Record) -> Result<PidFd, OciError> {
        PidFd::open(record.pid, record.pid_start)
            .map_err(|e| OciError::Sys {
                what: format!("pidfd_open({})", record.pid),
                source: e,
            })?
            .ok_or_else(|| OciError::WrongState {
                id: record.id.clone(),
                status: "stopped",
                action: "reach its process",
            })
    }

    /// Starts a created container.
    pub fn start(&self, id: &str) -> Result<(), OciError> {
        let l = self.load(id)?;
        let _lock = l.dir.lock()?;
        self.start_loaded(l, None)
    }

    /// `start` with the record loaded and the lock held; `conn`: an open connection to the
    /// shim (`run` keeps it to wait for the exit).
    pub(super) fn start_loaded(
        &self,
        mut l: Loaded,
        conn: Option<&mut shim::Conn>,
    ) -> Result<(), OciError> {
        let id = l.record.id.clone();
        let status = l.dir.status(&l.record);
        if status != Status::Created {
            return Err(OciError::WrongState {
                id,
                status: status.as_str(),
                action: "start it (not created)",
            });
        }
        let spec = if l.record.has_hooks {
            Some(read_spec(&l.dir.config_path())?)
        } else {
            None
        };
        if let Some(spec) = &spec {
            let target = self.target(&l.record)?;
            let ns = differing_namespaces(&self.proc_root, l.record.pid, exec::all_namespaces());
            hooks::run_in_container(
                HookKind::StartContainer,
                &hooks::of(spec, HookKind::StartContainer),
                &l.record.oci_state(Status::Created),
                &target,
                ns,
                false,
            )?;
        }
        let mut own;
        let conn = match conn {
            Some(c) => c,
            None => {
                own = shim::Conn::connect(&l.dir.dir)?;
                &mut own
            }
        };
        conn.send(&ShimRequest::Start)?;
        loop {
            match conn.next_event(Some(STEP_TIMEOUT))? {
                Some(ShimEvent::Started { .. }) => break,
                Some(ShimEvent::Error { message }) => {
                    return Err(OciError::Shim { id, message });
                }
                Some(_) => {}
                None => {
                    return Err(OciError::Shim {
                        id,
                        message: "closed the connection before starting".into(),
                    });
                }
            }
        }
        l.record.started = Some(rfc3339(SystemTime::now()));
        l.dir.write_record(&l.record)?;
        if let Some(spec) = &spec {
            let state = l.record.oci_state(Status::Running);
            if let Err(e) = hooks::run_host(
                HookKind::Poststart,
                &hooks::of(spec, HookKind::Poststart),
                &state,
            ) {
                warn!(container_id = %id, error = %e, "poststart hook failed");
            }
        }
        Ok(())
    }

    /// Tears a container down: its processes (the init by pidfd, then everything left in its
    /// cgroups), the shim, the cgroups, the directory. Idempotent; used by `delete` and by a
    /// failed `create`.
    pub(super) fn destroy(&self, id: &str, dir: &ContainerDir) -> Result<(), OciError> {
        let record = dir.read_record().unwrap_or(None);
        if let Some(r) = &record
            && let Ok(Some(fd)) = PidFd::open(r.pid, r.pid_start)
        {
            let _ = fd.signal(libc::SIGKILL);
            fd.wait_exit(Some(STEP_TIMEOUT));
        }
        // The shim exits right after its init; give it the time to record the exit.
        let shim = record
            .as_ref()
            .map(|r| (r.shim_pid, r.shim_start))
            .or_else(|| berth_executor::client::shim_pid(&dir.dir).map(|p| (p, 0)));
        if let Some((pid, start)) = shim {
            let start = if start == 0 {
                proc::start_time(pid).unwrap_or(0)
            } else {
                start
            };
            if berth_executor::client::shim_alive(&dir.dir)
                && let Ok(Some(fd)) = PidFd::open(pid, start)
                && !fd.wait_exit(Some(Duration::from_secs(2)))
            {
                let _ = fd.signal(libc::SIGKILL);
                fd.wait_exit(Some(STEP_TIMEOUT));
            }
        }
        let mut result = Ok(());
        if dir.own_cgroup_path().exists() {
            let placement = match &record {
                Some(r) => r.cgroup.clone(),
                None => {
                    let cfg = read_spec(&dir.config_path()).ok();
                    let path = cfg
                        .as_ref()
                        .and_then(|s| s.linux().as_ref())
                        .and_then(|l| l.cgroups_path().clone());
                    CgroupPlacement::new(path.as_deref(), id)
                        .unwrap_or_else(|_| CgroupPlacement::new(None, id).expect("default"))
                }
            };
            result = self.isolator(dir, &placement).and_then(|iso| {
                iso.cleanup(&placement.leaf)
                    .map_err(|source| OciError::Cgroup {
                        id: id.into(),
                        source,
                    })
            });
        }
        if let Err(e) = std::fs::remove_dir_all(&dir.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(OciError::io("removing", &dir.dir, e));
        }
        result
    }
}

/// Copies of our descriptors 0..n that the shim inherits (not close-on-exec). A closed one is
/// replaced by /dev/null (0-2) or refused (`--preserve-fds`).
pub(super) fn inherit_fds(n: u32) -> Result<Vec<OwnedFd>, OciError> {
    let mut out = Vec::with_capacity(n as usize);
    for fd in 0..n as i32 {
        // SAFETY: F_DUPFD duplicates `fd` (if open) to a new descriptor above 2; no memory.
        let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD, 3) };
        if raw >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            out.push(unsafe { OwnedFd::from_raw_fd(raw) });
            continue;
        }
        if fd > 2 {
            return Err(OciError::Usage(format!(
                "--preserve-fds: descriptor {fd} is not open"
            )));
        }
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| OciError::io("opening", Path::new("/dev/null"), e))?;
        // SAFETY: as above, on the /dev/null descriptor we own.
        let raw = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&null), libc::F_DUPFD, 3) };
        if raw < 0 {
            return Err(OciError::Sys {
                what: "fcntl(F_DUPFD)".into(),
                source: nix::errno::Errno::last(),
            });
        }
        // SAFETY: a new descriptor that nothing else owns.
        out.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    Ok(out)
}
