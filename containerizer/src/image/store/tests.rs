//! Store tests on fixture trees: OCI layouts, OCI archives and docker-archives written here.

use std::{io::Write, os::unix::fs::FileTypeExt, path::Path};

use serde_json::json;

use super::*;

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

struct Built {
    manifest: Sha256,
    config: Sha256,
    layers: Vec<Sha256>,
}

/// Writes an OCI layout at `dir` with one image of `layers` (uncompressed tars, stored gzipped),
/// named by `ref_name` in index.json.
fn oci_layout(dir: &Path, layers: &[Vec<u8>], ref_name: Option<&str>) -> Built {
    oci_layout_with(dir, layers, ref_name, false)
}

fn oci_layout_with(
    dir: &Path,
    layers: &[Vec<u8>],
    ref_name: Option<&str>,
    bad_diff_id: bool,
) -> Built {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let digest = Sha256::of(data);
        fs::write(blobs.join(digest.hex()), data).unwrap();
        digest
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for tar in layers {
        let blob = gzip(tar);
        let digest = put(&blob);
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.to_string(), "size": blob.len()}));
        let diff_id = if bad_diff_id {
            Sha256::of(b"other")
        } else {
            Sha256::of(tar)
        };
        diff_ids.push(diff_id.to_string());
        layer_digests.push(digest);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/w", "User": "1:2"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    let mut desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": manifest_digest.to_string(), "size": manifest.len()});
    if let Some(name) = ref_name {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    }
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]})).unwrap(),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Built {
        manifest: manifest_digest,
        config: config_digest,
        layers: layer_digests,
    }
}

/// Tars the directory `dir` into `out`.
fn tar_dir(dir: &Path, out: &Path) {
    let mut builder = tar::Builder::new(File::create(out).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
}

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        layer_tar(&[("etc/a", b"a"), ("etc/b", b"b")]),
        layer_tar(&[("etc/.wh.a", b""), ("bin/x", b"x")]),
    ]
}

#[test]
fn load_an_oci_layout_then_list_config_layers_remove_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("busybox");
    let built = oci_layout(&layout, &two_layers(), Some("1.0"));
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    assert_eq!(
        fs::metadata(store.root()).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let loaded = store.load_as(&layout, Some("berth.test/busybox")).unwrap();
    assert_eq!(loaded.len(), 1);
    let info = &loaded[0];
    assert_eq!(info.reference, "berth.test/busybox:1.0");
    assert_eq!(info.digest, built.manifest);
    assert_eq!(info.config, built.config);
    assert_eq!(info.layers, built.layers);
    assert_eq!(
        (info.os.as_str(), info.architecture.as_str()),
        ("linux", "amd64")
    );
    assert_eq!(info.source, "load");

    // without a name, tag-only ref names go under localhost/<dir name>
    let again = store.load(&layout).unwrap();
    assert_eq!(again[0].reference, "localhost/busybox:1.0");
    let names: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(names, ["berth.test/busybox:1.0", "localhost/busybox:1.0"]);

    let config = store.config("berth.test/busybox:1.0").unwrap();
    let process = config.config().as_ref().unwrap();
    assert_eq!(process.cmd().as_deref(), Some(&["/bin/sh".to_string()][..]));
    assert_eq!(process.working_dir().as_deref(), Some("/w"));

    let dirs = store.rootfs_layers("berth.test/busybox:1.0").unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(fs::read(dirs[0].join("etc/a")).unwrap(), b"a");
    assert!(
        fs::symlink_metadata(dirs[1].join("etc/a"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        store.rootfs_layers(&built.manifest.to_string()).unwrap(),
        dirs,
        "by digest"
    );

    // gc keeps everything an image needs
    let report = store.gc().unwrap();
    assert_eq!((report.blobs_removed, report.layers_removed), (0, 0));

    assert_eq!(
        store.remove("berth.test/busybox:1.0").unwrap(),
        ["berth.test/busybox:1.0"]
    );
    assert!(matches!(
        store.inspect("berth.test/busybox:1.0"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(
        store.gc().unwrap().blobs_removed,
        0,
        "still used by localhost/busybox"
    );
    assert_eq!(
        store.remove(&built.manifest.to_string()).unwrap(),
        ["localhost/busybox:1.0"]
    );
    let report = store.gc().unwrap();
    assert_eq!(report.blobs_removed, 4, "manifest, config, 2 layers");
    assert_eq!(report.layers_removed, 2);
    assert_eq!(fs::read_dir(store.blob_dir()).unwrap().count(), 0);
    assert_eq!(fs::read_dir(store.layer_dir()).unwrap().count(), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn load_an_oci_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = oci_layout(
        &layout,
        &two_layers(),
        Some("docker.io/library/busybox:musl"),
    );
    let archive = tmp.path().join("image.oci.tar");
    tar_dir(&layout, &archive);
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let loaded = store.load(&archive).unwrap();
    assert_eq!(loaded[0].reference, "docker.io/library/busybox:musl");
    assert_eq!(loaded[0].digest, built.manifest);
    assert_eq!(store.rootfs_layers("busybox:musl").unwrap().len(), 2);
}

#[test]
fn load_a_docker_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let diff_ids: Vec<String> = layers.iter().map(|l| Sha256::of(l).to_string()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/x"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_name = format!("{}.json", Sha256::of(&config).hex());
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, data).unwrap();
    };
    add(&config_name, &config);
    add("l1/layer.tar", &layers[0]);
    add("l2/layer.tar", &layers[1]);
    add(
        "manifest.json",
        &serde_json::to_vec(&json!([{"Config": config_name, "RepoTags": ["app:v1"],
                                     "Layers": ["l1/layer.tar", "l2/layer.tar"]}]))
        .unwrap(),
    );
    let archive = tmp.path().join("docker.tar");
    fs::write(&archive, builder.into_inner().unwrap()).unwrap();

    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let loaded = store.load(&archive).unwrap();
    assert_eq!(loaded[0].reference, "docker.io/library/app:v1");
    assert_eq!(
        loaded[0].layers,
        [Sha256::of(&layers[0]), Sha256::of(&layers[1])]
    );
    let entrypoint = store.config("app:v1").unwrap().config().clone().unwrap();
    assert_eq!(
        entrypoint.entrypoint().as_deref(),
        Some(&["/bin/x".to_string()][..])
    );
    let dirs = store.rootfs_layers("app:v1").unwrap();
    assert_eq!(fs::read(dirs[1].join("bin/x")).unwrap(), b"x");
}

#[test]
fn a_corrupt_blob_in_a_layout_is_refused_and_nothing_is_tagged() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("bad");
    let built = oci_layout(&layout, &two_layers(), Some("1"));
    let victim = layout.join("blobs/sha256").join(built.layers[1].hex());
    fs::write(&victim, gzip(b"tampered")).unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let err = store.load(&layout).unwrap_err().to_string();
    assert!(
        err.contains("size mismatch") || err.contains("digest mismatch"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    assert!(!store.has_blob(&built.layers[1]));
    assert_eq!(
        fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "temp file left"
    );

    // a layer whose content does not match its config's diff_id loads, but is refused when
    // unpacked, and leaves no layer directory
    let layout = tmp.path().join("diffid");
    oci_layout_with(&layout, &two_layers(), Some("1"), true);
    store.load_as(&layout, Some("x")).unwrap();
    let err = store.rootfs_layers("x:1").unwrap_err().to_string();
    assert!(
        err.contains("diff_id") && err.contains("digest mismatch"),
        "{err}"
    );
    assert_eq!(fs::read_dir(store.layer_dir()).unwrap().count(), 0);
}

#[test]
fn unknown_names_and_bad_references() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    assert!(
        matches!(store.inspect("nothing:here"), Err(ImageError::NotFound(n)) if n == "docker.io/library/nothing:here")
    );
    assert!(matches!(
        store.remove("Bad Name"),
        Err(ImageError::Reference(_))
    ));
    assert!(matches!(
        store.rootfs_layers(&Sha256::of(b"x").to_string()),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn a_leased_image_survives_rm_and_gc_until_released() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("img");
    let built = oci_layout(&layout, &two_layers(), Some("1"));
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    store.load_as(&layout, Some("app")).unwrap();
    let dirs = store.rootfs_layers("app:1").unwrap();
    assert_eq!(store.lease("ctr-1", "app:1").unwrap(), built.manifest);
    assert!(store.lease("../x", "app:1").is_err());
    assert!(store.lease("ctr-2", "other").is_err());

    assert_eq!(store.lease_holders().unwrap(), ["ctr-1"]);

    store.remove("app:1").unwrap();
    let report = store.gc().unwrap();
    assert_eq!((report.blobs_removed, report.layers_removed), (0, 0));
    assert!(dirs.iter().all(|d| d.is_dir()));
    // the leased image stays usable by digest once its name is gone
    assert!(matches!(
        store.rootfs_layers("app:1"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(
        store.rootfs_layers_by_digest(&built.manifest).unwrap(),
        dirs
    );
    assert!(store.config_by_digest(&built.manifest).is_ok());

    store.release("ctr-1").unwrap();
    assert!(store.lease_holders().unwrap().is_empty());
    store.release("ctr-1").unwrap();
    let report = store.gc().unwrap();
    assert_eq!((report.blobs_removed, report.layers_removed), (4, 2));
}

#[test]
fn a_layout_with_several_platforms_loads_linux_amd64_only() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    let amd64 = oci_layout(&layout, &two_layers(), Some("1"));
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut entry = index["manifests"][0].clone();
    entry["platform"] = json!({"os": "linux", "architecture": "amd64"});
    // an arm64 entry pointing at a blob that is not even there: it must not be looked at
    let mut arm = entry.clone();
    arm["digest"] = json!(Sha256::of(b"arm64 manifest").to_string());
    arm["platform"] = json!({"os": "linux", "architecture": "arm64"});
    index["manifests"] = json!([arm, entry]);
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let loaded = store.load_as(&layout, Some("multi")).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].digest, amd64.manifest);
}
