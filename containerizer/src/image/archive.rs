//! `berth image load`: images from an OCI image layout directory, an OCI archive (a tar of such a
//! directory) or a docker-archive (`docker save`: `manifest.json`, `<id>.json` configs and layer
//! tars; newer Docker writes an OCI layout plus `manifest.json`, which loads as OCI).
//!
//! Archives are streamed once: every regular file is copied into the blob store while its
//! SHA-256 is computed (files under `blobs/sha256/` must match their name), the small metadata
//! files are kept in memory, and the images are assembled from them afterwards. Blobs the archive
//! carried but no image uses are left to `gc`.
//!
//! Names: an OCI index entry's `io.containerd.image.name` annotation (full reference) wins, then
//! `org.opencontainers.image.ref.name` (a full reference, or just a tag: then the repository is
//! the `name` given to [`ImageStore::load_as`], or `localhost/<file or directory stem>`); a
//! docker-archive's `RepoTags`. An image without any name is stored as `sha256:<manifest>`.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{self, Read},
    path::{Component, Path, PathBuf},
};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use tracing::{debug, warn};

use super::{
    ImageError, ImageInfo, ImageStore,
    digest::Sha256,
    reference::{self, Reference},
    registry::choose_platform,
    store::MAX_DOCUMENT_BYTES,
};

/// OCI manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// One image of a docker-archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Where the archive's files are: a directory, or (for a tar) blobs already copied into the
/// store plus the small files kept in memory.
enum Source {
    Dir(PathBuf),
    Tar {
        small: HashMap<String, Vec<u8>>,
        blobs: HashMap<String, (Sha256, u64)>,
    },
}

/// Normalises an archive-internal path: relative, no `..`.
fn clean(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn is_small(path: &str) -> bool {
    matches!(
        path,
        "index.json" | "oci-layout" | "manifest.json" | "repositories"
    )
}

impl ImageStore {
    /// Loads every image of the OCI layout directory, OCI archive or docker-archive at `path`.
    pub fn load(&self, path: &Path) -> Result<Vec<ImageInfo>, ImageError> {
        self.load_as(path, None)
    }

    /// [`load`](Self::load), naming tag-only images `<name>:<tag>` (and unnamed ones `<name>`).
    pub fn load_as(&self, path: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>, ImageError> {
        let _lock = self.lock_shared()?;
        let meta = fs::metadata(path).map_err(ImageError::io(path, "reading"))?;
        let source = if meta.is_dir() {
            Source::Dir(path.to_path_buf())
        } else {
            self.read_tar(path)?
        };
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.split('.').next().unwrap_or(n).to_ascii_lowercase())
            .unwrap_or_default();
        let repository = match name {
            Some(name) => name.to_string(),
            None => format!("localhost/{}", sanitize(&stem)),
        };
        let loader = Loader {
            store: self,
            source,
            archive: path.display().to_string(),
        };
        let mut stored = Vec::new();
        if loader.exists("index.json") {
            for (names, digest) in loader.load_oci(&repository, name.is_some())? {
                self.tag(&names, &digest, "load")?;
                stored.extend(names);
            }
        } else if loader.exists("manifest.json") {
            for (names, digest) in loader.load_docker(name)? {
                self.tag(&names, &digest, "load")?;
                stored.extend(names);
            }
        } else {
            return Err(ImageError::Invalid {
                what: path.display().to_string(),
                reason: "neither an OCI layout (index.json) nor a docker-archive (manifest.json)"
                    .into(),
            });
        }
        stored.iter().map(|name| self.inspect(name)).collect()
    }

    fn read_tar(&self, path: &Path) -> Result<Source, ImageError> {
        let file = File::open(path).map_err(ImageError::io(path, "opening"))?;
        let mut archive = tar::Archive::new(io::BufReader::with_capacity(256 << 10, file));
        let mut small = HashMap::new();
        let mut blobs = HashMap::new();
        let mut links = Vec::new();
        let tar_err = |e: io::Error| ImageError::Invalid {
            what: path.display().to_string(),
            reason: format!("reading the tar: {e}"),
        };
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean(&raw) else {
                warn!(archive = %path.display(), entry = %raw, "skipping an archive entry with `..`");
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name_bytes() {
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let base = if kind.is_symlink() {
                        Path::new(&name)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(&target)
                    } else {
                        PathBuf::from(&target)
                    };
                    links.push((name, lexical(&base)));
                }
                continue;
            }
            if !kind.is_file() && !kind.is_contiguous() {
                continue;
            }
            if is_small(&name) {
                let mut data = Vec::new();
                (&mut entry)
                    .take(MAX_DOCUMENT_BYTES + 1)
                    .read_to_end(&mut data)
                    .map_err(tar_err)?;
                if data.len() as u64 > MAX_DOCUMENT_BYTES {
                    return Err(ImageError::Invalid {
                        what: format!("{}: {name}", path.display()),
                        reason: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
                    });
                }
                small.insert(name, data);
                continue;
            }
            let expected = name
                .strip_prefix("blobs/sha256/")
                .map(Sha256::from_hex)
                .transpose()?;
            let size = entry.size();
            let what = format!("{}: {name}", path.display());
            let stored = self.ingest(&mut entry, expected.as_ref(), Some(size), &what)?;
            debug!(entry = %name, digest = %stored.0, "archive blob stored");
            blobs.insert(name, stored);
        }
        for (name, target) in links {
            if let Some(stored) = target.as_ref().and_then(|t| blobs.get(t)).cloned() {
                blobs.insert(name, stored);
            }
        }
        Ok(Source::Tar { small, blobs })
    }
}

/// Resolves `.` and `..` without touching the filesystem; `None` when it climbs above the root.
fn lexical(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

fn sanitize(stem: &str) -> String {
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        "image".to_string()
    } else {
        cleaned.to_string()
    }
}

struct Loader<'a> {
    store: &'a ImageStore,
    source: Source,
    archive: String,
}

impl Loader<'_> {
    fn exists(&self, name: &str) -> bool {
        match &self.source {
            Source::Dir(dir) => dir.join(name).is_file(),
            Source::Tar { small, .. } => small.contains_key(name),
        }
    }

    fn small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        match &self.source {
            Source::Dir(dir) => {
                let path = dir.join(name);
                let file = File::open(&path).map_err(ImageError::io(&path, "opening"))?;
                let mut data = Vec::new();
                file.take(MAX_DOCUMENT_BYTES + 1)
                    .read_to_end(&mut data)
                    .map_err(ImageError::io(&path, "reading"))?;
                Ok(data)
            }
            Source::Tar { small, .. } => {
                small.get(name).cloned().ok_or_else(|| ImageError::Invalid {
                    what: self.archive.clone(),
                    reason: format!("no {name}"),
                })
            }
        }
    }

    /// Makes sure the blob `digest` (file `path` of the archive) is in the store.
    fn blob(
        &self,
        path: &str,
        digest: Option<&Sha256>,
        size: Option<u64>,
    ) -> Result<Sha256, ImageError> {
        let what = format!("{}: {path}", self.archive);
        match &self.source {
            Source::Dir(dir) => {
                if let Some(digest) = digest
                    && self.store.has_blob(digest)
                {
                    return Ok(digest.clone());
                }
                let clean = clean(path).ok_or_else(|| ImageError::Invalid {
                    what: what.clone(),
                    reason: "path with `..`".into(),
                })?;
                let full = dir.join(clean);
                let file = match File::open(&full) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(match digest {
                            Some(digest) => ImageError::MissingBlob {
                                digest: digest.clone(),
                                what,
                            },
                            None => ImageError::io(&full, "opening")(e),
                        });
                    }
                    Err(e) => return Err(ImageError::io(&full, "opening")(e)),
                };
                Ok(self
                    .store
                    .ingest(io::BufReader::new(file), digest, size, &what)?
                    .0)
            }
            Source::Tar { blobs, .. } => {
                let (stored, stored_size) = match clean(path).and_then(|p| blobs.get(&p)) {
                    Some(found) => found.clone(),
                    None => match digest {
                        Some(digest) if self.store.has_blob(digest) => return Ok(digest.clone()),
                        Some(digest) => {
                            return Err(ImageError::MissingBlob {
                                digest: digest.clone(),
                                what,
                            });
                        }
                        None => {
                            return Err(ImageError::Invalid {
                                what: self.archive.clone(),
                                reason: format!("no file {path}"),
                            });
                        }
                    },
                };
                if let Some(digest) = digest {
                    digest.verify(&what, &stored)?;
                }
                if let Some(size) = size
                    && size != stored_size
                {
                    return Err(ImageError::Size {
                        what,
                        expected: size,
                        actual: stored_size,
                    });
                }
                Ok(stored)
            }
        }
    }

    fn descriptor_blob(&self, descriptor: &Descriptor, what: &str) -> Result<Sha256, ImageError> {
        let digest = Sha256::try_from(descriptor.digest())?;
        let path = format!("blobs/sha256/{}", digest.hex());
        self.blob(&path, Some(&digest), Some(descriptor.size()))
            .map_err(|e| match e {
                ImageError::MissingBlob { digest, .. } => ImageError::MissingBlob {
                    digest,
                    what: format!("{what}, in {}", self.archive),
                },
                e => e,
            })
    }

    fn load_oci(
        &self,
        repository: &str,
        named: bool,
    ) -> Result<Vec<(Vec<String>, Sha256)>, ImageError> {
        let index: ImageIndex = serde_json::from_slice(&self.small("index.json")?)
            .map_err(ImageError::json(format!("{}: index.json", self.archive)))?;
        let mut out = Vec::new();
        for descriptor in index.manifests() {
            // a layout of several platforms (or with attestation manifests) lists them side by
            // side: only linux/amd64 ones are loaded, so a name never ends up on another platform
            if let Some(platform) = descriptor.platform()
                && (platform.os().to_string() != "linux"
                    || platform.architecture().to_string() != "amd64")
            {
                debug!(digest = %descriptor.digest(), os = %platform.os(),
                       arch = %platform.architecture(), "skipping a manifest of another platform");
                continue;
            }
            let annotations = descriptor.annotations().clone().unwrap_or_default();
            let manifest = self.resolve_manifest(descriptor)?;
            let full = annotations.get("io.containerd.image.name");
            let ref_name = annotations.get("org.opencontainers.image.ref.name");
            let name = match (full, ref_name) {
                (Some(full), _) if !named => Some(Reference::parse(full)?.to_string()),
                (_, Some(tag)) if reference::is_tag(tag) => {
                    Some(Reference::parse(&format!("{repository}:{tag}"))?.to_string())
                }
                (_, Some(other)) if !named => Some(Reference::parse(other)?.to_string()),
                (_, _) if named => Some(Reference::parse(repository)?.to_string()),
                _ => None,
            };
            out.push((vec![name.unwrap_or_else(|| manifest.to_string())], manifest));
        }
        if out.is_empty() {
            return Err(ImageError::Invalid {
                what: self.archive.clone(),
                reason: "index.json lists no linux/amd64 manifest".into(),
            });
        }
        Ok(out)
    }

    /// Stores the manifest `descriptor` points at (choosing linux/amd64 through indexes) with its
    /// config and layers; returns the manifest's digest.
    fn resolve_manifest(&self, descriptor: &Descriptor) -> Result<Sha256, ImageError> {
        let mut descriptor = descriptor.clone();
        for _depth in 0..4 {
            let digest = self.descriptor_blob(&descriptor, "manifest")?;
            let data = self.store.read_document(&digest, "manifest")?;
            let media = descriptor.media_type().to_string();
            let is_index = media == OCI_INDEX || media == DOCKER_LIST || {
                let probe: serde_json::Value = serde_json::from_slice(&data)
                    .map_err(ImageError::json(format!("manifest {digest}")))?;
                probe.get("manifests").is_some()
            };
            if is_index {
                let index: ImageIndex = serde_json::from_slice(&data)
                    .map_err(ImageError::json(format!("index {digest}")))?;
                descriptor = choose_platform(&index, "linux", "amd64")
                    .map_err(|reason| ImageError::Invalid {
                        what: format!("index {digest}"),
                        reason,
                    })?
                    .clone();
                continue;
            }
            let manifest: ImageManifest = serde_json::from_slice(&data)
                .map_err(ImageError::json(format!("manifest {digest}")))?;
            self.descriptor_blob(manifest.config(), "config")?;
            for layer in manifest.layers() {
                self.descriptor_blob(layer, "layer")?;
            }
            self.store.read_image(&digest)?;
            return Ok(digest);
        }
        Err(ImageError::Invalid {
            what: self.archive.clone(),
            reason: "indexes nested too deep".into(),
        })
    }

    fn load_docker(&self, name: Option<&str>) -> Result<Vec<(Vec<String>, Sha256)>, ImageError> {
        let images: Vec<DockerArchiveImage> = serde_json::from_slice(&self.small("manifest.json")?)
            .map_err(ImageError::json(format!("{}: manifest.json", self.archive)))?;
        let mut out = Vec::new();
        for image in images {
            let config = self.blob(&image.config, None, None)?;
            let config_size = fs::metadata(self.store.blob_path(&config))
                .map_err(ImageError::io(self.store.blob_path(&config), "stat"))?
                .len();
            let mut layers = Vec::new();
            for path in &image.layers {
                let digest = self.blob(path, None, None)?;
                let blob_path = self.store.blob_path(&digest);
                let size = fs::metadata(&blob_path)
                    .map_err(ImageError::io(&blob_path, "stat"))?
                    .len();
                let media = layer_media_type(&blob_path)?;
                layers.push(Descriptor::new(MediaType::from(media), size, &digest));
            }
            let config_descriptor = Descriptor::new(MediaType::ImageConfig, config_size, &config);
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_descriptor,
                "layers": layers,
            });
            let data =
                serde_json::to_vec(&manifest).map_err(ImageError::json("synthesised manifest"))?;
            let digest = self.store.write_blob(&data, "synthesised manifest")?;
            self.store.read_image(&digest)?;
            let mut names = Vec::new();
            for tag in image.repo_tags.unwrap_or_default() {
                names.push(Reference::parse(&tag)?.to_string());
            }
            if names.is_empty() {
                names.push(match name {
                    Some(name) => Reference::parse(name)?.to_string(),
                    None => digest.to_string(),
                });
            }
            out.push((names, digest));
        }
        Ok(out)
    }
}

/// The OCI layer media type matching a blob's compression (sniffed).
fn layer_media_type(path: &Path) -> Result<&'static str, ImageError> {
    let mut head = [0u8; 4];
    let mut file = File::open(path).map_err(ImageError::io(path, "opening"))?;
    let n = file
        .read(&mut head)
        .map_err(ImageError::io(path, "reading"))?;
    Ok(if n >= 2 && head[..2] == [0x1f, 0x8b] {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths() {
        assert_eq!(
            clean("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(clean("/manifest.json").as_deref(), Some("manifest.json"));
        assert_eq!(clean("a/../b"), None);
        assert_eq!(clean("."), None);
        assert_eq!(
            lexical(Path::new("abc/../def/layer.tar")).as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(lexical(Path::new("../x")), None);
        assert_eq!(sanitize("My_Image"), "my-image");
        assert_eq!(sanitize("..."), "image");
    }
}
