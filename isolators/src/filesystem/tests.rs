use std::os::unix::fs::symlink;

use super::*;
use crate::{IsolationOptions, Limits};

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    sandbox: PathBuf,
    iso: FilesystemIsolator,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let sandbox = base.join("work/sandboxes/c1");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::create_dir_all(base.join("run/c1")).unwrap();
    std::fs::create_dir_all(base.join("host")).unwrap();
    let iso = FilesystemIsolator::new(FilesystemPaths {
        hidden: vec![base.join("work"), base.join("run")],
        runtime_root: base.join("run"),
        host_root: base.join("host"),
    })
    .unwrap();
    Fixture {
        _dir: dir,
        base,
        sandbox,
        iso,
    }
}

impl Fixture {
    fn spec(&self, options: IsolationOptions) -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            limits: Limits::default(),
            network: NetworkMode::None,
            hostname: "c1".into(),
            sandbox: self.sandbox.clone(),
            options,
            image: None,
        }
    }

    fn with_volumes(&self, volumes: Vec<VolumeSpec>) -> ContainerSpec {
        self.spec(IsolationOptions {
            volumes,
            ..Default::default()
        })
    }
}

fn vol(host: &str, container: &str, read_only: bool) -> VolumeSpec {
    VolumeSpec {
        host: host.into(),
        container: container.into(),
        read_only,
    }
}

fn dests(plan: &FilesystemPlan) -> Vec<&str> {
    plan.mounts.iter().map(|m| m.destination.as_str()).collect()
}

fn invalid_message(r: Result<FilesystemPlan, IsolatorError>) -> String {
    match r {
        Err(IsolatorError::Invalid { isolator, message }) => {
            assert_eq!(isolator, "filesystem");
            message
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn native_containers_get_their_own_hosts_and_hostname_when_the_host_has_them() {
    let f = fixture();
    let etc = f.base.join("host/etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    let spec = f.spec(Default::default());
    let plan = f.iso.plan(&spec).unwrap();
    let hosts = plan
        .mounts
        .iter()
        .find(|m| m.destination == "/etc/hosts")
        .expect("a generated /etc/hosts");
    assert!(hosts.options.contains(&"ro".to_string()));
    assert_eq!(
        hosts.source.as_deref(),
        Some(spec.sandbox.join(".rootfs/etc/hosts").as_path())
    );
    // The host has no /etc/hostname: nothing is bound over it.
    assert!(!plan.mounts.iter().any(|m| m.destination == "/etc/hostname"));
    f.iso.write_native_etc_files(&spec).unwrap();
    let text = std::fs::read_to_string(spec.sandbox.join(".rootfs/etc/hosts")).unwrap();
    assert!(text.contains("127.0.1.1\tc1\n"), "{text}");
}

#[test]
fn default_plan() {
    let f = fixture();
    let plan = f.iso.plan(&f.spec(Default::default())).unwrap();
    assert_eq!(plan.root, f.base.join("run/c1/rootfs"));
    assert_eq!(plan.source, RootfsSource::HostBind);
    assert!(plan.readonly);
    let work = f.base.join("work");
    let run = f.base.join("run");
    assert_eq!(
        dests(&plan),
        vec![
            "/proc",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/tmp",
            "/run",
            work.to_str().unwrap(),
            run.to_str().unwrap(),
            SANDBOX_IN_CONTAINER,
            &format!("{SANDBOX_IN_CONTAINER}/.rootfs"),
        ]
    );
    let by = |d: &str| plan.mounts.iter().find(|m| m.destination == d).unwrap();
    assert_eq!(by("/proc").kind, "proc");
    assert!(by("/dev/pts").options.contains(&"gid=5".to_string()));
    assert!(by("/dev/pts").options.contains(&"newinstance".to_string()));
    assert_eq!(by("/sys").kind, "sysfs");
    assert!(by("/sys").options.contains(&"ro".to_string()));
    let hidden = by(work.to_str().unwrap());
    assert_eq!(hidden.kind, "tmpfs");
    assert!(hidden.options.contains(&"ro".to_string()));
    let sb = by(SANDBOX_IN_CONTAINER);
    assert_eq!(
        (sb.kind.as_str(), sb.source.as_deref()),
        ("bind", Some(f.sandbox.as_path()))
    );
    assert!(sb.options.contains(&"rw".to_string()));
    let devs: Vec<&str> = plan.devices.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(devs, DEFAULT_DEVICES.to_vec());
    assert!(plan.masked_paths.contains(&"/proc/kcore".to_string()));
    assert!(plan.readonly_paths.contains(&"/proc/sys".to_string()));
    // The shim accepts it.
    berth_executor::shim::rootfs::PreparedFs::from_plan(&plan).unwrap();
}

#[test]
fn options_change_the_plan() {
    let f = fixture();
    let mut spec = f.spec(IsolationOptions {
        user_namespace: true,
        writable_rootfs: true,
        ..Default::default()
    });
    spec.network = NetworkMode::Host;
    let plan = f.iso.plan(&spec).unwrap();
    assert!(!plan.readonly);
    let by = |d: &str| plan.mounts.iter().find(|m| m.destination == d).unwrap();
    assert!(!by("/dev/pts").options.contains(&"gid=5".to_string()));
    let sys = by("/sys");
    assert_eq!(
        (sys.kind.as_str(), sys.source.as_deref()),
        ("bind", Some(Path::new("/sys")))
    );
    assert!(sys.options.contains(&"rbind".to_string()) && sys.options.contains(&"ro".to_string()));
}

#[test]
fn volumes_are_resolved() {
    let f = fixture();
    let host_dir = f.base.join("data");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::create_dir_all(f.sandbox.join("cache/sub")).unwrap();
    symlink("cache", f.sandbox.join("link-in")).unwrap();
    let spec = f.with_volumes(vec![
        vol(host_dir.to_str().unwrap(), "/data", false),
        vol("cache/sub", "rel", true),
        vol("link-in", "/opt/c", false),
    ]);
    let plan = f.iso.plan(&spec).unwrap();
    let n = plan.mounts.len();
    let v = &plan.mounts[n - 3..];
    assert_eq!(v[0].destination, "/data");
    assert_eq!(v[0].source.as_deref(), Some(host_dir.as_path()));
    assert_eq!(v[0].options, ["rbind", "rw", "nosuid", "nodev"]);
    assert_eq!(v[1].destination, "/mnt/mesos/sandbox/rel");
    assert_eq!(
        v[1].source.as_deref(),
        Some(f.sandbox.join("cache/sub").as_path())
    );
    assert_eq!(v[1].options, ["rbind", "ro", "nosuid", "nodev"]);
    // A symlink inside the sandbox is followed inside it; the source is its target.
    assert_eq!(
        v[2].source.as_deref(),
        Some(f.sandbox.join("cache").as_path())
    );
}

#[test]
fn bad_volumes_are_refused_with_their_name() {
    let f = fixture();
    std::fs::create_dir(f.sandbox.join("d")).unwrap();
    // Symlinks planted in the sandbox, pointing outside: resolved inside the sandbox.
    symlink("/etc", f.sandbox.join("to-etc")).unwrap();
    symlink("../../../../../../../../etc", f.sandbox.join("up-etc")).unwrap();
    let cases = [
        (vol("/nonexistent-berth", "/x", false), "not usable"),
        (vol("/etc/../etc", "/x", false), "'..'"),
        (vol("../escape", "/x", false), "not usable"),
        (vol("to-etc", "/x", false), "not usable"),
        (vol("up-etc/passwd", "/x", false), "not usable"),
        (vol("missing", "/x", false), "not usable"),
        (vol("d", "/a/../etc", false), "'..'"),
        (vol("d", "../x", false), "'..'"),
        (vol("d", "./x", false), "'.'"),
        (vol("d", "", false), "empty"),
        (vol("d", "/", false), "over /"),
        (vol("d", "/proc", false), "/proc"),
        (vol("d", "/proc/sys", false), "/proc"),
        (vol("d", "/sys/fs/cgroup", false), "/sys"),
        (vol("d", "/dev", false), "/dev"),
        (vol("d", "/dev/sda", false), "/dev"),
        (vol("d", "/mnt", false), "hide the sandbox"),
        (vol("d", SANDBOX_IN_CONTAINER, false), "hide the sandbox"),
    ];
    for (v, want) in cases {
        let what = format!("{v:?}");
        let msg = invalid_message(f.iso.plan(&f.with_volumes(vec![v])));
        assert!(msg.starts_with("volume 0 ("), "{what}: {msg}");
        assert!(msg.contains(want), "{what}: {msg} (wanted {want:?})");
    }
    // The second volume is named as such.
    let msg = invalid_message(
        f.iso
            .plan(&f.with_volumes(vec![vol("d", "/ok", false), vol("d", "/proc/x", false)])),
    );
    assert!(msg.starts_with("volume 1 (d:/proc/x)"), "{msg}");
}

#[test]
fn devices_are_checked() {
    let f = fixture();
    let with = |devices: Vec<&str>| {
        f.iso.plan(&f.spec(IsolationOptions {
            devices: devices.into_iter().map(PathBuf::from).collect(),
            ..Default::default()
        }))
    };
    // A duplicate of a default device is not listed twice.
    let plan = with(vec!["/dev/zero"]).unwrap();
    assert_eq!(plan.devices.len(), DEFAULT_DEVICES.len());
    if Path::new("/dev/fuse").exists() {
        let plan = with(vec!["/dev/fuse"]).unwrap();
        assert_eq!(plan.devices.last().unwrap().path, "/dev/fuse");
    }
    assert!(invalid_message(with(vec!["/dev/shm"])).contains("not a device node"));
    assert!(invalid_message(with(vec!["/etc/passwd"])).contains("under /dev"));
    assert!(invalid_message(with(vec!["/dev/../etc/passwd"])).contains("under /dev"));
    assert!(invalid_message(with(vec!["/dev/no-such-berth"])).contains("/dev/no-such-berth"));
}

#[test]
fn hidden_paths_must_be_absolute_and_not_root() {
    for bad in ["/", "relative", "/a/../b"] {
        let r = FilesystemIsolator::new(FilesystemPaths::new(vec![bad.into()], "/run/x".into()));
        assert!(r.is_err(), "{bad} accepted");
    }
}

#[test]
fn prepare_creates_the_root_and_mount_points_and_cleanup_removes_it() {
    let f = fixture();
    let data = f.base.join("data");
    std::fs::create_dir(&data).unwrap();
    let file = f.base.join("file");
    std::fs::write(&file, "x").unwrap();
    // A symlink in the host root pointing outside it: the mount point is made inside.
    symlink("/", f.base.join("host/evil")).unwrap();
    let spec = f.with_volumes(vec![
        vol(data.to_str().unwrap(), "/data/v", false),
        vol(file.to_str().unwrap(), "/etc/berth-file", true),
        vol(data.to_str().unwrap(), "/tmp/inside-tmpfs", false),
        vol(data.to_str().unwrap(), "/evil/berth-test-escape", false),
        vol(data.to_str().unwrap(), "in-sandbox", false),
    ]);
    let info = f.iso.prepare(&spec).unwrap();
    assert_eq!(info.namespaces, vec![Namespace::Mount]);
    assert_eq!(
        info.sandbox_in_container.as_deref(),
        Some(Path::new(SANDBOX_IN_CONTAINER))
    );
    let rootfs = f.base.join("run/c1/rootfs");
    assert!(rootfs.is_dir());
    assert_eq!(info.filesystem.unwrap().root, rootfs);
    let host = f.base.join("host");
    assert!(host.join("mnt/mesos/sandbox").is_dir());
    assert!(host.join("data/v").is_dir());
    assert!(host.join("etc/berth-file").is_file());
    // Under the container's own tmpfs / sandbox: made by the init, not here.
    assert!(!host.join("tmp").exists());
    assert!(!f.sandbox.join("in-sandbox").exists());
    // Through the symlink, inside the fixture root, never at the real /.
    assert!(host.join("berth-test-escape").is_dir());
    assert!(!Path::new("/berth-test-escape").exists());

    f.iso.cleanup("c1").unwrap();
    assert!(!rootfs.exists());
    f.iso.cleanup("c1").unwrap();
    assert_eq!(
        f.iso.describe("c1")["rootfs"],
        serde_json::json!(rootfs.to_str().unwrap())
    );
}

#[test]
fn resolv_conf_pointing_into_run_is_carried_over() {
    let f = fixture();
    let host = f.base.join("host");
    // A regular file: nothing to do.
    std::fs::create_dir_all(host.join("etc")).unwrap();
    std::fs::write(host.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
    let plan = f.iso.plan(&f.spec(Default::default())).unwrap();
    assert!(!dests(&plan).iter().any(|d| d.contains("resolv")));
    // systemd-resolved style: an absolute symlink into /run.
    std::fs::remove_file(host.join("etc/resolv.conf")).unwrap();
    std::fs::create_dir_all(host.join("run/systemd/resolve")).unwrap();
    std::fs::write(host.join("run/systemd/resolve/stub-resolv.conf"), "x").unwrap();
    symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        host.join("etc/resolv.conf"),
    )
    .unwrap();
    let plan = f.iso.plan(&f.spec(Default::default())).unwrap();
    let m = plan
        .mounts
        .iter()
        .find(|m| m.destination == "/run/systemd/resolve/stub-resolv.conf")
        .expect("resolv.conf target mounted");
    assert_eq!(
        m.source.as_deref(),
        Some(host.join("run/systemd/resolve/stub-resolv.conf").as_path())
    );
    assert!(m.options.contains(&"ro".to_string()));
    // After the /run tmpfs.
    let d = dests(&plan);
    let run = d.iter().position(|x| *x == "/run").unwrap();
    let resolv = d.iter().position(|x| x.contains("resolv")).unwrap();
    assert!(run < resolv);
    berth_executor::shim::rootfs::PreparedFs::from_plan(&plan).unwrap();
}

impl Fixture {
    fn image_spec(&self, options: IsolationOptions) -> ContainerSpec {
        let layers = (1..=3)
            .map(|i| self.base.join(format!("layers/l{i}")))
            .collect();
        ContainerSpec {
            image: Some(crate::ImageRootfs {
                layers,
                upper: self.sandbox.join(".rootfs/upper"),
                work: self.sandbox.join(".rootfs/work"),
            }),
            ..self.spec(options)
        }
    }
}

#[test]
fn image_plan_is_an_overlay_with_its_own_etc_files() {
    let f = fixture();
    let data = f.base.join("data");
    std::fs::create_dir(&data).unwrap();
    let spec = f.image_spec(IsolationOptions {
        volumes: vec![vol(data.to_str().unwrap(), "/data", true)],
        ..Default::default()
    });
    let plan = f.iso.plan(&spec).unwrap();
    assert_eq!(plan.root, f.base.join("run/c1/rootfs"));
    assert_eq!(
        plan.source,
        RootfsSource::Overlay {
            // top-most first
            lower: (1..=3)
                .rev()
                .map(|i| f.base.join(format!("layers/l{i}")))
                .collect(),
            upper: f.sandbox.join(".rootfs/upper"),
            work: f.sandbox.join(".rootfs/work"),
        }
    );
    assert!(
        !plan.readonly,
        "an image's root is writable (its upper dir)"
    );
    // No /tmp or /run tmpfs, no hidden host dirs; generated /etc files, the sandbox with its
    // .rootfs hidden, then the volumes.
    assert_eq!(
        dests(&plan),
        vec![
            "/proc",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            SANDBOX_IN_CONTAINER,
            "/mnt/mesos/sandbox/.rootfs",
            "/data",
        ]
    );
    let by = |d: &str| plan.mounts.iter().find(|m| m.destination == d).unwrap();
    assert_eq!(
        by("/etc/hosts").source.as_deref(),
        Some(f.sandbox.join(".rootfs/etc/hosts").as_path())
    );
    let mask = by("/mnt/mesos/sandbox/.rootfs");
    assert_eq!(mask.kind, "tmpfs");
    assert!(mask.options.contains(&"ro".to_string()));
    assert!(plan.masked_paths.contains(&"/proc/kcore".to_string()));
    assert_eq!(plan.devices.len(), DEFAULT_DEVICES.len());
    berth_executor::shim::rootfs::PreparedFs::from_plan(&plan).unwrap();
}

#[test]
fn image_prepare_writes_etc_files_and_touches_no_host_path() {
    let f = fixture();
    let host = f.base.join("host");
    std::fs::create_dir_all(host.join("etc")).unwrap();
    std::fs::write(host.join("etc/resolv.conf"), "nameserver 10.9.8.7\n").unwrap();
    let data = f.base.join("data");
    std::fs::create_dir(&data).unwrap();
    let spec = f.image_spec(IsolationOptions {
        volumes: vec![vol(data.to_str().unwrap(), "/data/v", false)],
        ..Default::default()
    });
    let info = f.iso.prepare(&spec).unwrap();
    assert!(info.filesystem.is_some());
    let etc = f.sandbox.join(".rootfs/etc");
    assert_eq!(
        std::fs::read_to_string(etc.join("hostname")).unwrap(),
        "c1\n"
    );
    assert!(
        std::fs::read_to_string(etc.join("hosts"))
            .unwrap()
            .contains("\tc1\n")
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
        "nameserver 10.9.8.7\n"
    );
    // Mount points live in the overlay, made by the init: nothing in the host's root.
    assert!(!host.join("mnt").exists() && !host.join("data").exists());
    f.iso.cleanup("c1").unwrap();
}

#[test]
fn image_containers_refuse_what_they_cannot_do() {
    let f = fixture();
    let spec = f.image_spec(IsolationOptions {
        user_namespace: true,
        ..Default::default()
    });
    let err = f.iso.plan(&spec).unwrap_err().to_string();
    assert!(err.contains("user namespaces"), "{err}");
    let mut spec = f.image_spec(Default::default());
    spec.image.as_mut().unwrap().layers.clear();
    let err = f.iso.plan(&spec).unwrap_err().to_string();
    assert!(err.contains("no layers"), "{err}");
}
