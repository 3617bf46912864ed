//! Tag names: human names that point at a manifest digest.

/// Why a tag name is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tag name `{name}`: {reason}")]
#[non_exhaustive]
pub struct TagNameError {
    /// The name given.
    pub name: String,
    /// Which rule it breaks.
    pub reason: &'static str,
}

/// Longest tag name, in bytes.
pub const MAX_TAG_LEN: usize = 128;

/// Where tag `name` of `domain` lives in a catalog: `DOMAIN/NAME`.
///
/// Tags are namespaced by dedup domain, so a tenant who can convert into
/// a shared origin (in its own domain) cannot point another domain's tag
/// at its image: each domain resolves only the tags set in it.
pub fn tag_path(domain: &str, name: &str) -> Result<String, TagNameError> {
    validate_tag_name(name)?;
    if manifest::validate_domain(domain).is_err() {
        return Err(TagNameError {
            name: format!("{domain}/{name}"),
            reason: "the domain must be 1 to 64 characters from A-Z a-z 0-9 . _ -, not starting with `.`",
        });
    }
    Ok(format!("{domain}/{name}"))
}

/// Checks a tag name: 1 to 128 characters from `A-Z a-z 0-9 . _ - : + @`,
/// starting with a letter or digit, without `/`, without `..`, and not
/// starting with `sha256:` (that is how digests are written).
pub fn validate_tag_name(name: &str) -> Result<(), TagNameError> {
    let invalid = |reason| {
        Err(TagNameError {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_TAG_LEN {
        return invalid("must be 1 to 128 characters");
    }
    if name.contains('/') {
        return invalid("must not contain `/`");
    }
    if name.contains("..") {
        return invalid("must not contain `..`");
    }
    if name.starts_with(manifest::ManifestDigest::PREFIX) {
        return invalid("must not start with `sha256:` (that is a digest)");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'+' | b'@'))
    {
        return invalid("only A-Z a-z 0-9 . _ - : + @ are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["debian", "debian:bookworm", "app-v1.2", "x_y+z@1", "9"] {
            validate_tag_name(name).unwrap();
        }
    }

    #[test]
    fn refuses_dangerous_names() {
        let cases = [
            ("", "1 to 128"),
            ("a/b", "`/`"),
            ("../x", "`/`"),
            ("a..b", "`..`"),
            ("..", "`..`"),
            (".hidden", "letter or digit"),
            ("-x", "letter or digit"),
            ("a b", "only"),
            ("a\0b", "only"),
            ("sha256:abc", "digest"),
        ];
        for (name, why) in cases {
            let err = validate_tag_name(name).unwrap_err();
            assert!(err.reason.contains(why), "{name:?}: {err}");
        }
        assert!(validate_tag_name(&"a".repeat(129)).is_err());
        assert!(validate_tag_name(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn tag_paths_are_namespaced_by_a_valid_domain() {
        assert_eq!(tag_path("tenant-a", "app:v1").unwrap(), "tenant-a/app:v1");
        for domain in ["", "..", ".x", "a/b", "a b"] {
            let err = tag_path(domain, "app").unwrap_err();
            assert!(err.reason.contains("domain"), "{domain:?}: {err}");
        }
        assert!(tag_path("default", "a/b").is_err());
    }
}
