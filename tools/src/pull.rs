//! Flags of `flatten` and `convert` for `docker://` sources.

use std::path::PathBuf;
use std::time::Duration;

use chunker::oci::ImageSource;
use chunker::oci::registry::{CredentialSource, Credentials, Platform, RegistryOptions, Secret};
use imagefs::tiers::parse_size;

use crate::profile::parse_duration;

/// How to pull a `docker://` source (ignored for the other transports).
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this
    /// host's).
    #[arg(long)]
    platform: Option<Platform>,
    /// USER:PASSWORD for the registry. Without it: --authfile, or
    /// $IMAGEFS_CREDS unless --no-creds, or else $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json.
    #[arg(long, value_parser = CredsParser)]
    creds: Option<Credentials>,
    /// The auth file to read credentials from, alone (as skopeo's
    /// --authfile); it must exist.
    #[arg(long, value_name = "PATH", conflicts_with = "creds")]
    authfile: Option<PathBuf>,
    /// Pull anonymously, whatever credentials the auth files hold.
    #[arg(long, conflicts_with_all = ["creds", "authfile"])]
    no_creds: bool,
    /// A bearer token to send as it is (skopeo's --registry-token), to a
    /// registry that asks for one; no token service is asked.
    #[arg(
        long,
        value_name = "TOKEN",
        value_parser = parse_token,
        conflicts_with_all = ["creds", "authfile", "no_creds"]
    )]
    registry_token: Option<Secret>,
    /// A directory of *.crt CA certificates to trust besides the system's,
    /// and of a client certificate NAME.cert with its key NAME.key.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Verify the registry's TLS certificate; `false` also allows plain
    /// HTTP (a warning says so).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// Layers downloaded at once.
    #[arg(long, default_value_t = 4)]
    max_parallel_downloads: usize,
    /// Disk the downloaded, not yet flattened layers may take.
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    spool_budget: u64,
    /// Where the download spool lives (default: $TMPDIR).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Times to retry a request the registry failed (5xx, 429, a reset
    /// connection, a timeout) or a transfer that broke off (resumed where
    /// it stopped), with doubling backoff; 0 retries nothing.
    #[arg(long, value_name = "N", default_value_t = RegistryOptions::default().retries)]
    retry_times: u32,
    /// How long to wait for the registry: for a connection, for an
    /// answer, and for each next read of a body (not a bound on the whole
    /// pull), e.g. 30s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    registry_timeout: Duration,
}

impl RegistryArgs {
    /// Put the flags into `source` when it is a registry source. Fails
    /// only on a `$IMAGEFS_CREDS` that is not USER:PASSWORD.
    pub fn apply(&self, source: &mut ImageSource, progress: bool) -> Result<(), CredsEnvError> {
        if let Some(o) = source.registry_options_mut() {
            o.platform = self.platform.clone();
            o.credentials = match (
                &self.creds,
                &self.authfile,
                self.no_creds,
                &self.registry_token,
            ) {
                (_, _, _, Some(t)) => CredentialSource::BearerToken(t.clone()),
                (_, _, true, None) => CredentialSource::Anonymous,
                (Some(c), _, _, None) => CredentialSource::Given(c.clone()),
                (None, Some(f), _, None) => CredentialSource::AuthFile(f.clone()),
                // Read here, not by clap: a flag that says where else to
                // look overrides the variable instead of conflicting with it.
                (None, None, false, None) => match std::env::var_os(CREDS_ENV) {
                    Some(v) => CredentialSource::Given(parse_creds(&v).ok_or(CredsEnvError)?),
                    None => CredentialSource::AuthFiles,
                },
            };
            o.cert_dir = self.cert_dir.clone();
            o.tls_verify = self.tls_verify;
            o.max_parallel = self.max_parallel_downloads.max(1);
            o.spool_budget = self.spool_budget;
            o.spool_dir = self.spool_dir.clone();
            o.retries = self.retry_times;
            o.timeout = self.registry_timeout;
            o.progress = progress;
        }
        Ok(())
    }
}

/// `--registry-token`: any text but none (never shown).
fn parse_token(text: &str) -> Result<Secret, String> {
    if text.is_empty() {
        Err("an empty --registry-token".into())
    } else {
        Ok(Secret::new(text))
    }
}

/// `--registry-timeout`: a duration, and not zero (every request would
/// fail at once).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("`{text}` would time out every request")),
        d => Ok(d),
    }
}

/// Credentials for the registry, as `--creds` takes them.
const CREDS_ENV: &str = "IMAGEFS_CREDS";

/// USER:PASSWORD from the flag or the variable; `None` says only that it
/// is not (the callers' errors must not show the value).
fn parse_creds(value: &std::ffi::OsStr) -> Option<Credentials> {
    value.to_str()?.parse().ok()
}

/// `$IMAGEFS_CREDS` is set but is not USER:PASSWORD.
#[derive(Debug, thiserror::Error)]
#[error("${CREDS_ENV} must be USER:PASSWORD (its value is not shown)")]
pub struct CredsEnvError;

/// `--creds`, parsed without clap's "invalid value '…'" message: a value
/// without a colon may still be a password or a token, and is not shown.
#[derive(Clone)]
struct CredsParser;

impl clap::builder::TypedValueParser for CredsParser {
    type Value = Credentials;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Credentials, clap::Error> {
        parse_creds(value).ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                "--creds must be USER:PASSWORD (the value given is not shown)\n",
            )
            .with_cmd(cmd)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        registry: RegistryArgs,
    }

    fn options(args: &[&str]) -> RegistryOptions {
        let cli =
            Cli::try_parse_from(std::iter::once("imagefs").chain(args.iter().copied())).unwrap();
        let mut source: ImageSource = "docker://127.0.0.1:5000/app:v1".parse().unwrap();
        cli.registry.apply(&mut source, false).unwrap();
        source.registry_options_mut().unwrap().clone()
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        let o = options(&[]);
        let d = RegistryOptions::default();
        assert_eq!((o.retries, o.timeout), (d.retries, d.timeout));
        assert_eq!(
            (o.max_parallel, o.spool_budget),
            (d.max_parallel, d.spool_budget)
        );
    }

    #[test]
    fn registry_token_flag() {
        let o = options(&["--registry-token", "tok-Zq81"]);
        match o.credentials {
            CredentialSource::BearerToken(t) => assert_eq!(format!("{t:?}"), "<redacted>"),
            other => panic!("{other:?}"),
        }
        for bad in [
            &["--registry-token", ""][..],
            &["--registry-token", "t", "--creds", "u:p"],
            &["--registry-token", "t", "--no-creds"],
            &["--registry-token", "t", "--authfile", "f"],
        ] {
            let args = std::iter::once("imagefs").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn retry_and_timeout_flags() {
        let o = options(&["--retry-times", "0", "--registry-timeout", "1500ms"]);
        assert_eq!((o.retries, o.timeout), (0, Duration::from_millis(1500)));
        for bad in [&["--registry-timeout", "0s"][..], &["--retry-times", "-1"]] {
            let args = std::iter::once("imagefs").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
    }
}
