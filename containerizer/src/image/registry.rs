//! A client of the OCI distribution (Docker Registry v2) API: manifests and blobs, anonymous
//! token auth, platform choice in indexes, and resumable blob downloads.
//!
//! - **Transport**: `https://` with the system's roots (reqwest's rustls backend); plain `http://`
//!   only for registries on loopback (`127.0.0.1`, `localhost`, `[::1]`) or when `insecure` is set.
//! - **Auth**: a request answered 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`
//!   is retried once with a token fetched anonymously from the realm. Credentials are not
//!   supported (yet).
//! - **Downloads** go to `blobs/.partial/<hex>`; a later pull of the same blob continues from the
//!   bytes already there with `Range: bytes=N-`, and restarts from 0 when the server answers
//!   200 instead of 206. Every blob is hashed while it arrives; more bytes than its descriptor's
//!   size, or a digest mismatch, deletes the partial file.

use std::{
    future::Future,
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, stream::BoxStream};
use oci_spec::image::{Arch, Descriptor, ImageIndex, Os};
use reqwest::{StatusCode, header};
use tracing::{debug, info};

use super::{
    digest::{DigestMismatch, Hasher, Sha256},
    pull::PullProgress,
    reference::Reference,
    store::MAX_DOCUMENT_BYTES,
};

/// Media types a manifest request accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// What can go wrong talking to a registry. Every variant names the URL or blob.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request failed (connection, TLS, timeout, body).
    #[error("{url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("{url}: HTTP {status}{detail}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body, if any.
        detail: String,
    },
    /// The token dance failed.
    #[error("{url}: authentication failed: {reason}")]
    Auth {
        /// The URL that asked for authentication, or the token realm.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry sent something that is not a usable answer.
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong with the answer.
        reason: String,
    },
    /// Content with the wrong digest.
    #[error(transparent)]
    Digest(#[from] DigestMismatch),
    /// A blob body longer than its descriptor says.
    #[error("blob {digest}: the registry sent more than the {size} bytes its descriptor says")]
    TooLong {
        /// The blob.
        digest: Sha256,
        /// The descriptor's size.
        size: u64,
    },
    /// A blob body that ended early (the partial download is kept for resuming).
    #[error("blob {digest}: the body ended after {got} of {size} bytes (kept for resuming)")]
    Truncated {
        /// The blob.
        digest: Sha256,
        /// Bytes received in total.
        got: u64,
        /// The descriptor's size.
        size: u64,
    },
    /// A local file operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_path_buf();
    move |source| RegistryError::Io { path, op, source }
}

/// The descriptor of `index` for `os`/`arch` (for amd64 any variant; for others the first
/// match). The error lists what the index offers.
pub fn choose_platform<'a>(
    index: &'a ImageIndex,
    os: &str,
    arch: &str,
) -> Result<&'a Descriptor, String> {
    let want_os = Os::from(os);
    let want_arch = Arch::from(arch);
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| *p.os() == want_os && *p.architecture() == want_arch)
        })
        .ok_or_else(|| {
            let offered: Vec<String> = index
                .manifests()
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => "unknown".to_string(),
                })
                .collect();
            format!(
                "no {os}/{arch} image in the index (it has: {})",
                offered.join(", ")
            )
        })
}

/// The answer to a blob request.
pub(crate) struct BlobBody {
    /// Where the body starts in the blob: the requested offset when the Range was honoured
    /// (206), 0 when the server sent the whole blob (200).
    pub(crate) offset: u64,
    /// The body.
    pub(crate) stream: BoxStream<'static, Result<Bytes, RegistryError>>,
}

/// Something blobs can be fetched from (the registry; a fake in tests).
pub(crate) trait BlobSource: Sync {
    /// Fetches blob `digest` from byte `from` (a Range request when `from > 0`).
    fn fetch(
        &self,
        digest: &Sha256,
        from: u64,
    ) -> impl Future<Output = Result<BlobBody, RegistryError>> + Send;
}

/// Downloads blob `digest` of `size` bytes into `partial`, resuming from what is there, and
/// verifies it. On success `partial` holds the complete, fsync'd blob.
pub(crate) async fn download<S: BlobSource>(
    source: &S,
    digest: &Sha256,
    size: u64,
    partial: &Path,
    progress: &dyn PullProgress,
) -> Result<(), RegistryError> {
    let mut have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    let mut hasher = Hasher::new();
    if have > 0 {
        let mut file = std::fs::File::open(partial).map_err(io_err(partial, "opening"))?;
        let mut buffer = vec![0u8; 64 << 10];
        let mut left = have;
        while left > 0 {
            let n = file.read(&mut buffer).map_err(io_err(partial, "reading"))?;
            if n == 0 {
                break;
            }
            let n = n.min(left as usize);
            hasher.update(&buffer[..n]);
            left -= n as u64;
        }
        if have == size {
            let actual = hasher.clone().finish();
            if actual == *digest {
                progress.layer_started(digest, size, size);
                return Ok(());
            }
            hasher = Hasher::new();
            have = 0;
        }
    }
    let body = source.fetch(digest, have).await?;
    if body.offset != have {
        debug!(blob = %digest, asked = have, got = body.offset, "range not honoured: restarting the download");
        hasher = Hasher::new();
        have = 0;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(partial)
        .map_err(io_err(partial, "opening"))?;
    file.set_len(have).map_err(io_err(partial, "truncating"))?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(have))
        .map_err(io_err(partial, "seeking"))?;
    progress.layer_started(digest, size, have);
    if have > 0 {
        info!(blob = %digest, from = have, "resuming a blob download");
    }
    let mut stream = body.stream;
    let mut got = have;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if got + chunk.len() as u64 > size {
            drop(file);
            let _ = std::fs::remove_file(partial);
            return Err(RegistryError::TooLong {
                digest: digest.clone(),
                size,
            });
        }
        file.write_all(&chunk).map_err(io_err(partial, "writing"))?;
        hasher.update(&chunk);
        got += chunk.len() as u64;
        progress.layer_progress(digest, chunk.len() as u64);
    }
    if got < size {
        let _ = file.flush();
        return Err(RegistryError::Truncated {
            digest: digest.clone(),
            got,
            size,
        });
    }
    let actual = hasher.finish();
    if let Err(mismatch) = digest.verify(&format!("blob {digest} from the registry"), &actual) {
        drop(file);
        let _ = std::fs::remove_file(partial);
        return Err(mismatch.into());
    }
    file.sync_all().map_err(io_err(partial, "fsync"))?;
    Ok(())
}

/// A client for one repository of one registry.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    repository: String,
    token: Mutex<Option<String>>,
}

impl RegistryClient {
    /// A client for `reference`'s repository. Plain HTTP only for loopback registries or when
    /// `insecure` is set.
    pub fn new(reference: &Reference, insecure: bool) -> Result<Self, RegistryError> {
        let scheme = if reference.is_loopback() || insecure {
            "http"
        } else {
            "https"
        };
        let base = format!("{scheme}://{}", reference.api_host());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| RegistryError::Http {
                url: base.clone(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            repository: reference.repository.clone(),
            token: Mutex::new(None),
        })
    }

    fn url(&self, kind: &str, what: &str) -> String {
        format!("{}/v2/{}/{kind}/{what}", self.base, self.repository)
    }

    /// GET with the cached token; on 401 fetch a token (once) and retry.
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        from: u64,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut retried = false;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept);
            }
            if from > 0 {
                request = request.header(header::RANGE, format!("bytes={from}-"));
            }
            let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|source| RegistryError::Http {
                url: url.to_string(),
                source,
            })?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried {
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let token = self.fetch_token(url, &challenge).await?;
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
                retried = true;
                continue;
            }
            if !response.status().is_success() {
                return Err(status_error(url, response).await);
            }
            return Ok(response);
        }
    }

    async fn fetch_token(&self, url: &str, challenge: &str) -> Result<String, RegistryError> {
        let auth = |reason: String| RegistryError::Auth {
            url: url.to_string(),
            reason,
        };
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| auth(format!("unusable WWW-Authenticate header {challenge:?}")))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth(format!(
                "the registry wants {scheme} authentication; only anonymous bearer tokens are supported"
            )));
        }
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| auth("the Bearer challenge has no realm".into()))?;
        let mut realm_url = reqwest::Url::parse(&realm)
            .map_err(|e| auth(format!("bad token realm {realm:?}: {e}")))?;
        {
            let mut query = realm_url.query_pairs_mut();
            if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                query.append_pair("service", service);
            }
            match params.iter().find(|(k, _)| k == "scope") {
                Some((_, scope)) => query.append_pair("scope", scope),
                None => query.append_pair("scope", &format!("repository:{}:pull", self.repository)),
            };
        }
        debug!(realm = %realm, "fetching an anonymous registry token");
        let response = self
            .http
            .get(realm_url.clone())
            .send()
            .await
            .map_err(|source| RegistryError::Http {
                url: realm.clone(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(status_error(realm_url.as_str(), response).await);
        }
        let body = read_capped(response, realm_url.as_str(), 1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| auth(format!("token answer is not JSON: {e}")))?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth("the token answer has no token".into()))
    }

    /// Fetches a manifest or index by tag or digest: its bytes, media type and the registry's
    /// `Docker-Content-Digest`, if sent. The caller verifies the digest.
    pub async fn manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Option<String>), RegistryError> {
        let url = self.url("manifests", reference);
        let response = self.get(&url, Some(MANIFEST_ACCEPT), 0).await?;
        let content_type = header_str(&response, header::CONTENT_TYPE).unwrap_or_default();
        let digest = header_str(&response, "docker-content-digest");
        let body = read_capped(response, &url, MAX_DOCUMENT_BYTES).await?;
        Ok((body, content_type, digest))
    }

    /// The URL of a manifest (for error messages).
    pub fn manifest_url(&self, reference: &str) -> String {
        self.url("manifests", reference)
    }
}

impl BlobSource for RegistryClient {
    fn fetch(
        &self,
        digest: &Sha256,
        from: u64,
    ) -> impl Future<Output = Result<BlobBody, RegistryError>> + Send {
        let url = self.url("blobs", &digest.to_string());
        async move {
            let response = match self.get(&url, None, from).await {
                // a Range past the end: start over
                Err(RegistryError::Status { status: 416, .. }) if from > 0 => {
                    self.get(&url, None, 0).await?
                }
                other => other?,
            };
            let offset = if response.status() == StatusCode::PARTIAL_CONTENT {
                let range = header_str(&response, header::CONTENT_RANGE).unwrap_or_default();
                match parse_content_range_start(&range) {
                    Some(start) if start == from => from,
                    _ => {
                        return Err(RegistryError::Protocol {
                            url,
                            reason: format!(
                                "206 with Content-Range {range:?} for a request from byte {from}"
                            ),
                        });
                    }
                }
            } else {
                0
            };
            let url_for_errors = url.clone();
            let stream = response
                .bytes_stream()
                .map(move |chunk| {
                    chunk.map_err(|source| RegistryError::Http {
                        url: url_for_errors.clone(),
                        source,
                    })
                })
                .boxed();
            Ok(BlobBody { offset, stream })
        }
    }
}

fn header_str(response: &reqwest::Response, name: impl header::AsHeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn status_error(url: &str, response: reqwest::Response) -> RegistryError {
    let status = response.status().as_u16();
    let body = read_capped(response, url, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let text: String = text.trim().chars().take(300).collect();
    RegistryError::Status {
        url: url.to_string(),
        status,
        detail: if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        },
    }
}

async fn read_capped(
    response: reqwest::Response,
    url: &str,
    cap: u64,
) -> Result<Vec<u8>, RegistryError> {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| RegistryError::Http {
            url: url.to_string(),
            source,
        })?;
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(RegistryError::Protocol {
                url: url.to_string(),
                reason: format!("answer larger than {cap} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `bytes START-END/TOTAL` → START.
fn parse_content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// `Bearer realm="https://auth",service="registry",scope="repository:x:pull,push"` →
/// (`Bearer`, [(realm, …), (service, …), (scope, …)]). Quoted values may contain commas.
fn parse_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.trim().is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some((scheme.to_string(), params))
}

#[cfg(test)]
mod tests;
