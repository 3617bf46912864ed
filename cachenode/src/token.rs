//! [`FleetToken`]: the shared secret that lets a client write stripes to
//! the cache nodes (`PUT`, `DELETE`). Reads stay anonymous: objects are
//! ciphertext named by their hash.
//!
//! The token comes from a file (`fleet_token_file`) or from the
//! environment ([`TOKEN_ENV`]); it is never printed: its `Debug` is
//! redacted, it has no `Display`, and errors name the file, not the
//! content.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable that holds the fleet token when no file is
/// configured.
pub const TOKEN_ENV: &str = "IMAGEFS_FLEET_TOKEN";

/// The fewest bytes a token may have (a guessable token protects
/// nothing).
pub const MIN_TOKEN_LEN: usize = 16;

/// The shared fleet token.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetToken(String);

impl fmt::Debug for FleetToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetToken(<redacted>)")
    }
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read the fleet token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The token is too short or not one line of visible ASCII.
    #[error(
        "the fleet token from {from} is not usable: it must be at least {MIN_TOKEN_LEN} \
         visible ASCII characters on one line"
    )]
    Unusable {
        /// Where it came from (a file path or the variable's name).
        from: String,
    },
}

impl FleetToken {
    /// A token from its text (surrounding whitespace trimmed).
    pub fn new(text: &str, from: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Unusable { from: from.into() });
        }
        Ok(Self(text.to_string()))
    }

    /// The token in `path`.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(&text, &path.display().to_string())
    }

    /// The token in `path` if given, else in [`TOKEN_ENV`] if set, else
    /// none.
    pub fn load(path: Option<&Path>) -> Result<Option<Self>, TokenError> {
        if let Some(path) = path {
            return Self::from_file(path).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) => Self::new(&text, TOKEN_ENV).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The `Authorization` header value that carries it.
    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header value carries this token; the
    /// comparison takes the same time wherever the first difference is.
    pub(crate) fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let want = self.0.as_bytes();
        if given.len() != want.len() {
            return false;
        }
        given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_and_checked() {
        let t = FleetToken::new(" abcdefghijklmnop\n", "test").unwrap();
        assert!(!format!("{t:?}").contains("abcdefgh"));
        assert!(t.admits(Some(b"Bearer abcdefghijklmnop")));
        assert!(!t.admits(Some(b"Bearer abcdefghijklmnoq")));
        assert!(!t.admits(Some(b"abcdefghijklmnop")));
        assert!(!t.admits(None));
        assert!(matches!(
            FleetToken::new("short", "x"),
            Err(TokenError::Unusable { .. })
        ));
        assert!(FleetToken::new("has a space in it!", "x").is_err());
        let err = FleetToken::from_file(Path::new("/nonexistent/token")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/token"));
    }
}
