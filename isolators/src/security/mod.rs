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

/// Implements the [`Isolator`](crate::Isolator) methods that have nothing to do for an isolator
/// whose whole effect is the [`LaunchInfo`](crate::LaunchInfo) it returns from `prepare`.
macro_rules! stateless_isolator_methods {
    () => {
        fn isolate(&self, _id: &crate::ContainerId, _pid: i32) -> Result<(), crate::IsolatorError> {
            Ok(())
        }
        fn limitation(
            &self,
            _id: &crate::ContainerId,
        ) -> Result<Option<crate::Limitation>, crate::IsolatorError> {
            Ok(None)
        }
        fn usage(&self, _id: &crate::ContainerId) -> Result<crate::Usage, crate::IsolatorError> {
            Ok(crate::Usage::default())
        }
        fn kill_all(&self, _id: &crate::ContainerId) -> Result<(), crate::IsolatorError> {
            Ok(())
        }
        fn cleanup(&self, _id: &crate::ContainerId) -> Result<(), crate::IsolatorError> {
            Ok(())
        }
        fn recover(&self, _known: &[String]) -> Result<Vec<String>, crate::IsolatorError> {
            Ok(Vec::new())
        }
        fn describe(&self, _id: &crate::ContainerId) -> serde_json::Value {
            serde_json::Value::Null
        }
    };
}
pub(crate) use stateless_isolator_methods;
