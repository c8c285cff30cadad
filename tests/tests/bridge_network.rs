//! `--network bridge` through the berth binary. The agent runs inside a network namespace this
//! test creates (so the node bridge, the veths and every packet stay in it): two tasks on the
//! node bridge get distinct addresses from the node subnet, the node reaches a task's server, a
//! task reaches the other's, and when the tasks end their veths and address leases are gone.
//! The `cgroup_` tests also run in the cgroup v2 microVM phase of tests/run.sh (the Debian kernel's
//! bridge, veth and nf_tables there).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use berth_tests::{Agent, netns::greeting_of, require_privileges, scaled};

const SERVER: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7000))\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'hello-from-a')\n  c.close()\n";

fn links_named_bv() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(": bv"))
        .map(str::to_string)
        .collect()
}

#[test]
fn cgroup_bridge_tasks_reach_each_other_and_the_node() {
    if !require_privileges() {
        return;
    }
    // Everything below runs in a thread inside the test's namespace: the agent (and so the
    // bridge and veths) is born there, and so are this thread's sockets.
    berth_tests::netns::in_new_netns("bridge", || {
        let agent = Agent::start();
        let a = agent.berth(&[
            "run",
            "-d",
            "--network",
            "bridge",
            "--name",
            "a",
            "-p",
            "18080:7000",
            "--",
            "python3",
            "-c",
            SERVER,
        ]);
        a.assert_success();
        let inspect = agent.berth(&["inspect", "a"]);
        inspect.assert_success();
        let ip_a = berth_tests::bridge_ip_of(&inspect.json()).expect("task a has a bridge address");
        let subnet_base = u32::from(Ipv4Addr::new(9, 0, 1, 0));
        assert_eq!(u32::from(ip_a) & 0xffff_ff00, subnet_base, "{ip_a}");
        // The node reaches the task's server over the bridge, and through the node port
        // mapped to it (DNAT of the node's own connections).
        assert_eq!(greeting_of(SocketAddrV4::new(ip_a, 7000)), "hello-from-a");
        let gateway = Ipv4Addr::new(9, 0, 1, 1);
        assert_eq!(
            greeting_of(SocketAddrV4::new(gateway, 18080)),
            "hello-from-a"
        );
        // And through 127.0.0.1 (relayed by the agent, which holds the node port).
        assert_eq!(
            greeting_of(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18080)),
            "hello-from-a"
        );
        assert!(
            std::net::TcpListener::bind("0.0.0.0:18080").is_err(),
            "the mapped node port is held by the agent"
        );
        // A node port a node process already uses is refused, naming the port.
        let squatter = std::net::TcpListener::bind("0.0.0.0:18081").unwrap();
        let busy = agent.berth(&[
            "run",
            "--network",
            "bridge",
            "-p",
            "18081:7000",
            "--",
            "true",
        ]);
        assert!(!busy.success(), "{}", busy.stdout);
        let said = format!("{}{}", busy.stdout, busy.stderr);
        assert!(said.contains("18081") && said.contains("in use"), "{said}");
        drop(squatter);
        // `berth net ls` shows the subnet, the lease and the mapping.
        let ls = agent.berth(&["net", "ls"]);
        ls.assert_success();
        assert!(ls.stdout.contains("9.0.1.0/24"), "{}", ls.stdout);
        assert!(
            ls.stdout
                .contains(&format!("18080      tcp    {ip_a}:7000")),
            "{}",
            ls.stdout
        );
        // The node port is taken: a second task asking for it fails, naming it.
        let clash = agent.berth(&["run", "--network", "bridge", "-p", "18080:9", "--", "true"]);
        assert!(!clash.success(), "{}", clash.stdout);
        assert!(
            clash.stderr.contains("18080") || clash.stdout.contains("18080"),
            "the error names the port: {} {}",
            clash.stdout,
            clash.stderr
        );
        // Frameworks see the address where Mesos puts it: the TASK_RUNNING status's
        // container_status.network_infos.
        let state = agent.get("/state").json();
        let statuses = state.to_string();
        assert!(
            statuses.contains(&format!("\"ip_address\":\"{ip_a}\"")),
            "task a's status does not carry {ip_a}: {statuses}"
        );
        // Another bridge task reaches it too, from its own address.
        let client = format!(
            "import socket,fcntl\ns=socket.create_connection(('{ip_a}',7000),10)\nprint(s.recv(100).decode(), s.getsockname()[0])\n"
        );
        let b = agent.berth(&["run", "--network", "bridge", "--", "python3", "-c", &client]);
        b.assert_success();
        let stdout = b.stdout.trim().to_string();
        assert!(stdout.starts_with("hello-from-a "), "{stdout}");
        let ip_b: Ipv4Addr = stdout.rsplit(' ').next().unwrap().parse().unwrap();
        assert_ne!(ip_a, ip_b);
        assert_eq!(u32::from(ip_b) & 0xffff_ff00, subnet_base, "{ip_b}");
        // Hairpin: a bridge task reaches a through the node port.
        let hairpin = client.replace(&format!("('{ip_a}',7000)"), "('9.0.1.1',18080)");
        let c = agent.berth(&[
            "run",
            "--network",
            "bridge",
            "--",
            "python3",
            "-c",
            &hairpin,
        ]);
        c.assert_success();
        assert!(c.stdout.starts_with("hello-from-a "), "{}", c.stdout);
        // A task without --network bridge has no route to it.
        let none = agent.berth(&["run", "--", "python3", "-c", &client]);
        assert!(
            !none.success(),
            "a --network none task reached the bridge: {}",
            none.stdout
        );
        agent.berth(&["kill", "a"]).assert_success();
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        while !links_named_bv().is_empty() {
            assert!(
                Instant::now() < deadline,
                "veths left: {:?}",
                links_named_bv()
            );
            thread::sleep(Duration::from_millis(100));
        }
        let leases = std::fs::read_dir(agent.work_dir().join("meta/ipam"))
            .map(|dir| {
                dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        assert!(
            !leases.contains(&ip_a.to_string()),
            "lease of a kept: {leases}"
        );
        // Its node port is free again.
        let nft = Command::new("nft")
            .args(["list", "table", "ip", "berth"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&nft.stdout);
        assert!(!table.contains("18080"), "mapping of a kept: {table}");
        std::net::TcpListener::bind("0.0.0.0:18080").expect("the node port is let go");
        drop(agent);
    });
}

fn named_server(name: &str) -> String {
    berth_tests::netns::named_tcp_server(name, 80)
}

/// Starts three bridge tasks `<prefix>1..3` with `labels`, each running `server(its name)`.
fn start_backends(agent: &Agent, prefix: &str, labels: &[&str], server: fn(&str) -> String) {
    for n in 1..=3 {
        let name = format!("{prefix}{n}");
        let mut args = vec![
            "run",
            "-d",
            "--cpus",
            "0.1",
            "--mem",
            "48M",
            "--network",
            "bridge",
            "--name",
            &name,
        ];
        for label in labels {
            args.extend(["--label", label]);
        }
        let program = server(&name);
        args.extend(["--", "python3", "-c", &program]);
        agent.berth(&args).assert_success();
    }
}

fn vip_backends(agent: &Agent) -> Vec<String> {
    vip_backends_named(agent, "web.l4lb")
}

/// Starts three `/web:80` backends (`w1`..`w3`) on the bridge, waits until the VIP has them,
/// and checks that 300 connections from the node spread over them (each 20-45 %); returns the
/// VIP's address.
fn web_vip_spread(agent: &Agent) -> Ipv4Addr {
    start_backends(agent, "w", &["VIP_0=/web:80"], named_server);
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while vip_backends(agent).len() != 3 {
        assert!(
            Instant::now() < deadline,
            "VIP backends: {:?}",
            vip_backends(agent)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let vip = berth_net::lb::vip_address("web", "11.0.0.0/8".parse().unwrap());
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        let greeting = greeting_of(SocketAddrV4::new(vip, 80));
        *counts.entry(greeting).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, n) in &counts {
        assert!((60..=135).contains(n), "{name} got {n} of 300: {counts:?}");
    }
    vip
}

/// Kills backend `w1`: it leaves the VIP, and 100 new connections never reach it.
fn killed_backend_gets_no_new_connections(agent: &Agent, vip: Ipv4Addr) {
    let killed_at = Instant::now();
    agent.berth(&["kill", "w1"]).assert_success();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while vip_backends(agent).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "VIP backends: {:?}",
            vip_backends(agent)
        );
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "VIP: the killed backend left the VIP {:.0} ms after `berth kill` began",
        killed_at.elapsed().as_secs_f64() * 1000.0
    );
    for _ in 0..100 {
        let greeting = greeting_of(SocketAddrV4::new(vip, 80));
        assert_ne!(greeting, "w1", "a killed backend got a new connection");
    }
}

#[test]
fn cgroup_vip_spreads_connections_over_running_backends_and_resolves_in_dns() {
    if !require_privileges() {
        return;
    }
    berth_tests::netns::in_new_netns("vip", || {
        let agent = Agent::start_with(&["--network-services"]);
        let vip = web_vip_spread(&agent);
        // DNS from inside a container: the VIP's name, and a connection through it.
        let client = "import socket\nip=socket.gethostbyname('web.l4lb.berth.directory')\ns=socket.create_connection((ip,80),10)\nprint(ip, s.recv(100).decode())\n";
        let out = agent.berth(&[
            "run",
            "--cpus",
            "0.1",
            "--mem",
            "48M",
            "--network",
            "bridge",
            "--",
            "python3",
            "-c",
            client,
        ]);
        out.assert_success();
        let printed = out.stdout.trim().to_string();
        assert!(printed.starts_with(&format!("{vip} w")), "{printed}");
        killed_backend_gets_no_new_connections(&agent, vip);
        // A VIP label typo is reported (the task still runs; it is no backend).
        agent
            .berth(&[
                "run",
                "-d",
                "--cpus",
                "0.1",
                "--mem",
                "48M",
                "--network",
                "bridge",
                "--name",
                "typo",
                "--label",
                "VIP_0=web:80",
                "--",
                "sleep",
                "300",
            ])
            .assert_success();
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        loop {
            let ls = agent.berth(&["net", "ls"]);
            if ls.stdout.contains("VIP label error") && ls.stdout.contains("VIP_0") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no label error shown:\n{}",
                ls.stdout
            );
            thread::sleep(Duration::from_millis(100));
        }
        for name in ["w2", "w3", "typo"] {
            agent.berth(&["kill", name]).assert_success();
        }
        drop(agent);
    });
}

fn udp_named_server(name: &str) -> String {
    format!(
        "import socket\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nu.bind(('0.0.0.0',5353))\nwhile True:\n  d,a=u.recvfrom(512)\n  u.sendto(b'{name}',a)\n"
    )
}

/// Sends one datagram from `socket` to `vip` and returns the answer (retrying while the
/// backends start); None if nothing answers within `tries` attempts.
fn udp_ask(socket: &std::net::UdpSocket, vip: SocketAddrV4, tries: usize) -> Option<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..tries {
        socket.send_to(b"?", vip).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    None
}

fn vip_backends_named(agent: &Agent, name: &str) -> Vec<String> {
    let view = agent.berth(&["net", "ls", "--json"]).json();
    view["load_balancer"]["vips"]
        .as_object()
        .and_then(|vips| vips.iter().find(|(k, _)| k.contains(name)))
        .and_then(|(_, b)| b.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b.as_str().map(String::from))
        .collect()
}

/// A UDP VIP (`VIP_0_PROTOCOL=udp`): new flows spread over three backends; a flow pinned to a
/// backend (its conntrack entry) moves to another one as soon as that backend is killed, because
/// the load balancer flushes the removed backend's UDP conntrack entries.
#[test]
fn udp_vip_spreads_flows_and_moves_a_flow_off_a_killed_backend() {
    if !require_privileges() {
        return;
    }
    berth_tests::netns::in_new_netns("udpvip", || {
        let agent = Agent::start_with(&["--network-services"]);
        start_backends(
            &agent,
            "u",
            &["VIP_0=/dnsu:5353", "VIP_0_PROTOCOL=udp"],
            udp_named_server,
        );
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        while vip_backends_named(&agent, "dnsu.l4lb").len() != 3 {
            assert!(
                Instant::now() < deadline,
                "UDP VIP backends never reached 3"
            );
            thread::sleep(Duration::from_millis(100));
        }
        let key = vip_backends_named(&agent, "dnsu.l4lb");
        let view = agent.berth(&["net", "ls", "--json"]).json();
        assert!(
            view["load_balancer"]["vips"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.contains(":5353/udp")),
            "the VIP is a UDP one: {view} ({key:?})"
        );
        let vip = SocketAddrV4::new(
            berth_net::lb::vip_address("dnsu", "11.0.0.0/8".parse().unwrap()),
            5353,
        );
        // 300 flows (a fresh source port each) spread over the three backends.
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..300 {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let answer = udp_ask(&socket, vip, 100).expect("the UDP VIP answers");
            *counts.entry(answer).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (name, n) in &counts {
            assert!((60..=135).contains(n), "{name} got {n} of 300: {counts:?}");
        }
        // One flow, pinned by conntrack to one backend; that backend is killed.
        let flow = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let pinned = udp_ask(&flow, vip, 100).expect("an answer");
        for _ in 0..5 {
            assert_eq!(udp_ask(&flow, vip, 10).as_deref(), Some(pinned.as_str()));
        }
        let killed_at = Instant::now();
        agent.berth(&["kill", &pinned]).assert_success();
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        while vip_backends_named(&agent, "dnsu.l4lb").len() != 2 {
            assert!(
                Instant::now() < deadline,
                "the killed backend stays in the VIP"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let removed_after = killed_at.elapsed();
        // The same socket (same 5-tuple) now reaches a live backend.
        let moved = udp_ask(&flow, vip, 20).expect("the flow is answered again");
        assert_ne!(moved, pinned, "the flow still goes to the killed backend");
        eprintln!(
            "UDP VIP: backend {pinned} left the VIP {:.0} ms after `berth kill` began; \
                     the pinned flow moved to {moved}",
            removed_after.as_secs_f64() * 1000.0
        );
        for n in 1..=3 {
            let name = format!("u{n}");
            if name != pinned {
                agent.berth(&["kill", &name]).assert_success();
            }
        }
        drop(agent);
    });
}

/// Starts `berth agent --dev` with `extra` flags, which must make it refuse to start; its output
/// and the temporary directory holding the work dir it was given (`<dir>/work`, which should not
/// exist afterwards; the directory lives as long as the caller keeps it).
fn refused_agent_start(tag: &str, extra: &[&str]) -> (berth_tests::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let run = dir.path().join("run");
    let cgroup_base = format!("berth-test-{}-{tag}", std::process::id());
    let mut args = vec![
        "agent",
        "--dev",
        "--work-dir",
        work.to_str().unwrap(),
        "--runtime-dir",
        run.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--cgroup-base",
        &cgroup_base,
    ];
    args.extend(extra);
    let out = berth_tests::berth_no_agent(&args);
    (out, dir)
}

#[test]
fn overlapping_network_ranges_are_refused_at_start() {
    if !require_privileges() {
        return;
    }
    let (out, _) = refused_agent_start("ranges", &["--bridge-subnet", "11.2.0.0/24"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("overlaps") && out.stderr.contains("11.2.0.0/24"),
        "{}",
        out.stderr
    );
}

/// `vm_`: runs only in the microVM phase of tests/run.sh (its Debian kernel has ip_vs; this
/// host's kernel does not, and the host phase does not select `vm_` tests).
#[test]
fn vm_ipvs_vip_spreads_connections_over_running_backends() {
    if !require_privileges() {
        return;
    }
    berth_tests::netns::in_new_netns("ipvs", || {
        let agent = Agent::start_with(&["--network-services", "--lb-backend", "ipvs"]);
        let ls = agent.berth(&["net", "ls"]);
        ls.assert_success();
        assert!(
            ls.stdout.contains("LOAD BALANCER: ipvs"),
            "{}{}",
            ls.stdout,
            ls.stderr
        );
        let vip = web_vip_spread(&agent);
        // IPVS balanced them: the VIP is an IPVS service with three real servers (this
        // thread's namespace: /proc/thread-self), bound to the dummy link.
        let table = std::fs::read_to_string("/proc/thread-self/net/ip_vs").unwrap();
        let vip_hex = format!("{:08X}:0050", u32::from(vip));
        assert!(table.contains(&vip_hex), "{table}");
        assert_eq!(table.matches("Masq").count(), 3, "{table}");
        let addrs = Command::new("ip")
            .args(["-4", "addr", "show", "dev", "berth-ipvs0"])
            .output()
            .unwrap();
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        assert!(addrs.contains(&format!("{vip}/32")), "{addrs}");
        // From a container on the same bridge (replies come back through IPVS).
        let client = format!(
            "import socket\ns=socket.create_connection(('{vip}',80),10)\nprint(s.recv(100).decode())\n"
        );
        let out = agent.berth(&[
            "run",
            "--cpus",
            "0.1",
            "--mem",
            "48M",
            "--network",
            "bridge",
            "--",
            "python3",
            "-c",
            &client,
        ]);
        out.assert_success();
        assert!(out.stdout.trim().starts_with('w'), "{}", out.stdout);
        killed_backend_gets_no_new_connections(&agent, vip);
        for name in ["w2", "w3"] {
            agent.berth(&["kill", name]).assert_success();
        }
        drop(agent);
        // Back to the nftables balancer on this node: what the IPVS run left (the
        // dummy link and the nft set; its services went with their last backends) is
        // removed at start.
        let ip_vs = || std::fs::read_to_string("/proc/thread-self/net/ip_vs").unwrap();
        let link = || {
            Command::new("ip")
                .args(["link", "show", "berth-ipvs0"])
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(link(), "berth-ipvs0 outlives its agent");
        let agent = Agent::start_with(&["--network-services"]);
        let ls = agent.berth(&["net", "ls"]);
        ls.assert_success();
        assert!(
            ls.stdout.contains("LOAD BALANCER: nftables"),
            "{}{}",
            ls.stdout,
            ls.stderr
        );
        assert!(!ip_vs().contains("TCP"), "{}", ip_vs());
        assert!(!link(), "berth-ipvs0 is left");
        let nft = Command::new("nft")
            .args(["list", "table", "ip", "berth"])
            .output()
            .unwrap();
        let nft = String::from_utf8_lossy(&nft.stdout);
        assert!(!nft.contains("ipvs_"), "{nft}");
        drop(agent);
    });
}

#[test]
fn ipvs_backend_is_refused_at_start_where_the_kernel_lacks_ip_vs() {
    if !require_privileges() {
        return;
    }
    let loadable = std::path::Path::new("/sys/module/ip_vs").exists()
        || Command::new("modprobe")
            .args(["-n", "ip_vs"])
            .output()
            .is_ok_and(|o| o.status.success());
    if loadable {
        // The IPVS path itself is covered by vm_ipvs_vip_spreads_connections_over_running_backends.
        if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): this kernel has ip_vs");
            return;
        }
        panic!("this kernel has ip_vs: the refusal on kernels without it cannot be tested here");
    }
    let (out, dir) = refused_agent_start("noipvs", &["--network-services", "--lb-backend", "ipvs"]);
    let work = dir.path().join("work");
    assert!(!out.success());
    assert!(
        out.stderr.contains("ip_vs not available") && out.stderr.contains("--lb-backend nftables"),
        "{}",
        out.stderr
    );
    assert!(!work.exists(), "nothing is created before the refusal");
}
