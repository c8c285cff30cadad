//! Image references as Docker and OCI tools write them, normalised to one canonical form:
//! `busybox` → `docker.io/library/busybox:latest`, `host:5000/team/app@sha256:…` kept as is.
//!
//! Grammar (distribution/reference): `[registry/]repository[:tag][@digest]`. The first path
//! component is a registry when it contains a `.` or a `:` or is `localhost`; otherwise the
//! registry is `docker.io`, where single-component repositories live under `library/`.

use std::fmt;

use super::digest::Sha256;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that name neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host, with its port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// Tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<String>,
    /// Manifest digest, when the reference pins one.
    pub digest: Option<Sha256>,
}

/// A string that is not a valid image reference.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The text that was parsed.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// Parses and normalises `text`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() || text.len() > 4096 {
            return Err(fail("empty or longer than 4096 bytes"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (
                name,
                Some(Sha256::parse(digest).map_err(|e| fail(&e.to_string()))?),
            ),
            None => (text, None),
        };
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest)
            }
            _ => (DEFAULT_REGISTRY.to_string(), name),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(fail("invalid registry host"));
        }
        let (path, tag) = match rest.rsplit_once(':') {
            Some((path, tag)) => (path, Some(tag.to_string())),
            None => (rest, None),
        };
        if let Some(tag) = &tag
            && !is_tag(tag)
        {
            return Err(fail(
                "invalid tag (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})",
            ));
        }
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            return Err(fail(
                "invalid repository (lowercase letters, digits and separators ._- between them)",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to send registry API requests to (`docker.io` is served by
    /// `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on this machine's loopback (plain HTTP allowed).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => self.registry.as_str(),
        };
        host == "localhost" || host == "127.0.0.1" || host == "[::1]" || host.starts_with("127.")
    }

    /// What to ask the registry's manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether `text` is a valid tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub fn is_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_registry(registry: &str) -> bool {
    !registry.is_empty()
        && registry.len() <= 255
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn canon(text: &str) -> String {
        Reference::parse(text).unwrap().to_string()
    }

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(canon("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(canon("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(canon("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            canon("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(canon("index.docker.io/me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(canon("me/app"), "docker.io/me/app:latest");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert!(!r.is_loopback());
        assert_eq!(r.name(), "docker.io/library/busybox");
    }

    #[test]
    fn registries_ports_and_digests() {
        let r = Reference::parse(&format!("127.0.0.1:5000/team/app@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().hex(), HEX);
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert!(r.is_loopback());
        assert_eq!(r.api_host(), "127.0.0.1:5000");

        let r = Reference::parse(&format!("localhost/x:v2@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), format!("localhost/x:v2@sha256:{HEX}"));

        let r = Reference::parse("quay.io/org/app:1.0").unwrap();
        assert_eq!(r.registry, "quay.io");
        assert_eq!(r.manifest_ref(), "1.0");
        assert!(!r.is_loopback());
        // a port-looking tag on a registry-less name is a tag, as in Docker
        assert_eq!(canon("localhost:5000"), "docker.io/library/localhost:5000");
        assert!(Reference::parse("localhost.evil.com/x").unwrap().registry == "localhost.evil.com");
        assert!(
            !Reference::parse("localhost.evil.com/x")
                .unwrap()
                .is_loopback()
        );
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:abc",
            "a//b",
            "a/../b",
            "a/./b",
            "-a",
            "a-",
            "a..b",
            "host:5000/",
            "a b",
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(is_tag("v1.0_rc-2"));
        assert!(!is_tag(".hidden"));
        assert!(!is_tag(&"a".repeat(129)));
    }
}
