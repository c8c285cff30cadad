use super::*;

/// A classic BPF interpreter for the instructions seccomp filters use, run against a
/// `struct seccomp_data` (little endian), so the compiled programs are checked by what they do.
fn run(program: &[BpfInstruction], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    let mut data = Vec::new();
    data.extend_from_slice(&(nr as i32).to_le_bytes());
    data.extend_from_slice(&arch.to_le_bytes());
    data.extend_from_slice(&0u64.to_le_bytes());
    for a in args {
        data.extend_from_slice(&a.to_le_bytes());
    }
    let word = |off: u32| {
        let o = off as usize;
        u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = program[pc];
        pc += 1;
        match i.code {
            0x20 => acc = word(i.k),    // LD W ABS
            0x54 => acc &= i.k,         // ALU AND K
            0x06 => return i.k,         // RET K
            0x05 => pc += i.k as usize, // JA
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match i.code {
                    0x15 => acc == i.k,  // JEQ
                    0x25 => acc > i.k,   // JGT
                    0x35 => acc >= i.k,  // JGE
                    _ => acc & i.k != 0, // JSET
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            other => panic!("instruction {other:#x} not understood by the test interpreter"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

const ALLOW: u32 = 0x7fff_0000;
const KILL_PROCESS: u32 = 0x8000_0000;
fn errno(e: i32) -> u32 {
    0x0005_0000 | e as u32
}

fn nr(name: &str) -> i64 {
    match syscalls::resolve(name) {
        Syscall::Native(n) => n,
        other => panic!("{name}: {other:?}"),
    }
}

fn call(p: &[BpfInstruction], name: &str, arg0: u64) -> u32 {
    run(p, AUDIT_ARCH, nr(name), [arg0, 0, 0, 0, 0, 0])
}

fn default_program() -> Vec<BpfInstruction> {
    SeccompIsolator::new().default_program().unwrap()
}

#[test]
fn default_profile_compiles_to_a_sane_size() {
    let p = default_program();
    eprintln!("default profile: {} instructions", p.len());
    // ~60 calls at ~5 instructions each, plus the argument checks.
    assert!(p.len() > 100 && p.len() < 600, "{} instructions", p.len());
    // Every name in the default list is a real call somewhere.
    for name in DEFAULT_BLOCKED {
        assert_ne!(syscalls::resolve(name), Syscall::Unknown, "{name}");
    }
    // Compiled once, then cached.
    let iso = SeccompIsolator::new();
    assert_eq!(
        iso.default_program().unwrap(),
        iso.default_program().unwrap()
    );
}

#[test]
fn default_profile_blocks_what_docker_blocks() {
    let p = default_program();
    for name in [
        "mount",
        "umount2",
        "keyctl",
        "bpf",
        "ptrace",
        "kexec_load",
        "finit_module",
        "init_module",
        "pivot_root",
        "setns",
        "open_tree",
        "fsopen",
        "userfaultfd",
        "reboot",
    ] {
        assert_eq!(call(&p, name, 0), errno(libc::EPERM), "{name}");
    }
    for name in [
        "read",
        "write",
        "execve",
        "openat",
        "mkdirat",
        "exit_group",
        "io_uring_setup",
    ] {
        assert_eq!(call(&p, name, 0), ALLOW, "{name}");
    }
    assert_eq!(call(&p, "clone3", 0), errno(libc::ENOSYS));
}

#[test]
fn default_profile_checks_flags_and_personas() {
    let p = default_program();
    let newuser = libc::CLONE_NEWUSER as u64;
    let sigchld = libc::SIGCHLD as u64;
    assert_eq!(call(&p, "unshare", newuser), errno(libc::EPERM));
    assert_eq!(
        call(&p, "unshare", newuser | libc::CLONE_NEWNS as u64),
        errno(libc::EPERM)
    );
    assert_eq!(call(&p, "unshare", libc::CLONE_NEWNS as u64), ALLOW);
    assert_eq!(call(&p, "clone", sigchld | newuser), errno(libc::EPERM));
    assert_eq!(call(&p, "clone", sigchld), ALLOW);
    // High bits set do not hide the flag.
    assert_eq!(call(&p, "clone", (1 << 40) | newuser), errno(libc::EPERM));
    for persona in ALLOWED_PERSONAS {
        assert_eq!(call(&p, "personality", persona), ALLOW, "{persona:#x}");
    }
    assert_eq!(call(&p, "personality", 0x0040_0000), errno(libc::EPERM)); // READ_IMPLIES_EXEC
}

#[test]
fn other_abis_cannot_bypass_the_table() {
    let p = default_program();
    // i386 `mount` (21): another audit arch → the process is killed.
    assert_eq!(run(&p, AUDIT_ARCH_I386, 21, [0; 6]), KILL_PROCESS);
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        run(&p, AUDIT_ARCH, 0x4000_0000 | nr("mount"), [0; 6]),
        errno(libc::ENOSYS),
        "x32 call"
    );
}

fn custom(json: &str) -> Result<Vec<BpfInstruction>, IsolatorError> {
    SeccompIsolator::new().compile_custom(json, &[], &[])
}

#[test]
fn custom_profile_denying_mkdir() {
    let p = custom(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"},
            {"names":["getpid"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
            {"names":["kill"],"action":"SCMP_ACT_KILL_PROCESS",
             "args":[{"index":1,"value":9,"op":"SCMP_CMP_EQ"}]},
            {"names":["socketcall","_llseek"],"action":"SCMP_ACT_ERRNO"}
        ]}"#,
    )
    .unwrap();
    assert_eq!(call(&p, "mkdirat", 0), errno(libc::EPERM));
    assert_eq!(call(&p, "getpid", 0), errno(libc::ENOSYS));
    assert_eq!(call(&p, "read", 0), ALLOW);
    assert_eq!(
        run(&p, AUDIT_ARCH, nr("kill"), [1, 9, 0, 0, 0, 0]),
        KILL_PROCESS
    );
    assert_eq!(run(&p, AUDIT_ARCH, nr("kill"), [1, 15, 0, 0, 0, 0]), ALLOW);
}

#[test]
fn custom_allow_list_with_default_errno() {
    let p = custom(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_AARCH64"],
            "syscalls":[
            {"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},
                     {"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["chown"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_CHOWN"]}},
            {"names":["bpf"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
            {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
            {"names":["reboot"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["amd64","arm64"]}}
        ]}"#,
    )
    .unwrap();
    assert_eq!(call(&p, "read", 0), ALLOW);
    assert_eq!(call(&p, "openat", 0), errno(libc::EPERM));
    // Repeated argument index: the conditions are alternatives.
    assert_eq!(call(&p, "personality", 0), ALLOW);
    assert_eq!(call(&p, "personality", 8), ALLOW);
    assert_eq!(call(&p, "personality", 9), errno(libc::EPERM));
    assert_eq!(call(&p, "clone", libc::SIGCHLD as u64), ALLOW);
    assert_eq!(
        call(&p, "clone", libc::CLONE_NEWNET as u64),
        errno(libc::EPERM)
    );
    // includes.caps: CAP_CHOWN is in the default set, CAP_SYS_ADMIN is not.
    #[cfg(target_arch = "x86_64")]
    assert_eq!(call(&p, "chown", 0), ALLOW);
    assert_eq!(call(&p, "bpf", 0), errno(libc::EPERM));
    assert_eq!(call(&p, "ptrace", 0), ALLOW);
    assert_eq!(call(&p, "reboot", 0), errno(libc::EPERM));
    // With CAP_SYS_ADMIN added, bpf is allowed.
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["bpf"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#;
    let p = SeccompIsolator::new()
        .compile_custom(json, &["sys_admin".into()], &[])
        .unwrap();
    assert_eq!(call(&p, "bpf", 0), ALLOW);
}

#[test]
fn custom_profile_errors_name_the_entry() {
    let cases = [
        ("{", "not valid JSON"),
        (r#"{"syscalls":[]}"#, "not valid JSON"),
        (
            r#"{"defaultAction":"SCMP_ACT_NOPE"}"#,
            "defaultAction: unknown action \"SCMP_ACT_NOPE\"",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ERRNO"},
                {"names":["mkdri"],"action":"SCMP_ACT_ERRNO"}]}"#,
            "syscalls[1] (mkdri): unknown system call \"mkdri\"",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_BLOCK"}]}"#,
            "syscalls[0] (read): unknown action \"SCMP_ACT_BLOCK\"",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_TRACE"}]}"#,
            "SCMP_ACT_TRACE is not supported",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
                "action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            "argument index 6 is not 0-5",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
                "action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_XX"}]}]}"#,
            "unknown argument operator \"SCMP_CMP_XX\"",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_ERRNO"}]}"#,
            "syscalls[0] (): no system call names",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_S390X"]}"#,
            "do not include this node's",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"]}"#,
            "filter flags",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
                "action":"SCMP_ACT_ERRNO","includes":{"caps":["CAP_BOGUS"]}}]}"#,
            "unknown capability \"CAP_BOGUS\"",
        ),
    ];
    for (json, want) in cases {
        let e = custom(json).unwrap_err();
        assert!(
            matches!(
                e,
                IsolatorError::Invalid {
                    isolator: "seccomp",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(want), "{json}: {e}");
    }
}

#[test]
fn trivial_profiles() {
    // Allow everything: the architecture checks and one return.
    let p = custom(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
    assert_eq!(call(&p, "mount", 0), ALLOW);
    assert!(p.len() <= 7, "{p:?}");
    // Rules with the default action are no-ops.
    let p = custom(
        r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[{"names":["read"],"action":"SCMP_ACT_LOG"}]}"#,
    )
    .unwrap();
    assert_eq!(call(&p, "read", 0), 0x7ffc_0000);
}

#[test]
fn too_many_rules_are_refused() {
    let rules = (0..1500)
        .map(|i| Rule {
            nr: nr("read"),
            conditions: vec![cond(0, SeccompCmpOp::Eq, i)],
            action: SeccompAction::Errno(1),
        })
        .collect();
    let profile = Profile {
        default: SeccompAction::Allow,
        rules,
    };
    let e = compile(&profile, native_arch().unwrap()).unwrap_err();
    assert!(
        matches!(e, SeccompError::TooLarge(_) | SeccompError::Compile(_)),
        "{e}"
    );
}

#[test]
fn prepare_maps_the_options() {
    let iso = SeccompIsolator::new();
    let mut spec = ContainerSpec {
        id: "c".into(),
        limits: Default::default(),
        network: Default::default(),
        hostname: "h".into(),
        sandbox: "/tmp".into(),
        options: Default::default(),
        image: None,
    };
    let li = iso.prepare(&spec).unwrap();
    assert_eq!(li.seccomp, Some(iso.default_program().unwrap()));
    spec.options.seccomp = SeccompProfile::Unconfined;
    assert_eq!(iso.prepare(&spec).unwrap().seccomp, None);
    spec.options.seccomp = SeccompProfile::Custom("nope".into());
    assert!(iso.prepare(&spec).is_err());
}

#[test]
fn kernel_versions_parse() {
    assert_eq!(
        seccomp_json::parse_kernel_version("6.18.44-fc-v769"),
        Some((6, 18))
    );
    assert_eq!(seccomp_json::parse_kernel_version("5.8"), Some((5, 8)));
    assert_eq!(seccomp_json::parse_kernel_version("4"), Some((4, 0)));
    assert_eq!(seccomp_json::parse_kernel_version("x.y"), None);
}

/// A profile shaped like Docker's default: an allow list with `archMap` (Go's `null`s), names of
/// other architectures, per-arch and per-capability entries.
const DOCKER_LIKE: &str = r#"{
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
    ],
    "syscalls": [
        {"names": ["read", "write", "close", "execve", "exit_group", "mkdirat", "_llseek",
                   "chown32", "recv", "send", "socketcall", "waitpid"],
         "action": "SCMP_ACT_ALLOW", "args": null, "comment": "", "includes": null,
         "excludes": null},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["arm_fadvise64_64", "set_tls"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["mount", "unshare", "clone", "clone3"], "action": "SCMP_ACT_ALLOW",
         "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
         "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
    ]
}"#;

#[test]
fn docker_shaped_profile() {
    let p = custom(DOCKER_LIKE).unwrap();
    assert_eq!(call(&p, "read", 0), ALLOW);
    assert_eq!(call(&p, "openat", 0), errno(libc::EPERM));
    assert_eq!(call(&p, "mount", 0), errno(libc::EPERM));
    assert_eq!(call(&p, "clone", libc::SIGCHLD as u64), ALLOW);
    assert_eq!(
        call(&p, "clone", libc::CLONE_NEWNS as u64),
        errno(libc::EPERM)
    );
    assert_eq!(call(&p, "clone3", 0), errno(libc::ENOSYS));
    #[cfg(target_arch = "x86_64")]
    assert_eq!(call(&p, "arch_prctl", 0), ALLOW);
    // With CAP_SYS_ADMIN: the namespace calls are allowed, clone3 too.
    let p = SeccompIsolator::new()
        .compile_custom(DOCKER_LIKE, &["SYS_ADMIN".into()], &[])
        .unwrap();
    assert_eq!(call(&p, "mount", 0), ALLOW);
    assert_eq!(call(&p, "clone", libc::CLONE_NEWNS as u64), ALLOW);
    assert_eq!(call(&p, "clone3", 0), ALLOW);
}
