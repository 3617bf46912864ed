//! [`Pkcs11KeyProvider`]: master keys inside a PKCS#11 token (an HSM, a
//! cloud KMS's PKCS#11 library; SoftHSM2 in tests).
//!
//! A master key is an AES-256 secret key object generated in the token
//! (`C_GenerateKey`), sensitive and not extractable, so it never leaves
//! it. Data keys (and domain secrets) are wrapped by encrypting them in
//! the token with `CKM_AES_GCM`: a random 12-byte IV, the key id as
//! associated data, a 16-byte tag. The wrapped form is IV ‖ ciphertext ‖
//! tag, as the local provider's.
//!
//! A key's id in a sealed manifest is `p11:<label>`, its `CKA_LABEL`. A
//! retired key is relabelled `retired:<label>`: it stays in the token
//! (an operator may destroy it) but unwraps nothing.
//!
//! The module is loaded and initialised once per process and path (PKCS#11
//! allows one `C_Initialize` per process); each provider keeps one
//! logged-in session behind a mutex.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::{DataKey, DomainSecrets, KeyError, KeyProvider, WrappedKey};
use crate::convergent::DomainSecret;

/// Debian's SoftHSM2 module, the default `--pkcs11-module`.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The prefix of a PKCS#11 master key id.
pub const KEY_ID_PREFIX: &str = "p11:";
/// The label prefix of a retired key.
pub const RETIRED_PREFIX: &str = "retired:";
/// The environment variable `PinSource::Env` reads by default.
pub const PIN_ENV: &str = "IMAGEFS_PKCS11_PIN";

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;
const WRAPPED_LEN: usize = IV_LEN + 32 + 16;

/// Which token to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label.
    Label(String),
    /// The token in this slot.
    Slot(u64),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token `{l}`"),
            TokenSelector::Slot(s) => write!(f, "slot {s}"),
        }
    }
}

/// Where the user PIN comes from. Never a command-line argument, which
/// other users could read from the process list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// The first line of a file (0600).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl PinSource {
    fn read(&self) -> Result<AuthPin, Pkcs11Error> {
        let pin = match self {
            PinSource::File(path) => super::files::read_text_file(path)
                .map_err(|e| Pkcs11Error::PinUnavailable {
                    from: self.describe(),
                    reason: e.to_string(),
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            PinSource::Env(var) => std::env::var(var).map_err(|e| Pkcs11Error::PinUnavailable {
                from: self.describe(),
                reason: e.to_string(),
            })?,
        };
        if pin.is_empty() {
            return Err(Pkcs11Error::PinUnavailable {
                from: self.describe(),
                reason: "it is empty".into(),
            });
        }
        Ok(AuthPin::from(pin))
    }

    fn describe(&self) -> String {
        match self {
            PinSource::File(p) => format!("PIN file {}", p.display()),
            PinSource::Env(v) => format!("environment variable {v}"),
        }
    }
}

/// How to reach a token and which key wraps new data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: PinSource,
    /// The label of the master key new data keys are wrapped under.
    pub key_label: String,
    /// Where wrapped domain secrets are kept; `None` on a host that only
    /// serves images (then [`KeyProvider::domain_secret`] fails).
    pub domain_secrets: Option<PathBuf>,
}

/// What went wrong with a PKCS#11 module, token or key. Names the module,
/// token and key label; never the PIN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The module could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {}: {source}", module.display())]
    Module {
        /// The module path.
        module: PathBuf,
        /// The cause.
        source: CkError,
    },
    /// No token matches.
    #[error("PKCS#11 module {} has no {wanted} (tokens present: {})", module.display(), if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    TokenNotFound {
        /// The module path.
        module: PathBuf,
        /// The token asked for.
        wanted: TokenSelector,
        /// The tokens that are there, as `slot N: label`.
        available: Vec<String>,
    },
    /// The token refused the PIN.
    #[error("PKCS#11 token `{token}` refused the PIN (from the {pin_source})")]
    WrongPin {
        /// The token label.
        token: String,
        /// Where the PIN came from.
        pin_source: String,
    },
    /// The PIN could not be read.
    #[error("cannot read the PKCS#11 PIN from the {from}: {reason}")]
    PinUnavailable {
        /// Where it should come from.
        from: String,
        /// Why it could not be read.
        reason: String,
    },
    /// No master key with this label in the token.
    #[error("PKCS#11 token `{token}` has no master key labelled `{label}` (keys present: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    KeyNotFound {
        /// The token label.
        token: String,
        /// The key label asked for.
        label: String,
        /// The AES keys that are there.
        available: Vec<String>,
    },
    /// A key already has this label.
    #[error("PKCS#11 token `{token}` already has a key labelled `{label}`")]
    KeyExists {
        /// The token label.
        token: String,
        /// The label.
        label: String,
    },
    /// The key exists but may not encrypt or decrypt (its CKA_ENCRYPT or
    /// CKA_DECRYPT is false, or it is not an AES key).
    #[error("PKCS#11 key `{label}` in token `{token}` cannot {action} data keys: {source}")]
    KeyUnusable {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
        /// `wrap` or `unwrap`.
        action: &'static str,
        /// The token's answer.
        source: CkError,
    },
    /// Another PKCS#11 call failed.
    #[error("PKCS#11 token `{token}` (module {}): cannot {action}: {source}", module.display())]
    Call {
        /// The module path.
        module: PathBuf,
        /// The token label.
        token: String,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: CkError,
    },
}

impl From<Pkcs11Error> for KeyError {
    fn from(e: Pkcs11Error) -> Self {
        KeyError::Pkcs11(Box::new(e))
    }
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// The process's context for `module`, loaded and initialised once.
fn context(module: &Path) -> Result<Pkcs11, Pkcs11Error> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let failed = |source| Pkcs11Error::Module {
        module: module.to_path_buf(),
        source,
    };
    let ctx = Pkcs11::new(module).map_err(failed)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => return Err(failed(e)),
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Master keys in a PKCS#11 token.
pub struct Pkcs11KeyProvider {
    module: PathBuf,
    token: String,
    key_label: String,
    session: Mutex<Session>,
    domains: Option<DomainSecrets>,
}

impl std::fmt::Debug for Pkcs11KeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyProvider")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<(Slot, String), Pkcs11Error> {
    let call = |action, source| Pkcs11Error::Call {
        module: config.module.clone(),
        token: config.token.to_string(),
        action,
        source,
    };
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| call("list slots", e))?;
    let mut available = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| call("read token info", e))?;
        let label = info.label().trim_end().to_owned();
        let matches = match &config.token {
            TokenSelector::Label(l) => *l == label,
            TokenSelector::Slot(id) => *id == slot.id(),
        };
        if matches {
            return Ok((slot, label));
        }
        available.push(format!("slot {}: `{label}`", slot.id()));
    }
    Err(Pkcs11Error::TokenNotFound {
        module: config.module.clone(),
        wanted: config.token.clone(),
        available,
    })
}

impl Pkcs11KeyProvider {
    /// Loads the module, finds the token, logs in, and checks that the
    /// master key `config.key_label` is there and can wrap.
    pub fn open(config: &Pkcs11Config) -> Result<Self, KeyError> {
        let provider = Self::connect(config)?;
        provider.check_key(&config.key_label)?;
        Ok(provider)
    }

    /// [`Pkcs11KeyProvider::open`], first generating the master key in the
    /// token if it has none with that label.
    pub fn create(config: &Pkcs11Config) -> Result<Self, KeyError> {
        let provider = Self::connect(config)?;
        if provider.find_key(&config.key_label)?.is_none() {
            provider.generate_key(&config.key_label)?;
        }
        provider.check_key(&config.key_label)?;
        Ok(provider)
    }

    fn connect(config: &Pkcs11Config) -> Result<Self, KeyError> {
        let ctx = context(&config.module)?;
        let (slot, token) = find_slot(&ctx, config)?;
        let call = |action, source| Pkcs11Error::Call {
            module: config.module.clone(),
            token: token.clone(),
            action,
            source,
        };
        let pin = config.pin.read()?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| call("open a session", e))?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            // Login is per application and token: another provider of
            // this process logged in already.
            Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => {}
            Err(e) if rv(&e) == Some(RvError::PinIncorrect) => {
                return Err(Pkcs11Error::WrongPin {
                    token,
                    pin_source: config.pin.describe(),
                }
                .into());
            }
            Err(e) => return Err(call("log in", e).into()),
        }
        let domains = match &config.domain_secrets {
            Some(dir) => Some(DomainSecrets::create(dir)?),
            None => None,
        };
        Ok(Self {
            module: config.module.clone(),
            token,
            key_label: config.key_label.clone(),
            session: Mutex::new(session),
            domains,
        })
    }

    /// This provider, wrapping under the key labelled `label` (which must
    /// exist) instead; same token and session settings.
    pub fn using(config: &Pkcs11Config, label: &str) -> Result<Self, KeyError> {
        Self::open(&Pkcs11Config {
            key_label: label.to_owned(),
            ..config.clone()
        })
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        // A panic elsewhere cannot leave the session half-used: every
        // operation here is a single call.
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn call(&self, action: &'static str) -> impl FnOnce(CkError) -> KeyError + '_ {
        move |source| {
            Pkcs11Error::Call {
                module: self.module.clone(),
                token: self.token.clone(),
                action,
                source,
            }
            .into()
        }
    }

    fn find_label(&self, label: &str) -> Result<Option<ObjectHandle>, KeyError> {
        let found = self
            .session()
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(self.call("find a key"))?;
        Ok(found.into_iter().next())
    }

    fn find_key(&self, label: &str) -> Result<Option<ObjectHandle>, KeyError> {
        self.find_label(label)
    }

    /// The labels of the token's secret keys, sorted; retired ones keep
    /// their `retired:` prefix.
    pub fn key_labels(&self) -> Result<Vec<String>, KeyError> {
        let session = self.session();
        let handles = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(self.call("list keys"))?;
        let mut labels = Vec::new();
        for handle in handles {
            let attrs = session
                .get_attributes(handle, &[AttributeType::Label])
                .map_err(self.call("read a key's label"))?;
            for attr in attrs {
                if let Attribute::Label(bytes) = attr {
                    labels.push(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
        }
        labels.sort();
        Ok(labels)
    }

    fn key_handle(&self, label: &str) -> Result<ObjectHandle, KeyError> {
        if let Some(handle) = self.find_key(label)? {
            return Ok(handle);
        }
        if self
            .find_label(&format!("{RETIRED_PREFIX}{label}"))?
            .is_some()
        {
            return Err(KeyError::RetiredMasterKey {
                key_id: format!("{KEY_ID_PREFIX}{label}"),
            });
        }
        Err(Pkcs11Error::KeyNotFound {
            token: self.token.clone(),
            label: label.to_owned(),
            available: self
                .key_labels()?
                .into_iter()
                .filter(|l| !l.starts_with(RETIRED_PREFIX))
                .collect(),
        }
        .into())
    }

    /// Generates an AES-256 master key labelled `label` in the token:
    /// sensitive, never extractable, for encrypting and decrypting only.
    /// Returns its key id.
    pub fn generate_key(&self, label: &str) -> Result<String, KeyError> {
        if self.find_label(label)?.is_some() {
            return Err(Pkcs11Error::KeyExists {
                token: self.token.clone(),
                label: label.to_owned(),
            }
            .into());
        }
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        self.session()
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(self.call("generate a master key"))?;
        Ok(format!("{KEY_ID_PREFIX}{label}"))
    }

    /// Retires the key labelled `label`: relabelled `retired:<label>`, it
    /// unwraps nothing, and a manifest sealed only under it gives
    /// [`KeyError::RetiredMasterKey`]. Domain secrets wrapped under it are
    /// re-wrapped under this provider's key first. The provider's own key
    /// cannot be retired.
    pub fn retire(&self, label: &str) -> Result<(), KeyError> {
        let key_id = format!("{KEY_ID_PREFIX}{label}");
        if label == self.key_label {
            return Err(KeyError::RetireCurrent { key_id });
        }
        let handle = self.key_handle(label)?;
        if let Some(domains) = &self.domains {
            domains.rewrap(self, self)?;
        }
        self.session()
            .update_attributes(
                handle,
                &[Attribute::Label(
                    format!("{RETIRED_PREFIX}{label}").into_bytes(),
                )],
            )
            .map_err(self.call("relabel a retired key"))?;
        Ok(())
    }

    /// Fails unless key `label` exists and may encrypt and decrypt.
    fn check_key(&self, label: &str) -> Result<(), KeyError> {
        let handle = self.key_handle(label)?;
        let attrs = self
            .session()
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                ],
            )
            .map_err(self.call("read a key's attributes"))?;
        for attr in attrs {
            let (allowed, action) = match attr {
                Attribute::KeyType(t) => (t == KeyType::AES, "wrap or unwrap"),
                Attribute::Encrypt(b) => (b, "wrap"),
                Attribute::Decrypt(b) => (b, "unwrap"),
                _ => continue,
            };
            if !allowed {
                return Err(Pkcs11Error::KeyUnusable {
                    token: self.token.clone(),
                    label: label.to_owned(),
                    action,
                    source: CkError::Pkcs11(
                        RvError::KeyFunctionNotPermitted,
                        Function::GetAttributeValue,
                    ),
                }
                .into());
            }
        }
        Ok(())
    }

    fn unusable(&self, label: &str, action: &'static str, source: CkError) -> KeyError {
        match rv(&source) {
            Some(
                RvError::KeyFunctionNotPermitted
                | RvError::KeyTypeInconsistent
                | RvError::MechanismInvalid,
            ) => Pkcs11Error::KeyUnusable {
                token: self.token.clone(),
                label: label.to_owned(),
                action,
                source,
            }
            .into(),
            _ => Pkcs11Error::Call {
                module: self.module.clone(),
                token: self.token.clone(),
                action,
                source,
            }
            .into(),
        }
    }
}

impl KeyProvider for Pkcs11KeyProvider {
    fn wrap_key(&self, data_key: &DataKey) -> Result<WrappedKey, KeyError> {
        let key_id = format!("{KEY_ID_PREFIX}{}", self.key_label);
        let handle = self.key_handle(&self.key_label)?;
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(KeyError::Random)?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, key_id.as_bytes(), TAG_BITS.into())
            .map_err(self.call("set up AES-GCM"))?;
        let sealed = self
            .session()
            .encrypt(&Mechanism::AesGcm(params), handle, data_key.as_bytes())
            .map_err(|e| self.unusable(&self.key_label, "wrap", e))?;
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.extend_from_slice(&iv);
        wrapped.extend_from_slice(&sealed);
        Ok(WrappedKey { key_id, wrapped })
    }

    fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let Some(label) = key_id.strip_prefix(KEY_ID_PREFIX) else {
            return Err(KeyError::UnknownMasterKey {
                key_id: key_id.to_owned(),
            });
        };
        let handle = match self.key_handle(label) {
            Err(KeyError::Pkcs11(e)) if matches!(*e, Pkcs11Error::KeyNotFound { .. }) => {
                return Err(KeyError::UnknownMasterKey {
                    key_id: key_id.to_owned(),
                });
            }
            other => other?,
        };
        let failed = || KeyError::UnwrapFailed {
            key_id: key_id.to_owned(),
        };
        if wrapped.len() != WRAPPED_LEN {
            return Err(failed());
        }
        let (iv, sealed) = wrapped.split_at(IV_LEN);
        let mut iv: [u8; IV_LEN] = iv.try_into().map_err(|_| failed())?;
        let params = GcmParams::new(&mut iv, key_id.as_bytes(), TAG_BITS.into())
            .map_err(self.call("set up AES-GCM"))?;
        let plain = match self
            .session()
            .decrypt(&Mechanism::AesGcm(params), handle, sealed)
        {
            Ok(plain) => plain,
            // A failed tag is CKR_ENCRYPTED_DATA_INVALID by the standard;
            // SoftHSM2 answers C_Decrypt (after a successful init, so key
            // and mechanism were fine) with CKR_GENERAL_ERROR.
            Err(e)
                if matches!(
                    rv(&e),
                    Some(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange)
                ) || matches!(e, CkError::Pkcs11(RvError::GeneralError, Function::Decrypt)) =>
            {
                return Err(failed());
            }
            Err(e) => return Err(self.unusable(label, "unwrap", e)),
        };
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| failed())?;
        Ok(DataKey::from_bytes(bytes))
    }

    fn domain_secret(&self, domain: &str) -> Result<DomainSecret, KeyError> {
        match &self.domains {
            Some(domains) => domains.get_or_create(domain, self),
            None => Err(KeyError::NoDomainSecrets {
                domain: domain.to_owned(),
            }),
        }
    }

    fn current_key_id(&self) -> Result<String, KeyError> {
        Ok(format!("{KEY_ID_PREFIX}{}", self.key_label))
    }
}

#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
