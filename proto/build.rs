//! Compiles berth's Mesos `.proto` subset at build time.
//!
//! * `protox` (pure Rust, no `protoc` binary) parses every `.proto` file under
//!   the [`PROTO_ROOTS`] directories of this crate. The crate directory itself
//!   is the include root, so import paths are the upstream ones
//!   (`import "mesos/v1/mesos.proto";`).
//! * The resulting `FileDescriptorSet` is written to
//!   `$OUT_DIR/file_descriptor_set.bin`; the crate loads it into a
//!   `prost_reflect::DescriptorPool` at run time.
//! * `prost-build` generates one Rust file per protobuf package plus
//!   `_includes.rs`, which nests them into modules by package name
//!   (`mesos.v1.scheduler` -> `mesos::v1::scheduler`). Every message gets
//!   `#[derive(prost_reflect::ReflectMessage)]` pointing at the pool.
//!
//! Adding a package (for example the v0 `mesos` package or `mesos.internal`)
//! only takes dropping its `.proto` file under one of the roots.

use std::path::{Path, PathBuf};

use prost::Message as _;
use protox::prost_reflect::prost_types::{DescriptorProto, FileDescriptorSet};

/// Directories (relative to the crate) whose `.proto` files are compiled.
/// Missing directories are skipped.
const PROTO_ROOTS: &[&str] = &["mesos", "messages"];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));

    let mut files = Vec::new();
    for root in PROTO_ROOTS {
        let dir = manifest_dir.join(root);
        println!("cargo:rerun-if-changed={}", dir.display());
        if dir.is_dir() {
            collect_protos(&manifest_dir, &dir, &mut files);
        }
    }
    files.sort();
    for file in &files {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(file).display()
        );
    }

    let fds: FileDescriptorSet =
        protox::compile(&files, [&manifest_dir]).unwrap_or_else(|e| panic!("protox: {e:?}"));

    let fds_path = out_dir.join("file_descriptor_set.bin");
    std::fs::write(&fds_path, fds.encode_to_vec()).expect("write file_descriptor_set.bin");

    let mut config = prost_build::Config::new();
    config.include_file("_includes.rs");
    for file in &fds.file {
        let prefix = file.package().to_string();
        for message in &file.message_type {
            add_reflect_attributes(&mut config, &prefix, message);
        }
    }
    config.compile_fds(fds).expect("prost-build");
}

/// Pushes the `.proto` files under `dir`, as paths relative to `base`.
fn collect_protos(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_protos(base, &path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(base).expect("under crate dir");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Adds the `ReflectMessage` derive to `message` and its nested messages.
///
/// The matcher is the full name without a leading dot: prost-build treats
/// that as a suffix matcher, which for these names matches exactly one type
/// (a leading-dot matcher would also match every nested type).
fn add_reflect_attributes(
    config: &mut prost_build::Config,
    prefix: &str,
    message: &DescriptorProto,
) {
    let full_name = if prefix.is_empty() {
        message.name().to_string()
    } else {
        format!("{prefix}.{}", message.name())
    };
    if message.options.as_ref().is_some_and(|o| o.map_entry()) {
        // Map entries become `HashMap`s, not structs.
        return;
    }
    config.message_attribute(&full_name, "#[derive(::prost_reflect::ReflectMessage)]");
    config.message_attribute(
        &full_name,
        format!(
            r#"#[prost_reflect(descriptor_pool = "crate::DESCRIPTOR_POOL", message_name = "{full_name}")]"#
        ),
    );
    for nested in &message.nested_type {
        add_reflect_attributes(config, &full_name, nested);
    }
}
