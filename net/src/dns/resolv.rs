//! The node's resolvers, read from `resolv.conf` text (resolv.conf(5)): the upstreams berth's
//! DNS server forwards to.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::path::Path;

use crate::dns::DnsError;

/// What a `resolv.conf` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines in order, port 53 (IPv6 with a numeric `%scope` keep it).
    pub nameservers: Vec<SocketAddr>,
    /// The search list (the last `search` or `domain` line wins, as in glibc).
    pub search: Vec<String>,
    /// `options` tokens, in order.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses `resolv.conf` text. Lines starting with `#` or `;` are comments, as is anything
    /// after a `#`/`;` on a line; unparsable nameserver addresses are skipped (logged). Pure.
    pub fn parse(text: &str) -> Self {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(key) = words.next() else {
                continue;
            };
            match key {
                "nameserver" => {
                    if let Some(addr) = words.next() {
                        match parse_nameserver(addr) {
                            Some(sa) => out.nameservers.push(sa),
                            None => tracing::warn!(
                                nameserver = addr,
                                "resolv.conf nameserver is not an IP address (or has a named scope): skipped"
                            ),
                        }
                    }
                }
                "search" => out.search = words.map(str::to_string).collect(),
                "domain" => out.search = words.next().map(str::to_string).into_iter().collect(),
                "options" => out.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        out
    }

    /// The nameservers to forward to; with `skip_loopback`, loopback addresses (stub
    /// resolvers such as systemd-resolved's 127.0.0.53, unreachable from a container's
    /// namespace) are left out.
    pub fn upstreams(&self, skip_loopback: bool) -> Vec<SocketAddr> {
        self.nameservers
            .iter()
            .copied()
            .filter(|sa| !(skip_loopback && sa.ip().is_loopback()))
            .collect()
    }
}

fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    if let Some((addr, scope)) = text.split_once('%') {
        let ip: std::net::Ipv6Addr = addr.parse().ok()?;
        let scope: u32 = scope.parse().ok()?;
        return Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)));
    }
    let ip: IpAddr = text.parse().ok()?;
    Some(SocketAddr::new(ip, 53))
}

/// The node's upstream resolvers: `<root>/etc/resolv.conf`, and when `skip_loopback` leaves
/// nothing from it (a systemd-resolved stub), `<root>/run/systemd/resolve/resolv.conf` (the
/// real servers behind the stub). `root` is `/` outside tests.
pub fn host_upstreams(root: &Path, skip_loopback: bool) -> Result<Vec<SocketAddr>, DnsError> {
    let read = |rel: &str| {
        let path = root.join(rel);
        std::fs::read_to_string(&path).map_err(|source| DnsError::ReadResolvConf { path, source })
    };
    let main = ResolvConf::parse(&read("etc/resolv.conf")?).upstreams(skip_loopback);
    if !main.is_empty() || !skip_loopback {
        return Ok(main);
    }
    match read("run/systemd/resolve/resolv.conf") {
        Ok(text) => Ok(ResolvConf::parse(&text).upstreams(true)),
        Err(DnsError::ReadResolvConf { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers_search_options_and_comments() {
        let text = "# generated\n; also a comment\nnameserver 10.0.0.2\nnameserver  ::1 \n\
                    nameserver fe80::1%2\nnameserver fe80::1%eth0\nnameserver bogus\n\
                    nameserver 127.0.0.53 # stub\ndomain corp\nsearch a.example b.example\n\
                    options ndots:2 edns0\noptions rotate\nsortlist 1.2.3.4\n";
        let rc = ResolvConf::parse(text);
        assert_eq!(
            rc.nameservers,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
                "127.0.0.53:53".parse().unwrap(),
            ]
        );
        assert_eq!(rc.search, vec!["a.example", "b.example"]);
        assert_eq!(rc.options, vec!["ndots:2", "edns0", "rotate"]);
        assert_eq!(
            rc.upstreams(true),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        assert_eq!(rc.upstreams(false).len(), 4);
        assert_eq!(ResolvConf::parse("search x\ndomain y\n").search, vec!["y"]);
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
    }

    #[test]
    fn host_upstreams_falls_back_to_systemd_resolved_servers() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();
        // No systemd file: nothing, not an error.
        assert_eq!(host_upstreams(root.path(), true).unwrap(), vec![]);
        assert_eq!(
            host_upstreams(root.path(), false).unwrap(),
            vec!["127.0.0.53:53".parse().unwrap()]
        );
        std::fs::create_dir_all(root.path().join("run/systemd/resolve")).unwrap();
        std::fs::write(
            root.path().join("run/systemd/resolve/resolv.conf"),
            "nameserver 192.0.2.1\nnameserver 127.0.0.1\n",
        )
        .unwrap();
        assert_eq!(
            host_upstreams(root.path(), true).unwrap(),
            vec!["192.0.2.1:53".parse().unwrap()]
        );
        let empty = tempfile::tempdir().unwrap();
        let err = host_upstreams(empty.path(), true).unwrap_err();
        assert!(err.to_string().contains("etc/resolv.conf"), "{err}");
    }
}
