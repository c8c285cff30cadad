//! End-to-end image store tests through the `berth` binary (no agent): an OCI layout written
//! here (busybox-static + symlinks, a second layer with a whiteout), `berth image load`, `ls
//! --json`, a push to a real local `docker-registry` with `skopeo`, `berth image pull` into a
//! fresh work dir, `rm`, `gc`; and pulls from a tiny misbehaving registry written here (wrong
//! digest, HTTP 500, a body cut short then resumed, bearer-token auth).
//!
//! Needs root (layers are unpacked with their owners) and the Debian packages busybox-static,
//! docker-registry and skopeo (tests/install-deps.sh installs them): a missing one fails the test
//! naming the package.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use berth_tests::{
    Value,
    images::{
        LayerBuilder, Registry, TestImage, berth_image, files_in, image_of, skopeo_push,
        tar_header, temp_dir,
    },
};
use serde_json::json;

/// Layer 1: busybox-static with a few applet symlinks and /etc/hello; layer 2: deletes
/// /etc/hello (a whiteout) and adds /etc/motd.
fn busybox_image() -> TestImage {
    let l1 = LayerBuilder::new()
        .busybox(&["sh", "ls", "cat", "true"])
        .file("etc/hello", b"hello\n", 0o644)
        .finish();
    let l2 = LayerBuilder::new()
        .dir("etc", 0o755, 0, 0)
        .file("etc/.wh.hello", b"", 0o644)
        .file("etc/motd", b"hi!\n", 0o644)
        .finish();
    image_of(&[l1, l2])
}

// ---------------------------------------------------------------------------------------------
// environment
// ---------------------------------------------------------------------------------------------

fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("BERTH_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): not root");
        return false;
    }
    panic!("image e2e tests need root (layers are unpacked with their owners); euid is {euid}");
}

/// The path of `program`, or a failure naming the Debian package that provides it.
fn listed(work: &Path) -> Vec<Value> {
    let out = berth_image(work, &["ls", "--json"]);
    out.assert_success();
    out.json().as_array().cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// the happy path
// ---------------------------------------------------------------------------------------------

#[test]
fn image_load_push_pull_rm_gc() {
    if !require_root() {
        return;
    }
    let image = busybox_image();
    let layout_dir = temp_dir("layout");
    let layout = layout_dir.path().join("busybox");
    image.write_layout(&layout, "1.0");

    // load into one work dir
    let w1 = temp_dir("work1");
    let out = berth_image(
        w1.path(),
        &[
            "load",
            "--name",
            "berth.test/busybox",
            layout.to_str().unwrap(),
        ],
    );
    out.assert_success();
    assert!(out.stdout.contains("berth.test/busybox:1.0"), "{}", out);
    let images = listed(w1.path());
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["reference"], "berth.test/busybox:1.0");
    assert_eq!(images[0]["digest"], image.manifest.as_str());
    assert_eq!(images[0]["config"], image.config.as_str());
    assert_eq!(images[0]["layers"], json!(image.layers));
    assert_eq!(images[0]["source"], "load");

    // push with skopeo to a real registry, pull into a fresh work dir
    let registry = Registry::start();
    let remote = format!("127.0.0.1:{}/berth/busybox:1.0", registry.port);
    skopeo_push(&layout, "1.0", &remote);
    let w2 = temp_dir("work2");
    let out = berth_image(w2.path(), &["pull", &remote]);
    out.assert_success();
    assert!(out.stdout.contains(&image.manifest), "{}", out);
    let images = listed(w2.path());
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["reference"], remote.as_str());
    assert_eq!(images[0]["digest"], image.manifest.as_str());
    assert_eq!(images[0]["source"], "pull");

    // the layers were unpacked (pull unpacks unless --no-unpack), whiteout in overlay form
    let l1 = image.layer_dir(w2.path(), 0);
    let l2 = image.layer_dir(w2.path(), 1);
    let busybox = fs::metadata(l1.join("bin/busybox")).unwrap();
    assert_eq!(busybox.mode() & 0o7777, 0o755);
    assert_eq!(busybox.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(fs::read(l1.join("etc/hello")).unwrap(), b"hello\n");
    let whiteout = fs::symlink_metadata(l2.join("etc/hello")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(fs::read(l2.join("etc/motd")).unwrap(), b"hi!\n");

    // pulling again fetches nothing new
    let out = berth_image(w2.path(), &["pull", "--no-unpack", &remote]);
    out.assert_success();
    assert_eq!(out.stderr.matches("already present").count(), 3, "{}", out);

    // rm + gc empty the store
    let out = berth_image(w2.path(), &["rm", &remote]);
    out.assert_success();
    assert!(listed(w2.path()).is_empty());
    let out = berth_image(w2.path(), &["gc", "--json"]);
    out.assert_success();
    let report = out.json();
    assert_eq!(report["blobs_removed"], 4, "{report}");
    assert_eq!(report["layers_removed"], 2, "{report}");
    assert!(files_in(&w2.path().join("images/blobs/sha256")).is_empty());
    assert!(files_in(&w2.path().join("images/layers")).is_empty());

    // a name that is not there
    let out = berth_image(w2.path(), &["rm", &remote]);
    assert_eq!(out.code(), 1, "{}", out);
    assert!(out.stderr.contains("not in the store"), "{}", out);
}

#[test]
fn load_rejects_what_is_not_an_image() {
    if !require_root() {
        return;
    }
    let w = temp_dir("work");
    let out = berth_image(w.path(), &["load", "/nonexistent/berth-image"]);
    assert_eq!(out.code(), 1, "{}", out);
    assert!(out.stderr.contains("/nonexistent/berth-image"), "{}", out);
    let empty = temp_dir("empty");
    let out = berth_image(w.path(), &["load", empty.path().to_str().unwrap()]);
    assert_eq!(out.code(), 1, "{}", out);
    assert!(out.stderr.contains("neither an OCI layout"), "{}", out);
}

// ---------------------------------------------------------------------------------------------
// a misbehaving registry
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Misbehaviour {
    /// Serve everything right.
    None,
    /// Serve the first layer's blob with other bytes of the same length.
    WrongDigest,
    /// Answer blob requests with HTTP 500.
    ServerError,
    /// Send half of the first layer's blob, then close the connection.
    CutBody,
    /// Require a bearer token (from /token) on every /v2/ request.
    Token,
}

struct FakeRegistry {
    addr: SocketAddr,
    mode: Arc<Mutex<Misbehaviour>>,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeRegistry {
    fn start(image: &TestImage, mode: Misbehaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let image = image.clone();
        let thread = {
            let (mode, log, stop) = (mode.clone(), log.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let current = *mode.lock().unwrap();
                    let _ = serve(stream, &image, current, addr, &log);
                }
            })
        };
        Self {
            addr,
            mode,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn reference(&self) -> String {
        format!("{}/berth/fake:1", self.addr)
    }

    fn set(&self, mode: Misbehaviour) {
        *self.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream` (Connection: close).
fn serve(
    mut stream: TcpStream,
    image: &TestImage,
    mode: Misbehaviour,
    addr: SocketAddr,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let range = headers.get("range").cloned();
    log.lock()
        .unwrap()
        .push(format!("{path} {}", range.clone().unwrap_or_default()));
    let respond = |stream: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)
    };
    if path.starts_with("/token") {
        return respond(
            &mut stream,
            "200 OK",
            "Content-Type: application/json\r\n",
            br#"{"token":"t0k3n"}"#,
        );
    }
    if mode == Misbehaviour::Token
        && headers.get("authorization").map(String::as_str) != Some("Bearer t0k3n")
    {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:berth/fake:pull\"\r\n"
        );
        return respond(&mut stream, "401 Unauthorized", &challenge, b"{}");
    }
    if path == "/v2/berth/fake/manifests/1" {
        let manifest = &image.blobs[&image.manifest];
        let extra = format!(
            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {}\r\n",
            image.manifest
        );
        return respond(&mut stream, "200 OK", &extra, manifest);
    }
    let Some(digest) = path.strip_prefix("/v2/berth/fake/blobs/") else {
        return respond(&mut stream, "404 Not Found", "", b"");
    };
    let Some(blob) = image.blobs.get(digest) else {
        return respond(&mut stream, "404 Not Found", "", b"");
    };
    let is_first_layer = digest == image.layers[0];
    match mode {
        Misbehaviour::ServerError => respond(&mut stream, "500 Internal Server Error", "", b"boom"),
        Misbehaviour::WrongDigest if is_first_layer => {
            let mut other = blob.clone();
            other[blob.len() / 2] ^= 0xff;
            respond(&mut stream, "200 OK", "", &other)
        }
        Misbehaviour::CutBody if is_first_layer => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                blob.len()
            );
            stream.write_all(head.as_bytes())?;
            stream.write_all(&blob[..blob.len() / 2])?;
            stream.flush()
        }
        _ => {
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            if start > 0 && start < blob.len() {
                let extra = format!(
                    "Content-Range: bytes {start}-{}/{}\r\n",
                    blob.len() - 1,
                    blob.len()
                );
                respond(&mut stream, "206 Partial Content", &extra, &blob[start..])
            } else {
                respond(&mut stream, "200 OK", "", blob)
            }
        }
    }
}

fn small_image() -> TestImage {
    let mut layers = Vec::new();
    for (name, size) in [("a", 300_000usize), ("b", 1000)] {
        // incompressible-ish content so the gzip blob is large enough to cut in half
        let data: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = tar_header(tar::EntryType::Regular, data.len() as u64, 0o644);
        builder.append_data(&mut h, name, &data[..]).unwrap();
        layers.push(builder.into_inner().unwrap());
    }
    image_of(&layers)
}

/// Nothing of the failed pull is in the store: no index entry, no blob of the bad layer.
#[track_caller]
fn assert_nothing_stored(work: &Path, image: &TestImage) {
    assert!(listed(work).is_empty());
    let blobs = files_in(&work.join("images/blobs/sha256"));
    assert!(
        !blobs.contains(&image.layers[0]["sha256:".len()..].to_string()),
        "the bad layer is in the store: {blobs:?}"
    );
    assert!(files_in(&work.join("images/layers")).is_empty());
}

#[test]
fn pull_rejects_a_blob_with_the_wrong_digest() {
    if !require_root() {
        return;
    }
    let image = small_image();
    let registry = FakeRegistry::start(&image, Misbehaviour::WrongDigest);
    let w = temp_dir("work");
    let out = berth_image(w.path(), &["pull", &registry.reference()]);
    assert_eq!(out.code(), 1, "{}", out);
    assert!(
        out.stderr.contains("digest mismatch") && out.stderr.contains(&image.layers[0]),
        "{}",
        out
    );
    assert_nothing_stored(w.path(), &image);
    assert!(
        files_in(&w.path().join("images/blobs/.partial")).is_empty(),
        "bad partial kept"
    );
}

#[test]
fn pull_reports_a_server_error() {
    if !require_root() {
        return;
    }
    let image = small_image();
    let registry = FakeRegistry::start(&image, Misbehaviour::ServerError);
    let w = temp_dir("work");
    let out = berth_image(w.path(), &["pull", &registry.reference()]);
    assert_eq!(out.code(), 1, "{}", out);
    assert!(
        out.stderr.contains("HTTP 500") && out.stderr.contains("boom"),
        "{}",
        out
    );
    assert_nothing_stored(w.path(), &image);
}

#[test]
fn pull_resumes_a_body_cut_short() {
    if !require_root() {
        return;
    }
    let image = small_image();
    let registry = FakeRegistry::start(&image, Misbehaviour::CutBody);
    let w = temp_dir("work");
    let out = berth_image(w.path(), &["pull", &registry.reference()]);
    assert_eq!(out.code(), 1, "{}", out);
    assert_nothing_stored(w.path(), &image);
    let half = image.blobs[&image.layers[0]].len() / 2;
    let partial = w
        .path()
        .join("images/blobs/.partial")
        .join(&image.layers[0]["sha256:".len()..]);
    assert_eq!(
        fs::metadata(&partial).map(|m| m.len() as usize).ok(),
        Some(half),
        "{}",
        out
    );

    registry.set(Misbehaviour::None);
    let out = berth_image(w.path(), &["pull", &registry.reference()]);
    out.assert_success();
    let wanted = format!("/v2/berth/fake/blobs/{} bytes={half}-", image.layers[0]);
    assert!(
        registry.requests().contains(&wanted),
        "no Range request: {:?}",
        registry.requests()
    );
    assert_eq!(listed(w.path())[0]["digest"], image.manifest.as_str());
    assert!(!partial.exists());
}

#[test]
fn pull_fetches_an_anonymous_bearer_token() {
    if !require_root() {
        return;
    }
    let image = small_image();
    let registry = FakeRegistry::start(&image, Misbehaviour::Token);
    let w = temp_dir("work");
    let out = berth_image(w.path(), &["pull", &registry.reference()]);
    out.assert_success();
    let requests = registry.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/token?service=fake&scope=repository%3Aberth%2Ffake%3Apull")),
        "{requests:?}"
    );
    assert_eq!(listed(w.path())[0]["reference"], registry.reference());
}
