//! Drives the real `berth-executor` binary through the client: real processes, real namespaces.
//! Needs root; without it every namespace test FAILS unless `BERTH_TEST_ALLOW_SKIP=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_executor::client::{ClientError, ShimClient, read_exit, shim_alive, spawn_shim};
use berth_executor::{ExitStatus, ShimConfig, ShimEvent, ShimReady, ShimRequest};

/// The shim binary: this package's build, or `BERTH_EXECUTOR_BIN` (e.g. a release build).
fn bin() -> PathBuf {
    std::env::var_os("BERTH_EXECUTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-executor")))
}
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const ALL_NS: &[&str] = &["pid", "mount", "uts", "ipc", "net"];
const TIMEOUT: Duration = Duration::from_secs(30);

/// True when the test may run; false (skip) only with BERTH_TEST_ALLOW_SKIP=1.
fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: needs root (namespaces, mounts); BERTH_TEST_ALLOW_SKIP=1");
        return false;
    }
    panic!(
        "this test needs root to create namespaces and mount /proc (euid is {}); run it as \
         root, or set BERTH_TEST_ALLOW_SKIP=1 to skip it",
        nix::unistd::geteuid()
    );
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("berth-exec-test")
                .tempdir()
                .unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn config(&self, argv: &[&str], ns: &[&str]) -> ShimConfig {
        ShimConfig {
            container_id: "test".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("PATH".into(), PATH.into())],
            cwd: None,
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            hostname: None,
            stdout_path: self.path().join("stdout"),
            stderr_path: self.path().join("stderr"),
            state_dir: self.path().to_owned(),
            id_maps: None,
            filesystem: None,
            security: Default::default(),
            ns_paths: Vec::new(),
            oci: None,
        }
    }
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.path().join("stdout")).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path().join("stderr")).unwrap_or_default()
    }
    async fn wait_stdout(&self, needle: &str) {
        let until = Instant::now() + TIMEOUT;
        while !self.stdout().contains(needle) {
            assert!(
                Instant::now() < until,
                "stdout never contained {needle:?}: {:?}",
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn spawn_and_connect(cfg: &ShimConfig) -> (ShimReady, ShimClient) {
    let ready = spawn_shim(&bin(), cfg).await.expect("spawn_shim");
    assert!(ready.shim_pid > 0 && ready.pid > 0 && ready.pid != ready.shim_pid);
    let client = ShimClient::connect(&cfg.state_dir).await.expect("connect");
    (ready, client)
}

async fn next(client: &mut ShimClient) -> Option<ShimEvent> {
    tokio::time::timeout(TIMEOUT, client.next_event())
        .await
        .expect("timed out waiting for a shim event")
        .expect("next_event")
}

async fn start(client: &mut ShimClient, ready: &ShimReady) {
    client.send(&ShimRequest::Start).await.unwrap();
    assert_eq!(
        next(client).await,
        Some(ShimEvent::Started { pid: ready.pid })
    );
}

/// Reads events until `Exited`; checks the connection is closed afterwards.
async fn wait_exited(client: &mut ShimClient) -> ExitStatus {
    loop {
        match next(client).await {
            Some(ShimEvent::Exited(e)) => {
                assert_eq!(next(client).await, None, "connection closed after Exited");
                return e;
            }
            Some(_) => continue,
            None => panic!("shim closed the connection without Exited"),
        }
    }
}

fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Exists and is not a zombie (an orphaned zombie waits for the system's pid 1 to reap it).
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

/// The shim (reaped by spawn_shim's task), the init (reaped by the shim) and anything started
/// with the sandbox path in its command line are gone.
async fn assert_no_leftovers(sb: &Sandbox, ready: &ShimReady) {
    let until = Instant::now() + Duration::from_secs(5);
    let needle = sb.path().to_string_lossy().into_owned();
    loop {
        let left: Vec<i32> = [ready.shim_pid, ready.pid]
            .into_iter()
            .filter(|&p| pid_exists(p))
            .chain(processes_mentioning(&needle))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "leftover processes: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!shim_alive(sb.path()));
    assert!(
        !sb.path().join("shim.sock").exists(),
        "socket removed on exit"
    );
}

/// Spawn, start, wait for the exit; checks exit.json matches and nothing is left over.
async fn run(sb: &Sandbox, cfg: &ShimConfig) -> ExitStatus {
    let (ready, mut c) = spawn_and_connect(cfg).await;
    start(&mut c, &ready).await;
    let exit = wait_exited(&mut c).await;
    assert_eq!(read_exit(sb.path()).unwrap().as_ref(), Some(&exit));
    assert_no_leftovers(sb, &ready).await;
    exit
}

#[tokio::test]
async fn echo_to_stdout_and_stderr_files() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["sh", "-c", "echo to-out; echo to-err >&2"], ALL_NS);
    let e = run(&sb, &cfg).await;
    assert_eq!((e.code, e.signal), (Some(0), None));
    assert!(!e.killed_by_request);
    assert_eq!(e.launch_error, None);
    assert_eq!(sb.stdout(), "to-out\n");
    assert_eq!(sb.stderr(), "to-err\n");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(sb.path().join("stdout"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777 & !0o022, 0o640 & !0o022, "mode {mode:o}");
    // Appended, not truncated, by a second container using the same files.
    let sb2_cfg = ShimConfig {
        state_dir: sb.path().join("second"),
        ..sb.config(&["echo", "again"], &[])
    };
    std::fs::create_dir(&sb2_cfg.state_dir).unwrap();
    let (ready, mut c) = spawn_and_connect(&sb2_cfg).await;
    start(&mut c, &ready).await;
    assert_eq!(wait_exited(&mut c).await.code, Some(0));
    assert_eq!(sb.stdout(), "to-out\nagain\n");
}

#[tokio::test]
async fn exit_code_is_reported() {
    if !require_root() {
        return;
    }
    for ns in [ALL_NS, &[][..]] {
        let sb = Sandbox::new();
        let e = run(&sb, &sb.config(&["sh", "-c", "exit 3"], ns)).await;
        assert_eq!((e.code, e.signal), (Some(3), None), "ns {ns:?}");
        assert_eq!(e.shell_code(), 3);
        assert!(e.at > 1.6e9);
    }
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    if !require_root() {
        return;
    }
    for ns in [ALL_NS, &[][..]] {
        let sb = Sandbox::new();
        let e = run(&sb, &sb.config(&["sh", "-c", "kill -9 $$"], ns)).await;
        assert_eq!((e.code, e.signal), (None, Some(9)), "ns {ns:?}");
        assert_eq!(e.shell_code(), 137);
        assert!(!e.killed_by_request);
    }
}

#[tokio::test]
async fn env_and_cwd_are_honoured() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let work = sb.path().join("work dir");
    std::fs::create_dir(&work).unwrap();
    let mut cfg = sb.config(&["sh", "-c", "echo \"[$FOO]\"; pwd; env"], ALL_NS);
    cfg.env.push(("FOO".into(), "bar baz".into()));
    cfg.cwd = Some(work.clone());
    let e = run(&sb, &cfg).await;
    assert_eq!(e.code, Some(0), "stderr: {}", sb.stderr());
    let out = sb.stdout();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("[bar baz]"));
    assert_eq!(lines.next(), Some(work.to_str().unwrap()));
    // Nothing inherited from the shim's environment (the test runner has HOME, CARGO_*, ...).
    let vars: Vec<&str> = lines.map(|l| l.split('=').next().unwrap()).collect();
    for v in &vars {
        assert!(
            ["PATH", "FOO", "PWD", "SHLVL", "_", "OLDPWD"].contains(v),
            "unexpected variable {v} in {out}"
        );
    }
    assert!(vars.contains(&"FOO") && vars.contains(&"PATH"));
}

#[tokio::test]
async fn path_from_env_is_used_for_lookup() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let bin = sb.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("hello-berth");
    std::fs::write(&script, "#!/bin/sh\necho hello from script\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cfg = sb.config(&["hello-berth"], ALL_NS);
    cfg.env = vec![("PATH".into(), format!("/nonexistent:{}", bin.display()))];
    let e = run(&sb, &cfg).await;
    assert_eq!((e.code, e.launch_error.as_deref()), (Some(0), None));
    assert_eq!(sb.stdout(), "hello from script\n");
}

#[tokio::test]
async fn command_not_found_is_a_launch_error() {
    if !require_root() {
        return;
    }
    for ns in [ALL_NS, &[][..]] {
        let sb = Sandbox::new();
        let e = run(&sb, &sb.config(&["no-such-command-berth"], ns)).await;
        assert_eq!(e.code, Some(127));
        assert_eq!(
            e.launch_error.as_deref(),
            Some("exec no-such-command-berth: No such file or directory")
        );
    }
    // Not executable → EACCES.
    let sb = Sandbox::new();
    let f = sb.path().join("not-exec");
    std::fs::write(&f, "#!/bin/sh\n").unwrap();
    let e = run(&sb, &sb.config(&[f.to_str().unwrap()], ALL_NS)).await;
    assert_eq!(e.code, Some(127));
    assert_eq!(
        e.launch_error,
        Some(format!("exec {}: Permission denied", f.display()))
    );
}

#[tokio::test]
async fn bad_cwd_is_a_launch_error() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let mut cfg = sb.config(&["true"], ALL_NS);
    cfg.cwd = Some(PathBuf::from("/nonexistent-berth-dir"));
    let e = run(&sb, &cfg).await;
    assert_eq!(e.code, Some(127));
    assert_eq!(
        e.launch_error.as_deref(),
        Some("chdir /nonexistent-berth-dir: No such file or directory")
    );
}

#[tokio::test]
async fn kill_forwards_sigterm_to_the_workload() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; sleep 100 & wait",
        ],
        ALL_NS,
    );
    let (ready, mut c) = spawn_and_connect(&cfg).await;
    start(&mut c, &ready).await;
    sb.wait_stdout("ready").await;
    c.send(&ShimRequest::Kill { grace_ms: 10_000 })
        .await
        .unwrap();
    let t0 = Instant::now();
    let e = wait_exited(&mut c).await;
    assert_eq!((e.code, e.signal), (Some(7), None));
    assert!(e.killed_by_request);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "did not wait for grace"
    );
    assert!(sb.stdout().contains("got-term"));
    assert_no_leftovers(&sb, &ready).await;
}

#[tokio::test]
async fn signal_request_reaches_the_workload() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(
        &[
            "sh",
            "-c",
            "trap 'echo got-usr1; exit 5' USR1; echo ready; sleep 100 & wait",
        ],
        ALL_NS,
    );
    let (ready, mut c) = spawn_and_connect(&cfg).await;
    start(&mut c, &ready).await;
    sb.wait_stdout("ready").await;
    c.send(&ShimRequest::Signal {
        signal: libc::SIGUSR1,
        all: false,
    })
    .await
    .unwrap();
    let mut signalled = false;
    let e = loop {
        match next(&mut c).await {
            Some(ShimEvent::Signalled { signal }) => {
                assert_eq!(signal, libc::SIGUSR1);
                signalled = true;
            }
            Some(ShimEvent::Exited(e)) => break e,
            Some(_) => {}
            None => panic!("connection closed before the exit"),
        }
    };
    assert!(signalled);
    assert_eq!((e.code, e.signal), (Some(5), None));
    assert!(!e.killed_by_request);
    assert!(sb.stdout().contains("got-usr1"));
    assert_no_leftovers(&sb, &ready).await;
}

#[tokio::test]
async fn kill_with_grace_terminates_sleep() {
    if !require_root() {
        return;
    }
    for ns in [ALL_NS, &[][..]] {
        let sb = Sandbox::new();
        let cfg = sb.config(&["sleep", "300"], ns);
        let (ready, mut c) = spawn_and_connect(&cfg).await;
        start(&mut c, &ready).await;
        c.send(&ShimRequest::Kill { grace_ms: 200 }).await.unwrap();
        let e = wait_exited(&mut c).await;
        assert_eq!((e.code, e.signal), (None, Some(15)), "ns {ns:?}");
        assert!(e.killed_by_request);
        assert_no_leftovers(&sb, &ready).await;
    }
}

#[tokio::test]
async fn term_ignoring_workload_is_sigkilled_after_grace() {
    if !require_root() {
        return;
    }
    for ns in [ALL_NS, &[][..]] {
        let sb = Sandbox::new();
        let cfg = sb.config(
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; sleep 100; echo survived",
            ],
            ns,
        );
        let (ready, mut c) = spawn_and_connect(&cfg).await;
        start(&mut c, &ready).await;
        sb.wait_stdout("ready").await;
        let t0 = Instant::now();
        c.send(&ShimRequest::Kill { grace_ms: 300 }).await.unwrap();
        let e = wait_exited(&mut c).await;
        let took = t0.elapsed();
        assert_eq!((e.code, e.signal), (None, Some(9)), "ns {ns:?}");
        assert!(e.killed_by_request);
        assert!(
            took >= Duration::from_millis(300),
            "SIGKILL before grace: {took:?}"
        );
        assert!(!sb.stdout().contains("survived"));
        // `sleep 100` (cmdline does not mention the sandbox) must be gone too: look for it
        // among the processes of the container's session.
        assert_no_leftovers(&sb, &ready).await;
        assert!(
            !session_alive(ready.pid),
            "processes of the container's session survive"
        );
    }
}

/// Live (non-zombie) processes with session id `sid`.
fn session_members(sid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let member = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after "(comm)": state ppid pgrp session ...
                let rest = &s[s.rfind(')')? + 2..];
                let mut f = rest.split(' ');
                let state = f.next()?;
                let session = f.nth(2)?.parse::<i32>().ok()?;
                Some(state != "Z" && session == sid)
            })
            .unwrap_or(false);
        if member {
            out.push(pid);
        }
    }
    out
}

/// Whether any live process still has session id `sid`.
fn session_alive(sid: i32) -> bool {
    !session_members(sid).is_empty()
}

/// SIGKILLs what a test container left behind in its session.
fn kill_session(sid: i32) {
    for pid in session_members(sid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test]
async fn orphans_die_with_the_container_without_pid_namespace() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    // sh exits at once; the background sleep would outlive it without the group kill.
    let cfg = sb.config(&["sh", "-c", "sleep 300 & echo $!"], &[]);
    let e = run(&sb, &cfg).await;
    assert_eq!(e.code, Some(0));
    let bg: i32 = sb.stdout().trim().parse().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while pid_exists(bg) {
        assert!(Instant::now() < until, "background sleep {bg} survived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hostname_is_set_in_uts_namespace() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let mut cfg = sb.config(&["hostname"], ALL_NS);
    cfg.hostname = Some("berth-box-1".into());
    let e = run(&sb, &cfg).await;
    assert_eq!(e.code, Some(0));
    assert_eq!(sb.stdout(), "berth-box-1\n");
    assert_ne!(
        nix::unistd::gethostname().unwrap().to_string_lossy(),
        "berth-box-1"
    );
}

#[tokio::test]
async fn net_namespace_has_only_loopback_and_it_is_up() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["sh", "-c", "cat /proc/net/dev; ip -o link"], ALL_NS);
    let e = run(&sb, &cfg).await;
    assert_eq!(e.code, Some(0), "stderr: {}", sb.stderr());
    let out = sb.stdout();
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .take_while(|l| l.contains(':') && !l.contains("mtu"))
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{out}");
    let link = out.lines().find(|l| l.contains("mtu")).unwrap_or("");
    assert!(
        link.contains("lo:") && link.contains(",UP"),
        "lo not up: {out}"
    );
}

#[tokio::test]
async fn pid_namespace_shows_only_the_container() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(
        &["sh", "-c", "echo $$; ps -e -o pid= -o comm=; ls /proc"],
        ALL_NS,
    );
    let e = run(&sb, &cfg).await;
    assert_eq!(e.code, Some(0), "stderr: {}", sb.stderr());
    let out = sb.stdout();
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("2"),
        "workload is pid 2 under the init: {out}"
    );
    let ps: Vec<(i32, String)> = lines
        .by_ref()
        .take_while(|l| l.split_whitespace().count() == 2)
        .map(|l| {
            let mut it = l.split_whitespace();
            (
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ps[0].0, 1, "pid 1 is the init: {out}");
    assert!(ps.iter().any(|(p, c)| *p == 2 && c == "sh"), "{out}");
    assert!(ps.len() <= 4, "only the container's processes: {out}");
    let numeric = out
        .split_whitespace()
        .filter_map(|w| w.parse::<i32>().ok())
        .max()
        .unwrap();
    assert!(numeric < 10, "{out}");
}

#[tokio::test]
async fn second_client_gets_exited_too() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["sh", "-c", "echo ready; sleep 0.5"], ALL_NS);
    let (ready, mut a) = spawn_and_connect(&cfg).await;
    start(&mut a, &ready).await;
    sb.wait_stdout("ready").await;
    let mut b = ShimClient::connect(sb.path()).await.unwrap();
    b.send(&ShimRequest::State).await.unwrap();
    assert_eq!(
        next(&mut b).await,
        Some(ShimEvent::State {
            pid: ready.pid,
            started: true,
            exit: None
        })
    );
    // Start is idempotent: answered to the asker only.
    b.send(&ShimRequest::Start).await.unwrap();
    assert_eq!(
        next(&mut b).await,
        Some(ShimEvent::Started { pid: ready.pid })
    );
    assert!(shim_alive(sb.path()));
    let (ea, eb) = tokio::join!(wait_exited(&mut a), wait_exited(&mut b));
    assert_eq!(ea, eb);
    assert_eq!(ea.code, Some(0));
    assert_no_leftovers(&sb, &ready).await;
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_keep_the_connection() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["true"], ALL_NS);
    let (ready, _c) = spawn_and_connect(&cfg).await;
    // Raw socket to send garbage.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let s = tokio::net::UnixStream::connect(sb.path().join("shim.sock"))
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r).lines();
    w.write_all(b"not json\n{\"type\":\"state\"}\n")
        .await
        .unwrap();
    let l1 = r.next_line().await.unwrap().unwrap();
    let ev: ShimEvent = serde_json::from_str(&l1).unwrap();
    assert!(
        matches!(&ev, ShimEvent::Error { message } if message.contains("not json")),
        "{ev:?}"
    );
    let ev: ShimEvent = serde_json::from_str(&r.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        ev,
        ShimEvent::State {
            pid: ready.pid,
            started: false,
            exit: None
        }
    );
    w.write_all(b"{\"type\":\"start\"}\n").await.unwrap();
    let mut saw_exit = false;
    while let Some(l) = r.next_line().await.unwrap() {
        if let ShimEvent::Exited(e) = serde_json::from_str(&l).unwrap() {
            assert_eq!(e.code, Some(0));
            saw_exit = true;
        }
    }
    assert!(saw_exit);
    assert_no_leftovers(&sb, &ready).await;
}

#[tokio::test]
async fn kill_before_start() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["sh", "-c", "echo must-not-run"], ALL_NS);
    let (ready, mut c) = spawn_and_connect(&cfg).await;
    c.send(&ShimRequest::Kill { grace_ms: 10_000 })
        .await
        .unwrap();
    let t0 = Instant::now();
    let e = wait_exited(&mut c).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "no grace before start"
    );
    assert_eq!((e.code, e.signal), (None, Some(9)));
    assert!(e.killed_by_request);
    assert_eq!(e.launch_error, None);
    assert_eq!(sb.stdout(), "");
    assert_eq!(read_exit(sb.path()).unwrap(), Some(e));
    assert_no_leftovers(&sb, &ready).await;
}

#[tokio::test]
async fn exit_json_is_persisted_and_readable_after_the_shim_exited() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["sh", "-c", "exit 42"], ALL_NS);
    let (ready, mut c) = spawn_and_connect(&cfg).await;
    assert_eq!(read_exit(sb.path()).unwrap(), None);
    assert!(shim_alive(sb.path()));
    start(&mut c, &ready).await;
    let e = wait_exited(&mut c).await;
    drop(c);
    assert_no_leftovers(&sb, &ready).await;
    // The shim is gone; a fresh reader (e.g. a restarted agent) finds the record.
    let on_disk = read_exit(sb.path()).unwrap().expect("exit.json");
    assert_eq!(on_disk, e);
    assert_eq!(on_disk.code, Some(42));
    let raw = std::fs::read_to_string(sb.path().join("exit.json")).unwrap();
    assert!(raw.contains("\"code\":42"), "{raw}");
    assert!(!sb.path().join("exit.json.tmp").exists());
    // Connecting now fails cleanly.
    assert!(matches!(
        ShimClient::connect(sb.path()).await,
        Err(ClientError::Connect { .. })
    ));
}

#[tokio::test]
async fn bad_config_fails_spawn_with_the_log_tail() {
    // No namespaces are created: runs without root.
    let sb = Sandbox::new();
    let cfg = sb.config(&["true"], &["bogus-ns"]);
    let err = spawn_shim(&bin(), &cfg).await.unwrap_err();
    match &err {
        ClientError::ShimDied { status, tail, .. } => {
            assert!(status.contains('2'), "{status}");
            assert!(tail.contains("unknown namespace \"bogus-ns\""), "{tail}");
        }
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("shim.log"), "{msg}");
}

#[tokio::test]
async fn shim_rss_while_a_sleep_runs() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["sleep", "300"], ALL_NS);
    let (ready, mut c) = spawn_and_connect(&cfg).await;
    start(&mut c, &ready).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", ready.shim_pid)).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (rss, anon, file) = (field("VmRSS:"), field("RssAnon:"), field("RssFile:"));
    // Proportional and private sizes: file pages (libc, the binary) are shared by all shims.
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", ready.shim_pid))
        .unwrap_or_default();
    let roll = |name: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    println!(
        "berth-executor ({}) while `sleep` runs: VmRSS {rss} kB (anon {anon} kB, file {file} kB), \
         Pss {} kB, Private {} kB",
        bin().display(),
        roll("Pss:"),
        roll("Private_Clean:") + roll("Private_Dirty:"),
    );
    assert!(rss > 0 && rss < 4096, "shim RSS {rss} kB");
    c.send(&ShimRequest::Kill { grace_ms: 0 }).await.unwrap();
    let e = wait_exited(&mut c).await;
    assert_eq!(e.signal, Some(9));
    assert_no_leftovers(&sb, &ready).await;
}

#[tokio::test]
async fn shim_death_before_start_releases_nothing() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let cfg = sb.config(&["sh", "-c", "echo must-not-run"], ALL_NS);
    let (ready, _c) = spawn_and_connect(&cfg).await;
    assert!(shim_alive(sb.path()));
    // The agent (or the OOM killer) kills the shim: the init sees EOF on the sync pipe and
    // exits 127 without exec'ing the workload.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ready.shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while pid_alive(ready.pid) || pid_exists(ready.shim_pid) {
        assert!(Instant::now() < until, "init or shim survived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!shim_alive(sb.path()));
    assert_eq!(sb.stdout(), "");
    assert_eq!(
        read_exit(sb.path()).unwrap(),
        None,
        "nobody recorded an exit"
    );
}

#[tokio::test]
async fn shim_death_after_start_takes_the_container_down() {
    if !require_root() {
        return;
    }
    for ns in [ALL_NS, &[][..]] {
        let sb = Sandbox::new();
        let cfg = sb.config(&["sh", "-c", "echo $$; echo ready; sleep 300"], ns);
        let (ready, mut c) = spawn_and_connect(&cfg).await;
        start(&mut c, &ready).await;
        sb.wait_stdout("ready").await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(ready.shim_pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(next(&mut c).await, None);
        let sh: i32 = sb.stdout().lines().next().unwrap().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        // With a pid namespace the whole container dies with its init. Without one only the
        // init and the workload's main process do (pdeathsig); what the workload forked
        // (`sleep 300` here) survives: known limitation, the containerizer's cgroup kill is the
        // backstop. Clean it up ourselves.
        let gone = |ns: &[&str]| {
            // (with a pid namespace `sh` is pid 2 there, not a host pid)
            !pid_alive(ready.pid)
                && if ns.is_empty() {
                    !pid_alive(sh)
                } else {
                    !session_alive(ready.pid)
                }
        };
        while !gone(ns) {
            assert!(
                Instant::now() < until,
                "container survived its shim (ns {ns:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if ns.is_empty() {
            kill_session(ready.pid);
        }
    }
}
