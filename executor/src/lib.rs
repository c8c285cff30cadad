//! # berth-executor
//!
//! The per-container supervisor. The agent's containerizer starts one `berth-executor` process
//! (the *shim*) per container; the shim outlives agent restarts, owns the container's process tree
//! (it is a child subreaper with a single reaper loop), writes the workload's stdout/stderr to
//! files in the sandbox, records the exit status durably, and talks to the agent over a Unix socket.
//!
//! Life of a container as the shim sees it:
//! 1. Started with `berth-executor --config <state_dir>/shim.json` ([`ShimConfig`]); detaches
//!    into its own session.
//! 2. Clones the container init into the requested namespaces. The init blocks on a sync pipe.
//! 3. Binds `<state_dir>/shim.sock`, prints one JSON line [`ShimReady`] on its stdout (its own
//!    pid and the container init's host pid), then points stdout at /dev/null. The containerizer
//!    attaches the pid to cgroups (isolate) at this point; the socket already accepts connections.
//! 4. Waits for [`ShimRequest::Start`] on the socket, then releases the init, which execs.
//! 5. On exit of the workload, writes [`ExitStatus`] atomically to `<state_dir>/exit.json`, sends
//!    [`ShimEvent::Exited`] to every connected client, and exits itself.
//!
//! The wire protocol is JSON lines over a Unix stream socket ([`ShimRequest`] in, [`ShimEvent`] out).
#![warn(missing_docs)]

pub mod client;
pub mod protocol;
/// The shim process itself (used by the `berth-executor` binary; not by the containerizer).
pub mod shim;

pub use protocol::{
    BpfInstruction, CapabilitySets, DeviceSpec, ExitStatus, FilesystemPlan, IdMapRange, IdMaps,
    MountSpec, OciMode, OciStdio, ProcessUser, RlimitSpec, RootfsSource, SecurityPlan, ShimConfig,
    ShimEvent, ShimReady, ShimRequest,
};
