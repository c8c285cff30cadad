//! IP address management: container addresses from a node subnet, and node subnets from the
//! overlay range (dev mode; cluster mode keeps the same leases in ZooKeeper).
//!
//! Leases are checkpointed in one JSON file under a root directory, written atomically (temp
//! file, fsync, rename, fsync of the directory) before an allocation is returned, so after a
//! crash at any instruction the file is either the old or the new lease set and an address that
//! was handed out is never handed out twice. Allocation rotates through the pool (next free after
//! the last one handed out) so a just-released address is not reused at once.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::addr::Ipv4Net;

/// Errors of IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Reading, writing or syncing the lease file failed.
    #[error("IPAM lease file {path}: {source}")]
    Io {
        /// The lease file or its directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The lease file is not valid JSON of the expected shape.
    #[error("IPAM lease file {path} is corrupt: {source}")]
    Corrupt {
        /// The lease file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The lease file belongs to a different pool than the one configured.
    #[error("IPAM lease file {path} holds leases of {found}, but {configured} is configured")]
    PoolChanged {
        /// The lease file.
        path: PathBuf,
        /// The pool in the file.
        found: Ipv4Net,
        /// The pool in the configuration.
        configured: Ipv4Net,
    },
    /// Every address (or subnet) of the pool is leased.
    #[error("IPAM pool {0} is exhausted")]
    Exhausted(Ipv4Net),
    /// Two configured networks overlap.
    #[error("network {a_name} ({a}) overlaps network {b_name} ({b})")]
    Overlap {
        /// Name of the first network.
        a_name: String,
        /// The first network.
        a: Ipv4Net,
        /// Name of the second network.
        b_name: String,
        /// The second network.
        b: Ipv4Net,
    },
    /// The requested subnet size does not fit in the pool.
    #[error("cannot split {pool} into /{prefix} subnets")]
    BadSubnetSize {
        /// The pool.
        pool: Ipv4Net,
        /// The requested prefix length.
        prefix: u8,
    },
}

/// Checks that no two of the named networks overlap (node subnet, overlay range, VIP range,
/// bridge subnet...). Returns the first overlapping pair as [`IpamError::Overlap`].
pub fn check_disjoint(nets: &[(&str, Ipv4Net)]) -> Result<(), IpamError> {
    for (i, (a_name, a)) in nets.iter().enumerate() {
        for (b_name, b) in &nets[i + 1..] {
            if a.overlaps(b) {
                return Err(IpamError::Overlap {
                    a_name: a_name.to_string(),
                    a: *a,
                    b_name: b_name.to_string(),
                    b: *b,
                });
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct LeaseFile {
    pool: Ipv4Net,
    /// Prefix length of one lease (32 for addresses, 24 for node subnets).
    lease_prefix: u8,
    /// Index (within the pool) of the last lease handed out, for rotation.
    last: u64,
    leases: BTreeMap<String, u64>,
}

/// A checkpointed set of leases of indices `[first, last]` of a pool, keyed by owner.
#[derive(Debug)]
struct LeaseBook {
    path: PathBuf,
    first: u64,
    last_valid: u64,
    file: LeaseFile,
}

impl LeaseBook {
    fn open(
        path: PathBuf,
        pool: Ipv4Net,
        lease_prefix: u8,
        first: u64,
        last_valid: u64,
    ) -> Result<Self, IpamError> {
        let file = match fs::read(&path) {
            Ok(bytes) => {
                let file: LeaseFile =
                    serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if file.pool != pool || file.lease_prefix != lease_prefix {
                    return Err(IpamError::PoolChanged {
                        path,
                        found: file.pool,
                        configured: pool,
                    });
                }
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LeaseFile {
                pool,
                lease_prefix,
                last: last_valid,
                leases: BTreeMap::new(),
            },
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        Ok(Self {
            path,
            first,
            last_valid,
            file,
        })
    }

    fn allocate(&mut self, owner: &str) -> Result<u64, IpamError> {
        if let Some(&i) = self.file.leases.get(owner) {
            return Ok(i);
        }
        let used: std::collections::BTreeSet<u64> = self.file.leases.values().copied().collect();
        let span = self.last_valid - self.first + 1;
        let start = self.file.last.clamp(self.first, self.last_valid) - self.first;
        let free = (1..=span)
            .map(|k| self.first + (start + k) % span)
            .find(|i| !used.contains(i))
            .ok_or(IpamError::Exhausted(self.file.pool))?;
        let mut next = self.file.clone();
        next.leases.insert(owner.to_string(), free);
        next.last = free;
        self.checkpoint(&next)?;
        self.file = next;
        Ok(free)
    }

    fn release(&mut self, owner: &str) -> Result<Option<u64>, IpamError> {
        let Some(&i) = self.file.leases.get(owner) else {
            return Ok(None);
        };
        let mut next = self.file.clone();
        next.leases.remove(owner);
        self.checkpoint(&next)?;
        self.file = next;
        Ok(Some(i))
    }

    fn checkpoint(&self, file: &LeaseFile) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(file).expect("lease file serialises");
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &self.path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

/// Container addresses from one node subnet. The network address, the gateway (`.1`) and the
/// broadcast address are never handed out.
#[derive(Debug)]
pub struct Ipam {
    subnet: Ipv4Net,
    book: LeaseBook,
}

impl Ipam {
    /// File name of the lease checkpoint under the root directory.
    pub const LEASE_FILE: &'static str = "ip-leases.json";

    /// Opens (or starts) the leases of `subnet` checkpointed in `root/ip-leases.json`; leases
    /// from a previous run are restored. A file of a different subnet is an error, not a reset.
    pub fn open(root: &Path, subnet: Ipv4Net) -> Result<Self, IpamError> {
        if subnet.prefix() > 30 {
            return Err(IpamError::BadSubnetSize {
                pool: subnet,
                prefix: subnet.prefix(),
            });
        }
        let path = root.join(Self::LEASE_FILE);
        let book = LeaseBook::open(path, subnet, 32, 2, subnet.size() - 2)?;
        Ok(Self { subnet, book })
    }

    /// The subnet addresses come from.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway address (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    /// Leases an address to `owner` (a container id) and checkpoints it before returning.
    /// Idempotent: an owner that already holds a lease gets the same address.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let i = self.book.allocate(owner)?;
        let ip = self.subnet.nth(i).expect("lease index inside the subnet");
        tracing::debug!(owner, %ip, subnet = %self.subnet, "IPAM: leased address");
        Ok(ip)
    }

    /// Releases `owner`'s lease (container destroyed); returns the address it held, if any.
    pub fn release(&mut self, owner: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let ip = self.book.release(owner)?.and_then(|i| self.subnet.nth(i));
        if let Some(ip) = ip {
            tracing::debug!(owner, %ip, "IPAM: released address");
        }
        Ok(ip)
    }

    /// The current leases, owner → address.
    pub fn leases(&self) -> BTreeMap<String, Ipv4Addr> {
        self.book
            .file
            .leases
            .iter()
            .filter_map(|(o, &i)| Some((o.clone(), self.subnet.nth(i)?)))
            .collect()
    }
}

/// Node subnets (`/24` by default) from the overlay range, leased to node ids: the dev-mode
/// store of the per-agent subnet. A node that asks again gets the subnet it holds.
#[derive(Debug)]
pub struct SubnetPool {
    pool: Ipv4Net,
    prefix: u8,
    book: LeaseBook,
}

impl SubnetPool {
    /// File name of the lease checkpoint under the root directory.
    pub const LEASE_FILE: &'static str = "subnet-leases.json";

    /// Opens the subnet leases of `pool` split into `/prefix` subnets, checkpointed in
    /// `root/subnet-leases.json`. Subnet 0 (`9.0.0.0/24`) is never handed out.
    pub fn open(root: &Path, pool: Ipv4Net, prefix: u8) -> Result<Self, IpamError> {
        if prefix < pool.prefix() || prefix > 30 || prefix - pool.prefix() > 24 {
            return Err(IpamError::BadSubnetSize { pool, prefix });
        }
        let count = 1u64 << (prefix - pool.prefix());
        if count < 2 {
            return Err(IpamError::BadSubnetSize { pool, prefix });
        }
        let book = LeaseBook::open(root.join(Self::LEASE_FILE), pool, prefix, 1, count - 1)?;
        Ok(Self { pool, prefix, book })
    }

    /// Leases a subnet to `node` and checkpoints it; idempotent per node.
    pub fn allocate(&mut self, node: &str) -> Result<Ipv4Net, IpamError> {
        let i = self.book.allocate(node)?;
        Ok(self
            .pool
            .subnet(self.prefix, i)
            .expect("lease index inside the pool"))
    }

    /// Releases `node`'s subnet; returns it, if it held one.
    pub fn release(&mut self, node: &str) -> Result<Option<Ipv4Net>, IpamError> {
        Ok(self
            .book
            .release(node)?
            .and_then(|i| self.pool.subnet(self.prefix, i)))
    }

    /// The current leases, node → subnet.
    pub fn leases(&self) -> BTreeMap<String, Ipv4Net> {
        self.book
            .file
            .leases
            .iter()
            .filter_map(|(o, &i)| Some((o.clone(), self.pool.subnet(self.prefix, i)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_skipping_reserved_and_is_idempotent_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), net("9.0.1.0/24")).unwrap();
        let a = ipam.allocate("c1").unwrap();
        assert_eq!(a, Ipv4Addr::new(9, 0, 1, 2));
        assert_eq!(ipam.allocate("c1").unwrap(), a);
        assert_eq!(ipam.allocate("c2").unwrap(), Ipv4Addr::new(9, 0, 1, 3));
        assert_eq!(ipam.gateway(), Ipv4Addr::new(9, 0, 1, 1));
    }

    #[test]
    fn restart_restores_leases_without_double_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let mut ipam = Ipam::open(dir.path(), net("9.0.1.0/24")).unwrap();
            (ipam.allocate("c1").unwrap(), ipam.allocate("c2").unwrap())
        };
        let mut ipam = Ipam::open(dir.path(), net("9.0.1.0/24")).unwrap();
        assert_eq!(ipam.leases().len(), 2);
        assert_eq!(ipam.allocate("c1").unwrap(), a);
        let c = ipam.allocate("c3").unwrap();
        assert!(c != a && c != b);
        assert_eq!(ipam.release("c2").unwrap(), Some(b));
        assert_eq!(ipam.release("c2").unwrap(), None);
        // Rotation: the released address is not the next one handed out.
        assert_ne!(ipam.allocate("c4").unwrap(), b);
        let ipam = Ipam::open(dir.path(), net("9.0.1.0/24")).unwrap();
        assert!(!ipam.leases().contains_key("c2"));
        assert!(!dir.path().join("ip-leases.json.tmp").exists());
    }

    #[test]
    fn exhaustion_and_reuse_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), net("9.0.1.0/29")).unwrap();
        // /29: .0 network, .1 gateway, .7 broadcast → .2 .. .6
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}")).unwrap())
            .collect();
        assert_eq!(got.last(), Some(&Ipv4Addr::new(9, 0, 1, 6)));
        assert!(matches!(ipam.allocate("c5"), Err(IpamError::Exhausted(_))));
        ipam.release("c2").unwrap();
        assert_eq!(ipam.allocate("c5").unwrap(), Ipv4Addr::new(9, 0, 1, 4));
    }

    #[test]
    fn other_subnet_in_file_and_corrupt_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        Ipam::open(dir.path(), net("9.0.1.0/24"))
            .unwrap()
            .allocate("c1")
            .unwrap();
        let err = Ipam::open(dir.path(), net("9.0.2.0/24")).unwrap_err();
        assert!(matches!(err, IpamError::PoolChanged { .. }), "{err}");
        fs::write(dir.path().join(Ipam::LEASE_FILE), b"{not json").unwrap();
        assert!(matches!(
            Ipam::open(dir.path(), net("9.0.1.0/24")),
            Err(IpamError::Corrupt { .. })
        ));
    }

    #[test]
    fn subnet_pool_leases_node_subnets() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = SubnetPool::open(dir.path(), net("9.0.0.0/8"), 24).unwrap();
        let a = pool.allocate("agent-a").unwrap();
        let b = pool.allocate("agent-b").unwrap();
        assert_eq!(a, net("9.0.1.0/24"));
        assert_eq!(b, net("9.0.2.0/24"));
        drop(pool);
        let mut pool = SubnetPool::open(dir.path(), net("9.0.0.0/8"), 24).unwrap();
        assert_eq!(pool.allocate("agent-a").unwrap(), a);
        assert_eq!(pool.release("agent-b").unwrap(), Some(b));
        assert!(matches!(
            SubnetPool::open(dir.path(), net("9.0.0.0/8"), 4),
            Err(IpamError::BadSubnetSize { .. })
        ));
    }

    #[test]
    fn overlapping_networks_are_a_clear_error() {
        let ok = [("overlay", net("9.0.0.0/8")), ("vips", net("11.0.0.0/8"))];
        check_disjoint(&ok).unwrap();
        let bad = [("overlay", net("9.0.0.0/8")), ("bridge", net("9.0.5.0/24"))];
        let err = check_disjoint(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network overlay (9.0.0.0/8) overlaps network bridge (9.0.5.0/24)"
        );
    }
}
