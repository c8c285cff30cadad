//! Reading a custom seccomp profile in the Docker/OCI JSON format into berth's rule list.
//!
//! Understood: `defaultAction`, `defaultErrnoRet`, `architectures` (OCI) and `archMap` (Docker),
//! `syscalls[]` with `names` (or the old `name`), `action`, `errnoRet`, `args[]` (`index`,
//! `value`, `valueTwo`, `op`) and Docker's `includes` / `excludes` (`caps`, `arches`,
//! `minKernel`). Actions: `SCMP_ACT_ALLOW`, `_ERRNO`, `_KILL` (= `_KILL_THREAD`),
//! `_KILL_THREAD`, `_KILL_PROCESS`, `_TRAP`, `_LOG`. `SCMP_ACT_TRACE` and `SCMP_ACT_NOTIFY` need a
//! tracer or a listener berth does not run, and filter `flags` are not applied by the shim: all
//! three are refused rather than silently ignored.
//!
//! As runc does: the arguments of one entry are ANDed, unless an argument index repeats, then
//! each argument is a rule of its own (ORed); names of calls of other architectures are
//! skipped. Names berth does not know at all are an error (a typo must not silently leave a
//! call allowed).

use std::collections::HashSet;

use caps::Capability;
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
use serde::Deserialize;

use super::seccomp::{Profile, Rule, SeccompError};
use super::syscalls::{self, Syscall};

/// What the conditions of a profile entry (`includes` / `excludes`) are checked against.
#[derive(Debug, Clone)]
pub struct ProfileContext {
    /// The container's bounding capabilities.
    pub capabilities: HashSet<Capability>,
    /// The running kernel's (major, minor) version.
    pub kernel: (u32, u32),
}

/// `null` as the default value: Go's encoder writes nil slices as `null`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    architectures: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    arch_map: Vec<JsonArchMap>,
    #[serde(default, deserialize_with = "null_default")]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    syscalls: Vec<JsonSyscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonArchMap {
    architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSyscall {
    #[serde(default, deserialize_with = "null_default")]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    args: Vec<JsonArg>,
    #[serde(default, deserialize_with = "null_default")]
    includes: JsonFilter,
    #[serde(default, deserialize_with = "null_default")]
    excludes: JsonFilter,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonFilter {
    #[serde(default, deserialize_with = "null_default")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// libseccomp's name of the architecture berth is built for.
fn native_scmp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "riscv64" => "SCMP_ARCH_RISCV64",
        other => other,
    }
}

/// Names Docker's `includes.arches` uses for this architecture (Go's and the kernel's).
fn native_arch_names() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["amd64", "x86_64"],
        "aarch64" => &["arm64", "aarch64"],
        "riscv64" => &["riscv64"],
        _ => &[],
    }
}

fn parse_action(
    entry: &str,
    name: &str,
    errno: Option<u32>,
) -> Result<SeccompAction, SeccompError> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    if errno > 0xffff {
        return Err(SeccompError::Entry {
            entry: entry.to_string(),
            message: format!("errno {errno} is out of range"),
        });
    }
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" | "SCMP_ACT_NOTIFY" => {
            return Err(SeccompError::Entry {
                entry: entry.to_string(),
                message: format!(
                    "action {name} is not supported (berth runs no tracer or listener)"
                ),
            });
        }
        other => {
            return Err(SeccompError::Entry {
                entry: entry.to_string(),
                message: format!("unknown action {other:?}"),
            });
        }
    })
}

fn parse_condition(entry: &str, arg: &JsonArg) -> Result<SeccompCondition, SeccompError> {
    let bad = |message: String| SeccompError::Entry {
        entry: entry.to_string(),
        message,
    };
    let (op, value) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.value),
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.value),
        // (arg & value) == valueTwo
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.value), arg.value_two),
        other => return Err(bad(format!("unknown argument operator {other:?}"))),
    };
    let index = u8::try_from(arg.index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| bad(format!("argument index {} is not 0-5", arg.index)))?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| bad(format!("argument {index}: {e}")))
}

/// Parses "5.8" or "5.8.0-rc1" into (5, 8).
pub fn parse_kernel_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()
        .and_then(|m| {
            let digits: String = m.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .unwrap_or(0);
    Some((major, minor))
}

/// Whether the entry applies here (Docker's `includes` / `excludes`).
fn applies(entry: &str, s: &JsonSyscall, ctx: &ProfileContext) -> Result<bool, SeccompError> {
    let has_cap = |name: &str| -> Result<bool, SeccompError> {
        let cap =
            super::capabilities::parse_capability(name).ok_or_else(|| SeccompError::Entry {
                entry: entry.to_string(),
                message: format!("unknown capability {name:?}"),
            })?;
        Ok(match cap {
            super::capabilities::CapName::All => false,
            super::capabilities::CapName::One(c) => ctx.capabilities.contains(&c),
        })
    };
    let min_kernel = |v: &str| {
        parse_kernel_version(v).ok_or_else(|| SeccompError::Entry {
            entry: entry.to_string(),
            message: format!("invalid minKernel {v:?}"),
        })
    };
    let native = native_arch_names();
    let ex = &s.excludes;
    if ex.arches.iter().any(|a| native.contains(&a.as_str())) {
        return Ok(false);
    }
    for c in &ex.caps {
        if has_cap(c)? {
            return Ok(false);
        }
    }
    if let Some(v) = &ex.min_kernel
        && ctx.kernel >= min_kernel(v)?
    {
        return Ok(false);
    }
    let inc = &s.includes;
    if !inc.arches.is_empty() && !inc.arches.iter().any(|a| native.contains(&a.as_str())) {
        return Ok(false);
    }
    for c in &inc.caps {
        if !has_cap(c)? {
            return Ok(false);
        }
    }
    if let Some(v) = &inc.min_kernel
        && ctx.kernel < min_kernel(v)?
    {
        return Ok(false);
    }
    Ok(true)
}

/// Parses a Docker/OCI seccomp profile into a [`Profile`] for this architecture.
pub fn parse_profile(json: &str, ctx: &ProfileContext) -> Result<Profile, SeccompError> {
    let p: JsonProfile = serde_json::from_str(json).map_err(SeccompError::Json)?;
    let top = |message: String| SeccompError::Entry {
        entry: "profile".into(),
        message,
    };
    if !p.flags.is_empty() {
        return Err(top(format!("filter flags {:?} are not supported", p.flags)));
    }
    if p.listener_path.as_deref().is_some_and(|l| !l.is_empty()) {
        return Err(top(
            "listenerPath is not supported (berth runs no listener)".into(),
        ));
    }
    let native = native_scmp_arch();
    let mut arches: Vec<&str> = p.architectures.iter().map(String::as_str).collect();
    for m in &p.arch_map {
        arches.push(&m.architecture);
        arches.extend(m.sub_architectures.iter().map(String::as_str));
    }
    if !p.architectures.is_empty() && !arches.contains(&native) {
        return Err(top(format!(
            "architectures {:?} do not include this node's {native}",
            p.architectures
        )));
    }
    let default = parse_action("defaultAction", &p.default_action, p.default_errno_ret)?;
    let mut rules = Vec::new();
    for (i, s) in p.syscalls.iter().enumerate() {
        let names: Vec<&str> = s.names.iter().chain(&s.name).map(String::as_str).collect();
        let entry = format!("syscalls[{i}] ({})", names.join(", "));
        if names.is_empty() {
            return Err(SeccompError::Entry {
                entry,
                message: "no system call names".into(),
            });
        }
        let action = parse_action(&entry, &s.action, s.errno_ret)?;
        let conditions = s
            .args
            .iter()
            .map(|a| parse_condition(&entry, a))
            .collect::<Result<Vec<_>, _>>()?;
        if !applies(&entry, s, ctx)? {
            continue;
        }
        let mut seen = HashSet::new();
        let repeated = s.args.iter().any(|a| !seen.insert(a.index));
        let condition_sets: Vec<Vec<SeccompCondition>> = if repeated {
            conditions.into_iter().map(|c| vec![c]).collect()
        } else {
            vec![conditions]
        };
        for name in names {
            let nr = match syscalls::resolve(name) {
                Syscall::Native(nr) => nr,
                Syscall::Foreign => continue,
                Syscall::Unknown => {
                    return Err(SeccompError::Entry {
                        entry,
                        message: format!("unknown system call {name:?}"),
                    });
                }
            };
            for conds in &condition_sets {
                rules.push(Rule {
                    nr,
                    conditions: conds.clone(),
                    action: action.clone(),
                });
            }
        }
    }
    Ok(Profile { default, rules })
}
