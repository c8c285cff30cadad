//! Unit tests of the config.json translation, on `crun spec`'s default config (the fixture
//! `crun_spec.json` is its verbatim output) and variations of it.

use std::path::{Path, PathBuf};

use berth_executor::{MountSpec, RootfsSource};
use berth_isolators::cgroups::CgroupVersion;
use serde_json::{Value, json};

use super::*;

const CRUN_SPEC: &str = include_str!("crun_spec.json");

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bundle/rootfs")).unwrap();
        std::fs::create_dir_all(dir.path().join("bundle/data")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        Fixture { dir }
    }

    fn ctx(&self, version: CgroupVersion) -> TranslateContext {
        let root = PathBuf::from("/sys/fs/cgroup");
        let dirs = match version {
            CgroupVersion::V2 => vec![root.join("own/berth-oci/c1")],
            CgroupVersion::V1 => ["cpu", "memory", "pids"]
                .iter()
                .map(|h| root.join(h).join("own/berth-oci/c1"))
                .collect(),
        };
        TranslateContext {
            id: "c1".into(),
            bundle: self.dir.path().join("bundle"),
            state_dir: self.dir.path().join("state"),
            cgroups: CgroupView {
                version,
                root,
                dirs,
            },
            host_root: PathBuf::from("/"),
        }
    }

    fn translate(&self, edit: impl FnOnce(&mut Value)) -> Result<Translation, ConfigError> {
        self.translate_on(CgroupVersion::V1, edit)
    }

    fn translate_on(
        &self,
        version: CgroupVersion,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Translation, ConfigError> {
        let mut v: Value = serde_json::from_str(CRUN_SPEC).unwrap();
        edit(&mut v);
        let spec: Spec = serde_json::from_value(v).unwrap();
        translate(&spec, &self.ctx(version))
    }
}

fn mount<'a>(t: &'a Translation, dest: &str) -> Option<&'a MountSpec> {
    let fs = t.shim.filesystem.as_ref().unwrap();
    fs.mounts.iter().find(|m| m.destination == dest)
}

#[test]
fn crun_default_config() {
    let f = Fixture::new();
    let t = f.translate(|_| {}).unwrap();
    let s = &t.shim;
    assert_eq!(s.container_id, "c1");
    assert_eq!(s.argv, ["sh"]);
    assert_eq!(
        s.env,
        [
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
            ),
            ("TERM".to_string(), "xterm".to_string())
        ]
    );
    assert_eq!(s.cwd.as_deref(), Some(Path::new("/")));
    assert_eq!(s.namespaces, ["pid", "net", "ipc", "uts", "mount"]);
    assert!(s.ns_paths.is_empty());
    assert_eq!(s.hostname.as_deref(), Some("crun"));
    assert_eq!(s.id_maps, None);
    assert!(t.process.terminal);

    let fs = s.filesystem.as_ref().unwrap();
    assert_eq!(fs.root, f.dir.path().join("state/rootfs"));
    assert_eq!(
        fs.source,
        RootfsSource::Directory {
            path: f.dir.path().join("bundle/rootfs")
        }
    );
    assert!(fs.readonly);
    // The /dev tmpfs is berth's own fresh /dev; the default devices are there.
    assert!(mount(&t, "/dev").is_none());
    let devs: Vec<&str> = fs.devices.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(devs, DEFAULT_DEVICES);
    assert_eq!(mount(&t, "/proc").unwrap().kind, "proc");
    let pts = mount(&t, "/dev/pts").unwrap();
    assert_eq!(pts.kind, "devpts");
    assert!(pts.options.contains(&"newinstance".to_string()));
    assert_eq!(fs.masked_paths.len(), 10);
    assert!(fs.readonly_paths.contains(&"/proc/sys".to_string()));

    // Security: caps by name, ambient dropped (not inheritable), rlimit, no_new_privs, root.
    let sec = &s.security;
    assert!(sec.no_new_privileges);
    let caps = sec.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.bounding,
        ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(caps.effective, caps.bounding);
    assert!(caps.inheritable.is_empty());
    assert!(caps.ambient.is_empty());
    assert_eq!(sec.rlimits.len(), 1);
    assert_eq!(sec.rlimits[0].kind, "RLIMIT_NOFILE");
    assert_eq!((sec.rlimits[0].soft, sec.rlimits[0].hard), (1024, 1024));
    let user = sec.user.as_ref().unwrap();
    assert_eq!((user.uid, user.gid), (0, 0));
    assert_eq!(sec.seccomp, None);

    // No resources but the deny-all device rule: unlimited, weight of one cpu.
    assert_eq!(t.limits.mem_bytes, u64::MAX);
    assert_eq!(t.limits.swap_bytes, u64::MAX);
    assert_eq!(t.limits.cpus, 1.0);
    assert!(!t.limits.cpu_hard_cap);
    assert_eq!(t.limits.pids_max, None);
    assert!(t.options.devices.is_empty());
}

#[test]
fn cgroup_mount_per_version() {
    let f = Fixture::new();
    // v1: a tmpfs with a read-only bind of each container cgroup, made read-only at the end.
    let t = f.translate(|_| {}).unwrap();
    let cg = mount(&t, "/sys/fs/cgroup").unwrap();
    assert_eq!(cg.kind, "tmpfs");
    let cpu = mount(&t, "/sys/fs/cgroup/cpu").unwrap();
    assert_eq!(cpu.kind, "bind");
    assert_eq!(
        cpu.source.as_deref(),
        Some(Path::new("/sys/fs/cgroup/cpu/own/berth-oci/c1"))
    );
    assert!(cpu.options.contains(&"ro".to_string()));
    assert!(mount(&t, "/sys/fs/cgroup/memory").is_some());
    let fs = t.shim.filesystem.as_ref().unwrap();
    assert!(fs.readonly_paths.contains(&"/sys/fs/cgroup".to_string()));
    // v2: cgroup2.
    let t = f.translate_on(CgroupVersion::V2, |_| {}).unwrap();
    let cg = mount(&t, "/sys/fs/cgroup").unwrap();
    assert_eq!(cg.kind, "cgroup2");
    assert!(cg.options.contains(&"ro".to_string()));
}

#[test]
fn process_user_env_cwd() {
    let f = Fixture::new();
    let t = f
        .translate(|v| {
            v["process"]["user"] = json!({"uid": 1000, "gid": 100, "additionalGids": [5, 6]});
            v["process"]["env"] = json!(["A=b=c", "EMPTY="]);
            v["process"]["cwd"] = json!("/work");
            v["process"]["args"] = json!(["/bin/echo", "hi"]);
            v["process"]["noNewPrivileges"] = json!(false);
            v["process"]["oomScoreAdj"] = json!(100);
            v["process"]["consoleSize"] = json!({"height": 24, "width": 80});
        })
        .unwrap();
    let user = t.shim.security.user.as_ref().unwrap();
    assert_eq!((user.uid, user.gid), (1000, 100));
    assert_eq!(user.additional_gids, [5, 6]);
    assert_eq!(
        t.shim.env,
        [
            ("A".to_string(), "b=c".to_string()),
            ("EMPTY".to_string(), String::new())
        ]
    );
    assert_eq!(t.shim.cwd.as_deref(), Some(Path::new("/work")));
    assert_eq!(t.shim.argv, ["/bin/echo", "hi"]);
    assert!(!t.shim.security.no_new_privileges);
    assert_eq!(t.process.oom_score_adj, Some(100));
    assert_eq!(t.process.console_size, (80, 24));

    let e = f
        .translate(|v| v["process"]["env"] = json!(["NOEQUALS"]))
        .unwrap_err();
    assert_eq!(e.field, "process.env");
    let e = f
        .translate(|v| v["process"]["cwd"] = json!("rel"))
        .unwrap_err();
    assert_eq!(e.field, "process.cwd");
    let e = f
        .translate(|v| v["process"]["args"] = json!([]))
        .unwrap_err();
    assert_eq!(e.field, "process.args");
}

#[test]
fn mounts_bind_tmpfs_and_errors() {
    let f = Fixture::new();
    let t = f
        .translate(|v| {
            let m = v["mounts"].as_array_mut().unwrap();
            m.push(
                json!({"destination": "/data", "type": "bind", "source": "data",
                          "options": ["rbind", "ro"]}),
            );
            m.push(
                json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                          "options": ["size=1m", "mode=1777"]}),
            );
            m.push(json!({"destination": "/etc/x", "source": "/etc/hostname",
                          "options": ["bind"]}));
        })
        .unwrap();
    let data = mount(&t, "/data").unwrap();
    assert_eq!(data.kind, "bind");
    assert_eq!(
        data.source.as_deref(),
        Some(f.dir.path().join("bundle/data").as_path())
    );
    let scratch = mount(&t, "/scratch").unwrap();
    assert_eq!(scratch.kind, "tmpfs");
    assert_eq!(scratch.options, ["size=1m", "mode=1777"]);
    assert_eq!(mount(&t, "/etc/x").unwrap().kind, "bind");

    let e = f
        .translate(|v| {
            v["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/x", "type": "bind", "source": "/nonexistent-berth"}));
        })
        .unwrap_err();
    assert!(e.field.starts_with("mounts["), "{e}");
    assert!(e.message.contains("does not exist"), "{e}");
    let e = f
        .translate(|v| {
            v["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/x"}));
        })
        .unwrap_err();
    assert!(e.message.contains("no filesystem type"), "{e}");
}

#[test]
fn namespaces_and_id_maps() {
    let f = Fixture::new();
    let t = f
        .translate(|v| {
            v["linux"]["namespaces"] = json!([
                {"type": "mount"}, {"type": "pid"}, {"type": "uts"},
                {"type": "network", "path": "/proc/1/ns/net"},
                {"type": "user"}, {"type": "cgroup"}
            ]);
            v["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            v["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        })
        .unwrap();
    assert_eq!(t.shim.namespaces, ["mount", "pid", "uts", "user", "cgroup"]);
    assert_eq!(
        t.shim.ns_paths,
        [("net".to_string(), PathBuf::from("/proc/1/ns/net"))]
    );
    let maps = t.shim.id_maps.as_ref().unwrap();
    assert_eq!(maps.uid_map[0].host_id, 100_000);
    assert_eq!(map_to_host(Some(&maps.uid_map), 0), 100_000);
    assert_eq!(map_to_host(Some(&maps.uid_map), 1000), 101_000);
    assert_eq!(map_to_host(None, 1000), 1000);

    let e = f
        .translate(|v| v["linux"]["namespaces"] = json!([{"type": "pid"}]))
        .unwrap_err();
    assert!(e.message.contains("mount namespace"), "{e}");
    let e = f
        .translate(|v| v["linux"]["namespaces"] = json!([{"type": "mount"}]))
        .unwrap_err();
    assert_eq!(e.field, "hostname");
    let e = f
        .translate(|v| {
            v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "uts"}, {"type": "user"}])
        })
        .unwrap_err();
    assert!(e.message.contains("uidMappings"), "{e}");
    let e = f
        .translate(|v| {
            v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "uts"}, {"type": "time"}])
        })
        .unwrap_err();
    assert!(e.message.contains("time"), "{e}");
}

#[test]
fn resources_to_limits() {
    let f = Fixture::new();
    let t = f
        .translate(|v| {
            v["linux"]["resources"] = json!({
                "memory": {"limit": 67108864, "swap": 134217728, "reservation": 33554432},
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
                "pids": {"limit": 64},
                "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}]},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]
            });
        })
        .unwrap();
    let l = &t.limits;
    assert_eq!(l.mem_bytes, 64 << 20);
    assert_eq!(l.swap_bytes, 64 << 20);
    assert_eq!(l.mem_high_bytes, Some(32 << 20));
    assert_eq!(l.cpus, 0.5);
    assert!(l.cpu_hard_cap);
    assert_eq!(l.cpuset_cpus.as_deref(), Some("0"));
    assert_eq!(l.pids_max, Some(64));
    assert_eq!(l.io_weight, Some(4950));
    assert_eq!(l.io_max.len(), 1);
    assert_eq!(l.io_max[0].device, "8:0");
    assert_eq!(l.io_max[0].rbps, Some(1 << 20));
    assert_eq!(l.io_max[0].wiops, Some(100));
    assert_eq!(l.hugetlb[0].page_size, "2MB");
    // shares 512 = 0.5 cpus: consistent with the quota, no warning about it.
    assert!(
        !t.warnings.iter().any(|w| w.contains("cpu.shares")),
        "{:?}",
        t.warnings
    );

    // Shares alone give the weight; v2 ignores the reservation (with a warning).
    let t = f
        .translate_on(CgroupVersion::V2, |v| {
            v["linux"]["resources"] =
                json!({"cpu": {"shares": 2048}, "memory": {"reservation": 1024}});
        })
        .unwrap();
    assert_eq!(t.limits.cpus, 2.0);
    assert!(!t.limits.cpu_hard_cap);
    assert_eq!(t.limits.mem_high_bytes, None);
    assert!(t.warnings.iter().any(|w| w.contains("reservation")));

    let e = f
        .translate(|v| {
            v["linux"]["resources"] = json!({"memory": {"limit": 1000000, "swap": 10}});
        })
        .unwrap_err();
    assert_eq!(e.field, "linux.resources.memory.swap");
    let e = f
        .translate(|v| v["linux"]["resources"] = json!({"blockIO": {"weight": 5}}))
        .unwrap_err();
    assert_eq!(e.field, "linux.resources.blockIO.weight");
    // An allow-all device rule cannot be expressed: a warning.
    let t = f
        .translate(|v| {
            v["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]})
        })
        .unwrap();
    assert!(
        t.warnings.iter().any(|w| w.contains("a *:* rwm")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn devices_bind_host_nodes() {
    let f = Fixture::new();
    let t = f
        .translate(|v| {
            v["linux"]["devices"] = json!([
                {"path": "/dev/fuse-like", "type": "c", "major": 1, "minor": 3}
            ]);
        })
        .unwrap_err();
    // No such host node.
    assert!(t.message.contains("no host node"), "{t}");
    let t = f
        .translate(|v| {
            v["linux"]["devices"] = json!([
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438}
            ]);
        })
        .unwrap();
    assert_eq!(t.options.devices, [PathBuf::from("/dev/null")]);
    let fs = t.shim.filesystem.as_ref().unwrap();
    assert_eq!(
        fs.devices.iter().filter(|d| d.path == "/dev/null").count(),
        1
    );
    assert!(t.warnings.iter().any(|w| w.contains("fileMode")));
    let e = f
        .translate(|v| {
            v["linux"]["devices"] =
                json!([{"path": "/dev/null", "type": "c", "major": 1, "minor": 5}]);
        })
        .unwrap_err();
    assert!(e.message.contains("is not char 1:5"), "{e}");
    let e = f
        .translate(|v| {
            v["linux"]["devices"] =
                json!([{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}]);
        })
        .unwrap_err();
    assert!(e.message.contains("not under /dev"), "{e}");
}

#[test]
fn seccomp_profile_compiles() {
    let f = Fixture::new();
    let t = f
        .translate(|v| {
            v["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        })
        .unwrap();
    let prog = t.shim.security.seccomp.as_ref().unwrap();
    assert!(prog.len() > 4);
    assert!(t.warnings.iter().any(|w| w.contains("seccomp.flags")));
    let e = f
        .translate(|v| {
            v["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]
            });
        })
        .unwrap_err();
    assert_eq!(e.field, "linux.seccomp");
}

#[test]
fn sysctl_needs_own_namespace() {
    let f = Fixture::new();
    let t = f
        .translate(|v| {
            v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000"})
        })
        .unwrap();
    assert_eq!(t.sysctl.len(), 2);
    let e = f
        .translate(|v| v["linux"]["sysctl"] = json!({"vm.swappiness": "10"}))
        .unwrap_err();
    assert!(e.message.contains("not namespaced"), "{e}");
    let e = f
        .translate(|v| {
            v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "uts"}]);
            v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        })
        .unwrap_err();
    assert!(e.message.contains("net namespace"), "{e}");
}

#[test]
fn root_must_exist() {
    let f = Fixture::new();
    let e = f
        .translate(|v| v["root"]["path"] = json!("nope"))
        .unwrap_err();
    assert_eq!(e.field, "root.path");
}

#[test]
fn cgroup_placement_from_cgroups_path() {
    let p = CgroupPlacement::new(None, "c1").unwrap();
    assert_eq!(
        (p.base.as_str(), p.leaf.as_str()),
        (DEFAULT_CGROUP_BASE, "c1")
    );
    assert!(!p.from_root && p.prefix.is_empty());
    let own = "4:memory:/user.slice\n1:cpu:/\n0::/user.slice/x\n";
    assert_eq!(
        p.own_cgroup_file(own),
        "4:memory:/user.slice\n1:cpu:/\n0::/user.slice/x\n"
    );

    let p = CgroupPlacement::new(Some(Path::new("/a/b/c/leaf")), "c1").unwrap();
    assert!(p.from_root);
    assert_eq!(p.prefix, ["a", "b"]);
    assert_eq!((p.base.as_str(), p.leaf.as_str()), ("c", "leaf"));
    assert_eq!(
        p.own_cgroup_file(own),
        "4:memory:/a/b\n1:cpu:/a/b\n0::/a/b\n"
    );

    let p = CgroupPlacement::new(Some(Path::new("/leaf")), "c1").unwrap();
    assert_eq!((p.base.as_str(), p.leaf.as_str()), ("", "leaf"));
    assert_eq!(p.own_cgroup_file(own), "4:memory:/\n1:cpu:/\n0::/\n");

    let p = CgroupPlacement::new(Some(Path::new("x/leaf")), "c1").unwrap();
    assert!(!p.from_root);
    assert_eq!((p.base.as_str(), p.leaf.as_str()), ("x", "leaf"));
    assert_eq!(p.own_cgroup_file(own), own);

    assert!(CgroupPlacement::new(Some(Path::new("system.slice:docker:abc")), "c1").is_err());
    assert!(CgroupPlacement::new(Some(Path::new("/a/../b")), "c1").is_err());
    assert!(CgroupPlacement::new(Some(Path::new("/")), "c1").is_err());
}
