//! Test images and registries for the e2e tests: OCI image layouts written here from
//! busybox-static (no network, no image tooling), `berth image` on a work dir, and a real
//! `docker-registry` on 127.0.0.1 with `skopeo` to push to it.
//!
//! Needs the Debian packages busybox-static, docker-registry and skopeo (tests/install-deps.sh
//! installs them): a missing one fails the test naming the package.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Output, berth_no_agent, scaled};

/// The path of `program`, or a failure naming the Debian package that provides it.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/bin"])
    {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed: install the Debian package `{package}` \
         (bash tests/install-deps.sh does)"
    );
}

/// A temporary directory under /tmp named `berth-test-<pid>-<tag>-*` (swept by tests/run.sh).
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("berth-test-{}-{tag}-", std::process::id()))
        .tempdir_in("/tmp")
        .unwrap()
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `berth image --work-dir WORK ARGS...` (no agent needed).
pub fn berth_image(work: &Path, args: &[&str]) -> Output {
    let mut full = vec!["image", "--work-dir", work.to_str().unwrap()];
    full.extend_from_slice(args);
    berth_no_agent(&full)
}

/// Names in `dir` (empty when it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// an OCI image layout written by the test
// ---------------------------------------------------------------------------------------------

/// One image's blobs, by digest, plus the documents' digests.
#[derive(Clone)]
pub struct TestImage {
    /// Blobs by digest.
    pub blobs: HashMap<String, Vec<u8>>,
    /// Digest of the manifest.
    pub manifest: String,
    /// Digest of the config.
    pub config: String,
    /// Digests of the layer blobs, bottom to top.
    pub layers: Vec<String>,
    /// Digests of the uncompressed layers.
    pub diff_ids: Vec<String>,
}

/// A tar header owned by root with a fixed mtime.
pub fn tar_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Layer 1: busybox-static with a few applet symlinks and /etc/hello; layer 2: deletes
/// /etc/hello (a whiteout) and adds /etc/motd.
pub fn busybox_image() -> TestImage {
    let busybox_path = require_program("busybox", "busybox-static");
    let busybox = fs::read(&busybox_path).unwrap();
    let mut l1 = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc"] {
        let mut h = tar_header(tar::EntryType::Directory, 0, 0o755);
        l1.append_data(&mut h, dir, &[][..]).unwrap();
    }
    let mut h = tar_header(tar::EntryType::Regular, busybox.len() as u64, 0o755);
    l1.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for applet in ["sh", "ls", "cat", "true"] {
        let mut h = tar_header(tar::EntryType::Symlink, 0, 0o777);
        l1.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let mut h = tar_header(tar::EntryType::Regular, 6, 0o644);
    l1.append_data(&mut h, "etc/hello", &b"hello\n"[..])
        .unwrap();
    let l1 = l1.into_inner().unwrap();

    let mut l2 = tar::Builder::new(Vec::new());
    let mut h = tar_header(tar::EntryType::Directory, 0, 0o755);
    l2.append_data(&mut h, "etc", &[][..]).unwrap();
    let mut h = tar_header(tar::EntryType::Regular, 0, 0o644);
    l2.append_data(&mut h, "etc/.wh.hello", &[][..]).unwrap();
    let mut h = tar_header(tar::EntryType::Regular, 4, 0o644);
    l2.append_data(&mut h, "etc/motd", &b"hi!\n"[..]).unwrap();
    let l2 = l2.into_inner().unwrap();
    image_of(&[l1, l2])
}

/// An image of `tars` (uncompressed layer tars, bottom to top) with a `/bin/sh` Cmd.
pub fn image_of(tars: &[Vec<u8>]) -> TestImage {
    image_with_config(
        tars,
        json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}),
    )
}

/// An image of `tars` (uncompressed layer tars, bottom to top, gzipped here) whose config's
/// `config` object (Entrypoint, Cmd, Env, User, WorkingDir) is `config`.
pub fn image_with_config(tars: &[Vec<u8>], config: Value) -> TestImage {
    let mut blobs = HashMap::new();
    let mut layer_descs = Vec::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in tars {
        let blob = gzip(tar);
        let digest = sha256(&blob);
        layer_descs.push(
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "digest": digest, "size": blob.len()}),
        );
        diff_ids.push(sha256(tar));
        layers.push(digest.clone());
        blobs.insert(digest, blob);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let manifest_digest = sha256(&manifest);
    blobs.insert(config_digest.clone(), config);
    blobs.insert(manifest_digest.clone(), manifest);
    TestImage {
        blobs,
        manifest: manifest_digest,
        config: config_digest,
        layers,
        diff_ids,
    }
}

impl TestImage {
    /// Writes the image as an OCI layout at `dir` with ref name `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) {
        let blob_dir = dir.join("blobs/sha256");
        fs::create_dir_all(&blob_dir).unwrap();
        for (digest, data) in &self.blobs {
            fs::write(blob_dir.join(&digest["sha256:".len()..]), data).unwrap();
        }
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.manifest, "size": self.blobs[&self.manifest].len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    /// Where layer `i` is unpacked in the store of work dir `work`.
    pub fn layer_dir(&self, work: &Path, i: usize) -> PathBuf {
        work.join("images/layers")
            .join(&self.diff_ids[i]["sha256:".len()..])
    }
}

/// An uncompressed layer tar being built (entries owned by root unless given).
pub struct LayerBuilder(tar::Builder<Vec<u8>>);

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = tar_header(tar::EntryType::Directory, 0, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// A regular file.
    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut h = tar_header(tar::EntryType::Regular, data.len() as u64, mode);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A symbolic link.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = tar_header(tar::EntryType::Symlink, 0, 0o777);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// `/bin/busybox` (the host's busybox-static) with `applets` as symlinks to it, and `/etc`.
    pub fn busybox(self, applets: &[&str]) -> Self {
        let busybox = fs::read(require_program("busybox", "busybox-static")).unwrap();
        let mut layer = self.dir("bin", 0o755, 0, 0).dir("etc", 0o755, 0, 0).file(
            "bin/busybox",
            &busybox,
            0o755,
        );
        for applet in applets {
            layer = layer.symlink(&format!("bin/{applet}"), "busybox");
        }
        layer
    }

    /// The tar.
    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// a real docker-registry on 127.0.0.1
// ---------------------------------------------------------------------------------------------

/// A `docker-registry` serving on 127.0.0.1 (killed when dropped).
pub struct Registry {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one and waits until it answers `/v2/`.
    pub fn start() -> Self {
        let program = require_program("docker-registry", "docker-registry");
        let dir = temp_dir("registry");
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let registry = Self {
            child,
            port,
            _dir: dir,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        loop {
            let up = crate::http_request(addr, "GET", "/v2/", None, b"", Duration::from_secs(2))
                .is_ok_and(|r| r.status == 200);
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on {addr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes the layout's image `tag` to `dest` (`host:port/repo:tag`) with skopeo.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str) {
    let program = require_program("skopeo", "skopeo");
    let policy_dir = temp_dir("policy");
    let policy = policy_dir.path().join("policy.json");
    fs::write(
        &policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out = Command::new(program)
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
