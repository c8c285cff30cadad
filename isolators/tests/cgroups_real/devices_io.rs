//! The device allow-list (v1 devices controller, v2 eBPF program) and io limits, for real.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use berth_isolators::cgroups::devices;
use berth_isolators::{IoMax, IsolationOptions, Isolator, Limits};

use super::support::{Env, cannot_run, dir_for, limits, read, unique};

const MIB: u64 = 1 << 20;

/// An existing character device outside the default allow-list (/dev/loop-control only exists
/// once the loop module is loaded).
fn denied_device() -> &'static str {
    [
        "/dev/loop-control",
        "/dev/mem",
        "/dev/port",
        "/dev/cpu_dma_latency",
        "/dev/snapshot",
    ]
    .into_iter()
    .find(|d| Path::new(d).exists())
    .expect("no device outside the allow-list to try")
}

/// What a workload may and may not do with devices under the default allow-list; `run` executes
/// a script in the cgroup under test.
fn check_default_rules(
    env: &mut Env,
    run: &mut dyn FnMut(&mut Env, &str) -> (ExitStatus, String, String),
) {
    let (status, _, err) = run(env, "head -c1 /dev/null && head -c1 /dev/zero >/dev/null");
    assert!(status.success(), "null and zero are allowed: {err}");

    let other = denied_device();
    let (status, _, err) = run(env, &format!("head -c0 {other}"));
    assert!(!status.success(), "{other} must not open");
    assert!(
        err.contains("Operation not permitted"),
        "EPERM expected: {err}"
    );

    let (status, _, err) = run(env, "head -c0 /dev/kmsg");
    assert!(!status.success(), "kmsg must not open");
    assert!(
        err.contains("Operation not permitted"),
        "EPERM expected: {err}"
    );

    let blk = PathBuf::from("/tmp").join(unique("blk"));
    env.files.push(blk.clone());
    let (status, _, err) = run(env, &format!("mknod {} b 7 0", blk.display()));
    assert!(!status.success(), "mknod of a block device must fail");
    assert!(
        err.contains("Operation not permitted"),
        "EPERM expected: {err}"
    );
    assert!(!blk.exists());

    let null = PathBuf::from("/tmp").join(unique("null"));
    env.files.push(null.clone());
    let (status, _, err) = run(env, &format!("mknod {} c 1 3", null.display()));
    assert!(status.success(), "mknod of null is allowed (rwm): {err}");
}

#[test]
fn devices_allow_list_is_enforced() {
    let Some(mut env) = Env::new() else { return };
    let id = env.prepare(1.0, 64 * MIB, None);
    check_default_rules(&mut env, &mut |env, script| env.run_in(&id, script));

    // An extra device asked for in the options is allowed.
    let kmsg = env.prepare_with(
        limits(1.0, 64 * MIB, None),
        IsolationOptions {
            devices: vec![PathBuf::from("/dev/kmsg")],
            ..Default::default()
        },
    );
    let (status, _, err) = env.run_in(&kmsg, "head -c0 /dev/kmsg");
    assert!(status.success(), "/dev/kmsg was allowed: {err}");
    let (status, _, _) = env.run_in(&kmsg, &format!("head -c0 {}", denied_device()));
    assert!(!status.success(), "others stay denied");
    let described = env.iso.describe(&kmsg);
    eprintln!("describe: {described}");
    let allowed = described["devices"]["allowed"].as_array().unwrap();
    assert!(allowed.iter().any(|r| r == "c 1:11 rwm"), "{described}");
    if !env.v2() {
        let list = described["devices"]["kernel_list"].as_array().unwrap();
        assert!(list.iter().any(|r| r == "c 1:11 rwm"), "{described}");
        assert!(!list.iter().any(|r| r == "a *:* rwm"), "{described}");
    }
    env.finish();
}

/// The eBPF filter itself, on a cgroup2 hierarchy: on a v1 hybrid host the controller-less
/// `unified` mount (device programs need no controller), on v2 a cgroup beside the isolator's.
#[test]
fn ebpf_device_filter_on_a_cgroup2_hierarchy() {
    let Some(mut env) = Env::new() else { return };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let mount = if env.v2() {
        Path::new("/sys/fs/cgroup")
    } else {
        Path::new("/sys/fs/cgroup/unified")
    };
    if !mount.join("cgroup.procs").exists() {
        cannot_run("no cgroup2 hierarchy mounted to attach an eBPF device filter to");
        return;
    }
    let dir = mount.join(&own).join(format!("{}-bpf", env.base));
    std::fs::create_dir(&dir).unwrap();
    env.extra_dirs.push(dir.clone());
    let insns = devices::attach_v2_filter(&dir, &devices::default_rules()).expect("attach");
    // Attaching again replaces the filter (it would otherwise just be doubled).
    assert_eq!(
        devices::attach_v2_filter(&dir, &devices::default_rules()).unwrap(),
        insns
    );
    eprintln!(
        "eBPF device filter of {insns} instructions on {}",
        dir.display()
    );
    check_default_rules(&mut env, &mut |env, script| env.run_into(&dir, script));
    env.finish();
}

fn dd_write(env: &mut Env, id: &str, dev: &str, mib: u64) -> Duration {
    let start = Instant::now();
    let (status, _, err) = env.run_in(
        id,
        &format!("dd if=/dev/zero of={dev} bs=1M count={mib} oflag=direct"),
    );
    let took = start.elapsed();
    assert!(status.success(), "dd to {dev}: {status:?} {err}");
    took
}

#[test]
fn io_limit_on_a_loop_device() {
    let Some(mut env) = Env::new() else { return };
    let Some(dev) = env.loop_device(64 * MIB) else {
        return;
    };
    let options = || IsolationOptions {
        devices: vec![PathBuf::from(&dev)],
        ..Default::default()
    };
    let free = env.prepare_with(limits(1.0, 64 * MIB, None), options());
    let capped = env.prepare_with(
        Limits {
            io_max: vec![IoMax {
                device: dev.clone(),
                wbps: Some(MIB),
                ..Default::default()
            }],
            ..limits(1.0, 64 * MIB, None)
        },
        options(),
    );
    let meta = std::fs::metadata(&dev).unwrap();
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    let majmin = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    if env.v2() {
        let io_max = read(&dir_for(&env, &capped, "io.max").join("io.max"));
        assert!(
            io_max.contains(&format!("{majmin} rbps=max wbps=1048576")),
            "{io_max}"
        );
    } else {
        let file = "blkio.throttle.write_bps_device";
        let v = read(&dir_for(&env, &capped, file).join(file));
        assert_eq!(v, format!("{majmin} 1048576"));
    }

    const WRITE_MIB: u64 = 4;
    let unlimited = dd_write(&mut env, &free, &dev, WRITE_MIB);
    let limited = dd_write(&mut env, &capped, &dev, WRITE_MIB);
    eprintln!(
        "{WRITE_MIB} MiB O_DIRECT to {dev}: unlimited {unlimited:?}, at 1 MiB/s {limited:?} \
         (ratio {:.1})",
        limited.as_secs_f64() / unlimited.as_secs_f64().max(1e-3)
    );
    // Throttling sets a floor on the time (a busy machine only adds to it): 4 MiB at 1 MiB/s is
    // at least ~3 s after the first slice's allowance.
    assert!(
        limited >= Duration::from_secs(2),
        "not throttled: {limited:?}"
    );
    assert!(
        limited > unlimited,
        "{limited:?} vs unlimited {unlimited:?}"
    );
    for id in [&free, &capped] {
        let usage = env.iso.usage(id).unwrap();
        let written = usage.io_write_bytes.expect("io byte counters");
        assert!(
            (WRITE_MIB * MIB..=2 * WRITE_MIB * MIB).contains(&written),
            "{id}: {written} bytes written, {WRITE_MIB} MiB expected: {usage:?}"
        );
    }
    env.finish();
}
