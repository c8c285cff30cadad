//! `berth image pull`: manifest (through an index to linux/amd64), config and layers from a
//! registry into the store, every digest verified, up to [`PullOptions::concurrency`] layers at
//! a time, each download resumable.

use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{ImageIndex, ImageManifest};
use tracing::info;

use super::{
    ImageError, ImageInfo, ImageStore,
    digest::Sha256,
    reference::Reference,
    registry::{RegistryClient, RegistryError, choose_platform, download},
};

/// Pull settings.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Allow plain HTTP to a registry that is not on loopback.
    pub insecure: bool,
    /// Layers downloaded at once.
    pub concurrency: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            concurrency: 3,
        }
    }
}

/// Observes a pull (the CLI draws progress bars with it). Every method has a no-op default.
pub trait PullProgress: Send + Sync {
    /// The manifest is known: its digest and the blobs (config first, then layers) with sizes.
    fn resolved(&self, _reference: &str, _digest: &Sha256, _blobs: &[(Sha256, u64)]) {}
    /// A blob download starts (or resumes at `offset`; `offset == size` when nothing is left).
    fn layer_started(&self, _digest: &Sha256, _size: u64, _offset: u64) {}
    /// `bytes` more bytes of a blob arrived.
    fn layer_progress(&self, _digest: &Sha256, _bytes: u64) {}
    /// A blob is complete and verified; `cached` when it was in the store already.
    fn layer_done(&self, _digest: &Sha256, _cached: bool) {}
}

/// A [`PullProgress`] that ignores everything.
pub struct NoProgress;

impl PullProgress for NoProgress {}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

impl ImageStore {
    /// Pulls `reference` with default options (see [`pull_with`](Self::pull_with)).
    pub async fn pull(
        &self,
        reference: &str,
        progress: &dyn PullProgress,
    ) -> Result<ImageInfo, ImageError> {
        self.pull_with(reference, &PullOptions::default(), progress)
            .await
    }

    /// Pulls `reference` (its linux/amd64 image when it names an index) into the store and
    /// records it under its canonical name. Layers are not unpacked here: see
    /// [`rootfs_layers`](Self::rootfs_layers).
    pub async fn pull_with(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<ImageInfo, ImageError> {
        let reference = Reference::parse(reference)?;
        let client = RegistryClient::new(&reference, options.insecure)?;
        let store = self.clone();
        let _lock = tokio::task::spawn_blocking(move || store.lock_shared())
            .await
            .map_err(|e| ImageError::Join(e.to_string()))??;

        let (manifest_bytes, digest) = resolve(&client, &reference).await?;
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).map_err(
            ImageError::json(format!("manifest {digest} of {reference}")),
        )?;
        let mut blobs = vec![(
            Sha256::try_from(manifest.config().digest())?,
            manifest.config().size(),
        )];
        for layer in manifest.layers() {
            blobs.push((Sha256::try_from(layer.digest())?, layer.size()));
        }
        progress.resolved(&reference.to_string(), &digest, &blobs);
        info!(image = %reference, digest = %digest, layers = manifest.layers().len(), "pulling");

        let concurrency = options.concurrency.max(1);
        // The downloads are collected first: a stream over a `map` closure would make this
        // future not provably `Send` (rustc's higher-ranked closure lifetimes), and the agent
        // pulls from a spawned task.
        let downloads: Vec<_> = blobs
            .iter()
            .map(|(blob, size)| self.fetch_blob(&client, blob, *size, progress))
            .collect();
        futures::stream::iter(downloads)
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;

        let stored = self.write_blob(&manifest_bytes, &format!("manifest of {reference}"))?;
        digest.verify("manifest", &stored)?;
        self.read_image(&digest)?;
        let name = reference.to_string();
        self.tag(std::slice::from_ref(&name), &digest, "pull")?;
        self.inspect(&name)
    }

    async fn fetch_blob(
        &self,
        client: &RegistryClient,
        digest: &Sha256,
        size: u64,
        progress: &dyn PullProgress,
    ) -> Result<(), ImageError> {
        if self.has_blob(digest) {
            progress.layer_started(digest, size, size);
            progress.layer_done(digest, true);
            return Ok(());
        }
        let partial: PathBuf = self.partial_dir().join(digest.hex());
        download(client, digest, size, &partial, progress).await?;
        self.commit(&partial, digest)?;
        progress.layer_done(digest, false);
        Ok(())
    }
}

/// The image manifest `reference` designates (through an index if need be), verified: its bytes
/// and digest.
async fn resolve(
    client: &RegistryClient,
    reference: &Reference,
) -> Result<(Vec<u8>, Sha256), ImageError> {
    let mut wanted = reference.manifest_ref();
    let mut pinned = reference.digest.clone();
    for _depth in 0..3 {
        let url = client.manifest_url(&wanted);
        let (body, content_type, header_digest) = client.manifest(&wanted).await?;
        let actual = Sha256::of(&body);
        match (&pinned, header_digest) {
            (Some(want), _) => want.verify(&format!("manifest {url}"), &actual)?,
            (None, Some(header)) => Sha256::parse(&header)
                .map_err(|_| RegistryError::Protocol {
                    url: url.clone(),
                    reason: format!("bad Docker-Content-Digest {header:?}"),
                })?
                .verify(&format!("manifest {url} (Docker-Content-Digest)"), &actual)?,
            (None, None) => {}
        }
        let probe: serde_json::Value =
            serde_json::from_slice(&body).map_err(ImageError::json(format!("manifest {url}")))?;
        let media = probe
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                content_type
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            });
        if probe.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
            return Err(RegistryError::Protocol {
                url,
                reason: "schema 1 manifests are not supported".into(),
            }
            .into());
        }
        if media == OCI_INDEX || media == DOCKER_LIST || probe.get("manifests").is_some() {
            let index: ImageIndex =
                serde_json::from_slice(&body).map_err(ImageError::json(format!("index {url}")))?;
            let chosen = choose_platform(&index, "linux", "amd64").map_err(|reason| {
                RegistryError::Protocol {
                    url: url.clone(),
                    reason,
                }
            })?;
            let digest = Sha256::try_from(chosen.digest())?;
            wanted = digest.to_string();
            pinned = Some(digest);
            continue;
        }
        if probe.get("config").is_none() {
            return Err(RegistryError::Protocol {
                url,
                reason: format!("not an image manifest (media type {media:?})"),
            }
            .into());
        }
        return Ok((body, actual));
    }
    Err(ImageError::Invalid {
        what: reference.to_string(),
        reason: "indexes nested too deep".into(),
    })
}
