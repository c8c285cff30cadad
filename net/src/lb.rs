//! The L4 load balancer: VIP labels, the desired VIP → backends state, the [`VipBalancer`]
//! trait both backends implement (nftables here, IPVS in [`crate::ipvs`]), and the
//! reconciliation into the `lb` slot map of the nftables table (see [`crate::nft`]).
//!
//! `apply(desired)` compares each VIP's backends with what was last applied (O(VIPs) set
//! comparisons), recomputes the slot elements (each VIP's `slots` elements filled round-robin
//! with its sorted backends) only for VIPs that changed, and sends one transaction touching only
//! the changed elements; the first apply (or one after a failure) flushes the maps
//! and loads everything in the same transaction. UDP conntrack entries of a backend that left a
//! VIP are flushed after the transaction, so datagrams stop reaching it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::addr::Ipv4Net;
use crate::bridge::fnv1a;
use crate::nft::{ConntrackFlow, MapChange, MapKey, NftConfig, NftError, NftExec, Proto};

/// The default VIP range named VIPs are hashed into.
pub const DEFAULT_VIP_RANGE: &str = "11.0.0.0/8";

/// Errors of VIP labels and load balancer updates.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// A `VIP_n` label value is malformed.
    #[error("VIP label {label}={value:?}: {reason}")]
    BadLabel {
        /// The label key (`VIP_0`).
        label: String,
        /// The value.
        value: String,
        /// What is wrong, and what was expected.
        reason: String,
    },
    /// Two different VIP names hash to the same address.
    #[error("VIP names {a:?} and {b:?} hash to the same address {addr}")]
    NameCollision {
        /// One name.
        a: String,
        /// The other.
        b: String,
        /// The address.
        addr: Ipv4Addr,
    },
    /// The nftables transaction (or a conntrack flush) failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// An IPVS, dummy-link or sysctl operation of the IPVS balancer failed.
    #[error(transparent)]
    Ipvs(#[from] crate::ipvs::IpvsError),
    /// `--lb-backend` names no balancer.
    #[error("unknown load balancer backend {0:?}: 'nftables' or 'ipvs'")]
    UnknownBackend(String),
}

/// Which kernel mechanism balances VIP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbBackend {
    /// nftables slot maps ([`LoadBalancer`]).
    #[default]
    Nftables,
    /// IPVS virtual services ([`crate::ipvs::IpvsBalancer`]), where the kernel has `ip_vs`.
    Ipvs,
}

impl LbBackend {
    /// `nftables` or `ipvs`.
    pub fn as_str(self) -> &'static str {
        match self {
            LbBackend::Nftables => "nftables",
            LbBackend::Ipvs => "ipvs",
        }
    }
}

impl std::fmt::Display for LbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LbBackend {
    type Err = LbError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nftables" | "nft" => Ok(LbBackend::Nftables),
            "ipvs" => Ok(LbBackend::Ipvs),
            other => Err(LbError::UnknownBackend(other.into())),
        }
    }
}

/// A VIP load balancer the agent can hold whichever backend it uses: both make the kernel
/// equal to an [`LbState`], touching only what changed.
pub trait VipBalancer: Send {
    /// Which backend this is.
    fn backend(&self) -> LbBackend;
    /// Creates what the balancer needs before the first apply (idempotent).
    fn setup(&mut self) -> Result<(), LbError>;
    /// Makes the kernel's VIPs equal to `desired`.
    fn apply(&mut self, desired: &LbState) -> Result<LbApplyStats, LbError>;
    /// Forgets what was applied: the next `apply` reads or reloads everything.
    fn invalidate(&mut self);
    /// Removes everything the balancer created (node teardown, tests).
    fn teardown(&mut self) -> Result<(), LbError>;
}

/// Where a VIP label points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VipTarget {
    /// `/name:port`: a named VIP, `name.l4lb.berth.directory`, address hashed into the VIP range.
    Named(String),
    /// `ip:port`: a fixed address.
    Addr(Ipv4Addr),
}

/// A parsed `VIP_n` label: target and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipLabel {
    /// The target.
    pub target: VipTarget,
    /// The VIP port.
    pub port: u16,
}

impl VipLabel {
    /// Parses a label value: `/name:port` or `ip:port`. `label` (`VIP_0`) names the label in
    /// errors. Names are DNS labels (`[a-z0-9-]`, 1–63, no leading/trailing `-`; dots allowed
    /// between labels).
    pub fn parse(label: &str, value: &str) -> Result<Self, LbError> {
        let bad = |reason: &str| LbError::BadLabel {
            label: label.into(),
            value: value.into(),
            reason: reason.into(),
        };
        let (head, port) = value
            .rsplit_once(':')
            .ok_or_else(|| bad("expected /name:port or ip:port (no ':port')"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be a number 1..=65535"))?;
        let target = if let Some(name) = head.strip_prefix('/') {
            let name = name.to_ascii_lowercase();
            if name.is_empty() {
                return Err(bad("empty VIP name after '/'"));
            }
            let valid_label = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !name.split('.').all(valid_label) {
                return Err(bad("VIP name must be DNS labels of [a-z0-9-]"));
            }
            VipTarget::Named(name)
        } else {
            let ip: Ipv4Addr = head.parse().map_err(|_| {
                bad("expected /name:port (a named VIP starts with '/') or a dotted IPv4 ip:port")
            })?;
            VipTarget::Addr(ip)
        };
        Ok(Self { target, port })
    }
}

/// Parses the `VIP_n` labels of a task (other labels are ignored) into (label, VIP) pairs.
pub fn parse_vip_labels<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<VipLabel>, LbError> {
    let mut out = Vec::new();
    for (k, v) in labels {
        let Some(n) = k.strip_prefix("VIP_") else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LbError::BadLabel {
                label: k.into(),
                value: v.into(),
                reason: "VIP label keys are VIP_<number>".into(),
            });
        }
        out.push(VipLabel::parse(k, v)?);
    }
    Ok(out)
}

/// The address of a named VIP: FNV-1a of the name into `range`, never its network or
/// broadcast address. Every node computes the same address.
pub fn vip_address(name: &str, range: Ipv4Net) -> Ipv4Addr {
    let hosts = range.size().saturating_sub(2).max(1);
    let off = 1 + fnv1a(name) % hosts;
    range
        .nth(off.min(range.size() - 1))
        .expect("offset inside the range")
}

/// A VIP as programmed: address, protocol, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// The VIP address.
    pub addr: Ipv4Addr,
    /// The protocol.
    pub proto: Proto,
    /// The VIP port.
    pub port: u16,
}

/// A backend: a task's address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// The desired load balancer state: every VIP with its (running, healthy) backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbState {
    /// VIP → backends.
    pub vips: BTreeMap<VipKey, BTreeSet<Backend>>,
    names: BTreeMap<Ipv4Addr, String>,
}

impl LbState {
    /// Adds `backend` under a VIP label (named VIPs are hashed into `range`). Two names that
    /// collide on one address are an error.
    pub fn add(
        &mut self,
        vip: &VipLabel,
        proto: Proto,
        backend: Backend,
        range: Ipv4Net,
    ) -> Result<VipKey, LbError> {
        let addr = match &vip.target {
            VipTarget::Addr(a) => *a,
            VipTarget::Named(name) => {
                let addr = vip_address(name, range);
                match self.names.get(&addr) {
                    Some(other) if other != name => {
                        return Err(LbError::NameCollision {
                            a: other.clone(),
                            b: name.clone(),
                            addr,
                        });
                    }
                    _ => {
                        self.names.insert(addr, name.clone());
                    }
                }
                addr
            }
        };
        let key = VipKey {
            addr,
            proto,
            port: vip.port,
        };
        self.vips.entry(key).or_default().insert(backend);
        Ok(key)
    }

    /// Adds `backend` under an explicit VIP key.
    pub fn add_key(&mut self, key: VipKey, backend: Backend) {
        self.vips.entry(key).or_default().insert(backend);
    }

    /// The named VIP behind an address, if any (for DNS and `berth net ls`).
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.names.get(&addr).map(String::as_str)
    }
}

type Applied = BTreeMap<VipKey, BTreeSet<Backend>>;

/// The slot elements of one VIP: slot `s` → the `s mod n`th of its sorted backends.
fn vip_slots(key: &VipKey, backends: &BTreeSet<Backend>, slots: u16) -> Vec<Backend> {
    let bs: Vec<&Backend> = backends.iter().collect();
    if bs.is_empty() {
        return Vec::new();
    }
    if bs.len() > slots as usize {
        tracing::warn!(vip = %key.addr, port = key.port, backends = bs.len(), slots,
            "more backends than slots: only the first {slots} receive connections");
    }
    (0..slots as usize).map(|s| *bs[s % bs.len()]).collect()
}

fn map_key(key: &VipKey, slot: u16) -> MapKey {
    MapKey::Slot {
        addr: key.addr,
        port: key.port,
        slot,
    }
}

fn lb_map(p: Proto) -> String {
    format!("lb_{p}")
}

/// `Delete`/`Add` changes grouped per protocol map.
fn grouped<T>(items: impl Iterator<Item = (Proto, T)>) -> BTreeMap<Proto, Vec<T>> {
    let mut by_proto: BTreeMap<Proto, Vec<T>> = BTreeMap::new();
    for (p, e) in items {
        by_proto.entry(p).or_default().push(e);
    }
    by_proto
}

/// What one `apply` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbApplyStats {
    /// Whether the map was flushed and fully reloaded.
    pub full: bool,
    /// Elements added (including replaced ones).
    pub added: usize,
    /// Elements deleted (including replaced ones).
    pub deleted: usize,
    /// Conntrack flows flushed (UDP backends that left a VIP).
    pub flushed: usize,
}

/// The load balancer: owns the `lb` map of the table.
pub struct LoadBalancer {
    exec: Arc<dyn NftExec>,
    cfg: NftConfig,
    /// VIP → backends as last applied (`None`: unknown, reload fully).
    applied: Option<Applied>,
}

impl std::fmt::Debug for LoadBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBalancer")
            .field("cfg", &self.cfg)
            .field("applied_vips", &self.applied.as_ref().map(|a| a.len()))
            .finish()
    }
}

impl LoadBalancer {
    /// A load balancer over `exec`; nothing is applied until [`LoadBalancer::ensure_table`] /
    /// [`LoadBalancer::apply`].
    pub fn new(exec: Arc<dyn NftExec>, cfg: NftConfig) -> Self {
        Self {
            exec,
            cfg,
            applied: None,
        }
    }

    /// Creates the table, maps, chains and rules (keeping existing elements).
    pub fn ensure_table(&self) -> Result<(), LbError> {
        Ok(self.exec.run(&self.cfg.base_script())?)
    }

    /// Deletes the whole table (node teardown).
    pub fn delete_table(&mut self) -> Result<(), LbError> {
        self.applied = None;
        Ok(self.exec.run(&self.cfg.delete_script())?)
    }

    /// Forgets what was applied: the next `apply` reloads the whole map (periodic resync).
    pub fn invalidate(&mut self) {
        self.applied = None;
    }

    /// Makes the kernel's slot map equal to `desired` in one transaction (see module docs).
    pub fn apply(&mut self, desired: &LbState) -> Result<LbApplyStats, LbError> {
        let slots = self.cfg.slots;
        let mut stats = LbApplyStats::default();
        let mut dels: Vec<(Proto, MapKey)> = Vec::new();
        let mut adds: Vec<(Proto, (MapKey, Ipv4Addr, u16))> = Vec::new();
        let mut gone: Vec<(VipKey, Backend)> = Vec::new();
        // VIPs whose backends changed: (key, new backends or None when the VIP is gone).
        let mut changed: Vec<(VipKey, Option<&BTreeSet<Backend>>)> = Vec::new();
        let mut changes = Vec::new();
        match &self.applied {
            None => {
                stats.full = true;
                for p in [Proto::Tcp, Proto::Udp] {
                    changes.push(MapChange::Flush { map: lb_map(p) });
                }
                for (k, bs) in &desired.vips {
                    for (s, b) in vip_slots(k, bs, slots).iter().enumerate() {
                        adds.push((k.proto, (map_key(k, s as u16), b.ip, b.port)));
                    }
                }
            }
            Some(prev) => {
                // O(VIPs) set comparisons; slot elements only for VIPs that changed.
                let empty = BTreeSet::new();
                for (k, old) in prev {
                    let new = desired.vips.get(k);
                    if new == Some(old) {
                        continue;
                    }
                    changed.push((*k, new));
                    let new = new.unwrap_or(&empty);
                    let (o, n) = (vip_slots(k, old, slots), vip_slots(k, new, slots));
                    for s in 0..o.len().max(n.len()) {
                        match (o.get(s), n.get(s)) {
                            (Some(a), Some(b)) if a == b => {}
                            (Some(_), Some(b)) => {
                                dels.push((k.proto, map_key(k, s as u16)));
                                adds.push((k.proto, (map_key(k, s as u16), b.ip, b.port)));
                            }
                            (Some(_), None) => dels.push((k.proto, map_key(k, s as u16))),
                            (None, Some(b)) => {
                                adds.push((k.proto, (map_key(k, s as u16), b.ip, b.port)))
                            }
                            (None, None) => {}
                        }
                    }
                    gone.extend(old.iter().filter(|b| !new.contains(b)).map(|b| (*k, *b)));
                }
                for (k, new) in &desired.vips {
                    if prev.contains_key(k) {
                        continue;
                    }
                    changed.push((*k, Some(new)));
                    for (s, b) in vip_slots(k, new, slots).iter().enumerate() {
                        adds.push((k.proto, (map_key(k, s as u16), b.ip, b.port)));
                    }
                }
                if dels.is_empty() && adds.is_empty() {
                    if let Some(applied) = self.applied.as_mut() {
                        // Record VIPs that changed without touching elements (e.g. emptied).
                        for (k, new) in changed {
                            update(applied, k, new);
                        }
                    }
                    return Ok(stats);
                }
            }
        }
        stats.added = adds.len();
        stats.deleted = dels.len();
        for (p, keys) in grouped(dels.into_iter()) {
            changes.push(MapChange::Delete {
                map: lb_map(p),
                keys,
            });
        }
        for (p, elems) in grouped(adds.into_iter()) {
            changes.push(MapChange::Add {
                map: lb_map(p),
                elems,
            });
        }
        if let Err(e) = self.exec.apply_changes(&self.cfg.table, &changes) {
            // The transaction is atomic, but be safe: resync fully next time.
            self.applied = None;
            return Err(e.into());
        }
        tracing::info!(
            full = stats.full,
            added = stats.added,
            deleted = stats.deleted,
            vips = desired.vips.len(),
            "load balancer applied"
        );
        match self.applied.as_mut() {
            Some(applied) => {
                for (k, new) in changed {
                    update(applied, k, new);
                }
            }
            None => {
                let all = desired.vips.iter().filter(|(_, b)| !b.is_empty());
                self.applied = Some(all.map(|(k, b)| (*k, b.clone())).collect());
            }
        }
        for (k, b) in gone.iter().filter(|(k, _)| k.proto == Proto::Udp) {
            let flow = ConntrackFlow {
                proto: Proto::Udp,
                orig_dst: k.addr,
                orig_dport: k.port,
                reply_src: b.ip,
                reply_sport: b.port,
            };
            self.exec.flush_conntrack(&flow)?;
            stats.flushed += 1;
        }
        Ok(stats)
    }
}

impl VipBalancer for LoadBalancer {
    fn backend(&self) -> LbBackend {
        LbBackend::Nftables
    }

    fn setup(&mut self) -> Result<(), LbError> {
        self.ensure_table()
    }

    fn apply(&mut self, desired: &LbState) -> Result<LbApplyStats, LbError> {
        LoadBalancer::apply(self, desired)
    }

    fn invalidate(&mut self) {
        LoadBalancer::invalidate(self)
    }

    fn teardown(&mut self) -> Result<(), LbError> {
        self.delete_table()
    }
}

fn update(applied: &mut Applied, k: VipKey, new: Option<&BTreeSet<Backend>>) {
    match new {
        Some(b) if !b.is_empty() => {
            applied.insert(k, b.clone());
        }
        _ => {
            applied.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests;
