//! Capabilities, no_new_privs, seccomp and rlimits end to end: the plan is built by the real
//! isolators (`berth_isolators::security`), the real `berth-executor` binary applies it, and a
//! probe inside the container shows what the workload got. Needs root; without it every test
//! FAILS unless `BERTH_TEST_ALLOW_SKIP=1`.
//!
//! Uses only tools the test suite installs (tests/install-deps.sh): coreutils, util-linux,
//! iproute2, busybox.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_executor::client::{ShimClient, spawn_shim};
use berth_executor::{
    BpfInstruction, CapabilitySets, ExitStatus, ProcessUser, RlimitSpec, SecurityPlan, ShimConfig,
    ShimEvent, ShimRequest,
};
use berth_isolators::security::{CapabilitiesIsolator, RlimitsIsolator, SeccompIsolator};
use berth_isolators::{
    ContainerSpec, IsolationOptions, Isolator, LaunchInfo, NetworkMode, RlimitRequest,
    SeccompProfile,
};

fn bin() -> PathBuf {
    std::env::var_os("BERTH_EXECUTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-executor")))
}
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const NS: &[&str] = &["pid", "mount"];
const NET_NS: &[&str] = &["net", "pid", "mount"];
const TIMEOUT: Duration = Duration::from_secs(30);
/// containerd's default capability set as a mask (Docker's well-known CapEff).
const DEFAULT_CAPS: u64 = 0xa80425fb;

/// True when the test may run; false (skip) only with BERTH_TEST_ALLOW_SKIP=1.
fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: needs root (capabilities, namespaces); BERTH_TEST_ALLOW_SKIP=1");
        return false;
    }
    panic!(
        "this test needs root to drop capabilities and create namespaces (euid is {}); run it \
         as root, or set BERTH_TEST_ALLOW_SKIP=1 to skip it",
        nix::unistd::geteuid()
    );
}

/// A capability mask line of this process's status (`CapBnd`, `CapEff`).
fn own_caps(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .to_string();
    u64::from_str_radix(&hex, 16).unwrap()
}

/// The security plan the isolators make for `options`, merged as the containerizer does.
fn plan(options: IsolationOptions) -> SecurityPlan {
    let spec = ContainerSpec {
        id: "sec-test".into(),
        limits: Default::default(),
        network: NetworkMode::None,
        hostname: "sec-test".into(),
        sandbox: "/tmp".into(),
        options,
        image: None,
    };
    let isolators: Vec<Box<dyn Isolator>> = vec![
        Box::new(CapabilitiesIsolator::new(Path::new("/proc"))),
        Box::new(SeccompIsolator::new()),
        Box::new(RlimitsIsolator::new()),
    ];
    let mut li = LaunchInfo::default();
    for i in &isolators {
        li.merge(
            i.prepare(&spec)
                .unwrap_or_else(|e| panic!("{} prepare: {e}", i.name())),
        );
    }
    li.security_plan()
}

fn options() -> IsolationOptions {
    IsolationOptions::default()
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("berth-sec-test")
                .tempdir()
                .unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn config(&self, script: &str, ns: &[&str], security: SecurityPlan) -> ShimConfig {
        ShimConfig {
            container_id: "sec-test".into(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), PATH.into())],
            cwd: Some("/".into()),
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            hostname: None,
            stdout_path: self.path().join("stdout"),
            stderr_path: self.path().join("stderr"),
            state_dir: self.path().to_owned(),
            id_maps: None,
            filesystem: None,
            security,
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
}

async fn next(client: &mut ShimClient) -> Option<ShimEvent> {
    tokio::time::timeout(TIMEOUT, client.next_event())
        .await
        .expect("timed out waiting for a shim event")
        .expect("next_event")
}

/// Runs the container to its end; checks the shim and the init are gone afterwards.
async fn run(sb: &Sandbox, cfg: &ShimConfig) -> ExitStatus {
    let ready = spawn_shim(&bin(), cfg).await.expect("spawn_shim");
    let mut c = ShimClient::connect(&cfg.state_dir).await.expect("connect");
    c.send(&ShimRequest::Start).await.unwrap();
    let exit = loop {
        match next(&mut c).await {
            Some(ShimEvent::Exited(e)) => break e,
            Some(_) => continue,
            None => panic!("shim closed the connection without Exited"),
        }
    };
    let until = Instant::now() + Duration::from_secs(5);
    while [ready.shim_pid, ready.pid]
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            Instant::now() < until,
            "shim or init of {} survived",
            sb.path().display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exit
}

/// Runs `script` and returns (exit code, stdout, stderr); fails on a launch error.
async fn sh(script: &str, ns: &[&str], security: SecurityPlan) -> (i32, String, String) {
    let sb = Sandbox::new();
    let e = run(&sb, &sb.config(script, ns, security)).await;
    assert_eq!(e.launch_error, None, "stderr: {}", sb.stderr());
    (e.shell_code(), sb.stdout(), sb.stderr())
}

/// The value of `Field:` in a /proc/PID/status dump.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

const STATUS: &str = "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status";

#[tokio::test]
async fn default_capabilities_no_new_privs_and_seccomp_mode() {
    if !require_root() {
        return;
    }
    let (code, out, err) = sh(STATUS, NS, plan(options())).await;
    assert_eq!(code, 0, "{err}");
    // What the agent lacks cannot be given (this machine has no CAP_SYS_RESOURCE, which is not
    // a default one anyway).
    let want = format!("{:016x}", DEFAULT_CAPS & own_caps("CapBnd"));
    assert_eq!(field(&out, "CapBnd"), want, "{out}");
    assert_eq!(field(&out, "CapEff"), want, "{out}");
    assert_eq!(field(&out, "CapPrm"), want, "{out}");
    assert_eq!(field(&out, "CapInh"), "0000000000000000");
    assert_eq!(field(&out, "CapAmb"), "0000000000000000");
    assert_eq!(field(&out, "NoNewPrivs"), "1");
    assert_eq!(field(&out, "Seccomp"), "2", "filter mode");

    // Unconfined: no filter, still no new privileges.
    let mut o = options();
    o.seccomp = SeccompProfile::Unconfined;
    let (code, out, _) = sh(STATUS, NS, plan(o)).await;
    assert_eq!(code, 0);
    assert_eq!(field(&out, "Seccomp"), "0");
    assert_eq!(field(&out, "NoNewPrivs"), "1");

    // cap_drop ALL + cap_add one.
    let mut o = options();
    o.cap_drop = vec!["ALL".into()];
    o.cap_add = vec!["kill".into()];
    let (_, out, _) = sh(STATUS, NS, plan(o)).await;
    assert_eq!(field(&out, "CapEff"), "0000000000000020");
    assert_eq!(field(&out, "CapBnd"), "0000000000000020");
}

#[tokio::test]
async fn capability_outside_the_agents_bounding_set_is_refused_at_prepare() {
    if !require_root() {
        return;
    }
    let mut o = options();
    o.cap_add = vec!["CAP_SYS_RESOURCE".into()];
    let spec = ContainerSpec {
        id: "c".into(),
        limits: Default::default(),
        network: NetworkMode::None,
        hostname: "h".into(),
        sandbox: "/tmp".into(),
        options: o,
        image: None,
    };
    let res = CapabilitiesIsolator::new(Path::new("/proc")).prepare(&spec);
    if own_caps("CapBnd") & (1 << 24) == 0 {
        let e = res.unwrap_err().to_string();
        assert!(
            e.contains("capability CAP_SYS_RESOURCE is not available to the agent"),
            "{e}"
        );
    } else {
        assert!(res.is_ok(), "the agent has CAP_SYS_RESOURCE here");
    }
}

#[tokio::test]
async fn net_admin_is_needed_to_add_a_link_in_the_containers_netns() {
    if !require_root() {
        return;
    }
    let pid = std::process::id();
    let (a, b) = (format!("berth-t{pid}a"), format!("berth-t{pid}b"));
    let script = format!("ip link add {a} type veth peer name {b} && ip -o link show {a}");
    // Default set: no CAP_NET_ADMIN.
    let (code, _, err) = sh(&script, NET_NS, plan(options())).await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    // Added: the link is created, in the container's network namespace only.
    let mut o = options();
    o.cap_add = vec!["NET_ADMIN".into()];
    let (code, out, err) = sh(&script, NET_NS, plan(o)).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains(&a), "{out}");
    assert!(
        !Path::new(&format!("/sys/class/net/{a}")).exists(),
        "the veth appeared on the host"
    );
}

#[tokio::test]
async fn default_seccomp_blocks_user_namespaces_and_mount_even_with_sys_admin() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let target = sb.path().join("m");
    std::fs::create_dir(&target).unwrap();
    let script = format!(
        "unshare --user true; echo unshare=$?; mount -t tmpfs berth-sec-x {t}; echo mount=$?; \
         grep -c berth-sec-x /proc/self/mountinfo",
        t = target.display()
    );
    let mut o = options();
    o.cap_add = vec!["SYS_ADMIN".into()];
    let (_, out, err) = sh(&script, NS, plan(o.clone())).await;
    assert!(out.contains("unshare=1"), "{out} {err}");
    assert!(
        err.contains("unshare failed: Operation not permitted"),
        "{err}"
    );
    assert!(!out.contains("mount=0"), "{out} {err}");
    assert!(out.trim_end().ends_with('0'), "tmpfs mounted: {out}");
    // Unconfined, the same calls reach the kernel and succeed (CAP_SYS_ADMIN, private mount ns).
    o.seccomp = SeccompProfile::Unconfined;
    let (_, out, err) = sh(&script, NS, plan(o)).await;
    assert!(
        out.contains("unshare=0") && out.contains("mount=0"),
        "{out} {err}"
    );
    assert!(out.trim_end().ends_with('1'), "{out}");
    // The mount stayed in the container's namespace.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains("berth-sec-x"));
}

#[tokio::test]
async fn custom_profile_denying_mkdir() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    let dir = sb.path().join("made-by-container");
    let script = format!("mkdir {}", dir.display());
    let mut o = options();
    o.seccomp = SeccompProfile::Custom(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#
            .into(),
    );
    let (code, _, err) = sh(&script, NS, plan(o)).await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(!dir.exists());
    // The default profile allows it.
    let (code, _, err) = sh(&script, NS, plan(options())).await;
    assert_eq!(code, 0, "{err}");
    assert!(dir.is_dir());
}

#[tokio::test]
async fn rlimits_are_applied() {
    if !require_root() {
        return;
    }
    let mut o = options();
    o.rlimits = vec![RlimitRequest {
        name: "nofile".into(),
        soft: Some(321),
        hard: Some(654),
    }];
    let (code, out, err) = sh("ulimit -n; ulimit -Hn", NS, plan(o)).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "321\n654\n");
    // The default: soft 1024, the agent's own hard limit.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let (_, out, _) = sh("ulimit -n; ulimit -Hn", NS, plan(options())).await;
    assert_eq!(out, format!("{}\n{hard}\n", 1024.min(hard)));
}

#[tokio::test]
async fn shim_reports_a_limit_it_cannot_set() {
    if !require_root() {
        return;
    }
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let mut p = plan(options());
    p.rlimits = vec![RlimitSpec {
        kind: "RLIMIT_NOFILE".into(),
        soft: 64,
        hard: hard + 1,
    }];
    let sb = Sandbox::new();
    let e = run(&sb, &sb.config("ulimit -Hn", NS, p)).await;
    if own_caps("CapEff") & (1 << 24) == 0 {
        assert_eq!(e.code, Some(127));
        assert_eq!(
            e.launch_error.as_deref(),
            Some("failed to set RLIMIT_NOFILE: Operation not permitted (EPERM)")
        );
        assert_eq!(sb.stdout(), "");
    } else {
        assert_eq!(e.launch_error, None, "CAP_SYS_RESOURCE raises it");
    }
}

#[tokio::test]
async fn a_broken_filter_is_a_launch_error() {
    if !require_root() {
        return;
    }
    let mut p = plan(options());
    // Not a valid BPF opcode: the kernel refuses the program.
    p.seccomp = Some(vec![BpfInstruction {
        code: 0xffff,
        jt: 0,
        jf: 0,
        k: 0,
    }]);
    let sb = Sandbox::new();
    let e = run(&sb, &sb.config("echo must-not-run", NS, p)).await;
    assert_eq!(e.code, Some(127));
    assert_eq!(
        e.launch_error.as_deref(),
        Some("failed to apply seccomp filter: Invalid argument (EINVAL)")
    );
    assert_eq!(sb.stdout(), "");
}

#[tokio::test]
async fn loading_a_kernel_module_fails() {
    if !require_root() {
        return;
    }
    let sb = Sandbox::new();
    // Not a module: a kernel that gets this far answers ENOEXEC (or ENOSYS without module
    // support), never EPERM. busybox insmod calls finit_module, then init_module.
    let ko = sb.path().join("berth-test.ko");
    std::fs::write(&ko, "x\n").unwrap();
    let script = format!("busybox insmod {}", ko.display());
    // Default: neither CAP_SYS_MODULE nor the syscall.
    let (code, _, err) = sh(&script, NS, plan(options())).await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    // With CAP_SYS_MODULE the seccomp filter still refuses it.
    let mut o = options();
    o.cap_add = vec!["SYS_MODULE".into()];
    let (code, _, err) = sh(&script, NS, plan(o.clone())).await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    // Control: unconfined, the call reaches the kernel (which refuses the garbage otherwise).
    o.seccomp = SeccompProfile::Unconfined;
    let (code, _, err) = sh(&script, NS, plan(o)).await;
    assert_ne!(code, 0);
    assert!(!err.contains("Operation not permitted"), "{err}");
}

#[tokio::test]
async fn user_switch_keeps_only_ambient_capabilities() {
    if !require_root() {
        return;
    }
    let bind = vec!["CAP_NET_BIND_SERVICE".to_string()];
    let mut p = plan(options());
    p.capabilities = Some(CapabilitySets {
        bounding: bind.clone(),
        effective: bind.clone(),
        permitted: bind.clone(),
        inheritable: bind.clone(),
        ambient: bind,
    });
    p.user = Some(ProcessUser {
        uid: 65534,
        gid: 65534,
        additional_gids: vec![65533],
    });
    let (code, out, err) = sh(&format!("id -u; id -g; id -G; {STATUS}"), NS, p).await;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("65534"));
    assert_eq!(lines.next(), Some("65534"));
    assert_eq!(lines.next(), Some("65534 65533"));
    assert_eq!(field(&out, "CapEff"), "0000000000000400", "{out}");
    assert_eq!(field(&out, "CapAmb"), "0000000000000400");
    assert_eq!(field(&out, "CapBnd"), "0000000000000400");
    assert_eq!(field(&out, "NoNewPrivs"), "1");
}
