//! Kyverno's image info: how Kyverno (`pkg/utils/image.GetImageInfo`)
//! splits an image string into registry, path, name, tag and digest, which
//! is what `{{ images.containers.*.registry }}`-style variables and image
//! verification see.
//!
//! Kyverno first prefixes the default registry (`docker.io` unless
//! configured) when the first component is not a registry, using the same
//! test as distribution's `splitDockerDomain` but WITHOUT the `library/`
//! namespace and WITHOUT rewriting `index.docker.io`; then it parses with the
//! non-normalising `reference.Parse`. So `nginx` is registry `docker.io`,
//! path `nginx` (not `library/nginx`), and `index.docker.io/busybox` keeps
//! registry `index.docker.io`. An image with neither tag nor digest gets tag
//! `latest`.

use std::fmt;

use crate::reference::{parse, ReferenceError, LOCALHOST};

/// Kyverno's default registry.
pub const KYVERNO_DEFAULT_REGISTRY: &str = "docker.io";

/// The two Kyverno configuration values that influence image info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfoConfig {
    /// `defaultRegistry` (default `docker.io`).
    pub default_registry: String,
    /// `enableDefaultRegistryMutation` (default true). When false, an image
    /// that needed the default registry reports an empty registry.
    pub enable_default_registry_mutation: bool,
}

impl Default for ImageInfoConfig {
    fn default() -> Self {
        ImageInfoConfig {
            default_registry: KYVERNO_DEFAULT_REGISTRY.to_string(),
            enable_default_registry_mutation: true,
        }
    }
}

/// Kyverno `ImageInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageInfo {
    pub registry: String,
    /// Last component of the path.
    pub name: String,
    pub path: String,
    /// `latest` when the image had neither tag nor digest; empty when it
    /// had only a digest.
    pub tag: String,
    pub digest: String,
}

impl ImageInfo {
    fn image(&self) -> String {
        if self.registry.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.registry, self.path)
        }
    }

    /// `ImageInfo.String()` (also Kyverno's `reference`): with `@digest`
    /// when there is a digest (the tag is then dropped), else with `:tag`.
    pub fn reference(&self) -> String {
        self.to_string()
    }

    /// `ImageInfo.ReferenceWithTag()`: always `:tag`, even when the tag is
    /// empty (`docker.io/test/centos:` for a digest-only image).
    pub fn reference_with_tag(&self) -> String {
        format!("{}:{}", self.image(), self.tag)
    }
}

impl fmt::Display for ImageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.digest.is_empty() {
            write!(f, "{}:{}", self.image(), self.tag)
        } else {
            write!(f, "{}@{}", self.image(), self.digest)
        }
    }
}

/// Error of [`kyverno_image_info`], with Kyverno's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad image: {full_image}, defaultRegistry: {default_registry}, enableDefaultRegistryMutation: {mutation}: {source}"
)]
pub struct ImageInfoError {
    pub full_image: String,
    pub default_registry: String,
    pub mutation: bool,
    #[source]
    pub source: ReferenceError,
}

impl ImageInfoError {
    /// Stable snake_case label: the underlying reference error's kind.
    pub fn kind(&self) -> &'static str {
        self.source.kind()
    }
}

/// Kyverno `addDefaultRegistry`: prefixes `default_registry/` unless the
/// first component is a registry (contains `.` or `:`, is `localhost`, or
/// has upper case).
pub fn kyverno_add_default_registry(name: &str, default_registry: &str) -> String {
    match name.find('/') {
        Some(i) => {
            let first = &name[..i];
            if !first.contains(['.', ':']) && first != LOCALHOST && first.to_lowercase() == first {
                format!("{default_registry}/{name}")
            } else {
                name.to_string()
            }
        }
        None => format!("{default_registry}/{name}"),
    }
}

/// Kyverno `GetImageInfo` with the default configuration.
pub fn kyverno_image_info(image: &str) -> Result<ImageInfo, ImageInfoError> {
    kyverno_image_info_with(image, &ImageInfoConfig::default())
}

/// Kyverno `GetImageInfo` with an explicit configuration.
pub fn kyverno_image_info_with(
    image: &str,
    cfg: &ImageInfoConfig,
) -> Result<ImageInfo, ImageInfoError> {
    let full = kyverno_add_default_registry(image, &cfg.default_registry);
    let r = parse(&full).map_err(|source| ImageInfoError {
        full_image: full.clone(),
        default_registry: cfg.default_registry.clone(),
        mutation: cfg.enable_default_registry_mutation,
        source,
    })?;
    let name = match r.path.rfind('/') {
        Some(i) => r.path[i + 1..].to_string(),
        None => r.path.clone(),
    };
    let digest = r.digest.clone().unwrap_or_default();
    let mut tag = r.tag.clone().unwrap_or_default();
    if digest.is_empty() && tag.is_empty() {
        tag = "latest".to_string();
    }
    let registry = if full != image && !cfg.enable_default_registry_mutation {
        String::new()
    } else {
        r.domain.clone()
    };
    Ok(ImageInfo {
        registry,
        name,
        path: r.path,
        tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics_and_look_alikes() {
        let i = kyverno_image_info("nginx").unwrap();
        assert_eq!(
            (i.registry.as_str(), i.path.as_str()),
            ("docker.io", "nginx")
        );
        assert_eq!(i.to_string(), "docker.io/nginx:latest");
        let i = kyverno_image_info("public.ecr.aws.evil.com/x").unwrap();
        assert_eq!(i.registry, "public.ecr.aws.evil.com");
        let i = kyverno_image_info("evil.com/public.ecr.aws/x").unwrap();
        assert_eq!(i.registry, "evil.com");
        assert_eq!(i.path, "public.ecr.aws/x");
        assert_eq!(i.name, "x");
        // Docker Hub's legacy name is not canonicalised by Kyverno.
        let i = kyverno_image_info("index.docker.io/busybox").unwrap();
        assert_eq!(i.registry, "index.docker.io");
        // Upper-case first component is a registry; an upper-case path fails.
        assert_eq!(
            kyverno_image_info("EVIL.COM/x").unwrap().registry,
            "EVIL.COM"
        );
        assert_eq!(
            kyverno_image_info("evil.com/X").unwrap_err().kind(),
            "name_contains_uppercase"
        );
        assert!(kyverno_image_info("evil.com/../x").is_err());
        let i = kyverno_image_info("[::1]:5000/x:1").unwrap();
        assert_eq!(i.registry, "[::1]:5000");
        assert_eq!(i.tag, "1");
    }

    #[test]
    fn error_message_like_kyverno() {
        let e = kyverno_image_info("++").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad image: docker.io/++, defaultRegistry: docker.io, enableDefaultRegistryMutation: true: invalid reference format"
        );
    }

    #[test]
    fn weird_inputs_do_not_panic() {
        for s in ["", "/", "a/", ":", "@", "é/x", &"a/".repeat(40_000)] {
            let _ = kyverno_image_info(s);
        }
    }
}
