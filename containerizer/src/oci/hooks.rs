//! Lifecycle hooks of a runtime-spec config, with the container's state document on stdin and
//! their `timeout` enforced (SIGKILL, then an error naming the hook).
//!
//! When berth runs each kind (`create` ends after the createContainer hooks):
//! - `prestart` (deprecated) and `createRuntime`: in `create`, in the runtime's namespaces, once
//!   the container's process exists and its root is assembled (status `created` for prestart,
//!   `creating` for createRuntime). runc runs them before `pivot_root`; berth's init has already
//!   pivoted by then (its mounts are done before `create` returns), so a hook that wants to add
//!   mounts must do it through `/proc/<pid>/root`.
//! - `createContainer`: in `create`, in the container's namespaces (joined with `setns`), the
//!   hook binary opened on the host (its path resolves in the runtime's namespace).
//! - `startContainer`: in `start`, in the container's namespaces, before the process is released
//!   to exec; its path resolves in the container.
//! - `poststart`: after `start` released the process; a failure is a warning.
//! - `poststop`: in `delete`, after the container is gone; a failure is a warning.

use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sched::CloneFlags;
use oci_spec::runtime::{Hook, Spec};

use super::OciError;
use super::exec::{self, Launch, Program};
use super::proc::PidFd;
use super::state::OciState;

/// Hook kinds, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `prestart` (deprecated).
    Prestart,
    /// `createRuntime`.
    CreateRuntime,
    /// `createContainer`.
    CreateContainer,
    /// `startContainer`.
    StartContainer,
    /// `poststart`.
    Poststart,
    /// `poststop`.
    Poststop,
}

impl HookKind {
    /// The config's name.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }
}

/// The hooks of `kind` in `spec`.
pub fn of(spec: &Spec, kind: HookKind) -> Vec<Hook> {
    let Some(h) = spec.hooks() else {
        return Vec::new();
    };
    #[allow(deprecated)]
    let list = match kind {
        HookKind::Prestart => h.prestart(),
        HookKind::CreateRuntime => h.create_runtime(),
        HookKind::CreateContainer => h.create_container(),
        HookKind::StartContainer => h.start_container(),
        HookKind::Poststart => h.poststart(),
        HookKind::Poststop => h.poststop(),
    };
    list.clone().unwrap_or_default()
}

fn hook_error(kind: HookKind, i: usize, hook: &Hook, message: String) -> OciError {
    OciError::Hook {
        kind: kind.name(),
        index: i,
        path: hook.path().clone(),
        message,
    }
}

/// An anonymous file collecting a hook's stdout and stderr.
fn output_file() -> Result<std::fs::File, OciError> {
    // SAFETY: memfd_create with a static NUL-terminated name; returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"berth-hook-output".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(OciError::Sys {
            what: "memfd_create".into(),
            source: nix::errno::Errno::last(),
        });
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The last KiB of what a hook printed.
fn tail(mut f: std::fs::File) -> String {
    let mut out = Vec::new();
    let _ = f.rewind();
    let _ = f.read_to_end(&mut out);
    let start = out.len().saturating_sub(1024);
    String::from_utf8_lossy(&out[start..]).trim().to_string()
}

/// Waits for our child `pid` at most `timeout`; kills it when the time is up.
fn wait_hook(pid: i32, timeout: Option<Duration>) -> Result<i32, String> {
    if let Some(fd) = super::proc::child_pidfd(pid) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: one live pollfd, exclusively borrowed for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n == 0 {
            // SAFETY: SIGKILL to our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            exec::wait_child(pid);
            return Err(format!(
                "timed out after {}s, killed",
                timeout.unwrap_or_default().as_secs()
            ));
        }
    }
    Ok(exec::wait_child(pid))
}

fn timeout_of(hook: &Hook) -> Option<Duration> {
    hook.timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64))
}

fn env_of(hook: &Hook) -> Vec<(String, String)> {
    hook.env()
        .iter()
        .flatten()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `hooks` on the host, in order; stops at the first failure.
pub fn run_host(kind: HookKind, hooks: &[Hook], state: &OciState) -> Result<(), OciError> {
    let doc = serde_json::to_vec(state).expect("state serializes");
    for (i, hook) in hooks.iter().enumerate() {
        let out = output_file()?;
        let err_out = out
            .try_clone()
            .map_err(|e| OciError::io("dup", Path::new("memfd"), e))?;
        let args = hook.args().clone().unwrap_or_default();
        let mut cmd = Command::new(hook.path());
        if let Some(a0) = args.first() {
            cmd.arg0(a0);
        }
        cmd.args(args.iter().skip(1))
            .env_clear()
            .envs(env_of(hook))
            .stdin(Stdio::from(exec::stdin_with(&doc)?))
            .stdout(
                out.try_clone()
                    .map_err(|e| OciError::io("dup", Path::new("memfd"), e))?,
            )
            .stderr(err_out);
        let child = cmd
            .spawn()
            .map_err(|e| hook_error(kind, i, hook, format!("cannot run: {e}")))?;
        let status = wait_hook(child.id() as i32, timeout_of(hook))
            .map_err(|m| hook_error(kind, i, hook, m))?;
        if status != 0 {
            return Err(hook_error(
                kind,
                i,
                hook,
                format!("exited with {status}: {}", tail(out)),
            ));
        }
    }
    Ok(())
}

/// Runs `hooks` inside the container (its namespaces `ns`, see [`exec::spawn`]), in order.
/// `open_on_host`: the binary is opened before joining (createContainer).
pub fn run_in_container(
    kind: HookKind,
    hooks: &[Hook],
    state: &OciState,
    target: &PidFd,
    ns: CloneFlags,
    open_on_host: bool,
) -> Result<(), OciError> {
    let doc = serde_json::to_vec(state).expect("state serializes");
    for (i, hook) in hooks.iter().enumerate() {
        let err = |m: String| hook_error(kind, i, hook, m);
        let mut args = hook.args().clone().unwrap_or_default();
        if args.is_empty() {
            args.push(hook.path().to_string_lossy().into_owned());
        }
        let mut launch = Launch::new(&args, &env_of(hook)).map_err(err)?;
        let path = hook.path().to_string_lossy().into_owned();
        launch.program = if open_on_host {
            // Not close-on-exec: a script's interpreter reopens it through /proc/self/fd.
            let f = std::fs::File::open(hook.path())
                .map_err(|e| hook_error(kind, i, hook, format!("cannot open: {e}")))?;
            let fd: OwnedFd = f.into();
            // SAFETY: F_SETFD on a descriptor we own; clears FD_CLOEXEC.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
            Program::Opened(fd)
        } else {
            Program::Search(vec![
                std::ffi::CString::new(path).map_err(|_| err("NUL in the path".into()))?,
            ])
        };
        let out = output_file()?;
        let stdout: OwnedFd = out
            .try_clone()
            .map_err(|e| OciError::io("dup", Path::new("memfd"), e))?
            .into();
        let stderr: OwnedFd = out
            .try_clone()
            .map_err(|e| OciError::io("dup", Path::new("memfd"), e))?
            .into();
        launch.stdio = vec![exec::stdin_with(&doc)?, stdout, stderr];
        launch.cwd = Some(c"/".to_owned());
        launch.namespaces = ns;
        let spawned = exec::spawn(target, launch, |_| Ok(()))
            .map_err(|e| hook_error(kind, i, hook, e.to_string()))?;
        let status = wait_hook(spawned.pid, timeout_of(hook)).map_err(err)?;
        if status != 0 {
            return Err(hook_error(
                kind,
                i,
                hook,
                format!("exited with {status}: {}", tail(out)),
            ));
        }
    }
    Ok(())
}
