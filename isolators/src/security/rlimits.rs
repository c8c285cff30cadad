//! The rlimits isolator (Mesos `posix/rlimits`): resource limits the shim sets with `setrlimit`
//! in the workload before `execve`.
//!
//! Names are the short ones (`nofile`, `nproc`, ...) or the `RLIMIT_*` ones, case-insensitive.
//! A missing soft or hard value means unlimited. Without a `nofile` request the workload gets
//! soft 1024 and the agent's own hard limit (the usual login default), not the agent's raised
//! soft limit.
//!
//! A hard limit above the agent's own can only be set with `CAP_SYS_RESOURCE`, which the shim
//! has only if the agent has it in its effective set: without it such a request is refused at
//! `prepare`, naming the limit.

use nix::sys::resource::{Resource, getrlimit};

use crate::{ContainerSpec, Isolator, IsolatorError, LaunchInfo, RlimitRequest, RlimitSpec};

const NAME: &str = "rlimits";

/// Soft `RLIMIT_NOFILE` of a workload that asked for none.
pub const DEFAULT_NOFILE_SOFT: u64 = 1024;

/// Every limit berth knows: short name, kernel name, resource.
const LIMITS: [(&str, &str, Resource); 15] = [
    ("as", "RLIMIT_AS", Resource::RLIMIT_AS),
    ("core", "RLIMIT_CORE", Resource::RLIMIT_CORE),
    ("cpu", "RLIMIT_CPU", Resource::RLIMIT_CPU),
    ("data", "RLIMIT_DATA", Resource::RLIMIT_DATA),
    ("fsize", "RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
    ("locks", "RLIMIT_LOCKS", Resource::RLIMIT_LOCKS),
    ("memlock", "RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
    ("msgqueue", "RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
    ("nice", "RLIMIT_NICE", Resource::RLIMIT_NICE),
    ("nofile", "RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
    ("nproc", "RLIMIT_NPROC", Resource::RLIMIT_NPROC),
    ("rtprio", "RLIMIT_RTPRIO", Resource::RLIMIT_RTPRIO),
    ("rttime", "RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
    (
        "sigpending",
        "RLIMIT_SIGPENDING",
        Resource::RLIMIT_SIGPENDING,
    ),
    ("stack", "RLIMIT_STACK", Resource::RLIMIT_STACK),
];

/// The kernel name (`RLIMIT_NOFILE`) and resource for a short or kernel name.
pub fn parse_rlimit_name(name: &str) -> Option<(&'static str, Resource)> {
    let lower = name.trim().to_ascii_lowercase();
    let short = lower.strip_prefix("rlimit_").unwrap_or(&lower);
    LIMITS
        .iter()
        .find(|(s, _, _)| *s == short)
        .map(|(_, kernel, r)| (*kernel, *r))
}

/// The resource for a kernel name as it appears in a [`RlimitSpec`] (`RLIMIT_NOFILE`).
pub fn resource_of(kind: &str) -> Option<Resource> {
    LIMITS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map(|(_, _, r)| *r)
}

/// What the agent itself may set: its current limits, and whether it can raise hard limits.
pub trait AgentLimits {
    /// The agent's (soft, hard) limit; `u64::MAX` = unlimited.
    fn current(&self, resource: Resource) -> Result<(u64, u64), IsolatorError>;
    /// Whether the agent has `CAP_SYS_RESOURCE` (may raise hard limits).
    fn can_raise(&self) -> bool;
}

/// The agent's real limits (`getrlimit`) and capabilities.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessLimits;

impl AgentLimits for ProcessLimits {
    fn current(&self, resource: Resource) -> Result<(u64, u64), IsolatorError> {
        getrlimit(resource).map_err(|e| IsolatorError::Io {
            isolator: NAME,
            what: format!("getrlimit({resource:?})"),
            source: e.into(),
        })
    }
    fn can_raise(&self) -> bool {
        caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .unwrap_or(false)
    }
}

fn show(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Turns the task's requests into [`RlimitSpec`]s, adding the default `RLIMIT_NOFILE`.
pub fn resolve_rlimits(
    requests: &[RlimitRequest],
    agent: &dyn AgentLimits,
) -> Result<Vec<RlimitSpec>, IsolatorError> {
    let invalid = |message: String| IsolatorError::Invalid {
        isolator: NAME,
        message,
    };
    let mut out: Vec<RlimitSpec> = Vec::new();
    for req in requests {
        let (kind, resource) = parse_rlimit_name(&req.name).ok_or_else(|| {
            invalid(format!(
                "unknown resource limit {:?} (known: {})",
                req.name,
                LIMITS.map(|l| l.0).join(", ")
            ))
        })?;
        let soft = req.soft.unwrap_or(u64::MAX);
        let hard = req.hard.unwrap_or(u64::MAX);
        if soft > hard {
            return Err(invalid(format!(
                "{kind}: soft limit {} is above the hard limit {}",
                show(soft),
                show(hard)
            )));
        }
        if out.iter().any(|s| s.kind == kind) {
            return Err(invalid(format!("{kind} is given more than once")));
        }
        let (_, agent_hard) = agent.current(resource)?;
        if hard > agent_hard && !agent.can_raise() {
            return Err(invalid(format!(
                "{kind}: hard limit {} is above the agent's own hard limit {}, which cannot be \
                 raised without CAP_SYS_RESOURCE",
                show(hard),
                show(agent_hard)
            )));
        }
        out.push(RlimitSpec {
            kind: kind.to_string(),
            soft,
            hard,
        });
    }
    if !out.iter().any(|s| s.kind == "RLIMIT_NOFILE") {
        let (_, hard) = agent.current(Resource::RLIMIT_NOFILE)?;
        out.push(RlimitSpec {
            kind: "RLIMIT_NOFILE".into(),
            soft: DEFAULT_NOFILE_SOFT.min(hard),
            hard,
        });
    }
    Ok(out)
}

/// The rlimits isolator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RlimitsIsolator;

impl RlimitsIsolator {
    /// The isolator, checking requests against the agent's own limits.
    pub fn new() -> RlimitsIsolator {
        RlimitsIsolator
    }
}

impl Isolator for RlimitsIsolator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(&self, spec: &ContainerSpec) -> Result<LaunchInfo, IsolatorError> {
        let rlimits = resolve_rlimits(&spec.options.rlimits, &ProcessLimits)?;
        Ok(LaunchInfo {
            rlimits,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        hard: u64,
        raise: bool,
    }
    impl AgentLimits for Fake {
        fn current(&self, r: Resource) -> Result<(u64, u64), IsolatorError> {
            if r == Resource::RLIMIT_NOFILE {
                Ok((self.hard.min(4096), self.hard))
            } else {
                Ok((u64::MAX, u64::MAX))
            }
        }
        fn can_raise(&self) -> bool {
            self.raise
        }
    }

    fn req(name: &str, soft: Option<u64>, hard: Option<u64>) -> RlimitRequest {
        RlimitRequest {
            name: name.into(),
            soft,
            hard,
        }
    }

    #[test]
    fn names_map_to_kernel_names() {
        for (n, k) in [
            ("nofile", "RLIMIT_NOFILE"),
            ("NOFILE", "RLIMIT_NOFILE"),
            ("RLIMIT_NPROC", "RLIMIT_NPROC"),
            ("rlimit_core", "RLIMIT_CORE"),
            ("as", "RLIMIT_AS"),
            ("sigpending", "RLIMIT_SIGPENDING"),
        ] {
            assert_eq!(parse_rlimit_name(n).map(|x| x.0), Some(k), "{n}");
        }
        assert_eq!(parse_rlimit_name("files"), None);
        assert_eq!(resource_of("RLIMIT_STACK"), Some(Resource::RLIMIT_STACK));
        assert_eq!(resource_of("stack"), None);
        for (s, k, r) in LIMITS {
            assert_eq!(parse_rlimit_name(s), Some((k, r)));
        }
    }

    #[test]
    fn requests_resolve_and_default_nofile_is_added() {
        let agent = Fake {
            hard: 20000,
            raise: false,
        };
        let out = resolve_rlimits(
            &[req("nproc", Some(10), Some(20)), req("core", None, None)],
            &agent,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                RlimitSpec {
                    kind: "RLIMIT_NPROC".into(),
                    soft: 10,
                    hard: 20
                },
                RlimitSpec {
                    kind: "RLIMIT_CORE".into(),
                    soft: u64::MAX,
                    hard: u64::MAX
                },
                RlimitSpec {
                    kind: "RLIMIT_NOFILE".into(),
                    soft: 1024,
                    hard: 20000
                },
            ]
        );
        let out = resolve_rlimits(&[req("nofile", Some(77), Some(100))], &agent).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].soft, out[0].hard), (77, 100));
        // An agent whose hard limit is below 1024.
        let low = Fake {
            hard: 512,
            raise: false,
        };
        let out = resolve_rlimits(&[], &low).unwrap();
        assert_eq!((out[0].soft, out[0].hard), (512, 512));
    }

    #[test]
    fn invalid_requests_are_refused_with_the_name() {
        let agent = Fake {
            hard: 20000,
            raise: false,
        };
        let e = resolve_rlimits(&[req("nofile", Some(10), Some(5))], &agent).unwrap_err();
        assert!(
            e.to_string()
                .contains("RLIMIT_NOFILE: soft limit 10 is above"),
            "{e}"
        );
        let e = resolve_rlimits(&[req("nofile", None, Some(5))], &agent).unwrap_err();
        assert!(e.to_string().contains("soft limit unlimited"), "{e}");
        let e = resolve_rlimits(&[req("bogus", None, None)], &agent).unwrap_err();
        assert!(
            e.to_string().contains("unknown resource limit \"bogus\""),
            "{e}"
        );
        let e = resolve_rlimits(&[req("nofile", Some(1), Some(30000))], &agent).unwrap_err();
        assert!(
            e.to_string()
                .contains("hard limit 30000 is above the agent's own hard limit 20000"),
            "{e}"
        );
        let e = resolve_rlimits(&[req("nofile", None, None)], &agent).unwrap_err();
        assert!(e.to_string().contains("without CAP_SYS_RESOURCE"), "{e}");
        let e = resolve_rlimits(
            &[
                req("nofile", Some(1), Some(1)),
                req("RLIMIT_NOFILE", Some(1), Some(2)),
            ],
            &agent,
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        // With CAP_SYS_RESOURCE raising is allowed.
        let root = Fake {
            hard: 20000,
            raise: true,
        };
        assert!(resolve_rlimits(&[req("nofile", Some(1), Some(30000))], &root).is_ok());
    }

    #[test]
    fn process_limits_read_the_real_ones() {
        let (soft, hard) = ProcessLimits.current(Resource::RLIMIT_NOFILE).unwrap();
        assert!(soft <= hard);
        let out = RlimitsIsolator::new()
            .prepare(&ContainerSpec {
                id: "c".into(),
                limits: Default::default(),
                network: Default::default(),
                hostname: "h".into(),
                sandbox: "/tmp".into(),
                options: Default::default(),
                image: None,
            })
            .unwrap();
        assert_eq!(out.rlimits[0].hard, hard);
    }
}
