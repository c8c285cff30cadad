//! A `berth master` process owned by a test (the master the agent registers with over the
//! Mesos wire protocol, as it would with a Mesos master).

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{berth_bin, http_request, scaled};

/// A running `berth master`; dropping it stops it (SIGTERM, then SIGKILL).
pub struct Master {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Master {
    /// Starts `berth master --listen 127.0.0.1:<free port>` with `extra` flags and waits until
    /// it answers `/health`.
    #[track_caller]
    pub fn start(extra: &[&str]) -> Master {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_at(([127, 0, 0, 1], port).into(), extra)
    }

    /// Starts `berth master --listen addr` with `extra` flags.
    #[track_caller]
    pub fn start_at(addr: SocketAddr, extra: &[&str]) -> Master {
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-master.")
            .tempdir()
            .expect("tempdir");
        let log = tmp.path().join("master.log");
        let child = Command::new(berth_bin())
            .arg("master")
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create master.log"))
            .spawn()
            .expect("start berth master");
        let mut master = Master {
            child: Some(child),
            addr,
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        loop {
            if let Ok(r) = http_request(addr, "GET", "/health", None, b"", Duration::from_secs(2))
                && r.status == 200
            {
                return master;
            }
            if let Some(status) = master
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("berth master exited ({status}):\n{}", master.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "berth master did not answer /health:\n{}",
                master.log_tail(30)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// `GET /state` (None if the master does not answer).
    pub fn state(&self) -> Option<Value> {
        let r = http_request(
            self.addr,
            "GET",
            "/state",
            None,
            b"",
            Duration::from_secs(5),
        )
        .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// The agents of `/state`.
    pub fn agents(&self) -> Vec<Value> {
        self.state()
            .and_then(|s| s["agents"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until `check` holds on `/state`; panics with the state and log after `timeout`.
    #[track_caller]
    pub fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + scaled(timeout);
        loop {
            if let Some(state) = self.state()
                && check(&state)
            {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "master: {what} did not happen within {timeout:?}; state {:?}\n{}",
                self.state(),
                self.log_tail(30)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the master with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `n` lines of the master's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
