//! The root filesystem of an image container: an overlay of the image's unpacked layers (top
//! layer first in `lowerdir=`) with the upper and work dirs the containerizer made in the
//! sandbox, so the container's writes land in its sandbox and count against its disk limit.
//!
//! Differences from a native container's plan, as Docker and the Mesos `filesystem/linux`
//! isolator do it for images:
//! - the root is writable (it is the container's own upper dir);
//! - `/tmp` and `/run` are the image's (no tmpfs over them), and no host directory needs hiding:
//!   the host's root is not in the container at all;
//! - `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` are bind-mounted from files generated
//!   in `<sandbox>/.rootfs/etc/` (the host's resolvers, the container's hostname);
//! - the sandbox's `.rootfs` directory is hidden inside the container under an empty read-only
//!   tmpfs, so the workload cannot reach the overlay's upper and work dirs behind its back.

use std::path::{Path, PathBuf};

use berth_executor::{FilesystemPlan, MountSpec, RootfsSource};

use super::{
    FilesystemIsolator, MASKED_PATHS, READONLY_PATHS, SANDBOX_IN_CONTAINER, devices, invalid,
    io_err, kernel_mounts, mount,
};
use crate::{ContainerSpec, IMAGE_ROOTFS_DIR, ImageRootfs, IsolatorError, NetworkMode};

/// The generated files: name in `<sandbox>/.rootfs/etc/` and in the container's `/etc`.
const ETC_FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];

/// Where the generated `/etc` files of a container live on the host.
pub(super) fn etc_dir(sandbox: &Path) -> PathBuf {
    sandbox.join(IMAGE_ROOTFS_DIR).join("etc")
}

impl FilesystemIsolator {
    /// The plan of an image container (checks its volumes and devices; creates nothing).
    pub(super) fn image_plan(
        &self,
        spec: &ContainerSpec,
        image: &ImageRootfs,
    ) -> Result<FilesystemPlan, IsolatorError> {
        if spec.options.user_namespace {
            // The layers belong to the host's root and the store is private to it: the
            // container's mapped root could neither read them nor copy them up.
            return Err(invalid(
                "user namespaces are not supported for image containers yet".into(),
            ));
        }
        if image.layers.is_empty() {
            return Err(invalid("the image has no layers".into()));
        }
        let mut mounts = kernel_mounts(spec);
        let etc = etc_dir(&spec.sandbox);
        for name in ETC_FILES {
            mounts.push(mount(
                &format!("/etc/{name}"),
                "bind",
                Some(&etc.join(name)),
                &["bind", "rw", "nosuid", "nodev", "noexec"],
            ));
        }
        mounts.push(mount(
            SANDBOX_IN_CONTAINER,
            "bind",
            Some(&spec.sandbox),
            &["rbind", "rw", "nosuid", "nodev"],
        ));
        mounts.push(hide_generated_etc());
        mounts.extend(self.volume_mounts(spec)?);
        Ok(FilesystemPlan {
            root: self.rootfs_dir(&spec.id),
            source: RootfsSource::Overlay {
                lower: image.layers.iter().rev().cloned().collect(),
                upper: image.upper.clone(),
                work: image.work.clone(),
            },
            readonly: false,
            mounts,
            devices: devices(&spec.options.devices)?,
            masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Writes the container's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` into
    /// `<sandbox>/.rootfs/etc/`.
    pub(super) fn write_etc_files(&self, spec: &ContainerSpec) -> Result<(), IsolatorError> {
        let dir = etc_dir(&spec.sandbox);
        std::fs::create_dir_all(&dir)
            .map_err(|e| io_err(format!("create {}", dir.display()), e))?;
        let host_etc = spec
            .options
            .resolv_conf
            .clone()
            .unwrap_or_else(|| self.paths.host_root.join("etc/resolv.conf"));
        let host = std::fs::read_to_string(&host_etc).unwrap_or_default();
        let upstream =
            std::fs::read_to_string(self.paths.host_root.join("run/systemd/resolve/resolv.conf"))
                .ok()
                .filter(|_| spec.options.resolv_conf.is_none());
        let files = [
            ("hosts", hosts_file(&spec.hostname)),
            ("hostname", format!("{}\n", spec.hostname)),
            (
                "resolv.conf",
                resolv_conf(&host, upstream.as_deref(), spec.network),
            ),
        ];
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| io_err(format!("write {}", path.display()), e))?;
        }
        Ok(())
    }
}

/// The generated /etc files of a native container (its resolv.conf is the host's, or berth's DNS
/// one for bridge tasks).
pub(super) const NATIVE_ETC_FILES: [&str; 2] = ["hosts", "hostname"];

/// A tmpfs over `<sandbox>/.rootfs` inside the container: the generated /etc files (and an
/// image container's layers' upper dir) are not the task's to see in its sandbox.
pub(super) fn hide_generated_etc() -> MountSpec {
    mount(
        &format!("{SANDBOX_IN_CONTAINER}/{IMAGE_ROOTFS_DIR}"),
        "tmpfs",
        Some(Path::new("tmpfs")),
        &["ro", "nosuid", "nodev", "noexec", "mode=000", "size=4k"],
    )
}

impl FilesystemIsolator {
    /// Writes a native container's `/etc/hosts` and `/etc/hostname` into
    /// `<sandbox>/.rootfs/etc/`.
    pub(super) fn write_native_etc_files(&self, spec: &ContainerSpec) -> Result<(), IsolatorError> {
        let dir = etc_dir(&spec.sandbox);
        std::fs::create_dir_all(&dir)
            .map_err(|e| io_err(format!("create {}", dir.display()), e))?;
        for (name, text) in [
            ("hosts", hosts_file(&spec.hostname)),
            ("hostname", format!("{}\n", spec.hostname)),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| io_err(format!("write {}", path.display()), e))?;
        }
        Ok(())
    }
}

/// `/etc/hosts` of a container named `hostname`.
fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Whether a resolv.conf names only loopback nameservers (a local stub such as
/// systemd-resolved's 127.0.0.53), or none.
fn only_loopback_nameservers(text: &str) -> bool {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .all(|ns| ns.starts_with("127.") || ns == "::1")
}

/// The container's resolv.conf from the host's: as it is, except that a container with its own
/// network namespace cannot reach a loopback stub resolver of the host, so it gets the stub's
/// upstream servers (systemd-resolved's `/run/systemd/resolve/resolv.conf`) when there are any.
fn resolv_conf(host: &str, upstream: Option<&str>, network: NetworkMode) -> String {
    match upstream {
        Some(upstream)
            if network != NetworkMode::Host
                && only_loopback_nameservers(host)
                && !only_loopback_nameservers(upstream) =>
        {
            upstream.to_string()
        }
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_avoids_a_loopback_stub_in_a_private_network() {
        let stub = "nameserver 127.0.0.53\noptions edns0\n";
        let upstream = "nameserver 10.0.0.1\n";
        assert_eq!(
            resolv_conf(stub, Some(upstream), NetworkMode::None),
            upstream
        );
        assert_eq!(resolv_conf(stub, Some(upstream), NetworkMode::Host), stub);
        assert_eq!(resolv_conf(stub, None, NetworkMode::None), stub);
        let real = "search x\nnameserver 192.168.1.1\n";
        assert_eq!(resolv_conf(real, Some(upstream), NetworkMode::None), real);
    }

    #[test]
    fn hosts_names_the_container() {
        let hosts = hosts_file("web-1");
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("127.0.1.1\tweb-1\n"));
    }
}
