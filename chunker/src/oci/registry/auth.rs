//! Credentials and tokens: where they come from, and how they stay secret.
//!
//! Credentials are looked up as skopeo and podman look them up
//! ([`CredentialSource`]): `--creds`, `--authfile`, `--registry-token` (a
//! bearer token sent as it is), or else
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json` and
//! `~/.docker/config.json`. In each file, a credential helper named for the
//! registry (`credHelpers`, run by [`credhelper`](super::credhelper)), then
//! an `auths` entry with a base64 `auth` or an `identitytoken` (an OAuth2
//! refresh token, see [`Credentials`]), then the default helper
//! (`credsStore`); `--no-creds` pulls anonymously whatever those hold.
//! Every secret is a
//! [`Secret`], whose `Debug` prints `<redacted>` and which has no `Display`,
//! so it cannot reach a log line, an error or a report by accident.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// A password or token. Its `Debug` is `<redacted>`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place it is sent: a request header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name and password for basic auth or the token service; or,
/// with the user [`IDENTITY_TOKEN_USER`], an identity token (an OAuth2
/// refresh token) for the token service, as Docker's credential helpers
/// give one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (not secret: it names who failed).
    pub username: String,
    /// The password, or the identity token.
    pub password: Secret,
}

/// The user name that says the password is an identity token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    /// An identity token, exchanged for bearer tokens through OAuth2.
    pub fn identity_token(token: impl Into<String>) -> Credentials {
        Credentials {
            username: IDENTITY_TOKEN_USER.into(),
            password: Secret::new(token),
        }
    }

    /// Whether the password is an identity token (sent only to the token
    /// service, never as basic auth).
    pub fn is_identity_token(&self) -> bool {
        self.username == IDENTITY_TOKEN_USER
    }
}

/// Where a pull's credentials come from: skopeo's `--creds`, `--authfile`
/// and `--no-creds`, or else the auth files it reads by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CredentialSource {
    /// The auth files skopeo reads when told nothing ([`auth_files`]).
    #[default]
    AuthFiles,
    /// `--authfile`: this file alone, which must exist.
    AuthFile(PathBuf),
    /// `--creds USER:PASSWORD`.
    Given(Credentials),
    /// `--no-creds`: anonymous, whatever the auth files hold.
    Anonymous,
    /// `--registry-token`: a bearer token sent as it is, to a registry
    /// that asks for one, without asking a token service.
    BearerToken(Secret),
}

impl CredentialSource {
    /// The credentials to offer `host`/`repository`, if any.
    pub fn resolve(
        &self,
        host: &str,
        repository: &str,
    ) -> Result<Option<Credentials>, CredentialsError> {
        match self {
            CredentialSource::AuthFiles => lookup(host, repository),
            CredentialSource::AuthFile(path) => {
                // Named on purpose: a typo is an error, not an anonymous
                // pull (skopeo and podman refuse a missing --authfile too).
                if let Err(e) = std::fs::metadata(path) {
                    return Err(CredentialsError::AuthFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                }
                from_auth_file(path, host, repository)
            }
            CredentialSource::Given(c) => Ok(Some(c.clone())),
            // No credentials for anyone: the token itself is the login.
            CredentialSource::Anonymous | CredentialSource::BearerToken(_) => Ok(None),
        }
    }
}

/// `--creds`, an auth file entry or a credential helper we cannot use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// `--creds` without a colon.
    #[error("credentials must be USER:PASSWORD")]
    NoColon,
    /// The auth file exists but cannot be read or parsed.
    #[error("cannot read auth file {}: {reason}", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// Why (never containing the file's content).
        reason: String,
    },
    /// A credential helper the file names gave no usable answer.
    #[error("auth file {}: credential helper for {registry}", path.display())]
    Helper {
        /// The file naming the helper.
        path: PathBuf,
        /// The registry it was asked about.
        registry: String,
        /// What went wrong (boxed: errors travel by value up the pull).
        #[source]
        source: Box<super::credhelper::HelperError>,
    },
    /// An `auth` entry that is not base64 of `user:password`.
    #[error("auth file {}: the entry for {key} is not base64 of USER:PASSWORD", path.display())]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// The registry key of the entry.
        key: String,
    },
}

impl std::str::FromStr for Credentials {
    type Err = CredentialsError;

    /// `USER:PASSWORD`, as `--creds` takes it.
    fn from_str(s: &str) -> Result<Self, CredentialsError> {
        let (user, pass) = s.split_once(':').ok_or(CredentialsError::NoColon)?;
        Ok(Credentials {
            username: user.to_owned(),
            password: Secret::new(pass),
        })
    }
}

/// The auth files in the order skopeo reads them, from the environment.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        // skopeo reads only this one when it is set.
        files.push(PathBuf::from(f));
        return files;
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&run).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        files.push(Path::new(&home).join(".docker/config.json"));
    }
    files
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Registry → helper name (`docker-credential-NAME`).
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    /// The helper for registries without one of their own (Docker's).
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    /// An OAuth2 refresh token (`az acr login` writes one); used instead
    /// of `auth` when present.
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    /// The identity token, when there is one (an empty one is none).
    fn identity_token(&self) -> Option<&str> {
        self.identitytoken.as_deref().filter(|t| !t.is_empty())
    }

    fn has_credentials(&self) -> bool {
        self.auth.is_some() || self.identity_token().is_some()
    }
}

/// An auth file key without scheme and trailing path, as Docker writes
/// `https://index.docker.io/v1/`.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.strip_suffix("/v1/")
        .or_else(|| key.strip_suffix("/v1"))
        .or_else(|| key.strip_suffix('/'))
        .unwrap_or(key)
}

/// The credentials for `host`/`repository` in one auth file: its
/// `credHelpers` helper for the host if it names one, else the `auths`
/// entry whose `host/path` key is the longest prefix of the repository (as
/// in podman), else its `credsStore` helper. `None` when the file does not
/// exist or none of those has credentials.
pub fn from_auth_file(
    path: &Path,
    host: &str,
    repository: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredentialsError::AuthFile {
                path: path.into(),
                reason: e.to_string(),
            });
        }
    };
    let file: AuthFile = serde_json::from_slice(&text).map_err(|e| CredentialsError::AuthFile {
        path: path.into(),
        // serde's message names a position, not the content.
        reason: format!("not JSON: line {} column {}", e.line(), e.column()),
    })?;
    let hosts: &[&str] = if host == "docker.io" {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[host]
    };
    // Docker asks helpers about Docker Hub by its old index URL.
    let server = if host == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        host
    };
    let helper = |name: &str| super::credhelper::get(name, server);
    let named = |source| CredentialsError::Helper {
        path: path.into(),
        registry: host.into(),
        source: Box::new(source),
    };
    // Helpers are named per registry (no repository paths), and first.
    if let Some(name) = file
        .cred_helpers
        .iter()
        .find(|(key, _)| hosts.contains(&normalize_key(key)))
        .map(|(_, name)| name)
    {
        return helper(name).map_err(named);
    }
    let mut best: Option<(usize, &String, &AuthEntry)> = None;
    for (key, entry) in &file.auths {
        let k = normalize_key(key);
        for h in hosts {
            let full = format!("{h}/{repository}");
            let matches = k == *h
                || (k.starts_with(&format!("{h}/"))
                    && (full == k || full.starts_with(&format!("{k}/"))));
            if matches && entry.has_credentials() && best.is_none_or(|(len, _, _)| k.len() > len) {
                best = Some((k.len(), key, entry));
            }
        }
    }
    let Some((_, key, entry)) = best else {
        return match &file.creds_store {
            // A default helper that is not there is often a config copied
            // from another machine (Docker Desktop's `desktop`): said, and
            // passed over. A helper named for this registry is not.
            Some(name) if !name.is_empty() => match helper(name) {
                Err(e @ super::credhelper::HelperError::NotInstalled { .. }) => {
                    tracing::warn!(
                        "auth file {}: credsStore: {e}; going on without it",
                        path.display()
                    );
                    Ok(None)
                }
                other => other.map_err(named),
            },
            _ => Ok(None),
        };
    };
    let bad = || CredentialsError::BadEntry {
        path: path.into(),
        key: key.clone(),
    };
    if let Some(token) = entry.identity_token() {
        return Ok(Some(Credentials::identity_token(token)));
    }
    let encoded = entry.auth.as_deref().unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials {
        username: user.to_owned(),
        password: Secret::new(pass),
    }))
}

/// The first credentials the auth files hold for `host`/`repository`.
fn lookup(host: &str, repository: &str) -> Result<Option<Credentials>, CredentialsError> {
    for file in auth_files() {
        if let Some(c) = from_auth_file(&file, host, repository)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// How the registry asked us to authenticate (`WWW-Authenticate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=…`.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter, if any.
        service: Option<String>,
        /// The `scope` parameter, if any.
        scope: Option<String>,
    },
}

/// Parse one `WWW-Authenticate` value; `None` for a scheme we do not know.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut map = BTreeMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, n)| (v, n))
        };
        map.insert(key, value.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: map.remove("realm")?,
            service: map.remove("service"),
            scope: map.remove("scope"),
        }),
        _ => None,
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token.
    pub value: Secret,
    /// A little before the issuer's expiry, so a request does not race it.
    pub refresh_at: Instant,
}

impl Token {
    /// A token the issuer says lasts `expires_in` seconds (60 when it does
    /// not say, per the distribution spec).
    pub fn new(value: Secret, expires_in: Option<u64>) -> Token {
        let life = Duration::from_secs(expires_in.unwrap_or(60).max(1));
        // Refresh at 90 % of the lifetime, at most 10 s early.
        let early = (life / 10).min(Duration::from_secs(10));
        Token {
            value,
            refresh_at: Instant::now() + life - early,
        }
    }

    /// Whether it is still good to send.
    pub fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// The token endpoint's answer.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let c: Credentials = "alice:hunter2-very-secret".parse().unwrap();
        let shown = format!("{c:?} {:?}", Token::new(Secret::new("tok-secret"), Some(5)));
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("tok-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn auth_file_lookup() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("auth.json");
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &f,
            serde_json::json!({"auths": {
                "reg.example:5000": {"auth": enc("u1:p1")},
                "reg.example:5000/team": {"auth": enc("u2:p:2")},
                "https://index.docker.io/v1/": {"auth": enc("hub:hp")},
                "broken.example": {"auth": "!!!"},
                "acr.example": {"auth": enc("00000000-0000-0000-0000-000000000000:"), "identitytoken": "rt1"},
                "empty.example": {"identitytoken": ""},
            }})
            .to_string(),
        )
        .unwrap();
        let get = |h: &str, r: &str| from_auth_file(&f, h, r);
        let c = get("reg.example:5000", "app").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("u1", "p1"));
        let c = get("reg.example:5000", "team/app").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("u2", "p:2"));
        let c = get("reg.example:5000", "teamx/app").unwrap().unwrap();
        assert_eq!(c.username, "u1");
        assert_eq!(
            get("docker.io", "library/x").unwrap().unwrap().username,
            "hub"
        );
        assert!(get("other.example", "x").unwrap().is_none());
        let c = get("acr.example", "x").unwrap().unwrap();
        assert!(c.is_identity_token() && c.password.expose() == "rt1");
        assert!(get("empty.example", "x").unwrap().is_none());
        let err = get("broken.example", "x").unwrap_err().to_string();
        assert!(
            err.contains("broken.example") && !err.contains("!!!"),
            "{err}"
        );
        assert!(
            from_auth_file(&tmp.path().join("none"), "a", "b")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn each_credential_source() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("auth.json");
        let enc = base64::engine::general_purpose::STANDARD.encode("u1:p1");
        std::fs::write(
            &f,
            serde_json::json!({"auths": {"reg.example": {"auth": enc}}}).to_string(),
        )
        .unwrap();
        let user = |source: CredentialSource| {
            source
                .resolve("reg.example", "app")
                .unwrap()
                .map(|c| c.username)
        };
        assert_eq!(
            user(CredentialSource::AuthFile(f.clone())).as_deref(),
            Some("u1")
        );
        let given = "u2:p2".parse().unwrap();
        assert_eq!(user(CredentialSource::Given(given)).as_deref(), Some("u2"));
        assert_eq!(user(CredentialSource::Anonymous), None);
        // A file named on purpose must be there; one found by searching
        // may be missing.
        let missing = tmp.path().join("gone.json");
        let err = CredentialSource::AuthFile(missing)
            .resolve("reg.example", "app")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone.json"), "{err}");
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }
}
