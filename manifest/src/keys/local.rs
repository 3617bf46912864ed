//! [`LocalKeyProvider`]: master keys and domain secrets in a key directory.
//!
//! ```text
//! <dir>/                 0700
//!   current              0600  the id of the current master key
//!   master/<id>.key      0600  32 random bytes per master key
//!   retired/<id>.key     0600  retired master keys (unwrap nothing)
//!   domains/             0700  domain secrets, wrapped under a master key
//!                              (see [`DomainSecrets`])
//! ```
//!
//! Master key ids look like `mk-` followed by 16 hex digits. New seals use
//! the current key; every key stays in the directory so manifests sealed
//! before a rotation still unseal, until it is retired (after `imagefs
//! rewrap` moved every manifest to a newer key).

use std::fs;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use super::files::{
    check_private_dir, create_file_once, ensure_private_dir, io_error, read_key_file,
    read_text_file, replace_file,
};
use super::{DataKey, DomainSecrets, KeyError, KeyProvider, WrappedKey};
use crate::convergent::DomainSecret;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of a wrapped data key: nonce, encrypted key, tag.
const WRAPPED_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// A key provider backed by a private directory on the local machine.
#[derive(Debug, Clone)]
pub struct LocalKeyProvider {
    dir: PathBuf,
    /// Wraps under this key instead of `current` (`rewrap --to ID`).
    pinned: Option<String>,
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(KeyError::Random)?;
    Ok(bytes)
}

/// Whether `id` has the shape of a local master key id.
fn is_key_id(id: &str) -> bool {
    id.len() == 19
        && id.starts_with("mk-")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl LocalKeyProvider {
    /// Opens the key directory at `dir`, creating it (mode 0700; missing
    /// parents with default permissions) and a first master key if needed.
    /// An existing directory is checked.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let provider = Self {
            dir: dir.into(),
            pinned: None,
        };
        if let Some(parent) = provider.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
        }
        ensure_private_dir(&provider.dir)?;
        ensure_private_dir(&provider.master_dir())?;
        ensure_private_dir(&provider.domains_dir())?;
        if !provider.current_path().exists() {
            provider.rotate()?;
        }
        provider.current_key_id()?;
        Ok(provider)
    }

    /// Opens an existing key directory, checking its permissions and that
    /// it has a current master key.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let provider = Self {
            dir: dir.into(),
            pinned: None,
        };
        check_private_dir(&provider.dir)?;
        check_private_dir(&provider.master_dir())?;
        check_private_dir(&provider.domains_dir())?;
        provider.current_key_id()?;
        Ok(provider)
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn master_dir(&self) -> PathBuf {
        self.dir.join("master")
    }

    fn domains_dir(&self) -> PathBuf {
        self.dir.join("domains")
    }

    fn retired_dir(&self) -> PathBuf {
        self.dir.join("retired")
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn master_path(&self, key_id: &str) -> PathBuf {
        self.master_dir().join(format!("{key_id}.key"))
    }

    /// This directory's keys, wrapping under `key_id` instead of the
    /// current key (the target of `imagefs rewrap --to`). The key must be
    /// in the directory and not retired.
    pub fn using(&self, key_id: &str) -> Result<Self, KeyError> {
        self.master_key(key_id)?;
        Ok(Self {
            dir: self.dir.clone(),
            pinned: Some(key_id.to_owned()),
        })
    }

    /// Retires master key `key_id`: its file moves to `retired/`, and a
    /// manifest still sealed only under it no longer unseals
    /// ([`KeyError::RetiredMasterKey`]). Domain secrets wrapped under it
    /// are first re-wrapped under the current key. The current key cannot
    /// be retired.
    pub fn retire(&self, key_id: &str) -> Result<(), KeyError> {
        let current = self.current_key_id()?;
        if key_id == current {
            return Err(KeyError::RetireCurrent {
                key_id: key_id.to_owned(),
            });
        }
        self.master_key(key_id)?;
        let current_keys = self.using(&current)?;
        DomainSecrets::open(self.domains_dir())?.rewrap(self, &current_keys)?;
        ensure_private_dir(&self.retired_dir())?;
        let from = self.master_path(key_id);
        let to = self.retired_dir().join(format!("{key_id}.key"));
        fs::rename(&from, &to).map_err(io_error("retire", &from))?;
        Ok(())
    }

    /// The ids of retired master keys, sorted.
    pub fn retired_key_ids(&self) -> Result<Vec<String>, KeyError> {
        let dir = self.retired_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        Self::ids_in(&dir)
    }

    /// The id of the master key new seals use.
    pub fn current_key_id(&self) -> Result<String, KeyError> {
        if let Some(id) = &self.pinned {
            return Ok(id.clone());
        }
        let path = self.current_path();
        if !path.exists() {
            return Err(KeyError::NotInitialized {
                dir: self.dir.clone(),
            });
        }
        let text = read_text_file(&path)?;
        let id = text.trim();
        if !is_key_id(id) {
            return Err(KeyError::BadCurrent {
                path,
                content: id.chars().take(64).collect(),
            });
        }
        Ok(id.to_owned())
    }

    /// The ids of every master key in the directory, sorted.
    pub fn key_ids(&self) -> Result<Vec<String>, KeyError> {
        Self::ids_in(&self.master_dir())
    }

    fn ids_in(dir: &Path) -> Result<Vec<String>, KeyError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
            let entry = entry.map_err(io_error("list", dir))?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".key"))
                && is_key_id(id)
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Creates a new master key and makes it current. Older keys stay, so
    /// manifests sealed under them still unseal. Returns the new id.
    pub fn rotate(&self) -> Result<String, KeyError> {
        loop {
            let id = format!("mk-{}", hex::encode(random::<8>()?));
            if create_file_once(&self.master_path(&id), &random::<32>()?)? {
                replace_file(&self.current_path(), format!("{id}\n").as_bytes())?;
                return Ok(id);
            }
        }
    }

    fn master_key(&self, key_id: &str) -> Result<Aes256Gcm, KeyError> {
        // Ids arrive from sealed manifests; only well-formed ones become
        // file names.
        let path = self.master_path(key_id);
        if is_key_id(key_id) && !path.exists() {
            let retired = self.retired_dir().join(format!("{key_id}.key"));
            if retired.exists() {
                return Err(KeyError::RetiredMasterKey {
                    key_id: key_id.to_owned(),
                });
            }
        }
        if !is_key_id(key_id) || !path.exists() {
            return Err(KeyError::UnknownMasterKey {
                key_id: key_id.to_owned(),
            });
        }
        let bytes = read_key_file::<32>(&path)?;
        Ok(Aes256Gcm::new(&Key::<Aes256Gcm>::from(bytes)))
    }
}

impl KeyProvider for LocalKeyProvider {
    /// Wrapped form: 12-byte random nonce, then AES-256-GCM of the data key
    /// under the master key (with the key id as associated data) and tag.
    fn wrap_key(&self, data_key: &DataKey) -> Result<WrappedKey, KeyError> {
        let key_id = self.current_key_id()?;
        let cipher = self.master_key(&key_id)?;
        let nonce = random::<NONCE_LEN>()?;
        let mut buffer = Vec::with_capacity(WRAPPED_LEN);
        buffer.extend_from_slice(&nonce);
        let mut sealed = data_key.as_bytes().to_vec();
        cipher
            .encrypt_in_place(&Nonce::from(nonce), key_id.as_bytes(), &mut sealed)
            .map_err(|_| KeyError::UnwrapFailed {
                key_id: key_id.clone(),
            })?;
        buffer.extend_from_slice(&sealed);
        Ok(WrappedKey {
            key_id,
            wrapped: buffer,
        })
    }

    fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let cipher = self.master_key(key_id)?;
        let failed = || KeyError::UnwrapFailed {
            key_id: key_id.to_owned(),
        };
        if wrapped.len() != WRAPPED_LEN {
            return Err(failed());
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| failed())?;
        let mut buffer = sealed.to_vec();
        cipher
            .decrypt_in_place(&Nonce::from(nonce), key_id.as_bytes(), &mut buffer)
            .map_err(|_| failed())?;
        let bytes: [u8; 32] = buffer.as_slice().try_into().map_err(|_| failed())?;
        Ok(DataKey::from_bytes(bytes))
    }

    /// Domain secrets live in `domains/`, wrapped under this directory's
    /// master keys (plain `.secret` files of older directories are
    /// wrapped on first use).
    fn domain_secret(&self, domain: &str) -> Result<DomainSecret, KeyError> {
        DomainSecrets::open(self.domains_dir())?.get_or_create(domain, self)
    }

    fn current_key_id(&self) -> Result<String, KeyError> {
        LocalKeyProvider::current_key_id(self)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directory_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("parent/keys");
        let p = LocalKeyProvider::create(&dir).unwrap();
        p.domain_secret("default").unwrap();
        let id = p.current_key_id().unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("master")), 0o700);
        assert_eq!(mode(&dir.join("domains")), 0o700);
        assert_eq!(mode(&dir.join("current")), 0o600);
        assert_eq!(mode(&dir.join(format!("master/{id}.key"))), 0o600);
        assert_eq!(mode(&dir.join("domains/default.wrapped")), 0o600);
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalKeyProvider::create(tmp.path().join("k")).unwrap();
        let key = DataKey::generate().unwrap();
        let wrapped = p.wrap_key(&key).unwrap();
        assert_eq!(wrapped.key_id, p.current_key_id().unwrap());
        assert_eq!(wrapped.wrapped.len(), WRAPPED_LEN);
        assert_eq!(
            p.unwrap_key(&wrapped.key_id, &wrapped.wrapped).unwrap(),
            key
        );

        let mut altered = wrapped.wrapped.clone();
        altered[20] ^= 1;
        assert!(matches!(
            p.unwrap_key(&wrapped.key_id, &altered),
            Err(KeyError::UnwrapFailed { .. })
        ));
        let err = p
            .unwrap_key("mk-0000000000000000", &wrapped.wrapped)
            .unwrap_err();
        assert!(
            matches!(&err, KeyError::UnknownMasterKey { key_id } if key_id == "mk-0000000000000000")
        );
        // An id from a hostile manifest never becomes a path.
        assert!(matches!(
            p.unwrap_key("../../etc/passwd", &wrapped.wrapped),
            Err(KeyError::UnknownMasterKey { .. })
        ));
    }

    #[test]
    fn rotation_keeps_old_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalKeyProvider::create(tmp.path().join("k")).unwrap();
        let key = DataKey::generate().unwrap();
        let old = p.wrap_key(&key).unwrap();
        let new_id = p.rotate().unwrap();
        assert_ne!(new_id, old.key_id);
        assert_eq!(p.current_key_id().unwrap(), new_id);
        assert_eq!(p.key_ids().unwrap().len(), 2);
        assert_eq!(p.wrap_key(&key).unwrap().key_id, new_id);
        // Reopening sees the same state; the old wrap still unwraps.
        let reopened = LocalKeyProvider::open(p.dir()).unwrap();
        assert_eq!(reopened.unwrap_key(&old.key_id, &old.wrapped).unwrap(), key);
    }

    #[test]
    fn domain_secrets_persist_and_differ() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalKeyProvider::create(tmp.path().join("k")).unwrap();
        let a = p.domain_secret("a").unwrap();
        assert_eq!(p.domain_secret("a").unwrap(), a);
        assert_ne!(p.domain_secret("b").unwrap(), a);
        let reopened = LocalKeyProvider::open(p.dir()).unwrap();
        assert_eq!(reopened.domain_secret("a").unwrap(), a);
        assert!(matches!(
            p.domain_secret("../x"),
            Err(KeyError::InvalidDomain { .. })
        ));
    }

    #[test]
    fn loose_permissions_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let p = LocalKeyProvider::create(&dir).unwrap();
        let secret = dir.join("domains/d.wrapped");
        p.domain_secret("d").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        let err = p.domain_secret("d").unwrap_err();
        assert!(matches!(&err, KeyError::Permissions { path, mode: 0o644, .. } if *path == secret));
        assert!(err.to_string().contains("d.wrapped"), "{err}");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = LocalKeyProvider::open(&dir).unwrap_err();
        assert!(matches!(&err, KeyError::Permissions { path, .. } if *path == dir));
    }

    #[test]
    fn wrong_length_key_file_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let p = LocalKeyProvider::create(&dir).unwrap();
        let id = p.current_key_id().unwrap();
        let path = dir.join(format!("master/{id}.key"));
        fs::write(&path, [7u8; 31]).unwrap();
        let err = p.wrap_key(&DataKey::generate().unwrap()).unwrap_err();
        assert!(
            matches!(&err, KeyError::KeyLength { path: p, len: 31, expected: 32 } if *p == path)
        );
        assert!(err.to_string().contains(&format!("{id}.key")), "{err}");
    }

    #[test]
    fn replaced_master_key_fails_authentication() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let p = LocalKeyProvider::create(&dir).unwrap();
        let wrapped = p.wrap_key(&DataKey::generate().unwrap()).unwrap();
        fs::write(
            dir.join(format!("master/{}.key", wrapped.key_id)),
            [9u8; 32],
        )
        .unwrap();
        assert!(matches!(
            p.unwrap_key(&wrapped.key_id, &wrapped.wrapped),
            Err(KeyError::UnwrapFailed { .. })
        ));
    }

    #[test]
    fn open_requires_an_initialized_directory() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            LocalKeyProvider::open(tmp.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn plain_secrets_of_older_directories_are_wrapped_on_first_use() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let p = LocalKeyProvider::create(&dir).unwrap();
        let plain = dir.join("domains/old.secret");
        create_file_once(&plain, &[3u8; 32]).unwrap();
        assert_eq!(p.domain_secret("old").unwrap().as_bytes(), &[3u8; 32]);
        assert!(!plain.exists());
        assert!(dir.join("domains/old.wrapped").exists());
        assert_eq!(p.domain_secret("old").unwrap().as_bytes(), &[3u8; 32]);
    }

    #[test]
    fn retired_keys_are_named_and_domain_secrets_move_first() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalKeyProvider::create(tmp.path().join("k")).unwrap();
        let secret = p.domain_secret("d").unwrap();
        let key = DataKey::generate().unwrap();
        let old = p.wrap_key(&key).unwrap();
        assert!(matches!(
            p.retire(&old.key_id),
            Err(KeyError::RetireCurrent { .. })
        ));
        let new_id = p.rotate().unwrap();
        // Pinned to the old key: wraps under it although it is not current.
        assert_eq!(
            p.using(&old.key_id).unwrap().wrap_key(&key).unwrap().key_id,
            old.key_id
        );
        p.retire(&old.key_id).unwrap();
        assert_eq!(p.key_ids().unwrap(), vec![new_id]);
        assert_eq!(p.retired_key_ids().unwrap(), vec![old.key_id.clone()]);
        let err = p.unwrap_key(&old.key_id, &old.wrapped).unwrap_err();
        assert!(matches!(&err, KeyError::RetiredMasterKey { key_id } if *key_id == old.key_id));
        assert!(err.to_string().contains("retired"), "{err}");
        assert!(p.using(&old.key_id).is_err());
        // The domain secret was re-wrapped before the key went.
        assert_eq!(p.domain_secret("d").unwrap(), secret);
    }
}
