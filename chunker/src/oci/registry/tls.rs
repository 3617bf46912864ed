//! How a pull checks a registry's certificate: the system roots, plus
//! `--cert-dir`'s CAs, loaded on the first handshake that needs them; or,
//! with `--tls-verify=false`, no check of the chain at all. A client
//! certificate in `--cert-dir` (`NAME.cert` with `NAME.key`, as skopeo
//! and Docker lay them out) is offered to a registry that asks for one.
//!
//! Why not reqwest's own verifier: it reads every system root (about 150
//! files here, 8–10 ms) when the client is built, before the first
//! request. A registry spoken to over plain HTTP (loopback, or asked
//! for) never needs them, and for one spoken to over HTTPS the loading
//! now happens where the handshake is, once per pull.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::ErrorKind;

/// The TLS configuration for one pull.
pub(crate) fn client_config(
    cert_dir: Option<&Path>,
    verify: bool,
) -> Result<ClientConfig, ErrorKind> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let CertDir { cas, client } = match cert_dir {
        Some(dir) => read_cert_dir(dir)?,
        None => CertDir::default(),
    };
    let verifier = Arc::new(Verifier {
        provider: provider.clone(),
        roots: verify.then(|| LazyRoots::new(cas)),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ErrorKind::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client {
        Some((path, chain, key)) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ErrorKind::CertDir {
                    dir: path.parent().unwrap_or(&path).to_owned(),
                    reason: format!(
                        "{}: not a usable client certificate and key: {e}",
                        path.display()
                    ),
                })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// What a `--cert-dir` holds.
#[derive(Default)]
struct CertDir {
    /// `*.crt`: CAs.
    cas: Vec<CertificateDer<'static>>,
    /// The first `NAME.cert` (by name) with its `NAME.key`: the `.cert`
    /// file, its chain, and the key.
    client: Option<(
        PathBuf,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    )>,
}

/// Read `dir` as skopeo's --cert-dir: `*.crt` CA certificates, and client
/// certificates `NAME.cert` each with its key `NAME.key` (one without the
/// other is an error, as in skopeo).
fn read_cert_dir(dir: &Path) -> Result<CertDir, ErrorKind> {
    let bad = |reason: String| ErrorKind::CertDir {
        dir: dir.to_owned(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let has = |p: &Path, ext: &str| p.extension().is_some_and(|x| x == ext);
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())));
    let mut out = CertDir::default();
    for path in paths.iter().filter(|p| has(p, "crt")) {
        for cert in CertificateDer::pem_slice_iter(&read(path)?) {
            out.cas
                .push(cert.map_err(|e| bad(format!("{}: {e}", path.display())))?);
        }
    }
    for path in &paths {
        let (other, what) = if has(path, "cert") {
            (path.with_extension("key"), "its key")
        } else if has(path, "key") {
            (path.with_extension("cert"), "its client certificate")
        } else {
            continue;
        };
        if !paths.contains(&other) {
            return Err(bad(format!(
                "{}: {what} {} is missing",
                path.display(),
                other.display()
            )));
        }
    }
    if let Some(cert) = paths.iter().find(|p| has(p, "cert")) {
        let chain = CertificateDer::pem_slice_iter(&read(cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(bad(format!("{}: no certificate in it", cert.display())));
        }
        let key_path = cert.with_extension("key");
        // The key's bytes never reach a message, only its file's name.
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
            .map_err(|_| bad(format!("{}: not a PEM private key", key_path.display())))?;
        out.client = Some((cert.clone(), chain, key));
    }
    Ok(out)
}

/// The system roots and the extra CAs, read on the first certificate
/// there is to check, into a WebPKI verifier.
#[derive(Debug)]
struct LazyRoots {
    extra: Vec<CertificateDer<'static>>,
    inner: OnceLock<Result<Arc<WebPkiServerVerifier>, String>>,
}

impl LazyRoots {
    fn new(extra: Vec<CertificateDer<'static>>) -> Self {
        LazyRoots {
            extra,
            inner: OnceLock::new(),
        }
    }

    /// The verifier, reading the roots if this is the first call.
    fn verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.inner
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                for cert in &self.extra {
                    roots
                        .add(cert.clone())
                        .map_err(|e| format!("a --cert-dir certificate: {e}"))?;
                }
                let system = rustls_native_certs::load_native_certs();
                // Unreadable system roots are skipped, as the platform
                // verifier does; only having none at all is an error.
                roots.add_parsable_certificates(system.certs);
                if roots.is_empty() {
                    let why: Vec<String> = system.errors.iter().map(|e| e.to_string()).collect();
                    return Err(format!(
                        "no CA certificates to check the registry's against \
                         (system roots: {})",
                        if why.is_empty() {
                            "none found".into()
                        } else {
                            why.join("; ")
                        }
                    ));
                }
                WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| rustls::Error::General(e.clone()))
    }

    #[cfg(test)]
    fn loaded(&self) -> bool {
        self.inner.get().is_some()
    }
}

/// Checks a registry's certificate chain and name against [`LazyRoots`];
/// with none (`--tls-verify=false`), accepts any chain and name. The
/// handshake's signatures are checked either way, against the certificate
/// the server sent, so the session is at least with its key's holder.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    roots: Option<LazyRoots>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.roots {
            Some(roots) => roots.verifier(&self.provider)?.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roots_are_read_at_the_first_check_and_not_before() {
        let verifier = Verifier {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Some(LazyRoots::new(Vec::new())),
        };
        let loaded = || verifier.roots.as_ref().unwrap().loaded();
        assert!(!loaded());
        let name = ServerName::try_from("registry.example").unwrap();
        let not_a_cert = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let err = verifier
            .verify_server_cert(&not_a_cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(loaded(), "checked without reading roots: {err}");
    }

    #[test]
    fn a_cert_dir_that_is_not_there_is_named() {
        let dir = Path::new("/nonexistent/imagefs-cert-dir");
        match client_config(Some(dir), true) {
            Err(ErrorKind::CertDir { dir: d, .. }) => assert_eq!(d, dir),
            other => panic!("expected a CertDir error, got {other:?}"),
        }
    }

    #[test]
    fn client_certificate_pairs_are_checked() {
        let reason = |files: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            match client_config(Some(dir.path()), true) {
                Err(ErrorKind::CertDir { reason, .. }) => reason,
                other => panic!("expected a CertDir error, got {other:?}"),
            }
        };
        let r = reason(&[("me.cert", "")]);
        assert!(
            r.contains("me.cert") && r.contains("me.key is missing"),
            "{r}"
        );
        let r = reason(&[("me.key", "")]);
        assert!(r.contains("me.cert is missing"), "{r}");
        let r = reason(&[("me.cert", ""), ("me.key", "")]);
        assert!(r.contains("me.cert: no certificate"), "{r}");
        let cert = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        let r = reason(&[("me.cert", cert), ("me.key", "s3cret-key-bytes")]);
        assert!(r.contains("me.key: not a PEM private key"), "{r}");
        assert!(!r.contains("s3cret"), "{r}");
    }

    #[test]
    fn a_broken_pem_in_the_cert_dir_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        match client_config(Some(dir.path()), true) {
            Err(ErrorKind::CertDir { reason, .. }) => {
                assert!(reason.contains("ca.crt"), "{reason}")
            }
            other => panic!("expected a CertDir error, got {other:?}"),
        }
    }
}
