//! A bearer-token issuer for `docker-registry`'s `auth: token` mode: a
//! small HTTP server on loopback that checks basic credentials and answers
//! with an ES256 JWT. The signing certificate (self-signed, made with the
//! `openssl` command) goes into the token's `x5c` header and into the
//! registry's `rootcertbundle`, which is how the registry trusts it.
//!
//! Tokens live `life` seconds as far as the registry is concerned, while
//! the `expires_in` the client is told can be set apart, so a test can make
//! a token expire at the registry before the client expects it to (the 401
//! in the middle of a pull).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::registry::{ec_key, openssl};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// How the issuer hands out tokens.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The one user allowed (`None`: anyone, anonymous included).
    pub user: Option<(String, String)>,
    /// `iss` and `aud`, as in the registry config.
    pub issuer: String,
    /// The registry's `service`.
    pub service: String,
    /// Seconds from issue to `exp`, as the registry checks it (may be
    /// negative to cancel the registry's clock-skew leeway).
    pub life: i64,
    /// What the client is told (`expires_in`).
    pub expires_in: u64,
    /// An identity token (OAuth2 refresh token) accepted in a POSTed
    /// `grant_type=refresh_token` form, as Docker sends one.
    pub refresh_token: Option<String>,
}

struct Shared {
    config: IssuerConfig,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    life: AtomicI64,
    issued: AtomicU64,
    refused: AtomicU64,
    refreshed: AtomicU64,
    stop: AtomicBool,
}

/// A running issuer; stops accepting on drop.
pub struct TokenIssuer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cert_pem: PathBuf,
}

impl TokenIssuer {
    /// Make a signing key and certificate in `dir` and start serving.
    pub fn start(dir: &Path, config: IssuerConfig) -> Result<TokenIssuer, String> {
        ec_key(dir, "token", "/CN=imagefs test token issuer", true, &[])?;
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "token.key",
                "-outform",
                "DER",
                "-out",
                "token.p8",
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token.crt",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
        )?;
        let p8 = std::fs::read(dir.join("token.p8")).map_err(|e| e.to_string())?;
        let cert_der = std::fs::read(dir.join("token.der")).map_err(|e| e.to_string())?;
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &p8, &SystemRandom::new())
                .map_err(|e| format!("token key: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            life: AtomicI64::new(config.life),
            config,
            key,
            cert_der,
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refreshed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        crate::registry::accept_loop(
            listener,
            shared.clone(),
            |s| s.stop.load(Ordering::SeqCst),
            serve,
        );
        Ok(TokenIssuer {
            addr,
            shared,
            cert_pem: dir.join("token.crt"),
        })
    }

    /// The token endpoint (the registry's `realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate file for the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &Path {
        &self.cert_pem
    }

    /// Change the lifetime of the tokens issued from now on.
    pub fn set_life(&self, seconds: i64) {
        self.shared.life.store(seconds, Ordering::SeqCst);
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Token requests refused (wrong or missing credentials).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// A token that lets `sub` pull `repository`, issued out of band (as a
    /// CI system hands a job one).
    pub fn pull_token(&self, sub: &str, repository: &str) -> String {
        let access = serde_json::json!({
            "type": "repository", "name": repository, "actions": ["pull"],
        });
        mint(&self.shared, sub, vec![access]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Tokens issued for the identity token.
    pub fn refreshed(&self) -> u64 {
        self.shared.refreshed.load(Ordering::SeqCst)
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A signed token for `sub` with `access` claims.
fn mint(s: &Shared, sub: &str, access: Vec<serde_json::Value>) -> std::io::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let n = s.issued.fetch_add(1, Ordering::SeqCst);
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&s.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": s.config.issuer,
        "sub": sub,
        "aud": s.config.service,
        "exp": now + s.life.load(Ordering::SeqCst),
        "nbf": now - 120,
        "iat": now - 120,
        "jti": format!("token-{n}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = s
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| std::io::Error::other("signing failed"))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    ))
}

fn serve(s: &Shared, conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0).min(64 * 1024);
            }
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("");
    // A POST carries its parameters as a form (OAuth2), a GET in the query.
    let post = request_line.starts_with("POST ");
    let mut form = vec![0u8; if post { length } else { 0 }];
    std::io::Read::read_exact(&mut reader, &mut form)?;
    let form = String::from_utf8_lossy(&form).into_owned();
    let query = if post {
        form.as_str()
    } else {
        target.split_once('?').map_or("", |(_, q)| q)
    };
    let user = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let mut conn = conn;
    let allowed = if post {
        query_param(query, "grant_type").as_deref() == Some("refresh_token")
            && s.config.refresh_token.is_some()
            && query_param(query, "refresh_token") == s.config.refresh_token
    } else {
        match &s.config.user {
            None => true,
            Some(want) => user.as_ref() == Some(want),
        }
    };
    if !allowed {
        s.refused.fetch_add(1, Ordering::SeqCst);
        return conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    // scope=repository:NAME:ACTIONS (pull, push for skopeo).
    let access: Vec<serde_json::Value> = query_param(query, "scope")
        .into_iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, _) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind, "name": name, "actions": ["pull", "push"],
            }))
        })
        .collect();
    let token = mint(s, &user.map(|u| u.0).unwrap_or_default(), access)?;
    // OAuth2's answer names the token `access_token`.
    let body = if post {
        s.refreshed.fetch_add(1, Ordering::SeqCst);
        serde_json::json!({"access_token": token, "expires_in": s.config.expires_in})
    } else {
        serde_json::json!({"token": token, "expires_in": s.config.expires_in})
    }
    .to_string();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}
