//! Overlay membership kept by the master (`berth agent --dev`, and `berth master` without
//! ZooKeeper membership): each node leases a subnet of the overlay pool for its VTEP address and
//! renews the lease well within `lease_timeout`; a lease not renewed in time expires and the node
//! disappears from the members, exactly as its EPHEMERAL znode would in ZooKeeper mode.
//!
//! The state is soft: a master that starts leading (after a failover or a restart) knows no
//! leases, and the nodes re-lease the subnets they hold on their next renewal. For one lease
//! timeout after it starts leading, the registry grants only the subnet a node asks for (its own)
//! and answers "recovering" to requests for new ones, so a joining node can never be handed a
//! subnet whose holder has not come back yet (Mesos masters have the same window for agents to
//! re-register).
//!
//! HTTP (served by the master, redirected to the leader by the others):
//! `POST /overlay/v1/lease` `{"vtep_ip", "hostname", "subnet"?}` → [`LeaseGrant`] (200), 503 with
//! `Retry-After` while recovering, 409 when the pool is exhausted, 400 for a malformed request;
//! `GET /overlay/v1/members?after=V` → [`MembersView`], held up to 10 s until the version
//! differs from V.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::Mutex,
    time::{Duration, Instant},
};

use berth_net::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::info;

/// The default time a lease lasts without renewal (the ZooKeeper mode's session timeout).
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the registry hands out subnets.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The overlay range node subnets come from.
    pub pool: Ipv4Net,
    /// Node subnet prefix length.
    pub prefix: u8,
    /// How long a lease lasts without renewal.
    pub lease_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            pool: "9.0.0.0/8".parse().expect("valid pool"),
            prefix: 24,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
        }
    }
}

/// Errors of lease requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// The master started leading less than a lease timeout ago: only held subnets are renewed.
    #[error("the master is recovering overlay leases for {retry_after:?}: retry then")]
    Recovering {
        /// When to retry.
        retry_after: Duration,
    },
    /// Every subnet of the pool is held.
    #[error("no free overlay subnet in {pool} (/{prefix} subnets)")]
    PoolExhausted {
        /// The pool.
        pool: Ipv4Net,
        /// The subnet prefix.
        prefix: u8,
    },
    /// The request is malformed.
    #[error("bad overlay lease request: {0}")]
    BadRequest(String),
}

/// A lease request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The node's VTEP (underlay) address: the lease's owner.
    pub vtep_ip: Ipv4Addr,
    /// The node's hostname (shown only).
    #[serde(default)]
    pub hostname: String,
    /// The subnet the node holds or held before (a renewal, or a node coming back).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
}

/// A member of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its VTEP address.
    pub vtep_ip: Ipv4Addr,
    /// Its hostname.
    pub hostname: String,
}

/// The members and the version of that list (bumped on every change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersView {
    /// Version.
    pub version: u64,
    /// Members, by subnet.
    pub members: Vec<MemberView>,
    /// The master is within its recovery window: members that have not re-leased yet are
    /// missing from the list, so followers keep the ones they knew.
    #[serde(default)]
    pub recovering: bool,
}

/// A granted (or renewed) lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The subnet.
    pub subnet: Ipv4Net,
    /// How long it lasts without renewal, ms.
    pub lease_timeout_ms: u64,
    /// The members after the grant.
    pub members: MembersView,
}

#[derive(Debug)]
struct Lease {
    vtep_ip: Ipv4Addr,
    hostname: String,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    leases: BTreeMap<Ipv4Net, Lease>,
    version: u64,
    recovering_until: Option<Instant>,
}

/// The master's overlay leases.
#[derive(Debug)]
pub struct OverlayRegistry {
    config: RegistryConfig,
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl OverlayRegistry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
            version: watch::channel(0).0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The master starts leading at `now`: forget every lease and grant only held subnets for
    /// one lease timeout.
    pub fn start_leading(&self, now: Instant) {
        let mut inner = self.inner.lock().expect("registry lock");
        inner.leases.clear();
        inner.recovering_until = Some(now + self.config.lease_timeout);
        self.bump(&mut inner);
    }

    /// Grants or renews a lease for `request.vtep_ip`.
    pub fn lease(&self, request: &LeaseRequest, now: Instant) -> Result<LeaseGrant, RegistryError> {
        let config = &self.config;
        if request.vtep_ip.is_unspecified() || request.vtep_ip.is_loopback() {
            return Err(RegistryError::BadRequest(format!(
                "vtep_ip {} is not a usable underlay address",
                request.vtep_ip
            )));
        }
        if let Some(subnet) = request.subnet
            && (subnet.prefix() != config.prefix || !config.pool.contains_net(&subnet))
        {
            return Err(RegistryError::BadRequest(format!(
                "subnet {subnet} is not a /{} of the pool {}",
                config.prefix, config.pool
            )));
        }
        let mut inner = self.inner.lock().expect("registry lock");
        self.expire_locked(&mut inner, now);
        let expires = now + config.lease_timeout;
        // A renewal, or a node that comes back while its lease still runs: its own subnet.
        let held = inner
            .leases
            .iter()
            .find(|(_, lease)| lease.vtep_ip == request.vtep_ip)
            .map(|(subnet, _)| *subnet);
        let granted = match (held, request.subnet) {
            (Some(subnet), _) => {
                let lease = inner.leases.get_mut(&subnet).expect("held lease");
                lease.expires = expires;
                lease.hostname.clone_from(&request.hostname);
                subnet
            }
            (None, Some(wanted)) if !inner.leases.contains_key(&wanted) => {
                self.insert(&mut inner, wanted, request, expires);
                wanted
            }
            _ => {
                if let Some(until) = inner.recovering_until.filter(|until| now < *until) {
                    return Err(RegistryError::Recovering {
                        retry_after: until - now,
                    });
                }
                let free = crate::overlay::subnet_candidates(
                    config.pool,
                    config.prefix,
                    None,
                    request.vtep_ip,
                )
                .into_iter()
                .find(|subnet| !inner.leases.contains_key(subnet))
                .ok_or(RegistryError::PoolExhausted {
                    pool: config.pool,
                    prefix: config.prefix,
                })?;
                self.insert(&mut inner, free, request, expires);
                free
            }
        };
        Ok(LeaseGrant {
            subnet: granted,
            lease_timeout_ms: config.lease_timeout.as_millis() as u64,
            members: Self::view(&inner, now),
        })
    }

    fn insert(&self, inner: &mut Inner, subnet: Ipv4Net, request: &LeaseRequest, expires: Instant) {
        info!(%subnet, vtep = %request.vtep_ip, hostname = request.hostname, "overlay subnet leased");
        inner.leases.insert(
            subnet,
            Lease {
                vtep_ip: request.vtep_ip,
                hostname: request.hostname.clone(),
                expires,
            },
        );
        self.bump(inner);
    }

    /// Removes the leases that ran out by `now`.
    pub fn expire(&self, now: Instant) {
        let mut inner = self.inner.lock().expect("registry lock");
        self.expire_locked(&mut inner, now);
    }

    fn expire_locked(&self, inner: &mut Inner, now: Instant) {
        let before = inner.leases.len();
        inner.leases.retain(|subnet, lease| {
            let keep = lease.expires > now;
            if !keep {
                info!(%subnet, vtep = %lease.vtep_ip, "overlay lease expired");
            }
            keep
        });
        if inner.leases.len() != before {
            self.bump(inner);
        }
    }

    fn bump(&self, inner: &mut Inner) {
        inner.version += 1;
        self.version.send_replace(inner.version);
    }

    fn view(inner: &Inner, now: Instant) -> MembersView {
        MembersView {
            recovering: inner.recovering_until.is_some_and(|until| now < until),
            version: inner.version,
            members: inner
                .leases
                .iter()
                .map(|(subnet, lease)| MemberView {
                    subnet: *subnet,
                    vtep_ip: lease.vtep_ip,
                    hostname: lease.hostname.clone(),
                })
                .collect(),
        }
    }

    /// The current members.
    pub fn members(&self) -> MembersView {
        Self::view(&self.inner.lock().expect("registry lock"), Instant::now())
    }

    /// The members once their version differs from `after`, or after `wait` (whichever first).
    pub async fn members_after(&self, after: u64, wait: Duration) -> MembersView {
        let mut version = self.version.subscribe();
        let _ = tokio::time::timeout(wait, version.wait_for(|v| *v != after)).await;
        self.members()
    }

    /// Expires leases every 250 ms until the registry is dropped elsewhere (holds a weak ref).
    pub fn spawn_expiry(self: &std::sync::Arc<Self>) {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                registry.expire(Instant::now());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> OverlayRegistry {
        OverlayRegistry::new(RegistryConfig {
            pool: "9.0.0.0/16".parse().unwrap(),
            prefix: 24,
            lease_timeout: Duration::from_secs(10),
        })
    }

    fn request(vtep: &str, subnet: Option<&str>) -> LeaseRequest {
        LeaseRequest {
            vtep_ip: vtep.parse().unwrap(),
            hostname: format!("node-{vtep}"),
            subnet: subnet.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn nodes_get_distinct_subnets_and_renewals_keep_them() {
        let r = registry();
        let t0 = Instant::now();
        let a = r.lease(&request("10.0.0.1", None), t0).unwrap();
        let b = r.lease(&request("10.0.0.2", None), t0).unwrap();
        assert_ne!(a.subnet, b.subnet);
        assert_eq!(b.members.members.len(), 2);
        // Renewal without naming the subnet, and naming another one: the held one either way.
        let again = r.lease(&request("10.0.0.1", None), t0).unwrap();
        assert_eq!(again.subnet, a.subnet);
        let other = r
            .lease(&request("10.0.0.1", Some("9.0.200.0/24")), t0)
            .unwrap();
        assert_eq!(other.subnet, a.subnet);
        assert_eq!(r.members().members.len(), 2);
    }

    #[test]
    fn a_lease_not_renewed_expires_and_the_node_gets_its_subnet_back_if_free() {
        let r = registry();
        let t0 = Instant::now();
        let a = r.lease(&request("10.0.0.1", None), t0).unwrap();
        let v = r.members().version;
        r.expire(t0 + Duration::from_secs(5));
        assert_eq!(r.members().members.len(), 1, "still within the timeout");
        r.expire(t0 + Duration::from_secs(11));
        assert!(r.members().members.is_empty());
        assert!(r.members().version > v, "expiry bumps the version");
        let back = r
            .lease(
                &request("10.0.0.1", Some(&a.subnet.to_string())),
                t0 + Duration::from_secs(12),
            )
            .unwrap();
        assert_eq!(back.subnet, a.subnet);
    }

    #[test]
    fn a_subnet_held_by_another_node_is_not_handed_out() {
        let r = registry();
        let t0 = Instant::now();
        let a = r.lease(&request("10.0.0.1", None), t0).unwrap();
        let b = r
            .lease(&request("10.0.0.2", Some(&a.subnet.to_string())), t0)
            .unwrap();
        assert_ne!(b.subnet, a.subnet);
    }

    #[test]
    fn a_new_leader_renews_held_subnets_but_grants_no_new_ones_for_a_lease_timeout() {
        let r = registry();
        let t0 = Instant::now();
        r.start_leading(t0);
        let back = r
            .lease(&request("10.0.0.1", Some("9.0.7.0/24")), t0)
            .unwrap();
        assert_eq!(back.subnet.to_string(), "9.0.7.0/24");
        let err = r
            .lease(&request("10.0.0.2", None), t0 + Duration::from_secs(3))
            .unwrap_err();
        assert_eq!(
            err,
            RegistryError::Recovering {
                retry_after: Duration::from_secs(7)
            }
        );
        let later = r
            .lease(&request("10.0.0.2", None), t0 + Duration::from_secs(10))
            .unwrap();
        assert_ne!(later.subnet, back.subnet);
    }

    #[test]
    fn bad_requests_and_exhaustion_are_refused_with_reasons() {
        let r = OverlayRegistry::new(RegistryConfig {
            pool: "9.0.0.0/23".parse().unwrap(),
            prefix: 24,
            lease_timeout: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        let err = r
            .lease(&request("10.0.0.1", Some("10.1.0.0/24")), t0)
            .unwrap_err();
        assert!(err.to_string().contains("not a /24 of the pool"), "{err}");
        let err = r.lease(&request("127.0.0.1", None), t0).unwrap_err();
        assert!(err.to_string().contains("vtep_ip"), "{err}");
        // The pool's first /24 is never handed out: one subnet only.
        r.lease(&request("10.0.0.1", None), t0).unwrap();
        let err = r.lease(&request("10.0.0.2", None), t0).unwrap_err();
        assert!(matches!(err, RegistryError::PoolExhausted { .. }), "{err}");
    }

    #[tokio::test]
    async fn members_after_returns_on_a_change() {
        let r = std::sync::Arc::new(registry());
        let v = r.members().version;
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.members_after(v, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        r.lease(&request("10.0.0.1", None), Instant::now()).unwrap();
        let view = waiter.await.unwrap();
        assert_eq!(view.members.len(), 1);
        assert!(view.version > v);
    }
}
