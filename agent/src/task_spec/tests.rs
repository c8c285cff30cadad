use super::*;

fn task_with(labels_: &[(&str, &str)], container: Option<mesos::ContainerInfo>) -> mesos::TaskInfo {
    mesos::TaskInfo {
        name: "t".into(),
        task_id: mesos::TaskId { value: "t".into() },
        container,
        labels: Some(mesos::Labels {
            labels: labels_
                .iter()
                .map(|(k, v)| mesos::Label {
                    key: k.to_string(),
                    value: Some(v.to_string()),
                })
                .collect(),
        }),
        ..Default::default()
    }
}

#[test]
fn hostnames_are_sanitized() {
    assert_eq!(sanitize_hostname("Web_1.x"), "web-1-x");
    assert_eq!(sanitize_hostname("___"), "berth");
    assert_eq!(sanitize_hostname(&"a".repeat(100)).len(), 63);
}

#[test]
fn sizes() {
    assert_eq!(parse_bytes("64M").unwrap(), 64 << 20);
    assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
    assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_bytes("100").unwrap(), 100);
    assert!(parse_bytes("-1M").is_err());
    assert!(parse_bytes("lots").is_err());
}

#[test]
fn io_max_syntax() {
    let limits = parse_io_max("/dev/loop0:wbps=1M,riops=100; 8:0:rbps=2048").unwrap();
    assert_eq!(limits.len(), 2);
    assert_eq!(limits[0].device, "/dev/loop0");
    assert_eq!(limits[0].wbps, Some(1 << 20));
    assert_eq!(limits[0].riops, Some(100));
    assert_eq!(limits[1].device, "8:0");
    assert_eq!(limits[1].rbps, Some(2048));
    assert!(parse_io_max("/dev/sda").is_err());
    assert!(
        parse_io_max("/dev/sda:speed=3")
            .unwrap_err()
            .contains("speed")
    );
    assert!(parse_io_max(":wbps=1").is_err());
}

#[test]
fn hugetlb_syntax() {
    let limits = parse_hugetlb("2mb=64M,1GB=1G").unwrap();
    assert_eq!(limits[0].page_size, "2MB");
    assert_eq!(limits[0].limit_bytes, 64 << 20);
    assert_eq!(limits[1].limit_bytes, 1 << 30);
    assert!(parse_hugetlb("2MB").is_err());
}

#[test]
fn labels_become_options_and_limits() {
    let task = task_with(
        &[
            (labels::CPU_HARD_CAP, "true"),
            (labels::MEMORY_HIGH, "48M"),
            (labels::CAP_ADD, "NET_ADMIN, sys_time"),
            (labels::CAP_DROP, "MKNOD"),
            (labels::USERNS, "1"),
            (labels::DEVICES, "/dev/fuse"),
            (labels::IO_WEIGHT, "200"),
        ],
        None,
    );
    let (options, limits) = isolation_of(&task, None).unwrap();
    assert!(limits.cpu_hard_cap);
    assert_eq!(limits.mem_high_bytes, Some(48 << 20));
    assert_eq!(limits.io_weight, Some(200));
    assert_eq!(options.cap_add, vec!["NET_ADMIN", "sys_time"]);
    assert_eq!(options.cap_drop, vec!["MKNOD"]);
    assert!(options.user_namespace);
    assert!(!options.writable_rootfs);
    assert_eq!(options.devices, vec![PathBuf::from("/dev/fuse")]);
    assert_eq!(options.seccomp, SeccompProfile::Default);

    for (key, bad) in [
        (labels::USERNS, "maybe"),
        (labels::IO_WEIGHT, "0"),
        (labels::MEMORY_HIGH, "lots"),
    ] {
        let err = isolation_of(&task_with(&[(key, bad)], None), None).unwrap_err();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn mesos_container_fields_become_options() {
    use mesos::{capability_info::Capability, r_limit_info::r_limit::Type as RType};
    let mut container = mesos::ContainerInfo {
        volumes: vec![
            mesos::Volume {
                container_path: "/data".into(),
                host_path: Some("/srv/data".into()),
                mode: mesos::volume::Mode::Ro as i32,
                ..Default::default()
            },
            mesos::Volume {
                container_path: "cache".into(),
                mode: mesos::volume::Mode::Rw as i32,
                source: Some(mesos::volume::Source {
                    r#type: Some(mesos::volume::source::Type::SandboxPath as i32),
                    sandbox_path: Some(mesos::volume::source::SandboxPath {
                        r#type: Some(mesos::volume::source::sandbox_path::Type::Self_ as i32),
                        path: "cache-dir".into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        linux_info: Some(mesos::LinuxInfo {
            effective_capabilities: Some(mesos::CapabilityInfo {
                capabilities: vec![Capability::NetAdmin as i32, Capability::Kill as i32],
            }),
            seccomp: Some(mesos::SeccompInfo {
                unconfined: Some(true),
                profile_name: None,
            }),
            ..Default::default()
        }),
        rlimit_info: Some(mesos::RLimitInfo {
            rlimits: vec![mesos::r_limit_info::RLimit {
                r#type: Some(RType::RlmtNofile as i32),
                soft: Some(100),
                hard: Some(200),
            }],
        }),
        ..Default::default()
    };
    container.set_type(mesos::container_info::Type::Mesos);
    let (options, _) = isolation_of(&task_with(&[], Some(container.clone())), None).unwrap();
    assert_eq!(options.volumes.len(), 2);
    assert!(options.volumes[0].read_only);
    assert_eq!(options.volumes[0].host, PathBuf::from("/srv/data"));
    assert_eq!(options.volumes[1].host, PathBuf::from("cache-dir"));
    assert!(!options.volumes[1].read_only);
    assert_eq!(options.cap_drop, vec!["ALL"]);
    assert_eq!(options.cap_add, vec!["NET_ADMIN", "KILL"]);
    assert_eq!(options.seccomp, SeccompProfile::Unconfined);
    assert_eq!(options.rlimits[0].name, "nofile");
    assert_eq!(
        (options.rlimits[0].soft, options.rlimits[0].hard),
        (Some(100), Some(200))
    );

    // A relative seccomp profile without a config dir, and a half-set rlimit, are refused.
    let mut bad = container.clone();
    bad.linux_info.as_mut().unwrap().seccomp = Some(mesos::SeccompInfo {
        unconfined: None,
        profile_name: Some("web.json".into()),
    });
    let err = isolation_of(&task_with(&[], Some(bad)), None).unwrap_err();
    assert!(err.contains("seccomp-config-dir"), "{err}");
    let mut bad = container;
    bad.rlimit_info.as_mut().unwrap().rlimits[0].hard = None;
    let err = isolation_of(&task_with(&[], Some(bad)), None).unwrap_err();
    assert!(err.contains("nofile"), "{err}");
}

#[test]
fn seccomp_profile_files_are_read_safely() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.json"), "{}").unwrap();
    assert_eq!(
        read_seccomp_profile("p.json", Some(dir.path())).unwrap(),
        "{}"
    );
    assert!(read_seccomp_profile("../p.json", Some(dir.path())).is_err());
    let missing = read_seccomp_profile("nope.json", Some(dir.path())).unwrap_err();
    assert!(missing.contains("nope.json"), "{missing}");
}

fn image_container(kind: mesos::image::Type, name: &str) -> mesos::ContainerInfo {
    let mut image = mesos::Image::default();
    image.set_type(kind);
    match kind {
        mesos::image::Type::Docker => {
            image.docker = Some(mesos::image::Docker { name: name.into() })
        }
        mesos::image::Type::Appc => {
            image.appc = Some(mesos::image::Appc {
                name: name.into(),
                ..Default::default()
            })
        }
    }
    let mut container = mesos::ContainerInfo {
        mesos: Some(mesos::container_info::MesosInfo { image: Some(image) }),
        ..Default::default()
    };
    container.set_type(mesos::container_info::Type::Mesos);
    container
}

#[test]
fn images_come_from_mesos_container_info() {
    let docker = task_with(
        &[],
        Some(image_container(mesos::image::Type::Docker, "busybox")),
    );
    assert_eq!(image_of(&docker).unwrap().as_deref(), Some("busybox"));
    let appc = task_with(
        &[],
        Some(image_container(mesos::image::Type::Appc, "r/app:1")),
    );
    assert_eq!(image_of(&appc).unwrap().as_deref(), Some("r/app:1"));
    let unnamed = task_with(&[], Some(image_container(mesos::image::Type::Docker, " ")));
    assert!(image_of(&unnamed).unwrap_err().contains("without a name"));
    assert_eq!(image_of(&task_with(&[], None)).unwrap(), None);
    let mut docker_type = image_container(mesos::image::Type::Docker, "busybox");
    docker_type.set_type(mesos::container_info::Type::Docker);
    let err = image_of(&task_with(&[], Some(docker_type))).unwrap_err();
    assert!(err.contains("DOCKER"), "{err}");
}

#[test]
fn commands_follow_mesos_command_info() {
    let with = |command: Option<mesos::CommandInfo>| mesos::TaskInfo {
        command,
        ..task_with(&[], None)
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // shell (the default): /bin/sh -c, whatever the image
    let shell = with(Some(mesos::CommandInfo {
        value: Some("echo hi".into()),
        ..Default::default()
    }));
    for image in [false, true] {
        assert_eq!(
            command_of(&shell, image).unwrap(),
            (strings(&["/bin/sh", "-c", "echo hi"]), ArgvKind::Command)
        );
    }
    // shell=false with a value: the arguments (or the value alone)
    let exec = with(Some(mesos::CommandInfo {
        value: Some("/bin/echo".into()),
        arguments: strings(&["echo", "a"]),
        shell: Some(false),
        ..Default::default()
    }));
    assert_eq!(
        command_of(&exec, true).unwrap(),
        (strings(&["echo", "a"]), ArgvKind::Command)
    );
    // shell=false, no value: arguments for the image's Entrypoint
    let args = with(Some(mesos::CommandInfo {
        arguments: strings(&["-v"]),
        shell: Some(false),
        ..Default::default()
    }));
    assert_eq!(
        command_of(&args, true).unwrap(),
        (strings(&["-v"]), ArgvKind::Arguments)
    );
    assert_eq!(
        command_of(&args, false).unwrap(),
        (strings(&["-v"]), ArgvKind::Command)
    );
    // no command: the image's defaults; an error without an image
    assert_eq!(
        command_of(&with(None), true).unwrap(),
        (vec![], ArgvKind::Arguments)
    );
    assert!(command_of(&with(None), false).is_err());
    let empty = with(Some(mesos::CommandInfo {
        shell: Some(false),
        ..Default::default()
    }));
    assert_eq!(
        command_of(&empty, true).unwrap(),
        (vec![], ArgvKind::Arguments)
    );
    assert!(command_of(&empty, false).is_err());
    // a shell without a value is an error, image or not
    let bad = with(Some(mesos::CommandInfo::default()));
    assert!(command_of(&bad, true).is_err());
}
