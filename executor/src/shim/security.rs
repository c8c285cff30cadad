//! Applies the workload's [`SecurityPlan`] in the forked workload, right before `execve`.
//!
//! [`PreparedSecurity::prepare`] runs in the shim before `clone`: it validates the plan and turns
//! names into numbers and masks, so [`PreparedSecurity::apply`] in the workload makes system
//! calls only (no allocation, no file reads) on its success path. The checklist, in order:
//!
//! 1. `setrlimit` for every limit (while the process may still raise hard limits).
//! 2. `PR_SET_NO_NEW_PRIVS`: no setuid bit or file capability can add privileges after this.
//! 3. Bounding set: `PR_CAPBSET_DROP` for every capability not in the plan's bounding set (needs
//!    `CAP_SETPCAP` in the effective set, which is still full here).
//! 4. User (if any): `PR_SET_KEEPCAPS` so the permitted set survives the uid change, then
//!    `setgroups`, `setgid`, `setuid` (needs `CAP_SETGID`/`CAP_SETUID`, still effective). The
//!    uid change clears the parent-death signal: it is set again.
//! 5. `capset` of the effective, permitted and inheritable sets, then the ambient set is
//!    cleared and the plan's ambient capabilities raised.
//! 6. The seccomp filter, last, so none of the calls above is filtered; `execve` (and, if it
//!    fails, `write` of the error record and `exit_group`) must be allowed by it.
//!
//! Without `no_new_privs` the kernel only lets a process holding `CAP_SYS_ADMIN` install a
//! filter, which the workload may not keep: then (as runc does) the filter is installed right
//! after step 1, while the process still has every capability, and steps 2-5 run under it (a
//! profile must allow `prctl`, `setgroups`, `setgid`, `setuid` and `capset`, as Docker's does).
//!
//! For a workload running as root without a user namespace, what it ends up with after `execve`
//! is the bounding set (the kernel gives root every capability of it); steps 3 and 5 agree with
//! each other, and `no_new_privs` keeps it from regaining anything.

use std::str::FromStr;

use nix::errno::Errno;
use nix::sys::resource::Resource;

use crate::protocol::{CapabilitySets, SecurityPlan};

/// Resource limit names the shim knows, as [`crate::RlimitSpec::kind`] spells them.
const RLIMITS: [(&str, Resource); 16] = [
    ("RLIMIT_AS", Resource::RLIMIT_AS),
    ("RLIMIT_CORE", Resource::RLIMIT_CORE),
    ("RLIMIT_CPU", Resource::RLIMIT_CPU),
    ("RLIMIT_DATA", Resource::RLIMIT_DATA),
    ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
    ("RLIMIT_LOCKS", Resource::RLIMIT_LOCKS),
    ("RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
    ("RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", Resource::RLIMIT_NICE),
    ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
    ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
    ("RLIMIT_RSS", Resource::RLIMIT_RSS),
    ("RLIMIT_RTPRIO", Resource::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
    ("RLIMIT_SIGPENDING", Resource::RLIMIT_SIGPENDING),
    ("RLIMIT_STACK", Resource::RLIMIT_STACK),
];

/// Most instructions the kernel accepts in one seccomp filter (`BPF_MAXINSNS`).
const MAX_FILTER_LEN: usize = 4096;
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit halves.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// Capabilities are numbered below this (two 32-bit words).
const CAP_WORDS_BITS: u8 = 64;

/// One resource limit, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedRlimit {
    /// Kernel name, for errors.
    pub kind: &'static str,
    /// The resource.
    pub resource: Resource,
    /// Soft limit (`u64::MAX` = unlimited, which is `RLIM_INFINITY`).
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Capability sets as bit masks (bit n = capability n).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapMasks {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

/// The user the workload switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedUser {
    /// uid.
    pub uid: libc::uid_t,
    /// gid.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
}

/// A seccomp program in the kernel's layout.
#[derive(Clone)]
pub struct Filter(Vec<libc::sock_filter>);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} instructions)", self.0.len())
    }
}

impl Filter {
    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the program is empty (never, once prepared).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A [`SecurityPlan`] resolved into what the system calls take.
#[derive(Debug, Clone, Default)]
pub struct PreparedSecurity {
    /// Limits, in plan order.
    pub rlimits: Vec<PreparedRlimit>,
    /// Set `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// Capability sets; `None` leaves them alone.
    pub caps: Option<CapMasks>,
    /// User switch; `None` stays root.
    pub user: Option<PreparedUser>,
    /// Seccomp program; `None` = unconfined.
    pub seccomp: Option<Filter>,
    /// Install the filter before the privilege changes (no `no_new_privs`, see the module docs).
    pub seccomp_early: bool,
}

/// A step of [`PreparedSecurity::apply`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityStep {
    /// `setrlimit` of this limit.
    Rlimit(&'static str),
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// `PR_CAPBSET_DROP` of this capability.
    BoundingDrop(u8),
    /// `PR_SET_KEEPCAPS`.
    KeepCaps,
    /// `setgroups`.
    Setgroups,
    /// `setgid` to this gid.
    Setgid(u32),
    /// `setuid` to this uid.
    Setuid(u32),
    /// `capset`.
    Capset,
    /// Raising this ambient capability.
    Ambient(u8),
    /// Installing the seccomp filter.
    Seccomp,
}

/// A failed step and the kernel's answer. Displayed as the container's launch error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("failed to {}: {} ({errno:?})", describe(.step), .errno.desc())]
pub struct SecurityError {
    /// What failed.
    pub step: SecurityStep,
    /// Why.
    pub errno: Errno,
}

fn cap_name(index: u8) -> String {
    caps::all()
        .into_iter()
        .find(|c| c.index() == index)
        .map_or_else(|| format!("capability {index}"), |c| c.to_string())
}

fn describe(step: &SecurityStep) -> String {
    match *step {
        SecurityStep::Rlimit(kind) => format!("set {kind}"),
        SecurityStep::NoNewPrivs => "set no_new_privs".into(),
        SecurityStep::BoundingDrop(c) => format!("drop {} from the bounding set", cap_name(c)),
        SecurityStep::KeepCaps => "keep capabilities across setuid".into(),
        SecurityStep::Setgroups => "set supplementary groups".into(),
        SecurityStep::Setgid(g) => format!("setgid({g})"),
        SecurityStep::Setuid(u) => format!("setuid({u})"),
        SecurityStep::Capset => "set capabilities".into(),
        SecurityStep::Ambient(c) => format!("raise ambient capability {}", cap_name(c)),
        SecurityStep::Seccomp => "apply seccomp filter".into(),
    }
}

fn mask(names: &[String], set: &str) -> Result<u64, String> {
    let mut m = 0u64;
    for n in names {
        let cap = caps::Capability::from_str(n)
            .map_err(|_| format!("unknown capability {n:?} in the {set} set"))?;
        m |= cap.bitmask();
    }
    Ok(m)
}

fn cap_masks(c: &CapabilitySets) -> Result<CapMasks, String> {
    let m = CapMasks {
        bounding: mask(&c.bounding, "bounding")?,
        effective: mask(&c.effective, "effective")?,
        permitted: mask(&c.permitted, "permitted")?,
        inheritable: mask(&c.inheritable, "inheritable")?,
        ambient: mask(&c.ambient, "ambient")?,
    };
    if m.effective & !m.permitted != 0 {
        return Err("effective capabilities must be permitted".into());
    }
    if m.ambient & !(m.permitted & m.inheritable) != 0 {
        return Err("ambient capabilities must be permitted and inheritable".into());
    }
    Ok(m)
}

impl PreparedSecurity {
    /// Validates `plan` and resolves it; the error says what is wrong with it.
    pub fn prepare(plan: &SecurityPlan) -> Result<PreparedSecurity, String> {
        let rlimits = plan
            .rlimits
            .iter()
            .map(|r| {
                let (kind, resource) = RLIMITS
                    .iter()
                    .find(|(k, _)| *k == r.kind)
                    .ok_or_else(|| format!("unknown resource limit {:?}", r.kind))?;
                if r.soft > r.hard {
                    return Err(format!(
                        "{kind}: soft limit {} above hard {}",
                        r.soft, r.hard
                    ));
                }
                Ok(PreparedRlimit {
                    kind,
                    resource: *resource,
                    soft: r.soft,
                    hard: r.hard,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let caps = plan.capabilities.as_ref().map(cap_masks).transpose()?;
        let seccomp = match &plan.seccomp {
            None => None,
            Some(p) if p.is_empty() || p.len() > MAX_FILTER_LEN => {
                return Err(format!(
                    "a seccomp filter needs 1 to {MAX_FILTER_LEN} instructions, not {}",
                    p.len()
                ));
            }
            Some(p) => Some(Filter(
                p.iter()
                    .map(|i| libc::sock_filter {
                        code: i.code,
                        jt: i.jt,
                        jf: i.jf,
                        k: i.k,
                    })
                    .collect(),
            )),
        };
        let seccomp_early = seccomp.is_some() && !plan.no_new_privileges;
        let user = plan.user.as_ref().map(|u| PreparedUser {
            uid: u.uid,
            gid: u.gid,
            groups: u.additional_gids.clone(),
        });
        Ok(PreparedSecurity {
            rlimits,
            no_new_privs: plan.no_new_privileges,
            caps,
            user,
            seccomp,
            seccomp_early,
        })
    }

    /// Applies the plan to the calling process (the workload, single-threaded, right before
    /// `execve`), in the order of the module docs. Stops at the first failure.
    pub fn apply(&self) -> Result<(), SecurityError> {
        let fail = |step| move |errno| SecurityError { step, errno };
        // 1. Resource limits.
        for r in &self.rlimits {
            nix::sys::resource::setrlimit(r.resource, r.soft, r.hard)
                .map_err(fail(SecurityStep::Rlimit(r.kind)))?;
        }
        // 1b. Without no_new_privs: the filter now, while CAP_SYS_ADMIN is still held.
        if self.seccomp_early
            && let Some(f) = &self.seccomp
        {
            install_filter(f).map_err(fail(SecurityStep::Seccomp))?;
        }
        // 2. No new privileges.
        if self.no_new_privs {
            prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(fail(SecurityStep::NoNewPrivs))?;
        }
        // 3. Bounding set.
        if let Some(c) = &self.caps {
            for cap in 0..CAP_WORDS_BITS {
                if c.bounding & (1 << cap) != 0 {
                    continue;
                }
                match prctl(libc::PR_CAPBSET_DROP, cap.into(), 0) {
                    Ok(()) => {}
                    // Past the kernel's last capability.
                    Err(Errno::EINVAL) => break,
                    Err(e) => return Err(fail(SecurityStep::BoundingDrop(cap))(e)),
                }
            }
        }
        // 4. User.
        if let Some(u) = &self.user {
            prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(fail(SecurityStep::KeepCaps))?;
            // SAFETY: `groups` is a live slice of `len` gid_t values, only read by the kernel.
            let rc = unsafe { libc::setgroups(u.groups.len(), u.groups.as_ptr()) };
            check(rc).map_err(fail(SecurityStep::Setgroups))?;
            // SAFETY: plain system call wrappers without pointer arguments.
            check(unsafe { libc::setgid(u.gid) }).map_err(fail(SecurityStep::Setgid(u.gid)))?;
            // SAFETY: as above.
            check(unsafe { libc::setuid(u.uid) }).map_err(fail(SecurityStep::Setuid(u.uid)))?;
            // The uid change cleared the parent-death signal.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
        }
        // 5. Capability sets, then ambient.
        if let Some(c) = &self.caps {
            capset(c).map_err(fail(SecurityStep::Capset))?;
            let cleared = prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as _, 0);
            if c.ambient != 0 {
                cleared.map_err(fail(SecurityStep::Ambient(0)))?;
            }
            for cap in 0..CAP_WORDS_BITS {
                if c.ambient & (1 << cap) != 0 {
                    prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as _,
                        cap.into(),
                    )
                    .map_err(fail(SecurityStep::Ambient(cap)))?;
                }
            }
        }
        // 6. Seccomp, last.
        if !self.seccomp_early
            && let Some(f) = &self.seccomp
        {
            install_filter(f).map_err(fail(SecurityStep::Seccomp))?;
        }
        Ok(())
    }
}

fn check(rc: libc::c_int) -> Result<(), Errno> {
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `prctl(option, arg2, arg3, 0, 0)`.
fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: every option used here takes integer arguments only (no pointers), and unused
    // arguments must be zero.
    check(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` of the calling thread with 64-bit sets.
fn capset(c: &CapMasks) -> Result<(), Errno> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
    let data = [false, true].map(|hi| CapData {
        effective: half(c.effective, hi),
        permitted: half(c.permitted, hi),
        inheritable: half(c.inheritable, hi),
    });
    // SAFETY: `header` is a live `struct __user_cap_header_struct` (the kernel may write its
    // version field, hence the mutable pointer) and `data` two live
    // `struct __user_cap_data_struct`, as version 3 requires; the kernel only reads `data`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)`: no TSYNC, the workload is single-threaded.
fn install_filter(f: &Filter) -> Result<(), Errno> {
    let prog = libc::sock_fprog {
        len: f.0.len() as libc::c_ushort,
        filter: f.0.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `f.0`, a live buffer of `len` (checked at prepare: 1..=4096)
    // instructions; the kernel copies the program and never writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BpfInstruction, ProcessUser, RlimitSpec};

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn sets(bounding: &[&str]) -> CapabilitySets {
        CapabilitySets {
            bounding: names(bounding),
            effective: names(bounding),
            permitted: names(bounding),
            inheritable: vec![],
            ambient: vec![],
        }
    }

    #[test]
    fn empty_plan_does_nothing() {
        let p = PreparedSecurity::prepare(&SecurityPlan::default()).unwrap();
        assert!(p.rlimits.is_empty() && !p.no_new_privs);
        assert!(p.caps.is_none() && p.user.is_none() && p.seccomp.is_none());
        // Applying it is a no-op, so it is safe to run in the test process.
        p.apply().unwrap();
    }

    #[test]
    fn plan_resolves_to_masks_and_numbers() {
        let plan = SecurityPlan {
            no_new_privileges: true,
            capabilities: Some(sets(&["CAP_CHOWN", "CAP_KILL", "CAP_CHECKPOINT_RESTORE"])),
            seccomp: Some(vec![BpfInstruction {
                code: 6,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }]),
            rlimits: vec![RlimitSpec {
                kind: "RLIMIT_NOFILE".into(),
                soft: 10,
                hard: 20,
            }],
            user: Some(ProcessUser {
                uid: 1000,
                gid: 100,
                additional_gids: vec![5, 6],
            }),
        };
        let p = PreparedSecurity::prepare(&plan).unwrap();
        let c = p.caps.unwrap();
        assert_eq!(c.bounding, 1 | (1 << 5) | (1 << 40));
        assert_eq!((c.effective, c.permitted), (c.bounding, c.bounding));
        assert_eq!((c.inheritable, c.ambient), (0, 0));
        assert_eq!(p.rlimits[0].resource, Resource::RLIMIT_NOFILE);
        assert_eq!((p.rlimits[0].soft, p.rlimits[0].hard), (10, 20));
        assert_eq!(p.seccomp.as_ref().unwrap().len(), 1);
        assert_eq!(p.user.unwrap().groups, vec![5, 6]);
    }

    #[test]
    fn invalid_plans_are_refused() {
        let bad = |plan: SecurityPlan, want: &str| {
            let e = PreparedSecurity::prepare(&plan).unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        bad(
            SecurityPlan {
                capabilities: Some(sets(&["CAP_BOGUS"])),
                ..Default::default()
            },
            "unknown capability \"CAP_BOGUS\" in the bounding set",
        );
        let mut c = sets(&["CAP_CHOWN"]);
        c.effective.push("CAP_KILL".into());
        bad(
            SecurityPlan {
                capabilities: Some(c),
                ..Default::default()
            },
            "effective capabilities must be permitted",
        );
        let mut c = sets(&["CAP_CHOWN"]);
        c.ambient.push("CAP_CHOWN".into());
        bad(
            SecurityPlan {
                capabilities: Some(c),
                ..Default::default()
            },
            "ambient capabilities must be permitted and inheritable",
        );
        bad(
            SecurityPlan {
                rlimits: vec![RlimitSpec {
                    kind: "nofile".into(),
                    soft: 1,
                    hard: 1,
                }],
                ..Default::default()
            },
            "unknown resource limit \"nofile\"",
        );
        bad(
            SecurityPlan {
                rlimits: vec![RlimitSpec {
                    kind: "RLIMIT_CORE".into(),
                    soft: 2,
                    hard: 1,
                }],
                ..Default::default()
            },
            "soft limit 2 above hard 1",
        );
        bad(
            SecurityPlan {
                seccomp: Some(vec![]),
                ..Default::default()
            },
            "1 to 4096 instructions, not 0",
        );
        let allow = BpfInstruction {
            code: 6,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        };
        // Without no_new_privs the filter goes first (while CAP_SYS_ADMIN is held).
        let p = PreparedSecurity::prepare(&SecurityPlan {
            seccomp: Some(vec![allow]),
            capabilities: Some(sets(&["CAP_CHOWN"])),
            no_new_privileges: false,
            ..Default::default()
        })
        .unwrap();
        assert!(p.seccomp_early);
        let p = PreparedSecurity::prepare(&SecurityPlan {
            seccomp: Some(vec![allow]),
            no_new_privileges: true,
            ..Default::default()
        })
        .unwrap();
        assert!(!p.seccomp_early);
    }

    #[test]
    fn errors_read_well() {
        let e = SecurityError {
            step: SecurityStep::Seccomp,
            errno: Errno::EINVAL,
        };
        assert_eq!(
            e.to_string(),
            "failed to apply seccomp filter: Invalid argument (EINVAL)"
        );
        let e = SecurityError {
            step: SecurityStep::BoundingDrop(12),
            errno: Errno::EPERM,
        };
        assert_eq!(
            e.to_string(),
            "failed to drop CAP_NET_ADMIN from the bounding set: Operation not permitted (EPERM)"
        );
        let e = SecurityError {
            step: SecurityStep::Rlimit("RLIMIT_NOFILE"),
            errno: Errno::EPERM,
        };
        assert!(e.to_string().starts_with("failed to set RLIMIT_NOFILE: "));
    }
}
