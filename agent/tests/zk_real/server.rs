//! A real ZooKeeper server (Debian's `zookeeperd`) started by a test on 127.0.0.1.
//!
//! Each server gets `/tmp/berth-test-<pid>-<n>-zk/` (zoo.cfg, data dir, log), a free client port,
//! no admin server and no four-letter commands. The JVM gets PR_SET_PDEATHSIG so it cannot
//! outlive the test; Drop kills it by PID and removes the directory. The suite's sweep
//! (`tests/run.sh`) finds stale ones by the directory in their command line.

use std::{
    fs,
    io::Write,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails the test with `reason`, or returns false (skip) when `BERTH_TEST_ALLOW_SKIP=1`.
pub fn zookeeper_available() -> bool {
    let java = Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = match (java, Path::new(ZOOKEEPER_JAR).exists()) {
        (true, true) => return true,
        (false, _) => "no `java` on PATH",
        (true, false) => "no /usr/share/java/zookeeper.jar",
    };
    let reason = format!(
        "ZooKeeper is not installed ({missing}): install the Debian package zookeeperd \
         (bash tests/install-deps.sh does)"
    );
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): {reason}");
        return false;
    }
    panic!("{reason} (set BERTH_TEST_ALLOW_SKIP=1 to skip)");
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// One ZooKeeper server process (standalone, or one peer of an ensemble).
pub struct ZkServer {
    dir: PathBuf,
    /// The address it listens on.
    pub ip: String,
    /// Client port.
    pub port: u16,
    child: Option<Child>,
    /// Removes `dir` on Drop (peers of an [`Ensemble`] leave it to the ensemble).
    owns_dir: bool,
}

impl ZkServer {
    /// Starts a standalone server.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Starts a standalone server listening on `ip` (e.g. a test namespace's address).
    pub fn start_on(ip: &str) -> Self {
        let dir = test_dir();
        let mut s = Self {
            dir,
            ip: ip.to_string(),
            port: free_port(),
            child: None,
            owns_dir: true,
        };
        s.write_config(None);
        s.spawn();
        s
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn write_config(&self, peer: Option<(usize, &[(u16, u16)])>) {
        let data = self.dir.join("data");
        fs::create_dir_all(&data).unwrap();
        let mut cfg = format!(
            "tickTime=500\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={}\n\
             clientPortAddress={}\nadmin.enableServer=false\n4lw.commands.whitelist=\n\
             minSessionTimeout=1000\nmaxSessionTimeout=120000\n",
            data.display(),
            self.port,
            self.ip
        );
        if let Some((id, peers)) = peer {
            fs::write(data.join("myid"), format!("{id}\n")).unwrap();
            for (i, (quorum, election)) in peers.iter().enumerate() {
                cfg.push_str(&format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1));
            }
        }
        fs::write(self.dir.join("zoo.cfg"), cfg).unwrap();
    }

    fn spawn(&mut self) {
        let mut classpath = ZOOKEEPER_JAR.to_string();
        if Path::new(SLF4J_SIMPLE_JAR).exists() {
            classpath = format!("{classpath}:{SLF4J_SIMPLE_JAR}");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        writeln!(
            &log,
            "==== berth test: starting ZooKeeper on 127.0.0.1:{}",
            self.port
        )
        .unwrap();
        let mut cmd = Command::new("java");
        cmd.args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=info")
            .arg("-Dzookeeper.admin.enableServer=false")
            .args([
                "-cp",
                &classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(self.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: the closure runs in the forked child before exec; prctl(2) only changes the
        // child's own parent-death signal, allocates nothing and is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn java (ZooKeeper)"));
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn test_dir() -> PathBuf {
    let tmp = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let dir = tmp.join(format!(
        "berth-test-{}-{}-zk",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A ZooKeeper ensemble of peers on loopback, sharing one test directory.
pub struct Ensemble {
    root: PathBuf,
    /// The peers (server ids 1..=n in order).
    pub servers: Vec<ZkServer>,
}

impl Ensemble {
    /// Starts `n` peers.
    pub fn start(n: usize) -> Self {
        let root = test_dir();
        let peers: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut servers: Vec<ZkServer> = (0..n)
            .map(|i| ZkServer {
                dir: root.join(format!("peer{}", i + 1)),
                ip: "127.0.0.1".into(),
                port: free_port(),
                child: None,
                owns_dir: false,
            })
            .collect();
        for (i, s) in servers.iter_mut().enumerate() {
            fs::create_dir_all(&s.dir).unwrap();
            s.write_config(Some((i + 1, &peers)));
            s.spawn();
        }
        Self { root, servers }
    }

    /// The connect string of all peers.
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(ZkServer::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The logs of all peers.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- peer {} ---\n{}", i + 1, s.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}
