//! Fixture tests of the limits beyond cpu/memory/pids basics: hard cap option, memory.high,
//! swap, io, cpuset, hugetlb, devices, live update, the running OOM check, the extra usage fields
//! and the bounded kill.

use std::time::{Duration, Instant};

use super::tests::{V2Fixture, get, put, spec, v1_fixture, v1_iso, v1_kernel_files};
use super::*;
use crate::{HugetlbLimit, IoMax, IsolationOptions};

/// A pid that cannot exist (above the kernel's maximum pid_max of 2^22): SIGKILL gets ESRCH.
const NO_SUCH_PID: &str = "2147483000";

fn full_spec(id: &str) -> ContainerSpec {
    let mut s = spec(id, 0.5, 64 << 20, Some(50));
    s.limits.cpu_hard_cap = false;
    s.limits.mem_high_bytes = Some(32 << 20);
    s.limits.swap_bytes = 16 << 20;
    s.limits.cpuset_cpus = Some("1".into());
    s.limits.io_weight = Some(500);
    s.limits.io_max = vec![IoMax {
        device: "7:3".into(),
        wbps: Some(1 << 20),
        ..Default::default()
    }];
    s.limits.hugetlb = vec![HugetlbLimit {
        page_size: "2MB".into(),
        limit_bytes: 4 << 20,
    }];
    s.options = IsolationOptions {
        devices: vec!["/dev/null".into()],
        ..Default::default()
    };
    s
}

fn v2_full_fixture() -> (V2Fixture, PathBuf) {
    let fx = V2Fixture::new("/");
    put(
        &fx.own.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids\n",
    );
    let dir = fx.kernel_files("c1");
    for f in [
        "cpuset.cpus",
        "cpuset.mems",
        "io.weight",
        "io.max",
        "hugetlb.2MB.max",
    ] {
        put(&dir.join(f), "");
    }
    (fx, dir)
}

#[test]
fn v2_every_limit_is_written() {
    let (fx, dir) = v2_full_fixture();
    let iso = fx.iso().unwrap();
    iso.prepare(&full_spec("c1")).unwrap();
    let root = fx.tmp.path().join("cg");
    assert_eq!(
        get(&root.join("cgroup.subtree_control")),
        "+cpu +memory +pids +io +cpuset +hugetlb"
    );
    assert_eq!(get(&dir.join("cpu.max")), "max 100000", "no hard cap asked");
    assert_eq!(get(&dir.join("cpu.weight")), "20");
    assert_eq!(get(&dir.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(get(&dir.join("memory.high")), (32u64 << 20).to_string());
    assert_eq!(get(&dir.join("memory.swap.max")), (16u64 << 20).to_string());
    assert_eq!(get(&dir.join("cpuset.cpus")), "1");
    assert_eq!(get(&dir.join("cpuset.mems")), "", "not given: inherited");
    assert_eq!(get(&dir.join("io.weight")), "default 500");
    assert_eq!(
        get(&dir.join("io.max")),
        "7:3 rbps=max wbps=1048576 riops=max wiops=max"
    );
    assert_eq!(get(&dir.join("hugetlb.2MB.max")), (4u64 << 20).to_string());
    assert_eq!(fx.bpf.attached.lock().unwrap().len(), 1);

    let d = iso.describe("c1");
    assert_eq!(d["devices"]["enforcement"], "eBPF cgroup device program");
    let allowed = d["devices"]["allowed"].as_array().unwrap();
    assert_eq!(
        allowed.len(),
        8,
        "defaults; /dev/null not twice: {allowed:?}"
    );
    assert_eq!(allowed[0], "c 1:3 rwm");
    iso.cleanup("c1").unwrap_err(); // fixture control files: not a bare directory
    assert!(
        iso.describe("c1")["devices"]["allowed"].is_array(),
        "rules kept until removal succeeds"
    );
}

#[test]
fn v2_unavailable_things_are_named() {
    let (fx, dir) = v2_full_fixture();
    let iso = fx.iso().unwrap();
    // A page size the kernel lacks.
    let mut s = full_spec("c1");
    s.limits.hugetlb[0].page_size = "1GB".into();
    let err = iso.prepare(&s).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IsolatorError::Invalid { .. }), "{msg}");
    assert!(msg.contains("\"1GB\"") && msg.contains("\"2MB\""), "{msg}");
    // No io cost controller.
    std::fs::remove_file(dir.join("io.weight")).unwrap();
    let err = iso.prepare(&full_spec("c1")).unwrap_err();
    assert!(matches!(err, IsolatorError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("io.weight"), "{err}");
    // A controller the parent does not offer, asked for.
    put(&fx.own.join("cgroup.controllers"), "cpu io memory pids\n");
    let err = iso.prepare(&full_spec("c1")).unwrap_err();
    assert!(
        matches!(
            err,
            IsolatorError::Cgroup(CgroupError::ControllerMissing {
                controller: "cpuset",
                ..
            })
        ),
        "{err}"
    );
    // An io device path that is no block device.
    let mut s = spec("c1", 1.0, 1 << 20, None);
    s.limits.io_max = vec![IoMax {
        device: "/dev/null".into(),
        rbps: Some(1),
        ..Default::default()
    }];
    let err = iso.prepare(&s).unwrap_err();
    assert!(matches!(err, IsolatorError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("not a block device"), "{err}");
}

#[test]
fn v2_device_filter_failure_is_an_error_with_the_log() {
    let fx = V2Fixture {
        bpf: Arc::new(super::bpf::double::RecordingBpf {
            fail_load: true,
            ..Default::default()
        }),
        ..V2Fixture::new("/")
    };
    fx.kernel_files("c1");
    let err = fx
        .iso()
        .unwrap()
        .prepare(&spec("c1", 1.0, 1 << 20, None))
        .unwrap_err();
    assert!(err.to_string().contains("verifier log"), "{err}");
}

#[test]
fn v2_update_check_and_usage() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    let dir = fx.kernel_files("c1");
    put(&dir.join("cpu.max"), "max 100000\n");
    let update = LimitsUpdate {
        cpus: Some(2.0),
        mem_bytes: Some(128 << 20),
        mem_high_bytes: Some(100 << 20),
        pids_max: Some(7),
    };
    iso.update("c1", &update).unwrap();
    assert_eq!(get(&dir.join("cpu.weight")), "79");
    assert_eq!(get(&dir.join("cpu.max")), "max 100000\n", "no cap: stays");
    assert_eq!(get(&dir.join("memory.max")), (128u64 << 20).to_string());
    assert_eq!(get(&dir.join("memory.high")), (100u64 << 20).to_string());
    assert_eq!(get(&dir.join("pids.max")), "7");
    put(&dir.join("cpu.max"), "50000 100000\n");
    iso.update(
        "c1",
        &LimitsUpdate {
            cpus: Some(1.5),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        get(&dir.join("cpu.max")),
        "150000 100000",
        "capped: follows"
    );
    assert_eq!(get(&dir.join("pids.max")), "7", "None fields stay");
    let bad = LimitsUpdate {
        cpus: Some(f64::NAN),
        ..Default::default()
    };
    assert!(iso.update("c1", &bad).is_err());
    assert!(iso.update("gone", &update).is_err(), "no such container");

    assert_eq!(iso.check("c1").unwrap(), None, "no memory.events yet");
    put(
        &dir.join("memory.events"),
        "low 0\nhigh 5\nmax 3\noom 1\noom_kill 0\n",
    );
    assert_eq!(iso.check("c1").unwrap(), None);
    put(
        &dir.join("memory.events"),
        "low 0\nhigh 5\nmax 3\noom 2\noom_kill 2\n",
    );
    put(&dir.join("memory.max"), "134217728\n");
    assert_eq!(
        iso.check("c1").unwrap(),
        Some(Limitation::Memory {
            message: "memory limit 128 MiB reached: 2 processes OOM-killed".into()
        })
    );

    put(
        &dir.join("cpu.stat"),
        "usage_usec 10\nnr_periods 4\nnr_throttled 2\n",
    );
    put(&dir.join("memory.current"), "100\n");
    put(&dir.join("pids.current"), "1\n");
    put(&dir.join("memory.stat"), "anon 4096\nfile 8192\nkernel 1\n");
    put(
        &dir.join("io.stat"),
        "7:3 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n8:0 rbytes=1 wbytes=2 rios=1 \
         wios=1 dbytes=0 dios=0\n",
    );
    let u = iso.usage("c1").unwrap();
    assert_eq!(u.mem_rss_bytes, Some(4096));
    assert_eq!(u.mem_cache_bytes, Some(8192));
    assert_eq!((u.cpu_nr_periods, u.cpu_nr_throttled), (Some(4), Some(2)));
    assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(11), Some(22)));
    assert_eq!(u.oom_kills, Some(2));
}

#[test]
fn v1_every_limit_is_written() {
    let tmp = v1_fixture(false);
    v1_kernel_files(&tmp, "c1");
    let root = tmp.path().join("cg");
    let blkio = root.join("blkio/berth/c1");
    for f in [
        "blkio.bfq.weight",
        "blkio.throttle.read_bps_device",
        "blkio.throttle.write_bps_device",
        "blkio.throttle.read_iops_device",
        "blkio.throttle.write_iops_device",
    ] {
        put(&blkio.join(f), "");
    }
    let mut s = full_spec("c1");
    s.limits.hugetlb.clear();
    s.limits.cpuset_cpus = None;
    s.limits.cpuset_mems = Some("0".into());
    let iso = v1_iso(&tmp).unwrap();
    iso.prepare(&s).unwrap();
    let cpu = root.join("cpu/berth/c1");
    assert_eq!(
        get(&cpu.join("cpu.cfs_quota_us")),
        "-1",
        "no hard cap asked"
    );
    assert_eq!(get(&cpu.join("cpu.shares")), "512");
    let mem = root.join("memory/process_api/abc/berth/c1");
    assert_eq!(
        get(&mem.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        get(&mem.join("memory.memsw.limit_in_bytes")),
        (80u64 << 20).to_string(),
        "memory + swap"
    );
    assert_eq!(
        get(&mem.join("memory.soft_limit_in_bytes")),
        (32u64 << 20).to_string()
    );
    let devices = root.join("devices/berth/c1");
    assert_eq!(get(&devices.join("devices.deny")), "a");
    // Each rule is one write; the fixture file keeps the last.
    assert_eq!(get(&devices.join("devices.allow")), "c 136:* rw");
    assert_eq!(get(&blkio.join("blkio.bfq.weight")), "59");
    assert_eq!(
        get(&blkio.join("blkio.throttle.write_bps_device")),
        "7:3 1048576"
    );
    assert_eq!(get(&blkio.join("blkio.throttle.read_bps_device")), "7:3 0");
    // cpuset: the base copies the agent's cgroup, the container the base unless given.
    assert_eq!(get(&root.join("cpuset/berth/cpuset.cpus")), "0-3");
    assert_eq!(get(&root.join("cpuset/berth/c1/cpuset.cpus")), "0-3");
    assert_eq!(get(&root.join("cpuset/berth/c1/cpuset.mems")), "0");

    let d = iso.describe("c1");
    assert_eq!(d["devices"]["enforcement"], "v1 devices controller");

    // Asking for what a missing hierarchy provides is refused naming it.
    let err = iso.prepare(&full_spec("c1")).unwrap_err();
    assert!(
        matches!(
            err,
            IsolatorError::Cgroup(CgroupError::ControllerMissing {
                controller: "hugetlb",
                ..
            })
        ),
        "{err}"
    );
    std::fs::remove_file(blkio.join("blkio.bfq.weight")).unwrap();
    let err = iso.prepare(&s).unwrap_err();
    assert!(matches!(err, IsolatorError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("blkio.weight"), "{err}");
}

#[test]
fn v1_update_keeps_swap_and_follows_the_cap() {
    let tmp = v1_fixture(false);
    v1_kernel_files(&tmp, "c1");
    let root = tmp.path().join("cg");
    let iso = v1_iso(&tmp).unwrap();
    let mem = root.join("memory/process_api/abc/berth/c1");
    put(&mem.join("memory.limit_in_bytes"), "1000\n");
    put(&mem.join("memory.memsw.limit_in_bytes"), "1500\n");
    let cpu = root.join("cpu/berth/c1");
    put(&cpu.join("cpu.cfs_quota_us"), "-1\n");
    let update = LimitsUpdate {
        cpus: Some(2.0),
        mem_bytes: Some(3000),
        mem_high_bytes: Some(2000),
        pids_max: Some(9),
    };
    iso.update("c1", &update).unwrap();
    assert_eq!(get(&mem.join("memory.limit_in_bytes")), "3000");
    assert_eq!(get(&mem.join("memory.memsw.limit_in_bytes")), "3500");
    assert_eq!(get(&mem.join("memory.soft_limit_in_bytes")), "2000");
    assert_eq!(get(&cpu.join("cpu.shares")), "2048");
    assert_eq!(get(&cpu.join("cpu.cfs_quota_us")), "-1\n", "no cap: stays");
    assert_eq!(get(&root.join("pids/berth/c1/pids.max")), "9");
    put(&cpu.join("cpu.cfs_quota_us"), "50000\n");
    iso.update(
        "c1",
        &LimitsUpdate {
            cpus: Some(0.25),
            mem_bytes: Some(500),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(&cpu.join("cpu.cfs_quota_us")), "25000");
    assert_eq!(get(&mem.join("memory.limit_in_bytes")), "500");
    assert_eq!(get(&mem.join("memory.memsw.limit_in_bytes")), "1000");
}

#[test]
fn v1_check_and_usage() {
    let tmp = v1_fixture(false);
    let iso = v1_iso(&tmp).unwrap();
    let root = tmp.path().join("cg");
    let mem = root.join("memory/process_api/abc/berth/c1");
    put(
        &mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    );
    assert_eq!(iso.check("c1").unwrap(), None);
    put(
        &mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    put(&mem.join("memory.limit_in_bytes"), "1048576\n");
    assert!(matches!(
        iso.check("c1").unwrap(),
        Some(Limitation::Memory { .. })
    ));
    put(&root.join("cpuacct/berth/c1/cpuacct.usage"), "5\n");
    put(&mem.join("memory.usage_in_bytes"), "1\n");
    put(
        &mem.join("memory.stat"),
        "cache 1\nrss 2\ntotal_cache 300\ntotal_rss 400\n",
    );
    put(&root.join("pids/berth/c1/pids.current"), "1\n");
    put(
        &root.join("blkio/berth/c1/blkio.throttle.io_service_bytes_recursive"),
        "7:0 Read 10\n7:0 Write 4194304\n7:0 Total 4194314\nTotal 4194314\n",
    );
    let u = iso.usage("c1").unwrap();
    assert_eq!((u.mem_cache_bytes, u.mem_rss_bytes), (Some(300), Some(400)));
    assert_eq!(
        (u.io_read_bytes, u.io_write_bytes),
        (Some(10), Some(4 << 20))
    );
    assert_eq!(u.oom_kills, Some(1));
}

#[test]
fn kill_gives_up_after_the_timeout_naming_cgroup_and_pids() {
    let fx = V2Fixture::new("/");
    let iso = fx
        .iso()
        .unwrap()
        .with_removal_timeout(Duration::from_millis(300));
    let dir = fx.tmp.path().join("cg/berth/c1");
    put(&dir.join("cgroup.procs"), "");
    put(&dir.join("stuck/cgroup.procs"), &format!("{NO_SUCH_PID}\n"));
    let start = Instant::now();
    let err = iso.cleanup("c1").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            IsolatorError::Cgroup(CgroupError::KillTimeout { ref pids, .. })
                if pids == &[NO_SUCH_PID.parse::<i32>().unwrap()]
        ),
        "{msg}"
    );
    assert!(
        msg.contains("c1/stuck") && msg.contains(NO_SUCH_PID),
        "{msg}"
    );
    assert!(start.elapsed() < Duration::from_secs(60), "bounded");
    assert!(iso.kill_all("c1").is_err());
    // Once the processes are gone, removal (nested cgroups first) succeeds.
    put(&dir.join("stuck/cgroup.procs"), "");
    std::fs::remove_file(dir.join("stuck/cgroup.procs")).unwrap();
    std::fs::remove_file(dir.join("cgroup.procs")).unwrap();
    iso.cleanup("c1").unwrap();
    assert!(!dir.exists());
}

#[test]
fn v2_optional_io_is_skipped_when_the_own_cgroup_is_busy() {
    // A delegated agent cgroup that already enables what berth needs, but not io, and holds the
    // agent: nothing to refuse, io just stays off.
    let fx = V2Fixture::new("/agent");
    put(&fx.own.join("cgroup.procs"), "4242\n");
    put(&fx.own.join("cgroup.subtree_control"), "cpu memory pids\n");
    fx.kernel_files("c1");
    fx.iso()
        .unwrap()
        .prepare(&spec("c1", 1.0, 1 << 20, None))
        .unwrap();
    assert_eq!(
        get(&fx.own.join("cgroup.subtree_control")),
        "cpu memory pids\n"
    );
    // The base offers no io (its parent did not enable it): not asked for there either.
    put(
        &fx.own.join("berth/cgroup.controllers"),
        "cpu memory pids\n",
    );
    put(&fx.own.join("berth/cgroup.subtree_control"), "");
    fx.iso()
        .unwrap()
        .prepare(&spec("c1", 1.0, 1 << 20, None))
        .unwrap();
    assert_eq!(
        get(&fx.own.join("berth/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    // Asked for, io is required: the busy own cgroup is then explained.
    let mut s = spec("c1", 1.0, 1 << 20, None);
    s.limits.io_weight = Some(100);
    let err = fx.iso().unwrap().prepare(&s).unwrap_err();
    assert!(
        matches!(
            err,
            IsolatorError::Cgroup(CgroupError::InternalProcess { .. })
        ),
        "{err}"
    );
}
