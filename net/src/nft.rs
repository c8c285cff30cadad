//! The nftables seam and berth's table `ip berth`.
//!
//! Every change is one `nft -f -` script, which the kernel applies as one transaction: all of
//! it or nothing. The table holds, and its chains only ever contain these few rules:
//!
//! ```text
//! table ip berth {
//!   map lb_tcp    { typeof ip daddr . tcp dport . numgen inc mod 16 : ip daddr . tcp dport }
//!   map ports_tcp { typeof tcp dport : ip daddr . tcp dport }
//!   (and lb_udp, ports_udp)
//!   chain prerouting  { type nat hook prerouting priority -100
//!     meta l4proto tcp dnat ip to ip daddr . tcp dport . numgen inc mod 16 map @lb_tcp
//!     fib daddr type local meta l4proto tcp dnat ip to tcp dport map @ports_tcp
//!     (the same two for udp) }
//!   chain output      { type nat hook output priority -100   (the same rules, for the node itself,
//!                       port maps except to 127.0.0.0/8: see portmap::loopback) }
//!   chain postrouting { type nat hook postrouting priority 100
//!     ct status dnat ip saddr SUBNET ip daddr SUBNET masquerade   (hairpin only) }
//! }
//! ```
//!
//! (One map per protocol, because nft 1.0.6 cannot parse back a map keyed by
//! `meta l4proto . th dport`: it loads once, then every later transaction on the table fails
//! with "conflicting protocols specified"; and a `typeof ... : ip daddr . tcp dport` data type
//! silently adds `meta l4proto tcp` to the rule. The tests re-run the base script to catch it.)
//!
//! The load balancer's slot maps (`lb_tcp`, `lb_udp`) has `slots` elements per VIP, filled round-robin with
//! its backends; a packet of a new connection picks a slot with `numgen` (round-robin or random)
//! so the rule count is O(1) and a backend change touches only that VIP's elements.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::addr::Ipv4Net;
use crate::netns::{NetnsError, NetnsRef};

/// Errors of nftables and conntrack operations.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` (or `conntrack`) binary could not be run.
    #[error("run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `nft` rejected the transaction (nothing was applied).
    #[error("nft transaction on table {table} failed: {stderr}")]
    Transaction {
        /// The table.
        table: String,
        /// nft's message (first lines).
        stderr: String,
    },
    /// `conntrack -D` failed.
    #[error("conntrack flush of {flow} failed: {stderr}")]
    Conntrack {
        /// The flow description.
        flow: String,
        /// conntrack's message.
        stderr: String,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// A transport protocol a VIP or a port mapping uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The nft / conntrack keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection-tracking flow to forget: the DNATed flows of one backend of one VIP (or port
/// mapping), matched by original destination and reply source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackFlow {
    /// Protocol.
    pub proto: Proto,
    /// Original destination address (the VIP).
    pub orig_dst: Ipv4Addr,
    /// Original destination port (the VIP port).
    pub orig_dport: u16,
    /// Reply source address (the backend).
    pub reply_src: Ipv4Addr,
    /// Reply source port (the backend port).
    pub reply_sport: u16,
}

impl std::fmt::Display for ConntrackFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}:{} -> {}:{}",
            self.proto, self.orig_dst, self.orig_dport, self.reply_src, self.reply_sport
        )
    }
}

/// The kernel seam for nftables and conntrack: the real one runs `nft -f -` and `conntrack -D`
/// (optionally inside a network namespace); [`RecordingNft`] records scripts for unit tests.
pub trait NftExec: Send + Sync {
    /// Applies `script` as one atomic transaction.
    fn run(&self, script: &str) -> Result<(), NftError>;
    /// Applies element changes to maps of `table` as one atomic transaction. The default
    /// renders them as an `nft` script and calls [`NftExec::run`]; [`NftNetlink`] sends them
    /// as one nfnetlink batch instead.
    fn apply_changes(&self, table: &str, changes: &[MapChange]) -> Result<(), NftError> {
        self.run(&render_changes(table, changes))
    }
    /// Deletes the conntrack entries of `flow`.
    fn flush_conntrack(&self, flow: &ConntrackFlow) -> Result<(), NftError>;
}

/// A key of one of berth's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKey {
    /// `lb_*`: VIP address . VIP port . slot.
    Slot {
        /// VIP address.
        addr: Ipv4Addr,
        /// VIP port.
        port: u16,
        /// Slot number.
        slot: u16,
    },
    /// `ports_*`: the node port.
    Port(u16),
}

impl std::fmt::Display for MapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapKey::Slot { addr, port, slot } => write!(f, "{addr} . {port} . {slot}"),
            MapKey::Port(p) => write!(f, "{p}"),
        }
    }
}

/// One change to a map's elements; values are (address, port) DNAT targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapChange {
    /// Remove every element of the map.
    Flush {
        /// Map name.
        map: String,
    },
    /// Delete elements.
    Delete {
        /// Map name.
        map: String,
        /// Keys.
        keys: Vec<MapKey>,
    },
    /// Add elements.
    Add {
        /// Map name.
        map: String,
        /// Keys and their targets.
        elems: Vec<(MapKey, Ipv4Addr, u16)>,
    },
}

/// The `nft` script of `changes` (one transaction when fed to `nft -f -`).
pub fn render_changes(table: &str, changes: &[MapChange]) -> String {
    let mut s = String::new();
    for c in changes {
        match c {
            MapChange::Flush { map } => {
                let _ = writeln!(s, "flush map ip {table} {map}");
            }
            MapChange::Delete { map, keys } if !keys.is_empty() => {
                let list: Vec<String> = keys.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    s,
                    "delete element ip {table} {map} {{ {} }}",
                    list.join(", ")
                );
            }
            MapChange::Add { map, elems } if !elems.is_empty() => {
                let _ = write!(s, "add element ip {table} {map} {{ ");
                for (i, (k, ip, port)) in elems.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    let _ = write!(s, "{k} : {ip} . {port}");
                }
                s.push_str(" }\n");
            }
            _ => {}
        }
    }
    s
}

mod netlink;
pub use netlink::NftNetlink;

/// The real seam: the `nft` and `conntrack` programs.
#[derive(Debug)]
pub struct NftCommand {
    nft: PathBuf,
    conntrack: PathBuf,
    netns: Option<NetnsRef>,
}

impl NftCommand {
    /// Runs `nft`/`conntrack` from `PATH` in the caller's namespace.
    pub fn new() -> Self {
        Self {
            nft: "nft".into(),
            conntrack: "conntrack".into(),
            netns: None,
        }
    }

    /// Runs them inside `netns` (tests: a "node" namespace).
    pub fn in_netns(netns: NetnsRef) -> Self {
        Self {
            netns: Some(netns),
            ..Self::new()
        }
    }

    fn output(&self, cmd: Command, stdin: Option<&str>) -> Result<std::process::Output, NftError> {
        let program = PathBuf::from(cmd.get_program());
        let spawn = move || -> std::io::Result<std::process::Output> {
            let mut cmd = cmd;
            cmd.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = cmd.spawn()?;
            if let Some(text) = stdin {
                let mut pipe = child.stdin.take().expect("piped stdin");
                pipe.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        };
        // A child forked from a thread that entered the namespace starts inside it.
        let out = match &self.netns {
            Some(ns) => ns.run(spawn)?,
            None => spawn(),
        };
        out.map_err(|source| NftError::Spawn { program, source })
    }
}

impl Default for NftCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl NftExec for NftCommand {
    fn run(&self, script: &str) -> Result<(), NftError> {
        let mut cmd = Command::new(&self.nft);
        cmd.args(["-f", "-"]);
        let out = self.output(cmd, Some(script))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr: String = stderr.lines().take(6).collect::<Vec<_>>().join(" | ");
        Err(NftError::Transaction {
            table: table_of(script),
            stderr,
        })
    }

    fn flush_conntrack(&self, flow: &ConntrackFlow) -> Result<(), NftError> {
        let mut cmd = Command::new(&self.conntrack);
        cmd.args(["-D", "-p", flow.proto.as_str()])
            .args(["--orig-dst", &flow.orig_dst.to_string()])
            .args(["--orig-port-dst", &flow.orig_dport.to_string()])
            .args(["--reply-src", &flow.reply_src.to_string()])
            .args(["--reply-port-src", &flow.reply_sport.to_string()]);
        let out = self.output(cmd, None)?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // conntrack exits 1 when no entry matched: nothing to flush is success.
        if out.status.success() || stderr.contains("0 flow entries have been deleted") {
            tracing::debug!(flow = %flow, "flushed conntrack entries");
            return Ok(());
        }
        Err(NftError::Conntrack {
            flow: flow.to_string(),
            stderr,
        })
    }
}

fn table_of(script: &str) -> String {
    script
        .split_whitespace()
        .skip_while(|w| *w != "ip")
        .nth(1)
        .unwrap_or("?")
        .trim_end_matches(['{', ';'])
        .to_string()
}

/// The recording double: keeps every script and conntrack flush; can be told to fail.
#[derive(Debug, Default)]
pub struct RecordingNft {
    /// Scripts applied, in order.
    pub scripts: Mutex<Vec<String>>,
    /// Conntrack flushes, in order.
    pub flushed: Mutex<Vec<ConntrackFlow>>,
    /// When set, the next `run` fails with this message (and is not recorded).
    pub fail_next: Mutex<Option<String>>,
}

impl RecordingNft {
    /// The scripts applied so far.
    pub fn scripts(&self) -> Vec<String> {
        self.scripts.lock().unwrap().clone()
    }
}

impl NftExec for RecordingNft {
    fn run(&self, script: &str) -> Result<(), NftError> {
        if let Some(stderr) = self.fail_next.lock().unwrap().take() {
            return Err(NftError::Transaction {
                table: table_of(script),
                stderr,
            });
        }
        self.scripts.lock().unwrap().push(script.to_string());
        Ok(())
    }

    fn flush_conntrack(&self, flow: &ConntrackFlow) -> Result<(), NftError> {
        self.flushed.lock().unwrap().push(flow.clone());
        Ok(())
    }
}

/// How the load balancer picks a slot for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// `numgen inc`: slots in turn (each backend's share is exactly its slot share).
    #[default]
    RoundRobin,
    /// `numgen random`.
    Random,
}

/// Shape of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// Table name in family `ip` (`berth`).
    pub table: String,
    /// Slots per VIP (16): the maximum number of backends a VIP can use at once.
    pub slots: u16,
    /// Slot choice.
    pub selection: Selection,
    /// Subnets whose connections to themselves through a DNAT need SNAT (the node bridge's
    /// subnet: a container reaching a VIP or a mapped port that lands on the same bridge).
    pub hairpin_subnets: Vec<Ipv4Net>,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self {
            table: "berth".into(),
            slots: 16,
            selection: Selection::RoundRobin,
            hairpin_subnets: Vec::new(),
        }
    }
}

impl NftConfig {
    fn numgen(&self) -> String {
        let kind = match self.selection {
            Selection::RoundRobin => "inc",
            Selection::Random => "random",
        };
        format!("numgen {kind} mod {}", self.slots)
    }

    /// The script that creates the table, maps and chains if missing and (re)writes the rules,
    /// leaving the maps' elements alone. Idempotent; one transaction.
    pub fn base_script(&self) -> String {
        let t = &self.table;
        let ng = self.numgen();
        let mut s = String::new();
        let _ = writeln!(s, "add table ip {t}");
        for p in ["tcp", "udp"] {
            let _ = writeln!(
                s,
                "add map ip {t} lb_{p} {{ typeof ip daddr . {p} dport . {ng} : ip daddr . {p} dport ; }}"
            );
            let _ = writeln!(
                s,
                "add map ip {t} ports_{p} {{ typeof {p} dport : ip daddr . {p} dport ; }}"
            );
        }
        for (chain, hook, prio) in [
            ("prerouting", "prerouting", -100),
            ("output", "output", -100),
            ("postrouting", "postrouting", 100),
        ] {
            let _ = writeln!(
                s,
                "add chain ip {t} {chain} {{ type nat hook {hook} priority {prio} ; policy accept ; }}"
            );
            let _ = writeln!(s, "flush chain ip {t} {chain}");
        }
        for chain in ["prerouting", "output"] {
            for p in ["tcp", "udp"] {
                let _ = writeln!(
                    s,
                    "add rule ip {t} {chain} meta l4proto {p} dnat ip to ip daddr . {p} dport . {ng} map @lb_{p}"
                );
                // From the node itself, 127.0.0.0/8 is left to the agent's loopback relay
                // (portmap::loopback): a loopback source cannot be DNATed off `lo`.
                let not_loopback = if chain == "output" {
                    "ip daddr != 127.0.0.0/8 "
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    "add rule ip {t} {chain} fib daddr type local {not_loopback}meta l4proto {p} dnat ip to {p} dport map @ports_{p}"
                );
            }
        }
        for net in &self.hairpin_subnets {
            let _ = writeln!(
                s,
                "add rule ip {t} postrouting ct status dnat ip saddr {net} ip daddr {net} masquerade"
            );
        }
        s
    }

    /// The script that deletes the table (teardown).
    pub fn delete_script(&self) -> String {
        format!("add table ip {t}\ndelete table ip {t}\n", t = self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_script_has_constant_rules_and_keeps_elements() {
        let cfg = NftConfig {
            hairpin_subnets: vec!["9.0.1.0/24".parse().unwrap()],
            ..NftConfig::default()
        };
        let s = cfg.base_script();
        assert_eq!(s.matches("add rule").count(), 9, "{s}");
        assert!(s.contains("numgen inc mod 16 map @lb_tcp"));
        assert!(s.contains("ip saddr 9.0.1.0/24 ip daddr 9.0.1.0/24 masquerade"));
        assert!(
            !s.contains("flush map"),
            "re-running the base script must keep map elements"
        );
        let r = NftConfig {
            selection: Selection::Random,
            slots: 8,
            ..NftConfig::default()
        };
        assert!(r.base_script().contains("numgen random mod 8"));
        assert_eq!(table_of(&s), "berth");
    }

    #[test]
    fn recording_double_records_and_fails_on_demand() {
        let rec = RecordingNft::default();
        rec.run("add table ip berth\n").unwrap();
        *rec.fail_next.lock().unwrap() = Some("boom".into());
        let err = rec.run("add table ip berth\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "nft transaction on table berth failed: boom"
        );
        assert_eq!(rec.scripts().len(), 1);
    }
}
