use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use super::*;
use crate::image::pull::NoProgress;

#[test]
fn bearer_challenges() {
    let (scheme, params) = parse_challenge(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
    )
    .unwrap();
    assert_eq!(scheme, "Bearer");
    assert_eq!(
        params,
        [
            (
                "realm".to_string(),
                "https://auth.docker.io/token".to_string()
            ),
            ("service".to_string(), "registry.docker.io".to_string()),
            (
                "scope".to_string(),
                "repository:library/busybox:pull,push".to_string()
            ),
        ]
    );
    let (scheme, params) = parse_challenge("Basic realm=\"x \\\"y\\\"\", charset=UTF-8").unwrap();
    assert_eq!(scheme, "Basic");
    assert_eq!(params[0].1, "x \"y\"");
    assert_eq!(params[1], ("charset".to_string(), "UTF-8".to_string()));
    assert!(parse_challenge("").is_none());
    assert!(parse_challenge("Bearer realm").is_none());
}

#[test]
fn content_ranges() {
    assert_eq!(parse_content_range_start("bytes 100-199/200"), Some(100));
    assert_eq!(parse_content_range_start("bytes 0-0/*"), Some(0));
    assert_eq!(parse_content_range_start("items 1-2/3"), None);
}

fn index(json: serde_json::Value) -> ImageIndex {
    serde_json::from_value(json).unwrap()
}

fn desc(digest_byte: &str, platform: Option<(&str, &str)>) -> serde_json::Value {
    let mut d = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", digest_byte.repeat(64)),
        "size": 100,
    });
    if let Some((os, arch)) = platform {
        d["platform"] = serde_json::json!({"os": os, "architecture": arch});
    }
    d
}

#[test]
fn platform_selection_from_an_index() {
    let idx = index(serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            desc("a", Some(("linux", "arm64"))),
            desc("b", None),
            desc("c", Some(("windows", "amd64"))),
            desc("d", Some(("linux", "amd64"))),
            desc("e", Some(("unknown", "unknown"))),
        ]
    }));
    let chosen = choose_platform(&idx, "linux", "amd64").unwrap();
    assert_eq!(chosen.digest().digest(), "d".repeat(64));
    let err = choose_platform(&idx, "linux", "s390x").unwrap_err();
    assert!(
        err.contains("linux/arm64") && err.contains("windows/amd64"),
        "{err}"
    );
}

/// A blob server in memory: honours Range or not, and can cut a response short.
struct Fake {
    data: Vec<u8>,
    honour_range: bool,
    cut_after: Mutex<Option<usize>>,
    requests: Mutex<Vec<u64>>,
    served: AtomicU64,
}

impl Fake {
    fn new(data: &[u8], honour_range: bool) -> Self {
        Self {
            data: data.to_vec(),
            honour_range,
            cut_after: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
        }
    }
}

impl BlobSource for Fake {
    fn fetch(
        &self,
        _digest: &Sha256,
        from: u64,
    ) -> impl Future<Output = Result<BlobBody, RegistryError>> + Send {
        self.requests.lock().unwrap().push(from);
        let offset = if self.honour_range { from } else { 0 };
        let mut body = self.data[offset as usize..].to_vec();
        let cut = self.cut_after.lock().unwrap().take();
        if let Some(cut) = cut {
            body.truncate(cut);
        }
        self.served.fetch_add(body.len() as u64, Ordering::Relaxed);
        // two chunks, to exercise the loop
        let half = body.len() / 2;
        let chunks: Vec<Result<Bytes, RegistryError>> = vec![
            Ok(Bytes::copy_from_slice(&body[..half])),
            Ok(Bytes::copy_from_slice(&body[half..])),
        ];
        async move {
            Ok(BlobBody {
                offset,
                stream: futures::stream::iter(chunks).boxed(),
            })
        }
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn blob_data() -> Vec<u8> {
    (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect()
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("partial");
    let data = blob_data();
    let digest = Sha256::of(&data);
    let size = data.len() as u64;
    let fake = Fake::new(&data, true);
    *fake.cut_after.lock().unwrap() = Some(15_000);

    let err = block_on(download(&fake, &digest, size, &partial, &NoProgress)).unwrap_err();
    assert!(
        matches!(err, RegistryError::Truncated { got: 15_000, .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        15_000,
        "partial kept"
    );

    block_on(download(&fake, &digest, size, &partial, &NoProgress)).unwrap();
    assert_eq!(*fake.requests.lock().unwrap(), [0, 15_000]);
    assert_eq!(
        fake.served.load(Ordering::Relaxed),
        size,
        "nothing fetched twice"
    );
    assert_eq!(std::fs::read(&partial).unwrap(), data);

    // complete already: verified from disk, nothing fetched
    block_on(download(&fake, &digest, size, &partial, &NoProgress)).unwrap();
    assert_eq!(fake.requests.lock().unwrap().len(), 2);
}

#[test]
fn a_server_ignoring_the_range_restarts_from_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("partial");
    let data = blob_data();
    let digest = Sha256::of(&data);
    // a stale partial whose bytes are not even a prefix of the blob
    std::fs::write(&partial, vec![0xffu8; 7_000]).unwrap();
    let fake = Fake::new(&data, false);
    block_on(download(
        &fake,
        &digest,
        data.len() as u64,
        &partial,
        &NoProgress,
    ))
    .unwrap();
    assert_eq!(*fake.requests.lock().unwrap(), [7_000]);
    assert_eq!(std::fs::read(&partial).unwrap(), data);
}

#[test]
fn a_wrong_digest_or_an_overlong_body_deletes_the_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("partial");
    let data = blob_data();
    let fake = Fake::new(&data, true);
    let wrong = Sha256::of(b"not this");
    let err = block_on(download(
        &fake,
        &wrong,
        data.len() as u64,
        &partial,
        &NoProgress,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!partial.exists());

    let err = block_on(download(
        &fake,
        &Sha256::of(&data),
        100,
        &partial,
        &NoProgress,
    ))
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::TooLong { size: 100, .. }),
        "{err}"
    );
    assert!(!partial.exists());

    // a resumed partial that turns out wrong once complete is not kept either
    std::fs::write(&partial, vec![0xffu8; 1_000]).unwrap();
    let err = block_on(download(
        &fake,
        &Sha256::of(&data),
        data.len() as u64,
        &partial,
        &NoProgress,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!partial.exists());
}
