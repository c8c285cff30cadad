//! Privilege isolators (Mesos `linux/capabilities`, `linux/seccomp`, `posix/rlimits`).
//!
//! None of them touches the kernel on the agent's side: each one validates what the task asked
//! for at `prepare` and turns it into a part of [`LaunchInfo`] (capability sets, a compiled
//! seccomp BPF program, resource limits). The containerizer merges those into the shim's
//! [`SecurityPlan`](crate::SecurityPlan), and the shim applies it in the workload right before
//! `execve`, in this order: rlimits, `no_new_privs`, bounding set, user, capability sets,
//! seccomp filter (see `berth_executor::shim::security`).
//!
//! - [`capabilities::CapabilitiesIsolator`]: containerd's default capability set, `cap_add` /
//!   `cap_drop`, checked against the agent's own bounding set; sets `no_new_privileges`.
//! - [`seccomp::SeccompIsolator`]: berth's default profile (what Docker's default blocks), no
//!   filter, or a custom profile in the Docker/OCI JSON format, compiled with `seccompiler`.
//! - [`rlimits::RlimitsIsolator`]: `setrlimit` values by name, with a default `RLIMIT_NOFILE`.
//!
//! [`LaunchInfo`]: crate::LaunchInfo

pub mod capabilities;
pub mod rlimits;
pub mod seccomp;
mod seccomp_json;
mod syscalls;

pub use capabilities::CapabilitiesIsolator;
pub use rlimits::RlimitsIsolator;
pub use seccomp::SeccompIsolator;
