//! The VXLAN overlay through the berth binary, on three "nodes": network namespaces this test
//! creates, joined by an underlay bridge in a fourth ("hub") namespace that also runs ZooKeeper
//! and `berth master`. Every packet stays inside these namespaces.
//!
//! Each node runs `berth agent --master ... --overlay`: it leases a /24 from 9.0.0.0/8 (in
//! ZooKeeper with a zk:// master; from `berth master` itself with a host:port one) and routes the
//! others' subnets over its VXLAN device. A task on node 1 serves TCP and
//! UDP; a task on node 2 reaches it over the overlay (a 1 MiB TCP transfer, a 1400-byte UDP
//! datagram both ways, container MTU = underlay − 50). Node 3 dies (kill -9): within its lease
//! (the ZooKeeper session timeout, or the master's lease timeout) the others delete its route,
//! neighbour and FDB entries. It comes back and gets the same subnet again.

#[path = "../../agent/tests/zk_real/server.rs"]
#[allow(dead_code)]
mod zk_server;

use std::{
    os::fd::AsRawFd,
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use berth_tests::{Agent, master::Master, require_privileges, scaled};
use serde_json::Value;

const GUARD: Duration = Duration::from_secs(120);
const HUB_IP: &str = "10.99.0.254";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's namespaces; deleted (with their links) on every path.
struct Topology {
    prefix: String,
    nodes: usize,
}

impl Topology {
    fn create(tag: &str, nodes: usize) -> Self {
        let prefix = format!("bt{}-ov{tag}", std::process::id());
        let topology = Topology { prefix, nodes };
        let hub = topology.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "ul", "type", "bridge"]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "ul",
        ]);
        ip(&["-n", &hub, "link", "set", "ul", "up"]);
        for n in 1..=nodes {
            topology.add_node(n);
        }
        topology
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    fn node(&self, n: usize) -> String {
        format!("{}-n{n}", self.prefix)
    }

    fn add_node(&self, n: usize) {
        let (hub, node) = (self.hub(), self.node(n));
        ip(&["netns", "add", &node]);
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        let outside = format!("btov{n}h");
        ip(&[
            "-n", &hub, "link", "add", &outside, "type", "veth", "peer", "name", "ul0", "netns",
            &node,
        ]);
        ip(&["-n", &hub, "link", "set", &outside, "master", "ul", "up"]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("10.99.0.{n}/24"),
            "dev",
            "ul0",
        ]);
        ip(&["-n", &node, "link", "set", "ul0", "up"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in 1..=self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.node(n)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .status();
    }
}

/// What a namespace thread holds: its agent, and whatever else it started (ZooKeeper, master).
#[derive(Default)]
struct Held {
    agent: Option<Agent>,
    keep: Vec<Box<dyn std::any::Any + Send>>,
}

type Job = Box<dyn FnOnce(&mut Held) + Send>;

/// A thread living in one namespace: what it starts (agents, ZooKeeper, masters) is born there.
struct InNetns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl InNetns {
    fn new(netns: &str) -> Self {
        let path = format!("/var/run/netns/{netns}");
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd, for this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let mut held = Held::default();
            for job in rx {
                job(&mut held);
            }
            // Dropped here, on the thread that started them: the agent first.
            drop(held.agent.take());
            drop(held);
        });
        InNetns {
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut Held) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move |held| {
                let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    || f(held),
                )));
            }))
            .expect("node thread alive");
        match rx.recv().expect("node thread answered") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn overlay_entries() -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("ip/bridge");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    (
        run(&["ip", "-4", "route", "show", "dev", "berth.vx"]),
        run(&["ip", "-4", "neigh", "show", "dev", "berth.vx"]),
        run(&["bridge", "fdb", "show", "dev", "berth.vx"]),
    )
}

fn subnet_of(agent: &Agent) -> String {
    let state = std::fs::read_to_string(agent.work_dir().join("meta/overlay.json")).unwrap();
    let value: Value = serde_json::from_str(&state).unwrap();
    value["subnet"].as_str().unwrap().to_string()
}

const SERVER: &str = "import socket,threading\n\
def udp():\n  u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n  u.bind(('0.0.0.0',7001))\n  while True:\n    d,a=u.recvfrom(4096)\n    u.sendto(d,a)\n\
threading.Thread(target=udp,daemon=True).start()\n\
s=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7000))\ns.listen(8)\n\
while True:\n  c,_=s.accept()\n  c.sendall(b'x'*1048576)\n  c.close()\n";

#[test]
fn overlay_across_three_nodes_with_a_node_dying_and_coming_back() {
    if !require_privileges() {
        return;
    }
    if !zk_server::zookeeper_available() {
        assert!(
            std::env::var("BERTH_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1"),
            "ZooKeeper is not installed (apt-get install zookeeperd default-jre-headless)"
        );
        return;
    }
    three_nodes(Membership::ZooKeeper);
}

/// The same with membership kept by `berth master` (no ZooKeeper): also runs in the cgroup v2
/// microVM (hence the `cgroup_` prefix the VM phase selects).
#[test]
fn cgroup_overlay_across_three_nodes_with_master_membership() {
    if !require_privileges() {
        return;
    }
    three_nodes(Membership::Master);
}

#[derive(Clone, Copy, PartialEq)]
enum Membership {
    /// ZooKeeper in the hub; the master elected there; a 3 s session timeout.
    ZooKeeper,
    /// The master in the hub keeps the leases; a 3 s lease timeout.
    Master,
}

fn three_nodes(membership: Membership) {
    let tag = if membership == Membership::ZooKeeper {
        "z"
    } else {
        "m"
    };
    let topology = Topology::create(tag, 3);
    let hub = InNetns::new(&topology.hub());
    // ZooKeeper (in that mode) and the master live in the hub, on the underlay.
    let master_url = hub.run(move |held| {
        let port = std::net::TcpListener::bind(format!("{HUB_IP}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("{HUB_IP}:{port}");
        let (master, url) = match membership {
            Membership::ZooKeeper => {
                let zk = zk_server::ZkServer::start_on(HUB_IP);
                let zk_url = format!("zk://{}/mesos", zk.address());
                let master = Master::start_at(address.parse().unwrap(), &["--zk", &zk_url]);
                held.keep.push(Box::new(zk));
                (master, zk_url)
            }
            Membership::Master => {
                let master =
                    Master::start_at(address.parse().unwrap(), &["--overlay-lease-timeout", "3"]);
                (master, address)
            }
        };
        master.wait_for("master leads", GUARD, |s| s["leading"] == true);
        // Lives as long as the hub thread (the end of the test).
        held.keep.push(Box::new(master));
        url
    });
    let nodes: Vec<InNetns> = (1..=3).map(|n| InNetns::new(&topology.node(n))).collect();
    for (i, node) in nodes.iter().enumerate() {
        let master = master_url.clone();
        node.run(move |held| {
            let listen = format!("10.99.0.{}:5051", i + 1);
            held.agent = Some(Agent::start_with_master(
                &master,
                &[
                    "--listen",
                    &listen,
                    "--overlay",
                    "--zk-session-timeout",
                    "3",
                    "--registration-backoff-factor",
                    "0",
                ],
            ));
        });
    }
    let subnets: Vec<String> = nodes
        .iter()
        .map(|n| n.run(|held| subnet_of(held.agent.as_ref().unwrap())))
        .collect();
    assert_eq!(
        subnets
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "distinct node subnets: {subnets:?}"
    );
    // Every node routes the two others' subnets over berth.vx.
    for (i, node) in nodes.iter().enumerate() {
        let others: Vec<String> = subnets
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| s.clone())
            .collect();
        node.run(move |_| {
            let deadline = Instant::now() + scaled(GUARD);
            loop {
                let (routes, _, _) = overlay_entries();
                if others.iter().all(|s| routes.contains(s.as_str())) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "routes: {routes} (want {others:?})"
                );
                thread::sleep(Duration::from_millis(200));
            }
        });
    }
    // `berth net` on node 1 shows its subnet and the two peers.
    let first = subnets[0].clone();
    nodes[0].run(move |held| {
        let net = held.agent.as_ref().unwrap().berth(&["net", "ls", "--json"]);
        net.assert_success();
        let view = net.json();
        assert_eq!(view["overlay"]["subnet"], first.as_str(), "{view}");
        let kept_in = if membership == Membership::ZooKeeper {
            "zookeeper"
        } else {
            "master"
        };
        assert_eq!(view["overlay"]["membership"], kept_in, "{view}");
        let deadline = Instant::now() + scaled(GUARD);
        while held
            .agent
            .as_ref()
            .unwrap()
            .berth(&["net", "ls", "--json"])
            .json()["overlay"]["peers"]
            .as_array()
            .map(|p| p.len())
            != Some(2)
        {
            assert!(Instant::now() < deadline, "peers never reached 2");
            thread::sleep(Duration::from_millis(200));
        }
    });
    // A server on node 1, a client on node 2.
    let server_ip = nodes[0].run(|held| {
        let agent = held.agent.as_ref().unwrap();
        agent
            .berth(&[
                "run",
                "-d",
                "--network",
                "overlay",
                "--name",
                "srv",
                "-p",
                "17000:7000",
                "--",
                "python3",
                "-c",
                SERVER,
            ])
            .assert_success();
        berth_tests::bridge_ip_of(&agent.berth(&["inspect", "srv"]).json())
            .expect("the server's overlay address")
    });
    let client = format!(
        "import socket,time\n\
for i in range(200):\n  try:\n    s=socket.create_connection(('{server_ip}',7000),5); break\n  except OSError: time.sleep(0.1)\n\
n=0\nwhile True:\n  d=s.recv(65536)\n  if not d: break\n  n+=len(d)\n\
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nu.settimeout(5)\nu.sendto(b'y'*1400,('{server_ip}',7001))\nd,_=u.recvfrom(4096)\n\
import subprocess\n\
p=subprocess.run(['ping','-c','1','-W','5','-M','do','-s','1422','{server_ip}'],stdout=subprocess.DEVNULL).returncode\n\
print(n, len(d), open('/sys/class/net/eth0/mtu').read().strip(), 'ping', p)\n"
    );
    let printed = nodes[1].run(move |held| {
        let out = held.agent.as_ref().unwrap().berth(&[
            "run",
            "--network",
            "overlay",
            "--",
            "python3",
            "-c",
            &client,
        ]);
        out.assert_success();
        out.stdout.trim().to_string()
    });
    assert_eq!(
        printed, "1048576 1400 1450 ping 0",
        "bytes over TCP, UDP echo size, container MTU, a full-size (1450-byte, DF) ping's exit code"
    );
    // The server's port mapping on node 1, from node 2 itself (the node, not a task): DNAT of
    // traffic arriving over the underlay.
    let mapped = nodes[1].run(|_| {
        let deadline = Instant::now() + scaled(GUARD);
        loop {
            match std::net::TcpStream::connect_timeout(
                &"10.99.0.1:17000".parse().unwrap(),
                Duration::from_secs(5),
            ) {
                Ok(mut c) => {
                    let mut all = Vec::new();
                    std::io::Read::read_to_end(&mut c, &mut all).unwrap();
                    break all.len();
                }
                Err(err) => {
                    assert!(Instant::now() < deadline, "node 1's port 17000: {err}");
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });
    assert_eq!(
        mapped, 1048576,
        "bytes through node 1's mapped port from node 2"
    );
    // A VIP with a backend on node 1 and one on node 2, used by name from a task on node 3:
    // every node balances over the cluster's backends (overlay addresses), DNS included.
    for (i, name) in [(0usize, "b1"), (1, "b2")] {
        let server = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',80))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'{name}')\n  c.close()\n"
        );
        let name = name.to_string();
        nodes[i].run(move |held| {
            held.agent
                .as_ref()
                .unwrap()
                .berth(&[
                    "run",
                    "-d",
                    "--cpus",
                    "0.1",
                    "--mem",
                    "48M",
                    "--network",
                    "overlay",
                    "--name",
                    &name,
                    "--label",
                    "VIP_0=/web:80",
                    "--",
                    "python3",
                    "-c",
                    &server,
                ])
                .assert_success();
        });
    }
    let names = nodes[2].run(|held| {
        let client = "import socket,time\nseen=set()\nfor i in range(600):\n  try:\n    s=socket.create_connection(('web.l4lb.berth.directory',80),2)\n    seen.add(s.recv(10).decode())\n    s.close()\n  except OSError:\n    time.sleep(0.1)\n  if len(seen)==2: break\nprint(' '.join(sorted(seen)))\n";
        let out = held.agent.as_ref().unwrap().berth(&[
            "run", "--cpus", "0.1", "--mem", "48M", "--network", "overlay", "--", "python3", "-c",
            client,
        ]);
        out.assert_success();
        out.stdout.trim().to_string()
    });
    assert_eq!(
        names, "b1 b2",
        "a VIP's backends on two other nodes, reached by name"
    );
    for (i, name) in [(0usize, "b1"), (1, "b2")] {
        nodes[i].run(move |held| {
            held.agent
                .as_ref()
                .unwrap()
                .berth(&["kill", name])
                .assert_success();
        });
    }
    // Node 3 dies: the others drop its entries once its lease (session) expires.
    let dead_subnet = subnets[2].clone();
    nodes[2].run(|held| held.agent.as_mut().unwrap().kill9());
    for node in &nodes[..2] {
        let gone = dead_subnet.clone();
        node.run(move |_| {
            let deadline = Instant::now() + scaled(GUARD);
            loop {
                let (routes, neighbours, fdb) = overlay_entries();
                // "9.0.42.0/24" -> "9.0.42."
                let net = gone.split('/').next().unwrap();
                let three_octets = &net[..net.rfind('.').unwrap() + 1];
                if !routes.contains(three_octets)
                    && !neighbours.contains(three_octets)
                    && !fdb.contains("dst 10.99.0.3 ")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "entries of the dead node remain:\n{routes}\n{neighbours}\n{fdb}"
                );
                thread::sleep(Duration::from_millis(200));
            }
        });
    }
    // It comes back with the same subnet, and the others route to it again.
    let back = nodes[2].run(|held| {
        let agent = held.agent.as_mut().unwrap();
        agent.crash_and_restart();
        subnet_of(agent)
    });
    assert_eq!(back, dead_subnet, "a node that comes back keeps its lease");
    let again = dead_subnet.clone();
    nodes[0].run(move |_| {
        let deadline = Instant::now() + scaled(GUARD);
        while !overlay_entries()
            .0
            .contains(again.split('/').next().unwrap())
        {
            assert!(
                Instant::now() < deadline,
                "no route to the node that came back"
            );
            thread::sleep(Duration::from_millis(200));
        }
    });
    // End the server task before the agents stop (cluster agents leave tasks running).
    nodes[0].run(|held| {
        held.agent
            .as_ref()
            .unwrap()
            .berth(&["kill", "srv"])
            .assert_success();
    });
    drop(nodes);
    drop(hub);
}

/// `berth agent --dev --overlay`: the embedded master keeps the membership (no ZooKeeper); the
/// node leases a subnet from it and an overlay task gets an address in it.
#[test]
fn cgroup_dev_mode_overlay_leases_from_the_embedded_master() {
    if !require_privileges() {
        return;
    }
    let topology = Topology::create("d", 1);
    let node = InNetns::new(&topology.node(1));
    let (subnet, view, task_ip) = node.run(|held| {
        let agent = Agent::start_with(&[
            "--listen",
            "10.99.0.1:5051",
            "--overlay",
            "--overlay-pool",
            "9.40.0.0/16",
        ]);
        let subnet = subnet_of(&agent);
        let view = agent.berth(&["net", "ls", "--json"]).json();
        let task = agent.berth(&[
            "run",
            "-d",
            "--cpus",
            "0.1",
            "--mem",
            "48M",
            "--network",
            "overlay",
            "--name",
            "t",
            "--",
            "sleep",
            "60",
        ]);
        task.assert_success();
        let ip = berth_tests::bridge_ip_of(&agent.berth(&["inspect", "t"]).json())
            .expect("an overlay address");
        agent.berth(&["kill", "t"]).assert_success();
        held.agent = Some(agent);
        (subnet, view, ip)
    });
    let net: berth_net::Ipv4Net = subnet.parse().unwrap();
    assert!(
        "9.40.0.0/16"
            .parse::<berth_net::Ipv4Net>()
            .unwrap()
            .contains_net(&net),
        "{subnet} from --overlay-pool"
    );
    assert_eq!(view["overlay"]["membership"], "master", "{view}");
    assert_eq!(view["overlay"]["vtep_ip"], "10.99.0.1", "{view}");
    assert!(net.contains(task_ip), "task address {task_ip} in {subnet}");
}
