//! Isolation in depth, end to end through `berth run`: the container's own root filesystem,
//! capabilities, seccomp, rlimits, user namespaces, volumes, devices, and escape attempts that
//! must fail. Tests named `cgroup_*` also run inside the cgroup v2 microVM (tests/run.sh).

use std::{path::Path, process::Command};

use berth_tests::{Agent, last_status};

/// Runs `script` with `sh -c` in a task with extra `berth run` flags; returns the output.
fn sh(agent: &Agent, flags: &[&str], script: &str) -> berth_tests::Output {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    agent.berth(&args)
}

/// The value of a `Key:\tvalue` line of /proc/self/status as printed by the task.
fn status_field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim())
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
}

#[test]
fn cgroup_default_container_sees_its_own_root() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let marker = format!("/tmp/berth-test-{}-private-tmp", std::process::id());
    let script = format!(
        "set -u; echo sandbox=$MESOS_SANDBOX; echo cwd=$(pwd); echo host=$(hostname); \
         echo pid1=$(cat /proc/1/comm); \
         echo resolved=$(getent hosts $(hostname) | cut -d' ' -f1); echo etc_hostname=$(cat /etc/hostname); \
         if [ -e $MESOS_SANDBOX/.rootfs/etc ]; then echo generated=visible; fi; \
         if echo x > /etc/berth-test-rootfs 2>/dev/null; then echo etc=writable; else echo etc=readonly; fi; \
         echo private > {marker} && echo tmp=ok; \
         echo data > $MESOS_SANDBOX/file && echo sandbox=ok; \
         echo dev=$(ls /dev | tr '\\n' ' '); \
         head -c 1 /dev/zero | wc -c; \
         if [ -d {work} ]; then echo work=$(ls {work} | wc -l); else echo work=absent; fi",
        work = agent.work_dir().display()
    );
    let o = sh(&agent, &["--name", "rootfs-view"], &script);
    o.assert_code(0);
    let out = &o.stdout;
    assert!(out.contains("sandbox=/mnt/mesos/sandbox"), "{o}");
    assert!(out.contains("cwd=/mnt/mesos/sandbox"), "{o}");
    assert!(
        out.contains("host=rootfs-view"),
        "hostname is the task's: {o}"
    );
    assert!(
        out.contains("resolved=127.0.1.1\n"),
        "the task's hostname resolves through its own /etc/hosts: {o}"
    );
    if Path::new("/etc/hostname").is_file() {
        assert!(out.contains("etc_hostname=rootfs-view"), "{o}");
    }
    assert!(
        !out.contains("generated=visible"),
        "the generated /etc files are hidden from the sandbox: {o}"
    );
    assert!(
        out.contains("etc=readonly"),
        "the host's /etc must be read-only: {o}"
    );
    assert!(out.contains("tmp=ok") && out.contains("sandbox=ok"), "{o}");
    assert!(
        !Path::new(&marker).exists(),
        "/tmp of the container is the host's /tmp ({marker} appeared on the host)"
    );
    assert!(!Path::new("/etc/berth-test-rootfs").exists());
    // /dev holds only the allowed nodes (plus pts, shm, mqueue and the std links)
    let dev = out
        .lines()
        .find_map(|l| l.strip_prefix("dev="))
        .unwrap_or("");
    for needed in ["null", "zero", "urandom", "pts", "shm"] {
        assert!(
            dev.split_whitespace().any(|d| d == needed),
            "/dev lacks {needed}: {dev}"
        );
    }
    for host_only in ["kmsg", "mem", "vda", "loop-control", "kvm"] {
        assert!(
            !dev.split_whitespace().any(|d| d == host_only),
            "/dev exposes the host's {host_only}: {dev}"
        );
    }
    // the agent's work dir (other containers' sandboxes) is hidden
    assert!(
        out.contains("work=0") || out.contains("work=absent"),
        "the agent's work dir is visible in the container: {o}"
    );
    // the file written to $MESOS_SANDBOX is in the task's sandbox on the host
    let v = agent.inspect("rootfs-view");
    let sandbox = v["container"]["sandbox"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(Path::new(&sandbox).join("file")).unwrap(),
        "data\n"
    );
}

#[test]
fn cgroup_default_privileges_are_bounded() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = sh(
        &agent,
        &[],
        "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status",
    );
    o.assert_code(0);
    let cap_eff = u64::from_str_radix(status_field(&o.stdout, "CapEff"), 16).unwrap();
    let cap_bnd = u64::from_str_radix(status_field(&o.stdout, "CapBnd"), 16).unwrap();
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_SYS_MODULE: u64 = 1 << 16;
    const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
    for (name, bit) in [
        ("CAP_NET_ADMIN", CAP_NET_ADMIN),
        ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
        ("CAP_SYS_MODULE", CAP_SYS_MODULE),
    ] {
        assert_eq!(cap_eff & bit, 0, "{name} is effective by default:\n{o}");
        assert_eq!(
            cap_bnd & bit,
            0,
            "{name} is in the bounding set by default:\n{o}"
        );
    }
    assert_ne!(
        cap_eff & CAP_NET_BIND_SERVICE,
        0,
        "default set lacks NET_BIND_SERVICE:\n{o}"
    );
    assert_eq!(status_field(&o.stdout, "NoNewPrivs"), "1", "{o}");
    assert_eq!(
        status_field(&o.stdout, "Seccomp"),
        "2",
        "no seccomp filter:\n{o}"
    );
}

#[test]
fn cgroup_capabilities_add_and_drop() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // The container has its own network namespace: the dummy link never touches the host.
    let add_link = "ip link add berth-t0a type veth peer name berth-t0b && echo added";
    let denied = sh(&agent, &[], add_link);
    assert_ne!(
        denied.code(),
        0,
        "ip link add worked without CAP_NET_ADMIN:\n{denied}"
    );
    assert!(
        denied.stderr.contains("Operation not permitted"),
        "expected EPERM:\n{denied}"
    );
    let allowed = sh(&agent, &["--cap-add", "NET_ADMIN"], add_link);
    allowed.assert_code(0);
    assert!(allowed.stdout.contains("added"), "{allowed}");
    // dropping a default capability: chown needs CAP_CHOWN
    let chown = "touch f && chown 1000 f && echo chowned";
    sh(&agent, &[], chown).assert_code(0);
    let dropped = sh(&agent, &["--cap-drop", "CHOWN"], chown);
    assert_ne!(
        dropped.code(),
        0,
        "chown worked without CAP_CHOWN:\n{dropped}"
    );
    // an unknown capability is a clear error, and nothing runs
    let bad = sh(&agent, &["--cap-add", "NET_WIZARD"], "echo ran");
    assert_ne!(bad.code(), 0, "{bad}");
    assert!(!bad.stdout.contains("ran"), "{bad}");
    assert!(
        format!("{}{}", bad.stdout, bad.stderr).contains("NET_WIZARD"),
        "the error must name the capability:\n{bad}"
    );
}

#[test]
fn cgroup_seccomp_default_custom_and_unconfined() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // Creating a user namespace is blocked by the default profile (EPERM)...
    let userns = "unshare --user true && echo unshared";
    let blocked = sh(&agent, &[], userns);
    assert_ne!(
        blocked.code(),
        0,
        "unshare --user worked under the default profile:\n{blocked}"
    );
    assert!(
        blocked.stderr.contains("Operation not permitted"),
        "{blocked}"
    );
    // ...and allowed when unconfined.
    let free = sh(&agent, &["--seccomp", "unconfined"], userns);
    free.assert_code(0);
    assert_eq!(
        sh(
            &agent,
            &["--seccomp", "unconfined"],
            "grep ^Seccomp: /proc/self/status"
        )
        .stdout
        .split_whitespace()
        .nth(1),
        Some("0")
    );
    // A custom profile (Docker JSON) that denies mkdir.
    let dir = tempfile::Builder::new()
        .prefix(&format!("berth-test-{}-seccomp.", std::process::id()))
        .tempdir()
        .unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let custom = sh(
        &agent,
        &["--seccomp", profile.to_str().unwrap()],
        "mkdir d && echo made",
    );
    assert_ne!(
        custom.code(),
        0,
        "mkdir worked under a profile denying it:\n{custom}"
    );
    assert!(
        custom.stderr.contains("Operation not permitted"),
        "{custom}"
    );
    // A malformed profile is a clear error.
    std::fs::write(&profile, "{not json").unwrap();
    let bad = sh(
        &agent,
        &["--seccomp", profile.to_str().unwrap()],
        "echo ran",
    );
    assert_ne!(bad.code(), 0, "{bad}");
    assert!(!bad.stdout.contains("ran"), "{bad}");
}

#[test]
fn cgroup_rlimits_apply() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = sh(
        &agent,
        &["--ulimit", "nofile=256:512"],
        "echo soft=$(ulimit -Sn) hard=$(ulimit -Hn)",
    );
    o.assert_code(0);
    assert!(o.stdout.contains("soft=256 hard=512"), "{o}");
    let bad = sh(&agent, &["--ulimit", "nofile=512:256"], "echo ran");
    assert_ne!(bad.code(), 0, "soft above hard must be refused:\n{bad}");
    assert!(!bad.stdout.contains("ran"), "{bad}");
}

#[test]
fn cgroup_escape_attempts_fail() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let pid = std::process::id();
    // A module this kernel has but has not loaded (the VM's Debian kernel has them; this host's
    // kernel ships none): modprobe of a loaded one succeeds without loading anything, so what
    // counts is whether the module is loaded afterwards.
    let module = ["nlmon", "vcan", "dummy", "bonding"].into_iter().find(|m| {
        !Path::new(&format!("/sys/module/{m}")).exists()
            && Command::new("modprobe")
                .args(["-n", "-q", m])
                .status()
                .is_ok_and(|s| s.success())
    });
    let modprobe = match module {
        Some(m) => format!("if modprobe -q {m} 2>/dev/null; then echo MODPROBE; fi; "),
        None => {
            eprintln!("no loadable module here: only insmod is tried");
            String::new()
        }
    };
    let script = format!(
        "for p in /proc/self/root/etc/berth-test-{pid}-a /proc/1/root/etc/berth-test-{pid}-b /proc/self/cwd/../../../etc/berth-test-{pid}-c; do \
           if echo pwned > $p 2>/dev/null; then echo WROTE $p; fi; done; \
         if mount -o remount,rw /proc/sys 2>/dev/null; then echo REMOUNTED; fi; \
         if echo 1 > /proc/sys/kernel/sysrq 2>/dev/null; then echo SYSCTL; fi; \
         if echo h > /proc/sysrq-trigger 2>/dev/null; then echo SYSRQ; fi; \
         if insmod /nonexistent-berth.ko 2>/dev/null; then echo INSMOD; fi; \
         {modprobe}\
         if hostname evil-berth 2>/dev/null; then echo HOSTNAME; fi; \
         if mknod /tmp/vda b 253 0 2>/dev/null && head -c1 /tmp/vda >/dev/null 2>&1; then echo BLOCKDEV; fi; \
         if cat /proc/kcore 2>/dev/null | head -c 1 | grep -q .; then echo KCORE; fi; \
         echo done"
    );
    let o = sh(&agent, &[], &script);
    o.assert_code(0);
    assert!(o.stdout.contains("done"), "{o}");
    for bad in [
        "WROTE",
        "REMOUNTED",
        "SYSCTL",
        "SYSRQ",
        "INSMOD",
        "MODPROBE",
        "HOSTNAME",
        "BLOCKDEV",
        "KCORE",
    ] {
        assert!(
            !o.stdout.contains(bad),
            "escape attempt {bad} succeeded:\n{o}"
        );
    }
    for suffix in ["a", "b", "c"] {
        assert!(!Path::new(&format!("/etc/berth-test-{pid}-{suffix}")).exists());
    }
    if let Some(m) = module {
        assert!(
            !Path::new(&format!("/sys/module/{m}")).exists(),
            "the container loaded the kernel module {m}"
        );
    }
    assert_eq!(
        nix::unistd::gethostname().unwrap().into_string().unwrap(),
        host_name,
        "the host's hostname changed"
    );
}

#[test]
fn cgroup_devices_outside_the_allow_list_are_denied() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // With CAP_MKNOD (a default capability) the node can be made, but the devices cgroup
    // refuses to open it (or to make it).
    let o = sh(
        &agent,
        &[],
        "head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok; \
         if mknod /tmp/mem c 1 1 2>/dev/null; then \
           if head -c 1 /tmp/mem >/dev/null 2>&1; then echo MEM-READ; else echo mem-denied; fi; \
         else echo mknod-denied; fi",
    );
    o.assert_code(0);
    assert!(o.stdout.contains("null-ok"), "{o}");
    assert!(o.stdout.starts_with('4'), "{o}");
    assert!(
        !o.stdout.contains("MEM-READ"),
        "/dev/mem (1:1) was readable:\n{o}"
    );
}

#[test]
fn cgroup_volumes_rw_ro_and_symlinks_stay_inside() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("berth-test-{}-vol.", std::process::id()))
        .tempdir()
        .unwrap();
    let rw = dir.path().join("rw");
    let ro = dir.path().join("ro");
    let other = dir.path().join("other");
    for d in [&rw, &ro, &other] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(ro.join("in"), "from-host\n").unwrap();
    std::fs::write(other.join("marker"), "other\n").unwrap();
    // Symlinks planted in a volume that point out of it: absolute to /tmp, and relative with
    // more `..` than there are levels. Resolved inside the container's root, both reach the
    // container's private /tmp; resolved naively on the host they would reach the host's /tmp.
    std::os::unix::fs::symlink("/tmp", rw.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../../../tmp", rw.join("evil2")).unwrap();
    // and one to /etc: the read-only root refuses to grow a mount point there
    std::os::unix::fs::symlink("/etc", rw.join("evil3")).unwrap();
    let leak = format!("berth-mnt-{}", std::process::id());
    let vol = |host: &Path, container: &str| format!("{}:{container}", host.display());
    let o = sh(
        &agent,
        &[
            "-v",
            &vol(&rw, "/data"),
            "-v",
            &format!("{}:/input:ro", ro.display()),
            "-v",
            &vol(&other, &format!("/data/evil/{leak}")),
            "-v",
            &vol(&other, &format!("/data/evil2/{leak}-2")),
        ],
        &format!(
            "cat /input/in; echo out > /data/result && echo rw-ok; \
             if echo x > /input/x 2>/dev/null; then echo RO-WRITABLE; fi; \
             cat /tmp/{leak}/marker /tmp/{leak}-2/marker"
        ),
    );
    o.assert_code(0);
    assert!(o.stdout.contains("from-host"), "{o}");
    assert!(o.stdout.contains("rw-ok"), "{o}");
    assert!(
        !o.stdout.contains("RO-WRITABLE"),
        "read-only volume was writable:\n{o}"
    );
    assert_eq!(std::fs::read_to_string(rw.join("result")).unwrap(), "out\n");
    // the mount through the symlink landed inside the container (it shows the marker), and
    // nothing was created or mounted on the host's /etc
    assert!(o.stdout.contains("other"), "{o}");
    assert!(
        !Path::new("/etc/berth-mnt").exists(),
        "the volume escaped to the host's /etc"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("berth-mnt"),
        "a mount leaked to the host:\n{mounts}"
    );
    // bad volumes are refused with a message naming them, and nothing runs
    for (spec, needle) in [
        (
            "/nonexistent-berth-dir:/x".to_string(),
            "nonexistent-berth-dir",
        ),
        (format!("{}:/proc/x", rw.display()), "/proc"),
        (format!("{}:/a/../etc", rw.display()), ".."),
    ] {
        let bad = sh(&agent, &["-v", &spec], "echo ran");
        assert_ne!(bad.code(), 0, "volume {spec} accepted:\n{bad}");
        assert!(!bad.stdout.contains("ran"), "{bad}");
        assert!(
            format!("{}{}", bad.stdout, bad.stderr).contains(needle),
            "the error for {spec} must mention {needle}:\n{bad}"
        );
    }
}

#[test]
fn cgroup_user_namespace_maps_root_to_an_unprivileged_uid() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    let o = sh(
        &agent,
        &["--userns", "--name", "userns"],
        "echo uid=$(id -u); cat /proc/self/uid_map; touch $MESOS_SANDBOX/owned && echo touched",
    );
    o.assert_code(0);
    assert!(o.stdout.contains("uid=0"), "{o}");
    assert!(o.stdout.contains("touched"), "{o}");
    // uid_map: "0 <host start> <count>" with a host start that is not 0
    let map: Vec<u64> = o
        .stdout
        .lines()
        .find(|l| l.split_whitespace().count() == 3 && l.trim_start().starts_with('0'))
        .unwrap_or_else(|| panic!("no uid_map line:\n{o}"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0);
    assert_ne!(map[1], 0, "root inside is root outside:\n{o}");
    let v = agent.inspect("userns");
    let sandbox = v["container"]["sandbox"].as_str().unwrap().to_string();
    let meta = std::fs::metadata(Path::new(&sandbox).join("owned")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta) as u64,
        map[1],
        "the file the container's root made is owned by the mapped uid on the host"
    );
}

#[test]
fn cgroup_oom_of_a_child_fails_the_running_task() {
    let Some(agent) = Agent::start_or_skip() else {
        return;
    };
    // The hog is a child; the main shell would sleep on for minutes: the agent must notice the
    // OOM kill while it runs and fail the task.
    let id = agent.run_detached(&[
        "--mem",
        "32M",
        "--name",
        "child-oom",
        "--",
        "sh",
        "-c",
        "(head -c 200m /dev/zero | tail); sleep 600",
    ]);
    let v = agent.wait_for_state(&id, &["TASK_FAILED"], std::time::Duration::from_secs(60));
    let last = last_status(&v);
    assert_eq!(
        last["reason"], "REASON_CONTAINER_LIMITATION_MEMORY",
        "{last:#}"
    );
}

#[test]
fn cgroup_disk_limit_fails_the_task() {
    let Some(agent) = Agent::start_or_skip_with(&["--container-disk-watch-interval", "1s"]) else {
        return;
    };
    let id = agent.run_detached(&[
        "--disk",
        "8M",
        "--name",
        "filler",
        "--",
        "sh",
        "-c",
        "head -c 24m /dev/zero > $MESOS_SANDBOX/big; sleep 600",
    ]);
    let v = agent.wait_for_state(&id, &["TASK_FAILED"], std::time::Duration::from_secs(60));
    let last = last_status(&v);
    assert_eq!(
        last["reason"], "REASON_CONTAINER_LIMITATION_DISK",
        "{last:#}"
    );
    assert!(
        last["message"].as_str().unwrap_or("").contains("limit"),
        "{last:#}"
    );
    // within the limit: finishes normally
    let o = agent.berth(&[
        "run",
        "--disk",
        "8M",
        "--",
        "sh",
        "-c",
        "head -c 1m /dev/zero > $MESOS_SANDBOX/small && echo ok",
    ]);
    o.assert_code(0);
}
