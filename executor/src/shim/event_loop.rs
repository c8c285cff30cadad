//! The shim's event loop (step 6): `poll` over the listening socket, the connected clients, a
//! signalfd for SIGCHLD, and the kill grace deadline (the poll timeout). A single reaper
//! (`waitpid(-1, WNOHANG)` loop) handles the init and any orphan reparented to the shim.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::init::{InitSpec, Namespaces, SpawnedInit};
use super::status::{Ended, build_exit_status, parse_report, unix_now};
use super::{ShimError, log, write_exit};
use crate::protocol::{ExitStatus, ShimConfig, ShimEvent, ShimRequest};

/// Longest request line accepted from a client.
const MAX_LINE: usize = 64 * 1024;
/// How long the final `Exited` event may take to reach a slow client.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One connected client.
struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closed: bool,
}

impl Client {
    fn new(stream: UnixStream) -> io::Result<Client> {
        stream.set_nonblocking(true)?;
        Ok(Client {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            closed: false,
        })
    }

    fn queue(&mut self, ev: &ShimEvent) {
        if self.closed {
            return;
        }
        serde_json::to_writer(&mut self.outbuf, ev).expect("ShimEvent serializes");
        self.outbuf.push(b'\n');
        self.flush();
    }

    /// Writes as much of the output buffer as the socket takes without blocking.
    fn flush(&mut self) {
        while !self.outbuf.is_empty() && !self.closed {
            match self.stream.write(&self.outbuf) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// Reads what is available; returns the complete lines (requests or parse errors).
    fn read_lines(&mut self) -> Vec<Result<ShimRequest, String>> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.closed = true,
        }
        while let Some(nl) = self.inbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=nl).collect();
            if let Some(r) = parse_line(&line) {
                out.push(r);
            }
        }
        if self.inbuf.len() > MAX_LINE {
            self.inbuf.clear();
            out.push(Err(format!("request line longer than {MAX_LINE} bytes")));
        }
        out
    }
}

/// Parses one request line; `None` for a blank line.
pub fn parse_line(line: &[u8]) -> Option<Result<ShimRequest, String>> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(trimmed).map_err(|e| {
        format!(
            "malformed request {:?}: {e}",
            String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)])
        )
    }))
}

/// The shim's state after the init was cloned.
pub struct Supervisor {
    cfg: ShimConfig,
    argv0: String,
    ns: Namespaces,
    init_pid: Pid,
    /// Write end of the sync pipe until Start.
    sync_w: Option<OwnedFd>,
    /// Read end of the status pipe (non-blocking), drained once the init exited.
    status_r: OwnedFd,
    listener: Option<UnixListener>,
    sigfd: SignalFd,
    clients: Vec<Client>,
    started: bool,
    killed_by_request: bool,
    kill_deadline: Option<Instant>,
    init_end: Option<Ended>,
    /// Status pipe bytes already read (OCI mode's prepare phase), parsed with the rest at exit.
    status_buf: Vec<u8>,
}

impl Supervisor {
    /// Takes over the spawned init and the bound (non-blocking) listener.
    pub fn new(
        cfg: ShimConfig,
        spec: &InitSpec,
        spawned: SpawnedInit,
        listener: UnixListener,
    ) -> Result<Supervisor, ShimError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| ShimError::sys("signalfd(SIGCHLD)", e))?;
        fcntl(&spawned.status_r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| ShimError::sys("fcntl(status pipe, O_NONBLOCK)", e))?;
        Ok(Supervisor {
            argv0: cfg.argv.first().cloned().unwrap_or_default(),
            cfg,
            ns: spec.ns,
            init_pid: spawned.pid,
            sync_w: Some(spawned.sync_w),
            status_r: spawned.status_r,
            listener: Some(listener),
            sigfd,
            clients: Vec::new(),
            started: false,
            killed_by_request: false,
            kill_deadline: None,
            init_end: None,
            status_buf: Vec::new(),
        })
    }

    /// OCI mode, before the ready line: releases the init (first sync byte) and waits until it
    /// reports the container prepared (`Ok(true)`) or ends (`Ok(false)`; its exit, with the setup
    /// error, is then recorded in `exit.json` and every client told).
    ///
    /// `attach` runs once the init is released, or before that when `attach_first` (the init
    /// unshares a cgroup namespace, which must be rooted at its own cgroup). Otherwise the init
    /// assembles the container while the shim moves it into its cgroups: on cgroup v1 each first
    /// write to `cgroup.procs` waits for an RCU grace period, which the mounts then overlap.
    pub fn prepare(
        &mut self,
        attach_first: bool,
        attach: impl FnOnce() -> Result<(), ShimError>,
    ) -> Result<bool, ShimError> {
        let mut attach = Some(attach);
        if attach_first && let Some(a) = attach.take() {
            a()?;
        }
        if let Some(w) = &self.sync_w
            && let Err(e) = nix::unistd::write(w, &[1u8])
        {
            // EPIPE: the init died already; its end is read below.
            log(
                self.id(),
                format_args!("releasing the init to prepare: {e}"),
            );
        }
        if let Some(a) = attach.take() {
            a()?;
        }
        let mut buf = [0u8; 512];
        loop {
            let mut pfd = libc::pollfd {
                fd: self.status_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid, exclusively borrowed pollfd for the duration of the call; the
            // descriptor is owned by self.
            let n = unsafe { libc::poll(&mut pfd, 1, -1) };
            if n < 0 {
                match Errno::last() {
                    Errno::EINTR | Errno::EAGAIN => continue,
                    e => return Err(ShimError::sys("poll(status pipe)", e)),
                }
            }
            match nix::unistd::read(&self.status_r, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.status_buf.extend_from_slice(&buf[..n]);
                    if parse_report(&self.status_buf).prepared {
                        return Ok(true);
                    }
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(ShimError::sys("read(status pipe)", e)),
            }
        }
        // EOF: the init ended while preparing.
        let end = loop {
            match waitpid(self.init_pid, None) {
                Ok(WaitStatus::Exited(_, c)) => break Ended::Code(c),
                Ok(WaitStatus::Signaled(_, s, _)) => break Ended::Signal(s as i32),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(ShimError::Wait {
                        pid: self.init_pid.as_raw(),
                        source: e,
                    });
                }
            }
        };
        self.init_end = Some(end);
        self.finish(end, None)?;
        Ok(false)
    }

    /// A fatal error before the event loop: kill the container, record the error in
    /// `exit.json`, return it.
    pub fn fail(mut self, err: ShimError) -> Result<(), ShimError> {
        self.abort(err)
    }

    /// Serves until the init exits, records the exit, notifies clients. On a fatal error the
    /// container is killed and the error recorded in `exit.json` as `launch_error`.
    pub fn run(mut self) -> Result<(), ShimError> {
        match self.supervise() {
            Ok(end) => self.finish(end, None).map(drop),
            Err(e) => self.abort(e),
        }
    }

    fn id(&self) -> &str {
        &self.cfg.container_id
    }

    /// The poll loop; returns how the init ended.
    fn supervise(&mut self) -> Result<Ended, ShimError> {
        loop {
            // Reap first: catches an init that died before (or while) we were polling.
            self.reap()?;
            if let Some(end) = self.init_end {
                return Ok(end);
            }
            if let Some(d) = self.kill_deadline
                && Instant::now() >= d
            {
                log(
                    &self.cfg.container_id,
                    format_args!("grace period over, SIGKILL"),
                );
                self.hard_kill();
                continue;
            }
            let timeout: libc::c_int = match self.kill_deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so we do not spin just before the deadline.
                    (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as libc::c_int
                }
            };

            const LISTENER: usize = 0;
            const SIGFD: usize = 1;
            const FIRST_CLIENT: usize = 2;
            let mut pfds = Vec::with_capacity(FIRST_CLIENT + self.clients.len());
            let pfd = |fd: i32, events: libc::c_short| libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            pfds.push(pfd(
                self.listener.as_ref().map_or(-1, |l| l.as_raw_fd()),
                libc::POLLIN,
            ));
            pfds.push(pfd(self.sigfd.as_raw_fd(), libc::POLLIN));
            for c in &self.clients {
                let mut ev = libc::POLLIN;
                if !c.outbuf.is_empty() {
                    ev |= libc::POLLOUT;
                }
                pfds.push(pfd(c.stream.as_raw_fd(), ev));
            }
            // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd
            // structs that lives across the call; every fd in it is open (owned by self).
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                match Errno::last() {
                    Errno::EINTR | Errno::EAGAIN => continue,
                    e => return Err(ShimError::sys("poll", e)),
                }
            }

            if pfds[SIGFD].revents != 0 {
                // Drain the signalfd; the reaper at the top of the loop does the work.
                loop {
                    match self.sigfd.read_signal() {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(Errno::EAGAIN) => break,
                        Err(Errno::EINTR) => {}
                        Err(e) => return Err(ShimError::sys("read(signalfd)", e)),
                    }
                }
            }
            if pfds[LISTENER].revents != 0 {
                self.accept_all();
            }
            // Read requests from clients, then act on them in order.
            let mut requests = Vec::new();
            for (i, c) in self.clients.iter_mut().enumerate() {
                let Some(p) = pfds.get(FIRST_CLIENT + i) else {
                    break; // accepted in this iteration, not polled yet
                };
                if p.revents & libc::POLLOUT != 0 {
                    c.flush();
                }
                if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    for r in c.read_lines() {
                        requests.push((i, r));
                    }
                }
            }
            for (i, r) in requests {
                match r {
                    Ok(req) => self.handle(i, req),
                    Err(message) => self.clients[i].queue(&ShimEvent::Error { message }),
                }
            }
            self.clients.retain(|c| !c.closed);
        }
    }

    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => match Client::new(stream) {
                    Ok(c) => self.clients.push(c),
                    Err(e) => log(&self.cfg.container_id, format_args!("client setup: {e}")),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // EMFILE and friends: not fatal, the connection stays in the backlog.
                    log(&self.cfg.container_id, format_args!("accept: {e}"));
                    break;
                }
            }
        }
    }

    fn broadcast(&mut self, ev: &ShimEvent) {
        for c in &mut self.clients {
            c.queue(ev);
        }
    }

    fn handle(&mut self, client: usize, req: ShimRequest) {
        match req {
            ShimRequest::Start => {
                let pid = self.init_pid.as_raw();
                if self.started {
                    self.clients[client].queue(&ShimEvent::Started { pid });
                    return;
                }
                self.started = true;
                if let Some(w) = self.sync_w.take() {
                    // EPIPE: the init is already dead (killed); its exit is reaped as usual.
                    if let Err(e) = nix::unistd::write(&w, &[1u8]) {
                        log(self.id(), format_args!("releasing the init: {e}"));
                    }
                }
                log(self.id(), format_args!("started"));
                self.broadcast(&ShimEvent::Started { pid });
            }
            ShimRequest::Kill { grace_ms } => {
                self.killed_by_request = true;
                if !self.started || grace_ms == 0 {
                    log(self.id(), format_args!("kill: SIGKILL now"));
                    self.hard_kill();
                    return;
                }
                log(
                    self.id(),
                    format_args!("kill: SIGTERM, SIGKILL in {grace_ms} ms"),
                );
                let _ = kill(self.init_pid, Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_millis(grace_ms);
                self.kill_deadline = Some(match self.kill_deadline {
                    Some(d) => d.min(deadline),
                    None => deadline,
                });
            }
            ShimRequest::Signal { signal, all } => {
                let ev = match Signal::try_from(signal) {
                    Err(_) => ShimEvent::Error {
                        message: format!("invalid signal {signal}"),
                    },
                    Ok(sig) => match kill(self.init_pid, sig) {
                        Ok(()) => {
                            if all {
                                // ESRCH: the init has not called setsid yet (or is gone).
                                let _ = killpg(self.init_pid, sig);
                            }
                            ShimEvent::Signalled { signal }
                        }
                        Err(e) => ShimEvent::Error {
                            message: format!("sending {sig} to {}: {e}", self.init_pid),
                        },
                    },
                };
                self.clients[client].queue(&ev);
            }
            ShimRequest::State => {
                let ev = ShimEvent::State {
                    pid: self.init_pid.as_raw(),
                    started: self.started,
                    exit: None,
                };
                self.clients[client].queue(&ev);
            }
        }
    }

    /// SIGKILL the init and its process group (the whole container without a pid namespace;
    /// with one, the kernel kills the namespace when its init dies).
    fn hard_kill(&mut self) {
        self.kill_deadline = None;
        let _ = kill(self.init_pid, Signal::SIGKILL);
        // ESRCH before the init called setsid: then there is nothing else to kill.
        let _ = killpg(self.init_pid, Signal::SIGKILL);
    }

    /// The single reaper: collects every exited child, noting the init's end.
    fn reap(&mut self) -> Result<(), ShimError> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.init_pid => {
                    self.init_end = Some(Ended::Code(code));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.init_pid => {
                    self.init_end = Some(Ended::Signal(sig as i32));
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(ShimError::Wait { pid: -1, source: e }),
            }
        }
    }

    /// Reads everything the init and the workload wrote to the status pipe.
    fn drain_status(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.status_buf);
        let mut buf = [0u8; 512];
        loop {
            match nix::unistd::read(&self.status_r, &mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => {}
                Err(_) => break, // EAGAIN: a writer (a stray pre-exec child) is still alive
            }
        }
        out
    }

    /// The init ended: record the exit durably, tell every client, close down.
    fn finish(&mut self, end: Ended, shim_error: Option<String>) -> Result<ExitStatus, ShimError> {
        if !self.ns.pid {
            // Without a pid namespace nothing kills the rest of the container for us: kill what
            // is left of the init's process group.
            let _ = killpg(self.init_pid, Signal::SIGKILL);
        }
        let report = parse_report(&self.drain_status());
        let mut exit = build_exit_status(
            end,
            &report,
            &self.argv0,
            self.killed_by_request,
            unix_now(),
        );
        if let Some(msg) = shim_error {
            exit.launch_error = Some(match exit.launch_error.take() {
                Some(le) => format!("{msg}; {le}"),
                None => msg,
            });
        }
        log(self.id(), format_args!("exited: {exit:?}"));
        let written = write_exit(&self.cfg, &exit);
        if let Err(e) = &written {
            log(self.id(), format_args!("{e}"));
        }
        self.shutdown(&ShimEvent::Exited(exit.clone()));
        self.reap_stragglers();
        written.map(|()| exit)
    }

    /// Removes the socket, sends `ev` to every client (including connections still in the
    /// backlog) and closes them.
    fn shutdown(&mut self, ev: &ShimEvent) {
        let _ = std::fs::remove_file(self.cfg.socket_path());
        self.accept_all();
        self.listener = None;
        self.broadcast(ev);
        for c in &mut self.clients {
            if c.closed || c.outbuf.is_empty() {
                continue;
            }
            // Blocking with a timeout: a stuck client must not keep the shim alive.
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(FINAL_FLUSH_TIMEOUT));
            let _ = c.stream.write_all(&c.outbuf);
            c.outbuf.clear();
        }
        for c in &self.clients {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        self.clients.clear();
    }

    /// Reaps orphans that were killed along with the container, for a short while.
    fn reap_stragglers(&mut self) {
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                Err(Errno::ECHILD) => return,
                _ => {}
            }
        }
    }

    /// Fatal error after ShimReady: kill the container, wait for the init, and record the
    /// error in `exit.json` so nothing is lost.
    fn abort(&mut self, err: ShimError) -> Result<(), ShimError> {
        log(
            self.id(),
            format_args!("fatal: {err}; killing the container"),
        );
        if self.init_end.is_none() {
            // (Only while the init is unreaped: its pid, so its group id, cannot be reused.)
            self.hard_kill();
        }
        let end = match self.init_end {
            Some(e) => e,
            None => loop {
                match waitpid(self.init_pid, None) {
                    Ok(WaitStatus::Exited(_, c)) => break Ended::Code(c),
                    Ok(WaitStatus::Signaled(_, s, _)) => break Ended::Signal(s as i32),
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(_) => break Ended::Signal(libc::SIGKILL),
                }
            },
        };
        let _ = self.finish(end, Some(format!("berth-executor failed: {err}")));
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_line(b"{\"type\":\"start\"}\n"),
            Some(Ok(ShimRequest::Start))
        );
        assert_eq!(
            parse_line(b" {\"type\":\"kill\",\"grace_ms\":5}\r\n"),
            Some(Ok(ShimRequest::Kill { grace_ms: 5 }))
        );
        assert_eq!(
            parse_line(b"{\"type\":\"signal\",\"signal\":10}"),
            Some(Ok(ShimRequest::Signal {
                signal: 10,
                all: false
            }))
        );
        assert_eq!(parse_line(b"  \n"), None);
        let err = parse_line(b"{\"type\":\"dance\"}\n").unwrap().unwrap_err();
        assert!(err.contains("malformed request"), "{err}");
    }
}
