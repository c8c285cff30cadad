//! End-to-end tests of `berth oci` (berth as an OCI runtime) through the real binaries, on a
//! busybox-static bundle built by the test: the lifecycle and `state` documents, `run` exit codes
//! and signal deaths, the process settings (user, groups, env, cwd, rlimits, hostname), mounts,
//! read-only root, masked and read-only paths, hooks and their order, the console socket, `exec`,
//! `ps`, `kill --all`, `delete --force`, resources in the cgroups, and bad input.
//!
//! Every container's cgroups go under `<own cgroup>/berth-t<pid>-<n>/` (a relative
//! `cgroupsPath`), removed by the fixture; tests that look at cgroups are named `cgroup_oci_*` so
//! the cgroup v2 microVM phase runs them too. Needs root and the Debian package busybox-static.

use std::fs;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_tests::{
    Value, berth_bin, own_cgroup_dirs, processes_mentioning, remove_cgroup_tree,
    require_privileges, scaled, wait_until,
};
use serde_json::json;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Applets linked in the rootfs.
const APPLETS: [&str; 16] = [
    "sh", "true", "echo", "cat", "id", "hostname", "sleep", "ps", "mount", "touch", "ls", "pwd",
    "grep", "tty", "kill", "head",
];

fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox is not installed: install the Debian package `busybox-static`");
}

/// What a `berth oci` invocation did.
#[derive(Debug)]
struct Out {
    code: i32,
    /// Where stdout went (a container created by this invocation writes there too).
    out_path: PathBuf,
    stdout: String,
    stderr: String,
    args: Vec<String>,
}

impl Out {
    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{self}");
        self
    }
    #[track_caller]
    fn fails_with(&self, needle: &str) -> &Self {
        assert_eq!(self.code, 1, "{self}");
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{self}"
        );
        self
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ berth oci {}\nexit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// A temp dir with a busybox bundle, a state root and a cgroup base; tears down everything.
struct Env {
    dir: tempfile::TempDir,
    tag: String,
}

impl Env {
    fn new() -> Env {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("berth-t{}-oci{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-test-{}-oci-", std::process::id()))
            .tempdir_in("/tmp")
            .unwrap();
        let env = Env { dir, tag };
        let bin = env.rootfs().join("bin");
        fs::create_dir_all(&bin).unwrap();
        for d in ["tmp", "etc", "work", "data"] {
            fs::create_dir_all(env.rootfs().join(d)).unwrap();
        }
        fs::copy(busybox(), bin.join("busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
        }
        // The default config of `berth oci spec`, kept as the base of every config.
        env.oci(&["spec", "--bundle", env.bundle().to_str().unwrap()])
            .ok();
        fs::copy(env.bundle().join("config.json"), env.path("spec.json")).unwrap();
        env
    }
    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }
    fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Rewrites config.json: the spec default, terminal off, `args`, the test's cgroup base,
    /// then `edit`.
    fn config(&self, id: &str, args: &[&str], edit: impl FnOnce(&mut Value)) {
        let path = self.bundle().join("config.json");
        let mut v: Value =
            serde_json::from_slice(&fs::read(self.path("spec.json")).unwrap()).unwrap();
        v["process"]["terminal"] = json!(false);
        v["process"]["args"] = json!(args);
        v["linux"]["cgroupsPath"] = json!(format!("{}/{id}", self.tag));
        v["root"]["readonly"] = json!(false);
        edit(&mut v);
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// `berth oci --root <root> ARGS` with stdin from /dev/null and stdout/stderr in files (a
    /// container created here inherits them, so no pipe is held open).
    fn oci(&self, args: &[&str]) -> Out {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let out_path = self.path(&format!("out-{n}"));
        let err_path = self.path(&format!("err-{n}"));
        let mut cmd = Command::new(berth_bin());
        cmd.arg("oci")
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth oci {args:?} timed out");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        use std::os::unix::process::ExitStatusExt;
        Out {
            out_path: out_path.clone(),
            code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn bundle_arg(&self) -> String {
        self.bundle().to_string_lossy().into_owned()
    }

    fn state(&self, id: &str) -> Value {
        self.oci(&["state", id]).ok().json()
    }

    fn wait_status(&self, id: &str, status: &str) {
        wait_until(
            &format!("{id} to be {status}"),
            Duration::from_secs(20),
            || {
                let out = self.oci(&["state", id]);
                (out.code == 0 && out.json()["status"] == status).then_some(())
            },
        );
    }

    /// The container's cgroup directories.
    fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        own_cgroup_dirs()
            .into_iter()
            .map(|d| d.join(&self.tag).join(id))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Nothing of the containers is left: no state, no process, no cgroup leaf.
    #[track_caller]
    fn assert_clean(&self) {
        let left: Vec<_> = fs::read_dir(self.root())
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "state left in {}: {left:?}",
            self.root().display()
        );
        let procs = processes_mentioning(&[&self.root()]);
        assert!(procs.is_empty(), "processes left: {procs:?}");
        for d in own_cgroup_dirs() {
            let base = d.join(&self.tag);
            let leaves: Vec<_> = fs::read_dir(&base)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            assert!(leaves.is_empty(), "cgroups left: {leaves:?}");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(rd) = fs::read_dir(self.root()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !id.starts_with('.') {
                    let _ = self.oci(&["delete", "--force", &id]);
                }
            }
        }
        for (pid, _) in processes_mentioning(&[&self.root()]) {
            // SAFETY: kill(2) of a shim whose command line names this test's state root.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for d in own_cgroup_dirs() {
            remove_cgroup_tree(&d.join(&self.tag));
        }
    }
}

#[test]
fn cgroup_oci_lifecycle_and_state() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    env.config(
        "life",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo started; while true; do sleep 0.05; done",
        ],
        |_| {},
    );
    let pid_file = env.path("life.pid");
    let create = env.oci(&[
        "create",
        "--bundle",
        &env.bundle_arg(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "life",
    ]);
    create.ok();
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = env.state("life");
    assert_eq!(s["ociVersion"], "1.2.0");
    assert_eq!(s["id"], "life");
    assert_eq!(s["status"], "created");
    assert_eq!(s["pid"], pid);
    assert_eq!(s["bundle"], env.bundle_arg());
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // Created: in its cgroups already, not yet running the command.
    let cg = env.cgroup_dirs("life");
    assert!(!cg.is_empty());
    let procs = fs::read_to_string(cg[0].join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "{procs}"
    );
    // Start is only for created containers; twice is an error.
    env.oci(&["start", "life"]).ok();
    assert_eq!(env.state("life")["status"], "running");
    env.oci(&["start", "life"]).fails_with("running");
    // A running container is not deleted without --force.
    env.oci(&["delete", "life"]).fails_with("running");
    // kill: SIGTERM by default; the trap exits 3.
    env.oci(&["kill", "life"]).ok();
    env.wait_status("life", "stopped");
    let s = env.state("life");
    assert!(s.get("pid").is_none(), "{s}");
    env.oci(&["kill", "life", "KILL"]).fails_with("stopped");
    // The container wrote to the stdout it inherited from `create`.
    let out = fs::read_to_string(&create.out_path).unwrap();
    assert_eq!(out, "started\ngot-term\n");
    env.oci(&["delete", "life"]).ok();
    env.oci(&["state", "life"]).fails_with("does not exist");
    env.assert_clean();
}

#[test]
fn oci_run_exit_codes_and_signals() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    env.config(
        "r1",
        &["sh", "-c", "echo out-line; echo err-line >&2; exit 7"],
        |_| {},
    );
    let out = env.oci(&["run", "--bundle", &env.bundle_arg(), "r1"]);
    assert_eq!(out.code, 7, "{out}");
    assert!(out.stdout.contains("out-line"), "{out}");
    assert!(out.stderr.contains("err-line"), "{out}");
    env.assert_clean();

    // Killed from outside: 128 + 9.
    env.config("r2", &["sleep", "1000"], |_| {});
    let bundle = env.bundle_arg();
    let root = env.root();
    let runner = std::thread::spawn(move || {
        let out = Command::new(berth_bin())
            .args(["oci", "--root"])
            .arg(&root)
            .args(["run", "--bundle", &bundle, "r2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        out.code()
    });
    env.wait_status("r2", "running");
    env.oci(&["kill", "r2", "9"]).ok();
    assert_eq!(runner.join().unwrap(), Some(137));
    env.assert_clean();

    // A command that does not exist fails create, with the reason.
    env.config("r3", &["no-such-command"], |_| {});
    env.oci(&["run", "--bundle", &env.bundle_arg(), "r3"])
        .fails_with("no-such-command");
    env.assert_clean();
}

#[test]
fn oci_process_settings() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    let script = "id; echo FOO=$FOO; pwd; echo nofile=$(ulimit -Sn)/$(ulimit -Hn); hostname; \
                  grep CapEff /proc/self/status";
    env.config("p1", &["sh", "-c", script], |v| {
        v["process"]["user"] = json!({"uid": 1234, "gid": 567, "additionalGids": [5, 6]});
        v["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
        v["process"]["cwd"] = json!("/work");
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
        v["hostname"] = json!("oci-host");
    });
    let out = env.oci(&["run", "--bundle", &env.bundle_arg(), "p1"]);
    out.ok();
    let o = &out.stdout;
    assert!(o.contains("uid=1234 gid=567 groups=5,6"), "{out}");
    assert!(o.contains("FOO=bar baz"), "{out}");
    assert!(o.contains("\n/work\n"), "{out}");
    assert!(o.contains("nofile=123/456"), "{out}");
    assert!(o.contains("oci-host"), "{out}");
    // The spec's default capabilities (AUDIT_WRITE, KILL, NET_BIND_SERVICE) stay effective
    // for the non-root user, as runc gives them.
    assert!(o.contains("CapEff:\t0000000020000420"), "{out}");
    env.assert_clean();
}

#[test]
fn oci_mounts_readonly_root_masked_paths() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    let host_dir = env.path("shared");
    fs::create_dir(&host_dir).unwrap();
    fs::write(host_dir.join("hello"), "from-host").unwrap();
    let script = "cat /shared/hello; echo; touch /shared/x 2>/dev/null && echo shared-rw || echo shared-ro; \
                  echo data > /scratch/f && cat /scratch/f; \
                  touch /rootfile 2>/dev/null && echo root-rw || echo root-ro; \
                  echo kcore=$(head -c 10 /proc/kcore | wc -c); ls /proc/acpi | wc -l; \
                  echo 1 > /proc/sys/kernel/ostype 2>/dev/null && echo sys-rw || echo sys-ro; \
                  grep -c ' /scratch tmpfs' /proc/mounts";
    env.config("m1", &["sh", "-c", script], |v| {
        v["root"]["readonly"] = json!(true);
        let m = v["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/shared", "type": "bind",
                      "source": host_dir, "options": ["rbind", "ro"]}));
        m.push(
            json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                      "options": ["size=1m", "mode=1777"]}),
        );
    });
    // wc is not linked: add it.
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/wc")).unwrap();
    let out = env.oci(&["run", "--bundle", &env.bundle_arg(), "m1"]);
    out.ok();
    let o = &out.stdout;
    assert!(o.contains("from-host"), "{out}");
    assert!(o.contains("shared-ro"), "{out}");
    assert!(o.contains("\ndata\n"), "{out}");
    assert!(o.contains("root-ro"), "{out}");
    assert!(o.contains("kcore=0"), "{out}");
    assert!(o.contains("sys-ro"), "{out}");
    assert!(!host_dir.join("x").exists());
    env.assert_clean();
}

#[test]
fn oci_hooks_run_in_order_with_state() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    let log_dir = env.path("hooklog");
    fs::create_dir(&log_dir).unwrap();
    fs::set_permissions(&log_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let host_log = log_dir.join("hooks.log");
    let bb = busybox();
    // Each hook appends "<kind> <status from the state on stdin>"; host hooks write the host
    // path, container hooks the same directory bound at /hooklog.
    let hook = |kind: &str, path: &str| {
        json!({
            "path": bb,
            "args": ["sh", "-c", format!(
                "s=$(cat); s=${{s#*\\\"status\\\":\\\"}}; echo \"{kind} ${{s%%\\\"*}}\" >> {path}")],
        })
    };
    let host = host_log.to_str().unwrap();
    env.config("h1", &["sleep", "1000"], |v| {
        v["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/hooklog", "type": "bind", "source": log_dir, "options": ["rbind"]}));
        v["hooks"] = json!({
            "prestart": [hook("prestart", host)],
            "createRuntime": [hook("createRuntime", host)],
            "createContainer": [hook("createContainer", "/hooklog/hooks.log")],
            "startContainer": [hook("startContainer", "/hooklog/hooks.log")],
            "poststart": [hook("poststart", host)],
            "poststop": [hook("poststop", host)],
        });
    });
    let bundle = env.bundle_arg();
    env.oci(&["create", "--bundle", &bundle, "h1"]).ok();
    env.oci(&["start", "h1"]).ok();
    env.oci(&["delete", "--force", "h1"]).ok();
    let log = fs::read_to_string(&host_log).unwrap();
    assert_eq!(
        log,
        "prestart created\ncreateRuntime creating\ncreateContainer creating\n\
         startContainer created\npoststart running\npoststop stopped\n",
        "hook log"
    );
    env.assert_clean();

    // A hook over its timeout fails create, and nothing is left.
    env.config("h2", &["true"], |v| {
        v["hooks"] =
            json!({"createRuntime": [{"path": bb, "args": ["sleep", "600"], "timeout": 1}]});
    });
    env.oci(&["create", "--bundle", &bundle, "h2"])
        .fails_with("timed out");
    env.assert_clean();
    // A failing hook names itself.
    env.config("h3", &["true"], |v| {
        v["hooks"] =
            json!({"prestart": [{"path": bb, "args": ["sh", "-c", "echo nope >&2; exit 4"]}]});
    });
    env.oci(&["create", "--bundle", &bundle, "h3"])
        .fails_with("prestart hook #0");
    env.assert_clean();
}

/// Receives one descriptor sent over a connection to `listener` (runc's console protocol).
fn recv_fd(listener: &UnixListener) -> (OwnedFd, String) {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fd = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            fd = fds.first().copied();
        }
    }
    let n = msg.bytes;
    // SAFETY: the descriptor was just received for us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd.expect("no descriptor received")) };
    (fd, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn oci_terminal_through_console_socket() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    let sock = env.path("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    env.config(
        "t1",
        &["sh", "-c", "tty; echo hi-from-tty; stty size"],
        |v| {
            v["process"]["terminal"] = json!(true);
            v["process"]["consoleSize"] = json!({"height": 33, "width": 99});
        },
    );
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/stty")).unwrap();
    env.oci(&[
        "create",
        "--bundle",
        &env.bundle_arg(),
        "--console-socket",
        sock.to_str().unwrap(),
        "t1",
    ])
    .ok();
    let (master, name) = recv_fd(&listener);
    assert!(name.starts_with("/dev/pts/"), "{name}");
    env.oci(&["start", "t1"]).ok();
    let mut out = Vec::new();
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        match nix::unistd::read(&master, &mut buf) {
            Ok(0) | Err(_) => break, // EIO once the container closed the terminal
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/console"), "{text:?}");
    assert!(text.contains("hi-from-tty"), "{text:?}");
    assert!(text.contains("33 99"), "{text:?}");
    env.wait_status("t1", "stopped");
    env.oci(&["delete", "t1"]).ok();
    // Without a console socket, a terminal cannot be created.
    env.oci(&["create", "--bundle", &env.bundle_arg(), "t2"])
        .fails_with("console-socket");
    env.assert_clean();
}

#[test]
fn cgroup_oci_exec_ps_kill_all() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    env.config(
        "e1",
        &["sh", "-c", "while true; do sleep 0.05; done"],
        |v| {
            v["process"]["env"] = json!(["PATH=/bin", "IN_CONFIG=yes"]);
        },
    );
    env.oci(&["run", "-d", "--bundle", &env.bundle_arg(), "e1"])
        .ok();
    assert_eq!(env.state("e1")["status"], "running");
    // exec: the container's namespaces, env and an extra variable, cwd, exit code.
    std::os::unix::fs::symlink("busybox", env.rootfs().join("bin/tr")).unwrap();
    let out = env.oci(&[
        "exec", "--env", "EXTRA=1", "--cwd", "/tmp", "e1", "sh", "-c",
        "echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' '); echo $IN_CONFIG $EXTRA; pwd; hostname; exit 5",
    ]);
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stdout.contains("yes 1"), "{out}");
    assert!(out.stdout.contains("/tmp"), "{out}");
    assert!(out.stdout.contains("berth"), "{out}"); // the container's hostname
    // A detached exec joins the container's cgroups: ps lists it.
    let pid_file = env.path("exec.pid");
    env.oci(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "e1",
        "sleep",
        "1000",
    ])
    .ok();
    let exec_pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pids: Vec<i32> =
        serde_json::from_value(env.oci(&["ps", "--format", "json", "e1"]).ok().json()).unwrap();
    let init: i32 = env.state("e1")["pid"].as_i64().unwrap() as i32;
    assert!(
        pids.contains(&init) && pids.contains(&exec_pid),
        "{pids:?} should hold the init {init} and the exec {exec_pid}"
    );
    let table = env.oci(&["ps", "e1"]);
    assert!(table.ok().stdout.contains("sleep 1000"), "{table}");
    // kill --all reaches every process of the container.
    env.oci(&["kill", "--all", "e1", "KILL"]).ok();
    env.wait_status("e1", "stopped");
    wait_until("the exec'd process to die", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{exec_pid}")).exists()).then_some(())
    });
    // exec into a stopped container is refused.
    env.oci(&["exec", "e1", "true"]).fails_with("stopped");
    env.oci(&["delete", "e1"]).ok();
    env.assert_clean();
}

#[test]
fn cgroup_oci_delete_force_running_and_resources() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    env.config("d1", &["sleep", "1000"], |v| {
        v["linux"]["resources"] = json!({
            "memory": {"limit": 67108864},
            "pids": {"limit": 32},
            "cpu": {"quota": 50000, "period": 100000}
        });
    });
    env.oci(&["run", "-d", "--bundle", &env.bundle_arg(), "d1"])
        .ok();
    let dirs = env.cgroup_dirs("d1");
    let read = |file: &str| {
        dirs.iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .map(|p| fs::read_to_string(p).unwrap().trim().to_string())
            .unwrap_or_else(|| panic!("no {file} in {dirs:?}"))
    };
    if dirs[0].join("memory.max").exists() || dirs.iter().any(|d| d.join("memory.max").exists()) {
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("cpu.max"), "50000 100000");
    } else {
        assert_eq!(read("memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu.cfs_quota_us"), "50000");
    }
    assert_eq!(read("pids.max"), "32");
    let pid = env.state("d1")["pid"].as_i64().unwrap();
    env.oci(&["delete", "d1"]).fails_with("running");
    env.oci(&["delete", "--force", "d1"]).ok();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    for d in &dirs {
        assert!(!d.exists(), "{} left", d.display());
    }
    // Deleting a created (never started) container needs no force.
    env.oci(&["create", "--bundle", &env.bundle_arg(), "d2"])
        .ok();
    env.oci(&["delete", "d2"]).ok();
    env.assert_clean();
}

#[test]
fn oci_bad_input_is_refused_cleanly() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    let bundle = env.bundle_arg();
    env.oci(&["create", "--bundle", "/nonexistent-bundle", "b1"])
        .fails_with("/nonexistent-bundle");
    for id in ["b1", "nope"] {
        env.oci(&["state", id]).fails_with("does not exist");
        env.oci(&["start", id]).fails_with("does not exist");
        env.oci(&["kill", id]).fails_with("does not exist");
        env.oci(&["delete", id]).fails_with("does not exist");
    }
    env.oci(&["delete", "--force", "nope"]).ok();
    env.oci(&["create", "--bundle", &bundle, "../evil"])
        .fails_with("invalid container id");
    env.oci(&["kill", "x", "SIGNOPE"])
        .fails_with("unknown signal");

    // Invalid JSON, and a valid JSON config berth refuses (a mount without a type).
    let cfg = env.bundle().join("config.json");
    let good = fs::read(&cfg).unwrap();
    fs::write(&cfg, b"{ not json").unwrap();
    env.oci(&["create", "--bundle", &bundle, "b2"])
        .fails_with("invalid config");
    fs::write(&cfg, &good).unwrap();
    env.config("b3", &["true"], |v| {
        v["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/x"}));
    });
    env.oci(&["create", "--bundle", &bundle, "b3"])
        .fails_with("no filesystem type");
    // A mount the kernel refuses fails create with the init's own report.
    env.config("b4", &["true"], |v| {
        v["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/x", "type": "nosuchfs", "source": "none"}));
    });
    env.oci(&["create", "--bundle", &bundle, "b4"])
        .fails_with("nosuchfs");
    env.assert_clean();

    // Duplicate id: refused, the first one untouched.
    env.config("dup", &["sleep", "1000"], |_| {});
    env.oci(&["create", "--bundle", &bundle, "dup"]).ok();
    env.oci(&["create", "--bundle", &bundle, "dup"])
        .fails_with("already exists");
    assert_eq!(env.state("dup")["status"], "created");
    env.oci(&["delete", "dup"]).ok();
    env.assert_clean();

    // --systemd-cgroup is refused with the reason.
    env.oci(&["--systemd-cgroup", "state", "x"])
        .fails_with("systemd");
}

#[test]
fn oci_spec_list_and_json_log() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    let spec: Value =
        serde_json::from_slice(&fs::read(env.bundle().join("config.json")).unwrap()).unwrap();
    assert!(spec["ociVersion"].is_string());
    assert_eq!(spec["root"]["path"], "rootfs");
    env.oci(&["spec", "--bundle", &env.bundle_arg()])
        .fails_with("exists");
    let features = env.oci(&["features"]).ok().json();
    assert_eq!(features["ociVersionMax"], "1.2.0");
    assert!(features["linux"]["namespaces"].as_array().unwrap().len() == 7);
    env.config("l1", &["sleep", "1000"], |_| {});
    env.oci(&["create", "--bundle", &env.bundle_arg(), "l1"])
        .ok();
    let list = env.oci(&["list", "--format", "json"]).ok().json();
    assert_eq!(list[0]["id"], "l1");
    assert_eq!(list[0]["status"], "created");
    assert_eq!(env.oci(&["list", "-q"]).ok().stdout, "l1\n");
    assert!(env.oci(&["list"]).ok().stdout.contains("created"));
    // Errors also go to --log, as JSON lines with --log-format json.
    let log = env.path("runtime.log");
    env.oci(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "start",
        "nope",
    ])
    .fails_with("does not exist");
    let line: Value =
        serde_json::from_str(fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("nope"));
    env.oci(&["delete", "l1"]).ok();
    env.assert_clean();
}

#[test]
fn oci_join_namespaces_by_path() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    env.config("ns-a", &["sleep", "1000"], |v| {
        v["hostname"] = json!("a-host");
    });
    env.oci(&["run", "-d", "--bundle", &env.bundle_arg(), "ns-a"])
        .ok();
    let a_pid = env.state("ns-a")["pid"].as_i64().unwrap();
    // B joins A's uts and pid namespaces by path, creates the others.
    env.config("ns-b", &["sh", "-c", "hostname; ps -o pid,args"], |v| {
        v["hostname"] = json!(null);
        v["linux"]["namespaces"] = json!([
            {"type": "mount"}, {"type": "ipc"}, {"type": "network"},
            {"type": "uts", "path": format!("/proc/{a_pid}/ns/uts")},
            {"type": "pid", "path": format!("/proc/{a_pid}/ns/pid")},
        ]);
    });
    let out = env.oci(&["run", "--bundle", &env.bundle_arg(), "ns-b"]);
    out.ok();
    assert!(out.stdout.contains("a-host"), "{out}");
    // A's process is pid 1 of the shared pid namespace.
    assert!(out.stdout.contains("1 sleep 1000"), "{out}");
    // A path that is no namespace fails create.
    env.config("ns-c", &["true"], |v| {
        v["hostname"] = json!(null);
        v["linux"]["namespaces"] = json!([
            {"type": "mount"}, {"type": "uts", "path": "/nonexistent-ns"}]);
    });
    env.oci(&["create", "--bundle", &env.bundle_arg(), "ns-c"])
        .fails_with("/nonexistent-ns");
    env.oci(&["delete", "--force", "ns-a"]).ok();
    env.assert_clean();
}

#[test]
fn oci_exec_tty_console_socket_and_preserve_fds() {
    if !require_privileges() {
        return;
    }
    let env = Env::new();
    env.config("x1", &["sleep", "1000"], |_| {});
    env.oci(&["run", "-d", "--bundle", &env.bundle_arg(), "x1"])
        .ok();
    // exec -t with a console socket: the master comes over the socket, output through it.
    let sock = env.path("exec-console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let out = env.oci(&[
        "exec",
        "-t",
        "--console-socket",
        sock.to_str().unwrap(),
        "x1",
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 4",
    ]);
    assert_eq!(out.code, 4, "{out}");
    let (master, _) = recv_fd(&listener);
    let mut buf = [0u8; 512];
    let mut text = Vec::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 2000) } <= 0 {
            break;
        }
        match nix::unistd::read(&master, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("stdin-is-a-tty"), "{text:?}");
    // The terminal is the container's own (its devpts), as `tty` sees it.
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    env.oci(&["delete", "--force", "x1"]).ok();

    // --preserve-fds 1: the caller's descriptor 3 is the container's descriptor 3.
    env.config("x2", &["sh", "-c", "echo through-fd-3 >&3"], |_| {});
    let file = env.path("fd3.txt");
    let cmd = format!(
        "exec 3>{} && exec {} oci --root {} run --preserve-fds 1 --bundle {} x2",
        file.display(),
        berth_bin().display(),
        env.root().display(),
        env.bundle_arg()
    );
    let status = Command::new("sh")
        .args(["-c", &cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "through-fd-3\n");
    env.assert_clean();
}
