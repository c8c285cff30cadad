//! The content-addressed image store under `<work-dir>/images/`:
//!
//! ```text
//! images/                 mode 0700 (unpacked layers hold setuid binaries)
//!   lock                  flock: shared while blobs are added or layers unpacked, exclusive for gc
//!   index.lock            flock: exclusive around every read-modify-write of index.json
//!   index.json            reference → manifest digest (written to a temp file, fsync, rename)
//!   blobs/sha256/<hex>    manifests, configs, layer blobs; written to blobs/.tmp, digest
//!                         verified, fsync'd, renamed into place
//!   blobs/.partial/<hex>  interrupted downloads, resumed with an HTTP Range request
//!   layers/<diffid-hex>/  a layer unpacked once (temp dir + rename when complete)
//!   leases/<container>    manifest digest of an image a container uses (kept by gc)
//! ```
//!
//! Blobs are immutable and named by their digest, so concurrent writers of the same blob are
//! harmless (the rename is atomic and idempotent). Removing an image only edits the index;
//! [`ImageStore::gc`] then deletes the blobs and unpacked layers no image needs.

use std::{
    collections::{BTreeMap, HashSet},
    fs::{self, File},
    io::{self, Read, Write},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{
    ImageError,
    digest::{HashingReader, Sha256},
    reference::Reference,
    unpack::{Expected, UnpackOptions, unpack_layer},
};

/// Largest manifest, index or config accepted (the distribution spec suggests 4 MiB).
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// One image of the store, as `berth image ls --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The name it is stored under (a canonical reference, or `sha256:…` when unnamed).
    pub reference: String,
    /// Digest of its manifest.
    pub digest: Sha256,
    /// Digest of its config.
    pub config: Sha256,
    /// Digests of its layer blobs, bottom to top.
    pub layers: Vec<Sha256>,
    /// Bytes of config and layer blobs (compressed, as stored).
    pub size: u64,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// When the image was built, as the config says.
    pub created: Option<String>,
    /// `pull` or `load`.
    pub source: String,
    /// When it entered the store (seconds since the epoch).
    pub added: u64,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Blobs deleted (including partial downloads).
    pub blobs_removed: u64,
    /// Unpacked layer directories deleted.
    pub layers_removed: u64,
    /// Bytes of blobs deleted.
    pub bytes_freed: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    images: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    manifest: Sha256,
    source: String,
    added: u64,
}

/// A held `flock`; released when dropped.
pub(crate) struct Lock(#[allow(dead_code)] File);

/// An image's documents, read from the store.
pub(crate) struct ImageDoc {
    pub(crate) name: String,
    pub(crate) entry_source: String,
    pub(crate) added: u64,
    pub(crate) manifest_digest: Sha256,
    pub(crate) manifest: ImageManifest,
    pub(crate) config_digest: Sha256,
    pub(crate) config: ImageConfiguration,
}

/// The image store. Cheap to open; every method takes the locks it needs, so several processes
/// (the agent and `berth image` commands) can use one store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    unpack_options: UnpackOptions,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` (normally `<work-dir>/images`).
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(root).map_err(ImageError::io(root, "creating"))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(ImageError::io(root, "chmod 0700"))?;
        let store = Self {
            root: root.to_path_buf(),
            unpack_options: UnpackOptions::default(),
        };
        for dir in [
            store.blob_dir(),
            store.partial_dir(),
            store.tmp_dir(),
            store.layer_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(ImageError::io(&dir, "creating"))?;
        }
        Ok(store)
    }

    /// Uses `options` (size and entry caps, devices) when unpacking layers.
    pub fn with_unpack_options(mut self, options: UnpackOptions) -> Self {
        self.unpack_options = options;
        self
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub(crate) fn partial_dir(&self) -> PathBuf {
        self.root.join("blobs/.partial")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("blobs/.tmp")
    }

    fn layer_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// Where the blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Sha256) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Where the layer with uncompressed digest `diff_id` is (or would be) unpacked.
    pub fn layer_path(&self, diff_id: &Sha256) -> PathBuf {
        self.layer_dir().join(diff_id.hex())
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &Sha256) -> bool {
        self.blob_path(digest).is_file()
    }

    fn flock(&self, name: &str, operation: libc::c_int) -> Result<Lock, ImageError> {
        let path = self.root.join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io(&path, "opening the lock file"))?;
        loop {
            // SAFETY: flock on a valid descriptor owned by `file`, which outlives the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
            if rc == 0 {
                return Ok(Lock(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(ImageError::io(&path, "flock")(err));
            }
        }
    }

    /// Held while adding blobs or unpacking layers (excludes only gc).
    pub(crate) fn lock_shared(&self) -> Result<Lock, ImageError> {
        self.flock("lock", libc::LOCK_SH)
    }

    fn lock_exclusive(&self) -> Result<Lock, ImageError> {
        self.flock("lock", libc::LOCK_EX)
    }

    fn lock_index(&self) -> Result<Lock, ImageError> {
        self.flock("index.lock", libc::LOCK_EX)
    }

    /// A new temporary file under `blobs/.tmp`.
    pub(crate) fn temp_file(&self) -> Result<(PathBuf, File), ImageError> {
        let dir = self.tmp_dir();
        for attempt in 0.. {
            let path = dir.join(format!("{}-{}-{attempt}", std::process::id(), nonce()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => continue,
                Err(e) => return Err(ImageError::io(&path, "creating")(e)),
            }
        }
        unreachable!("the loop returns")
    }

    /// Copies `reader` into the store as a blob, verifying `expected` digest and size when given;
    /// returns its digest and size. Nothing is stored when the content does not match.
    pub(crate) fn ingest(
        &self,
        reader: impl Read,
        expected: Option<&Sha256>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Sha256, u64), ImageError> {
        let (tmp, mut file) = self.temp_file()?;
        let result = (|| {
            let limit = expected_size.map_or(u64::MAX, |size| size.saturating_add(1));
            let mut hashing = HashingReader::new(reader.take(limit));
            io::copy(&mut hashing, &mut file).map_err(|e| ImageError::Io {
                path: PathBuf::from(what),
                op: "copying into the store",
                source: e,
            })?;
            let (_, digest, size) = hashing.finish();
            if let Some(expected_size) = expected_size
                && size != expected_size
            {
                return Err(ImageError::Size {
                    what: what.to_string(),
                    expected: expected_size,
                    actual: size,
                });
            }
            if let Some(expected) = expected {
                expected.verify(what, &digest)?;
            }
            file.sync_all().map_err(ImageError::io(&tmp, "fsync"))?;
            Ok((digest, size))
        })();
        match result {
            Ok((digest, size)) => {
                self.commit(&tmp, &digest)?;
                Ok((digest, size))
            }
            Err(err) => {
                let _ = fs::remove_file(&tmp);
                Err(err)
            }
        }
    }

    /// Stores `data` as a blob.
    pub(crate) fn write_blob(&self, data: &[u8], what: &str) -> Result<Sha256, ImageError> {
        Ok(self.ingest(data, None, Some(data.len() as u64), what)?.0)
    }

    /// Renames the verified, fsync'd file `tmp` into place as blob `digest`.
    pub(crate) fn commit(&self, tmp: &Path, digest: &Sha256) -> Result<(), ImageError> {
        let dest = self.blob_path(digest);
        if dest.is_file() {
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        fs::rename(tmp, &dest).map_err(ImageError::io(&dest, "renaming the blob into place"))?;
        sync_dir(&self.blob_dir());
        Ok(())
    }

    /// Reads a small blob (manifest, config), re-verifying its digest.
    pub(crate) fn read_document(&self, digest: &Sha256, what: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob {
                    digest: digest.clone(),
                    what: format!("{what}, in the store"),
                });
            }
            Err(e) => return Err(ImageError::io(&path, "opening")(e)),
        };
        let mut data = Vec::new();
        file.take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(ImageError::io(&path, "reading"))?;
        if data.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(ImageError::Invalid {
                what: format!("{what} {digest}"),
                reason: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
            });
        }
        digest.verify(&format!("{what} blob in the store"), &Sha256::of(&data))?;
        Ok(data)
    }

    /// Parses and checks the manifest and config of an image already in the store.
    pub(crate) fn read_image(
        &self,
        manifest_digest: &Sha256,
    ) -> Result<(ImageManifest, Sha256, ImageConfiguration), ImageError> {
        let data = self.read_document(manifest_digest, "manifest")?;
        let manifest: ImageManifest = serde_json::from_slice(&data)
            .map_err(ImageError::json(format!("manifest {manifest_digest}")))?;
        let config_digest = Sha256::try_from(manifest.config().digest())?;
        let data = self.read_document(&config_digest, "config")?;
        let config: ImageConfiguration = serde_json::from_slice(&data)
            .map_err(ImageError::json(format!("config {config_digest}")))?;
        let diff_ids = config.rootfs().diff_ids().len();
        if diff_ids != manifest.layers().len() {
            return Err(ImageError::Invalid {
                what: format!("manifest {manifest_digest}"),
                reason: format!(
                    "{} layers but its config lists {diff_ids} diff_ids",
                    manifest.layers().len()
                ),
            });
        }
        Ok((manifest, config_digest, config))
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(data) => {
                serde_json::from_slice(&data).map_err(ImageError::json(path.display().to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(ImageError::io(&path, "reading")(e)),
        }
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let path = self.root.join("index.json");
        let tmp = self
            .root
            .join(format!("index.json.tmp-{}", std::process::id()));
        let data = serde_json::to_vec_pretty(index).map_err(ImageError::json("index.json"))?;
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&data)?;
            file.sync_all()
        };
        write().map_err(ImageError::io(&tmp, "writing"))?;
        fs::rename(&tmp, &path).map_err(ImageError::io(&path, "renaming into place"))?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Records `names` → `manifest` in the index (the blobs must be in the store).
    pub(crate) fn tag(
        &self,
        names: &[String],
        manifest: &Sha256,
        source: &str,
    ) -> Result<(), ImageError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        index.schema_version = 1;
        let added = now();
        for name in names {
            info!(image = %name, digest = %manifest, source, "image stored");
            index.images.insert(
                name.clone(),
                IndexEntry {
                    manifest: manifest.clone(),
                    source: source.to_string(),
                    added,
                },
            );
        }
        self.write_index(&index)
    }

    /// Index keys that `name` designates: its canonical reference, or every image whose manifest
    /// digest it is (`sha256:…`).
    fn matching(index: &IndexFile, name: &str) -> Result<Vec<String>, ImageError> {
        if let Ok(digest) = Sha256::parse(name) {
            let keys: Vec<String> = index
                .images
                .iter()
                .filter(|(key, entry)| entry.manifest == digest || *key == name)
                .map(|(key, _)| key.clone())
                .collect();
            return if keys.is_empty() {
                Err(ImageError::NotFound(name.to_string()))
            } else {
                Ok(keys)
            };
        }
        let canonical = Reference::parse(name)?.to_string();
        if index.images.contains_key(&canonical) {
            Ok(vec![canonical])
        } else {
            Err(ImageError::NotFound(canonical))
        }
    }

    pub(crate) fn image_doc(&self, name: &str) -> Result<ImageDoc, ImageError> {
        let index = self.read_index()?;
        let key = Self::matching(&index, name)?.remove(0);
        let entry = &index.images[&key];
        let (manifest, config_digest, config) = self.read_image(&entry.manifest)?;
        Ok(ImageDoc {
            name: key.clone(),
            entry_source: entry.source.clone(),
            added: entry.added,
            manifest_digest: entry.manifest.clone(),
            manifest,
            config_digest,
            config,
        })
    }

    fn info(doc: ImageDoc) -> Result<ImageInfo, ImageError> {
        let layers = doc
            .manifest
            .layers()
            .iter()
            .map(|layer| Sha256::try_from(layer.digest()))
            .collect::<Result<Vec<_>, _>>()?;
        let size = doc.manifest.config().size()
            + doc.manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        Ok(ImageInfo {
            reference: doc.name,
            digest: doc.manifest_digest,
            config: doc.config_digest,
            layers,
            size,
            architecture: doc.config.architecture().to_string(),
            os: doc.config.os().to_string(),
            created: doc.config.created().clone(),
            source: doc.entry_source,
            added: doc.added,
        })
    }

    /// The image `name` (a reference or a manifest digest).
    pub fn inspect(&self, name: &str) -> Result<ImageInfo, ImageError> {
        Self::info(self.image_doc(name)?)
    }

    /// Every image of the store, by name. Images whose documents are unreadable are skipped
    /// with a warning.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for (name, entry) in &index.images {
            let doc = self
                .read_image(&entry.manifest)
                .map(|(manifest, config_digest, config)| ImageDoc {
                    name: name.clone(),
                    entry_source: entry.source.clone(),
                    added: entry.added,
                    manifest_digest: entry.manifest.clone(),
                    manifest,
                    config_digest,
                    config,
                });
            match doc.and_then(Self::info) {
                Ok(info) => out.push(info),
                Err(e) => warn!(image = %name, error = %e, "skipping an unreadable image"),
            }
        }
        Ok(out)
    }

    /// Removes the name `name` (a reference, or a manifest digest: every name of that image).
    /// Blobs stay until [`gc`](Self::gc).
    pub fn remove(&self, name: &str) -> Result<Vec<String>, ImageError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let keys = Self::matching(&index, name)?;
        for key in &keys {
            index.images.remove(key);
            info!(image = %key, "image removed");
        }
        self.write_index(&index)?;
        Ok(keys)
    }

    /// The image config (Entrypoint, Cmd, Env, User, WorkingDir, …) of `name`.
    pub fn config(&self, name: &str) -> Result<ImageConfiguration, ImageError> {
        Ok(self.image_doc(name)?.config)
    }

    /// The unpacked layer directories of `name`, bottom to top (overlayfs wants them reversed in
    /// `lowerdir=`), unpacking the ones not unpacked yet. Blocking: call it from a blocking
    /// thread. A hostile or corrupt layer fails here with an [`ImageError::Unpack`].
    pub fn rootfs_layers(&self, name: &str) -> Result<Vec<PathBuf>, ImageError> {
        let _lock = self.lock_shared()?;
        let doc = self.image_doc(name)?;
        self.unpack_layers(&doc)
    }

    /// [`rootfs_layers`](Self::rootfs_layers) of the image whose manifest is `digest`, named
    /// in the index or not (an image a container leased keeps working after `rm`).
    pub fn rootfs_layers_by_digest(&self, digest: &Sha256) -> Result<Vec<PathBuf>, ImageError> {
        let _lock = self.lock_shared()?;
        let doc = self.doc_by_digest(digest)?;
        self.unpack_layers(&doc)
    }

    /// The image config of the image whose manifest is `digest`, named in the index or not.
    pub fn config_by_digest(&self, digest: &Sha256) -> Result<ImageConfiguration, ImageError> {
        Ok(self.doc_by_digest(digest)?.config)
    }

    fn doc_by_digest(&self, digest: &Sha256) -> Result<ImageDoc, ImageError> {
        let (manifest, config_digest, config) = self.read_image(digest)?;
        Ok(ImageDoc {
            name: digest.to_string(),
            entry_source: String::new(),
            added: 0,
            manifest_digest: digest.clone(),
            manifest,
            config_digest,
            config,
        })
    }

    fn unpack_layers(&self, doc: &ImageDoc) -> Result<Vec<PathBuf>, ImageError> {
        let mut dirs = Vec::new();
        for (layer, diff_id) in doc
            .manifest
            .layers()
            .iter()
            .zip(doc.config.rootfs().diff_ids())
        {
            let blob = Sha256::try_from(layer.digest())?;
            let diff_id = Sha256::parse(diff_id)?;
            let dir = self.layer_path(&diff_id);
            if !dir.is_dir() {
                let path = self.blob_path(&blob);
                if !path.is_file() {
                    return Err(ImageError::MissingBlob {
                        digest: blob,
                        what: format!("layer of {}", doc.name),
                    });
                }
                let expected = Expected {
                    blob: Some(blob.clone()),
                    diff_id: Some(diff_id.clone()),
                };
                let stats = unpack_layer(&path, &dir, &expected, &self.unpack_options).map_err(
                    |source| ImageError::Unpack {
                        layer: blob.clone(),
                        source,
                    },
                )?;
                info!(layer = %blob, diff_id = %diff_id, entries = stats.entries, bytes = stats.tar_bytes, "layer unpacked");
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    fn lease_dir(&self) -> PathBuf {
        self.root.join("leases")
    }

    /// Records that `holder` (a container id: letters, digits, `._-`) uses the image `name`, so
    /// [`gc`](Self::gc) keeps its blobs and unpacked layers even after the name is removed, until
    /// [`release`](Self::release). Returns the image's manifest digest.
    pub fn lease(&self, holder: &str, name: &str) -> Result<Sha256, ImageError> {
        let path = self.lease_path(holder)?;
        let digest = {
            let _lock = self.lock_index()?;
            let index = self.read_index()?;
            let key = Self::matching(&index, name)?.remove(0);
            let digest = index.images[&key].manifest.clone();
            let dir = self.lease_dir();
            fs::create_dir_all(&dir).map_err(ImageError::io(&dir, "creating"))?;
            let tmp = dir.join(format!(".{holder}.tmp-{}", std::process::id()));
            fs::write(&tmp, digest.to_string()).map_err(ImageError::io(&tmp, "writing"))?;
            fs::rename(&tmp, &path).map_err(ImageError::io(&path, "renaming into place"))?;
            digest
        };
        debug!(holder, image = name, digest = %digest, "image leased");
        Ok(digest)
    }

    /// Drops `holder`'s lease (nothing to drop is fine).
    pub fn release(&self, holder: &str) -> Result<(), ImageError> {
        let path = self.lease_path(holder)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::io(&path, "removing")(e))
            }
            _ => Ok(()),
        }
    }

    fn lease_path(&self, holder: &str) -> Result<PathBuf, ImageError> {
        let valid = !holder.is_empty()
            && holder.len() <= 255
            && !holder.starts_with('.')
            && holder
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(ImageError::Invalid {
                what: format!("lease holder {holder:?}"),
                reason: "not a container id (letters, digits, ._-)".into(),
            });
        }
        Ok(self.lease_dir().join(holder))
    }

    /// The holders (container ids) of every lease.
    pub fn lease_holders(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.lease_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        Ok(read_dir(&dir)?
            .into_iter()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|holder| !holder.starts_with('.'))
            .collect())
    }

    /// (holder, manifest digest) of every lease.
    fn leases(&self) -> Result<Vec<(String, Sha256)>, ImageError> {
        let dir = self.lease_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in read_dir(&dir)? {
            let holder = entry.file_name().to_string_lossy().into_owned();
            if holder.starts_with('.') {
                continue;
            }
            let text = fs::read_to_string(entry.path())
                .map_err(ImageError::io(entry.path(), "reading"))?;
            out.push((format!("lease {holder}"), Sha256::parse(text.trim())?));
        }
        Ok(out)
    }

    /// Deletes every blob, partial download and unpacked layer that no image of the index and no
    /// [`lease`](Self::lease) needs. Waits for running pulls, loads and unpacks to finish.
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        let _lock = self.lock_exclusive()?;
        let index = {
            let _index_lock = self.lock_index()?;
            self.read_index()?
        };
        // roots: every image of the index, and every image a container holds a lease on
        let mut roots: Vec<(String, Sha256)> = index
            .images
            .iter()
            .map(|(name, entry)| (name.clone(), entry.manifest.clone()))
            .collect();
        roots.extend(self.leases()?);
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<String> = HashSet::new();
        for (name, manifest_digest) in &roots {
            blobs.insert(manifest_digest.hex().to_string());
            let (manifest, config_digest, config) = match self.read_image(manifest_digest) {
                Ok(image) => image,
                Err(e) => {
                    // keep whatever it might still reference: refuse to guess
                    return Err(ImageError::Invalid {
                        what: name.clone(),
                        reason: format!(
                            "cannot read it to know which blobs it needs ({e}); remove it first"
                        ),
                    });
                }
            };
            blobs.insert(config_digest.hex().to_string());
            for layer in manifest.layers() {
                blobs.insert(Sha256::try_from(layer.digest())?.hex().to_string());
            }
            for diff_id in config.rootfs().diff_ids() {
                layers.insert(Sha256::parse(diff_id)?.hex().to_string());
            }
        }
        let mut report = GcReport::default();
        for dir in [self.blob_dir(), self.partial_dir(), self.tmp_dir()] {
            let keep_dir = dir == self.blob_dir();
            for entry in read_dir(&dir)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep_dir && blobs.contains(&name) {
                    continue;
                }
                let path = entry.path();
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(ImageError::io(&path, "removing"))?;
                debug!(path = %path.display(), "blob removed");
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }
        for entry in read_dir(&self.layer_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if layers.contains(&name) {
                continue;
            }
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(ImageError::io(&path, "removing"))?;
            debug!(path = %path.display(), "unpacked layer removed");
            report.layers_removed += 1;
        }
        info!(
            blobs = report.blobs_removed,
            layers = report.layers_removed,
            bytes = report.bytes_freed,
            "image gc done"
        );
        Ok(report)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, ImageError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(ImageError::io(dir, "listing"))
}

fn sync_dir(dir: &Path) {
    if let Ok(file) = File::open(dir)
        && let Err(e) = file.sync_all()
    {
        warn!(path = %dir.display(), error = %e, "fsync of a store directory failed");
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos << 20) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests;
