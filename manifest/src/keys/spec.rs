//! [`ProviderSpec`]: which key provider to use, as the command line and
//! the tests describe it, and [`ProviderSpec::open`] that builds it.

use std::path::PathBuf;
use std::sync::Arc;

use super::{KeyError, KeyProvider, LocalKeyProvider, Pkcs11Config, Pkcs11KeyProvider};

/// A key provider to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSpec {
    /// A local key directory (the default).
    Local {
        /// The key directory.
        dir: PathBuf,
    },
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
}

impl ProviderSpec {
    /// Opens the provider. `create` makes what is missing: a local key
    /// directory and its first key, or the token's master key (generated
    /// inside the token).
    pub fn open(&self, create: bool) -> Result<Arc<dyn KeyProvider>, KeyError> {
        Ok(match (self, create) {
            (ProviderSpec::Local { dir }, true) => Arc::new(LocalKeyProvider::create(dir)?),
            (ProviderSpec::Local { dir }, false) => Arc::new(LocalKeyProvider::open(dir)?),
            (ProviderSpec::Pkcs11(c), true) => Arc::new(Pkcs11KeyProvider::create(c)?),
            (ProviderSpec::Pkcs11(c), false) => Arc::new(Pkcs11KeyProvider::open(c)?),
        })
    }

    /// The provider that wraps under master key `key_id` (`imagefs
    /// rewrap --to`): `mk-…` a key of the local directory, `p11:LABEL` a
    /// key of the token (generated there if `create` and missing).
    pub fn target(&self, key_id: &str, create: bool) -> Result<Arc<dyn KeyProvider>, KeyError> {
        match self {
            ProviderSpec::Pkcs11(c) => {
                let Some(label) = key_id.strip_prefix(super::pkcs11::KEY_ID_PREFIX) else {
                    return Err(KeyError::UnknownMasterKey {
                        key_id: key_id.to_owned(),
                    });
                };
                let config = Pkcs11Config {
                    key_label: label.to_owned(),
                    ..c.clone()
                };
                ProviderSpec::Pkcs11(config).open(create)
            }
            ProviderSpec::Local { dir } => {
                Ok(Arc::new(LocalKeyProvider::open(dir)?.using(key_id)?))
            }
        }
    }
}

/// A shared or boxed provider is a provider: each method forwards.
macro_rules! forward_key_provider {
    ($($wrapper:ident),*) => {$(
        impl<T: KeyProvider + ?Sized> KeyProvider for $wrapper<T> {
            fn wrap_key(&self, data_key: &super::DataKey) -> Result<super::WrappedKey, KeyError> {
                (**self).wrap_key(data_key)
            }
            fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<super::DataKey, KeyError> {
                (**self).unwrap_key(key_id, wrapped)
            }
            fn domain_secret(&self, domain: &str) -> Result<crate::DomainSecret, KeyError> {
                (**self).domain_secret(domain)
            }
            fn current_key_id(&self) -> Result<String, KeyError> {
                (**self).current_key_id()
            }
        }
    )*};
}

forward_key_provider!(Arc, Box);
