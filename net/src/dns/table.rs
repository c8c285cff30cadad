//! The names berth answers: VIPs (`<name>.l4lb.berth.directory` → A) and tasks
//! (`<task>.<framework>.berth.directory` → A/AAAA per instance,
//! `_<task>._tcp.<framework>.berth.directory` → SRV per instance and port, the targets being
//! per-instance host names `<task>-<hash of task id>.<framework>.berth.directory` with their own
//! A/AAAA records).
//!
//! The agent fills a [`DnsTable`] from the cluster's task list: [`DnsTable::replace_all`] builds
//! a new zone off-lock and swaps it in; [`DnsTable::upsert_task`] / [`DnsTable::remove_task`]
//! (and the VIP equivalents) change only the names one entry contributes, O(entry) under the
//! write lock. Lookups take the read lock for the time of a hash lookup.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use crate::addr::Ipv4Net;
use crate::bridge::fnv1a;
use crate::dns::wire::RType;
use crate::lb::vip_address;
use crate::nft::Proto;

/// The zone berth answers for.
pub const DEFAULT_DOMAIN: &str = "berth.directory";
/// The label under the zone holding named VIPs.
pub const VIP_SUBDOMAIN: &str = "l4lb";
/// TTL of berth's records and of negative answers (s): short, tasks move (DC/OS uses 5 s).
pub const DEFAULT_TTL: u32 = 5;

/// Sanitises a task, framework or VIP name into one DNS label the way DC/OS does: lower-case,
/// every byte outside `[a-z0-9-]` (dots, underscores, slashes, spaces, non-ASCII) becomes
/// `-`, leading and trailing `-` are trimmed, and the result is cut to 63 bytes (then trimmed
/// again). May return an empty string (a name of only punctuation); such names get no records.
pub fn dns_label(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let cut = &trimmed[..trimmed.len().min(63)];
    cut.trim_end_matches('-').to_string()
}

/// The per-instance host label of a task: `<task label>-<8 hex digits of FNV-1a(task id)>`,
/// at most 63 bytes. SRV records point at `<this>.<framework>.<zone>`.
pub fn instance_label(task_name: &str, task_id: &str) -> String {
    let base = dns_label(task_name);
    let base = base[..base.len().min(54)].trim_end_matches('-');
    let hash = fnv1a(task_id) as u32;
    if base.is_empty() {
        format!("t-{hash:08x}")
    } else {
        format!("{base}-{hash:08x}")
    }
}

/// A named VIP: `<name>.l4lb.<zone>` → `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipRecord {
    /// The VIP name as in the label `VIP_0=/name:port` (may hold dots: each part is a label).
    pub name: String,
    /// Its address.
    pub addr: Ipv4Addr,
}

impl VipRecord {
    /// A named VIP with the address the load balancer gives it (`lb::vip_address` of the
    /// lower-cased name in `range`).
    pub fn named(name: &str, range: Ipv4Net) -> Self {
        let name = name.to_ascii_lowercase();
        let addr = vip_address(&name, range);
        VipRecord { name, addr }
    }
}

/// A port of a task instance, published as SRV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPort {
    /// The protocol (`_tcp` / `_udp`).
    pub protocol: Proto,
    /// The port clients connect to on the instance's address.
    pub port: u16,
    /// An optional port name (Mesos `DiscoveryInfo` port name): also published as
    /// `_<name>._<task>._<proto>.<framework>.<zone>`.
    pub name: Option<String>,
}

/// One task instance as the agent knows it from the cluster's task list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// The task id (unique; the key for updates).
    pub task_id: String,
    /// The task name (`<task>` in the names; instances sharing it share the name).
    pub name: String,
    /// The framework name.
    pub framework: String,
    /// The instance's addresses.
    pub ips: Vec<IpAddr>,
    /// The instance's ports.
    pub ports: Vec<TaskPort>,
}

/// Data of a record the table holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ZoneData {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Service location; `target` is a lower-case name in the zone without trailing dot.
    Srv {
        /// Port.
        port: u16,
        /// Instance host name.
        target: String,
    },
}

impl ZoneData {
    /// The record type.
    pub fn rtype(&self) -> RType {
        match self {
            ZoneData::A(_) => RType::A,
            ZoneData::Aaaa(_) => RType::AAAA,
            ZoneData::Srv { .. } => RType::SRV,
        }
    }

    fn addr(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => ZoneData::A(a),
            IpAddr::V6(a) => ZoneData::Aaaa(a),
        }
    }
}

/// The table's verdict on a name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is not under the zone: forward it.
    NotInZone,
    /// Under the zone, no such name (NXDOMAIN).
    NxDomain,
    /// The name exists but has no records of that type (NOERROR, empty).
    NoData,
    /// Records: the answers (owner = the asked name), and additional records (owner, data),
    /// the A/AAAA records of SRV targets.
    Records {
        /// Answer data.
        answers: Vec<ZoneData>,
        /// Additional records.
        additional: Vec<(String, ZoneData)>,
    },
}

/// Who contributed a record: a task id or a VIP name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Task(Arc<str>),
    Vip(Arc<str>),
}

#[derive(Debug, Default)]
struct Zone {
    /// Name → records, each tagged with its contributor.
    names: HashMap<String, Vec<(Owner, ZoneData)>>,
    /// Names that exist only because names below them have records (empty non-terminals),
    /// with the count of such names below.
    ancestors: HashMap<String, usize>,
    tasks: HashMap<Arc<str>, TaskRecord>,
    vips: HashMap<Arc<str>, VipRecord>,
    /// Bumped on every change (the SOA serial).
    serial: u32,
}

/// The DNS records berth serves, shared by the agent (writer) and the server (reader).
#[derive(Debug)]
pub struct DnsTable {
    domain: String,
    ttl: u32,
    zone: RwLock<Zone>,
}

impl Default for DnsTable {
    fn default() -> Self {
        DnsTable::new(DEFAULT_DOMAIN, DEFAULT_TTL)
    }
}

impl DnsTable {
    /// An empty table for `domain` (lower-cased, trailing dot ignored) with record TTL `ttl`.
    pub fn new(domain: &str, ttl: u32) -> Self {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        DnsTable {
            domain,
            ttl,
            zone: RwLock::new(Zone::default()),
        }
    }

    /// The zone's name (`berth.directory`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The TTL of records and negative answers.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The SOA serial: changes with every update.
    pub fn serial(&self) -> u32 {
        self.read().serial
    }

    /// The name a VIP is served under.
    pub fn vip_name(&self, vip: &str) -> Option<String> {
        let labels: Vec<String> = vip.split('.').map(dns_label).collect();
        if labels.iter().any(String::is_empty) {
            return None;
        }
        Some(format!(
            "{}.{VIP_SUBDOMAIN}.{}",
            labels.join("."),
            self.domain
        ))
    }

    /// The name a task's instances are served under (`<task>.<framework>.<zone>`).
    pub fn task_name(&self, task: &str, framework: &str) -> Option<String> {
        let (t, f) = (dns_label(task), dns_label(framework));
        (!t.is_empty() && !f.is_empty()).then(|| format!("{t}.{f}.{}", self.domain))
    }

    /// Replaces everything with `vips` and `tasks` (a later task with the same id wins).
    /// The new zone is built without holding the lock, then swapped in.
    pub fn replace_all(&self, vips: Vec<VipRecord>, tasks: Vec<TaskRecord>) {
        let mut zone = Zone::default();
        for v in vips {
            self.insert_vip(&mut zone, v);
        }
        for t in tasks {
            self.remove_owner(&mut zone, &Owner::Task(t.task_id.as_str().into()));
            self.insert_task(&mut zone, t);
        }
        let mut guard = self.write();
        zone.serial = guard.serial.wrapping_add(1);
        *guard = zone;
        tracing::debug!(
            domain = %self.domain,
            names = guard.names.len(),
            tasks = guard.tasks.len(),
            vips = guard.vips.len(),
            "DNS table replaced"
        );
    }

    /// Adds or replaces one task instance (keyed by task id).
    pub fn upsert_task(&self, task: TaskRecord) {
        let mut zone = self.write();
        self.remove_owner(&mut zone, &Owner::Task(task.task_id.as_str().into()));
        self.insert_task(&mut zone, task);
        zone.serial = zone.serial.wrapping_add(1);
    }

    /// Removes a task instance; whether it was there.
    pub fn remove_task(&self, task_id: &str) -> bool {
        let mut zone = self.write();
        let found = self.remove_owner(&mut zone, &Owner::Task(task_id.into()));
        zone.serial = zone.serial.wrapping_add(1);
        found
    }

    /// Adds or replaces a named VIP (keyed by name).
    pub fn upsert_vip(&self, vip: VipRecord) {
        let mut zone = self.write();
        self.remove_owner(&mut zone, &Owner::Vip(vip.name.as_str().into()));
        self.insert_vip(&mut zone, vip);
        zone.serial = zone.serial.wrapping_add(1);
    }

    /// Removes a named VIP; whether it was there.
    pub fn remove_vip(&self, name: &str) -> bool {
        let mut zone = self.write();
        let found = self.remove_owner(&mut zone, &Owner::Vip(name.into()));
        zone.serial = zone.serial.wrapping_add(1);
        found
    }

    /// Number of names with records.
    pub fn len(&self) -> usize {
        self.read().names.len()
    }

    /// Whether the table has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `name` (lower-case, no trailing dot) is the zone or under it.
    pub fn in_zone(&self, name: &str) -> bool {
        name == self.domain
            || name
                .strip_suffix(self.domain.as_str())
                .is_some_and(|head| head.ends_with('.'))
    }

    /// Answers `qtype` for `name` (lower-case dotted, no trailing dot). `ANY` returns all
    /// records of the name; SRV answers carry their targets' addresses as additional records.
    pub fn lookup(&self, name: &str, qtype: RType) -> Lookup {
        if !self.in_zone(name) {
            return Lookup::NotInZone;
        }
        let zone = self.read();
        let Some(records) = zone.names.get(name) else {
            if name == self.domain || zone.ancestors.contains_key(name) {
                return Lookup::NoData;
            }
            return Lookup::NxDomain;
        };
        let mut answers: Vec<ZoneData> = Vec::new();
        for (_, d) in records {
            if (qtype == RType::ANY || d.rtype() == qtype) && !answers.contains(d) {
                answers.push(d.clone());
            }
        }
        if answers.is_empty() {
            return Lookup::NoData;
        }
        let mut additional: Vec<(String, ZoneData)> = Vec::new();
        for d in &answers {
            let ZoneData::Srv { target, .. } = d else {
                continue;
            };
            if additional.iter().any(|(n, _)| n == target) {
                continue;
            }
            for (_, td) in zone.names.get(target).into_iter().flatten() {
                if matches!(td, ZoneData::A(_) | ZoneData::Aaaa(_))
                    && !additional.iter().any(|(n, d)| n == target && d == td)
                {
                    additional.push((target.clone(), td.clone()));
                }
            }
        }
        Lookup::Records {
            answers,
            additional,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Zone> {
        // A panic while holding the lock cannot leave a half-applied entry that matters for
        // answering: recover the guard rather than poisoning DNS for the agent's lifetime.
        self.zone.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Zone> {
        self.zone.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The (name, data) pairs a task contributes.
    fn task_records(&self, t: &TaskRecord) -> Vec<(String, ZoneData)> {
        let Some(task_name) = self.task_name(&t.name, &t.framework) else {
            tracing::warn!(task_id = %t.task_id, task = %t.name, framework = %t.framework,
                "task or framework name has no DNS label characters: no DNS records");
            return Vec::new();
        };
        let fw = dns_label(&t.framework);
        let task = dns_label(&t.name);
        let host = format!(
            "{}.{fw}.{}",
            instance_label(&t.name, &t.task_id),
            self.domain
        );
        let mut out = Vec::new();
        for ip in &t.ips {
            out.push((task_name.clone(), ZoneData::addr(*ip)));
            out.push((host.clone(), ZoneData::addr(*ip)));
        }
        if t.ips.is_empty() {
            return out;
        }
        for p in &t.ports {
            let srv = ZoneData::Srv {
                port: p.port,
                target: host.clone(),
            };
            let proto = p.protocol.as_str();
            out.push((
                format!("_{task}._{proto}.{fw}.{}", self.domain),
                srv.clone(),
            ));
            if let Some(pname) = p.name.as_deref().map(dns_label).filter(|n| !n.is_empty()) {
                out.push((
                    format!("_{pname}._{task}._{proto}.{fw}.{}", self.domain),
                    srv,
                ));
            }
        }
        out
    }

    fn insert_task(&self, zone: &mut Zone, t: TaskRecord) {
        let id: Arc<str> = t.task_id.as_str().into();
        for (name, data) in self.task_records(&t) {
            add_record(zone, &self.domain, name, Owner::Task(id.clone()), data);
        }
        zone.tasks.insert(id, t);
    }

    fn insert_vip(&self, zone: &mut Zone, v: VipRecord) {
        let key: Arc<str> = v.name.as_str().into();
        match self.vip_name(&v.name) {
            Some(name) => add_record(
                zone,
                &self.domain,
                name,
                Owner::Vip(key.clone()),
                ZoneData::A(v.addr),
            ),
            None => tracing::warn!(vip = %v.name, "VIP name has an empty label: no DNS record"),
        }
        zone.vips.insert(key, v);
    }

    /// Removes every record `owner` contributed; whether it was known.
    fn remove_owner(&self, zone: &mut Zone, owner: &Owner) -> bool {
        let names: Vec<String> = match owner {
            Owner::Task(id) => match zone.tasks.remove(id) {
                Some(t) => self.task_records(&t).into_iter().map(|(n, _)| n).collect(),
                None => return false,
            },
            Owner::Vip(name) => match zone.vips.remove(name) {
                Some(v) => self.vip_name(&v.name).into_iter().collect(),
                None => return false,
            },
        };
        for name in names {
            let Some(recs) = zone.names.get_mut(&name) else {
                continue;
            };
            recs.retain(|(o, _)| o != owner);
            if recs.is_empty() {
                zone.names.remove(&name);
                for anc in ancestors(&name, &self.domain) {
                    if let Some(n) = zone.ancestors.get_mut(anc) {
                        *n -= 1;
                        if *n == 0 {
                            zone.ancestors.remove(anc);
                        }
                    }
                }
            }
        }
        true
    }
}

fn add_record(zone: &mut Zone, domain: &str, name: String, owner: Owner, data: ZoneData) {
    if let Some(recs) = zone.names.get_mut(&name) {
        recs.push((owner, data));
        return;
    }
    for anc in ancestors(&name, domain) {
        *zone.ancestors.entry(anc.to_string()).or_default() += 1;
    }
    zone.names.insert(name, vec![(owner, data)]);
}

/// The proper ancestors of `name` down to and including `domain`.
fn ancestors<'a>(name: &'a str, domain: &'a str) -> impl Iterator<Item = &'a str> {
    let mut rest = name;
    std::iter::from_fn(move || {
        if rest.len() <= domain.len() {
            return None;
        }
        let (_, tail) = rest.split_once('.')?;
        rest = tail;
        Some(tail)
    })
}

#[cfg(test)]
mod tests;
