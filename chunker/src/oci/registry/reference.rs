//! `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`, named as skopeo names it.

use std::fmt;

use crate::oci::Digest;

/// The registry Docker Hub's short names (`busybox`) point at.
const DOCKER_HUB: &str = "docker.io";

/// Which image in a repository: a tag or a manifest digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `:TAG` (`latest` when none is given).
    Tag(String),
    /// `@sha256:DIGEST`: the manifest (or index) must hash to it.
    Digest(Digest),
}

/// A parsed registry reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]` as written (`docker.io` for short names).
    pub host: String,
    /// The repository path (`library/busybox`, `team/app`).
    pub repository: String,
    /// Tag or digest.
    pub target: Target,
}

/// A reference we cannot read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// Not `docker://…`.
    #[error("{0:?} does not start with docker://")]
    NotDocker(String),
    /// No repository after the host.
    #[error("{0:?} names no repository")]
    NoRepository(String),
    /// A repository path component that is not lowercase alphanumerics and
    /// separators.
    #[error("{reference:?}: repository {repository:?} is not a valid name")]
    BadRepository {
        /// The whole reference.
        reference: String,
        /// The repository part.
        repository: String,
    },
    /// A tag that is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("{reference:?}: tag {tag:?} is not a valid tag")]
    BadTag {
        /// The whole reference.
        reference: String,
        /// The tag part.
        tag: String,
    },
    /// `@` followed by something other than `sha256:<64 hex>`.
    #[error("{reference:?}: {digest:?} is not a sha256 digest")]
    BadDigest {
        /// The whole reference.
        reference: String,
        /// The digest part.
        digest: String,
    },
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_repository(repo: &str) -> bool {
    repo.split('/').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
    })
}

/// Whether the first path component names a registry host, as Docker
/// decides it: it has a dot or a port, or is `localhost`.
fn is_host(part: &str) -> bool {
    part.contains('.') || part.contains(':') || part == "localhost"
}

impl Reference {
    /// Parse `docker://…` (the whole source string).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let rest = s
            .strip_prefix("docker://")
            .ok_or_else(|| ReferenceError::NotDocker(s.into()))?;
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (rest, None),
        };
        // A tag follows the last colon after the last slash (a colon before
        // it is the host's port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        let (host, repository) = match name.split_once('/') {
            Some((h, r)) if is_host(h) => (h.to_owned(), r.to_owned()),
            _ if name.is_empty() => return Err(ReferenceError::NoRepository(s.into())),
            _ if name.contains('/') => (DOCKER_HUB.to_owned(), name.to_owned()),
            _ if is_host(name) => return Err(ReferenceError::NoRepository(s.into())),
            _ => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        if repository.is_empty() {
            return Err(ReferenceError::NoRepository(s.into()));
        }
        if !valid_repository(&repository) {
            return Err(ReferenceError::BadRepository {
                reference: s.into(),
                repository,
            });
        }
        let target = match (tag, digest) {
            (_, Some(d)) => {
                // skopeo refuses `name:tag@digest`; the digest decides.
                let digest = d
                    .strip_prefix("sha256:")
                    .and_then(Digest::from_hex)
                    .ok_or_else(|| ReferenceError::BadDigest {
                        reference: s.into(),
                        digest: d.into(),
                    })?;
                if let Some(tag) = tag {
                    return Err(ReferenceError::BadTag {
                        reference: s.into(),
                        tag: format!("{tag} (a tag and a digest)"),
                    });
                }
                Target::Digest(digest)
            }
            (Some(t), None) if valid_tag(t) => Target::Tag(t.to_owned()),
            (Some(t), None) => {
                return Err(ReferenceError::BadTag {
                    reference: s.into(),
                    tag: t.into(),
                });
            }
            (None, None) => Target::Tag("latest".into()),
        };
        Ok(Reference {
            host,
            repository,
            target,
        })
    }

    /// The host the HTTP API answers on (Docker Hub's API is elsewhere).
    pub fn api_host(&self) -> &str {
        if self.host == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.host
        }
    }

    /// Whether the registry is on this machine (plain HTTP is allowed).
    pub fn is_loopback(&self) -> bool {
        let host = match self.host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => &self.host,
        };
        matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") || host.starts_with("127.")
    }

    /// The tag or digest as the manifests endpoint takes it.
    pub fn target_str(&self) -> String {
        match &self.target {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repository)?;
        match &self.target {
            Target::Tag(t) => write!(f, ":{t}"),
            Target::Digest(d) => write!(f, "@{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_repo_tag_and_digest() {
        let r = Reference::parse("docker://localhost:5000/team/app:v1.2").unwrap();
        assert_eq!(r.host, "localhost:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.target, Target::Tag("v1.2".into()));
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "docker://localhost:5000/team/app:v1.2");

        let hex = "ab".repeat(32);
        let r = Reference::parse(&format!("docker://reg.example.com/app@sha256:{hex}")).unwrap();
        assert_eq!(r.host, "reg.example.com");
        assert_eq!(r.target, Target::Digest(Digest::from_hex(&hex).unwrap()));
        assert!(!r.is_loopback());

        let r = Reference::parse("docker://127.0.0.1:5000/app").unwrap();
        assert_eq!(r.target, Target::Tag("latest".into()));
        assert!(r.is_loopback());

        let r = Reference::parse("docker://busybox:1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "docker://",
            "docker://localhost:5000",
            "docker://localhost:5000/",
            "docker://localhost:5000/App",
            "docker://localhost:5000/app:",
            "docker://localhost:5000/app:-x",
            "docker://localhost:5000/app@sha256:12",
            "docker://localhost:5000/app:v1@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "oci:/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
