//! Key providers: who wraps manifest data keys and hands out domain secrets.
//!
//! - [`KeyProvider`]: the trait (a KMS would implement it);
//! - [`local`]: [`LocalKeyProvider`], master keys in a private key
//!   directory (the default);
//! - [`pkcs11`]: [`Pkcs11KeyProvider`], master keys inside a PKCS#11 token
//!   (an HSM, a cloud KMS's PKCS#11 library, SoftHSM2 in tests) that never
//!   leave it;
//! - [`spec`]: [`ProviderSpec`], which provider the command line chose,
//!   opened as an `Arc<dyn KeyProvider>`;
//! - [`domains`]: [`DomainSecrets`], domain secrets stored wrapped under a
//!   master key, unwrapped only when a convert asks for one.

pub mod domains;
mod files;
pub mod local;
pub mod pkcs11;
pub mod spec;

use std::fmt;
use std::path::PathBuf;

pub use domains::DomainSecrets;
pub use local::LocalKeyProvider;
pub use pkcs11::{PinSource, Pkcs11Config, Pkcs11Error, Pkcs11KeyProvider, TokenSelector};
pub use spec::ProviderSpec;

use crate::convergent::DomainSecret;

/// Why a key provider could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A file or directory operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file or directory is accessible to group or others.
    #[error("{} has mode {mode:04o}; key material must be mode {expected:04o} (no access for group or others)", path.display())]
    Permissions {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode it should have.
        expected: u32,
    },
    /// A key path is not the kind of file it should be (for example a
    /// symbolic link).
    #[error("{} is not a {expected}", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// A key file has the wrong length.
    #[error("key file {} is {len} bytes, expected {expected}", path.display())]
    KeyLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The expected length.
        expected: usize,
    },
    /// The key directory has no current master key.
    #[error("key directory {} has no current master key (create it with LocalKeyProvider::create)", dir.display())]
    NotInitialized {
        /// The key directory.
        dir: PathBuf,
    },
    /// The `current` file does not name a valid master key id.
    #[error("{} does not name a valid master key id: `{content}`", path.display())]
    BadCurrent {
        /// The `current` file.
        path: PathBuf,
        /// What it contains (trimmed, truncated).
        content: String,
    },
    /// The provider has no master key with this id.
    #[error("unknown master key `{key_id}`: this key provider does not have it")]
    UnknownMasterKey {
        /// The id asked for.
        key_id: String,
    },
    /// A wrapped domain secret file is not well formed.
    #[error("wrapped domain secret {} is damaged: {source}", path.display())]
    BadSecretFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<crate::wire::DecodeError>,
    },
    /// A wrapped domain secret file holds another domain's secret.
    #[error("{} holds the secret of domain `{found}`, not of the domain its name says", path.display())]
    SecretOfOtherDomain {
        /// The file (named after the domain asked for).
        path: PathBuf,
        /// The domain the file names.
        found: String,
    },
    /// The current master key cannot be retired.
    #[error("master key `{key_id}` is the current key and cannot be retired (rotate first)")]
    RetireCurrent {
        /// The key asked for.
        key_id: String,
    },
    /// The master key was retired: it no longer unwraps anything.
    #[error("master key `{key_id}` is retired")]
    RetiredMasterKey {
        /// The id asked for.
        key_id: String,
    },
    /// This provider holds no domain secrets (a host that only serves
    /// images never needs them).
    #[error(
        "no domain secrets are configured for this key provider: cannot get the secret of domain `{domain}` (only convert needs one)"
    )]
    NoDomainSecrets {
        /// The domain asked for.
        domain: String,
    },
    /// A PKCS#11 module, token or key failed; see [`Pkcs11Error`].
    #[error(transparent)]
    Pkcs11(#[from] Box<Pkcs11Error>),
    /// A wrapped data key failed authentication under its master key: the
    /// master key is not the one that wrapped it, or the bytes were altered.
    #[error(
        "data key wrapped under master key `{key_id}` failed authentication (wrong master key or altered bytes)"
    )]
    UnwrapFailed {
        /// The master key id.
        key_id: String,
    },
    /// A domain name is not usable.
    #[error("invalid domain name `{name}`: {reason}")]
    InvalidDomain {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operating system could not provide random bytes.
    #[error("cannot get random bytes: {0}")]
    Random(getrandom::Error),
    /// Another provider (a KMS, say) failed.
    #[error("key provider {provider} failed: {source}")]
    Backend {
        /// Which provider.
        provider: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A random 256-bit key that encrypts one sealed manifest.
/// `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// A data key wrapped (encrypted) under a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The id of the master key that wrapped it.
    pub key_id: String,
    /// The provider-specific wrapped bytes.
    pub wrapped: Vec<u8>,
}

/// Wraps and unwraps manifest data keys under master keys, and holds the
/// per-domain secrets of convergent encryption.
///
/// Object-safe; implementations are shared between threads.
pub trait KeyProvider: Send + Sync {
    /// Wraps `data_key` under the current master key.
    fn wrap_key(&self, data_key: &DataKey) -> Result<WrappedKey, KeyError>;

    /// Unwraps a data key wrapped under master key `key_id`.
    /// An id the provider does not have gives
    /// [`KeyError::UnknownMasterKey`]; a failed authentication gives
    /// [`KeyError::UnwrapFailed`].
    fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError>;

    /// The secret of `domain`, created on first use by providers that can.
    fn domain_secret(&self, domain: &str) -> Result<DomainSecret, KeyError>;

    /// The id of the master key [`KeyProvider::wrap_key`] wraps under.
    fn current_key_id(&self) -> Result<String, KeyError>;
}

/// The domain of `convert` and of every reader when none is given.
pub const DEFAULT_DOMAIN: &str = "default";

/// Checks that a domain name is usable: 1 to 64 characters from
/// `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn validate_domain(name: &str) -> Result<(), KeyError> {
    let invalid = |reason| KeyError::InvalidDomain {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("must be 1 to 64 characters"));
    }
    if name.starts_with('.') {
        return Err(invalid("must not start with `.`"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("only A-Z a-z 0-9 . _ - are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        for ok in ["default", "tenant-a", "a.b_c", "X9"] {
            validate_domain(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(
                matches!(validate_domain(bad), Err(KeyError::InvalidDomain { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn data_keys_are_random_and_redacted() {
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "DataKey(<redacted>)");
    }
}
