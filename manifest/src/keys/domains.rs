//! [`DomainSecrets`]: each domain's secret stored wrapped under a master
//! key, in a private directory, and unwrapped (by the key provider, inside
//! the token for PKCS#11) only when a convert asks for it. A host that
//! only serves images needs no domain secret and is given none.
//!
//! ```text
//! <dir>/                   0700
//!   <domain>.wrapped       0600  the secret, wrapped (format below)
//!   <domain>.secret        0600  older key directories: the plain secret,
//!                                 wrapped (and removed) on first use
//! ```
//!
//! Wrapped domain secret v1, little-endian:
//!
//! ```text
//! offset  size  field
//!  0       8    magic "IMGFSDS\0"
//!  8       2    version = 1
//! 10       4    domain name length, then the name (UTF-8)
//!  …       4    master key id length, then the id
//!  …       4    wrapped secret length, then the wrapped secret
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use super::files::{
    check_private_dir, create_file_once, ensure_private_dir, io_error, read_key_file,
    read_text_bytes, replace_file,
};
use super::{DataKey, KeyError, KeyProvider, validate_domain};
use crate::convergent::DomainSecret;
use crate::wire::{DecodeError, Reader, Writer};

/// The first 8 bytes of a wrapped domain secret file.
pub const DOMAIN_SECRET_MAGIC: [u8; 8] = *b"IMGFSDS\0";
/// The version this build writes and reads.
pub const DOMAIN_SECRET_VERSION: u16 = 1;
const MAX_FIELD: u32 = 1024;

/// A domain secret as stored: wrapped under master key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDomainSecret {
    /// The domain it belongs to.
    pub domain: String,
    /// The master key it is wrapped under.
    pub key_id: String,
    /// The provider-specific wrapped bytes.
    pub wrapped: Vec<u8>,
}

impl WrappedDomainSecret {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.wrapped.len());
        w.raw(&DOMAIN_SECRET_MAGIC);
        w.u16(DOMAIN_SECRET_VERSION);
        w.bytes_u32(self.domain.as_bytes());
        w.bytes_u32(self.key_id.as_bytes());
        w.bytes_u32(&self.wrapped);
        w.bytes
    }

    /// Parses a file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.magic("wrapped domain secret", DOMAIN_SECRET_MAGIC)?;
        r.version("wrapped domain secret", DOMAIN_SECRET_VERSION)?;
        let domain = r.string("domain", MAX_FIELD)?;
        let key_id = r.string("master key id", MAX_FIELD)?;
        let wrapped = r.bytes_u32("wrapped secret", MAX_FIELD)?.to_vec();
        r.finish()?;
        Ok(Self {
            domain,
            key_id,
            wrapped,
        })
    }
}

/// A directory of wrapped domain secrets.
#[derive(Debug, Clone)]
pub struct DomainSecrets {
    dir: PathBuf,
}

fn random_secret() -> Result<[u8; 32], KeyError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(KeyError::Random)?;
    Ok(bytes)
}

impl DomainSecrets {
    /// Uses `dir`, creating it (0700) if missing, checking it if present.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let dir = dir.into();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
        }
        ensure_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Uses an existing `dir`, checking its permissions.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let dir = dir.into();
        check_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wrapped_path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.wrapped"))
    }

    fn read(&self, path: &Path) -> Result<WrappedDomainSecret, KeyError> {
        let bytes = read_text_bytes(path)?;
        WrappedDomainSecret::decode(&bytes).map_err(|source| KeyError::BadSecretFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    fn unwrap(
        &self,
        path: &Path,
        domain: &str,
        keys: &dyn KeyProvider,
    ) -> Result<DomainSecret, KeyError> {
        let stored = self.read(path)?;
        if stored.domain != domain {
            return Err(KeyError::SecretOfOtherDomain {
                path: path.to_path_buf(),
                found: stored.domain,
            });
        }
        let key = keys.unwrap_key(&stored.key_id, &stored.wrapped)?;
        Ok(DomainSecret::from_bytes(*key.as_bytes()))
    }

    fn wrap(
        domain: &str,
        secret: [u8; 32],
        keys: &dyn KeyProvider,
    ) -> Result<WrappedDomainSecret, KeyError> {
        // A domain secret is wrapped exactly like a data key.
        let wrapped = keys.wrap_key(&DataKey::from_bytes(secret))?;
        Ok(WrappedDomainSecret {
            domain: domain.to_owned(),
            key_id: wrapped.key_id,
            wrapped: wrapped.wrapped,
        })
    }

    /// The secret of `domain`, unwrapped with `keys`; created (random,
    /// wrapped under `keys`' current master key) on first use. A plain
    /// `<domain>.secret` from an older key directory is wrapped and then
    /// removed.
    pub fn get_or_create(
        &self,
        domain: &str,
        keys: &dyn KeyProvider,
    ) -> Result<DomainSecret, KeyError> {
        validate_domain(domain)?;
        let path = self.wrapped_path(domain);
        if !path.exists() {
            let legacy = self.dir.join(format!("{domain}.secret"));
            let secret = if legacy.exists() {
                read_key_file::<32>(&legacy)?
            } else {
                random_secret()?
            };
            // Never replaces: if another process created it first, both
            // read back the one that won.
            create_file_once(&path, &Self::wrap(domain, secret, keys)?.encode())?;
            if legacy.exists() {
                // Only once the wrapped copy is durable.
                fs::remove_file(&legacy).map_err(io_error("remove", &legacy))?;
            }
        }
        self.unwrap(&path, domain, keys)
    }

    /// Every stored wrapped secret, sorted by domain.
    pub fn list(&self) -> Result<Vec<WrappedDomainSecret>, KeyError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))? {
            let entry = entry.map_err(io_error("list", &self.dir))?;
            let name = entry.file_name();
            if let Some(domain) = name.to_str().and_then(|n| n.strip_suffix(".wrapped"))
                && validate_domain(domain).is_ok()
            {
                found.push(self.read(&entry.path())?);
            }
        }
        found.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(found)
    }

    /// Re-wraps every secret not under `to`'s current master key:
    /// unwrapped with `from`, wrapped with `to`, each file replaced
    /// atomically. Returns how many were re-wrapped.
    pub fn rewrap(&self, from: &dyn KeyProvider, to: &dyn KeyProvider) -> Result<u64, KeyError> {
        let target = to.current_key_id()?;
        let mut count = 0;
        for stored in self.list()? {
            if stored.key_id == target {
                continue;
            }
            let path = self.wrapped_path(&stored.domain);
            let secret = self.unwrap(&path, &stored.domain, from)?;
            let rewrapped = Self::wrap(&stored.domain, *secret.as_bytes(), to)?;
            replace_file(&path, &rewrapped.encode())?;
            count += 1;
        }
        Ok(count)
    }
}

impl DomainSecrets {
    /// Moves every secret to `target` under `to`'s current master key:
    /// re-wrapped in place when `target` is this directory, otherwise
    /// copied (unwrapped with `from`, wrapped with `to`) unless `target`
    /// has that domain already. Returns how many were written.
    pub fn move_to(
        &self,
        target: &DomainSecrets,
        from: &dyn KeyProvider,
        to: &dyn KeyProvider,
    ) -> Result<u64, KeyError> {
        if target.dir == self.dir {
            return self.rewrap(from, to);
        }
        let mut count = 0;
        for stored in self.list()? {
            let path = target.wrapped_path(&stored.domain);
            if path.exists() {
                continue;
            }
            let secret = self.unwrap(&self.wrapped_path(&stored.domain), &stored.domain, from)?;
            let wrapped = Self::wrap(&stored.domain, *secret.as_bytes(), to)?;
            count += u64::from(create_file_once(&path, &wrapped.encode())?);
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LocalKeyProvider;

    #[test]
    fn file_round_trip_and_bad_bytes() {
        let stored = WrappedDomainSecret {
            domain: "tenant-a".into(),
            key_id: "p11:master".into(),
            wrapped: vec![1, 2, 3],
        };
        let bytes = stored.encode();
        assert_eq!(WrappedDomainSecret::decode(&bytes).unwrap(), stored);
        assert!(matches!(
            WrappedDomainSecret::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            WrappedDomainSecret::decode(&[0; 16]),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    #[test]
    fn secrets_are_stored_wrapped_and_survive_rewrap() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = LocalKeyProvider::create(tmp.path().join("k")).unwrap();
        let secrets = DomainSecrets::create(tmp.path().join("d")).unwrap();
        let a = secrets.get_or_create("a", &keys).unwrap();
        assert_eq!(secrets.get_or_create("a", &keys).unwrap(), a);
        let file = fs::read(tmp.path().join("d/a.wrapped")).unwrap();
        assert!(
            !file.windows(32).any(|w| w == a.as_bytes()),
            "the plain secret is on disk"
        );
        keys.rotate().unwrap();
        assert_eq!(secrets.rewrap(&keys, &keys).unwrap(), 1);
        assert_eq!(secrets.rewrap(&keys, &keys).unwrap(), 0);
        assert_eq!(
            secrets.list().unwrap()[0].key_id,
            keys.current_key_id().unwrap()
        );
        assert_eq!(secrets.get_or_create("a", &keys).unwrap(), a);
    }

    #[test]
    fn secrets_move_to_another_directory_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let a = LocalKeyProvider::create(tmp.path().join("a")).unwrap();
        let b = LocalKeyProvider::create(tmp.path().join("b")).unwrap();
        let from = DomainSecrets::create(tmp.path().join("from")).unwrap();
        let to = DomainSecrets::create(tmp.path().join("to")).unwrap();
        let secret = from.get_or_create("d", &a).unwrap();
        assert_eq!(from.move_to(&to, &a, &b).unwrap(), 1);
        assert_eq!(from.move_to(&to, &a, &b).unwrap(), 0);
        assert_eq!(to.get_or_create("d", &b).unwrap(), secret);
    }

    #[test]
    fn a_swapped_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = LocalKeyProvider::create(tmp.path().join("k")).unwrap();
        let secrets = DomainSecrets::create(tmp.path().join("d")).unwrap();
        secrets.get_or_create("a", &keys).unwrap();
        fs::copy(
            tmp.path().join("d/a.wrapped"),
            tmp.path().join("d/b.wrapped"),
        )
        .unwrap();
        let err = secrets.get_or_create("b", &keys).unwrap_err();
        assert!(matches!(&err, KeyError::SecretOfOtherDomain { found, .. } if found == "a"));
        assert!(err.to_string().contains("b.wrapped"), "{err}");
    }
}
