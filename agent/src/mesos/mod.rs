//! Plugging into a real Apache Mesos master.
//!
//! - [`zk`]: a ZooKeeper client written for berth (jute wire protocol, sessions, watches).
//! - [`detector`]: finding and following the leading master from `--master`
//!   (`HOST:PORT`, `zk://...`, `file://...`).

pub mod detector;
pub mod zk;
