//! The seccomp isolator (Mesos `linux/seccomp`): compiles the container's seccomp profile into a
//! classic BPF program that the shim installs as the very last step before `execve`.
//!
//! Profiles ([`SeccompProfile`]):
//! - `Default`: allow everything but what Docker's default profile blocks, which gets `EPERM`
//!   (see [`DEFAULT_BLOCKED`]); `unshare` and `clone` only when they ask for a new user
//!   namespace; `personality` only for personas other than Linux's usual ones; `clone3` gets
//!   `ENOSYS` so the C library falls back to `clone` (whose flags a filter can see).
//!   `io_uring_*` stay allowed (Docker blocks them since 25.0; berth does not yet).
//! - `Unconfined`: no filter.
//! - `Custom(json)`: a Docker/OCI JSON profile (see `seccomp_json`).
//!
//! Every filter first checks the architecture: calls of another ABI (i386 on x86_64, ...) kill
//! the process, and x32 calls on x86_64 (same audit arch, number bit 30 set) get `ENOSYS`, so
//! no call slips past the table by using another ABI's number.
//!
//! Compilation: `seccompiler` builds a filter with one action for the rules that match and one
//! for the rest, so berth compiles one `seccompiler` filter per action, the most restrictive
//! first (the kernel's own precedence), makes each filter's "no match" fall through to the next
//! one, and ends with the profile's default action.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use berth_executor::BpfInstruction;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::seccomp_json::{self, ProfileContext};
use super::syscalls::{self, Syscall};
use crate::{ContainerSpec, Isolator, IsolatorError, LaunchInfo, SeccompProfile};

const NAME: &str = "seccomp";

/// Most instructions the kernel accepts in one filter (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// Calls the default profile answers with `EPERM` whatever their arguments (those that do not
/// exist on this architecture are skipped).
pub const DEFAULT_BLOCKED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "setns",
    "settimeofday",
    "stime",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Personas `personality(2)` may set under the default profile: Linux, `UNAME26`,
/// `ADDR_NO_RANDOMIZE` and both, and the 0xffffffff query.
pub const ALLOWED_PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// A failure to read or compile a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile is not valid JSON of the expected shape.
    #[error("seccomp profile is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// An entry of the profile is unusable.
    #[error("seccomp profile {entry}: {message}")]
    Entry {
        /// Which entry (`syscalls[3] (mkdir, mkdirat)`, `defaultAction`, `profile`).
        entry: String,
        /// What is wrong with it.
        message: String,
    },
    /// This architecture has no seccomp support in berth.
    #[error("seccomp filters are not supported on {0}")]
    Architecture(String),
    /// `seccompiler` refused the filter.
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[source] seccompiler::BackendError),
    /// The compiled program is longer than the kernel accepts.
    #[error("the seccomp filter has {0} instructions, more than the kernel's {MAX_INSTRUCTIONS}")]
    TooLarge(usize),
}

impl From<SeccompError> for IsolatorError {
    fn from(e: SeccompError) -> IsolatorError {
        IsolatorError::Invalid {
            isolator: NAME,
            message: e.to_string(),
        }
    }
}

/// One rule: when call `nr` is made and every condition holds, `action`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// System call number on this architecture.
    pub nr: i64,
    /// Conditions on the arguments, ANDed; none = always.
    pub conditions: Vec<SeccompCondition>,
    /// What the filter returns.
    pub action: SeccompAction,
}

/// A profile resolved for this architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Action for calls no rule matches.
    pub default: SeccompAction,
    /// The rules. When several match a call, the most restrictive action wins.
    pub rules: Vec<Rule>,
}

/// The architecture berth is built for, as `seccompiler` names it.
pub fn native_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Architecture(std::env::consts::ARCH.to_string()))
}

/// The value a BPF program returns for `action`.
fn ret_value(action: &SeccompAction) -> u32 {
    u32::from(action.clone())
}

/// Placeholder "no match" action of the per-action filters, replaced by a jump to the next
/// filter. TRACE is never produced otherwise (profiles cannot ask for it).
const FALL_THROUGH: SeccompAction = SeccompAction::Trace(0x0bad);

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
/// Offset of `nr` in `struct seccomp_data`.
const DATA_NR: u32 = 0;
/// x32 ABI calls have this bit set in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> BpfInstruction {
    BpfInstruction { code, jt, jf, k }
}

/// Compiles `profile` into one BPF program for `arch`.
pub fn compile(profile: &Profile, arch: TargetArch) -> Result<Vec<BpfInstruction>, SeccompError> {
    // Group the rules by action, most restrictive first (the kernel's order: lower signed
    // action value wins). Rules with the default action change nothing and are dropped.
    let default_ret = ret_value(&profile.default);
    let mut actions: Vec<SeccompAction> = Vec::new();
    for r in &profile.rules {
        if ret_value(&r.action) != default_ret && !actions.contains(&r.action) {
            actions.push(r.action.clone());
        }
    }
    actions.sort_by_key(|a| ret_value(a) as i32);

    let mut prefix: Option<Vec<BpfInstruction>> = None;
    let mut body: Vec<BpfInstruction> = Vec::new();
    for action in &actions {
        // Per call: None = unconditional, Some(rules) = any of these.
        let mut by_call: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
        for r in profile.rules.iter().filter(|r| &r.action == action) {
            let slot = by_call.entry(r.nr).or_insert_with(|| Some(Vec::new()));
            match (slot.as_mut(), r.conditions.is_empty()) {
                (Some(_), true) => *slot = None,
                (Some(rules), false) => rules
                    .push(SeccompRule::new(r.conditions.clone()).map_err(SeccompError::Compile)?),
                (None, _) => {}
            }
        }
        let rules = by_call
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect();
        let filter = SeccompFilter::new(rules, FALL_THROUGH, action.clone(), arch)
            .map_err(SeccompError::Compile)?;
        let program = BpfProgram::try_from(filter).map_err(SeccompError::Compile)?;
        let (arch_check, part) = split_arch_check(&program)?;
        prefix.get_or_insert(arch_check);
        let fall = ret_value(&FALL_THROUGH);
        let len = part.len();
        body.extend(part.iter().enumerate().map(|(i, f)| {
            if f.code == BPF_RET_K && f.k == fall {
                // Jump to the first instruction after this part.
                insn(BPF_JMP_JA, 0, 0, (len - i - 1) as u32)
            } else {
                insn(f.code, f.jt, f.jf, f.k)
            }
        }));
    }
    let mut program = match prefix {
        Some(p) => p,
        None => {
            // No rules: take the architecture check from an empty filter.
            let filter =
                SeccompFilter::new(BTreeMap::new(), FALL_THROUGH, SeccompAction::Allow, arch)
                    .map_err(SeccompError::Compile)?;
            let program = BpfProgram::try_from(filter).map_err(SeccompError::Compile)?;
            split_arch_check(&program)?.0
        }
    };
    if arch == TargetArch::x86_64 {
        // x32 calls share AUDIT_ARCH_X86_64: refuse them before the table is consulted.
        program.push(insn(BPF_LD_W_ABS, 0, 0, DATA_NR));
        program.push(insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT));
        program.push(insn(
            BPF_RET_K,
            0,
            0,
            ret_value(&SeccompAction::Errno(libc::ENOSYS as u32)),
        ));
    }
    program.extend(body);
    program.push(insn(BPF_RET_K, 0, 0, default_ret));
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(program)
}

/// Splits `seccompiler`'s leading architecture check (load arch, compare, kill) off a program.
fn split_arch_check(
    program: &[seccompiler::sock_filter],
) -> Result<(Vec<BpfInstruction>, &[seccompiler::sock_filter]), SeccompError> {
    let ok = program.len() > 3
        && program[0].code == BPF_LD_W_ABS
        && program[1].code == 0x15 // JMP | JEQ | K
        && program[2].code == BPF_RET_K;
    if !ok {
        // Only a seccompiler change of its output could get here.
        return Err(SeccompError::Compile(
            seccompiler::BackendError::InvalidTargetArch(
                "unexpected architecture check in seccompiler's output".into(),
            ),
        ));
    }
    let check = program[..3]
        .iter()
        .map(|f| insn(f.code, f.jt, f.jf, f.k))
        .collect();
    Ok((check, &program[3..]))
}

fn cond(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .expect("argument index below 6")
}

/// berth's default profile for this architecture.
pub fn default_profile() -> Profile {
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut rules = Vec::new();
    let mut add = |name: &str, conditions: Vec<SeccompCondition>, action: &SeccompAction| {
        if let Syscall::Native(nr) = syscalls::resolve(name) {
            rules.push(Rule {
                nr,
                conditions,
                action: action.clone(),
            });
        }
    };
    for name in DEFAULT_BLOCKED {
        add(name, Vec::new(), &eperm);
    }
    // A new user namespace: the flags are the first argument of both calls (on the
    // architectures berth supports); the flag is in the low 32 bits.
    let newuser = libc::CLONE_NEWUSER as u64;
    for name in ["unshare", "clone"] {
        add(
            name,
            vec![cond(0, SeccompCmpOp::MaskedEq(newuser), newuser)],
            &eperm,
        );
    }
    // personality(2) takes an unsigned int: compare the low 32 bits.
    let personas = ALLOWED_PERSONAS
        .iter()
        .map(|p| cond(0, SeccompCmpOp::Ne, *p))
        .collect();
    add("personality", personas, &eperm);
    add(
        "clone3",
        Vec::new(),
        &SeccompAction::Errno(libc::ENOSYS as u32),
    );
    Profile {
        default: SeccompAction::Allow,
        rules,
    }
}

/// The seccomp isolator.
#[derive(Debug, Default)]
pub struct SeccompIsolator {
    /// The default profile, compiled on first use.
    default: OnceLock<Result<Vec<BpfInstruction>, String>>,
}

impl SeccompIsolator {
    /// The isolator.
    pub fn new() -> SeccompIsolator {
        SeccompIsolator::default()
    }

    /// The compiled default profile.
    pub fn default_program(&self) -> Result<Vec<BpfInstruction>, IsolatorError> {
        self.default
            .get_or_init(|| {
                native_arch()
                    .and_then(|arch| compile(&default_profile(), arch))
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|message| IsolatorError::Invalid {
                isolator: NAME,
                message,
            })
    }

    /// Compiles a custom Docker/OCI JSON profile for a container with the given capability
    /// options (a profile's entries may depend on them).
    pub fn compile_custom(
        &self,
        json: &str,
        cap_add: &[String],
        cap_drop: &[String],
    ) -> Result<Vec<BpfInstruction>, IsolatorError> {
        let caps: HashSet<_> =
            super::capabilities::resolve_capabilities(cap_add, cap_drop, &caps::all())?
                .into_iter()
                .collect();
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let ctx = ProfileContext {
            capabilities: caps,
            kernel: seccomp_json::parse_kernel_version(&release).unwrap_or((0, 0)),
        };
        let profile = seccomp_json::parse_profile(json, &ctx)?;
        Ok(compile(&profile, native_arch()?)?)
    }
}

impl Isolator for SeccompIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        let o = &spec.options;
        let seccomp = match &o.seccomp {
            SeccompProfile::Default => Some(self.default_program()?),
            SeccompProfile::Unconfined => None,
            SeccompProfile::Custom(json) => {
                Some(self.compile_custom(json, &o.cap_add, &o.cap_drop)?)
            }
        };
        tracing::debug!(
            container_id = %spec.id,
            instructions = seccomp.as_ref().map_or(0, Vec::len),
            "seccomp filter"
        );
        Ok(LaunchInfo {
            seccomp,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests;
