//! Types shared by the shim and its client. Stable on disk: `shim.json` and `exit.json` are read
//! again after an agent restart.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the shim needs to start a container, written by the containerizer to
/// `<state_dir>/shim.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// Container id (for logs).
    pub container_id: String,
    /// argv of the workload; `argv[0]` is looked up in `PATH` of `env`.
    pub argv: Vec<String>,
    /// Complete environment of the workload (nothing is inherited from the shim).
    pub env: Vec<(String, String)>,
    /// Working directory of the workload (defaults to the sandbox).
    pub cwd: Option<PathBuf>,
    /// Namespaces to create: any of "pid", "mount", "uts", "ipc", "net", "user", "cgroup".
    pub namespaces: Vec<String>,
    /// Hostname to set when a UTS namespace is created.
    pub hostname: Option<String>,
    /// File that receives the workload's stdout (appended, created 0640).
    pub stdout_path: PathBuf,
    /// File that receives the workload's stderr.
    pub stderr_path: PathBuf,
    /// Directory of the shim's own state (socket, exit.json, shim.pid). Must exist.
    pub state_dir: PathBuf,
    /// User namespace id mappings, written by the shim for the cloned init before it is
    /// released (only with a "user" namespace).
    #[serde(default)]
    pub id_maps: Option<IdMaps>,
    /// The container's own root filesystem, assembled by the init inside its mount namespace
    /// (which needs a "mount" namespace). `None`: the workload sees the host's mounts.
    #[serde(default)]
    pub filesystem: Option<FilesystemPlan>,
    /// Privilege restrictions applied to the workload right before `execve`.
    #[serde(default)]
    pub security: SecurityPlan,
    /// Existing namespaces to join instead of creating them: (kind as in `namespaces`, path of
    /// a namespace file such as `/proc/<pid>/ns/net` or a bind mount of one). A kind listed here
    /// must not also be in `namespaces`. The pid namespace is joined by the shim before it clones
    /// the init; the others by the init, the user namespace first.
    #[serde(default)]
    pub ns_paths: Vec<(String, PathBuf)>,
    /// OCI runtime semantics (`berth oci`); `None` for berth's own containers.
    #[serde(default)]
    pub oci: Option<OciMode>,
}

/// How a container driven by the OCI runtime CLI differs from berth's own containers:
/// - the workload *is* the container's init (pid 1 of its pid namespace, the process whose pid
///   [`ShimReady`] reports): no berth pid 1 forks it;
/// - the shim moves the init into `cgroup_procs` and lets it assemble the container (mounts,
///   pivot_root, hostname, ...) *before* it prints [`ShimReady`] (the OCI "created" state); a
///   failure there ends the shim without a ready line and with the error in `exit.json`;
///   [`ShimRequest::Start`] then only releases the `execve`;
/// - the workload's standard streams are the caller's descriptors, or a new pseudo-terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciMode {
    /// `cgroup.procs` files the shim writes the init's pid into before the init sets up the
    /// container (so a cgroup namespace is rooted at the container's cgroup).
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// The workload's standard streams.
    pub stdio: OciStdio,
}

/// Standard streams of an OCI container's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OciStdio {
    /// Descriptors the shim inherited from the process that spawned it: `fds[i]` becomes the
    /// workload's descriptor `i` (0, 1, 2, then `--preserve-fds` extras). The shim closes its
    /// own copies once the init holds them.
    Inherit {
        /// Inherited descriptor numbers, in the workload's order.
        fds: Vec<i32>,
    },
    /// A new pseudo-terminal: the slave is the workload's stdin/stdout/stderr and controlling
    /// terminal (and `/dev/console` when the plan populates `/dev`); the master is sent over the
    /// Unix socket at `socket` (SCM_RIGHTS, runc's console-socket protocol) before the shim is
    /// ready.
    Console {
        /// The listening socket of the caller.
        socket: PathBuf,
        /// Initial size (columns, rows); 0 = leave the kernel's default.
        #[serde(default)]
        size: (u16, u16),
        /// Owner of the slave (host uid, gid), usually the process user.
        #[serde(default)]
        owner: Option<(u32, u32)>,
        /// Descriptors after stderr (`--preserve-fds`), as in `Inherit`.
        #[serde(default)]
        extra_fds: Vec<i32>,
    },
}

impl ShimConfig {
    /// Path of the control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("shim.sock")
    }
    /// Path of the durable exit record.
    pub fn exit_path(&self) -> PathBuf {
        self.state_dir.join("exit.json")
    }
    /// Path of the shim's pid file.
    pub fn pid_path(&self) -> PathBuf {
        self.state_dir.join("shim.pid")
    }
}

/// One range of a user namespace id map (`/proc/PID/uid_map` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapRange {
    /// First id inside the namespace.
    pub container_id: u32,
    /// First id outside (on the host).
    pub host_id: u32,
    /// Number of ids mapped.
    pub size: u32,
}

/// The uid and gid maps of a user namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    /// Lines of `uid_map`.
    pub uid_map: Vec<IdMapRange>,
    /// Lines of `gid_map`. `setgroups` stays allowed (the shim writing the maps is
    /// privileged): the init uses it to drop the host groups it inherited.
    pub gid_map: Vec<IdMapRange>,
}

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RootfsSource {
    /// A recursive bind of the host's `/` (native containers).
    HostBind,
    /// An overlay of image layers (`lower` top-most first), upper and work dirs on the sandbox's
    /// filesystem.
    Overlay {
        /// Read-only layer directories, top-most first.
        lower: Vec<PathBuf>,
        /// Writable upper directory.
        upper: PathBuf,
        /// overlayfs work directory (same filesystem as `upper`).
        work: PathBuf,
    },
    /// A directory used as it is (an unpacked bundle's rootfs).
    Directory {
        /// The directory.
        path: PathBuf,
    },
}

/// One mount inside the container, OCI runtime-spec style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the container; resolved inside the new root (symlinks cannot leave it).
    pub destination: String,
    /// Filesystem type: "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup2", ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Source: a host path for binds, a name for the others.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// mount(8)-style options: "rbind", "ro", "nosuid", "nodev", "noexec", "mode=755", ...
    #[serde(default)]
    pub options: Vec<String>,
}

/// A device node made available in the container's `/dev` (bind-mounted from the host, so it
/// also works in a user namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Path inside the container (`/dev/null`).
    pub path: String,
    /// The host's node.
    pub host_path: PathBuf,
}

/// The container's root filesystem, assembled by the init in its own mount namespace, then
/// `pivot_root`ed into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemPlan {
    /// An empty directory (in the shim's state dir) where the new root is mounted.
    pub root: PathBuf,
    /// What is mounted at `root`.
    pub source: RootfsSource,
    /// Make the root read-only (after every mount is in place).
    pub readonly: bool,
    /// Mounts, in order.
    pub mounts: Vec<MountSpec>,
    /// Device nodes for `/dev` (a fresh tmpfs when any are given).
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// Paths hidden from the container (`/dev/null` over files, empty read-only tmpfs over dirs).
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// Paths re-mounted read-only.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
}

/// The workload's capability sets, by name (`CAP_NET_ADMIN`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySets {
    /// Bounding set.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
    /// Inheritable set.
    pub inheritable: Vec<String>,
    /// Ambient set.
    pub ambient: Vec<String>,
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInstruction {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Generic field.
    pub k: u32,
}

/// A resource limit (`setrlimit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitSpec {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ...
    pub kind: String,
    /// Soft limit (`u64::MAX` = unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX` = unlimited).
    pub hard: u64,
}

/// The user the workload runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    /// uid inside the container.
    pub uid: u32,
    /// gid inside the container.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Privilege restrictions of the workload, applied in this order right before `execve`:
/// rlimits, no_new_privs, bounding set, user, capability sets, seccomp filter (last, so the
/// calls before it are not filtered).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityPlan {
    /// Set `PR_SET_NO_NEW_PRIVS`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Capability sets; `None` leaves them as they are (all of the agent's).
    #[serde(default)]
    pub capabilities: Option<CapabilitySets>,
    /// A compiled seccomp filter; `None` = unconfined.
    #[serde(default)]
    pub seccomp: Option<Vec<BpfInstruction>>,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Vec<RlimitSpec>,
    /// User and groups; `None` keeps root.
    #[serde(default)]
    pub user: Option<ProcessUser>,
}

/// The single line the shim prints on stdout once the workload is cloned and waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimReady {
    /// The shim's own pid.
    pub shim_pid: i32,
    /// The workload's (container init's) pid in the host pid namespace.
    pub pid: i32,
}

/// Requests from the agent to the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimRequest {
    /// Release the workload (it execs). Idempotent.
    Start,
    /// Send SIGTERM, wait `grace_ms`, then SIGKILL the whole container.
    Kill {
        /// Grace period between SIGTERM and SIGKILL, milliseconds (0 = SIGKILL at once).
        grace_ms: u64,
    },
    /// Ask for a [`ShimEvent::State`].
    State,
    /// Send `signal` to the container's init, and with `all` to its whole process group (the
    /// container's processes that did not leave it). Answered by [`ShimEvent::Signalled`] or
    /// [`ShimEvent::Error`].
    Signal {
        /// Signal number.
        signal: i32,
        /// Also signal the init's process group.
        #[serde(default)]
        all: bool,
    },
}

/// Events from the shim to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimEvent {
    /// The workload was released and exec'd (or failed to).
    Started {
        /// Host pid of the container init.
        pid: i32,
    },
    /// Reply to [`ShimRequest::State`].
    State {
        /// Host pid of the container init.
        pid: i32,
        /// Whether [`ShimRequest::Start`] was received.
        started: bool,
        /// The exit status once the workload ended.
        exit: Option<ExitStatus>,
    },
    /// The workload ended; also persisted to `exit.json` before this is sent.
    Exited(ExitStatus),
    /// Reply to [`ShimRequest::Signal`]: the signal was sent.
    Signalled {
        /// Signal number.
        signal: i32,
    },
    /// A request could not be parsed or carried out.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// True when the shim sent a kill (Kill request) before it ended.
    pub killed_by_request: bool,
    /// Set when the workload could not be started at all (exec failed: command not found, ...).
    pub launch_error: Option<String>,
    /// Unix time (seconds, fractional) of the exit.
    pub at: f64,
}

impl ExitStatus {
    /// The conventional shell status: code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}
