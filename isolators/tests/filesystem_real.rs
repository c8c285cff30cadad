//! The filesystem, user namespace and namespaces isolators' real launch plans, carried out by
//! the real `berth-executor` shim: what a container sees at `/mnt/mesos/sandbox`, `/dev`,
//! `/etc`, `/sys`, the agent's directories, its volumes, its uid.
//!
//! Needs root and the shim binary (`cargo build -p berth-executor`; found next to this test's
//! `deps/` directory, or at `$BERTH_EXECUTOR_BIN`). Without them the tests FAIL saying why,
//! unless `BERTH_TEST_ALLOW_SKIP=1`. `prepare` makes the sandbox's mount point
//! `/mnt/mesos/sandbox` in the host's root, as in production; the tests remove `/mnt/mesos`
//! again if it was not there before (they run one at a time for that).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use berth_executor::{ExitStatus, ShimConfig, ShimEvent};
use berth_isolators::filesystem::{FilesystemIsolator, FilesystemPaths, SANDBOX_IN_CONTAINER};
use berth_isolators::namespaces::NamespacesIsolator;
use berth_isolators::userns::{IdRange, UserNamespaceIsolator};
use berth_isolators::{
    ContainerSpec, IsolationOptions, Isolator, LaunchInfo, Limits, NetworkMode, VolumeSpec,
};

/// One test at a time: they share the host's /mnt/mesos.
static SERIAL: Mutex<()> = Mutex::new(());

fn shim_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BERTH_EXECUTOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("berth-executor"))
        .ok_or("no target dir")?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: run `cargo build -p berth-executor` first",
            p.display()
        ))
    }
}

/// The shim binary, or None (skip) with BERTH_TEST_ALLOW_SKIP=1; panics otherwise.
fn can_run() -> Option<PathBuf> {
    let why = if !nix::unistd::geteuid().is_root() {
        "needs root (mount and user namespaces)".to_string()
    } else {
        match shim_bin() {
            Ok(p) => return Some(p),
            Err(e) => e,
        }
    };
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): {why}");
        return None;
    }
    panic!("filesystem test cannot run: {why} (set BERTH_TEST_ALLOW_SKIP=1 to skip)");
}

fn host_mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// The agent's layout under `/tmp/berth-test-<pid>-<name>`, the isolators, and cleanup.
struct Agent {
    base: PathBuf,
    work: PathBuf,
    runtime: PathBuf,
    isolators: Vec<Box<dyn Isolator>>,
    mnt_mesos_existed: bool,
}

impl Agent {
    fn new(name: &str) -> Agent {
        let base = PathBuf::from(format!("/tmp/berth-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let work = base.join("work");
        let runtime_dir = base.join("run");
        let runtime = runtime_dir.join("containers");
        std::fs::create_dir_all(work.join("sandboxes")).unwrap();
        std::fs::create_dir_all(&runtime).unwrap();
        for d in [
            &base,
            &work,
            &work.join("sandboxes"),
            &runtime_dir,
            &runtime,
        ] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let fs = FilesystemIsolator::new(FilesystemPaths::new(
            vec![work.clone(), runtime_dir],
            runtime.clone(),
        ))
        .unwrap();
        let userns = UserNamespaceIsolator::new(IdRange::DEFAULT, runtime.clone()).unwrap();
        Agent {
            base,
            work,
            runtime,
            isolators: vec![Box::new(NamespacesIsolator), Box::new(userns), Box::new(fs)],
            mnt_mesos_existed: Path::new("/mnt/mesos").exists(),
        }
    }

    fn spec(&self, id: &str, network: NetworkMode, options: IsolationOptions) -> ContainerSpec {
        let sandbox = self.work.join("sandboxes").join(id);
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::create_dir_all(self.runtime.join(id)).unwrap();
        ContainerSpec {
            id: id.into(),
            limits: Limits::default(),
            network,
            hostname: id.into(),
            sandbox,
            options,
            image: None,
        }
    }

    /// prepare → shim → start → exit, like the containerizer. Returns the exit and stdout.
    fn run(&self, bin: &Path, spec: &ContainerSpec, script: &str) -> (ExitStatus, String) {
        let mut info = LaunchInfo::default();
        for iso in &self.isolators {
            info.merge(iso.prepare(spec).expect("prepare"));
        }
        let state = self.runtime.join(&spec.id);
        let cfg = ShimConfig {
            container_id: spec.id.clone(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![(
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            )],
            cwd: info.sandbox_in_container.clone(),
            namespaces: info
                .namespaces
                .iter()
                .map(|n| {
                    serde_json::to_value(n)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect(),
            hostname: info.hostname.clone(),
            stdout_path: spec.sandbox.join("stdout"),
            stderr_path: spec.sandbox.join("stderr"),
            state_dir: state.clone(),
            id_maps: info.id_maps.clone(),
            filesystem: info.filesystem.clone(),
            security: info.security_plan(),
            ns_paths: Vec::new(),
            oci: None,
        };
        let cfg_path = state.join("shim.json");
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let log = std::fs::File::create(state.join("shim.log")).unwrap();
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert!(
            ready.contains("shim_pid"),
            "no ready line; shim.log: {}",
            std::fs::read_to_string(state.join("shim.log")).unwrap_or_default()
        );
        let mut sock = UnixStream::connect(state.join("shim.sock")).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        sock.write_all(b"{\"type\":\"start\"}\n").unwrap();
        let mut exit = None;
        for line in BufReader::new(sock).lines() {
            let line = line.expect("reading shim events (timed out?)");
            if let ShimEvent::Exited(e) = serde_json::from_str(&line).unwrap() {
                exit = Some(e);
                break;
            }
        }
        child.wait().unwrap();
        for iso in self.isolators.iter().rev() {
            iso.cleanup(&spec.id).expect("cleanup");
        }
        let out = std::fs::read_to_string(spec.sandbox.join("stdout")).unwrap_or_default();
        (exit.expect("no Exited event"), out)
    }

    fn assert_no_host_mounts(&self) {
        let left = host_mounts_mentioning(self.base.to_str().unwrap());
        assert!(left.is_empty(), "mounts leaked into the host: {left:#?}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if host_mounts_mentioning(self.base.to_str().unwrap()).is_empty() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
        if !self.mnt_mesos_existed {
            let _ = std::fs::remove_dir("/mnt/mesos/sandbox");
            let _ = std::fs::remove_dir("/mnt/mesos");
        }
    }
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name}: line in {out}"))
        .trim()
}

#[test]
fn user_namespace_container_with_volumes() {
    let Some(bin) = can_run() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::new("iso-userns");
    let ro_src = agent.base.join("ro-src");
    std::fs::create_dir(&ro_src).unwrap();
    std::fs::write(ro_src.join("file"), "r").unwrap();
    let spec = agent.spec(
        "c1",
        NetworkMode::None,
        IsolationOptions {
            user_namespace: true,
            volumes: vec![
                VolumeSpec {
                    host: "data".into(),
                    container: "vol".into(),
                    read_only: false,
                },
                VolumeSpec {
                    host: ro_src.clone(),
                    container: "/tmp/ro".into(),
                    read_only: true,
                },
            ],
            ..Default::default()
        },
    );
    std::fs::create_dir(spec.sandbox.join("data")).unwrap();
    let script = format!(
        "echo uid:$(id -u); echo cwd:$(pwd); echo made > here && echo write:ok; \
         echo v > vol/x && echo vol:ok; echo ro:$(cat /tmp/ro/file); \
         echo x > /tmp/ro/file 2>/dev/null; echo rowrite:$?; \
         echo x > /etc/berth-test 2>/dev/null; echo etc:$?; \
         echo work:$(ls -A {work} | wc -l); \
         echo cg:$(grep -vc ':/$' /proc/self/cgroup); \
         echo dev:$(ls -A /dev | sort | tr '\\n' ' ')",
        work = agent.work.display()
    );
    let (exit, out) = agent.run(&bin, &spec, &script);
    assert_eq!(
        (exit.code, exit.launch_error.as_deref()),
        (Some(0), None),
        "{out}\nstderr: {}",
        std::fs::read_to_string(spec.sandbox.join("stderr")).unwrap_or_default()
    );
    assert_eq!(field(&out, "uid"), "0", "{out}");
    assert_eq!(field(&out, "cwd"), SANDBOX_IN_CONTAINER);
    assert_eq!(field(&out, "write"), "ok");
    assert_eq!(field(&out, "vol"), "ok");
    assert_eq!(field(&out, "ro"), "r");
    assert_ne!(field(&out, "rowrite"), "0");
    assert_ne!(field(&out, "etc"), "0");
    assert_eq!(field(&out, "work"), "0", "work dir hidden: {out}");
    assert_eq!(field(&out, "cg"), "0", "cgroup namespace: {out}");
    assert_eq!(
        field(&out, "dev"),
        "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    let owner = std::fs::metadata(spec.sandbox.join("here")).unwrap();
    assert_eq!((owner.uid(), owner.gid()), (100000, 100000));
    assert_eq!(
        std::fs::read_to_string(spec.sandbox.join("data/x")).unwrap(),
        "v\n"
    );
    assert!(!Path::new("/etc/berth-test").exists());
    assert!(
        !agent.runtime.join("c1/rootfs").exists(),
        "cleanup removes the root"
    );
    agent.assert_no_host_mounts();
}

#[test]
fn host_network_container_sees_the_host_sys_read_only() {
    let Some(bin) = can_run() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::new("iso-hostnet");
    let spec = agent.spec("c2", NetworkMode::Host, IsolationOptions::default());
    let script = "echo net:$(ls /sys/class/net | sort | tr '\\n' ' '); \
         cat /sys/class/net/lo/mtu > /sys/class/net/lo/mtu 2>/dev/null; echo syswrite:$?; \
         awk '$5 == \"/sys\" {print \"sys:\" $6}' /proc/self/mountinfo; \
         echo uid:$(id -u)";
    let (exit, out) = agent.run(&bin, &spec, script);
    assert_eq!(
        (exit.code, exit.launch_error.as_deref()),
        (Some(0), None),
        "{out}"
    );
    let mut host_net: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_net.sort();
    assert_eq!(field(&out, "net"), host_net.join(" "), "{out}");
    assert_ne!(field(&out, "syswrite"), "0");
    let sys_opts = out
        .lines()
        .filter_map(|l| l.strip_prefix("sys:"))
        .next_back()
        .unwrap();
    assert!(sys_opts.split(',').any(|o| o == "ro"), "{out}");
    // No user namespace asked for: real root.
    assert_eq!(field(&out, "uid"), "0");
    agent.assert_no_host_mounts();
}
