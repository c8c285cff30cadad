//! End-to-end test harness for berth: starts a real `berth agent --dev` per test, drives it through
//! the `berth` CLI and its HTTP API, and checks that nothing is left behind (processes, cgroups,
//! mounts) when the agent is stopped.
//!
//! The binaries are located next to the test executable (`target/<profile>/berth`,
//! `target/<profile>/berth-executor`), or in `$BERTH_BIN_DIR`. Cargo does not build another
//! package's binaries for this package's tests (`CARGO_BIN_EXE_*` exists only for the package's own
//! bins; artifact dependencies are unstable), so run `cargo build --workspace --bins` first —
//! `tests/run.sh` does.
//!
//! Environment:
//! - `BERTH_BIN_DIR`: where `berth` and `berth-executor` are.
//! - `BERTH_TEST_ALLOW_SKIP=1`: privileged tests return early (pass) instead of failing when not
//!   root or cgroups are unusable. CI never sets it.
//! - `BERTH_TEST_CGROUP=v1|v2`: assert the machine really has that cgroup version (the microVM
//!   phase of `tests/run.sh` sets `v2`).
//! - `BERTH_TEST_TIMEOUT_SCALE=N`: multiply every timeout (the microVM runs under TCG, ~5x slower).
//! - `BERTH_TEST_KEEP=1`: keep the agent's temp directory (work dir, runtime dir, logs).

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod framework;
pub mod images;
pub mod master;
pub mod netns;

// ---------------------------------------------------------------------------------------------
// environment
// ---------------------------------------------------------------------------------------------

/// Multiplier for every timeout of the harness (`BERTH_TEST_TIMEOUT_SCALE`, default 1).
pub fn timeout_scale() -> f64 {
    std::env::var("BERTH_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0)
}

/// `d` multiplied by [`timeout_scale`].
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(timeout_scale())
}

fn allow_skip() -> bool {
    std::env::var("BERTH_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// Directory holding the `berth` and `berth-executor` binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_BIN_DIR") {
        let d = PathBuf::from(d);
        assert!(
            d.join("berth").is_file(),
            "BERTH_BIN_DIR={} has no `berth` binary",
            d.display()
        );
        return d;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>  ->  target/<profile>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    assert!(
        dir.join("berth").is_file(),
        "the `berth` binary is not in {} (located from the test executable {}): \
         run `cargo build --workspace --bins` first (same profile as the tests), \
         or set BERTH_BIN_DIR",
        dir.display(),
        exe.display()
    );
    dir
}

/// Path of the `berth` binary.
pub fn berth_bin() -> PathBuf {
    bin_dir().join("berth")
}

/// The cgroup layout of this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// v1 (including the "hybrid" layout with an empty v2 hierarchy at /sys/fs/cgroup/unified).
    V1,
    /// Pure v2: cgroup2 mounted at /sys/fs/cgroup.
    V2,
}

impl CgroupVersion {
    /// "v1" or "v2", as in `berth inspect`'s `container.cgroup.version`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
struct MountInfo {
    root: String,
    mount_point: PathBuf,
    fstype: String,
    super_opts: String,
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mountinfo() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        v.push(MountInfo {
            root: unescape_mountinfo(pre[3]),
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
            fstype: post[0].to_string(),
            super_opts: post[2].to_string(),
        });
    }
    v
}

/// The cgroup version of this machine: v2 when /sys/fs/cgroup itself is a cgroup2 mount.
pub fn cgroup_version() -> CgroupVersion {
    let v2 = mountinfo()
        .iter()
        .any(|m| m.mount_point == Path::new("/sys/fs/cgroup") && m.fstype == "cgroup2");
    if v2 {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}

/// If `BERTH_TEST_CGROUP` is set (`v1`/`v2`), assert the machine really has that version.
pub fn check_expected_cgroup_version() {
    if let Ok(want) = std::env::var("BERTH_TEST_CGROUP") {
        let have = cgroup_version();
        assert_eq!(
            want,
            have.as_str(),
            "BERTH_TEST_CGROUP={want} but this machine's cgroup layout is {have} \
             (a v2 run must happen inside tests/vm/berth-v2vm)"
        );
    }
}

/// The directories of this process's own cgroup, one per mounted hierarchy (every v1 controller
/// mount, named v1 hierarchies, and the cgroup2 mount). A child of the agent lands in
/// `<dir>/<cgroup-base>/...`.
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    // (controllers set, path); v2 has empty controllers and hierarchy id 0
    let mut entries: Vec<(String, BTreeSet<String>, String)> = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let set: BTreeSet<String> = ctrls
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        entries.push((id.to_string(), set, path.to_string()));
    }
    let mut dirs = Vec::new();
    let mut seen = BTreeSet::new();
    for m in mountinfo() {
        let path = match m.fstype.as_str() {
            "cgroup2" => entries
                .iter()
                .find(|(id, set, _)| id == "0" && set.is_empty())
                .map(|e| e.2.clone()),
            "cgroup" => {
                let opts: BTreeSet<String> = m.super_opts.split(',').map(str::to_string).collect();
                entries
                    .iter()
                    .find(|(id, set, _)| id != "0" && !set.is_empty() && set.is_subset(&opts))
                    .map(|e| e.2.clone())
            }
            _ => None,
        };
        let Some(path) = path else { continue };
        // the mount may expose a subtree (m.root); the process path is relative to the hierarchy root
        let rel = if m.root == "/" {
            path.as_str()
        } else {
            match path.strip_prefix(m.root.as_str()) {
                Some(r) => r,
                None => continue,
            }
        };
        let dir = m.mount_point.join(rel.trim_start_matches('/'));
        if seen.insert(dir.clone()) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The hierarchies a container cgroup is expected in: v2 → the unified dir; v1 → the controller
/// mounts (cpu, cpuacct, memory, pids, freezer) that exist.
pub fn controller_dirs() -> Vec<PathBuf> {
    let own = own_cgroup_dirs();
    match cgroup_version() {
        CgroupVersion::V2 => own
            .into_iter()
            .filter(|d| d.starts_with("/sys/fs/cgroup") && !d.starts_with("/sys/fs/cgroup/unified"))
            .collect(),
        CgroupVersion::V1 => own
            .into_iter()
            .filter(|d| {
                ["cpu", "cpuacct", "memory", "pids", "freezer"]
                    .iter()
                    .any(|c| d.starts_with(Path::new("/sys/fs/cgroup").join(c)))
            })
            .collect(),
    }
}

/// Why privileged e2e tests cannot run here, or `None` when they can (root, cgroups writable).
pub fn privilege_problem() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not running as root (euid {euid})"));
    }
    let dirs = controller_dirs();
    if dirs.is_empty() {
        return Some("no usable cgroup hierarchy found in /proc/self/mountinfo".into());
    }
    let probe = format!("berth-test-probe-{}", std::process::id());
    for d in dirs {
        let p = d.join(&probe);
        if let Err(e) = fs::create_dir(&p)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Some(format!("cannot create a cgroup under {}: {e}", d.display()));
        }
        let _ = fs::remove_dir(&p);
    }
    None
}

/// Assert that privileged tests can run. Returns `false` (the caller returns early) only when
/// `BERTH_TEST_ALLOW_SKIP=1`; otherwise panics with the reason.
pub fn require_privileges() -> bool {
    match privilege_problem() {
        None => true,
        Some(why) if allow_skip() => {
            eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): {why}");
            false
        }
        Some(why) => panic!(
            "berth e2e tests need root and writable cgroups: {why}. \
             (Set BERTH_TEST_ALLOW_SKIP=1 to skip them; CI never does.)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP (tiny blocking HTTP/1.1 client for the agent's loopback API)
// ---------------------------------------------------------------------------------------------

/// A response of [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON (panics with the body on failure).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.body))
    }
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..nl]);
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_str, 16) else {
            break;
        };
        b = &b[nl + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size..];
        if b.starts_with(b"\r\n") {
            b = &b[2..];
        }
    }
    out
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole response.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let Some(hend) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(std::io::Error::other(format!(
            "malformed HTTP response: {}",
            String::from_utf8_lossy(&raw)
        )));
    };
    let head = String::from_utf8_lossy(&raw[..hend]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[hend + 4..].to_vec();
    if headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    }) {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// CLI output
// ---------------------------------------------------------------------------------------------

/// What a `berth` CLI invocation did.
#[derive(Debug, Clone)]
pub struct Output {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// The exit code; a signal death is reported as 128+signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// Panic (showing everything) unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "expected success, got:\n{self}");
        self
    }
    /// Panic (showing everything) unless the command exited `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), code, "unexpected exit code:\n{self}");
        self
    }
    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "$ berth {}\n  exit: {} ({:?}) after {:.1?}",
            self.args.join(" "),
            self.code(),
            self.status,
            self.elapsed
        )?;
        writeln!(f, "  --- stdout ---\n{}", tail(&self.stdout, 40))?;
        write!(f, "  --- stderr ---\n{}", tail(&self.stderr, 40))
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Run a command with a deadline, capturing stdout and stderr. Panics on timeout (after killing it).
pub fn run_with_timeout(mut cmd: Command, shown_args: Vec<String>, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            let o = Output {
                args: shown_args,
                status: st,
                stdout,
                stderr,
                elapsed: start.elapsed(),
            };
            panic!("command timed out after {timeout:?} and was killed:\n{o}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Output {
        args: shown_args,
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// Run `berth ARGS` without an agent (e.g. to test argument parsing).
pub fn berth_no_agent(args: &[&str]) -> Output {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args).env_remove("BERTH_AGENT");
    run_with_timeout(
        cmd,
        args.iter().map(|s| s.to_string()).collect(),
        scaled(Duration::from_secs(60)),
    )
}

// ---------------------------------------------------------------------------------------------
// the agent guard
// ---------------------------------------------------------------------------------------------

static AGENT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A running `berth agent --dev` owned by one test. Dropping it stops the agent (SIGTERM, then
/// SIGKILL after 20 s) and asserts that nothing was left behind.
pub struct Agent {
    child: Option<Child>,
    pid: i32,
    addr: SocketAddr,
    url: String,
    base: String,
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    work_dir: PathBuf,
    runtime_dir: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    exit: Option<ExitStatus>,
    checked: bool,
    extra: Vec<String>,
    /// `--dev`, or `--master X`.
    mode: Vec<String>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Agent {
    /// Start an agent, or panic with the reason. Fails (panics) when not privileged unless
    /// `BERTH_TEST_ALLOW_SKIP=1`, in which case use [`Agent::start_or_skip`].
    #[track_caller]
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    /// Like [`Agent::start`], but returns `None` (test should return early) when privileged tests
    /// cannot run here and `BERTH_TEST_ALLOW_SKIP=1` is set.
    #[track_caller]
    pub fn start_or_skip() -> Option<Agent> {
        Self::start_or_skip_with(&[])
    }

    /// [`Agent::start_or_skip`] with extra agent arguments (e.g. `["--resources", "cpus:2;mem:1024"]`).
    #[track_caller]
    pub fn start_or_skip_with(extra: &[&str]) -> Option<Agent> {
        check_expected_cgroup_version();
        if !require_privileges() {
            return None;
        }
        Some(Self::start_with(extra))
    }

    /// Start an agent with extra arguments after the standard ones.
    #[track_caller]
    pub fn start_with(extra: &[&str]) -> Agent {
        Self::start_custom(&["--dev"], extra, &[])
    }

    /// An agent registering with the master at `master` (`HOST:PORT` or `zk://...`).
    #[track_caller]
    pub fn start_with_master(master: &str, extra: &[&str]) -> Agent {
        Self::start_custom(&["--master", master], extra, &[])
    }

    /// An agent with `mode` (`--dev` or `--master X`), extra arguments, and environment
    /// variables for its first start only (a restart does not repeat them).
    #[track_caller]
    pub fn start_custom(mode: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Agent {
        check_expected_cgroup_version();
        if let Some(why) = privilege_problem() {
            panic!(
                "berth e2e tests need root and writable cgroups: {why}. \
                 (Set BERTH_TEST_ALLOW_SKIP=1 and use Agent::start_or_skip to skip; CI never does.)"
            );
        }
        let berth = berth_bin();
        assert!(
            bin_dir().join("berth-executor").is_file(),
            "berth-executor is missing next to {}: run `cargo build --workspace --bins` first",
            berth.display()
        );
        let mut errors = Vec::new();
        for _attempt in 0..3 {
            match Self::spawn_once(&berth, mode, extra, env) {
                Ok(agent) => return agent,
                Err((msg, port_clash)) => {
                    errors.push(msg);
                    if !port_clash {
                        break;
                    }
                    // the probed free port was taken before the agent bound it: try another
                }
            }
        }
        panic!(
            "berth agent did not become healthy:\n{}",
            errors.join("\n--- retry ---\n")
        );
    }

    fn spawn_once(
        berth: &Path,
        mode: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent, (String, bool)> {
        let n = AGENT_SEQ.fetch_add(1, Ordering::SeqCst);
        let base = format!("berth-test-{}-{}", std::process::id(), n);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{base}."))
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let work_dir = root.join("work");
        let runtime_dir = root.join("run");
        fs::create_dir_all(&work_dir).expect("mkdir work");
        fs::create_dir_all(&runtime_dir).expect("mkdir run");
        let stderr_path = root.join("agent.stderr");
        let stdout_path = root.join("agent.stdout");
        // `--listen` in `extra` replaces the default loopback address with a free port.
        let given = extra
            .iter()
            .position(|a| *a == "--listen")
            .and_then(|i| extra.get(i + 1))
            .map(|a| a.parse::<SocketAddr>().expect("--listen IP:PORT"));
        let addr: SocketAddr = given.unwrap_or_else(|| ([127, 0, 0, 1], free_port()).into());
        let mut cmd = Command::new(berth);
        cmd.arg("agent")
            .args(mode)
            .envs(env.iter().copied())
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .args(if given.is_none() {
                vec!["--listen".to_string(), addr.to_string()]
            } else {
                Vec::new()
            })
            .arg("--cgroup-base")
            .arg(&base)
            .args(extra)
            .env_remove("BERTH_AGENT")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("create agent.stdout"))
            .stderr(fs::File::create(&stderr_path).expect("create agent.stderr"));
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // If the test process dies (e.g. killed by a runner timeout), take the agent down
                // too so it cleans up. Tied to the spawning thread's lifetime: an Agent must be
                // dropped on the thread that started it (the normal case in tests).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", berth.display()));
        let mut agent = Agent {
            pid: child.id() as i32,
            child: Some(child),
            addr,
            url: format!("http://{addr}"),
            base,
            tmp: Some(tmp),
            root,
            work_dir,
            runtime_dir,
            stderr_path,
            stdout_path,
            exit: None,
            checked: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            mode: mode.iter().map(|s| s.to_string()).collect(),
        };
        match agent.wait_healthy(scaled(Duration::from_secs(60))) {
            Ok(()) => Ok(agent),
            Err(e) => {
                let log = agent.stderr_tail(30);
                let port_clash = log.contains("in use");
                let mut msg = format!(
                    "{e}\n  command: {} agent --dev --listen {addr} --cgroup-base {} ...\n\
                     --- agent stderr (tail) ---\n{log}",
                    berth.display(),
                    agent.base
                );
                if let Some(m) = agent.check() {
                    msg.push_str(&format!("\n--- and on stopping it ---\n{m}"));
                }
                drop(agent);
                Err((msg, port_clash))
            }
        }
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.exit = Some(st);
                return Err(format!(
                    "the agent exited ({st}) before answering GET /health"
                ));
            }
            if let Ok(r) = http_request(
                self.addr,
                "GET",
                "/health",
                None,
                b"",
                Duration::from_secs(2),
            ) && r.status == 200
                && (!self.mode.iter().any(|m| m == "--dev") || self.registered())
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "GET {}/health did not return 200 (and, in --dev, the agent did not register) within {timeout:?}",
                    self.url
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the agent with SIGKILL (a node dying); [`Agent::crash_and_restart`] brings it back.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the agent with SIGKILL (no cleanup of any kind) and starts it again on the same
    /// work dir, runtime dir, cgroup base and port, as an operator restarting a crashed agent
    /// would; waits until it is healthy. The containers' shims keep running across this.
    #[track_caller]
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stderr = fs::OpenOptions::new()
            .append(true)
            .open(&self.stderr_path)
            .expect("open agent.stderr");
        let mut cmd = Command::new(berth_bin());
        cmd.arg("agent")
            .args(&self.mode)
            .arg("--work-dir")
            .arg(&self.work_dir)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .args(if self.extra.iter().any(|a| a == "--listen") {
                Vec::new()
            } else {
                vec!["--listen".to_string(), self.addr.to_string()]
            })
            .arg("--cgroup-base")
            .arg(&self.base)
            .args(&self.extra)
            .env_remove("BERTH_AGENT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("restart the agent");
        self.pid = child.id() as i32;
        self.child = Some(child);
        self.exit = None;
        if let Err(e) = self.wait_healthy(scaled(Duration::from_secs(60))) {
            panic!(
                "the restarted agent did not become healthy: {e}\n{}",
                self.stderr_tail(30)
            );
        }
    }

    /// Whether the agent reports itself registered with its master.
    pub fn registered(&self) -> bool {
        http_request(
            self.addr,
            "GET",
            "/api/berth/v1/master",
            None,
            b"",
            Duration::from_secs(2),
        )
        .is_ok_and(|r| r.status == 200 && r.json()["registered"] == true)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// The `--cgroup-base` of this agent.
    pub fn cgroup_base(&self) -> &str {
        &self.base
    }
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// The last `n` lines of the agent's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let mut s = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let out = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        if !out.trim().is_empty() {
            s.push_str("\n--- agent stdout ---\n");
            s.push_str(&out);
        }
        tail(&s, n)
    }

    /// Run `berth --agent URL ARGS...` (120 s deadline, scaled).
    pub fn berth(&self, args: &[&str]) -> Output {
        self.berth_timeout(args, scaled(Duration::from_secs(120)))
    }

    /// Run `berth --agent URL ARGS...` with a deadline.
    pub fn berth_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = Command::new(berth_bin());
        cmd.arg("--agent").arg(&self.url).args(args);
        cmd.env_remove("BERTH_AGENT");
        let mut shown = vec!["--agent".to_string(), self.url.clone()];
        shown.extend(args.iter().map(|s| s.to_string()));
        run_with_timeout(cmd, shown, timeout)
    }

    /// HTTP GET on the agent.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_request(
            self.addr,
            "GET",
            path,
            None,
            b"",
            scaled(Duration::from_secs(30)),
        )
        .unwrap_or_else(|e| {
            panic!(
                "GET {}{path} failed: {e}\n--- agent stderr ---\n{}",
                self.url,
                self.stderr_tail(30)
            )
        })
    }

    /// HTTP POST on the agent.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> HttpResponse {
        http_request(
            self.addr,
            "POST",
            path,
            Some(content_type),
            body,
            scaled(Duration::from_secs(30)),
        )
        .unwrap_or_else(|e| {
            panic!(
                "POST {}{path} failed: {e}\n--- agent stderr ---\n{}",
                self.url,
                self.stderr_tail(30)
            )
        })
    }

    /// `berth ps [--all] --json`, parsed (panics if the command fails or prints no JSON array).
    #[track_caller]
    pub fn ps_json(&self, all: bool) -> Vec<Value> {
        let mut args = vec!["ps", "--json"];
        if all {
            args.insert(1, "--all");
        }
        let o = self.berth(&args);
        o.assert_success();
        match o.json() {
            Value::Array(v) => v,
            other => panic!("`berth ps --json` printed {other}, not an array"),
        }
    }

    /// `berth inspect ID`, parsed.
    #[track_caller]
    pub fn inspect(&self, id: &str) -> Value {
        let o = self.berth(&["inspect", id]);
        o.assert_success();
        o.json()
    }

    /// The task's state (`task.state` of `berth inspect`).
    #[track_caller]
    pub fn task_state(&self, id: &str) -> String {
        self.inspect(id)["task"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Poll `berth inspect ID` until `task.state` is one of `states`; returns the inspect JSON.
    #[track_caller]
    pub fn wait_for_state(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let timeout = scaled(timeout);
        let start = Instant::now();
        loop {
            let v = self.inspect(id);
            let st = v["task"]["state"].as_str().unwrap_or_default();
            if states.contains(&st) {
                return v;
            }
            if start.elapsed() > timeout {
                panic!(
                    "task {id} is still {st:?} after {timeout:?}, wanted one of {states:?}; \
                     inspect: {v:#}\n--- agent stderr ---\n{}",
                    self.stderr_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Start a detached task (`berth run --detach ARGS...`), returning its id (the one line printed).
    #[track_caller]
    pub fn run_detached(&self, args: &[&str]) -> String {
        let mut a = vec!["run", "--detach"];
        a.extend_from_slice(args);
        let o = self.berth(&a);
        o.assert_success();
        let lines: Vec<&str> = o.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "`berth run --detach` must print exactly the task id:\n{o}"
        );
        let id = lines[0].trim().to_string();
        assert!(
            !id.contains(char::is_whitespace),
            "task id has whitespace: {id:?}"
        );
        id
    }

    /// Pids (other than the agent) whose command line mentions this agent's work or runtime dir,
    /// e.g. `berth-executor --config <runtime-dir>/containers/<id>/shim.json`.
    pub fn stray_processes(&self) -> Vec<(i32, String)> {
        processes_mentioning(&[&self.work_dir, &self.runtime_dir])
            .into_iter()
            .filter(|(p, _)| *p != self.pid)
            .collect()
    }

    /// The agent's exit status if it has exited by itself (reaps it), else None.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Stop the agent: SIGTERM, wait up to 20 s (scaled), then SIGKILL. Idempotent. Returns its
    /// exit status.
    pub fn shutdown(&mut self) -> Option<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none()
                && let Ok(Some(st)) = child.try_wait()
            {
                self.exit = Some(st);
            }
            if self.exit.is_none() {
                // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
                unsafe { libc::kill(self.pid, libc::SIGTERM) };
                let deadline = Instant::now() + scaled(Duration::from_secs(20));
                loop {
                    if let Ok(Some(st)) = child.try_wait() {
                        self.exit = Some(st);
                        break;
                    }
                    if Instant::now() > deadline {
                        eprintln!(
                            "berth agent pid {} ignored SIGTERM for 20 s: SIGKILL",
                            self.pid
                        );
                        let _ = child.kill();
                        self.exit = child.wait().ok();
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        self.exit
    }

    /// Everything this agent left behind (empty = clean). Call after [`Agent::shutdown`].
    pub fn leftovers(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for d in own_cgroup_dirs() {
            let p = d.join(&self.base);
            if p.exists() {
                let mut sub = Vec::new();
                list_dirs(&p, &mut sub);
                problems.push(format!(
                    "cgroup left behind: {} (with {} sub-cgroups: {:?})",
                    p.display(),
                    sub.len(),
                    sub.iter().take(5).collect::<Vec<_>>()
                ));
            }
        }
        for (pid, cmd) in processes_mentioning(&[&self.work_dir, &self.runtime_dir]) {
            problems.push(format!("process left behind: pid {pid}: {cmd}"));
        }
        for m in mountinfo() {
            if m.mount_point.starts_with(&self.root) {
                problems.push(format!(
                    "mount left behind: {} ({})",
                    m.mount_point.display(),
                    m.fstype
                ));
            }
        }
        problems
    }

    /// Stop the agent and assert it exited 0 and left no processes, cgroups or mounts behind.
    /// Cleans up whatever it finds (so one failure does not poison later tests) before panicking.
    #[track_caller]
    pub fn assert_no_leftovers(&mut self) {
        if let Some(msg) = self.check() {
            panic!("{msg}");
        }
    }

    fn check(&mut self) -> Option<String> {
        if self.checked {
            return None;
        }
        self.checked = true;
        let status = self.shutdown();
        // the agent's cleanup is asynchronous w.r.t. process reaping of its shims: allow a moment
        let deadline = Instant::now() + scaled(Duration::from_secs(5));
        let mut problems = self.leftovers();
        while !problems.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
            problems = self.leftovers();
        }
        let mut msg = Vec::new();
        match status {
            Some(st) if st.success() => {}
            Some(st) => msg.push(format!("the agent did not exit 0 after SIGTERM: {st}")),
            None => msg.push("the agent's exit status is unknown".into()),
        }
        msg.extend(problems.iter().cloned());
        if msg.is_empty() {
            return None;
        }
        self.force_cleanup();
        Some(format!(
            "berth agent {} (cgroup base {}) did not shut down cleanly:\n  - {}\n--- agent stderr (tail) ---\n{}",
            self.url,
            self.base,
            msg.join("\n  - "),
            self.stderr_tail(40)
        ))
    }

    /// SIGKILL the agent (simulating a crash) and reap it; its containers are left as they are.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    /// Skip the shutdown/leftovers check of `Drop` (for tests that check leftovers themselves).
    pub fn disarm(&mut self) {
        self.checked = true;
    }

    /// Remove whatever the agent left behind: kill stray processes, unmount, remove cgroups.
    pub fn force_cleanup(&self) {
        for (pid, _) in processes_mentioning(&[&self.work_dir, &self.runtime_dir]) {
            // SAFETY: kill(2); the pid was started (indirectly) by this test's agent.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut mps: Vec<PathBuf> = mountinfo()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.root))
            .collect();
        mps.sort();
        for mp in mps.iter().rev() {
            if let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) {
                // SAFETY: c is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for d in own_cgroup_dirs() {
            remove_cgroup_tree(&d.join(&self.base));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let problem = self.check();
        if let Some(t) = self.tmp.take()
            && (problem.is_some() || std::env::var_os("BERTH_TEST_KEEP").is_some())
        {
            let p = t.keep();
            eprintln!("berth test: agent files kept in {}", p.display());
        }
        if let Some(msg) = problem {
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

fn list_dirs(p: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                list_dirs(&e.path(), out);
            }
        }
    }
}

/// Kill every process in a cgroup subtree and remove its directories (deepest first).
pub fn remove_cgroup_tree(p: &Path) {
    if !p.exists() {
        return;
    }
    let mut dirs = vec![p.to_path_buf()];
    list_dirs(p, &mut dirs);
    for _ in 0..50 {
        let mut any = false;
        for d in &dirs {
            // v2 has cgroup.kill; v1 needs per-process kills
            let _ = fs::write(d.join("cgroup.kill"), "1");
            for f in ["cgroup.procs", "tasks"] {
                if let Ok(s) = fs::read_to_string(d.join(f)) {
                    for pid in s.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        any = true;
                        // SAFETY: kill(2) of a process inside a cgroup this test's agent created.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = fs::write(d.join("freezer.state"), "THAWED");
        }
        if !any {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
}

/// Processes (not this one) whose command line contains any of `needles`.
pub fn processes_mentioning(needles: &[&Path]) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let needles: Vec<String> = needles
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue; // kernel thread or zombie
        }
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().any(|n| cmd.contains(n.as_str())) {
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// cgroup readings of a container (from `berth inspect`'s container.cgroup.paths)
// ---------------------------------------------------------------------------------------------

/// The cgroup directories of a container, from `berth inspect` JSON (`container.cgroup.paths`);
/// relative paths are taken relative to /sys/fs/cgroup.
#[track_caller]
pub fn container_cgroup_paths(inspect: &Value) -> Vec<PathBuf> {
    let paths = inspect["container"]["cgroup"]["paths"]
        .as_array()
        .unwrap_or_else(|| panic!("inspect has no container.cgroup.paths array: {inspect:#}"));
    paths
        .iter()
        .filter_map(Value::as_str)
        .map(|p| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                Path::new("/sys/fs/cgroup").join(p)
            }
        })
        .collect()
}

/// The first `dir/file` that exists among `paths`.
pub fn cgroup_file(paths: &[PathBuf], file: &str) -> Option<PathBuf> {
    paths.iter().map(|p| p.join(file)).find(|p| p.exists())
}

/// Cumulative CPU time of a cgroup in ns: v2 `cpu.stat` usage_usec, or v1 `cpuacct.usage`.
pub fn cgroup_cpu_usage_ns(paths: &[PathBuf]) -> Option<u64> {
    if let Some(f) = cgroup_file(paths, "cpu.stat")
        && let Ok(s) = fs::read_to_string(&f)
        && let Some(v) = s
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(v * 1000);
    }
    let f = cgroup_file(paths, "cpuacct.usage")?;
    fs::read_to_string(f).ok()?.trim().parse().ok()
}

/// Number of processes in a cgroup (pids.current).
pub fn cgroup_pids_current(paths: &[PathBuf]) -> Option<u64> {
    let f = cgroup_file(paths, "pids.current")?;
    fs::read_to_string(f).ok()?.trim().parse().ok()
}

/// The last entry of `statuses` in `berth inspect` JSON.
#[track_caller]
pub fn last_status(inspect: &Value) -> Value {
    inspect["statuses"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_else(|| panic!("inspect has no statuses: {inspect:#}"))
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout` (scaled).
#[track_caller]
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = scaled(timeout);
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until none of `paths` exists (e.g. a destroyed container's cgroups), or panic.
#[track_caller]
pub fn wait_paths_gone(paths: &[PathBuf], timeout: Duration) {
    wait_until(&format!("{paths:?} to be removed"), timeout, || {
        paths.iter().all(|p| !p.exists()).then_some(())
    })
}

/// The container address `berth inspect` reports for a bridge or overlay task (the
/// `network/bridge` isolator's description), wherever it sits in the document.
pub fn bridge_ip_of(inspect: &Value) -> Option<std::net::Ipv4Addr> {
    match inspect {
        Value::Object(map) => map
            .get("network/bridge")
            .and_then(|b| b["ip"].as_str())
            .and_then(|ip| ip.parse().ok())
            .or_else(|| map.values().find_map(bridge_ip_of)),
        Value::Array(items) => items.iter().find_map(bridge_ip_of),
        _ => None,
    }
}
