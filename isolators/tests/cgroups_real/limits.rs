//! cpu, memory and pids limits for real: enforcement, live update, usage accuracy, destruction.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_isolators::cgroups::CgroupError;
use berth_isolators::{
    HugetlbLimit, IsolationOptions, Isolator, IsolatorError, Limitation, Limits, LimitsUpdate,
};

use super::support::{Env, cannot_run, dir_for, libc_sigkill, limits, poll, read, unique};

const MIB: u64 = 1 << 20;

/// The container's cumulative cpu time, ns.
fn cpu_ns(env: &Env, id: &str) -> u64 {
    env.iso.usage(id).expect("usage").cpu_usage_ns
}

#[test]
fn memory_high_throttles_without_kill() {
    let Some(mut env) = Env::new() else { return };
    // Clean, reclaimable page cache: buffered reads of a loop device (every writable file system
    // of the microVM is tmpfs or uncached 9p, whose pages could not be reclaimed).
    let Some(dev) = env.loop_device(128 * MIB) else {
        return;
    };
    let id = env.prepare_with(
        Limits {
            mem_high_bytes: Some(32 * MIB),
            ..limits(1.0, 256 * MIB, None)
        },
        IsolationOptions {
            devices: vec![PathBuf::from(&dev)],
            ..Default::default()
        },
    );
    let (status, _, err) = env.run_in(&id, &format!("dd if={dev} of=/dev/null bs=1M count=96"));
    assert!(
        status.success(),
        "dd above memory.high must finish: {status:?} {err}"
    );
    assert_eq!(
        env.iso.limitation(&id).unwrap(),
        None,
        "nothing was OOM-killed"
    );
    let usage = env.iso.usage(&id).unwrap();
    eprintln!("after reading 96 MiB under memory.high 32 MiB: {usage:?}");
    assert_eq!(usage.oom_kills.unwrap_or(0), 0);
    if env.v2() {
        let dir = dir_for(&env, &id, "memory.high");
        assert_eq!(read(&dir.join("memory.high")), (32 * MIB).to_string());
        let events = read(&dir.join("memory.events"));
        let high: u64 = events
            .lines()
            .find_map(|l| l.strip_prefix("high "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            high > 0,
            "memory.events high must count the throttling:\n{events}"
        );
    } else {
        // v1 has no memory.high: the soft limit is only set (it acts under global pressure).
        let dir = dir_for(&env, &id, "memory.soft_limit_in_bytes");
        assert_eq!(
            read(&dir.join("memory.soft_limit_in_bytes")),
            (32 * MIB).to_string()
        );
    }
    env.finish();
}

#[test]
fn cpu_weights_split_one_cpu_1_to_3() {
    let Some(mut env) = Env::new() else { return };
    let pinned = |cpus| Limits {
        cpu_hard_cap: false,
        cpuset_cpus: Some("0".into()),
        ..limits(cpus, 64 * MIB, None)
    };
    let light = env.prepare_with(pinned(0.25), Default::default());
    let heavy = env.prepare_with(pinned(0.75), Default::default());
    let cpuset = dir_for(&env, &light, "cpuset.cpus");
    assert_eq!(read(&cpuset.join("cpuset.cpus")), "0");
    env.spawn_in(&light, "while :; do :; done");
    env.spawn_in(&heavy, "while :; do :; done");
    std::thread::sleep(Duration::from_millis(500));
    let (l0, h0) = (cpu_ns(&env, &light), cpu_ns(&env, &heavy));
    std::thread::sleep(Duration::from_secs(3));
    let (l1, h1) = (cpu_ns(&env, &light), cpu_ns(&env, &heavy));
    let (l, h) = ((l1 - l0) as f64, (h1 - h0) as f64);
    let ratio = h / l.max(1.0);
    eprintln!("cpu over ~3 s on one cpu: light {l:.0} ns, heavy {h:.0} ns, ratio {ratio:.2}");
    assert!(l > 0.0 && h > 0.0, "both hogs ran");
    assert!((2.0..=4.5).contains(&ratio), "weights 1:3 gave {ratio:.2}");
    env.finish();
}

#[test]
fn hard_cap_is_honoured() {
    let Some(mut env) = Env::new() else { return };
    let id = env.prepare(0.2, 64 * MIB, None);
    env.spawn_in(&id, "while :; do :; done");
    std::thread::sleep(Duration::from_millis(300));
    let (u0, t0) = (cpu_ns(&env, &id), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (u1, t1) = (cpu_ns(&env, &id), Instant::now());
    let used = (u1 - u0) as f64;
    let allowed = 0.2 * (t1 - t0).as_nanos() as f64;
    eprintln!("capped at 0.2 cpu: used {used:.0} ns of {allowed:.0} ns allowed");
    // An upper bound only (a loaded machine makes it smaller): 10% + one period's quota slack.
    assert!(used <= allowed * 1.1 + 20e6, "used {used} > cap {allowed}");
    let usage = env.iso.usage(&id).unwrap();
    assert!(usage.cpu_nr_throttled.unwrap_or(0) > 0, "{usage:?}");
    assert!(usage.cpu_nr_periods.unwrap_or(0) > 0, "{usage:?}");
    env.finish();
}

#[test]
fn oom_of_a_child_while_main_lives_is_reported_by_check() {
    let Some(mut env) = Env::new() else { return };
    let id = env.prepare(1.0, 32 * MIB, None);
    let main = env.spawn_in(&id, "head -c 400m /dev/zero | tail; exec sleep 300");
    let found = poll(Duration::from_secs(120), || env.iso.check(&id).unwrap());
    match found {
        Some(Limitation::Memory { message }) => {
            eprintln!("check: {message}");
            assert!(message.contains("32 MiB"), "{message}");
        }
        other => panic!("check() did not report the OOM kill: {other:?}"),
    }
    assert!(env.try_wait(main).is_none(), "the main process still lives");
    assert!(env.iso.usage(&id).unwrap().oom_kills.unwrap_or(0) >= 1);
    env.finish();
}

#[test]
fn live_update_of_cpu_and_memory_is_visible_and_enforced() {
    let Some(mut env) = Env::new() else { return };
    let id = env.prepare(1.0, 256 * MIB, Some(64));
    let (status, _, err) = env.run_in(&id, "head -c 64m /dev/zero | tail >/dev/null");
    assert!(status.success(), "64 MiB fit in 256 MiB: {status:?} {err}");
    assert_eq!(env.iso.check(&id).unwrap(), None);

    let update = LimitsUpdate {
        cpus: Some(0.5),
        mem_bytes: Some(32 * MIB),
        // Above the new limit: visible, but it does not throttle the allocation below.
        mem_high_bytes: Some(48 * MIB),
        pids_max: Some(10),
    };
    env.iso.update(&id, &update).expect("update");
    if env.v2() {
        let d = dir_for(&env, &id, "cpu.max");
        assert_eq!(read(&d.join("cpu.max")), "50000 100000");
        assert_eq!(read(&d.join("cpu.weight")), "20");
        assert_eq!(read(&d.join("memory.max")), (32 * MIB).to_string());
        assert_eq!(read(&d.join("memory.high")), (48 * MIB).to_string());
        assert_eq!(read(&d.join("pids.max")), "10");
    } else {
        let cpu = dir_for(&env, &id, "cpu.cfs_quota_us");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&cpu.join("cpu.shares")), "512");
        let mem = dir_for(&env, &id, "memory.limit_in_bytes");
        assert_eq!(
            read(&mem.join("memory.limit_in_bytes")),
            (32 * MIB).to_string()
        );
        assert_eq!(
            read(&mem.join("memory.soft_limit_in_bytes")),
            (48 * MIB).to_string()
        );
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            assert_eq!(read(&memsw), (32 * MIB).to_string(), "swap stays 0");
        }
        assert_eq!(read(&dir_for(&env, &id, "pids.max").join("pids.max")), "10");
    }
    // The same allocation no longer fits: OOM kill, seen by the running check.
    let (status, _, _) = env.run_in(&id, "head -c 64m /dev/zero | tail >/dev/null");
    assert!(!status.success(), "64 MiB under a 32 MiB limit: {status:?}");
    assert!(
        matches!(env.iso.check(&id).unwrap(), Some(Limitation::Memory { .. })),
        "OOM kill after lowering memory.max"
    );
    env.finish();
}

#[test]
fn live_update_of_pids_is_enforced() {
    let Some(mut env) = Env::new() else { return };
    let id = env.prepare(1.0, 64 * MIB, Some(64));
    // sh + 2 sleeps; the second fork of /bin/true comes after the limit was lowered to that.
    let sh = env.spawn(
        &id,
        "sleep 300 >/dev/null 2>&1 & sleep 300 >/dev/null 2>&1 & /bin/true && echo first; \
         read _next; /bin/true; echo second",
        true,
    );
    assert_eq!(env.read_line(sh), "first", "forks work under pids.max 64");
    let current = env.iso.usage(&id).unwrap().pids_current;
    assert_eq!(current, 3, "sh and two sleeps");
    env.iso
        .update(
            &id,
            &LimitsUpdate {
                pids_max: Some(current),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(read(&dir_for(&env, &id, "pids.max").join("pids.max")), "3");
    env.send(sh, "next");
    let status = env.wait(sh, Duration::from_secs(30));
    let (out, err) = env.output(sh);
    eprintln!("status {status:?} stdout {out:?} stderr {err:?}");
    assert!(
        !out.contains("second"),
        "the fork at pids.max must fail: {out}"
    );
    assert!(err.to_lowercase().contains("fork"), "{err}");
    assert!(!status.success());
    env.finish();
}

/// `/proc/<pid>/stat` utime + stime, ns.
fn proc_cpu_ns(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / hz
}

#[test]
fn usage_matches_independent_readings() {
    let Some(mut env) = Env::new() else { return };
    // cpu: the cgroup's only process is the hog.
    let cpu_id = env.prepare(1.0, 64 * MIB, None);
    let hog = env.spawn_in(&cpu_id, "while :; do :; done");
    let pid = env.pid(hog);
    poll(Duration::from_secs(60), || {
        (cpu_ns(&env, &cpu_id) >= 1_000_000_000).then_some(())
    })
    .expect("the hog used 1 s of cpu");
    let (cg, proc_ns) = (cpu_ns(&env, &cpu_id), proc_cpu_ns(pid));
    let diff = (cg as f64 - proc_ns as f64).abs() / proc_ns as f64;
    eprintln!(
        "cpu: cgroup {cg} ns, /proc/{pid}/stat {proc_ns} ns ({:.1}%)",
        diff * 100.0
    );
    assert!(diff <= 0.10, "cpu usage off by {:.1}%", diff * 100.0);

    // memory: 64 MiB of tmpfs pages written from inside the container are charged to it.
    let shm = PathBuf::from("/dev/shm").join(unique("mem"));
    env.files.push(shm.clone());
    let mem_id = env.prepare(1.0, 256 * MIB, None);
    let writer = env.spawn(
        &mem_id,
        &format!(
            "dd if=/dev/zero of={} bs=1M count=64 2>/dev/null; echo done; read _end",
            shm.display()
        ),
        true,
    );
    assert_eq!(env.read_line(writer), "done");
    assert_eq!(
        std::fs::metadata(&shm).unwrap().len(),
        64 * MIB,
        "dd wrote the file"
    );
    std::thread::sleep(Duration::from_millis(200));
    let usage = env.iso.usage(&mem_id).unwrap();
    let known = (64 * MIB) as f64;
    let diff = (usage.mem_current_bytes as f64 - known).abs() / known;
    eprintln!("memory: {usage:?} vs 64 MiB written ({:.1}%)", diff * 100.0);
    assert!(diff <= 0.10, "memory usage off by {:.1}%", diff * 100.0);
    assert!(
        usage.mem_cache_bytes.unwrap() >= 64 * MIB,
        "tmpfs pages are cache: {usage:?}"
    );
    env.send(writer, "end");
    env.wait(writer, Duration::from_secs(30));
    env.finish();
}

#[test]
fn destroy_of_100_containers_leaves_no_cgroups() {
    let Some(mut env) = Env::new() else { return };
    let ids: Vec<String> = (0..100)
        .map(|_| env.prepare(0.1, 16 * MIB, Some(8)))
        .collect();
    for id in &ids {
        env.spawn_in(id, "exec sleep 300");
    }
    assert_eq!(env.iso.list().unwrap().len(), 100);
    let start = Instant::now();
    for id in &ids {
        env.iso.cleanup(id).expect("cleanup");
    }
    eprintln!("100 containers destroyed in {:?}", start.elapsed());
    assert!(env.iso.list().unwrap().is_empty());
    for id in &ids {
        for p in env.iso.container_paths(id) {
            assert!(!p.exists(), "left behind: {}", p.display());
        }
    }
    for idx in 0..100 {
        let status = env.wait(idx, Duration::from_secs(30));
        assert_eq!(status.signal(), Some(libc_sigkill()));
    }
    env.finish();
}

#[test]
fn stuck_frozen_child_ends_in_a_clear_error_not_a_hang() {
    let Some(mut env) = Env::new() else { return };
    env.iso = env.iso.clone().with_removal_timeout(Duration::from_secs(2));
    let id = env.prepare(1.0, 64 * MIB, None);
    let sleeper = env.spawn_in(&id, "exec sleep 300");
    let pid = env.pid(sleeper);
    // A cgroup nested in the container (as a workload with a delegated hierarchy could make),
    // frozen with the process in it.
    let (parent, state_file, frozen) = if env.v2() {
        (
            env.iso.container_paths(&id)[0].clone(),
            "cgroup.freeze",
            "1",
        )
    } else {
        match env
            .iso
            .container_paths(&id)
            .into_iter()
            .find(|p| p.join("freezer.state").exists())
        {
            Some(p) => (p, "freezer.state", "FROZEN"),
            None => {
                cannot_run("no v1 freezer hierarchy mounted");
                return;
            }
        }
    };
    let stuck = parent.join("stuck");
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("cgroup.procs"), pid.to_string()).unwrap();
    env.thaw.push((
        stuck.join(state_file),
        if env.v2() { "0" } else { "THAWED" },
    ));
    std::fs::write(stuck.join(state_file), frozen).unwrap();
    let is_frozen = || {
        if env.iso.version().as_str() == "v2" {
            read(&stuck.join("cgroup.events")).contains("frozen 1")
        } else {
            read(&stuck.join("freezer.state")) == "FROZEN"
        }
    };
    poll(Duration::from_secs(10), || is_frozen().then_some(())).expect("child cgroup frozen");

    let start = Instant::now();
    let result = env.iso.cleanup(&id);
    let took = start.elapsed();
    eprintln!("cleanup with a frozen nested cgroup: {result:?} after {took:?}");
    assert!(took < Duration::from_secs(60), "bounded, no hang: {took:?}");
    if env.v2() {
        // cgroup.kill kills frozen tasks too.
        result.expect("v2 cleanup succeeds");
        let status = env.wait(sleeper, Duration::from_secs(30));
        assert_eq!(status.signal(), Some(libc_sigkill()));
    } else {
        match result {
            Err(IsolatorError::Cgroup(e @ CgroupError::KillTimeout { .. })) => {
                let msg = e.to_string();
                assert!(msg.contains(&stuck.display().to_string()), "{msg}");
                assert!(msg.contains(&pid.to_string()), "{msg}");
            }
            other => panic!(
                "expected KillTimeout naming {}, got {other:?}",
                stuck.display()
            ),
        }
        assert!(stuck.is_dir(), "nothing removed while the process is stuck");
        // Thawed, the pending SIGKILL ends it and cleanup succeeds.
        std::fs::write(stuck.join("freezer.state"), "THAWED").unwrap();
        let status = env.wait(sleeper, Duration::from_secs(30));
        assert_eq!(status.signal(), Some(libc_sigkill()));
        env.iso.cleanup(&id).expect("cleanup after thaw");
    }
    assert!(!stuck.exists());
    env.finish();
}

#[test]
fn hugetlb_limit_or_a_clear_refusal() {
    let Some(mut env) = Env::new() else { return };
    let huge = |size: &str| Limits {
        hugetlb: vec![HugetlbLimit {
            page_size: size.into(),
            limit_bytes: 4 * MIB,
        }],
        ..limits(1.0, 64 * MIB, None)
    };
    let spec = env.spec(huge("2MB"), Default::default());
    match env.iso.prepare(&spec) {
        Ok(_) => {
            let file = if env.v2() {
                "hugetlb.2MB.max"
            } else {
                "hugetlb.2MB.limit_in_bytes"
            };
            let dir = dir_for(&env, &spec.id, file);
            assert_eq!(read(&dir.join(file)), (4 * MIB).to_string());
            let bogus = env.spec(huge("3MB"), Default::default());
            let err = env.iso.prepare(&bogus).unwrap_err();
            assert!(matches!(err, IsolatorError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains("\"3MB\""), "{err}");
        }
        Err(IsolatorError::Cgroup(e @ CgroupError::ControllerMissing { controller, .. })) => {
            assert_eq!(controller, "hugetlb", "{e}");
            eprintln!("no hugetlb controller here, refused clearly: {e}");
            if !env.v2() {
                assert!(
                    !std::path::Path::new("/sys/fs/cgroup/hugetlb").exists(),
                    "hugetlb is mounted but was reported missing: {e}"
                );
            }
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
    env.finish();
}
