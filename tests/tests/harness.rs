//! Self-tests of the harness library (no berth binary needed).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use berth_tests::{
    CgroupVersion, cgroup_version, http_request, own_cgroup_dirs, privilege_problem,
};

#[test]
fn cgroup_harness_finds_own_cgroups() {
    let dirs = own_cgroup_dirs();
    assert!(!dirs.is_empty(), "no cgroup hierarchy found");
    for d in &dirs {
        assert!(d.is_dir(), "{} is not a directory", d.display());
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).expect("cgroup.procs");
        let me = std::process::id().to_string();
        assert!(
            procs.lines().any(|l| l == me),
            "this process is not in {}",
            d.display()
        );
    }
    match cgroup_version() {
        CgroupVersion::V2 => assert!(dirs.iter().all(|d| d.starts_with("/sys/fs/cgroup"))),
        CgroupVersion::V1 => assert!(
            dirs.len() > 1,
            "v1 should have several hierarchies: {dirs:?}"
        ),
    }
}

#[test]
fn cgroup_harness_privileges_are_available() {
    // CI runs as root with writable cgroups; this documents why agent tests would fail otherwise
    if std::env::var("BERTH_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        return;
    }
    assert_eq!(privilege_problem(), None);
}

#[test]
fn harness_http_client_handles_chunked_and_length() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for resp in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_string(),
            "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbad \r\n7\r\nrequest\r\n0\r\n\r\n"
                .to_string(),
        ] {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(resp.as_bytes()).unwrap();
        }
    });
    let t = Duration::from_secs(5);
    let r = http_request(addr, "GET", "/health", None, b"", t).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello"));
    let r = http_request(addr, "POST", "/x", Some("application/json"), b"{", t).unwrap();
    assert_eq!((r.status, r.body.as_str()), (400, "bad request"));
    server.join().unwrap();
}

/// The guard really sees leftovers: a SIGKILLed agent leaves its running container (shim process,
/// cgroups) behind; `leftovers()` reports them and `force_cleanup()` removes them.
#[test]
fn cgroup_harness_detects_leftovers_of_a_killed_agent() {
    let Some(mut agent) = berth_tests::Agent::start_or_skip() else {
        return;
    };
    let id = agent.run_detached(&["--name", "orphan", "--", "sleep", "300"]);
    let paths = berth_tests::container_cgroup_paths(&agent.inspect(&id));
    agent.kill_hard();
    let found = agent.leftovers();
    agent.force_cleanup();
    let after = agent.leftovers();
    agent.disarm();
    assert!(
        found.iter().any(|l| l.starts_with("cgroup left behind")),
        "a killed agent's container cgroups were not reported: {found:?}"
    );
    assert!(
        paths.iter().all(|p| !p.exists()),
        "force_cleanup left {paths:?}"
    );
    assert!(after.is_empty(), "force_cleanup left: {after:?}");
}
