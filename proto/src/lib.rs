//! Mesos protocol types for berth.
//!
//! This crate owns everything berth speaks on the wire with Mesos components:
//!
//! * **The message types.** berth's own subset of the upstream Apache Mesos
//!   `.proto` files lives in `proto/mesos/` (same package, message, field
//!   names, numbers, types and labels as upstream Mesos 1.12; see the header
//!   of each file). `build.rs` compiles them with `protox` (pure Rust, no
//!   `protoc`) and `prost-build` into the module tree under [`mesos`], one
//!   module per protobuf package:
//!   * [`mesos::v1`] — package `mesos.v1` (`include/mesos/v1/mesos.proto`),
//!   * [`mesos::v1::scheduler`] — package `mesos.v1.scheduler`
//!     (`include/mesos/v1/scheduler/scheduler.proto`).
//!
//!   Further packages (the v0 `mesos` package, `mesos.internal`, the v1
//!   agent/executor APIs) are added by dropping their subset `.proto` files
//!   under `proto/mesos/` (or `proto/messages/`); they then appear under
//!   [`mesos`] by package name without changes to this crate's code.
//!
//!   Every generated message implements [`prost::Message`] and
//!   [`prost_reflect::ReflectMessage`] (descriptors come from
//!   [`DESCRIPTOR_POOL`]).
//! * **The codecs** of the v1 HTTP APIs ([`codec`]): protobuf and Mesos-style
//!   JSON, both checking proto2 `required` fields on decode.
//! * **RecordIO framing** of event streams ([`recordio`]).
//! * **Resource helpers** ([`resources`]).
//!
//! # Conventions of the generated code (prost)
//!
//! * Type names are UpperCamelCase: `FrameworkID` is [`mesos::v1::FrameworkId`],
//!   `UUID` is [`mesos::v1::Uuid`]. Nested types live in a snake_case module
//!   named after the parent: `TaskStatus.Reason` is
//!   [`mesos::v1::task_status::Reason`].
//! * Enum variants drop the enum-name prefix when present:
//!   `TaskStatus.REASON_CONTAINER_LIMITATION_MEMORY` is
//!   `task_status::Reason::ContainerLimitationMemory`, while `TaskState`
//!   values keep theirs (`TaskState::TaskFinished`).
//! * Enum fields are `i32` (`required`) or `Option<i32>` (`optional`); use the
//!   generated getters/setters (`status.state()`, `status.set_state(..)`,
//!   `call.r#type()`), which map unknown numbers to the enum default.
//! * `required` fields are plain values (always encoded), `optional` ones are
//!   `Option`s whose getters return the `.proto` default (e.g.
//!   `Resource::role()` is `"*"` when unset).

#![warn(missing_docs)]

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

pub mod codec;
pub mod recordio;
pub mod resources;

#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::doc_lazy_continuation
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
}

/// The generated Mesos protocol types, one module per protobuf package
/// (`mesos.v1` is `mesos::v1`, `mesos.v1.scheduler` is
/// `mesos::v1::scheduler`).
pub use generated::mesos;

/// The encoded `google.protobuf.FileDescriptorSet` of all compiled `.proto`
/// files (with their imports and source info).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// The descriptor pool built from [`FILE_DESCRIPTOR_SET`]; the
/// `ReflectMessage` implementations of the generated types look their
/// descriptors up here.
pub static DESCRIPTOR_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("embedded file descriptor set is valid")
});

#[cfg(test)]
mod tests {
    //! Spot checks of the compiled descriptors against upstream Mesos.
    use super::*;
    use prost_reflect::{Cardinality, ReflectMessage};

    /// (field name, number, cardinality) of `message` must match.
    fn assert_fields(message: &str, expected: &[(&str, u32, Cardinality)]) {
        let desc = DESCRIPTOR_POOL
            .get_message_by_name(message)
            .unwrap_or_else(|| panic!("{message} not in pool"));
        for &(name, number, cardinality) in expected {
            let field = desc
                .get_field_by_name(name)
                .unwrap_or_else(|| panic!("{message}.{name} missing"));
            assert_eq!(field.number(), number, "{message}.{name} number");
            assert_eq!(field.cardinality(), cardinality, "{message}.{name} label");
        }
    }

    #[test]
    fn field_numbers_match_upstream() {
        use Cardinality::{Optional as O, Repeated as R, Required as Q};
        assert_fields(
            "mesos.v1.TaskStatus",
            &[
                ("task_id", 1, Q),
                ("state", 2, Q),
                ("data", 3, O),
                ("message", 4, O),
                ("agent_id", 5, O),
                ("timestamp", 6, O),
                ("executor_id", 7, O),
                ("healthy", 8, O),
                ("source", 9, O),
                ("reason", 10, O),
                ("uuid", 11, O),
                ("labels", 12, O),
                ("container_status", 13, O),
                ("unreachable_time", 14, O),
                ("limitation", 16, O),
            ],
        );
        assert_fields(
            "mesos.v1.TaskInfo",
            &[
                ("name", 1, Q),
                ("task_id", 2, Q),
                ("agent_id", 3, Q),
                ("resources", 4, R),
                ("executor", 5, O),
                ("data", 6, O),
                ("command", 7, O),
                ("container", 9, O),
                ("labels", 10, O),
                ("kill_policy", 12, O),
                ("max_completion_time", 14, O),
                ("limits", 15, R),
            ],
        );
        assert_fields(
            "mesos.v1.FrameworkInfo",
            &[
                ("user", 1, Q),
                ("name", 2, Q),
                ("id", 3, O),
                ("failover_timeout", 4, O),
                ("checkpoint", 5, O),
                ("role", 6, O),
                ("hostname", 7, O),
                ("principal", 8, O),
                ("webui_url", 9, O),
                ("capabilities", 10, R),
                ("labels", 11, O),
                ("roles", 12, R),
            ],
        );
        assert_fields(
            "mesos.v1.Resource",
            &[
                ("name", 1, Q),
                ("type", 2, Q),
                ("scalar", 3, O),
                ("ranges", 4, O),
                ("set", 5, O),
                ("role", 6, O),
                ("reservation", 8, O),
                ("allocation_info", 11, O),
                ("provider_id", 12, O),
                ("reservations", 13, R),
            ],
        );
        assert_fields(
            "mesos.v1.Offer",
            &[
                ("id", 1, Q),
                ("framework_id", 2, Q),
                ("agent_id", 3, Q),
                ("hostname", 4, Q),
                ("resources", 5, R),
                ("executor_ids", 6, R),
                ("attributes", 7, R),
            ],
        );
        assert_fields(
            "mesos.v1.Offer.Operation",
            &[
                ("type", 1, O),
                ("launch", 2, O),
                ("launch_group", 7, O),
                ("id", 12, O),
            ],
        );
        assert_fields(
            "mesos.v1.CommandInfo",
            &[
                ("shell", 6, O),
                ("value", 3, O),
                ("arguments", 7, R),
                ("user", 5, O),
            ],
        );
        assert_fields(
            "mesos.v1.ContainerInfo",
            &[
                ("type", 1, Q),
                ("docker", 3, O),
                ("hostname", 4, O),
                ("mesos", 5, O),
                ("network_infos", 7, R),
            ],
        );
        assert_fields(
            "mesos.v1.MasterInfo",
            &[
                ("id", 1, Q),
                ("ip", 2, Q),
                ("port", 3, Q),
                ("address", 7, O),
            ],
        );
        assert_fields(
            "mesos.v1.scheduler.Call",
            &[
                ("framework_id", 1, O),
                ("type", 2, O),
                ("subscribe", 3, O),
                ("accept", 4, O),
                ("decline", 5, O),
                ("kill", 6, O),
                ("shutdown", 7, O),
                ("acknowledge", 8, O),
                ("reconcile", 9, O),
                ("message", 10, O),
                ("request", 11, O),
                ("revive", 15, O),
                ("suppress", 16, O),
                ("update_framework", 19, O),
            ],
        );
        assert_fields(
            "mesos.v1.scheduler.Event",
            &[
                ("type", 1, O),
                ("subscribed", 2, O),
                ("offers", 3, O),
                ("rescind", 4, O),
                ("update", 5, O),
                ("message", 6, O),
                ("failure", 7, O),
                ("error", 8, O),
            ],
        );
        assert_fields(
            "mesos.v1.scheduler.Event.Subscribed",
            &[
                ("framework_id", 1, Q),
                ("heartbeat_interval_seconds", 2, O),
                ("master_info", 3, O),
            ],
        );
        assert_fields(
            "mesos.v1.scheduler.Call.Acknowledge",
            &[("agent_id", 1, Q), ("task_id", 2, Q), ("uuid", 3, Q)],
        );
    }

    #[test]
    fn enum_numbers_match_upstream() {
        use mesos::v1::scheduler::{call, event};
        use mesos::v1::{TaskState, task_status::Reason};
        assert_eq!(TaskState::TaskStaging as i32, 6);
        assert_eq!(TaskState::TaskStarting as i32, 0);
        assert_eq!(TaskState::TaskKilling as i32, 8);
        assert_eq!(TaskState::TaskFinished as i32, 2);
        assert_eq!(TaskState::TaskUnknown as i32, 13);
        assert_eq!(Reason::ContainerLimitationMemory as i32, 8);
        assert_eq!(Reason::ContainerLimitationDisk as i32, 20);
        assert_eq!(Reason::MaxCompletionTimeReached as i32, 33);
        assert_eq!(Reason::AgentDraining as i32, 34);
        assert_eq!(
            Reason::ContainerLimitationMemory.as_str_name(),
            "REASON_CONTAINER_LIMITATION_MEMORY"
        );
        let reason = DESCRIPTOR_POOL
            .get_enum_by_name("mesos.v1.TaskStatus.Reason")
            .unwrap();
        assert_eq!(reason.values().count(), 35, "all upstream reasons");
        assert_eq!(call::Type::UpdateFramework as i32, 17);
        assert_eq!(call::Type::ReconcileOperations as i32, 16);
        assert_eq!(event::Type::UpdateOperationStatus as i32, 11);
        assert_eq!(event::Type::Heartbeat as i32, 8);
    }

    #[test]
    fn generated_types_are_reflectable() {
        let call = mesos::v1::scheduler::Call::default();
        assert_eq!(call.descriptor().full_name(), "mesos.v1.scheduler.Call");
        let task = mesos::v1::scheduler::call::reconcile::Task::default();
        assert_eq!(
            task.descriptor().full_name(),
            "mesos.v1.scheduler.Call.Reconcile.Task"
        );
        // Every message in the pool maps to a generated type with the same name.
        assert!(
            DESCRIPTOR_POOL
                .get_message_by_name("mesos.v1.TaskInfo")
                .is_some()
        );
        assert_eq!(
            DESCRIPTOR_POOL
                .get_file_by_name("mesos/v1/scheduler/scheduler.proto")
                .unwrap()
                .package_name(),
            "mesos.v1.scheduler"
        );
    }
}
