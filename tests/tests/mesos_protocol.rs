//! The Mesos agent protocol end to end: `berth master` and `berth agent --master` as separate
//! processes talking libprocess messages over HTTP on loopback, a v1 HTTP framework on the
//! master, and ZooKeeper (Debian's zookeeperd) for leader election between two masters.
//!
//! Covered: registration, offers, run, kill and acknowledgements over the wire; re-registration
//! after an agent crash with its running task; ping timeouts marking an agent unreachable and its
//! return; status update retries while unacknowledged, one update in flight per task; a crash
//! between checkpointing an update and sending it (delivered exactly once, in order, after the
//! restart); leader failover through ZooKeeper; bad input (garbage and truncated protobuf,
//! unknown message names, messages from a process that is not the master, a master that never
//! answers). Every wait is "until X is observed", bounded by a generous guard: nothing asserts on
//! wall-clock time.

#[path = "../../agent/tests/zk_real/server.rs"]
#[allow(dead_code)]
mod zk_server;

use std::{
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use berth_proto::{
    codec::ContentType,
    mesos::{internal, v1 as mesos, v1::scheduler},
};
use berth_tests::{
    Agent,
    framework::{Framework, call, launch, runtime, task},
    http_request,
    master::Master,
    require_privileges, scaled,
};
use prost::Message as _;
use serde_json::Value;

/// Hang guard for one wait.
const GUARD: Duration = Duration::from_secs(90);

fn link_state(agent: &Agent) -> Value {
    http_request(
        agent.addr(),
        "GET",
        "/api/berth/v1/master",
        None,
        b"",
        Duration::from_secs(5),
    )
    .map(|r| r.json())
    .unwrap_or(Value::Null)
}

#[track_caller]
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + scaled(GUARD);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not observed within {GUARD:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn one_agent(master: &Master) -> Value {
    master.wait_for("one reachable agent", GUARD, |s| {
        s["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["reachable"] == true)
    })["agents"][0]
        .clone()
}

/// Posts a raw libprocess message to `addr` as `from`.
fn post_message(
    addr: std::net::SocketAddr,
    to: &str,
    name: &str,
    from: Option<&str>,
    body: &[u8],
) -> u16 {
    let path = format!("/{to}/{name}");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(from) = from {
        request.push_str(&format!(
            "User-Agent: libprocess/{from}\r\nLibprocess-From: {from}\r\n"
        ));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    use std::io::{Read, Write};
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// TEARDOWN, then waits until the agent ended every task (the agent keeps tasks running when it
/// stops in cluster mode, so tests end their tasks before dropping it).
async fn teardown(fw: &Framework, agent: &Agent) {
    fw.send(call(scheduler::call::Type::Teardown)).await;
    let deadline = Instant::now() + scaled(GUARD);
    loop {
        let tasks = http_request(
            agent.addr(),
            "GET",
            "/api/berth/v1/tasks",
            None,
            b"",
            Duration::from_secs(5),
        )
        .map(|r| r.json())
        .unwrap_or(Value::Null);
        let live = tasks
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|t| {
                        let state = t["state"].as_str().unwrap_or("");
                        !matches!(
                            state,
                            "TASK_FINISHED"
                                | "TASK_FAILED"
                                | "TASK_KILLED"
                                | "TASK_ERROR"
                                | "TASK_LOST"
                                | "TASK_DROPPED"
                        )
                    })
                    .count()
            })
            .unwrap_or(usize::MAX);
        if live == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tasks still live after TEARDOWN: {tasks}\n{}",
            agent.stderr_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn wire_register_run_kill_and_reregister_after_agent_crash() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[]);
    let mut agent = Agent::start_with_master(&master.addr().to_string(), &[]);
    let registered = one_agent(&master);
    let agent_id = registered["id"].as_str().unwrap().to_string();
    assert!(agent_id.contains("-S"), "{registered}");
    // The agent checkpointed the id the master gave it.
    wait_until("the agent took the registration", || {
        link_state(&agent)["registered"] == true
    });
    assert_eq!(link_state(&agent)["agent_id"], agent_id.as_str());
    runtime().block_on(async {
        let mut fw = Framework::subscribe(&master.url(), ContentType::Protobuf, "wire-fw").await;
        let offer = fw.offer().await;
        assert_eq!(offer.agent_id.value, agent_id);
        fw.send(launch(
            &offer,
            vec![
                task("short", &offer.agent_id, 0.1, 32.0, "exit 0"),
                task("long", &offer.agent_id, 0.1, 32.0, "sleep 300"),
            ],
        ))
        .await;
        let finished = fw
            .until_state("short", mesos::TaskState::TaskFinished)
            .await;
        assert_eq!(finished.agent_id.as_ref().unwrap().value, agent_id);
        fw.until_state("long", mesos::TaskState::TaskRunning).await;
        // Every update was acknowledged through the master.
        let deadline = Instant::now() + scaled(GUARD);
        while link_state(&agent)["pending_status_updates"] != 0 {
            assert!(Instant::now() < deadline, "{}", link_state(&agent));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The agent dies and comes back: it re-registers with the same id and its task.
        agent.crash_and_restart();
        wait_until("the restarted agent re-registered", || {
            link_state(&agent)["registered"] == true
        });
        master.wait_for("re-registration with the running task", GUARD, |s| {
            s["agents"].as_array().is_some_and(|a| {
                a.len() == 1 && a[0]["id"] == agent_id.as_str() && a[0]["active_tasks"] == 1
            })
        });
        let link = link_state(&agent);
        assert_eq!(link["agent_id"], agent_id.as_str(), "{link}");
        assert_eq!(link["registrations"], 1, "{link}");
        // The master reaches the restarted agent: kill the task through it.
        fw.kill("long").await;
        fw.until_state("long", mesos::TaskState::TaskKilled).await;
        teardown(&fw, &agent).await;
    });
}

#[test]
fn ping_timeouts_mark_the_agent_unreachable_and_it_reregisters() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[
        "--agent-ping-timeout",
        "0.5",
        "--max-agent-ping-timeouts",
        "3",
    ]);
    let agent = Agent::start_with_master(&master.addr().to_string(), &[]);
    let agent_id = one_agent(&master)["id"].as_str().unwrap().to_string();
    runtime().block_on(async {
        let mut fw = Framework::subscribe(&master.url(), ContentType::Json, "ping-fw").await;
        fw.launch_one("t", "sleep 300").await;
        fw.until_state("t", mesos::TaskState::TaskRunning).await;
        // A frozen agent answers no pings.
        struct Thaw(i32);
        impl Drop for Thaw {
            fn drop(&mut self) {
                // SAFETY: kill(2) on the agent this test started.
                unsafe { libc::kill(self.0, libc::SIGCONT) };
            }
        }
        // SAFETY: kill(2) on the agent this test started; Thaw resumes it on every path.
        unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
        let thaw = Thaw(agent.pid());
        master.wait_for("agent unreachable", GUARD, |s| {
            s["agents"][0]["reachable"] == false
        });
        // Not partition-aware: the framework hears TASK_LOST, reason AGENT_REMOVED.
        let lost = fw.update_of("t").await;
        assert_eq!(lost.state(), mesos::TaskState::TaskLost, "{lost:?}");
        assert_eq!(lost.reason(), mesos::task_status::Reason::AgentRemoved);
        drop(thaw);
        // The agent notices the silence, re-registers, and reports its task again.
        master.wait_for("agent back", GUARD, |s| {
            s["agents"][0]["reachable"] == true && s["agents"][0]["active_tasks"] == 1
        });
        assert_eq!(link_state(&agent)["agent_id"], agent_id.as_str());
        teardown(&fw, &agent).await;
    });
}

#[test]
fn status_updates_are_retried_until_acknowledged_one_in_flight() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[]);
    let agent = Agent::start_with_master(&master.addr().to_string(), &[]);
    one_agent(&master);
    runtime().block_on(async {
        let mut fw = Framework::subscribe(&master.url(), ContentType::Protobuf, "noack-fw").await;
        fw.launch_one("t", "sleep 300").await;
        // The framework does not acknowledge the first update: the agent re-sends it (after 10 s)
        // and sends nothing newer for that task meanwhile, although the task is running.
        let first = fw.next_of(scheduler::event::Type::Update).await;
        let first = first.update.unwrap().status;
        assert_eq!(first.state(), mesos::TaskState::TaskStarting);
        let again = fw.next_of(scheduler::event::Type::Update).await;
        let again = again.update.unwrap().status;
        assert_eq!(
            again.uuid, first.uuid,
            "the same update again, not a newer one: {again:?}"
        );
        assert_eq!(again.state(), mesos::TaskState::TaskStarting);
        assert!(
            link_state(&agent)["pending_status_updates"]
                .as_u64()
                .unwrap()
                >= 2
        );
        // Acknowledged: the next update (TASK_RUNNING) follows.
        let mut ack = call(scheduler::call::Type::Acknowledge);
        ack.acknowledge = Some(scheduler::call::Acknowledge {
            agent_id: first.agent_id.clone().unwrap(),
            task_id: first.task_id.clone(),
            uuid: first.uuid.clone().unwrap(),
        });
        fw.send(ack).await;
        let next = fw.update_of("t").await;
        assert_eq!(next.state(), mesos::TaskState::TaskRunning, "{next:?}");
        teardown(&fw, &agent).await;
    });
}

#[test]
fn crash_between_checkpoint_and_send_delivers_the_update_once_in_order() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[]);
    let mut agent = Agent::start_custom(
        &["--master", &master.addr().to_string()],
        &[],
        &[("BERTH_TEST_CRASH_AFTER_CHECKPOINT", "TASK_RUNNING")],
    );
    one_agent(&master);
    runtime().block_on(async {
        let mut fw = Framework::subscribe(&master.url(), ContentType::Protobuf, "crash-fw").await;
        fw.launch_one("t", "sleep 300").await;
        let starting = fw.update_of("t").await;
        assert_eq!(starting.state(), mesos::TaskState::TaskStarting);
        // The agent dies right after checkpointing TASK_RUNNING, before sending it.
        let pid = agent.pid();
        wait_until("the agent died at the fault point", || {
            // SAFETY: kill(2) with signal 0 only checks the pid of the agent this test started.
            let gone = unsafe { libc::kill(pid, 0) } != 0;
            gone || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        });
        agent.crash_and_restart();
        // After the restart: TASK_RUNNING exactly once, then (after a kill) TASK_KILLED. The
        // agent may have died before the acknowledgement of TASK_STARTING reached it: then that
        // update comes again (same uuid), before TASK_RUNNING; nothing else may.
        let mut running = fw.update_of("t").await;
        if running.state() == mesos::TaskState::TaskStarting {
            assert_eq!(
                running.uuid, starting.uuid,
                "a retransmission, not a new update"
            );
            running = fw.update_of("t").await;
        }
        assert_eq!(
            running.state(),
            mesos::TaskState::TaskRunning,
            "{running:?}"
        );
        fw.kill("t").await;
        let after = fw.update_of("t").await;
        assert_eq!(
            after.state(),
            mesos::TaskState::TaskKilled,
            "no second TASK_RUNNING, and nothing out of order: {after:?}"
        );
        teardown(&fw, &agent).await;
    });
}

#[test]
fn bad_messages_are_dropped_and_nothing_is_lost() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[]);
    let agent = Agent::start_with_master(&master.addr().to_string(), &[]);
    let agent_id = one_agent(&master)["id"].as_str().unwrap().to_string();
    let master_pid = format!("master@{}", master.addr());
    let run = internal::RunTaskMessage {
        framework_id: None,
        framework: mesos::FrameworkInfo {
            user: "root".into(),
            name: "intruder".into(),
            id: Some(mesos::FrameworkId { value: "f".into() }),
            ..Default::default()
        },
        task: task(
            "intruder",
            &mesos::AgentId {
                value: agent_id.clone(),
            },
            0.1,
            32.0,
            "sleep 300",
        ),
        resource_version_uuids: Vec::new(),
        pid: None,
        launch_executor: None,
    }
    .encode_to_vec();
    let name = "mesos.internal.RunTaskMessage";
    // Garbage and truncated protobuf from the master: accepted by libprocess, dropped by the agent.
    assert_eq!(
        post_message(
            agent.addr(),
            "slave(1)",
            name,
            Some(&master_pid),
            b"\xff\xff\xff\xff"
        ),
        202
    );
    assert_eq!(
        post_message(
            agent.addr(),
            "slave(1)",
            name,
            Some(&master_pid),
            &run[..run.len() / 2]
        ),
        202
    );
    // A well-formed task from a process that is not the leading master.
    assert_eq!(
        post_message(
            agent.addr(),
            "slave(1)",
            name,
            Some("master@127.0.0.1:1"),
            &run
        ),
        202
    );
    // An unknown message name, an unknown process, and no libprocess sender at all.
    assert_eq!(
        post_message(
            agent.addr(),
            "slave(1)",
            "mesos.internal.NoSuchMessage",
            Some(&master_pid),
            b""
        ),
        202
    );
    assert_eq!(
        post_message(agent.addr(), "slave(9)", name, Some(&master_pid), &run),
        404
    );
    assert_eq!(
        post_message(agent.addr(), "slave(1)", name, None, &run),
        404
    );
    // The master too: garbage registrations leave it with its one agent.
    assert_eq!(
        post_message(
            master.addr(),
            "master",
            "mesos.internal.RegisterSlaveMessage",
            Some("slave(1)@127.0.0.1:9"),
            b"\x0a\xff"
        ),
        202
    );
    wait_until("the agent counted the bad messages", || {
        let link = link_state(&agent);
        link["malformed_messages"].as_u64() >= Some(2)
            && link["foreign_messages"].as_u64() >= Some(1)
            && link["unknown_messages"].as_u64() >= Some(1)
    });
    let tasks = http_request(
        agent.addr(),
        "GET",
        "/api/berth/v1/tasks",
        None,
        b"",
        Duration::from_secs(5),
    )
    .unwrap()
    .json();
    assert!(
        !tasks.to_string().contains("intruder"),
        "no task was launched: {tasks}"
    );
    assert_eq!(link_state(&agent)["registered"], true);
    assert_eq!(master.agents().len(), 1);
}

#[test]
fn a_master_that_never_answers_leaves_the_agent_retrying_and_healthy() {
    if !require_privileges() {
        return;
    }
    // A listener that accepts connections and reads nothing: messages go nowhere.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let agent = Agent::start_with_master(&addr.to_string(), &[]);
    // Registration is retried with backoff; the agent serves its API meanwhile.
    let started = Instant::now();
    let mut accepted = Vec::new();
    silent.set_nonblocking(true).unwrap();
    while accepted.is_empty() && started.elapsed() < scaled(GUARD) {
        if let Ok((conn, _)) = silent.accept() {
            accepted.push(conn);
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !accepted.is_empty(),
        "the agent never tried to reach the master"
    );
    let link = link_state(&agent);
    assert_eq!(link["registered"], false, "{link}");
    assert_eq!(link["master"], format!("master@{addr}").as_str(), "{link}");
    let health = http_request(
        agent.addr(),
        "GET",
        "/health",
        None,
        b"",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(health.status, 200);
}

#[test]
fn zookeeper_leader_failover_between_two_masters() {
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
    let zk = zk_server::ZkServer::start();
    let url = format!("zk://{}/mesos", zk.address());
    let mut first = Master::start(&["--zk", &url]);
    first.wait_for("first master leads", GUARD, |s| s["leading"] == true);
    let second = Master::start(&["--zk", &url]);
    // The second one waits in line.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(second.state().unwrap()["leading"], false);
    let agent = Agent::start_with_master(&url, &[]);
    one_agent(&first);
    wait_until("the agent took the registration", || {
        link_state(&agent)["registered"] == true
    });
    let agent_id = link_state(&agent)["agent_id"].as_str().unwrap().to_string();
    // The leader dies: its ZooKeeper session expires, the second master leads, the agent follows
    // and re-registers with the id it had.
    first.kill9();
    second.wait_for("second master leads", GUARD, |s| s["leading"] == true);
    let back = one_agent(&second);
    assert_eq!(back["id"], agent_id.as_str(), "{back}");
    let link = link_state(&agent);
    assert_eq!(
        link["master"],
        format!("master@{}", second.addr()).as_str(),
        "{link}"
    );
}

#[test]
fn a_shutdown_message_from_the_master_stops_the_agent_and_its_tasks() {
    if !require_privileges() {
        return;
    }
    let master = Master::start(&[]);
    let mut agent = Agent::start_with_master(&master.addr().to_string(), &[]);
    one_agent(&master);
    wait_until("the agent took the registration", || {
        link_state(&agent)["registered"] == true
    });
    runtime().block_on(async {
        let mut fw = Framework::subscribe(&master.url(), ContentType::Json, "doomed-fw").await;
        fw.launch_one("t", "sleep 300").await;
        fw.until_state("t", mesos::TaskState::TaskRunning).await;
    });
    // What a Mesos master sends an agent it removed (or one that re-registers from elsewhere).
    let shutdown = internal::ShutdownMessage {
        message: Some("removed by the operator".into()),
    }
    .encode_to_vec();
    let master_pid = format!("master@{}", master.addr());
    assert_eq!(
        post_message(
            agent.addr(),
            "slave(1)",
            "mesos.internal.ShutdownMessage",
            Some(&master_pid),
            &shutdown
        ),
        202
    );
    // The agent kills its tasks, forgets its id and exits by itself.
    let status = {
        let deadline = Instant::now() + scaled(GUARD);
        loop {
            if let Some(status) = agent.exit_status() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop:\n{}",
                agent.stderr_tail(30)
            );
            thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(status.success(), "{status}: {}", agent.stderr_tail(30));
    assert!(
        !agent.work_dir().join("meta/agent.json").exists(),
        "a removed agent must register anew"
    );
    assert!(
        agent.stray_processes().is_empty(),
        "{:?}",
        agent.stray_processes()
    );
}
