//! cgroups isolator (v2 primary, v1 fallback). TO BE WRITTEN: see the helper brief.
/// Placeholder until the cgroups isolator lands.
#[derive(Debug, thiserror::Error)]
#[error("cgroup error")]
pub struct CgroupError;
