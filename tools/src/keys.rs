//! Key provider flags (`--key-provider local|pkcs11` and the `--pkcs11-*`
//! settings), `imagefs key new|ls|retire` and `imagefs rewrap`. Providers
//! are built by [`manifest::ProviderSpec`]; rewrap is
//! [`imagefs::rewrap::rewrap_images`].

use std::error::Error;
use std::io::{Write, stdout};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagefs::rewrap::{RewrapOptions, RewrapOutcome, RewrapReport, rewrap_images};
use manifest::keys::pkcs11::{PIN_ENV, SOFTHSM2_MODULE};
use manifest::{
    DomainSecrets, KeyProvider, LocalKeyProvider, PinSource, Pkcs11Config, Pkcs11KeyProvider,
    ProviderSpec, TokenSelector,
};

use crate::args::StoreArgs;

/// A key provider chosen by the flags.
pub type Keys = Arc<dyn KeyProvider>;

/// Which key provider holds the master keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    /// A local key directory (`--keys`).
    Local,
    /// A PKCS#11 token (HSM, KMS): the `--pkcs11-*` flags.
    Pkcs11,
}

/// The key provider flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Where master keys are: `local` (the --keys directory) or `pkcs11`.
    #[arg(
        long,
        env = "IMAGEFS_KEY_PROVIDER",
        value_enum,
        default_value = "local"
    )]
    key_provider: ProviderKind,
    /// The PKCS#11 module.
    #[arg(long, env = "IMAGEFS_PKCS11_MODULE", default_value = SOFTHSM2_MODULE)]
    pkcs11_module: PathBuf,
    /// The token, by label.
    #[arg(
        long,
        env = "IMAGEFS_PKCS11_TOKEN_LABEL",
        conflicts_with = "pkcs11_slot"
    )]
    pkcs11_token_label: Option<String>,
    /// The token, by slot id.
    #[arg(long, env = "IMAGEFS_PKCS11_SLOT")]
    pkcs11_slot: Option<u64>,
    /// A file (mode 0600) holding the user PIN; without it the PIN comes
    /// from the environment variable IMAGEFS_PKCS11_PIN.
    #[arg(long, env = "IMAGEFS_PKCS11_PIN_FILE")]
    pkcs11_pin_file: Option<PathBuf>,
    /// The label of the master key new seals use (key id `p11:LABEL`).
    #[arg(
        long,
        env = "IMAGEFS_PKCS11_KEY_LABEL",
        default_value = "imagefs-master"
    )]
    pkcs11_key_label: String,
    /// With pkcs11: the directory of wrapped domain secrets (only hosts
    /// that convert need it; serving hosts leave it out).
    #[arg(long, env = "IMAGEFS_DOMAIN_SECRETS")]
    domain_secrets: Option<PathBuf>,
}

impl KeyArgs {
    /// The directory of wrapped domain secrets these flags name: a local
    /// key directory's `domains/`, or `--domain-secrets`.
    fn domain_secrets_dir(&self, keys: &Path) -> Option<PathBuf> {
        match self.key_provider {
            ProviderKind::Local => Some(keys.join("domains")),
            ProviderKind::Pkcs11 => self.domain_secrets.clone(),
        }
    }

    /// The provider these flags name; `keys` is the local key directory.
    pub fn spec(&self, keys: &Path) -> Result<ProviderSpec, Box<dyn Error>> {
        if self.key_provider == ProviderKind::Local {
            return Ok(ProviderSpec::Local {
                dir: keys.to_path_buf(),
            });
        }
        let token = match (&self.pkcs11_token_label, self.pkcs11_slot) {
            (Some(label), _) => TokenSelector::Label(label.clone()),
            (None, Some(slot)) => TokenSelector::Slot(slot),
            (None, None) => {
                return Err(
                    "--key-provider pkcs11 needs --pkcs11-token-label or --pkcs11-slot".into(),
                );
            }
        };
        let pin = match &self.pkcs11_pin_file {
            Some(file) => PinSource::File(file.clone()),
            None => PinSource::Env(PIN_ENV.into()),
        };
        Ok(ProviderSpec::Pkcs11(Pkcs11Config {
            module: self.pkcs11_module.clone(),
            token,
            pin,
            key_label: self.pkcs11_key_label.clone(),
            domain_secrets: self.domain_secrets.clone(),
        }))
    }
}

/// Arguments of `imagefs key`.
#[derive(Debug, clap::Args)]
pub struct KeyCmdArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeyCommand {
    /// Create a master key: local, a new random key made current; pkcs11,
    /// a key generated inside the token labelled LABEL. Prints its id.
    New {
        /// The new key's label (pkcs11 only).
        label: Option<String>,
        #[command(flatten)]
        store: KeyStoreArgs,
    },
    /// List the master keys (retired ones marked).
    Ls {
        #[command(flatten)]
        store: KeyStoreArgs,
    },
    /// Retire a master key (`mk-…` or `p11:LABEL`): manifests still sealed
    /// only under it no longer open. Run `imagefs rewrap` first.
    Retire {
        /// The key id.
        key_id: String,
        #[command(flatten)]
        store: KeyStoreArgs,
    },
}

/// `--keys` and the provider flags, without a store.
#[derive(Debug, clap::Args)]
struct KeyStoreArgs {
    /// The key directory.
    #[arg(long, env = "IMAGEFS_KEYS", default_value = crate::tiers::DEFAULT_KEYS)]
    keys: PathBuf,
    #[command(flatten)]
    provider: KeyArgs,
}

impl KeyCmdArgs {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        let mut out = stdout();
        match self.command {
            KeyCommand::New { label, store } => {
                let id = match (store.provider.spec(&store.keys)?, label) {
                    (ProviderSpec::Local { dir }, None) => {
                        LocalKeyProvider::create(&dir)?.rotate()?
                    }
                    (ProviderSpec::Local { .. }, Some(_)) => {
                        return Err("local master keys have no label; leave it out".into());
                    }
                    (ProviderSpec::Pkcs11(c), label) => {
                        let label = label.unwrap_or_else(|| c.key_label.clone());
                        let config = Pkcs11Config {
                            key_label: label.clone(),
                            ..c
                        };
                        Pkcs11KeyProvider::create(&config)?.current_key_id()?
                    }
                };
                writeln!(out, "{id}")?;
            }
            KeyCommand::Ls { store } => match store.provider.spec(&store.keys)? {
                ProviderSpec::Local { dir } => {
                    let keys = LocalKeyProvider::open(&dir)?;
                    let current = keys.current_key_id()?;
                    for id in keys.key_ids()? {
                        let mark = if id == current { "\tcurrent" } else { "" };
                        writeln!(out, "{id}{mark}")?;
                    }
                    for id in keys.retired_key_ids()? {
                        writeln!(out, "{id}\tretired")?;
                    }
                }
                ProviderSpec::Pkcs11(c) => {
                    let keys = Pkcs11KeyProvider::open(&c)?;
                    for label in keys.key_labels()? {
                        match label.strip_prefix(manifest::keys::pkcs11::RETIRED_PREFIX) {
                            Some(old) => writeln!(out, "p11:{old}\tretired")?,
                            None if label == c.key_label => writeln!(out, "p11:{label}\tcurrent")?,
                            None => writeln!(out, "p11:{label}")?,
                        }
                    }
                }
            },
            KeyCommand::Retire { key_id, store } => match store.provider.spec(&store.keys)? {
                ProviderSpec::Local { dir } => LocalKeyProvider::open(&dir)?.retire(&key_id)?,
                ProviderSpec::Pkcs11(c) => {
                    let label = key_id
                        .strip_prefix(manifest::keys::pkcs11::KEY_ID_PREFIX)
                        .ok_or_else(|| format!("`{key_id}` is not a PKCS#11 key id (p11:LABEL)"))?;
                    Pkcs11KeyProvider::open(&c)?.retire(label)?;
                }
            },
        }
        Ok(())
    }
}

/// Arguments of `imagefs rewrap`. Domain secrets move too: within a
/// local key directory, or into `--domain-secrets` of the token.
#[derive(Debug, clap::Args)]
pub struct RewrapArgs {
    /// The master key to re-wrap under: `mk-…` (a key of --keys, see
    /// `imagefs key new`) or `p11:LABEL` (a key of the --pkcs11-* token,
    /// generated there if missing). The source keys are the store flags'.
    #[arg(long)]
    to: String,
    /// Images to re-wrap (sha256:DIGEST or tags of the --domain); every
    /// image of the store when none is given.
    images: Vec<String>,
    /// Stop after re-wrapping this many images (run again to continue).
    #[arg(long)]
    limit: Option<u64>,
    /// Print the report as JSON (`imagefs::rewrap::RewrapReport`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

impl RewrapArgs {
    /// Runs `imagefs rewrap`.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        let (origin, from) = self.store.open(false)?;
        let target = self.target()?;
        let images = if self.images.is_empty() {
            None
        } else {
            let mut digests = Vec::new();
            for name in &self.images {
                digests.push(origin.resolve(&self.store.domain, name)?);
            }
            Some(digests)
        };
        let opts = RewrapOptions {
            images,
            limit: self.limit,
            domain_secrets: self.domain_secrets()?,
        };
        let report = rewrap_images(origin.as_ref(), &from, &target, &opts)?;
        let mut out = stdout();
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            render_rewrap(&mut out, &report)?;
        }
        if report.failed > 0 {
            return Err(format!("{} image(s) could not be re-wrapped", report.failed).into());
        }
        Ok(())
    }

    /// Where the source's domain secrets are and where the target's go,
    /// when both are known.
    fn domain_secrets(&self) -> Result<Option<(DomainSecrets, DomainSecrets)>, Box<dyn Error>> {
        let dir = self.store.keys_dir();
        let source = self.store.key_args().domain_secrets_dir(dir);
        let target = self.target_args().domain_secrets_dir(dir);
        let (Some(source), Some(target)) = (source, target) else {
            return Ok(None);
        };
        if !source.exists() {
            return Ok(None);
        }
        Ok(Some((
            DomainSecrets::open(source)?,
            DomainSecrets::create(target)?,
        )))
    }

    fn target_args(&self) -> KeyArgs {
        let mut keys = self.store.key_args().clone();
        // `p11:…` names a key of the token the --pkcs11-* flags describe,
        // also when the source keys are local (a move into the HSM).
        if self.to.starts_with(manifest::keys::pkcs11::KEY_ID_PREFIX) {
            keys.key_provider = ProviderKind::Pkcs11;
        }
        keys
    }

    fn target(&self) -> Result<Keys, Box<dyn Error>> {
        let spec = self.target_args().spec(self.store.keys_dir())?;
        Ok(spec.target(&self.to, true)?)
    }
}

/// The human form of a [`RewrapReport`].
pub fn render_rewrap(out: &mut dyn Write, report: &RewrapReport) -> std::io::Result<()> {
    writeln!(out, "store       {}", report.store)?;
    writeln!(out, "target key  {}", report.target_key)?;
    writeln!(
        out,
        "rewrapped {}  (profiles {}, domain secrets {})  already done {}  failed {}{}",
        report.rewrapped,
        report.profiles_rewrapped,
        report.domain_secrets_rewrapped,
        report.already_done,
        report.failed,
        if report.stopped_early {
            "  (stopped at --limit: run again to continue)"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "{:<17} {:<24} {:<12} note",
        "image", "from key", "outcome"
    )?;
    for image in &report.images {
        let outcome = match image.outcome {
            RewrapOutcome::Rewrapped => "rewrapped",
            RewrapOutcome::AlreadyDone => "already",
            RewrapOutcome::Failed => "FAILED",
            RewrapOutcome::NotReached => "not reached",
        };
        writeln!(
            out,
            "{:<17} {:<24} {:<12} {}",
            &image.digest[..image.digest.len().min(17)],
            image.from_key.as_deref().unwrap_or("-"),
            outcome,
            image.error.as_deref().unwrap_or(""),
        )?;
    }
    Ok(())
}
