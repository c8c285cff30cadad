//! # berth-agent
//!
//! The berth node agent and the `berth` command line.
//!
//! - [`daemon`]: `berth agent` start-up (root check, work-dir lock, cgroup detection, resources,
//!   recovery), the HTTP server and shutdown.
//! - [`agent`]: tasks and their state machine; launches through the containerizer; status
//!   updates checkpointed before they are sent and kept until acknowledged ([`status_updates`]).
//! - [`link`]: the agent ↔ master traits; [`libprocess`]: Mesos' messaging over HTTP;
//!   [`mesos`]: the agent's side of the Mesos agent protocol (ZooKeeper leader detection,
//!   registration, the master's messages); [`master`]: the embedded offer-based master (the
//!   same wire protocol from the master's side) and its Mesos v1 scheduler HTTP API.
//! - [`http`]: `/health`, `/state`, `/metrics`, the operator endpoints under `/api/berth/v1`;
//!   [`operator_api`]: the Mesos v1 agent operator API (`/api/v1`) and the v0 `/state` document.
//! - [`health`]: task health checks (TCP, HTTP, COMMAND), Mesos `TaskInfo.health_check`.
//! - [`cli`]: `berth run | ps | logs | kill | inspect`.
#![warn(missing_docs)]

pub mod agent;
pub mod checkpoint;
pub mod cli;
pub mod daemon;
pub mod health;
pub mod http;
pub mod isolation;
pub mod l4lb;
pub mod libprocess;
pub mod link;
pub mod master;
pub mod mesos;
pub mod metrics;
pub mod netservices;
pub mod operator_api;
pub mod overlay;
pub mod resources;
pub mod status_updates;
pub mod task;
pub mod task_spec;
pub mod usage;
