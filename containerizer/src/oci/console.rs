//! Terminals of the OCI CLI: the console-socket protocol (runc's: one message, the pty's name as
//! payload, the master as SCM_RIGHTS), and the relay between berth's own stdio and a master when
//! no console socket is given (`run` and `exec` in the foreground with a terminal). The ptys
//! themselves are opened by the shim (`create`) or in the container (`exec`, see
//! [`super::exec::PtyRequest`]).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use super::OciError;
use super::ops::{forward_pending, poll_in};

fn sys(what: &str, e: Errno) -> OciError {
    OciError::Sys {
        what: what.into(),
        source: e,
    }
}

fn set_size(fd: RawFd, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_col: cols,
        ws_row: rows,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one live `struct winsize`.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Copies the window size of terminal `from` to `to` (if `from` is a terminal).
fn copy_size(from: RawFd, to: RawFd) {
    // SAFETY: all-zero is a valid winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into the live `ws`.
    if unsafe { libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) } == 0 {
        set_size(to, ws.ws_col, ws.ws_row);
    }
}

/// Sends `master` (named `name`) over the console socket at `socket`.
pub fn send_fd(socket: &Path, master: &OwnedFd, name: &str) -> Result<(), OciError> {
    let stream =
        UnixStream::connect(socket).map_err(|e| OciError::io("connecting to", socket, e))?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| sys("sendmsg(console socket)", e))?;
    Ok(())
}

/// Receives one descriptor from a connection on `listener` (the console-socket protocol).
pub fn recv_fd(listener: &UnixListener) -> Result<OwnedFd, OciError> {
    let (stream, _) = listener
        .accept()
        .map_err(|e| OciError::io("accepting on", Path::new("the console socket"), e))?;
    recv_fd_from(&stream)
}

/// Receives one descriptor sent over `stream` (SCM_RIGHTS).
pub fn recv_fd_from(stream: &UnixStream) -> Result<OwnedFd, OciError> {
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| sys("recvmsg(console socket)", e))?;
    for c in msg.cmsgs().map_err(|e| sys("recvmsg(console socket)", e))? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel installed this descriptor for us; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(OciError::Usage(
        "no descriptor received on the console socket".into(),
    ))
}

/// Relays berth's stdin to a pty master and the master to berth's stdout, with berth's own
/// terminal (if stdin is one) in raw mode until the relay ends.
#[derive(Debug)]
pub struct Relay {
    master: OwnedFd,
    saved: Option<Termios>,
}

impl Relay {
    /// A relay for `master`.
    pub fn new(master: OwnedFd) -> Result<Relay, OciError> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
            copy_size(0, master.as_raw_fd());
        }
        Ok(Relay { master, saved })
    }

    /// Relays until `exited` (a pidfd) is readable and the master is drained; signals from
    /// `sfd` go to `send` (SIGWINCH also resizes).
    pub fn pump(&self, exited: RawFd, sfd: &SignalFd, send: &dyn Fn(i32)) {
        let m = self.master.as_raw_fd();
        let mut stdin_open = true;
        let mut buf = [0u8; 8192];
        let resize_send = |sig: i32| {
            if sig == libc::SIGWINCH {
                copy_size(0, m);
            }
            send(sig);
        };
        loop {
            let fds = [if stdin_open { 0 } else { -1 }, m, sfd.as_raw_fd(), exited];
            let ready = poll_in(&fds, -1);
            if ready[2] != 0 {
                forward_pending(sfd, &resize_send);
            }
            if ready[1] != 0 {
                match nix::unistd::read(&self.master, &mut buf) {
                    Ok(0) | Err(_) => break, // EIO: every slave closed
                    Ok(n) => write_all(1, &buf[..n]),
                }
            }
            if ready[0] != 0 {
                match nix::unistd::read(std::io::stdin().as_fd(), &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => write_all(m, &buf[..n]),
                }
            }
            if ready[3] != 0 && ready[1] == 0 {
                break;
            }
        }
    }

    /// Relays for our child `pid` and returns its status.
    pub fn run(self, pid: i32, sfd: &SignalFd) -> i32 {
        let pidfd = super::proc::child_pidfd(pid);
        let send = |sig: i32| {
            // SAFETY: kill(2) of our own unreaped child.
            unsafe { libc::kill(pid, sig) };
        };
        self.pump(pidfd.as_ref().map_or(-1, |fd| fd.as_raw_fd()), sfd, &send);
        drop(pidfd);
        super::exec::wait_child(pid)
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: write of a live buffer to a descriptor we hold.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}
