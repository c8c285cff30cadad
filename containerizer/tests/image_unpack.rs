//! Real layer unpacking (as root): a multi-layer image with whiteouts stacked with a real overlay
//! mount, metadata preservation, and one test per hostile-layer case, each asserting the error
//! names the entry and nothing was written outside the layer directory.
//!
//! Everything lives under `/tmp/berth-test-<pid>-*` and is removed on every path (TempDir);
//! overlay mounts happen inside `unshare -m` so they vanish with that process.

use std::{
    fs,
    io::Write,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use berth_containerizer::image::{
    Sha256,
    unpack::{Expected, UnpackError, UnpackOptions, unpack_layer},
};

// ---------------------------------------------------------------------------------------------
// crafted tarballs
// ---------------------------------------------------------------------------------------------

/// A tar built entry by entry with raw names (the `tar` crate's path setters refuse `..`, which
/// hostile layers need).
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().expect("gnu header");
            assert!(
                name.len() < gnu.name.len(),
                "test names must fit the header"
            );
            gnu.name[..name.len()].copy_from_slice(name);
        }
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_600_000_000);
        header
    }

    fn raw(&mut self, mut header: tar::Header, data: &[u8]) -> &mut Self {
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        let header = Self::header(name.as_bytes(), tar::EntryType::Directory, 0, mode);
        self.raw(header, b"")
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let header = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            0o644,
        );
        self.raw(header, data)
    }

    fn file_owned(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut header = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            mode,
        );
        header.set_uid(uid);
        header.set_gid(gid);
        self.raw(header, data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut header = Self::header(name.as_bytes(), tar::EntryType::Symlink, 0, 0o777);
        header.set_link_name_literal(target).unwrap();
        self.raw(header, b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut header = Self::header(name.as_bytes(), tar::EntryType::Link, 0, 0o644);
        header.set_link_name_literal(target).unwrap();
        self.raw(header, b"")
    }

    fn device(&mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut header = Self::header(name.as_bytes(), kind, 0, 0o666);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.raw(header, b"")
    }

    fn pax_xattrs(&mut self, name: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> &mut Self {
        let pax: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.builder
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(name, data)
    }

    fn tar(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// fixture: /tmp/berth-test-<pid>-*/{layers/, sentinel/keep}
// ---------------------------------------------------------------------------------------------

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-test-{}-", std::process::id()))
            .tempdir_in("/tmp")
            .unwrap();
        fs::create_dir(dir.path().join("layers")).unwrap();
        fs::create_dir(dir.path().join("sentinel")).unwrap();
        fs::write(dir.path().join("sentinel/keep"), b"untouched").unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn sentinel(&self) -> PathBuf {
        self.path().join("sentinel")
    }

    fn layer(&self, name: &str) -> PathBuf {
        self.path().join("layers").join(name)
    }

    fn unpack(
        &self,
        name: &str,
        blob: &[u8],
        options: &UnpackOptions,
    ) -> Result<PathBuf, UnpackError> {
        self.unpack_expecting(name, blob, &Expected::default(), options)
    }

    fn unpack_expecting(
        &self,
        name: &str,
        blob: &[u8],
        expected: &Expected,
        options: &UnpackOptions,
    ) -> Result<PathBuf, UnpackError> {
        let blob_path = self.path().join(format!("{name}.blob"));
        fs::write(&blob_path, blob).unwrap();
        let dest = self.layer(name);
        let result = unpack_layer(&blob_path, &dest, expected, options);
        fs::remove_file(&blob_path).unwrap();
        result.map(|_| dest)
    }

    /// The unpack failed cleanly: error names `entry`, no layer dir or temp dir is left, the
    /// sentinel dir holds only its file.
    #[track_caller]
    fn assert_rejected(&self, result: Result<PathBuf, UnpackError>, entry: &str) -> String {
        let err = result.expect_err("the hostile layer was accepted");
        let text = err.to_string();
        assert!(
            text.contains(entry),
            "error does not name {entry:?}: {text}"
        );
        let left: Vec<_> = fs::read_dir(self.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind in layers/: {left:?}");
        self.assert_sentinel_untouched();
        text
    }

    #[track_caller]
    fn assert_sentinel_untouched(&self) {
        let names: Vec<_> = fs::read_dir(self.sentinel())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            ["keep"],
            "something was written into the sentinel dir"
        );
        assert_eq!(
            fs::read(self.sentinel().join("keep")).unwrap(),
            b"untouched"
        );
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        if std::env::var("BERTH_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED (BERTH_TEST_ALLOW_SKIP=1): not root");
            return;
        }
        panic!(
            "image_unpack tests need root (lchown, mknod, trusted.* xattrs, overlay mounts); \
             euid is {euid}. Set BERTH_TEST_ALLOW_SKIP=1 to skip."
        );
    }
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let c_key = std::ffi::CString::new(key).unwrap();
    let mut buffer = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and outlive the call; the buffer pointer and
    // length describe a live, writable allocation.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_key.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buffer.truncate(n as usize);
    Some(buffer)
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

// ---------------------------------------------------------------------------------------------
// well-formed layers
// ---------------------------------------------------------------------------------------------

#[test]
fn multi_layer_image_with_whiteouts_stacks_in_overlayfs() {
    let fx = Fixture::new();
    let options = UnpackOptions::default();
    let bottom = Layer::new()
        .dir("etc", 0o755)
        .file("etc/a", b"deleted by the upper layer")
        .file("etc/b", b"kept")
        .dir("opq", 0o755)
        .file("opq/old", b"hidden by the opaque dir")
        .dir("opq/sub", 0o755)
        .file("keep", b"bottom")
        .tar();
    let top = Layer::new()
        .dir("etc", 0o755)
        .file("etc/.wh.a", b"")
        .dir("opq", 0o755)
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"top")
        .file(".wh..wh.plnk", b"")
        .tar();
    // one gzip, one zstd layer: compression is sniffed, not taken from a media type
    let l1 = fx.unpack("l1", &gzip(&bottom), &options).unwrap();
    let l2 = fx
        .unpack("l2", &zstd::encode_all(&top[..], 3).unwrap(), &options)
        .unwrap();

    assert!(
        is_whiteout(&l2.join("etc/a")),
        "etc/.wh.a did not become a 0:0 char device"
    );
    assert!(!l2.join("etc/.wh.a").exists());
    assert_eq!(
        xattr(&l2.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("opq/.wh..wh..opq").exists());
    assert!(!l2.join(".wh..wh.plnk").exists());
    assert_eq!(
        fs::read(l1.join("etc/a")).unwrap(),
        b"deleted by the upper layer"
    );

    // the merged view, in a private mount namespace
    let merged = fx.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={}:{} {} && cd {} && \
         ls -A etc opq && cat keep opq/new",
        l2.display(),
        l1.display(),
        merged.display(),
        merged.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "overlay mount failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "etc:\nb\n\nopq:\nnew\nbottomtop", "merged view");
}

#[test]
fn ownership_modes_mtimes_xattrs_links_are_preserved() {
    let fx = Fixture::new();
    let mut layer = Layer::new();
    layer
        .dir("./", 0o755)
        .dir("bin", 0o750)
        .file_owned("bin/su", b"#!/bin/true\n", 0o4755, 1234, 5678)
        .hardlink("bin/su-again", "bin/su")
        .hardlink("/bin/su-abs", "/bin/su")
        .symlink("bin/sh", "/bin/busybox")
        .symlink("rel", "../../../../etc/shadow")
        .pax_xattrs(
            "data",
            b"x",
            &[
                ("user.berth", b"test"),
                ("security.selinux", b"system_u:object_r:etc_t:s0"),
                ("trusted.overlay.opaque", b"y"),
            ],
        )
        .device("fifo", tar::EntryType::Fifo, 0, 0)
        .dir("sticky", 0o1777);
    let dest = fx
        .unpack("meta", &layer.tar(), &UnpackOptions::default())
        .unwrap();

    let su = fs::metadata(dest.join("bin/su")).unwrap();
    assert_eq!((su.uid(), su.gid()), (1234, 5678));
    assert_eq!(
        su.permissions().mode() & 0o7777,
        0o4755,
        "setuid kept after chown"
    );
    assert_eq!(su.mtime(), 1_600_000_000);
    assert_eq!(su.nlink(), 3);
    assert_eq!(
        fs::metadata(dest.join("bin/su-again")).unwrap().ino(),
        su.ino()
    );
    assert_eq!(
        fs::metadata(dest.join("bin/su-abs")).unwrap().ino(),
        su.ino()
    );

    let bin = fs::metadata(dest.join("bin")).unwrap();
    assert_eq!(bin.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        bin.mtime(),
        1_600_000_000,
        "directory mtime set after its children"
    );
    assert_eq!(
        fs::metadata(dest.join("sticky"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );

    assert_eq!(
        fs::read_link(dest.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::read_link(dest.join("rel")).unwrap(),
        Path::new("../../../../etc/shadow")
    );
    assert_eq!(
        fs::symlink_metadata(dest.join("rel")).unwrap().mtime(),
        1_600_000_000
    );

    assert_eq!(
        xattr(&dest.join("data"), "user.berth").as_deref(),
        Some(&b"test"[..])
    );
    assert_eq!(xattr(&dest.join("data"), "trusted.overlay.opaque"), None);
    assert!(
        fs::symlink_metadata(dest.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn absolute_paths_are_read_as_relative() {
    let fx = Fixture::new();
    let name = format!("/etc/berth-test-abs-{}", std::process::id());
    let dest = fx
        .unpack(
            "abs",
            &Layer::new().file(&name, b"inside").tar(),
            &UnpackOptions::default(),
        )
        .unwrap();
    assert!(!Path::new(&name).exists(), "{name} was written on the host");
    assert_eq!(fs::read(dest.join(&name[1..])).unwrap(), b"inside");
}

#[test]
fn a_symlink_replaced_by_a_directory_is_not_followed() {
    let fx = Fixture::new();
    let sentinel = fx.sentinel().display().to_string();
    let layer = Layer::new()
        .symlink("d", &sentinel)
        .dir("d", 0o755)
        .file("d/new", b"inside the layer")
        .tar();
    let dest = fx
        .unpack("replace", &layer, &UnpackOptions::default())
        .unwrap();
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(dest.join("d/new")).unwrap(), b"inside the layer");
    fx.assert_sentinel_untouched();
}

#[test]
fn devices_only_when_allowed() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("dev", 0o755)
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .tar();
    fx.assert_rejected(
        fx.unpack("dev", &layer, &UnpackOptions::default()),
        "dev/null",
    );
    let allowed = UnpackOptions {
        allow_devices: true,
        ..Default::default()
    };
    let dest = fx.unpack("dev", &layer, &allowed).unwrap();
    let meta = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), libc::makedev(1, 3));
}

#[test]
fn matching_digests_are_accepted() {
    let fx = Fixture::new();
    let tar = Layer::new().file("a", b"a").tar();
    let blob = gzip(&tar);
    let expected = Expected {
        blob: Some(Sha256::of(&blob)),
        diff_id: Some(Sha256::of(&tar)),
    };
    fx.unpack_expecting("ok", &blob, &expected, &UnpackOptions::default())
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// hostile layers: one test each
// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_dotdot_component() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .file("ok", b"x")
        .file("../sentinel/evil", b"escape")
        .tar();
    let text = fx.assert_rejected(
        fx.unpack("dotdot", &layer, &UnpackOptions::default()),
        "../sentinel/evil",
    );
    assert!(text.contains(".."), "{text}");
    let layer = Layer::new().file("a/../../sentinel/evil", b"escape").tar();
    fx.assert_rejected(
        fx.unpack("dotdot", &layer, &UnpackOptions::default()),
        "a/../../sentinel/evil",
    );
}

#[test]
fn hostile_write_through_an_absolute_symlink() {
    let fx = Fixture::new();
    let passwd = fs::read("/etc/passwd").unwrap();
    let layer = Layer::new()
        .symlink("link", "/etc")
        .file("link/passwd", b"root::0:0::/:/bin/sh\n")
        .tar();
    let text = fx.assert_rejected(
        fx.unpack("abslink", &layer, &UnpackOptions::default()),
        "link/passwd",
    );
    assert!(text.contains("symlink"), "{text}");
    assert_eq!(
        fs::read("/etc/passwd").unwrap(),
        passwd,
        "/etc/passwd changed!"
    );
}

#[test]
fn hostile_write_through_a_relative_symlink() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("a", 0o755)
        .symlink("a/up", "../../../sentinel")
        .file("a/up/evil", b"escape")
        .tar();
    fx.assert_rejected(
        fx.unpack("rellink", &layer, &UnpackOptions::default()),
        "a/up/evil",
    );
    // a symlink deeper in the parent chain, with the directory created implicitly after it
    let sentinel = fx.sentinel().display().to_string();
    let layer = Layer::new()
        .symlink("x", &sentinel)
        .file("x/y/evil", b"escape")
        .tar();
    fx.assert_rejected(
        fx.unpack("rellink", &layer, &UnpackOptions::default()),
        "x/y/evil",
    );
}

#[test]
fn hostile_hard_link_outside() {
    let fx = Fixture::new();
    let layer = Layer::new().hardlink("shadow", "/etc/shadow").tar();
    let text = fx.assert_rejected(fx.unpack("hl", &layer, &UnpackOptions::default()), "shadow");
    assert!(text.contains("not an earlier file"), "{text}");
    let layer = Layer::new().hardlink("keep", "../sentinel/keep").tar();
    fx.assert_rejected(fx.unpack("hl", &layer, &UnpackOptions::default()), "keep");
    assert_eq!(fs::metadata(fx.sentinel().join("keep")).unwrap().nlink(), 1);
}

#[test]
fn hostile_hard_link_through_a_symlink() {
    let fx = Fixture::new();
    let sentinel = fx.sentinel().display().to_string();
    // "s/keep" names an entry of the layer only through the symlink: refused
    let layer = Layer::new()
        .symlink("s", &sentinel)
        .hardlink("copy", "s/keep")
        .tar();
    fx.assert_rejected(
        fx.unpack("hlsym", &layer, &UnpackOptions::default()),
        "copy",
    );
}

#[test]
fn hostile_hard_link_to_a_missing_target() {
    let fx = Fixture::new();
    let layer = Layer::new().file("a", b"a").hardlink("b", "nowhere").tar();
    fx.assert_rejected(
        fx.unpack("hlmissing", &layer, &UnpackOptions::default()),
        "nowhere",
    );
}

#[test]
fn hostile_device_node() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .device("sda", tar::EntryType::Block, 8, 0)
        .tar();
    let text = fx.assert_rejected(fx.unpack("blk", &layer, &UnpackOptions::default()), "sda");
    assert!(text.contains("device"), "{text}");
    // a 0:0 char device in the tar is a device too (only whiteouts we make ourselves are 0:0)
    let layer = Layer::new().device("wh", tar::EntryType::Char, 0, 0).tar();
    fx.assert_rejected(fx.unpack("chr", &layer, &UnpackOptions::default()), "wh");
}

#[test]
fn hostile_decompression_bomb() {
    let fx = Fixture::new();
    let zeros = vec![0u8; 32 << 20];
    let blob = gzip(&Layer::new().file("bomb", &zeros).tar());
    assert!(
        blob.len() < (1 << 20),
        "the bomb compresses well ({} bytes)",
        blob.len()
    );
    let options = UnpackOptions {
        max_bytes: 4 << 20,
        ..Default::default()
    };
    let text = fx.assert_rejected(fx.unpack("bomb", &blob, &options), "bomb");
    assert!(text.contains("larger than"), "{text}");
    // many small files adding up past the cap
    let mut layer = Layer::new();
    for i in 0..10 {
        layer.file(&format!("f{i}"), &vec![1u8; 1 << 20]);
    }
    fx.assert_rejected(fx.unpack("bomb", &gzip(&layer.tar()), &options), "f3");
}

#[test]
fn hostile_too_many_entries() {
    let fx = Fixture::new();
    let mut layer = Layer::new();
    for i in 0..50 {
        layer.file(&format!("f{i}"), b"");
    }
    let options = UnpackOptions {
        max_entries: 20,
        ..Default::default()
    };
    let text = fx.assert_rejected(fx.unpack("many", &layer.tar(), &options), "f20");
    assert!(text.contains("more than 20 entries"), "{text}");
}

#[test]
fn hostile_blob_digest_mismatch() {
    let fx = Fixture::new();
    let blob = gzip(&Layer::new().file("a", b"a").tar());
    let expected = Expected {
        blob: Some(Sha256::of(b"something else")),
        diff_id: None,
    };
    let text = fx.assert_rejected(
        fx.unpack_expecting("digest", &blob, &expected, &UnpackOptions::default()),
        &Sha256::of(&blob).to_string(),
    );
    assert!(text.contains("digest mismatch"), "{text}");
}

#[test]
fn hostile_diff_id_mismatch() {
    let fx = Fixture::new();
    let tar = Layer::new().file("a", b"a").tar();
    let expected = Expected {
        blob: None,
        diff_id: Some(Sha256::of(b"another tar")),
    };
    let text = fx.assert_rejected(
        fx.unpack_expecting("diffid", &gzip(&tar), &expected, &UnpackOptions::default()),
        "diff_id",
    );
    assert!(text.contains(&Sha256::of(&tar).to_string()), "{text}");
}

#[test]
fn hostile_truncated_archives() {
    let fx = Fixture::new();
    let tar = Layer::new()
        .file("first", b"1")
        .file("big", &vec![7u8; 10_000])
        .tar();
    // cut in the middle of "big"'s data
    let cut = &tar[..512 + 512 + 512 + 4000];
    let text = fx.assert_rejected(fx.unpack("trunc", cut, &UnpackOptions::default()), "big");
    assert!(text.contains("truncated"), "{text}");
    // cut exactly after "first": no end-of-archive marker
    let cut = &tar[..1024];
    let text = fx.assert_rejected(fx.unpack("trunc", cut, &UnpackOptions::default()), "first");
    assert!(text.contains("truncated"), "{text}");
    // a gzip stream cut short
    let blob = gzip(&tar);
    let cut = &blob[..blob.len() / 2];
    fx.assert_rejected(fx.unpack("trunc", cut, &UnpackOptions::default()), "layer");
    // empty
    fx.assert_rejected(
        fx.unpack("trunc", b"", &UnpackOptions::default()),
        "truncated",
    );
}

#[test]
fn a_directory_replaced_later_in_the_same_layer() {
    let fx = Fixture::new();
    let sentinel = fx.sentinel().display().to_string();
    // "d" is a directory, then a whiteout of itself, and "e" a directory then a symlink out:
    // setting the directories' mtimes at the end must neither fail nor follow the symlink
    let layer = Layer::new()
        .dir("d", 0o755)
        .file(".wh.d", b"")
        .dir("e", 0o755)
        .symlink("e", &sentinel)
        .tar();
    let dest = fx
        .unpack("replaced", &layer, &UnpackOptions::default())
        .unwrap();
    assert!(is_whiteout(&dest.join("d")));
    assert!(
        fs::symlink_metadata(dest.join("e"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    fx.assert_sentinel_untouched();
    assert_ne!(fs::metadata(fx.sentinel()).unwrap().mtime(), 1_600_000_000);
}

#[test]
fn hostile_truncated_zstd() {
    let fx = Fixture::new();
    let tar = Layer::new()
        .file("big", &vec![3u8; 100_000])
        .file("z", b"z")
        .tar();
    let blob = zstd::encode_all(&tar[..], 1).unwrap();
    let cut = &blob[..blob.len() - 8];
    fx.assert_rejected(fx.unpack("zst", cut, &UnpackOptions::default()), "layer");
}
