//! Privileged tests of the cgroups isolator against the real kernel (v1, hybrid or v2).
//!
//! They need root and a cgroup hierarchy; without them they FAIL saying why, unless
//! `BERTH_TEST_ALLOW_SKIP=1` is set. With `BERTH_TEST_CGROUP=v1|v2` (the microVM phase sets v2)
//! every test first asserts it really runs on that version. Each test uses its own base
//! (`berth-t<pid>-<n>`) and container ids (`berth-test-<pid>-<n>`) under the test process's own
//! cgroup, and a Drop guard thaws, kills and removes everything it made (cgroups, processes, loop
//! devices, files), on every path.
//!
//! Modules: [`support`] (the guard and helpers), [`limits`] (cpu, memory, pids, usage, update,
//! destruction), [`devices_io`] (device allow-list, eBPF filter, io limits).

#[path = "cgroups_real/devices_io.rs"]
mod devices_io;
#[path = "cgroups_real/limits.rs"]
mod limits;
#[path = "cgroups_real/support.rs"]
mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_isolators::cgroups::{CgroupError, CgroupVersion, CgroupsIsolator};
use berth_isolators::{ContainerSpec, Isolator, IsolatorError, Limitation, Limits, NetworkMode};

use support::{Env, dir_for, libc_sigkill, read};

#[test]
fn limits_membership_usage_kill_and_cleanup() {
    let Some(mut env) = Env::new() else { return };
    eprintln!(
        "cgroup {:?}, container paths under {:?}",
        env.iso.version(),
        env.iso.base_dirs()
    );
    let id = env.prepare(0.5, 64 << 20, Some(64));

    // The kernel took the limits.
    match env.iso.version() {
        CgroupVersion::V2 => {
            let d = &env.iso.container_paths(&id)[0];
            assert_eq!(read(&d.join("cpu.max")), "50000 100000");
            assert_eq!(read(&d.join("cpu.weight")), "20");
            assert_eq!(read(&d.join("memory.max")), (64u64 << 20).to_string());
            assert_eq!(read(&d.join("pids.max")), "64");
            if d.join("memory.swap.max").exists() {
                assert_eq!(read(&d.join("memory.swap.max")), "0");
            }
        }
        CgroupVersion::V1 => {
            let cpu = dir_for(&env, &id, "cpu.cfs_quota_us");
            assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&cpu.join("cpu.shares")), "512");
            let mem = dir_for(&env, &id, "memory.limit_in_bytes");
            assert_eq!(
                read(&mem.join("memory.limit_in_bytes")),
                (64u64 << 20).to_string()
            );
            let pids = dir_for(&env, &id, "pids.max");
            assert_eq!(read(&pids.join("pids.max")), "64");
        }
    }

    // A busy workload with a grandchild, inside the container.
    let busy = env.spawn_in(&id, "sleep 300 & while :; do :; done");
    let pid = env.pid(busy);
    let membership = read(Path::new(&format!("/proc/{pid}/cgroup")));
    let suffix = format!("/{}/{id}", env.base);
    let wanted: &[&str] = match env.iso.version() {
        CgroupVersion::V2 => &[""],
        CgroupVersion::V1 => &["cpu", "cpuacct", "memory", "pids"],
    };
    for controller in wanted {
        let ok = membership.lines().any(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (
                parts.next(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let has = if controller.is_empty() {
                list.is_empty()
            } else {
                list.split(',').any(|c| c == *controller)
            };
            has && path.ends_with(&suffix)
        });
        assert!(
            ok,
            "pid {pid} not in {suffix} for {controller:?}:\n{membership}"
        );
    }

    std::thread::sleep(Duration::from_millis(700));
    let usage = env.iso.usage(&id).expect("usage");
    eprintln!("usage: {usage:?}");
    assert!(usage.cpu_usage_ns > 0, "{usage:?}");
    assert!(usage.mem_current_bytes > 0, "{usage:?}");
    assert!(usage.pids_current >= 2, "sh and sleep: {usage:?}");
    assert_eq!(env.iso.limitation(&id).unwrap(), None);
    assert_eq!(env.iso.list().unwrap(), vec![id.clone()]);

    env.iso.kill_all(&id).expect("kill_all");
    let status = env.wait(busy, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc_sigkill()), "{status:?}");
    // The grandchild is gone from the cgroup too (pids.current may still count it as a zombie
    // until its new parent reaps it, so membership is checked instead).
    for dir in env.iso.container_paths(&id) {
        assert_eq!(
            read(&dir.join("cgroup.procs")),
            "",
            "{} not empty",
            dir.display()
        );
    }
    env.iso.kill_all(&id).expect("kill_all is idempotent");

    env.iso.cleanup(&id).expect("cleanup");
    for p in env.iso.container_paths(&id) {
        assert!(!p.exists(), "{} still exists", p.display());
    }
    env.iso.cleanup(&id).expect("cleanup is idempotent");
    env.finish();
}

#[test]
fn oom_kill_is_reported_as_memory_limitation() {
    let Some(mut env) = Env::new() else { return };
    let id = env.prepare(1.0, 32 << 20, None);
    // tail buffers its whole (newline-free) input: it grows until the OOM killer ends it.
    let hog = env.spawn_in(&id, "head -c 400m /dev/zero | tail");
    let status = env.wait(hog, Duration::from_secs(120));
    eprintln!("hog exited: {status:?}");
    let limitation = env.iso.limitation(&id).expect("limitation");
    match &limitation {
        Some(Limitation::Memory { message }) => {
            eprintln!("limitation: {message}");
            assert!(message.contains("32 MiB"), "{message}");
            assert!(message.contains("OOM-killed"), "{message}");
        }
        None => panic!("no memory limitation reported after the hog exited with {status:?}"),
        Some(other) => panic!("unexpected limitation {other:?}"),
    }
    assert!(
        !status.success(),
        "the hog was OOM-killed, its pipeline cannot succeed"
    );
    env.finish();
}

#[test]
fn recover_destroys_unknown_containers_only() {
    let Some(mut env) = Env::new() else { return };
    let keep = env.prepare(0.2, 16 << 20, Some(16));
    let orphan = env.prepare(0.2, 16 << 20, Some(16));
    let orphan_child = env.spawn_in(&orphan, "sleep 300");
    let mut listed = env.iso.list().unwrap();
    listed.sort();
    let mut expected = vec![keep.clone(), orphan.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    let cleaned = env
        .iso
        .recover(std::slice::from_ref(&keep))
        .expect("recover");
    assert_eq!(cleaned, vec![orphan.clone()]);
    let status = env.wait(orphan_child, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc_sigkill()));
    for p in env.iso.container_paths(&orphan) {
        assert!(!p.exists(), "{} survived recover", p.display());
    }
    for p in env.iso.container_paths(&keep) {
        assert!(
            p.is_dir(),
            "{} of a known container was removed",
            p.display()
        );
    }
    assert_eq!(env.iso.list().unwrap(), vec![keep]);
    env.finish();
}

#[test]
fn pids_limit_is_enforced() {
    let Some(mut env) = Env::new() else { return };
    let id = env.prepare(1.0, 64 << 20, Some(4));
    // sh + 3 sleeps = 4 tasks; the later forks must fail ("Cannot fork" on stderr is expected).
    let sh = env.spawn_in(&id, "for i in 1 2 3 4 5 6; do sleep 300 & done; wait");
    let start = Instant::now();
    let mut usage = env.iso.usage(&id).unwrap();
    while usage.pids_current < 4 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
        usage = env.iso.usage(&id).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let usage = env.iso.usage(&id).unwrap();
    assert_eq!(usage.pids_current, 4, "pids.max 4: {usage:?}");
    env.iso.kill_all(&id).unwrap();
    env.wait(sh, Duration::from_secs(30));
    env.finish();
}

/// On v2 the agent's own cgroup can only delegate controllers when it holds no processes; berth
/// must say so rather than move anything. (v1 has no such rule: nothing to check there.)
#[test]
fn v2_busy_own_cgroup_is_refused_with_an_explanation() {
    let Some(mut env) = Env::new() else { return };
    if env.iso.version() != CgroupVersion::V2 {
        eprintln!("cgroup v1: the no-internal-processes rule does not exist; nothing to check");
        env.finish();
        return;
    }
    // A pretend agent cgroup (made by this test) holding a process.
    let own_line = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own_line
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    let agent_name = format!("{}-agent", env.base);
    let agent_dir = Path::new("/sys/fs/cgroup")
        .join(own.trim_start_matches('/'))
        .join(&agent_name);
    std::fs::create_dir(&agent_dir).unwrap();
    env.extra_dirs.push(agent_dir.clone());
    let mut sleeper = Command::new("sleep").arg("300").spawn().unwrap();
    let pid = sleeper.id();
    let moved = std::fs::write(agent_dir.join("cgroup.procs"), pid.to_string());
    let tmp = tempfile::TempDir::new().unwrap();
    let fake = tmp.path().join("cgroup");
    std::fs::write(
        &fake,
        format!("0::{}/{agent_name}\n", own.trim_end_matches('/')),
    )
    .unwrap();
    let result = CgroupsIsolator::new(Path::new("/sys/fs/cgroup"), &fake, "berth").map(|iso| {
        let spec = ContainerSpec {
            id: "c".into(),
            limits: Limits {
                cpus: 1.0,
                mem_bytes: 16 << 20,
                pids_max: None,
                cpu_hard_cap: true,
                ..Default::default()
            },
            network: NetworkMode::None,
            hostname: "c".into(),
            sandbox: std::path::PathBuf::from("/nonexistent"),
            options: Default::default(),
            image: None,
        };
        iso.prepare(&spec)
    });
    let subtree = read(&agent_dir.join("cgroup.subtree_control"));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    moved.expect("move sleeper into the pretend agent cgroup");
    match result {
        Ok(Err(IsolatorError::Cgroup(e @ CgroupError::InternalProcess { .. }))) => {
            eprintln!("refused as expected: {e}");
        }
        other => panic!("expected InternalProcess, got {other:?}"),
    }
    assert_eq!(subtree, "", "berth must not change a busy cgroup");
    assert!(!agent_dir.join("berth").exists());
    env.finish();
}
