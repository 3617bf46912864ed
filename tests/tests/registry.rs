//! Pulling from a real registry: Debian's `docker-registry`, started here
//! on loopback with its own config, images pushed with `skopeo copy`.
//! Each pull is compared with the same image read from an `oci:` layout:
//! the flattened images must be byte-identical. Without docker-registry or
//! skopeo each test prints `SKIP:`.

use std::path::Path;
use std::time::Duration;

use cachetiers::DirStore;
use chunker::convert::{ConvertOptions, convert};
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use chunker::oci::registry::{CredentialSource, Credentials, Platform, RegistryOptions, Secret};
use manifest::LocalKeyProvider;
use tests::delayproxy::DelayProxy;
use tests::e2e::{debian_layout, error_chain, image_digest, layout_tags};
use tests::harness::{require_tool, skip};
use tests::imagegen::{Compression, Entry, Image, Layer, noise};
use tests::registry::{Auth, Registry, make_client_cert, make_tls};
use tests::tokenissuer::{IssuerConfig, TokenIssuer};

fn start(auth: Auth, tls: Option<tests::registry::Tls>) -> Option<Registry> {
    if !require_tool("skopeo") {
        return None;
    }
    match Registry::start(auth, tls) {
        Ok(r) => Some(r),
        Err(tests::registry::RegistryStartError::NotInstalled) => {
            skip("docker-registry is not installed (scripts/install-deps.sh)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn app_image(seed: u64) -> Image {
    Image::new(vec![
        Layer::new(vec![
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/libbig.so", noise(seed, 900_000)),
            Entry::file("etc/os-release", b"ID=test\n"),
        ])
        .compressed(Compression::Gzip),
        Layer::new(vec![Entry::file("app/a.bin", noise(seed + 1, 300_000))])
            .compressed(Compression::Zstd),
        Layer::new(vec![Entry::file("app/plain.txt", b"uncompressed layer\n")]),
    ])
}

/// A registry source with `opts`.
fn source(s: &str, opts: RegistryOptions) -> ImageSource {
    let mut src: ImageSource = s.parse().unwrap();
    *src.registry_options_mut().expect("a registry source") = opts;
    src
}

fn quick() -> RegistryOptions {
    RegistryOptions {
        retries: 1,
        backoff: Duration::from_millis(10),
        ..RegistryOptions::default()
    }
}

/// `--creds USER:PASSWORD`.
fn given(creds: &str) -> CredentialSource {
    CredentialSource::Given(creds.parse::<Credentials>().unwrap())
}

fn flatten_digest(src: &ImageSource, out: &Path) -> String {
    flatten_to_file(src, out, &FlattenOptions::default())
        .unwrap_or_else(|e| panic!("flatten {src}: {}", error_chain(&e)));
    let d = image_digest(out);
    std::fs::remove_file(out).unwrap();
    d
}

#[test]
fn anonymous_http_pull_is_identical_to_the_layout() {
    let Some(reg) = start(Auth::None, None) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    app_image(7).write_oci_layout(&layout, "v1").unwrap();
    reg.push(&format!("oci:{}:v1", layout.display()), "team/app:v1", &[])
        .unwrap();

    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let from_reg = source(&format!("docker://{}/team/app:v1", reg.host()), quick());
    let out = tmp.path().join("out.img");
    assert_eq!(
        flatten_digest(&from_reg, &out),
        flatten_digest(&from_oci, &out)
    );

    // By digest too, and convert: the same chunks (all deduplicated the
    // second time).
    let report = flatten_to_file(&from_reg, &out, &FlattenOptions::default()).unwrap();
    std::fs::remove_file(&out).unwrap();
    let by_digest = source(
        &format!("docker://{}/team/app@{}", reg.host(), report.image_digest),
        quick(),
    );
    let store = DirStore::create(tmp.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(tmp.path().join("keys")).unwrap();
    let opts = ConvertOptions {
        threads: 2,
        ..ConvertOptions::default()
    };
    let a = convert(&from_oci, &store, &keys, &opts).unwrap();
    // The same image manifest from the registry: already converted (the
    // record is keyed by the manifest digest, not by where it came from).
    let b = convert(&by_digest, &store, &keys, &opts)
        .unwrap_or_else(|e| panic!("convert {by_digest}: {}", error_chain(&e)));
    assert!(b.already_converted, "{b:?}");
    assert_eq!((b.digest, b.chunks, b.flatten), (a.digest, a.chunks, None));
    // Forced: pulled and converted again, to the same manifest and chunks.
    let forced = ConvertOptions {
        force: true,
        ..opts.clone()
    };
    let c = convert(&by_digest, &store, &keys, &forced)
        .unwrap_or_else(|e| panic!("convert {by_digest}: {}", error_chain(&e)));
    assert!(!c.already_converted);
    assert_eq!(a.chunks, c.chunks);
    assert_eq!(
        c.new_chunks, 0,
        "the registry pull gave other chunks: {c:?}"
    );
    let unsealed = |d| manifest::unseal(&store.get_manifest(d).unwrap(), &keys).unwrap();
    assert_eq!(unsealed(&c.digest), unsealed(&a.digest));
    assert_eq!(
        a.flatten.map(|f| f.image_digest),
        c.flatten.map(|f| f.image_digest)
    );

    // Unknown repository, unknown tag: named, and nothing written.
    for (name, want) in [
        ("team/nosuch:v1", "manifest v1 not found"),
        ("team/app:v9", "manifest v9 not found"),
    ] {
        let src = source(&format!("docker://{}/{name}", reg.host()), quick());
        let err = flatten_to_file(&src, &out, &FlattenOptions::default()).unwrap_err();
        let msg = error_chain(&err);
        let repo = name.split(':').next().unwrap();
        assert!(
            msg.contains(want) && msg.contains(repo) && msg.contains(&reg.host()),
            "{msg}"
        );
        assert!(!out.exists());
    }

    // No spool left behind in the temporary directory we gave it.
    let spool_dir = tmp.path().join("spool");
    std::fs::create_dir(&spool_dir).unwrap();
    let with_spool = source(
        &format!("docker://{}/team/app:v1", reg.host()),
        RegistryOptions {
            spool_dir: Some(spool_dir.clone()),
            max_parallel: 2,
            // Smaller than any layer: one at a time, still completes.
            spool_budget: 1,
            ..quick()
        },
    );
    let _ = flatten_digest(&with_spool, &out);
    assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
}

/// The converter writes the store back only while no download spool's
/// files hold layer bytes not yet read (a `syncfs` would write those too):
/// the image says when that is. (Whether a layer read as it arrives
/// counts depends on when its reader came: the arrival tests hold that.)
#[test]
fn the_image_says_while_its_spool_holds_unread_layers() {
    let Some(reg) = start(Auth::None, None) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    app_image(9).write_oci_layout(&layout, "v1").unwrap();
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "team/spool:v1",
        &[],
    )
    .unwrap();
    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    assert!(!chunker::oci::Image::open(&from_oci).unwrap().spooling());

    let src = source(&format!("docker://{}/team/spool:v1", reg.host()), quick());
    let image = chunker::oci::Image::open(&src).unwrap();
    assert!(image.spooling(), "downloads started, nothing read yet");
    let (last, below) = image.layers.split_last().unwrap();
    for layer in below {
        let (mut stream, _) = image.open_layer(layer).unwrap();
        std::io::copy(&mut stream, &mut std::io::sink()).unwrap();
        stream.finish().unwrap();
    }
    assert!(image.spooling(), "the top layer is not read yet");
    let (mut stream, _) = image.open_layer(last).unwrap();
    std::io::copy(&mut stream, &mut std::io::sink()).unwrap();
    stream.finish().unwrap();
    assert!(!image.spooling(), "every layer read and closed");
}

#[test]
fn debian_image_from_the_registry_is_identical() {
    let layout = debian_layout();
    let tags = layout_tags(&layout).unwrap_or_default();
    if !tags.iter().any(|t| t == "base") {
        skip(&format!(
            "no Debian layout with tag base at {} (scripts/build-debian-images.sh)",
            layout.display()
        ));
        return;
    }
    let Some(reg) = start(Auth::None, None) else {
        return;
    };
    reg.push(
        &format!("oci:{}:base", layout.display()),
        "debian:base",
        &[],
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.img");
    let from_oci: ImageSource = format!("oci:{}:base", layout.display()).parse().unwrap();
    let from_reg = source(&format!("docker://{}/debian:base", reg.host()), quick());
    assert_eq!(
        flatten_digest(&from_reg, &out),
        flatten_digest(&from_oci, &out)
    );
}

#[test]
fn multi_arch_index_picks_the_platform() {
    let Some(reg) = start(Auth::None, None) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    let (amd, arm) = (app_image(20), app_image(30));
    Image::write_multi_platform_layout(&[(&amd, "amd64"), (&arm, "arm64")], &layout, "m").unwrap();
    reg.push(
        &format!("oci:{}:m", layout.display()),
        "multi:m",
        &["--all"],
    )
    .unwrap();
    let single = |img: &Image, name: &str| {
        let dir = tmp.path().join(name);
        img.write_oci_layout(&dir, name).unwrap();
        format!("oci:{}:{name}", dir.display())
            .parse::<ImageSource>()
            .unwrap()
    };
    let out = tmp.path().join("out.img");
    let reference = format!("docker://{}/multi:m", reg.host());
    let pick = |p: &str| {
        source(
            &reference,
            RegistryOptions {
                platform: Some(p.parse::<Platform>().unwrap()),
                ..quick()
            },
        )
    };
    assert_eq!(
        flatten_digest(&pick("linux/arm64"), &out),
        flatten_digest(&single(&arm, "arm"), &out)
    );
    assert_eq!(
        flatten_digest(&pick("linux/amd64"), &out),
        flatten_digest(&single(&amd, "amd"), &out)
    );
    let err = flatten_to_file(&pick("linux/s390x"), &out, &FlattenOptions::default()).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/amd64") && msg.contains("linux/arm64"),
        "{msg}"
    );
    assert!(!out.exists());
}

#[test]
fn basic_auth_over_tls_with_a_test_ca() {
    if !require_tool("openssl") || !require_tool("htpasswd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ca, tls) = make_tls(tmp.path()).unwrap();
    let certs = tmp.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let auth = Auth::Htpasswd {
        user: "puller".into(),
        password: "s3cret-pw".into(),
    };
    let Some(reg) = start(auth, Some(tls)) else {
        return;
    };
    let layout = tmp.path().join("layout");
    app_image(40).write_oci_layout(&layout, "v1").unwrap();
    let cert_arg = format!("--dest-cert-dir={}", certs.display());
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "private/app:v1",
        &[&cert_arg, "--dest-creds=puller:s3cret-pw"],
    )
    .unwrap();
    let reference = format!("docker://{}/private/app:v1", reg.host());
    let with = |creds: Option<&str>, cert_dir: bool| {
        source(
            &reference,
            RegistryOptions {
                // None: anonymous, whatever this machine's auth files hold.
                credentials: creds.map_or(CredentialSource::Anonymous, given),
                cert_dir: cert_dir.then(|| certs.clone()),
                ..quick()
            },
        )
    };
    let out = tmp.path().join("out.img");
    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    assert_eq!(
        flatten_digest(&with(Some("puller:s3cret-pw"), true), &out),
        flatten_digest(&from_oci, &out)
    );
    // --tls-verify=false: a CA nobody gave us, and the pull goes on (over
    // TLS still: the registry answers nothing else).
    let unverified = source(
        &reference,
        RegistryOptions {
            credentials: given("puller:s3cret-pw"),
            tls_verify: false,
            ..quick()
        },
    );
    assert_eq!(
        flatten_digest(&unverified, &out),
        flatten_digest(&from_oci, &out)
    );

    // An auth file named as --authfile names it. (The files found through
    // the environment are tried in a child process, by the CLI's tests:
    // the environment is process-wide.)
    let auth_file = tmp.path().join("auth.json");
    let entry = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "puller:s3cret-pw",
    );
    let auths = serde_json::json!({"auths": {reg.host(): {"auth": entry}}});
    std::fs::write(&auth_file, auths.to_string()).unwrap();
    let from_file = |file: &Path| {
        source(
            &reference,
            RegistryOptions {
                credentials: CredentialSource::AuthFile(file.to_owned()),
                cert_dir: Some(certs.clone()),
                ..quick()
            },
        )
    };
    assert_eq!(
        flatten_digest(&from_file(&auth_file), &out),
        flatten_digest(&from_oci, &out)
    );
    // One that is not there is an error, not an anonymous pull.
    let missing = tmp.path().join("no-such-auth.json");
    let err = flatten_to_file(&from_file(&missing), &out, &FlattenOptions::default()).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("no-such-auth.json") && msg.contains(&reg.host()),
        "{msg}"
    );
    assert!(!out.exists());

    // Wrong password, no password, unknown CA: clear errors, no secret.
    for (creds, cert_dir, want) in [
        (
            Some("puller:wrong-pw"),
            true,
            "access denied for user \"puller\"",
        ),
        (None, true, "wants credentials"),
        (Some("puller:s3cret-pw"), false, "cannot reach the registry"),
    ] {
        let err =
            flatten_to_file(&with(creds, cert_dir), &out, &FlattenOptions::default()).unwrap_err();
        let msg = error_chain(&err);
        assert!(msg.contains(want), "{msg}");
        assert!(
            msg.contains(&reg.host()) && msg.contains("private/app"),
            "{msg}"
        );
        assert!(
            !msg.contains("wrong-pw") && !msg.contains("s3cret-pw"),
            "{msg}"
        );
        assert!(!out.exists());
    }
}

/// A token issuer for user `tokuser` (password `tok-pw-secret`), and the
/// identity token `refresh_token` if given, telling clients its tokens
/// last `expires_in` seconds; and a registry that trusts it, holding
/// `app_image(seed)` as `repo:v1` (its layout in `tmp/layout`). `None`
/// after a SKIP line.
fn token_registry(
    tmp: &Path,
    expires_in: u64,
    refresh_token: Option<&str>,
    seed: u64,
    repo: &str,
) -> Option<(TokenIssuer, Registry)> {
    if !require_tool("openssl") {
        return None;
    }
    let issuer = TokenIssuer::start(
        tmp,
        IssuerConfig {
            user: Some(("tokuser".into(), "tok-pw-secret".into())),
            issuer: "imagefs-test-issuer".into(),
            service: "imagefs-test-registry".into(),
            life: 600,
            expires_in,
            refresh_token: refresh_token.map(Into::into),
        },
    )
    .unwrap();
    let auth = Auth::Token {
        realm: issuer.realm(),
        service: "imagefs-test-registry".into(),
        issuer: "imagefs-test-issuer".into(),
        root_cert_bundle: issuer.cert_pem().to_owned(),
    };
    let reg = start(auth, None)?;
    let layout = tmp.join("layout");
    app_image(seed).write_oci_layout(&layout, "v1").unwrap();
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        &format!("{repo}:v1"),
        &["--dest-creds=tokuser:tok-pw-secret"],
    )
    .unwrap();
    Some((issuer, reg))
}

/// The registry's allowance for clock skew on a token's `exp`
/// (distribution's `Leeway`), which a token's life must cancel to expire
/// when the test means it to.
const REGISTRY_LEEWAY: i64 = 60;

#[test]
fn bearer_tokens_are_refreshed_when_they_expire_mid_pull() {
    let tmp = tempfile::tempdir().unwrap();
    // The client is told the tokens last long: only the registry's
    // 401 tells it otherwise.
    let Some((issuer, reg)) = token_registry(tmp.path(), 600, None, 50, "tok/app") else {
        return;
    };
    let layout = tmp.path().join("layout");
    // From now on a token is good at the registry for one second; every
    // request through the proxy is held 400 ms, so a pull (ping,
    // manifest, config, three layers) outlives its first token.
    issuer.set_life(1 - REGISTRY_LEEWAY);
    let proxy = DelayProxy::start(reg.addr(), Duration::from_millis(400)).unwrap();
    let proxy_host = proxy.endpoint().trim_start_matches("http://").to_owned();
    let reference = format!("docker://{proxy_host}/tok/app:v1");
    let creds = |c: &str| RegistryOptions {
        credentials: given(c),
        max_parallel: 1,
        ..quick()
    };
    let before = issuer.issued();
    let out = tmp.path().join("out.img");
    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let from_reg = source(&reference, creds("tokuser:tok-pw-secret"));
    assert_eq!(
        flatten_digest(&from_reg, &out),
        flatten_digest(&from_oci, &out)
    );
    let issued = issuer.issued() - before;
    assert!(
        issued >= 2,
        "one token lasted the whole pull ({issued} issued)"
    );
    // The client learnt of the expiry from refusals (which also shows the
    // log count below sees them).
    assert!(
        unauthorized(&reg, "tok/app") > 0,
        "log:\n{}",
        reg.log_tail(40)
    );

    // Wrong credentials: the issuer refuses, the error says who.
    issuer.set_life(600);
    let refused = issuer.refused();
    let err = flatten_to_file(
        &source(&reference, creds("tokuser:not-the-pw")),
        &out,
        &FlattenOptions::default(),
    )
    .unwrap_err();
    let msg = error_chain(&err);
    assert!(msg.contains("access denied for user \"tokuser\""), "{msg}");
    assert!(
        msg.contains("tok/app") && !msg.contains("not-the-pw"),
        "{msg}"
    );
    assert!(issuer.refused() > refused);
    assert!(!out.exists());
}

/// Requests for `repo` the registry answered 401, from its access log.
fn unauthorized(reg: &Registry, repo: &str) -> usize {
    let log = std::fs::read_to_string(reg.dir().join("registry.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(&format!(" /v2/{repo}/")) && l.contains("\" 401 "))
        .count()
}

#[test]
fn bearer_tokens_are_refreshed_before_they_expire() {
    let tmp = tempfile::tempdir().unwrap();
    // What the client is told: it must refresh before this.
    let Some((issuer, reg)) = token_registry(tmp.path(), 1, None, 70, "fresh/app") else {
        return;
    };
    let layout = tmp.path().join("layout");
    // A token is good at the registry for 3 s (its `exp` is in whole
    // seconds, so at least 2); the client, told 1 s, must switch before
    // then, and a request it sends with a token under 1 s old arrives
    // (held 400 ms by the proxy) well within it. The pull (ping,
    // manifest, config, three layers, one at a time, each held) outlives
    // the first token.
    issuer.set_life(3 - REGISTRY_LEEWAY);
    let proxy = DelayProxy::start(reg.addr(), Duration::from_millis(400)).unwrap();
    let proxy_host = proxy.endpoint().trim_start_matches("http://").to_owned();
    let from_reg = source(
        &format!("docker://{proxy_host}/fresh/app:v1"),
        RegistryOptions {
            credentials: given("tokuser:tok-pw-secret"),
            max_parallel: 1,
            ..quick()
        },
    );
    let refused_before = unauthorized(&reg, "fresh/app");
    let before = issuer.issued();
    let out = tmp.path().join("out.img");
    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    assert_eq!(
        flatten_digest(&from_reg, &out),
        flatten_digest(&from_oci, &out)
    );
    let issued = issuer.issued() - before;
    assert!(
        issued >= 2,
        "one token lasted the whole pull ({issued} issued)"
    );
    // Only the API root is asked without a token (the challenge); no
    // request under the repository was refused.
    assert_eq!(
        unauthorized(&reg, "fresh/app"),
        refused_before,
        "log:\n{}",
        reg.log_tail(40)
    );
}

/// An identity token (an auth file's `identitytoken`, as `az acr login`
/// writes one) is exchanged at the token service through OAuth2's
/// refresh-token grant, and never sent as basic auth; a wrong one is an
/// error that does not show it.
#[test]
fn identity_tokens_are_exchanged_through_oauth2() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((issuer, reg)) =
        token_registry(tmp.path(), 600, Some("rt-Zq81-identity"), 90, "acr/app")
    else {
        return;
    };
    let layout = tmp.path().join("layout");
    // As Azure writes it: a placeholder user with no password in `auth`.
    let file = tmp.path().join("auth.json");
    let write = |token: &str| {
        use base64::Engine as _;
        let placeholder = base64::engine::general_purpose::STANDARD
            .encode("00000000-0000-0000-0000-000000000000:");
        let entry = serde_json::json!({"auth": placeholder, "identitytoken": token});
        std::fs::write(
            &file,
            serde_json::json!({"auths": {reg.host(): entry}}).to_string(),
        )
        .unwrap();
    };
    write("rt-Zq81-identity");
    let opts = || RegistryOptions {
        credentials: CredentialSource::AuthFile(file.clone()),
        ..quick()
    };
    let reference = format!("docker://{}/acr/app:v1", reg.host());
    let out = tmp.path().join("out.img");
    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    assert_eq!(
        flatten_digest(&source(&reference, opts()), &out),
        flatten_digest(&from_oci, &out)
    );
    assert!(
        issuer.refreshed() > 0,
        "no token came from the identity token"
    );
    assert_eq!(issuer.refused(), 0);

    write("rt-wrong");
    let err = flatten_to_file(
        &source(&reference, opts()),
        &out,
        &FlattenOptions::default(),
    )
    .unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("access denied for the identity token") && msg.contains("acr/app"),
        "{msg}"
    );
    assert!(
        !msg.contains("rt-wrong") && !msg.contains("rt-Zq81"),
        "{msg}"
    );
    assert!(!out.exists());
}

/// A registry that requires a client certificate (`http.tls.clientcas`):
/// `--cert-dir`'s `NAME.cert` and `NAME.key` are offered, as skopeo
/// offers them; without them the handshake is refused, and a certificate
/// without its key is an error that names the file.
#[test]
fn client_certificates_from_the_cert_dir() {
    if !require_tool("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ca, mut tls) = make_tls(tmp.path()).unwrap();
    let (client_cert, client_key) = make_client_cert(tmp.path()).unwrap();
    tls.client_cas = vec![ca.clone()];
    let Some(reg) = start(Auth::None, Some(tls)) else {
        return;
    };
    let certs = tmp.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    std::fs::copy(&client_cert, certs.join("client.cert")).unwrap();
    std::fs::copy(&client_key, certs.join("client.key")).unwrap();
    let layout = tmp.path().join("layout");
    app_image(95).write_oci_layout(&layout, "v1").unwrap();
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "mtls/app:v1",
        &[&format!("--dest-cert-dir={}", certs.display())],
    )
    .unwrap();
    let reference = format!("docker://{}/mtls/app:v1", reg.host());
    let with = |dir: &Path| {
        source(
            &reference,
            RegistryOptions {
                cert_dir: Some(dir.to_owned()),
                credentials: CredentialSource::Anonymous,
                ..quick()
            },
        )
    };
    let out = tmp.path().join("out.img");
    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    assert_eq!(
        flatten_digest(&with(&certs), &out),
        flatten_digest(&from_oci, &out)
    );

    // The CA alone: the registry refuses the handshake.
    let ca_only = tmp.path().join("ca-only");
    std::fs::create_dir(&ca_only).unwrap();
    std::fs::copy(&ca, ca_only.join("ca.crt")).unwrap();
    let err = flatten_to_file(&with(&ca_only), &out, &FlattenOptions::default()).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains(&reg.host())
            && msg.contains("mtls/app")
            && msg.contains("may want a client certificate"),
        "{msg}"
    );
    assert!(!out.exists());

    // A certificate without its key.
    std::fs::remove_file(certs.join("client.key")).unwrap();
    let err = flatten_to_file(&with(&certs), &out, &FlattenOptions::default()).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("client.cert") && msg.contains("client.key is missing"),
        "{msg}"
    );
}

/// `--registry-token`: a bearer token handed over out of band is sent as
/// it is, and no token service is asked; one for another repository is
/// refused with an error that says which login failed and not the token.
#[test]
fn a_registry_token_is_sent_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((issuer, reg)) = token_registry(tmp.path(), 600, None, 92, "ci/app") else {
        return;
    };
    let layout = tmp.path().join("layout");
    let reference = format!("docker://{}/ci/app:v1", reg.host());
    let with = |token: String| {
        source(
            &reference,
            RegistryOptions {
                credentials: CredentialSource::BearerToken(Secret::new(token)),
                ..quick()
            },
        )
    };
    let token = issuer.pull_token("ci-job", "ci/app");
    let issued = issuer.issued();
    let out = tmp.path().join("out.img");
    let from_oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    assert_eq!(
        flatten_digest(&with(token), &out),
        flatten_digest(&from_oci, &out)
    );
    assert_eq!(issuer.issued(), issued, "the pull asked the token service");

    let other = issuer.pull_token("ci-job", "other/app");
    let err = flatten_to_file(&with(other.clone()), &out, &FlattenOptions::default()).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("access denied for the --registry-token") && msg.contains("ci/app"),
        "{msg}"
    );
    assert!(!msg.contains(&other), "{msg}");
    assert!(!out.exists());
}
