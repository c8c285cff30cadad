//! Unit tests against fixture trees: plain directories and files standing in for cgroupfs. The
//! kernel creates control files at mkdir; fixtures pre-create the ones the code under test writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;

use super::bpf::double::RecordingBpf;
use super::*;
use crate::{Limits, NetworkMode};

pub(super) fn put(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

pub(super) fn get(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

pub(super) fn spec(id: &str, cpus: f64, mem: u64, pids: Option<u64>) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        limits: Limits {
            cpus,
            mem_bytes: mem,
            pids_max: pids,
            cpu_hard_cap: true,
            ..Default::default()
        },
        network: NetworkMode::None,
        hostname: id.into(),
        sandbox: std::path::PathBuf::from("/nonexistent"),
        options: Default::default(),
        image: None,
    }
}

/// A pure v2 root; the agent's own cgroup is `own` ("/" = root).
pub(super) struct V2Fixture {
    pub(super) tmp: TempDir,
    pub(super) own: PathBuf,
    pub(super) bpf: Arc<RecordingBpf>,
}

impl V2Fixture {
    pub(super) fn new(own: &str) -> Self {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("cg");
        put(
            &root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        put(&root.join("cgroup.subtree_control"), "");
        put(&root.join("cgroup.procs"), "1\n");
        let own_dir = root.join(own.trim_start_matches('/'));
        put(&own_dir.join("cgroup.controllers"), "cpu io memory pids\n");
        put(&own_dir.join("cgroup.subtree_control"), "");
        put(&tmp.path().join("self_cgroup"), &format!("0::{own}\n"));
        V2Fixture {
            tmp,
            own: own_dir,
            bpf: Arc::default(),
        }
    }

    pub(super) fn iso(&self) -> Result<CgroupsIsolator, CgroupError> {
        Ok(CgroupsIsolator::new(
            &self.tmp.path().join("cg"),
            &self.tmp.path().join("self_cgroup"),
            "berth",
        )?
        .with_bpf(self.bpf.clone()))
    }

    /// What the kernel would create at mkdir of the base and of a container.
    pub(super) fn kernel_files(&self, id: &str) -> PathBuf {
        let base = self.own.join("berth");
        put(&base.join("cgroup.subtree_control"), "");
        put(&base.join("cgroup.procs"), "");
        let dir = base.join(id);
        for f in [
            "cpu.max",
            "cpu.weight",
            "memory.max",
            "memory.high",
            "memory.swap.max",
            "pids.max",
            "cgroup.procs",
        ] {
            put(&dir.join(f), "");
        }
        dir
    }
}

/// A v1 root with separate hierarchies (like this host), optionally hybrid.
pub(super) fn v1_fixture(hybrid: bool) -> TempDir {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("cg");
    for c in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    ] {
        fs::create_dir_all(root.join(c)).unwrap();
    }
    fs::create_dir_all(root.join("memory/process_api/abc")).unwrap();
    if hybrid {
        put(&root.join("unified/cgroup.controllers"), "");
    }
    put(&root.join("cpuset/cpuset.cpus"), "0-3\n");
    put(&root.join("cpuset/cpuset.mems"), "0\n");
    put(
        &tmp.path().join("self_cgroup"),
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n\
         4:memory:/process_api/abc\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n",
    );
    tmp
}

pub(super) fn v1_iso(tmp: &TempDir) -> Result<CgroupsIsolator, CgroupError> {
    CgroupsIsolator::new(
        &tmp.path().join("cg"),
        &tmp.path().join("self_cgroup"),
        "berth",
    )
}

pub(super) fn v1_kernel_files(tmp: &TempDir, id: &str) {
    let root = tmp.path().join("cg");
    let files: [(&str, &[&str]); 8] = [
        (
            "cpu",
            &[
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "cpu.shares",
                "cgroup.procs",
            ],
        ),
        ("cpuacct", &["cgroup.procs"]),
        (
            "memory/process_api/abc",
            &[
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "memory.soft_limit_in_bytes",
                "cgroup.procs",
            ],
        ),
        ("pids", &["pids.max", "cgroup.procs"]),
        ("freezer", &["cgroup.procs"]),
        (
            "devices",
            &["devices.allow", "devices.deny", "cgroup.procs"],
        ),
        ("blkio", &["cgroup.procs"]),
        ("cpuset", &["cpuset.cpus", "cpuset.mems", "cgroup.procs"]),
    ];
    for (h, names) in files {
        for n in names {
            put(&root.join(h).join("berth").join(id).join(n), "");
        }
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        put(&root.join("cpuset/berth").join(f), "");
    }
}

#[test]
fn detects_v2_at_root() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    assert_eq!(iso.version(), CgroupVersion::V2);
    assert_eq!(
        iso.container_paths("c1"),
        vec![fx.tmp.path().join("cg/berth/c1")]
    );
    let d = iso.describe("c1");
    assert_eq!(d["version"], "v2");
    assert_eq!(
        d["paths"][0],
        fx.tmp.path().join("cg/berth/c1").display().to_string()
    );
}

#[test]
fn detects_v2_nested_own_cgroup() {
    let fx = V2Fixture::new("/system.slice/berth.service");
    let iso = fx.iso().unwrap();
    assert_eq!(iso.container_paths("c1"), vec![fx.own.join("berth/c1")]);
}

#[test]
fn v2_own_cgroup_must_exist_and_stay_inside() {
    let fx = V2Fixture::new("/");
    put(&fx.tmp.path().join("self_cgroup"), "0::/gone\n");
    assert!(matches!(fx.iso(), Err(CgroupError::OwnCgroup { .. })));
    put(&fx.tmp.path().join("self_cgroup"), "0::/../..\n");
    assert!(matches!(fx.iso(), Err(CgroupError::OwnCgroup { .. })));
    put(&fx.tmp.path().join("self_cgroup"), "1:cpu:/\n");
    assert!(matches!(fx.iso(), Err(CgroupError::OwnCgroup { .. })));
}

#[test]
fn detects_v1_separate_hierarchies_and_hybrid() {
    for hybrid in [false, true] {
        let tmp = v1_fixture(hybrid);
        let iso = v1_iso(&tmp).unwrap();
        assert_eq!(iso.version(), CgroupVersion::V1, "hybrid={hybrid}");
        let root = tmp.path().join("cg");
        assert_eq!(
            iso.container_paths("c1"),
            vec![
                root.join("cpu/berth/c1"),
                root.join("cpuacct/berth/c1"),
                root.join("memory/process_api/abc/berth/c1"),
                root.join("pids/berth/c1"),
                root.join("freezer/berth/c1"),
                root.join("devices/berth/c1"),
                root.join("blkio/berth/c1"),
                root.join("cpuset/berth/c1"),
            ]
        );
        assert_eq!(iso.describe("c1")["version"], "v1");
    }
}

#[test]
fn detects_v1_combined_cpu_cpuacct_via_symlinks_or_joined_name() {
    for symlinks in [true, false] {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("cg");
        for c in ["cpu,cpuacct", "memory", "pids"] {
            fs::create_dir_all(root.join(c).join("user.slice")).unwrap();
        }
        if symlinks {
            std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
            std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
        }
        put(
            &tmp.path().join("self_cgroup"),
            "12:pids:/user.slice\n4:cpu,cpuacct:/user.slice\n3:memory:/user.slice\n0::/user.slice\n",
        );
        let iso = v1_iso(&tmp).unwrap();
        let cpu = if symlinks { "cpu" } else { "cpu,cpuacct" };
        // One directory for the co-mounted hierarchy; no freezer mounted.
        assert_eq!(
            iso.container_paths("x"),
            vec![
                root.join(cpu).join("user.slice/berth/x"),
                root.join("memory/user.slice/berth/x"),
                root.join("pids/user.slice/berth/x"),
            ]
        );
    }
}

#[test]
fn v1_missing_required_controller_is_named() {
    let tmp = v1_fixture(false);
    fs::remove_dir_all(tmp.path().join("cg/pids")).unwrap();
    let err = v1_iso(&tmp).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::ControllerMissing {
                controller: "pids",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn nothing_mounted() {
    let tmp = TempDir::new().unwrap();
    fs::create_dir_all(tmp.path().join("cg")).unwrap();
    put(&tmp.path().join("self_cgroup"), "0::/\n");
    assert!(matches!(v1_iso(&tmp), Err(CgroupError::NotMounted { .. })));
}

#[test]
fn bad_base_name_rejected() {
    let fx = V2Fixture::new("/");
    let r = CgroupsIsolator::new(
        &fx.tmp.path().join("cg"),
        &fx.tmp.path().join("self_cgroup"),
        "../x",
    );
    assert!(matches!(r, Err(CgroupError::InvalidBaseName(_))));
}

#[test]
fn empty_base_puts_containers_under_the_own_cgroup() {
    let tmp = v1_fixture(true);
    let iso =
        CgroupsIsolator::new(&tmp.path().join("cg"), &tmp.path().join("self_cgroup"), "").unwrap();
    let root = tmp.path().join("cg");
    let paths = iso.container_paths("c1");
    assert_eq!(paths[0], root.join("cpu/c1"));
    assert_eq!(paths[2], root.join("memory/process_api/abc/c1"));
    let fx = V2Fixture::new("/a");
    let iso = CgroupsIsolator::new(
        &fx.tmp.path().join("cg"),
        &fx.tmp.path().join("self_cgroup"),
        "",
    )
    .unwrap();
    assert_eq!(
        iso.container_paths("c1"),
        vec![fx.tmp.path().join("cg/a/c1")]
    );
}

#[test]
fn v2_prepare_writes_limits() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    let dir = fx.kernel_files("c1");
    iso.prepare(&spec("c1", 0.5, 64 << 20, Some(100))).unwrap();
    let root = fx.tmp.path().join("cg");
    assert_eq!(
        get(&root.join("cgroup.subtree_control")),
        "+cpu +memory +pids +io"
    );
    assert_eq!(
        get(&root.join("berth/cgroup.subtree_control")),
        "+cpu +memory +pids +io"
    );
    assert_eq!(get(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(get(&dir.join("cpu.weight")), "20");
    assert_eq!(get(&dir.join("memory.high")), "max");
    assert_eq!(get(&dir.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(get(&dir.join("memory.swap.max")), "0");
    assert_eq!(get(&dir.join("pids.max")), "100");

    iso.prepare(&spec("c1", 0.001, 1 << 20, None)).unwrap();
    assert_eq!(get(&dir.join("cpu.max")), "1000 100000");
    assert_eq!(get(&dir.join("cpu.weight")), "1");
    assert_eq!(get(&dir.join("pids.max")), "max");
    iso.prepare(&spec("c1", 200.0, 1 << 20, None)).unwrap();
    assert_eq!(get(&dir.join("cpu.max")), "20000000 100000");
    assert_eq!(get(&dir.join("cpu.weight")), "7812");
    // Every prepare attached the default device filter (and replaced the previous one).
    let calls = fx.bpf.calls.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|c| c.starts_with("attach")).count(), 3);
    assert_eq!(fx.bpf.attached.lock().unwrap().len(), 1);
}

#[test]
fn v2_already_enabled_controllers_are_not_rewritten() {
    let fx = V2Fixture::new("/");
    let root = fx.tmp.path().join("cg");
    put(
        &root.join("cgroup.subtree_control"),
        "cpuset cpu io memory pids",
    );
    fx.kernel_files("c1");
    fx.iso()
        .unwrap()
        .prepare(&spec("c1", 1.0, 1 << 20, None))
        .unwrap();
    assert_eq!(
        get(&root.join("cgroup.subtree_control")),
        "cpuset cpu io memory pids"
    );
}

#[test]
fn v2_internal_process_rule_is_explained() {
    let fx = V2Fixture::new("/agent");
    put(&fx.own.join("cgroup.procs"), "4242\n");
    fx.kernel_files("c1");
    let err = fx
        .iso()
        .unwrap()
        .prepare(&spec("c1", 1.0, 1 << 20, None))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            IsolatorError::Cgroup(CgroupError::InternalProcess { .. })
        ),
        "{msg}"
    );
    assert!(
        msg.contains("systemd-run") && msg.contains("agent"),
        "{msg}"
    );
    assert_eq!(
        get(&fx.own.join("cgroup.subtree_control")),
        "",
        "must not touch a busy cgroup"
    );

    // Without processes in it the own cgroup may delegate.
    put(&fx.own.join("cgroup.procs"), "");
    fx.iso()
        .unwrap()
        .prepare(&spec("c1", 1.0, 1 << 20, None))
        .unwrap();
}

#[test]
fn v2_missing_controller_is_named() {
    let fx = V2Fixture::new("/");
    put(
        &fx.tmp.path().join("cg/cgroup.controllers"),
        "cpu io pids\n",
    );
    let err = fx
        .iso()
        .unwrap()
        .prepare(&spec("c1", 1.0, 1 << 20, None))
        .unwrap_err();
    assert!(
        matches!(
            err,
            IsolatorError::Cgroup(CgroupError::ControllerMissing {
                controller: "memory",
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cgroup.controllers"));
}

#[test]
fn v1_prepare_writes_limits() {
    let tmp = v1_fixture(true);
    v1_kernel_files(&tmp, "c1");
    let iso = v1_iso(&tmp).unwrap();
    iso.prepare(&spec("c1", 0.5, 64 << 20, Some(100))).unwrap();
    let root = tmp.path().join("cg");
    let cpu = root.join("cpu/berth/c1");
    assert_eq!(get(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(get(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(get(&cpu.join("cpu.shares")), "512");
    let mem = root.join("memory/process_api/abc/berth/c1");
    assert_eq!(
        get(&mem.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        get(&mem.join("memory.memsw.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(get(&root.join("pids/berth/c1/pids.max")), "100");
    assert!(root.join("freezer/berth/c1").is_dir());
    assert!(root.join("cpuacct/berth/c1").is_dir());

    iso.prepare(&spec("c1", 0.001, 1 << 20, None)).unwrap();
    assert_eq!(get(&cpu.join("cpu.shares")), "2");
    assert_eq!(get(&cpu.join("cpu.cfs_quota_us")), "1000");
    assert_eq!(get(&root.join("pids/berth/c1/pids.max")), "max");
}

#[test]
fn v1_without_memsw_writes_only_the_limit() {
    let tmp = v1_fixture(false);
    v1_kernel_files(&tmp, "c1");
    let mem = tmp.path().join("cg/memory/process_api/abc/berth/c1");
    fs::remove_file(mem.join("memory.memsw.limit_in_bytes")).unwrap();
    v1_iso(&tmp)
        .unwrap()
        .prepare(&spec("c1", 2.0, 1 << 30, None))
        .unwrap();
    assert_eq!(
        get(&mem.join("memory.limit_in_bytes")),
        (1u64 << 30).to_string()
    );
    assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
}

#[test]
fn invalid_limits_and_ids_are_rejected_before_any_path() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    for bad in ["", "..", "a/b", ".x", "../../etc"] {
        assert!(matches!(
            iso.prepare(&spec(bad, 1.0, 1 << 20, None)),
            Err(IsolatorError::InvalidContainerId(_))
        ));
        assert!(matches!(
            iso.isolate(bad, 1),
            Err(IsolatorError::InvalidContainerId(_))
        ));
        assert!(matches!(
            iso.cleanup(bad),
            Err(IsolatorError::InvalidContainerId(_))
        ));
        assert!(matches!(
            iso.kill_all(bad),
            Err(IsolatorError::InvalidContainerId(_))
        ));
        assert!(matches!(
            iso.usage(bad),
            Err(IsolatorError::InvalidContainerId(_))
        ));
        assert!(matches!(
            iso.limitation(bad),
            Err(IsolatorError::InvalidContainerId(_))
        ));
        assert!(iso.container_paths(bad).is_empty());
        assert!(iso.describe(bad).get("error").is_some());
    }
    for (cpus, mem) in [(0.0, 1), (-1.0, 1), (f64::NAN, 1), (1.0, 0)] {
        let err = iso.prepare(&spec("c1", cpus, mem, None)).unwrap_err();
        assert!(
            matches!(err, IsolatorError::Cgroup(CgroupError::InvalidLimit { .. })),
            "{err}"
        );
    }
    assert!(!fx.tmp.path().join("cg/berth").exists());
}

#[test]
fn v2_oom_from_memory_events() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    let dir = fx.tmp.path().join("cg/berth/c1");
    put(&dir.join("memory.max"), "67108864\n");
    put(
        &dir.join("memory.events"),
        "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n",
    );
    assert_eq!(iso.limitation("c1").unwrap(), None);
    put(
        &dir.join("memory.events"),
        "low 0\nhigh 0\nmax 40\noom 1\noom_kill 1\noom_group_kill 0\n",
    );
    assert_eq!(
        iso.limitation("c1").unwrap(),
        Some(Limitation::Memory {
            message: "memory limit 64 MiB reached: 1 process OOM-killed".into()
        })
    );
    // A container without a cgroup hit nothing.
    assert_eq!(iso.limitation("gone").unwrap(), None);
}

#[test]
fn v1_oom_from_oom_control() {
    let tmp = v1_fixture(false);
    let iso = v1_iso(&tmp).unwrap();
    let mem = tmp.path().join("cg/memory/process_api/abc/berth/c1");
    put(&mem.join("memory.limit_in_bytes"), "33554432\n");
    put(
        &mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    );
    assert_eq!(iso.limitation("c1").unwrap(), None);
    put(
        &mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    assert_eq!(
        iso.limitation("c1").unwrap(),
        Some(Limitation::Memory {
            message: "memory limit 32 MiB reached: 3 processes OOM-killed".into()
        })
    );
    // Pre-4.13 kernels have no oom_kill line: no claim is made.
    put(
        &mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 1\n",
    );
    assert_eq!(iso.limitation("c1").unwrap(), None);
}

#[test]
fn v2_usage_parsing() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    let dir = fx.tmp.path().join("cg/berth/c1");
    put(
        &dir.join("cpu.stat"),
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\n\
         throttled_usec 20\nnr_bursts 0\nburst_usec 0\n",
    );
    put(&dir.join("memory.current"), "4096\n");
    put(&dir.join("pids.current"), "3\n");
    let u = iso.usage("c1").unwrap();
    assert_eq!(
        u,
        Usage {
            cpu_usage_ns: 1_500_000,
            cpu_user_ns: Some(1_000_000),
            cpu_system_ns: Some(500_000),
            cpu_throttled_ns: Some(20_000),
            mem_current_bytes: 4096,
            mem_peak_bytes: None,
            pids_current: 3,
            cpu_nr_periods: Some(3),
            cpu_nr_throttled: Some(1),
            ..Default::default()
        }
    );
    put(&dir.join("memory.peak"), "8192\n");
    assert_eq!(iso.usage("c1").unwrap().mem_peak_bytes, Some(8192));
    put(&dir.join("pids.current"), "lots\n");
    assert!(matches!(
        iso.usage("c1"),
        Err(IsolatorError::Cgroup(CgroupError::Parse { .. }))
    ));
    assert!(matches!(
        iso.usage("gone"),
        Err(IsolatorError::Cgroup(CgroupError::Read { .. }))
    ));
}

#[test]
fn v1_usage_parsing() {
    let tmp = v1_fixture(false);
    let iso = v1_iso(&tmp).unwrap();
    let root = tmp.path().join("cg");
    put(&root.join("cpuacct/berth/c1/cpuacct.usage"), "123456789\n");
    put(
        &root.join("cpuacct/berth/c1/cpuacct.stat"),
        "user 7\nsystem 3\n",
    );
    put(
        &root.join("cpu/berth/c1/cpu.stat"),
        "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
    );
    let mem = root.join("memory/process_api/abc/berth/c1");
    put(&mem.join("memory.usage_in_bytes"), "1048576\n");
    put(&mem.join("memory.max_usage_in_bytes"), "2097152\n");
    put(&root.join("pids/berth/c1/pids.current"), "2\n");
    let tick = 1_000_000_000 / values::clock_ticks_per_sec();
    assert_eq!(
        iso.usage("c1").unwrap(),
        Usage {
            cpu_usage_ns: 123_456_789,
            cpu_user_ns: Some(7 * tick),
            cpu_system_ns: Some(3 * tick),
            cpu_throttled_ns: Some(5000),
            mem_current_bytes: 1 << 20,
            mem_peak_bytes: Some(2 << 20),
            pids_current: 2,
            cpu_nr_periods: Some(10),
            cpu_nr_throttled: Some(2),
            ..Default::default()
        }
    );
}

#[test]
fn v2_list_recover_and_idempotent_cleanup() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    assert_eq!(iso.list().unwrap(), Vec::<String>::new(), "no base yet");
    let base = fx.tmp.path().join("cg/berth");
    for id in ["a", "b", "c"] {
        fs::create_dir_all(base.join(id)).unwrap();
    }
    put(&base.join("cgroup.procs"), "");
    fs::create_dir_all(base.join(".hidden")).unwrap();
    fs::create_dir_all(base.join("b/nested/deeper")).unwrap();
    assert_eq!(iso.list().unwrap(), vec!["a", "b", "c"]);

    let cleaned = iso.recover(&["a".to_string()]).unwrap();
    assert_eq!(cleaned, vec!["b", "c"]);
    assert_eq!(iso.list().unwrap(), vec!["a"]);
    assert!(base.is_dir(), "the base itself stays");
    assert!(base.join(".hidden").is_dir(), "not berth's, untouched");

    iso.cleanup("a").unwrap();
    iso.cleanup("a").unwrap();
    iso.cleanup("never-existed").unwrap();
    iso.kill_all("never-existed").unwrap();
    assert!(iso.list().unwrap().is_empty());
}

#[test]
fn v1_list_is_the_union_of_hierarchies_and_cleanup_removes_all() {
    let tmp = v1_fixture(false);
    let iso = v1_iso(&tmp).unwrap();
    let root = tmp.path().join("cg");
    fs::create_dir_all(root.join("cpu/berth/x")).unwrap();
    fs::create_dir_all(root.join("memory/process_api/abc/berth/y")).unwrap();
    fs::create_dir_all(root.join("pids/berth/y")).unwrap();
    assert_eq!(iso.list().unwrap(), vec!["x", "y"]);
    assert_eq!(iso.recover(&[]).unwrap(), vec!["x", "y"]);
    assert!(iso.list().unwrap().is_empty());
    assert!(root.join("memory/process_api/abc/berth").is_dir());
    iso.cleanup("x").unwrap();
}

#[test]
fn cleanup_reports_what_it_cannot_remove() {
    let fx = V2Fixture::new("/");
    let iso = fx.iso().unwrap();
    // A stray regular file makes rmdir fail with ENOTEMPTY (on cgroupfs: not possible; here it
    // stands in for any non-EBUSY failure).
    put(&fx.tmp.path().join("cg/berth/c1/stray"), "");
    let err = iso.cleanup("c1").unwrap_err();
    assert!(
        matches!(err, IsolatorError::Cgroup(CgroupError::Rmdir { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("berth/c1"));
}

#[test]
fn values_match_mesos_conventions() {
    assert_eq!(values::cpu_quota_us(0.5), 50_000);
    assert_eq!(values::cpu_quota_us(1.25), 125_000);
    // runc: weight = 1 + (shares - 2) * 9999 / 262142.
    assert_eq!(values::cpu_weight(1.0), 39);
    assert_eq!(values::cpu_weight(0.5), 20);
    assert_eq!(values::cpu_weight(0.25), 10);
    assert_eq!(values::cpu_weight(0.75), 30);
    assert_eq!(values::cpu_weight(0.0001), 1);
    assert_eq!(values::cpu_weight(256.0), 10_000);
    assert_eq!(values::cpu_shares(0.5), 512);
    assert_eq!(values::cpu_shares(4.0), 4096);
    assert_eq!(super::fs::human_bytes(64 << 20), "64 MiB");
    assert_eq!(super::fs::human_bytes(1000), "1000 bytes");
}

#[test]
fn proc_cgroup_parsing() {
    let lines = detect::parse_proc_cgroup("4:cpu,cpuacct:/a\n0::/b:c\ngarbage\n");
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].controllers, vec!["cpu", "cpuacct"]);
    assert_eq!(lines[1].path, "/b:c");
    assert!(lines[1].controllers.is_empty());
}
