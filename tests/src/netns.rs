//! Network namespaces for the e2e tests: every packet of a network test stays inside a
//! namespace the test made (`bt<pid>-<tag>`, which the suite's sweep and leftovers check know).

use std::{
    io::Read,
    net::{SocketAddrV4, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::scaled;

/// A network namespace made by the test, deleted (with its links) on every path.
pub struct TestNetns(String);

impl TestNetns {
    /// Creates `bt<pid>-<tag>` with `lo` up.
    pub fn create(tag: &str) -> Self {
        let name = format!("bt{}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "ip netns add {name} failed");
        let netns = TestNetns(name);
        let up = Command::new("ip")
            .args(["-n", &netns.0, "link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(up.success(), "lo up in {}", netns.0);
        netns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Moves the calling thread into the namespace (what it starts is born there).
    pub fn enter(&self) {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.0)).expect("open netns");
        // SAFETY: setns on a valid namespace fd, for the calling thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.0,
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `test` on a thread inside a new namespace `bt<pid>-<tag>` (so the agent it starts, its
/// bridge, veths and sockets are all born there); the namespace is deleted afterwards, also
/// when `test` panics (the panic is then re-raised here).
pub fn in_new_netns<R: Send>(tag: &str, test: impl FnOnce() -> R + Send) -> R {
    let netns = TestNetns::create(tag);
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            netns.enter();
            test()
        });
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A Python TCP server for a task: answers every connection on `port` with `name` and closes it
/// (which backend a VIP connection reached).
pub fn named_tcp_server(name: &str, port: u16) -> String {
    format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'{name}')\n  c.close()\n"
    )
}

/// Connects to `addr` until it answers (the server may still be starting; 60 s, scaled);
/// returns what it sent before closing.
pub fn greeting_of(addr: SocketAddrV4) -> String {
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    loop {
        match TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)) {
            Ok(mut stream) => {
                let mut text = String::new();
                stream.read_to_string(&mut text).unwrap();
                if !text.is_empty() {
                    return text;
                }
            }
            Err(err) => assert!(Instant::now() < deadline, "connecting to {addr}: {err}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
}
