//! The test guard [`Env`] and helpers shared by the privileged cgroup tests.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_isolators::cgroups::{CgroupVersion, CgroupsIsolator};
use berth_isolators::{ContainerSpec, IsolationOptions, Isolator, Limits, NetworkMode};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails the test with `reason`, or returns (skip) when `BERTH_TEST_ALLOW_SKIP=1`.
pub fn cannot_run(reason: &str) {
    if std::env::var("BERTH_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): {reason}");
        return;
    }
    panic!("privileged cgroup test cannot run: {reason} (set BERTH_TEST_ALLOW_SKIP=1 to skip)");
}

/// `d` times `BERTH_TEST_TIMEOUT_SCALE` (the TCG microVM is several times slower). Only used for
/// bounds on waits, never for assertions about speed.
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("BERTH_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * scale
}

/// A unique name `berth-test-<pid>-<n>` (the suite's sweep knows the prefix).
pub fn unique(what: &str) -> String {
    format!(
        "berth-test-{}-{}-{what}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Default limits of a test container: `cpus`, `mem_bytes`, `pids_max`, hard cap on.
pub fn limits(cpus: f64, mem_bytes: u64, pids_max: Option<u64>) -> Limits {
    Limits {
        cpus,
        mem_bytes,
        pids_max,
        cpu_hard_cap: true,
        ..Default::default()
    }
}

/// One test's isolator, container ids, children and other kernel objects; removes all of it on
/// drop (thaws first, then kills children, removes cgroups, detaches loop devices, deletes files).
pub struct Env {
    pub iso: CgroupsIsolator,
    pub base: String,
    ids: Vec<String>,
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    pub extra_dirs: Vec<PathBuf>,
    /// Freezer files and the value that thaws them, written first at teardown.
    pub thaw: Vec<(PathBuf, &'static str)>,
    /// Loop devices to detach.
    loops: Vec<String>,
    /// Files to delete.
    pub files: Vec<PathBuf>,
}

impl Env {
    pub fn new() -> Option<Env> {
        if !nix::unistd::geteuid().is_root() {
            cannot_run("not running as root");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("berth-t{}-{n}", std::process::id());
        match CgroupsIsolator::new(
            Path::new("/sys/fs/cgroup"),
            Path::new("/proc/self/cgroup"),
            &base,
        ) {
            Ok(iso) => {
                if let Ok(want) = std::env::var("BERTH_TEST_CGROUP") {
                    assert_eq!(
                        want,
                        iso.version().as_str(),
                        "BERTH_TEST_CGROUP={want} but the isolator detected {:?}",
                        iso.version()
                    );
                }
                Some(Env {
                    iso,
                    base,
                    ids: Vec::new(),
                    children: Vec::new(),
                    stdins: Vec::new(),
                    extra_dirs: vec![],
                    thaw: vec![],
                    loops: vec![],
                    files: vec![],
                })
            }
            Err(e) => {
                cannot_run(&format!("no usable cgroup hierarchy: {e}"));
                None
            }
        }
    }

    pub fn v2(&self) -> bool {
        self.iso.version() == CgroupVersion::V2
    }

    /// A fresh container id, registered for cleanup.
    pub fn id(&mut self) -> String {
        let id = format!(
            "berth-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        self.ids.push(id.clone());
        id
    }

    pub fn spec(&mut self, limits: Limits, options: IsolationOptions) -> ContainerSpec {
        let id = self.id();
        ContainerSpec {
            id: id.clone(),
            limits,
            network: NetworkMode::None,
            hostname: id,
            sandbox: PathBuf::from("/nonexistent"),
            options,
            image: None,
        }
    }

    /// Prepares a container with `limits` and `options`; panics on failure.
    pub fn prepare_with(&mut self, limits: Limits, options: IsolationOptions) -> String {
        let spec = self.spec(limits, options);
        self.iso.prepare(&spec).expect("prepare");
        spec.id
    }

    pub fn prepare(&mut self, cpus: f64, mem_bytes: u64, pids_max: Option<u64>) -> String {
        self.prepare_with(limits(cpus, mem_bytes, pids_max), Default::default())
    }

    /// Spawns `sh -c script` blocked on a stdin line, moves it into `id`, then releases it: the
    /// whole workload runs inside the container's cgroups from its first instruction. With
    /// `capture`, stdout and stderr are pipes ([`Env::output`]) and stdin stays open
    /// ([`Env::send`]); otherwise stdout is /dev/null and stdin is closed after the release.
    pub fn spawn(&mut self, id: &str, script: &str, capture: bool) -> usize {
        let iso = self.iso.clone();
        self.spawn_placed(script, capture, &|pid| {
            iso.isolate(id, pid).expect("isolate")
        })
    }

    /// Like [`Env::spawn`], into the cgroup directory `dir` (not one of the isolator's).
    pub fn spawn_into(&mut self, dir: &Path, script: &str, capture: bool) -> usize {
        self.spawn_placed(script, capture, &|pid| {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()))
        })
    }

    fn spawn_placed(&mut self, script: &str, capture: bool, place: &dyn Fn(i32)) -> usize {
        let out = || {
            if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _go; {script}"))
            .stdin(Stdio::piped())
            .stdout(out())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn sh");
        let pid = child.id() as i32;
        let mut stdin = child.stdin.take();
        self.children.push(child);
        self.stdins.push(None);
        place(pid);
        stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let idx = self.children.len() - 1;
        if capture {
            self.stdins[idx] = stdin;
        }
        idx
    }

    pub fn spawn_in(&mut self, id: &str, script: &str) -> usize {
        self.spawn(id, script, false)
    }

    /// Writes a line to a captured child's stdin.
    pub fn send(&mut self, idx: usize, line: &str) {
        let stdin = self.stdins[idx].as_mut().expect("captured child");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    pub fn pid(&self, idx: usize) -> i32 {
        self.children[idx].id() as i32
    }

    pub fn try_wait(&mut self, idx: usize) -> Option<ExitStatus> {
        self.children[idx].try_wait().unwrap()
    }

    pub fn wait(&mut self, idx: usize, timeout: Duration) -> ExitStatus {
        let timeout = scaled(timeout);
        let start = Instant::now();
        loop {
            if let Some(status) = self.children[idx].try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "child did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next line a captured child writes to stdout (unbuffered: [`Env::output`] still sees
    /// the rest).
    pub fn read_line(&mut self, idx: usize) -> String {
        let stdout = self.children[idx].stdout.as_mut().expect("captured child");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).expect("read child stdout") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Stdout and stderr of an exited captured child (background processes of the script must
    /// not hold them open).
    pub fn output(&mut self, idx: usize) -> (String, String) {
        let child = &mut self.children[idx];
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        if let Some(mut s) = child.stderr.take() {
            s.read_to_string(&mut err).unwrap();
        }
        (out, err)
    }

    /// Runs `script` in the container to its end: exit status, stdout, stderr.
    pub fn run_in(&mut self, id: &str, script: &str) -> (ExitStatus, String, String) {
        let idx = self.spawn(id, script, true);
        self.finish_run(idx)
    }

    /// Runs `script` in the cgroup directory `dir` to its end.
    pub fn run_into(&mut self, dir: &Path, script: &str) -> (ExitStatus, String, String) {
        let idx = self.spawn_into(dir, script, true);
        self.finish_run(idx)
    }

    fn finish_run(&mut self, idx: usize) -> (ExitStatus, String, String) {
        self.stdins[idx] = None;
        let status = self.wait(idx, Duration::from_secs(120));
        let (out, err) = self.output(idx);
        (status, out, err)
    }

    /// A loop device over a new sparse file of `size` bytes under /tmp, detached at teardown.
    /// Fails the test saying why when the kernel has no loop devices.
    pub fn loop_device(&mut self, size: u64) -> Option<String> {
        if !Path::new("/dev/loop-control").exists() {
            // The microVM loads modules on demand; a host normally has it built in or loaded.
            let _ = Command::new("modprobe").arg("loop").status();
        }
        if !Path::new("/dev/loop-control").exists() {
            cannot_run("/dev/loop-control is missing: no loop device support (modprobe loop)");
            return None;
        }
        let file = PathBuf::from("/tmp").join(format!("{}.img", unique("loop")));
        let f = std::fs::File::create(&file).expect("create loop backing file");
        self.files.push(file.clone());
        f.set_len(size).unwrap();
        drop(f);
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup --find --show {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        self.loops.push(dev.clone());
        Some(dev)
    }

    /// Explicit end of a test: everything removed, and checked to be gone.
    pub fn finish(mut self) {
        self.teardown().expect("teardown");
        for id in &self.ids {
            for p in self.iso.container_paths(id) {
                assert!(!p.exists(), "left behind: {}", p.display());
            }
        }
        for b in self.iso.base_dirs() {
            assert!(!b.exists(), "left behind: {}", b.display());
        }
        assert!(self.iso.list().unwrap().is_empty());
    }

    fn teardown(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for (file, value) in std::mem::take(&mut self.thaw) {
            if file.exists()
                && let Err(e) = std::fs::write(&file, value)
            {
                errors.push(format!("thaw {}: {e}", file.display()));
            }
        }
        self.stdins.clear();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        for id in std::mem::take(&mut self.ids) {
            if let Err(e) = self.iso.cleanup(&id) {
                errors.push(format!("cleanup {id}: {e}"));
            }
        }
        for dir in self
            .iso
            .base_dirs()
            .into_iter()
            .chain(std::mem::take(&mut self.extra_dirs))
        {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("rmdir {}: {e}", dir.display())),
            }
        }
        for dev in std::mem::take(&mut self.loops) {
            match Command::new("losetup").arg("-d").arg(&dev).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => errors.push(format!(
                    "losetup -d {dev}: {}",
                    String::from_utf8_lossy(&o.stderr)
                )),
                Err(e) => errors.push(format!("losetup -d {dev}: {e}")),
            }
        }
        for file in std::mem::take(&mut self.files) {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("rm {}: {e}", file.display())),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("cgroup test teardown ({}): {e}", self.base);
        }
    }
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// The container's directory that has `file` (v1: the hierarchy of its controller; v2: the one).
pub fn dir_for(env: &Env, id: &str, file: &str) -> PathBuf {
    env.iso
        .container_paths(id)
        .into_iter()
        .find(|p| p.join(file).exists())
        .unwrap_or_else(|| panic!("no container dir has {file}"))
}

pub fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout` (scaled).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
