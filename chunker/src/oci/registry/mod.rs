//! `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`: images pulled from a
//! registry straight into the flattener.
//!
//! - [`reference`](mod@reference): the source string;
//! - [`auth`]: credentials (flags, auth files), challenges, tokens, and
//!   [`auth::Secret`], which never prints;
//! - [`credhelper`]: Docker credential helpers an auth file names;
//! - [`client`]: the HTTP API (why reqwest and not `oci-client` is there);
//! - [`spool`]: parallel layer downloads into a bounded spool on disk;
//! - `tls`: certificate checks, with the system roots read only when a
//!   handshake needs them.
//!
//! [`Image::open`](crate::oci::Image::open) resolves index → manifest →
//! config through [`Pull`] exactly as for a layout, starting the layer
//! downloads as soon as it has the manifest, so the config comes while
//! they run; [`Image::open_layer`](crate::oci::Image::open_layer) waits for
//! each verified layer in turn.

pub mod auth;
pub mod client;
pub mod credhelper;
pub mod reference;
pub mod spool;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{CredentialSource, Credentials, Secret};
pub use reference::{Reference, ReferenceError, Target};

use crate::oci::Digest;
use crate::oci::spec::Descriptor;
use crate::oci::store::VerifiedBlob;
use client::Client;
use spool::Spool;

/// An `os/arch[/variant]` platform, as `--platform` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, … (Go's names).
    pub architecture: String,
    /// `v8`, `v7`, … when it matters.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry's platform is this one (a variant we do not
    /// ask for matches any).
    pub fn matches(&self, p: &crate::oci::spec::Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p.variant.as_deref() == Some(v.as_str()))
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(os), Some(arch), variant, None) if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform {
                    os: os.into(),
                    architecture: arch.into(),
                    variant: variant.filter(|v| !v.is_empty()).map(Into::into),
                })
            }
            _ => Err(format!("{s:?} is not OS/ARCH[/VARIANT]")),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How to pull: everything that is not in the source string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryOptions {
    /// `--creds`, `--authfile`, `--no-creds`, or the auth files skopeo
    /// reads by default.
    pub credentials: CredentialSource,
    /// `--cert-dir`: `*.crt` files trusted as CAs besides the system roots.
    pub cert_dir: Option<PathBuf>,
    /// `--tls-verify=false` turns certificate checks off (with a warning)
    /// and allows plain HTTP.
    pub tls_verify: bool,
    /// Which image of a multi-platform index (default: this host's).
    pub platform: Option<Platform>,
    /// Layers downloaded at once.
    pub max_parallel: usize,
    /// Bytes of downloaded, not yet flattened layers kept on disk.
    pub spool_budget: u64,
    /// Where the spool lives (default: the system temporary directory).
    pub spool_dir: Option<PathBuf>,
    /// How long to wait for a connection, an answer, or the next bytes.
    pub timeout: Duration,
    /// Retries of a failed request or broken transfer.
    pub retries: u32,
    /// First backoff between retries (doubling after).
    pub backoff: Duration,
    /// Progress bars, one per layer, when stdout is a terminal.
    pub progress: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            credentials: CredentialSource::AuthFiles,
            cert_dir: None,
            tls_verify: true,
            platform: None,
            max_parallel: 4,
            spool_budget: 2 << 30,
            spool_dir: None,
            timeout: Duration::from_secs(30),
            retries: 4,
            backoff: Duration::from_millis(250),
            progress: false,
        }
    }
}

/// A registry image source: the reference and how to pull it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySource {
    /// What to pull.
    pub reference: Reference,
    /// How.
    pub options: RegistryOptions,
}

/// A pull failed; says which registry and repository, and what.
#[derive(Debug)]
pub struct RegistryError {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The repository.
    pub repository: String,
    /// What failed.
    pub kind: ErrorKind,
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "registry {}, repository {}: {}",
            self.registry, self.repository, self.kind
        )
    }
}

// The kind is part of the message; its cause comes next in the chain.
impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

impl RegistryError {
    /// An error of `kind` for `registry`/`repository`.
    pub fn new(registry: &str, repository: &str, kind: ErrorKind) -> Self {
        RegistryError {
            registry: registry.into(),
            repository: repository.into(),
            kind,
        }
    }
}

/// Who a refused request went as; never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Who {
    /// Nobody: no credentials.
    Anonymous,
    /// This user, with a password.
    User(String),
    /// An identity token from an auth file or a helper.
    IdentityToken,
    /// The bearer token given as `--registry-token`.
    RegistryToken,
}

/// What went wrong talking to a registry. No variant holds a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Connecting or sending failed.
    #[error("cannot reach the registry")]
    Transport(#[source] reqwest::Error),
    /// The registry ended the TLS handshake over our certificate (or
    /// its lack).
    #[error(
        "the registry refused the TLS handshake: it may want a client certificate \
         (NAME.cert and NAME.key in --cert-dir)"
    )]
    ClientCertRefused(#[source] reqwest::Error),
    /// No answer within the timeout.
    #[error("the registry did not answer within {after:?} (--registry-timeout)")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// The request's error.
        source: reqwest::Error,
    },
    /// The body stopped coming within the timeout.
    #[error("reading {what} timed out: no bytes for {after:?} (--registry-timeout)")]
    ReadTimeout {
        /// The object.
        what: String,
        /// The timeout.
        after: Duration,
        /// The read error.
        source: std::io::Error,
    },
    /// The registry refused our credentials, or wants some we lack.
    #[error("{}", match who {
        Who::Anonymous => "access denied: the registry wants credentials (--creds, --authfile or an auth file)".to_owned(),
        Who::User(u) => format!("access denied for user {u:?} (wrong credentials?)"),
        Who::IdentityToken => "access denied for the identity token (expired or revoked?)".to_owned(),
        Who::RegistryToken => "access denied for the --registry-token (expired, or not for this repository?)".to_owned(),
    })]
    Unauthorized {
        /// Who we tried as (never the secret).
        who: Who,
    },
    /// The token service cannot be reached.
    #[error("cannot reach the token service {realm}")]
    TokenUnreachable {
        /// The token endpoint.
        realm: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The token service failed.
    #[error("cannot get a token from {realm}: {reason}")]
    Token {
        /// The token endpoint.
        realm: String,
        /// Why.
        reason: String,
    },
    /// 404: the repository, tag or blob does not exist.
    #[error("{what} not found (unknown repository, tag or blob)")]
    NotFound {
        /// What we asked for.
        what: String,
    },
    /// Another HTTP error status.
    #[error("{what}: HTTP status {status}")]
    Status {
        /// What we asked for.
        what: String,
        /// The status.
        status: u16,
    },
    /// Retries did not help.
    #[error("{what}: gave up after {attempts} attempts")]
    GaveUp {
        /// What we asked for.
        what: String,
        /// How many.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<ErrorKind>,
    },
    /// A redirect we do not follow.
    #[error("{what}: refusing a redirect to {to}")]
    Redirect {
        /// What we asked for.
        what: String,
        /// Where it pointed.
        to: String,
    },
    /// Reading a body failed.
    #[error("reading {what} failed")]
    Read {
        /// The object.
        what: String,
        /// The read error.
        source: std::io::Error,
    },
    /// A body ended before its size, and resuming did not help.
    #[error("{what} is truncated: {actual} of {expected} bytes arrived")]
    Truncated {
        /// The object.
        what: String,
        /// Its descriptor's size.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// Bytes that do not hash to their digest.
    #[error("{what} does not match its digest: the bytes hash to {actual}, expected {expected}")]
    DigestMismatch {
        /// The object.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A blob of the wrong size.
    #[error("{what} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The object.
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// A manifest or config over its cap.
    #[error("{what} is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// The object.
        what: String,
        /// Its size (or what was read before stopping).
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Credentials could not be read.
    #[error(transparent)]
    Credentials(auth::CredentialsError),
    /// `--cert-dir` could not be read.
    #[error("cannot use certificates from {}: {reason}", dir.display())]
    CertDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS configuration could not be made.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// The spool directory failed.
    #[error("spool in {}", dir.display())]
    Spool {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pull was abandoned.
    #[error("cancelled")]
    Cancelled,
    /// A thread panicked while holding shared state.
    #[error("internal state poisoned")]
    Poisoned,
}

/// An open pull: the client, the root manifest already fetched, and the
/// layer downloads once started.
#[derive(Debug)]
pub struct Pull {
    reference: Reference,
    client: Arc<Client>,
    options: RegistryOptions,
    root: (Digest, Vec<u8>),
    spool: std::sync::OnceLock<Arc<Spool>>,
}

impl Pull {
    /// Connect and fetch the root manifest (or index) the reference names.
    /// Returns the pull and the root's descriptor.
    pub fn open(source: &RegistrySource) -> Result<(Pull, Descriptor), RegistryError> {
        let r = &source.reference;
        let client = Client::connect(r, &source.options)?;
        let expected = match &r.target {
            Target::Digest(d) => Some(d),
            Target::Tag(_) => None,
        };
        let (bytes, media_type, digest) = client.manifest(&r.target_str(), expected)?;
        let desc = Descriptor {
            media_type,
            digest: digest.clone(),
            size: bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        Ok((
            Pull {
                reference: r.clone(),
                client: Arc::new(client),
                options: source.options.clone(),
                root: (digest, bytes),
                spool: std::sync::OnceLock::new(),
            },
            desc,
        ))
    }

    /// The platform to pick from an index.
    pub fn platform(&self) -> Platform {
        self.options.platform.clone().unwrap_or_else(Platform::host)
    }

    /// A manifest or index by digest (the root is not fetched twice).
    pub fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        if desc.digest == self.root.0 {
            return Ok(self.root.1.clone());
        }
        let (bytes, _, _) = self
            .client
            .manifest(desc.digest.as_str(), Some(&desc.digest))?;
        if bytes.len() as u64 != desc.size {
            return Err(self.client.error(ErrorKind::SizeMismatch {
                what: format!("manifest {}", desc.digest),
                expected: desc.size,
                actual: bytes.len() as u64,
            }));
        }
        Ok(bytes)
    }

    /// A config blob.
    pub fn config(&self, desc: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        self.client.small_blob(&desc.digest, desc.size, "config")
    }

    /// Start downloading the layers (digest, size), bottom first.
    pub fn start(&self, layers: Vec<(Digest, u64)>) -> Result<(), RegistryError> {
        let parent = self
            .options
            .spool_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let progress =
            self.options.progress && std::io::IsTerminal::is_terminal(&std::io::stdout());
        let spool = Spool::start(
            self.client.clone(),
            layers,
            &parent,
            self.options.spool_budget,
            self.options.max_parallel,
            progress,
        )?;
        let _ = self.spool.set(spool);
        Ok(())
    }

    /// A layer blob, verified, once it has arrived.
    pub fn layer(&self, digest: &Digest) -> Result<VerifiedBlob, RegistryError> {
        match self.spool.get() {
            Some(s) => s.open(digest),
            None => Err(self.client.error(ErrorKind::NotFound {
                what: format!("blob {digest} (downloads not started)"),
            })),
        }
    }

    /// Whether the spool's files hold, or will hold, layer bytes not yet
    /// read ([`Spool::holds_unread`]).
    pub fn spooling(&self) -> bool {
        self.spool.get().is_some_and(|s| s.holds_unread())
    }

    /// The failure of the download of layer blob `digest`, once it has
    /// ended, if it failed ([`Spool::verdict`]).
    pub fn verdict(&self, digest: &Digest) -> Option<std::io::Error> {
        self.spool.get()?.verdict(digest)
    }

    /// `docker://HOST/REPO`, for messages that take a location.
    pub fn location(&self) -> PathBuf {
        PathBuf::from(format!(
            "docker://{}/{}",
            self.reference.host, self.reference.repository
        ))
    }
}

impl Drop for Pull {
    fn drop(&mut self) {
        if let Some(s) = self.spool.get() {
            s.cancel();
        }
    }
}
