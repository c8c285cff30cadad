use super::*;
use crate::protocol::MountSpec;

fn ms(dest: &str, kind: &str, source: Option<&str>, options: &[&str]) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        kind: kind.into(),
        source: source.map(PathBuf::from),
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

fn plan(mounts: Vec<MountSpec>) -> FilesystemPlan {
    FilesystemPlan {
        root: "/run/berth/c1/rootfs".into(),
        source: RootfsSource::HostBind,
        readonly: true,
        mounts,
        devices: vec![DeviceSpec {
            path: "/dev/null".into(),
            host_path: "/dev/null".into(),
        }],
        masked_paths: vec!["/proc/kcore".into()],
        readonly_paths: vec!["/proc/sys".into()],
    }
}

#[test]
fn a_typical_plan_is_prepared() {
    let p = plan(vec![
        ms(
            "/proc",
            "proc",
            Some("proc"),
            &["nosuid", "noexec", "nodev"],
        ),
        ms(
            "/dev/pts",
            "devpts",
            None,
            &["newinstance", "ptmxmode=0666"],
        ),
        ms("/tmp", "tmpfs", None, &["nosuid", "nodev", "mode=1777"]),
        ms(
            "/mnt/mesos/sandbox",
            "bind",
            Some("/var/lib/b/s"),
            &["rbind", "rw"],
        ),
        ms(
            "/mnt/mesos/sandbox/data",
            "none",
            Some("/data"),
            &["bind", "ro"],
        ),
    ]);
    let f = PreparedFs::from_plan(&p).unwrap();
    assert_eq!(f.source, Root::Bind("/".into()));
    assert!(f.ptmx_link);
    assert_eq!(
        f.mounts[0].1,
        Mount::Fs {
            fstype: "proc".into(),
            source: "proc".into(),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            data: String::new(),
            propagation: None,
        }
    );
    match &f.mounts[1].1 {
        Mount::Fs { source, data, .. } => {
            assert_eq!(source, "devpts");
            assert_eq!(data, "newinstance,ptmxmode=0666");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.mounts[3].1,
        Mount::Bind {
            source: "/var/lib/b/s".into(),
            recursive: true,
            attr_set: 0,
            attr_clr: sys::MOUNT_ATTR_RDONLY,
            propagation: None,
        }
    );
    assert!(matches!(
        f.mounts[4].1,
        Mount::Bind {
            recursive: false,
            attr_set: sys::MOUNT_ATTR_RDONLY,
            ..
        }
    ));
    // /dev/pts lives in the fresh /dev, the volume in the sandbox: only the others are made
    // in the root before it turns read-only.
    assert_eq!(
        f.root_level_mount_points(),
        vec![
            Path::new("/dev"),
            Path::new("/proc"),
            Path::new("/tmp"),
            Path::new("/mnt/mesos/sandbox")
        ]
    );
}

#[test]
fn ptmx_link_only_with_devpts_and_no_ptmx_device() {
    let mut p = plan(vec![]);
    assert!(!PreparedFs::from_plan(&p).unwrap().ptmx_link);
    p.mounts.push(ms("/dev/pts", "devpts", None, &[]));
    assert!(PreparedFs::from_plan(&p).unwrap().ptmx_link);
    p.devices.push(DeviceSpec {
        path: "/dev/ptmx".into(),
        host_path: "/dev/ptmx".into(),
    });
    assert!(!PreparedFs::from_plan(&p).unwrap().ptmx_link);
}

#[test]
fn bad_plans_are_refused() {
    let cases: Vec<(FilesystemPlan, &str)> = vec![
        (
            plan(vec![ms("data", "tmpfs", None, &[])]),
            "not an absolute path",
        ),
        (plan(vec![ms("/a/../etc", "tmpfs", None, &[])]), "'..'"),
        (plan(vec![ms("/a/./b", "tmpfs", None, &[])]), "'..'"),
        (
            plan(vec![ms("/a", "bind", None, &["rbind"])]),
            "without a source",
        ),
        (
            plan(vec![ms("/a", "bind", Some("rel"), &[])]),
            "must be absolute",
        ),
        (
            plan(vec![ms("/a", "bind", Some("/x/../y"), &[])]),
            "must be absolute",
        ),
        (
            plan(vec![ms("/a", "tmpfs", None, &["remount"])]),
            "not supported",
        ),
        (plan(vec![ms("/a", "", None, &[])]), "no filesystem type"),
        (
            plan(vec![ms("/a", "bind", Some("/s"), &["mode=1"])]),
            "no filesystem options",
        ),
    ];
    for (p, want) in cases {
        let e = PreparedFs::from_plan(&p).unwrap_err();
        assert!(e.contains(want), "{e} (wanted {want:?})");
    }
    let mut p = plan(vec![]);
    p.devices[0].path = "/etc/passwd".into();
    assert!(
        PreparedFs::from_plan(&p)
            .unwrap_err()
            .contains("not under /dev")
    );
    let mut p = plan(vec![]);
    p.devices[0].path = "/dev/../etc/x".into();
    assert!(PreparedFs::from_plan(&p).is_err());
    let mut p = plan(vec![]);
    p.masked_paths.push("proc/x".into());
    assert!(PreparedFs::from_plan(&p).is_err());
    let mut p = plan(vec![]);
    p.root = "relative/root".into();
    assert!(PreparedFs::from_plan(&p).is_err());
}

#[test]
fn overlay_data_string() {
    let mut p = plan(vec![]);
    p.source = RootfsSource::Overlay {
        lower: vec!["/l/top".into(), "/l/base".into()],
        upper: "/s/upper".into(),
        work: "/s/work".into(),
    };
    assert_eq!(
        PreparedFs::from_plan(&p).unwrap().source,
        Root::Overlay("lowerdir=/l/top:/l/base,upperdir=/s/upper,workdir=/s/work".into())
    );
    p.source = RootfsSource::Overlay {
        lower: vec!["/l/a:b".into()],
        upper: "/s/upper".into(),
        work: "/s/work".into(),
    };
    assert!(PreparedFs::from_plan(&p).is_err());
    p.source = RootfsSource::Overlay {
        lower: vec![],
        upper: "/s/upper".into(),
        work: "/s/work".into(),
    };
    assert!(PreparedFs::from_plan(&p).is_err());
}
