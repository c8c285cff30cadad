//! The container's own root filesystem, user and cgroup namespaces, through the real
//! `berth-executor` binary: read-only host root, private /tmp, new /proc with masked and
//! read-only paths, a minimal /dev, hidden agent directories, volumes that symlinks cannot
//! redirect, escapes through /proc/*/root, user namespace mapping, cgroup namespace.
//!
//! Needs root; without it every test FAILS unless `BERTH_TEST_ALLOW_SKIP=1`. Every test checks
//! at the end that no mount referencing its directory exists in the host's mount table.
//!
//! The plans mirror what the filesystem isolator builds, except that the sandbox is mounted at
//! `/run/sb` (inside the container's fresh /run) instead of `/mnt/mesos/sandbox`, so the tests
//! never create directories in the host's `/mnt`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_executor::client::{ClientError, ShimClient, spawn_shim};
use berth_executor::{
    DeviceSpec, ExitStatus, FilesystemPlan, IdMapRange, IdMaps, MountSpec, RootfsSource,
    ShimConfig, ShimEvent, ShimRequest,
};

fn bin() -> PathBuf {
    std::env::var_os("BERTH_EXECUTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-executor")))
}
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const ALL_NS: &[&str] = &["pid", "mount", "uts", "ipc", "net"];
const TIMEOUT: Duration = Duration::from_secs(30);
/// Where the tests mount the sandbox in the container.
const SANDBOX_IN: &str = "/run/sb";
/// Host range of the user namespace test.
const USERNS_HOST_START: u32 = 100000;

/// True when the test may run; false (skip) only with BERTH_TEST_ALLOW_SKIP=1.
fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: needs root (mount namespaces, pivot_root); BERTH_TEST_ALLOW_SKIP=1");
        return false;
    }
    panic!(
        "this test needs root to build container root filesystems (euid is {}); run it as \
         root, or set BERTH_TEST_ALLOW_SKIP=1 to skip it",
        nix::unistd::geteuid()
    );
}

/// Lines of the host's mount table that mention `needle`.
fn host_mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// A test's directory tree, `/tmp/berth-test-<pid>-<name>`, laid out like the agent's:
/// `work/sandboxes/<id>` (sandbox), `run/<id>` (shim state, `rootfs` in it). Removed on drop,
/// after detaching any mount found below it (there should be none: that is asserted).
struct Case {
    dir: PathBuf,
    work: PathBuf,
    runtime: PathBuf,
    sandbox: PathBuf,
    state: PathBuf,
}

impl Case {
    fn new(name: &str) -> Case {
        let dir = PathBuf::from(format!("/tmp/berth-test-{}-{name}", std::process::id()));
        if dir.exists() {
            Case::remove(&dir);
        }
        let work = dir.join("work");
        let runtime = dir.join("run");
        let sandbox = work.join("sandboxes").join("c1");
        let state = runtime.join("c1");
        for d in [&sandbox, &state, &state.join("rootfs")] {
            std::fs::create_dir_all(d).unwrap();
        }
        // Traversable by a user namespace's root (an unprivileged uid on the host).
        for d in [&dir, &work, &work.join("sandboxes"), &runtime] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Case {
            dir,
            work,
            runtime,
            sandbox,
            state,
        }
    }

    fn remove(dir: &Path) {
        let needle = format!(" {}", dir.display());
        let mut points: Vec<String> = host_mounts_mentioning(&needle)
            .iter()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn name(&self, what: &str) -> String {
        format!("berth-test-{}-{what}", std::process::id())
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.sandbox.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.sandbox.join("stderr")).unwrap_or_default()
    }

    /// The plan the filesystem isolator would build (sandbox at [`SANDBOX_IN`]).
    fn plan(&self, userns: bool) -> FilesystemPlan {
        let m = |dest: &str, kind: &str, src: Option<&Path>, opts: &[&str]| MountSpec {
            destination: dest.into(),
            kind: kind.into(),
            source: src.map(Path::to_path_buf),
            options: opts.iter().map(|s| s.to_string()).collect(),
        };
        let mut devpts = vec![
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ];
        if !userns {
            devpts.push("gid=5");
        }
        let mut mounts = vec![
            m("/proc", "proc", None, &["nosuid", "noexec", "nodev"]),
            m("/dev/pts", "devpts", None, &devpts),
            m(
                "/dev/shm",
                "tmpfs",
                None,
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            m(
                "/dev/mqueue",
                "mqueue",
                None,
                &["nosuid", "noexec", "nodev"],
            ),
            m("/sys", "sysfs", None, &["nosuid", "noexec", "nodev", "ro"]),
            m("/tmp", "tmpfs", None, &["nosuid", "nodev", "mode=1777"]),
            m("/run", "tmpfs", None, &["nosuid", "nodev", "mode=755"]),
        ];
        for hidden in [&self.work, &self.runtime] {
            mounts.push(m(
                hidden.to_str().unwrap(),
                "tmpfs",
                None,
                &["ro", "nosuid", "nodev", "noexec", "mode=755", "size=4k"],
            ));
        }
        mounts.push(m(
            SANDBOX_IN,
            "bind",
            Some(&self.sandbox),
            &["rbind", "rw", "nosuid", "nodev"],
        ));
        let devices = ["null", "zero", "full", "random", "urandom", "tty"]
            .iter()
            .map(|d| DeviceSpec {
                path: format!("/dev/{d}"),
                host_path: PathBuf::from(format!("/dev/{d}")),
            })
            .collect();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        FilesystemPlan {
            root: self.state.join("rootfs"),
            source: RootfsSource::HostBind,
            readonly: true,
            mounts,
            devices,
            masked_paths: strings(&[
                "/proc/acpi",
                "/proc/asound",
                "/proc/interrupts",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/sys/devices/virtual/powercap",
                "/sys/firmware",
            ]),
            readonly_paths: strings(&[
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]),
        }
    }

    fn config(&self, script: &str, ns: &[&str], plan: Option<FilesystemPlan>) -> ShimConfig {
        ShimConfig {
            container_id: "c1".into(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), PATH.into())],
            cwd: plan.as_ref().map(|_| PathBuf::from(SANDBOX_IN)),
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            hostname: Some("c1".into()),
            stdout_path: self.sandbox.join("stdout"),
            stderr_path: self.sandbox.join("stderr"),
            state_dir: self.state.clone(),
            id_maps: None,
            filesystem: plan,
            security: Default::default(),
            ns_paths: Vec::new(),
            oci: None,
        }
    }

    /// Runs the container to its end.
    async fn run(&self, cfg: &ShimConfig) -> ExitStatus {
        let ready = spawn_shim(&bin(), cfg).await.expect("spawn_shim");
        let mut c = ShimClient::connect(&cfg.state_dir).await.expect("connect");
        c.send(&ShimRequest::Start).await.unwrap();
        let exit = loop {
            let ev = tokio::time::timeout(TIMEOUT, c.next_event())
                .await
                .expect("timed out waiting for a shim event")
                .expect("next_event");
            match ev {
                Some(ShimEvent::Exited(e)) => break e,
                Some(_) => continue,
                None => panic!("shim closed the connection without Exited"),
            }
        };
        let until = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{}", ready.pid)).exists()
            || Path::new(&format!("/proc/{}", ready.shim_pid)).exists()
        {
            assert!(Instant::now() < until, "shim or init survived the exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        exit
    }

    /// Runs and asserts a clean exit 0.
    async fn run_ok(&self, cfg: &ShimConfig) -> String {
        let e = self.run(cfg).await;
        assert_eq!(
            (e.code, e.launch_error.as_deref()),
            (Some(0), None),
            "stdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    fn assert_no_host_mounts(&self) {
        let left = host_mounts_mentioning(self.dir.to_str().unwrap());
        assert!(left.is_empty(), "mounts leaked into the host: {left:#?}");
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        Case::remove(&self.dir);
    }
}

/// `name: value` lines printed by a script, as pairs.
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name}: line in {out}"))
        .trim()
}

/// A `name:$?` line reporting a failed command (redirections fail with 2, commands with 1).
fn assert_failed(out: &str, name: &str) {
    assert_ne!(field(out, name), "0", "{name} succeeded: {out}");
}

#[tokio::test]
async fn host_root_is_read_only_and_tmp_is_private() {
    if !require_root() {
        return;
    }
    let c = Case::new("ro");
    let etc_file = format!("/etc/{}", c.name("x"));
    let tmp_file = format!("/tmp/{}", c.name("private"));
    let script = format!(
        "echo x > {etc_file}; echo etc:$?; \
         echo y > {tmp_file} && echo tmp:$(cat {tmp_file}); \
         echo z > {SANDBOX_IN}/made-inside && echo sandbox:ok; \
         mkdir /usr/{n} ; echo usr:$?; \
         pwd | sed 's/^/cwd:/'",
        n = c.name("d")
    );
    let out = c
        .run_ok(&c.config(&script, ALL_NS, Some(c.plan(false))))
        .await;
    assert_failed(&out, "etc");
    assert!(
        c.stderr().contains("Read-only file system"),
        "{}",
        c.stderr()
    );
    assert_failed(&out, "usr");
    assert_eq!(field(&out, "tmp"), "y");
    assert_eq!(field(&out, "sandbox"), "ok");
    assert_eq!(field(&out, "cwd"), SANDBOX_IN);
    assert!(!Path::new(&etc_file).exists());
    assert!(!Path::new(&tmp_file).exists(), "/tmp is not private");
    assert!(!Path::new(&format!("/usr/{}", c.name("d"))).exists());
    assert_eq!(
        std::fs::read_to_string(c.sandbox.join("made-inside")).unwrap(),
        "z\n"
    );
    c.assert_no_host_mounts();
}

#[tokio::test]
async fn proc_is_new_with_masked_and_read_only_paths() {
    if !require_root() {
        return;
    }
    let c = Case::new("proc");
    let host_domain = std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap();
    // Masked and read-only paths this kernel has (no /proc/kcore without CONFIG_PROC_KCORE,
    // no /proc/sysrq-trigger without CONFIG_MAGIC_SYSRQ): missing ones are skipped.
    let existing = |v: &[&'static str]| -> Vec<&'static str> {
        v.iter()
            .copied()
            .filter(|p| Path::new(p).exists())
            .collect()
    };
    let masked_files: Vec<&str> = existing(&["/proc/kcore", "/proc/keys", "/proc/timer_list"]);
    let masked_dirs: Vec<&str> = existing(&["/proc/acpi", "/proc/scsi", "/sys/firmware"]);
    let ro_paths: Vec<&str> =
        existing(&["/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs"]);
    assert!(!masked_files.is_empty() && !ro_paths.is_empty());
    let mut script = String::from("echo pid:$$; echo comm1:$(cat /proc/1/comm); ");
    for f in &masked_files {
        script += &format!("echo size:{f}:$(wc -c < {f}); ");
    }
    for d in &masked_dirs {
        script += &format!("echo entries:{d}:$(ls -A {d} | wc -l); ");
    }
    script += "echo berth > /proc/sys/kernel/domainname; echo sysw:$?; \
        awk '{print \"mnt:\" $5 \" \" $6}' /proc/self/mountinfo; \
        mount -o remount,rw /proc/sys 2>/dev/null; \
        echo berth > /proc/sys/kernel/domainname 2>/dev/null; echo done:1";
    let out = c
        .run_ok(&c.config(&script, ALL_NS, Some(c.plan(false))))
        .await;
    assert_eq!(field(&out, "pid"), "2", "{out}");
    assert_eq!(
        field(&out, "comm1"),
        "berth-executor",
        "pid 1 is the init: {out}"
    );
    for f in &masked_files {
        assert_eq!(field(&out, &format!("size:{f}")), "0", "{out}");
    }
    for d in &masked_dirs {
        assert_eq!(field(&out, &format!("entries:{d}")), "0", "{out}");
    }
    assert_failed(&out, "sysw");
    assert!(
        c.stderr().contains("Read-only file system"),
        "{}",
        c.stderr()
    );
    let mount_opts = |p: &str| -> Option<&str> {
        out.lines()
            .filter_map(|l| l.strip_prefix("mnt:"))
            .filter_map(|l| l.split_once(' '))
            .filter(|(point, _)| *point == p)
            .map(|(_, opts)| opts)
            .next_back()
    };
    for p in masked_files.iter().chain(&masked_dirs).chain(&ro_paths) {
        assert!(mount_opts(p).is_some(), "{p} is not a mount point: {out}");
    }
    for p in masked_dirs.iter().chain(&ro_paths) {
        let opts = mount_opts(p).unwrap();
        assert!(opts.split(',').any(|o| o == "ro"), "{p}: {opts}");
    }
    // Whatever the container did to its own view of /proc/sys (it holds every capability
    // here: the security helper's seccomp/caps deny the remount), the host's is untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap(),
        host_domain
    );
    c.assert_no_host_mounts();
}

#[tokio::test]
async fn dev_has_only_the_allowed_nodes() {
    if !require_root() {
        return;
    }
    let c = Case::new("dev");
    let script = "echo ls:$(ls -A /dev | tr '\\n' ' '); \
         echo x > /dev/null && echo null:ok; \
         echo zero:$(head -c 4 /dev/zero | wc -c); \
         echo urandom:$(head -c 8 /dev/urandom | wc -c); \
         echo fd:$(readlink /dev/fd) ptmx:$(readlink /dev/ptmx); \
         ls /dev/kmsg /dev/sda /dev/loop0 2>/dev/null | wc -l | sed 's/^/others:/'";
    let out = c
        .run_ok(&c.config(script, ALL_NS, Some(c.plan(false))))
        .await;
    let mut ls: Vec<&str> = field(&out, "ls").split_whitespace().collect();
    ls.sort();
    assert_eq!(
        ls,
        vec![
            "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
            "stdout", "tty", "urandom", "zero"
        ],
        "{out}"
    );
    assert_eq!(field(&out, "null"), "ok");
    assert_eq!(field(&out, "zero"), "4");
    assert_eq!(field(&out, "urandom"), "8");
    assert!(out.contains("fd:/proc/self/fd ptmx:pts/ptmx"), "{out}");
    assert_eq!(field(&out, "others"), "0");
    c.assert_no_host_mounts();
}

#[tokio::test]
async fn agent_directories_are_hidden() {
    if !require_root() {
        return;
    }
    let c = Case::new("hidden");
    std::fs::write(c.work.join("secret"), "s").unwrap();
    std::fs::write(c.state.join("secret"), "s").unwrap();
    let visible = c.dir.join("visible");
    std::fs::create_dir(&visible).unwrap();
    std::fs::write(visible.join("file"), "v").unwrap();
    // Without the /tmp tmpfs (the test tree lives in /tmp), so only the hiding mounts hide.
    let mut plan = c.plan(false);
    plan.mounts.retain(|m| m.destination != "/tmp");
    let script = format!(
        "echo work:$(ls -A {work} | wc -l); echo runtime:$(ls -A {runtime} | wc -l); \
         echo visible:$(cat {visible}/file); touch {work}/x; echo touch:$?",
        work = c.work.display(),
        runtime = c.runtime.display(),
        visible = visible.display()
    );
    let out = c.run_ok(&c.config(&script, ALL_NS, Some(plan))).await;
    assert_eq!(field(&out, "work"), "0", "{out}");
    assert_eq!(field(&out, "runtime"), "0", "{out}");
    assert_eq!(field(&out, "visible"), "v", "{out}");
    assert_failed(&out, "touch");
    assert!(!c.work.join("x").exists());
    c.assert_no_host_mounts();
}

fn bind(dest: &str, src: &Path, ro: bool) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        kind: "bind".into(),
        source: Some(src.to_owned()),
        options: vec![
            "rbind".into(),
            if ro { "ro" } else { "rw" }.into(),
            "nosuid".into(),
            "nodev".into(),
        ],
    }
}

#[tokio::test]
async fn volumes_rw_ro_and_symlinked_destinations_stay_inside() {
    if !require_root() {
        return;
    }
    let c = Case::new("vol");
    let rw = c.dir.join("vol-rw");
    let ro = c.dir.join("vol-ro");
    let payload = c.dir.join("payload");
    for d in [&rw, &ro, &payload] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(ro.join("file"), "r").unwrap();
    std::fs::write(payload.join("file"), "p").unwrap();
    // A symlink in a volume pointing at the host's /run: resolved in the container it is the
    // container's /run (a tmpfs), so the second volume must land there, never on the host.
    let landing = c.name("landing");
    std::os::unix::fs::symlink("/run", rw.join("evil")).unwrap();
    let mut plan = c.plan(false);
    plan.mounts.push(bind("/run/data", &rw, false));
    plan.mounts.push(bind("/run/ro", &ro, true));
    plan.mounts
        .push(bind(&format!("/run/data/evil/{landing}"), &payload, true));
    let script = format!(
        "echo w > /run/data/written && echo rw:ok; \
         echo ro:$(cat /run/ro/file); echo x > /run/ro/file; echo rowrite:$?; \
         echo landed:$(cat /run/{landing}/file); \
         grep -c ' /run/{landing} ' /proc/self/mountinfo | sed 's/^/mounted:/'"
    );
    let out = c.run_ok(&c.config(&script, ALL_NS, Some(plan))).await;
    assert_eq!(field(&out, "rw"), "ok", "{out}");
    assert_eq!(std::fs::read_to_string(rw.join("written")).unwrap(), "w\n");
    assert_eq!(field(&out, "ro"), "r");
    assert_failed(&out, "rowrite");
    assert_eq!(std::fs::read_to_string(ro.join("file")).unwrap(), "r");
    assert_eq!(field(&out, "landed"), "p", "{out}");
    assert_eq!(field(&out, "mounted"), "1", "{out}");
    assert!(
        !Path::new("/run").join(&landing).exists(),
        "host /run touched"
    );
    c.assert_no_host_mounts();
    assert!(host_mounts_mentioning(&landing).is_empty());

    // Same trick towards /etc: the root is read-only, so the mount point cannot be made and
    // the launch fails, naming the path; the host's /etc is untouched.
    let c2 = Case::new("vol-etc");
    let d = c2.dir.join("vol");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::symlink("/etc", d.join("evil")).unwrap();
    let target = c2.name("etc-landing");
    let mut plan = c2.plan(false);
    plan.mounts.push(bind("/run/data", &d, false));
    plan.mounts
        .push(bind(&format!("/run/data/evil/{target}"), &payload, false));
    let e = c2
        .run(&c2.config("echo must-not-run", ALL_NS, Some(plan)))
        .await;
    assert_eq!(e.code, Some(127));
    let msg = e.launch_error.unwrap_or_default();
    assert!(
        msg.contains(&format!("/run/data/evil/{target}")) && msg.contains("EROFS"),
        "{msg}"
    );
    assert_eq!(c2.stdout(), "");
    assert!(
        !Path::new("/etc").join(&target).exists(),
        "host /etc touched"
    );
    c2.assert_no_host_mounts();
    assert!(host_mounts_mentioning(&target).is_empty());
}

#[tokio::test]
async fn no_writes_to_the_host_through_proc_root_links() {
    if !require_root() {
        return;
    }
    let c = Case::new("procroot");
    let name = c.name("escape");
    let script = format!(
        "echo x > /proc/self/root/etc/{name}; echo self:$?; \
         echo x > /proc/1/root/etc/{name}; echo one:$?; \
         echo x > /proc/1/root/tmp/{name}; echo tmp:$?; \
         echo x > /proc/1/root{dir}/{name}; echo dir:$?",
        dir = c.dir.display()
    );
    let out = c
        .run_ok(&c.config(&script, ALL_NS, Some(c.plan(false))))
        .await;
    assert_failed(&out, "self");
    assert_failed(&out, "one");
    // The container's own /tmp is writable, and private.
    assert_eq!(field(&out, "tmp"), "0", "{out}");
    // (that path exists in the container's /tmp: the mount points of the hidden directories)
    for p in [
        PathBuf::from("/etc").join(&name),
        PathBuf::from("/tmp").join(&name),
        c.dir.join(&name),
    ] {
        assert!(!p.exists(), "{} written on the host", p.display());
    }
    c.assert_no_host_mounts();
}

#[tokio::test]
async fn user_namespace_maps_root_to_an_unprivileged_range() {
    if !require_root() {
        return;
    }
    let c = Case::new("userns");
    // What the user namespace isolator does: the sandbox belongs to the mapped root.
    nix::unistd::chown(
        &c.sandbox,
        Some(nix::unistd::Uid::from_raw(USERNS_HOST_START)),
        Some(nix::unistd::Gid::from_raw(USERNS_HOST_START)),
    )
    .unwrap();
    // With every other namespace, cgroup included (unshared by the init, as root of the
    // user namespace).
    let mut ns = ALL_NS.to_vec();
    ns.extend(["user", "cgroup"]);
    let mut cfg = c.config(
        "echo uid:$(id -u) gid:$(id -g); echo map:$(cat /proc/self/uid_map); \
         echo cgroups-not-root:$(grep -vc ':/$' /proc/self/cgroup); \
         echo groups:$(grep Groups /proc/self/status | cut -f2); \
         echo owned > owned-file && echo write:ok; \
         echo x > /etc/berth-userns; echo etc:$?",
        &ns,
        Some(c.plan(true)),
    );
    let range = IdMapRange {
        container_id: 0,
        host_id: USERNS_HOST_START,
        size: 65536,
    };
    cfg.id_maps = Some(IdMaps {
        uid_map: vec![range],
        gid_map: vec![range],
    });
    let out = c.run_ok(&cfg).await;
    assert!(out.contains("uid:0 gid:0"), "{out}");
    let map: Vec<&str> = field(&out, "map").split_whitespace().collect();
    assert_eq!(map, vec!["0", "100000", "65536"], "{out}");
    assert_eq!(field(&out, "groups"), "", "host groups dropped: {out}");
    assert_eq!(field(&out, "cgroups-not-root"), "0", "{out}");
    assert_eq!(field(&out, "write"), "ok", "{out}");
    assert_failed(&out, "etc");
    let meta = std::fs::metadata(c.sandbox.join("owned-file")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (USERNS_HOST_START, USERNS_HOST_START)
    );
    assert!(!Path::new("/etc/berth-userns").exists());
    c.assert_no_host_mounts();
}

#[tokio::test]
async fn user_namespace_without_maps_is_a_config_error() {
    let c = Case::new("userns-nomaps");
    let tail = |cfg: ShimConfig| async move {
        match spawn_shim(&bin(), &cfg).await.unwrap_err() {
            ClientError::ShimDied { tail, .. } => tail,
            other => panic!("unexpected error {other}"),
        }
    };
    let t = tail(c.config("true", &["user", "mount"], None)).await;
    assert!(t.contains("a \"user\" namespace needs id_maps"), "{t}");
    let t = tail(c.config("true", &["pid"], Some(c.plan(false)))).await;
    assert!(
        t.contains("a filesystem plan needs a \"mount\" namespace"),
        "{t}"
    );
}

#[tokio::test]
async fn cgroup_namespace_shows_the_own_cgroup_as_root() {
    if !require_root() {
        return;
    }
    let c = Case::new("cgroupns");
    let mut ns = ALL_NS.to_vec();
    ns.push("cgroup");
    let out = c
        .run_ok(&c.config("cat /proc/self/cgroup", &ns, Some(c.plan(false))))
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l.ends_with(":/"), "not rooted at the own cgroup: {out}");
    }
    // Without it the host paths show (unless the test runs in the root cgroup everywhere).
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    if own.lines().any(|l| !l.ends_with(":/")) {
        let out2 = Case::new("cgroupns-off");
        let o = out2
            .run_ok(&out2.config("cat /proc/self/cgroup", ALL_NS, Some(out2.plan(false))))
            .await;
        assert!(o.lines().any(|l| !l.ends_with(":/")), "{o}");
    }
    c.assert_no_host_mounts();
}

#[tokio::test]
async fn a_missing_bind_source_is_a_launch_error_naming_it() {
    if !require_root() {
        return;
    }
    let c = Case::new("badsrc");
    let mut plan = c.plan(false);
    let missing = c.dir.join("no-such-dir");
    plan.mounts.push(bind("/run/x", &missing, false));
    let e = c
        .run(&c.config("echo must-not-run", ALL_NS, Some(plan)))
        .await;
    assert_eq!(e.code, Some(127));
    let msg = e.launch_error.unwrap_or_default();
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    assert_eq!(c.stdout(), "");
    c.assert_no_host_mounts();
}

/// A minimal image: a static busybox with a few applet links, and `/hello`.
fn busybox_image(dir: &Path) -> Option<()> {
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())?;
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "id", "grep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("hello"), "from the image\n").unwrap();
    Some(())
}

/// A plan for an image root: /proc, /tmp, /dev with null, the sandbox; no masks.
fn image_plan(c: &Case, source: RootfsSource) -> FilesystemPlan {
    let mut plan = c.plan(false);
    plan.source = source;
    plan.readonly = false;
    plan.mounts
        .retain(|m| ["/proc", "/tmp", "/run", SANDBOX_IN].contains(&m.destination.as_str()));
    plan.devices.truncate(1);
    plan
}

#[tokio::test]
async fn directory_and_overlay_roots() {
    if !require_root() {
        return;
    }
    let c = Case::new("image");
    let img = c.dir.join("img");
    if busybox_image(&img).is_none() {
        if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: no static busybox for a test image; BERTH_TEST_ALLOW_SKIP=1");
            return;
        }
        panic!("needs a static busybox (/usr/bin/busybox) to build a test image");
    }
    let script = "cat /hello; echo w > /written && echo write:ok; \
         echo bin:$(ls /bin | grep -c busybox); ls /usr 2>/dev/null | grep -c . ; true";
    let env_path = |mut cfg: ShimConfig| {
        cfg.env = vec![("PATH".into(), "/bin".into())];
        cfg
    };

    // The directory itself, writable.
    let plan = image_plan(&c, RootfsSource::Directory { path: img.clone() });
    let out = c
        .run_ok(&env_path(c.config(script, ALL_NS, Some(plan))))
        .await;
    assert!(out.starts_with("from the image\n"), "{out}");
    assert_eq!(field(&out, "write"), "ok");
    assert_eq!(field(&out, "bin"), "1", "{out}");
    assert_eq!(std::fs::read_to_string(img.join("written")).unwrap(), "w\n");
    std::fs::remove_file(img.join("written")).unwrap();
    c.assert_no_host_mounts();

    // An overlay of it: writes go to the upper layer, the image is untouched.
    std::fs::remove_file(c.sandbox.join("stdout")).unwrap();
    let (upper, work) = (c.dir.join("upper"), c.dir.join("ovl-work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let plan = image_plan(
        &c,
        RootfsSource::Overlay {
            lower: vec![img.clone()],
            upper: upper.clone(),
            work,
        },
    );
    let out = c
        .run_ok(&env_path(c.config(script, ALL_NS, Some(plan))))
        .await;
    assert!(out.starts_with("from the image\n"), "{out}");
    assert_eq!(field(&out, "write"), "ok");
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "w\n"
    );
    assert!(!img.join("written").exists());
    c.assert_no_host_mounts();
}
