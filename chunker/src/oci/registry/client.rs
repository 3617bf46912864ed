//! The HTTP side of a pull: one client per repository, speaking the OCI
//! distribution API over reqwest's blocking client.
//!
//! Why not `oci-client`: a pull here needs control that crate does not
//! give: resuming a blob with a Range request after a reset, a 4 MiB cap on
//! manifests before they are read, one fresh token and a retry on a 401 in
//! the middle of a pull, and redirects followed without credentials. It is
//! also async, and the rest of chunker is synchronous. reqwest is already in
//! the tree with rustls and ring (its `rustls` feature would pull aws-lc-rs,
//! a cmake C build). Certificates are checked by the private `tls` module.
//!
//! Every request goes through [`Client::get`]: it adds credentials, follows
//! redirects (without them), answers a 401 with one fresh token, and
//! retries 5xx answers and broken connections with backoff.

use std::io::Read;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{self, HeaderMap};

use super::auth::{
    Challenge, CredentialSource, Credentials, Secret, Token, TokenResponse, parse_challenge,
};
use super::{ErrorKind, RegistryError, RegistryOptions, Who};
use crate::oci::Digest;
use crate::oci::registry::reference::Reference;
use crate::oci::spec;

/// A manifest larger than this is refused before it is read.
pub const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// What we accept from the manifests endpoint.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Default)]
struct AuthState {
    challenge: Option<Challenge>,
    token: Option<Token>,
}

/// A connection to one repository of one registry.
#[derive(Debug)]
pub struct Client {
    http: Http,
    base: String,
    registry: String,
    repository: String,
    login: Login,
    auth: Mutex<AuthState>,
    patience: Patience,
}

/// What the client logs in with, sorted once from the credentials.
#[derive(Debug)]
enum Login {
    Anonymous,
    /// Basic auth, or basic auth at the token service.
    Password(Credentials),
    /// An OAuth2 refresh token, for the token service only.
    IdentityToken(Secret),
    /// `--registry-token`: sent as the bearer token, never fetched.
    RegistryToken(Secret),
}

impl Login {
    fn who(&self) -> Who {
        match self {
            Login::Anonymous => Who::Anonymous,
            Login::Password(c) => Who::User(c.username.clone()),
            Login::IdentityToken(_) => Who::IdentityToken,
            Login::RegistryToken(_) => Who::RegistryToken,
        }
    }
}

/// How long to wait for the registry, and how often to try again.
#[derive(Clone, Copy, Debug)]
struct Patience {
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl Patience {
    /// After the `attempt`th failure of `what` (`failed`): wait out the
    /// backoff before the next try, or give up if the retries are spent.
    fn retry(&self, attempt: &mut u32, what: &str, failed: ErrorKind) -> Result<(), ErrorKind> {
        *attempt += 1;
        if *attempt > self.retries {
            return Err(ErrorKind::GaveUp {
                what: what.into(),
                attempts: *attempt,
                last: Box::new(failed),
            });
        }
        std::thread::sleep(self.backoff_for(*attempt));
        Ok(())
    }

    /// Backoff before retry `attempt` (1-based): doubling, capped.
    fn backoff_for(&self, attempt: u32) -> Duration {
        (self.backoff * 2u32.saturating_pow(attempt.saturating_sub(1).min(6)))
            .min(Duration::from_secs(10))
    }
}

fn is_transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

impl Client {
    /// Connect to the registry `reference` names and learn how it wants us
    /// to authenticate: HTTPS first; plain HTTP only for a loopback
    /// registry or with `tls_verify` off.
    pub fn connect(reference: &Reference, opts: &RegistryOptions) -> Result<Client, RegistryError> {
        let err = |kind| RegistryError::new(&reference.host, &reference.repository, kind);
        if !opts.tls_verify {
            tracing::warn!(
                "TLS certificates of {} are not verified (--tls-verify=false)",
                reference.host
            );
        }
        let tls =
            super::tls::client_config(opts.cert_dir.as_deref(), opts.tls_verify).map_err(err)?;
        let builder = Http::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.timeout)
            // Per wait: for the answer head, then for each read of the
            // body; a registry that stops answering fails within it.
            .timeout(opts.timeout)
            .user_agent(concat!("imagefs/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(tls);
        let http = builder.build().map_err(|e| err(ErrorKind::Transport(e)))?;
        let login = match &opts.credentials {
            CredentialSource::BearerToken(t) => Login::RegistryToken(t.clone()),
            source => match source
                .resolve(&reference.host, &reference.repository)
                .map_err(|e| err(ErrorKind::Credentials(e)))?
            {
                None => Login::Anonymous,
                Some(c) if c.is_identity_token() => Login::IdentityToken(c.password),
                Some(c) => Login::Password(c),
            },
        };
        let mut client = Client {
            http,
            base: format!("https://{}", reference.api_host()),
            registry: reference.host.clone(),
            repository: reference.repository.clone(),
            login,
            auth: Mutex::new(AuthState::default()),
            patience: Patience {
                timeout: opts.timeout,
                retries: opts.retries,
                backoff: opts.backoff,
            },
        };
        let http_base = format!("http://{}", reference.api_host());
        // On this machine plain HTTP is asked at the same time as HTTPS
        // (a ping carries nothing secret), so a plain-HTTP registry does
        // not wait for a failed handshake first; its answer is not waited
        // for when HTTPS answers (a TLS server may take its time to drop
        // a request it cannot read). Elsewhere plain HTTP is asked only
        // after HTTPS fails at the transport, with --tls-verify=false.
        let early_http = reference.is_loopback().then(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (http, base) = (client.http.clone(), http_base.clone());
            let patience = client.patience;
            std::thread::spawn(move || tx.send(ping(&http, &base, patience)));
            rx
        });
        let https =
            ping(&client.http, &client.base, client.patience).map_err(|kind| client.err(kind));
        let allow_http = reference.is_loopback() || !opts.tls_verify;
        let challenge = match https {
            Ok(challenge) => challenge,
            Err(e) if allow_http && matches!(e.kind, ErrorKind::Transport(_)) => {
                let http = match early_http {
                    Some(rx) => rx.recv().unwrap_or(Err(ErrorKind::Poisoned)),
                    None => ping(&client.http, &http_base, client.patience),
                }
                .map_err(|kind| client.err(kind));
                client.base = http_base;
                http.map_err(|http_err| {
                    // Both failed. An HTTPS server answers plain HTTP with
                    // 400, and then the TLS error is the telling one.
                    match http_err.kind {
                        ErrorKind::Transport(_) | ErrorKind::Status { status: 400, .. } => e,
                        _ => http_err,
                    }
                })?
            }
            Err(e) => return Err(e),
        };
        // Nothing else has the client yet: the lock cannot be poisoned.
        client
            .auth
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .challenge = challenge;
        Ok(client)
    }

    fn err(&self, kind: ErrorKind) -> RegistryError {
        RegistryError::new(&self.registry, &self.repository, kind)
    }

    /// The Authorization header value to send now, fetching a token when
    /// the registry wants one and ours is missing or about to expire.
    fn authorization(&self, force_new: bool) -> Result<Option<Secret>, RegistryError> {
        let mut auth = self
            .auth
            .lock()
            .map_err(|_| self.err(ErrorKind::Poisoned))?;
        match auth.challenge.clone() {
            None => Ok(None),
            // Tokens are for the token service only.
            Some(Challenge::Basic) => Ok(match &self.login {
                Login::Password(c) => {
                    let raw = format!("{}:{}", c.username, c.password.expose());
                    Some(Secret::new(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    )))
                }
                _ => None,
            }),
            Some(Challenge::Bearer {
                realm,
                service,
                scope: _,
            }) => {
                if let Login::RegistryToken(t) = &self.login {
                    // Nothing to fetch, and nothing fresher to get.
                    return Ok(Some(Secret::new(format!("Bearer {}", t.expose()))));
                }
                if !force_new && let Some(t) = auth.token.as_ref().filter(|t| t.fresh()) {
                    return Ok(Some(Secret::new(format!("Bearer {}", t.value.expose()))));
                }
                let token = self.fetch_token(&realm, service.as_deref())?;
                let header = Secret::new(format!("Bearer {}", token.value.expose()));
                auth.token = Some(token);
                Ok(Some(header))
            }
        }
    }

    /// Ask the token service for a pull token for this repository.
    fn fetch_token(&self, realm: &str, service: Option<&str>) -> Result<Token, RegistryError> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            self.err(ErrorKind::Token {
                realm: realm.into(),
                reason: format!("not a URL: {e}"),
            })
        })?;
        let scope = format!("repository:{}:pull", self.repository);
        let req = match &self.login {
            // OAuth2's refresh-token grant (RFC 6749 section 6), as Docker
            // and skopeo send an identity token: in a POSTed form.
            Login::IdentityToken(token) => {
                let mut form = url.clone();
                form.set_query(None);
                form.query_pairs_mut()
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", token.expose())
                    .append_pair("client_id", "imagefs")
                    .append_pair("scope", &scope);
                if let Some(s) = service {
                    form.query_pairs_mut().append_pair("service", s);
                }
                self.http
                    .post(url)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.query().unwrap_or_default().to_owned())
            }
            login => {
                url.query_pairs_mut().append_pair("scope", &scope);
                if let Some(s) = service {
                    url.query_pairs_mut().append_pair("service", s);
                }
                let req = self.http.get(url);
                match login {
                    Login::Password(c) => req.basic_auth(&c.username, Some(c.password.expose())),
                    // A registry token never gets here: it is not fetched.
                    _ => req,
                }
            }
        };
        let resp = req.send().map_err(|source| {
            self.err(ErrorKind::TokenUnreachable {
                realm: realm.into(),
                source,
            })
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.err(self.unauthorized()));
        }
        if !status.is_success() {
            return Err(self.err(ErrorKind::Token {
                realm: realm.into(),
                reason: format!("HTTP {status}"),
            }));
        }
        let mut body = Vec::new();
        resp.take(64 * 1024).read_to_end(&mut body).map_err(|e| {
            self.err(ErrorKind::Token {
                realm: realm.into(),
                reason: e.to_string(),
            })
        })?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            self.err(ErrorKind::Token {
                realm: realm.into(),
                reason: "the answer is not a token document".into(),
            })
        })?;
        let value = parsed.token.or(parsed.access_token).ok_or_else(|| {
            self.err(ErrorKind::Token {
                realm: realm.into(),
                reason: "the answer holds no token".into(),
            })
        })?;
        Ok(Token::new(Secret::new(value), parsed.expires_in))
    }

    fn unauthorized(&self) -> ErrorKind {
        ErrorKind::Unauthorized {
            who: self.login.who(),
        }
    }

    /// GET `path` (under `/v2/<repo>/`), from byte `from` on when it is not
    /// zero. Returns a 2xx answer; `what` names the object in errors.
    pub fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        from: u64,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let url = format!("{}/v2/{}/{}", self.base, self.repository, path);
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            let auth = self.authorization(false)?;
            let build = |url: &str, auth: Option<&Secret>| -> RequestBuilder {
                let mut req = self.http.get(url);
                if let Some(a) = accept {
                    req = req.header(header::ACCEPT, a);
                }
                if from > 0 {
                    req = req.header(header::RANGE, format!("bytes={from}-"));
                }
                if let Some(a) = auth {
                    req = req.header(header::AUTHORIZATION, a.expose());
                }
                req
            };
            let result = self.follow(build, &url, auth.as_ref(), what);
            let retry = match result {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    if refreshed {
                        return Err(self.err(self.unauthorized()));
                    }
                    // A new challenge (first contact, or an expired token):
                    // one fresh token, one retry.
                    if let Some(c) = challenge_of(resp.headers()) {
                        self.auth
                            .lock()
                            .map_err(|_| self.err(ErrorKind::Poisoned))?
                            .challenge = Some(c);
                    }
                    let fresh = self.authorization(true)?;
                    if fresh.is_none() {
                        return Err(self.err(self.unauthorized()));
                    }
                    refreshed = true;
                    continue;
                }
                Ok(resp) if resp.status() == StatusCode::FORBIDDEN => {
                    return Err(self.err(self.unauthorized()));
                }
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                    return Err(self.err(ErrorKind::NotFound { what: what.into() }));
                }
                Ok(resp) if is_transient(resp.status()) => ErrorKind::Status {
                    what: what.into(),
                    status: resp.status().as_u16(),
                },
                Ok(resp) => {
                    return Err(self.err(ErrorKind::Status {
                        what: what.into(),
                        status: resp.status().as_u16(),
                    }));
                }
                Err(FollowError::Transport(e)) => transport(e, self.patience.timeout),
                Err(FollowError::Fatal(kind)) => return Err(self.err(kind)),
            };
            self.patience
                .retry(&mut attempt, what, retry)
                .map_err(|kind| self.err(kind))?;
        }
    }

    /// Backoff before retry `attempt` (1-based): doubling, capped.
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        self.patience.backoff_for(attempt)
    }

    /// Reading `what`'s body failed with `e`: a timeout says how long
    /// nothing came.
    pub fn read_failed(&self, what: String, e: std::io::Error) -> ErrorKind {
        if is_timeout(&e) {
            ErrorKind::ReadTimeout {
                what,
                after: self.patience.timeout,
                source: e,
            }
        } else {
            ErrorKind::Read { what, source: e }
        }
    }

    /// Retries allowed after a failed transfer.
    pub fn retries(&self) -> u32 {
        self.patience.retries
    }

    /// Send, following redirects; credentials go only to the first URL.
    fn follow(
        &self,
        build: impl Fn(&str, Option<&Secret>) -> RequestBuilder,
        url: &str,
        auth: Option<&Secret>,
        what: &str,
    ) -> Result<Response, FollowError> {
        let mut resp = build(url, auth).send().map_err(FollowError::Transport)?;
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| resp.url().join(l).ok())
                .ok_or_else(|| {
                    FollowError::Fatal(ErrorKind::Status {
                        what: format!("{what} (a redirect without a usable Location)"),
                        status: resp.status().as_u16(),
                    })
                })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(FollowError::Fatal(ErrorKind::Redirect {
                    what: what.into(),
                    to: next.to_string(),
                }));
            }
            // Blob stores (S3, CDNs) take a signed URL and refuse, or would
            // learn, the registry's credentials: never send them on.
            resp = build(next.as_str(), None)
                .send()
                .map_err(FollowError::Transport)?;
        }
        Err(FollowError::Fatal(ErrorKind::Redirect {
            what: what.into(),
            to: format!("more than {MAX_REDIRECTS} redirects"),
        }))
    }

    /// Fetch a manifest or index by tag or digest: its bytes (at most
    /// [`MAX_MANIFEST`]), media type and digest. A digest reference, and the
    /// `Docker-Content-Digest` the registry states, must match the bytes.
    pub fn manifest(
        &self,
        target: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let what = format!("manifest {target}");
        let resp = self.get(
            &format!("manifests/{target}"),
            Some(MANIFEST_TYPES),
            0,
            &what,
        )?;
        let too_large = |size| {
            self.err(ErrorKind::TooLarge {
                what: what.clone(),
                size,
                limit: MAX_MANIFEST,
            })
        };
        if let Some(len) = resp.content_length()
            && len > MAX_MANIFEST
        {
            return Err(too_large(len));
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let stated = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let mut bytes = Vec::new();
        resp.take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.err(self.read_failed(what.clone(), e)))?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(too_large(bytes.len() as u64));
        }
        let actual = Digest::of(&bytes);
        for want in expected.into_iter().chain(stated.as_ref()) {
            if *want != actual {
                return Err(self.err(ErrorKind::DigestMismatch {
                    what,
                    expected: want.clone(),
                    actual,
                }));
            }
        }
        let media_type = if is_known_manifest(&media_type) {
            media_type
        } else {
            // Some registries answer application/json; the document says.
            String::new()
        };
        Ok((bytes, media_type, actual))
    }

    /// Fetch a small blob (a config) whole, checking size and digest.
    pub fn small_blob(
        &self,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{what} {digest}");
        const MAX_CONFIG: u64 = 64 * 1024 * 1024;
        if size > MAX_CONFIG {
            return Err(self.err(ErrorKind::TooLarge {
                what,
                size,
                limit: MAX_CONFIG,
            }));
        }
        let resp = self.get(&format!("blobs/{digest}"), None, 0, &what)?;
        let mut bytes = Vec::new();
        resp.take(size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.err(self.read_failed(what.clone(), e)))?;
        if bytes.len() as u64 != size {
            return Err(self.err(ErrorKind::SizeMismatch {
                what,
                expected: size,
                actual: bytes.len() as u64,
            }));
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(self.err(ErrorKind::DigestMismatch {
                what,
                expected: digest.clone(),
                actual,
            }));
        }
        Ok(bytes)
    }

    /// Wrap `kind` as this repository's error.
    pub fn error(&self, kind: ErrorKind) -> RegistryError {
        self.err(kind)
    }
}

fn is_known_manifest(media_type: &str) -> bool {
    [
        spec::OCI_INDEX,
        spec::OCI_MANIFEST,
        spec::DOCKER_LIST,
        spec::DOCKER_MANIFEST,
    ]
    .contains(&media_type)
}

enum FollowError {
    Transport(reqwest::Error),
    Fatal(ErrorKind),
}

/// `GET {base}/v2/`: does it answer, and what challenge does it send.
/// A transient status or a timeout is retried as [`Client::get`] does;
/// a failed connection is returned at once (the caller may try plain
/// HTTP next).
fn ping(http: &Http, base: &str, patience: Patience) -> Result<Option<Challenge>, ErrorKind> {
    let what = "the API root /v2/";
    let mut attempt = 0;
    loop {
        let failed = match http.get(format!("{base}/v2/")).send() {
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                return Ok(challenge_of(resp.headers()));
            }
            Ok(resp) if resp.status().is_success() => return Ok(None),
            Ok(resp) => {
                let kind = ErrorKind::Status {
                    what: what.into(),
                    status: resp.status().as_u16(),
                };
                if !is_transient(resp.status()) {
                    return Err(kind);
                }
                kind
            }
            Err(e) if e.is_timeout() => transport(e, patience.timeout),
            Err(e) => return Err(transport(e, patience.timeout)),
        };
        patience.retry(&mut attempt, what, failed)?;
    }
}

fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        // Prefer a token: a registry offering both means it.
        .max_by_key(|c| matches!(c, Challenge::Bearer { .. }))
}

fn transport(e: reqwest::Error, after: Duration) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout { after, source: e }
    } else if refused_our_certificate(&e) {
        ErrorKind::ClientCertRefused(e)
    } else {
        ErrorKind::Transport(e)
    }
}

/// Whether the server's TLS alert was about our certificate: sent without
/// one (`certificate_required`, or `bad_certificate` from TLS 1.2 and Go's
/// servers) or with one it does not trust.
fn refused_our_certificate(e: &reqwest::Error) -> bool {
    use rustls::AlertDescription as A;
    any_cause(e, |c| {
        matches!(
            c.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::AlertReceived(
                A::BadCertificate | A::CertificateRequired | A::UnknownCA
            ))
        )
    })
}

/// Whether `e` or any error under it is one `is` picks. An `io::Error`'s
/// `source` skips the error it wraps, so that one is stepped into.
fn any_cause(
    e: &(dyn std::error::Error + 'static),
    is: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if is(c) {
            return true;
        }
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|r| r as _),
            None => c.source(),
        };
    }
    false
}

/// Whether a body read failed because nothing came in time (reqwest's
/// timeout, wrapped in the io::Error its reader returns).
fn is_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || any_cause(e, |c| {
            c.downcast_ref::<reqwest::Error>()
                .is_some_and(|r| r.is_timeout())
        })
}
