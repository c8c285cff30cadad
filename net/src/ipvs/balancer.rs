//! [`IpvsBalancer`]: makes the kernel's IPVS services, the dummy link's addresses and the
//! nftables set of VIP addresses equal to an [`LbState`].
//!
//! Like the nftables balancer, `apply` remembers what it applied and later touches only what
//! changed (services and destinations added or removed, addresses bound or unbound). The first
//! apply (or the one after a failure or [`VipBalancer::invalidate`]) reads the kernel instead:
//! every IPv4 service whose address is berth's (inside the VIP range, or bound to the dummy
//! link by an earlier run) is compared with the desired state, and stale ones are deleted;
//! services of anyone else are left alone. Destinations of a service are added before stale
//! ones are removed, so a VIP never goes through an empty moment when its backends move.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{DEFAULT_DUMMY, DEFAULT_SCHEDULER, IpvsDest, IpvsError, IpvsExec, IpvsService};
use crate::addr::Ipv4Net;
use crate::lb::{
    Backend, DEFAULT_VIP_RANGE, LbApplyStats, LbBackend, LbError, LbState, VipBalancer, VipKey,
};
use crate::nft::{NftConfig, NftExec};

/// The nftables set of VIP addresses IPVS serves, in berth's table.
pub const VIP_SET: &str = "ipvs_vips";
/// The postrouting chain masquerading IPVS-forwarded hairpin connections.
pub const MASQ_CHAIN: &str = "ipvs_postrouting";

/// The sysctls kube-proxy sets for IPVS, set in the balancer's namespace by `setup`.
pub const SYSCTLS: [(&str, &str); 3] = [
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
];

/// Settings of the IPVS balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConfig {
    /// IPVS scheduler of every service (`rr`).
    pub scheduler: String,
    /// The dummy link holding the VIP addresses (`berth-ipvs0`).
    pub dummy: String,
    /// Berth's VIP range: IPVS services there are berth's, and stale ones are deleted.
    pub vip_range: Ipv4Net,
    /// Berth's nftables table (its name and the bridge subnets needing hairpin masquerade).
    pub nft: NftConfig,
}

impl Default for IpvsConfig {
    fn default() -> Self {
        Self {
            scheduler: DEFAULT_SCHEDULER.into(),
            dummy: DEFAULT_DUMMY.into(),
            vip_range: DEFAULT_VIP_RANGE.parse().expect("valid default range"),
            nft: NftConfig::default(),
        }
    }
}

impl IpvsConfig {
    /// The nft script (one transaction, with the table's base script) adding the VIP set and
    /// the masquerade chain, and emptying the nftables balancer's maps so that, after a
    /// switch from `--lb-backend nftables`, no stale slot element DNATs a VIP before IPVS sees
    /// it. Idempotent; keeps the set's elements.
    pub fn nft_script(&self) -> String {
        let t = &self.nft.table;
        let mut s = self.nft.base_script();
        let _ = writeln!(s, "add set ip {t} {VIP_SET} {{ type ipv4_addr ; }}");
        let _ = writeln!(
            s,
            "add chain ip {t} {MASQ_CHAIN} {{ type nat hook postrouting priority 100 ; policy accept ; }}"
        );
        let _ = writeln!(s, "flush chain ip {t} {MASQ_CHAIN}");
        for net in &self.nft.hairpin_subnets {
            let _ = writeln!(
                s,
                "add rule ip {t} {MASQ_CHAIN} ct original ip daddr @{VIP_SET} ip saddr {net} ip daddr {net} masquerade"
            );
        }
        for p in ["tcp", "udp"] {
            let _ = writeln!(s, "flush map ip {t} lb_{p}");
        }
        s
    }

    /// The nft script removing the set and the chain (the table stays: port mappings).
    pub fn nft_teardown_script(&self) -> String {
        let t = &self.nft.table;
        format!(
            "add table ip {t}\nadd set ip {t} {VIP_SET} {{ type ipv4_addr ; }}\n\
             add chain ip {t} {MASQ_CHAIN}\ndelete chain ip {t} {MASQ_CHAIN}\n\
             delete set ip {t} {VIP_SET}\n"
        )
    }
}

/// A service as applied: scheduler and destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    scheduler: String,
    dests: BTreeMap<Backend, IpvsDest>,
}

/// The IPVS load balancer (see the module docs).
pub struct IpvsBalancer {
    exec: Arc<dyn IpvsExec>,
    nft: Arc<dyn NftExec>,
    cfg: IpvsConfig,
    /// Services and dummy addresses as last applied (`None`: read the kernel next time).
    applied: Option<(BTreeMap<VipKey, Svc>, BTreeSet<Ipv4Addr>)>,
}

impl std::fmt::Debug for IpvsBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsBalancer")
            .field("cfg", &self.cfg)
            .field("applied_vips", &self.applied.as_ref().map(|a| a.0.len()))
            .finish()
    }
}

impl IpvsBalancer {
    /// A balancer over `exec` (IPVS, dummy link, sysctls) and `nft` (berth's table). Nothing
    /// is changed until [`VipBalancer::setup`] / [`VipBalancer::apply`].
    pub fn new(exec: Arc<dyn IpvsExec>, nft: Arc<dyn NftExec>, cfg: IpvsConfig) -> Self {
        Self {
            exec,
            nft,
            cfg,
            applied: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &IpvsConfig {
        &self.cfg
    }

    /// Whether a service at `addr` is berth's to manage.
    fn owned(&self, addr: Ipv4Addr, bound: &BTreeSet<Ipv4Addr>) -> bool {
        self.cfg.vip_range.contains(addr) || bound.contains(&addr)
    }

    /// Berth's services and the dummy link's addresses, read from the kernel.
    fn read_kernel(&self) -> Result<(BTreeMap<VipKey, Svc>, BTreeSet<Ipv4Addr>), IpvsError> {
        let bound: BTreeSet<Ipv4Addr> = self
            .exec
            .dummy_addrs(&self.cfg.dummy)?
            .into_iter()
            .collect();
        let mut services = BTreeMap::new();
        for svc in self.exec.services()? {
            if !self.owned(svc.key.addr, &bound) {
                continue;
            }
            let dests = self
                .exec
                .dests(&svc.key)?
                .into_iter()
                .map(|d| (d.backend, d))
                .collect();
            services.insert(
                svc.key,
                Svc {
                    scheduler: svc.scheduler,
                    dests,
                },
            );
        }
        Ok((services, bound))
    }

    fn set_elements(&self, verb: &str, addrs: &BTreeSet<Ipv4Addr>) -> String {
        if addrs.is_empty() {
            return String::new();
        }
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        format!(
            "{verb} element ip {} {VIP_SET} {{ {} }}\n",
            self.cfg.nft.table,
            list.join(", ")
        )
    }

    /// The diff-and-apply of `apply`; on error the caller forgets what was applied.
    fn reconcile(
        &self,
        desired: &LbState,
        current: &mut BTreeMap<VipKey, Svc>,
        bound: &mut BTreeSet<Ipv4Addr>,
        full: bool,
    ) -> Result<LbApplyStats, LbError> {
        let mut stats = LbApplyStats {
            full,
            ..LbApplyStats::default()
        };
        let want: BTreeMap<&VipKey, &BTreeSet<Backend>> =
            desired.vips.iter().filter(|(_, b)| !b.is_empty()).collect();
        let want_addrs: BTreeSet<Ipv4Addr> = want.keys().map(|k| k.addr).collect();
        let dummy = self.cfg.dummy.as_str();

        // 1. New VIP addresses: bound to the dummy link and in the masquerade set first.
        let new_addrs: BTreeSet<Ipv4Addr> = want_addrs.difference(bound).copied().collect();
        for addr in &new_addrs {
            self.exec.add_dummy_addr(dummy, *addr)?;
            bound.insert(*addr);
        }
        let script = if full {
            format!(
                "flush set ip {} {VIP_SET}\n{}",
                self.cfg.nft.table,
                self.set_elements("add", &want_addrs)
            )
        } else {
            self.set_elements("add", &new_addrs)
        };
        if !script.is_empty() {
            self.nft.run(&script)?;
        }

        // 2. Services and destinations.
        for (key, svc) in current.clone() {
            let keep = want.contains_key(&key) && svc.scheduler == self.cfg.scheduler;
            if !keep {
                self.exec.del_service(&key)?;
                current.remove(&key);
                stats.deleted += 1;
            }
        }
        for (key, backends) in &want {
            let svc = match current.get_mut(*key) {
                Some(svc) => svc,
                None => {
                    let service = IpvsService {
                        key: **key,
                        scheduler: self.cfg.scheduler.clone(),
                    };
                    self.exec.add_service(&service)?;
                    stats.added += 1;
                    current.entry(**key).or_insert(Svc {
                        scheduler: service.scheduler,
                        dests: BTreeMap::new(),
                    })
                }
            };
            // A destination of ours is masquerading with weight 1; anything else is redone.
            let wrong: Vec<Backend> = svc
                .dests
                .values()
                .filter(|d| !backends.contains(&d.backend) || *d != &IpvsDest::masq(d.backend))
                .map(|d| d.backend)
                .collect();
            for b in backends.iter() {
                if svc.dests.get(b) == Some(&IpvsDest::masq(*b)) {
                    continue;
                }
                if svc.dests.contains_key(b) {
                    self.exec.del_dest(key, b)?;
                    svc.dests.remove(b);
                    stats.deleted += 1;
                }
                self.exec.add_dest(key, &IpvsDest::masq(*b))?;
                svc.dests.insert(*b, IpvsDest::masq(*b));
                stats.added += 1;
            }
            for b in wrong.iter().filter(|b| !backends.contains(b)) {
                self.exec.del_dest(key, b)?;
                svc.dests.remove(b);
                stats.deleted += 1;
            }
        }

        // 3. Addresses no VIP uses any more: unbound, out of the set.
        let stale: BTreeSet<Ipv4Addr> = bound.difference(&want_addrs).copied().collect();
        for addr in &stale {
            self.exec.del_dummy_addr(dummy, *addr)?;
            bound.remove(addr);
        }
        if !full {
            let script = self.set_elements("delete", &stale);
            if !script.is_empty() {
                self.nft.run(&script)?;
            }
        }
        Ok(stats)
    }
}

impl VipBalancer for IpvsBalancer {
    fn backend(&self) -> LbBackend {
        LbBackend::Ipvs
    }

    /// The nft set and chain (with the table), the dummy link, the sysctls.
    fn setup(&mut self) -> Result<(), LbError> {
        self.nft.run(&self.cfg.nft_script())?;
        self.exec.ensure_dummy(&self.cfg.dummy)?;
        for (key, value) in SYSCTLS {
            self.exec.set_sysctl(key, value)?;
        }
        self.applied = None;
        tracing::info!(dummy = %self.cfg.dummy, scheduler = %self.cfg.scheduler,
            range = %self.cfg.vip_range, "IPVS load balancer ready");
        Ok(())
    }

    fn apply(&mut self, desired: &LbState) -> Result<LbApplyStats, LbError> {
        let (full, (mut current, mut bound)) = match self.applied.take() {
            Some(applied) => (false, applied),
            None => (true, self.read_kernel()?),
        };
        // On error `applied` stays `None`: the next apply reads the kernel again.
        let stats = self.reconcile(desired, &mut current, &mut bound, full)?;
        if full || stats.added + stats.deleted > 0 {
            tracing::info!(
                full = stats.full,
                added = stats.added,
                deleted = stats.deleted,
                vips = current.len(),
                "IPVS load balancer applied"
            );
        }
        self.applied = Some((current, bound));
        Ok(stats)
    }

    fn invalidate(&mut self) {
        self.applied = None;
    }

    /// Deletes berth's services, the dummy link (and so its addresses), the set and the chain.
    fn teardown(&mut self) -> Result<(), LbError> {
        self.applied = None;
        let (services, _) = self.read_kernel()?;
        for key in services.keys() {
            self.exec.del_service(key)?;
        }
        self.exec.delete_dummy(&self.cfg.dummy)?;
        self.nft.run(&self.cfg.nft_teardown_script())?;
        Ok(())
    }
}
