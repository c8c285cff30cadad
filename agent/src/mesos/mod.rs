//! Plugging into a real Apache Mesos master.
//!
//! - [`zk`]: a ZooKeeper client written for berth (jute wire protocol, sessions, watches).
//! - [`detector`]: finding and following the leading master from `--master`
//!   (`HOST:PORT`, `zk://...`, `file://...`).
//! - [`link`]: registration, pings and the master's messages over libprocess.

pub mod detector;
pub mod link;
pub mod zk;
