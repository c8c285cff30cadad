//! Plugging into a real Apache Mesos master.
//!
//! - [`zk`]: a ZooKeeper client written for berth (jute wire protocol, sessions, watches).
//! - [`detector`]: finding and following the leading master from `--master`
//!   (`HOST:PORT`, `zk://...`, `file://...`).
//! - [`link`]: registration, pings and the master's messages over libprocess.
//! - [`operator_stream`]: the cluster's task list from the leading master's operator event stream.

pub mod detector;
pub mod link;
pub mod operator_stream;
pub mod zk;
