//! Naming a network namespace and running code inside one.
//!
//! The agent knows a container's network namespace by its init pid (`/proc/PID/ns/net`), by a
//! bind-mounted path (`/run/netns/NAME`) or by an open fd. Code that must run inside a namespace
//! (opening a netlink socket there, writing a per-namespace sysctl, a test server) runs on a
//! fresh OS thread that `setns`es and exits afterwards, so no pooled thread is ever left in a
//! foreign namespace.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};

/// Errors of entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("open network namespace {path}: {source}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `setns(CLONE_NEWNET)` failed.
    #[error("setns into network namespace {ns}: {source}")]
    Setns {
        /// The namespace, as described by [`NetnsRef`]'s `Display`.
        ns: String,
        /// The errno.
        source: nix::Error,
    },
    /// Duplicating the namespace fd failed.
    #[error("dup network namespace fd of {ns}: {source}")]
    Dup {
        /// The namespace.
        ns: String,
        /// The error.
        source: std::io::Error,
    },
    /// The helper thread panicked.
    #[error("thread running in network namespace {0} panicked")]
    ThreadPanicked(String),
}

/// A network namespace, named the way the agent knows it.
#[derive(Debug)]
pub enum NetnsRef {
    /// A namespace file: `/run/netns/NAME`, `/proc/PID/ns/net`, a bind mount.
    Path(PathBuf),
    /// The namespace of a process (`/proc/PID/ns/net`).
    Pid(u32),
    /// An open namespace fd.
    Fd(OwnedFd),
}

impl std::fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetnsRef::Path(p) => write!(f, "{}", p.display()),
            NetnsRef::Pid(pid) => write!(f, "/proc/{pid}/ns/net"),
            NetnsRef::Fd(fd) => write!(f, "fd {fd:?}"),
        }
    }
}

impl NetnsRef {
    /// A namespace created by `ip netns add NAME` (`/run/netns/NAME`).
    pub fn named(name: &str) -> Self {
        NetnsRef::Path(PathBuf::from("/run/netns").join(name))
    }

    /// Opens the namespace: an fd usable with `setns` or `IFLA_NET_NS_FD`.
    pub fn open(&self) -> Result<OwnedFd, NetnsError> {
        let path = match self {
            NetnsRef::Path(p) => p.clone(),
            NetnsRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            NetnsRef::Fd(fd) => {
                return fd.try_clone().map_err(|source| NetnsError::Dup {
                    ns: self.to_string(),
                    source,
                });
            }
        };
        File::open(&path)
            .map(OwnedFd::from)
            .map_err(|source| NetnsError::Open { path, source })
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result. The thread
    /// exits afterwards, so the namespace switch never leaks to other code.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let fd = self.open()?;
        let ns = self.to_string();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Setns {
                        ns: ns.clone(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::ThreadPanicked(ns.clone()))?
        })
    }

    /// Spawns a long-running thread inside this namespace (a server, a probe); returns once the
    /// thread is in the namespace. The thread yields `None` only if `setns` failed, which is
    /// reported here as the error instead.
    pub fn spawn<T, F>(&self, f: F) -> Result<std::thread::JoinHandle<Option<T>>, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let fd = self.open()?;
        let ns = self.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            if let Err(source) = setns(fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                let _ = tx.send(Err(NetnsError::Setns { ns, source }));
                return None;
            }
            let _ = tx.send(Ok(()));
            Some(f())
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NetnsError::ThreadPanicked(self.to_string())),
        }
    }
}

/// Writes a sysctl of the namespace the calling thread is in, under `proc_sys_root`
/// (normally `/proc/sys`; a fixture directory in unit tests). `key` uses slashes
/// (`net/ipv4/ip_forward`).
pub fn write_sysctl(
    proc_sys_root: &std::path::Path,
    key: &str,
    value: &str,
) -> Result<(), std::io::Error> {
    std::fs::write(proc_sys_root.join(key), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_and_fails_to_open_missing_namespaces() {
        assert_eq!(NetnsRef::Pid(42).to_string(), "/proc/42/ns/net");
        assert_eq!(NetnsRef::named("x").to_string(), "/run/netns/x");
        let missing = NetnsRef::Path("/nonexistent/netns".into());
        let err = missing.run(|| ()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }

    #[test]
    fn sysctl_writes_under_the_given_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        write_sysctl(dir.path(), "net/ipv4/ip_forward", "1").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
    }
}
