//! `imagefs convert docker://…` against a real `docker-registry` with
//! htpasswd over TLS: credentials found in each place skopeo looks
//! (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.docker/config.json`, `--creds`, `--authfile`; none with
//! `--no-creds`), credential helpers (`credHelpers`, `credsStore`, with
//! Debian's `docker-credential-pass`), `--cert-dir`, `--tls-verify=false`
//! with its warning, and no password in any output; `--retry-times` and
//! `--registry-timeout` against `tests::hostile_registry`. SKIP without
//! docker-registry, skopeo, openssl or htpasswd (and, for the helpers,
//! docker-credential-pass, pass or gpg).

use std::path::Path;
use std::process::{Command, Output};

use tests::harness::{require_tool, skip};
use tests::hostile_registry::{HostileRegistry, Trick};
use tests::imagegen::{Compression, Entry, Image, Layer, noise};
use tests::registry::{Auth, Registry, RegistryStartError, make_tls};

const PASSWORD: &str = "cli-pw-Zq81";

fn auth_json(user: &str, pass: &str, host: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    serde_json::json!({"auths": {host: {"auth": auth}}}).to_string()
}

fn convert(dir: &Path, src: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagefs"));
    cmd.arg("convert")
        .arg(src)
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--keys")
        .arg(dir.join("keys"))
        .arg("--json")
        .args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("IMAGEFS_CREDS")
        .env_remove("XDG_RUNTIME_DIR")
        .env("HOME", dir.join("empty-home"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A registry over TLS (its CA in `tmp/certs`) that wants user `cli`
/// with [`PASSWORD`], holding `cli/app:v1`; with the source to convert
/// and the `--cert-dir` flag. `None` (after a SKIP line) without
/// docker-registry, skopeo, openssl or htpasswd.
fn private_registry(tmp: &Path) -> Option<(Registry, String, String)> {
    for tool in ["skopeo", "openssl", "htpasswd"] {
        if !require_tool(tool) {
            return None;
        }
    }
    let (ca, tls) = make_tls(tmp).unwrap();
    let certs = tmp.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let auth = Auth::Htpasswd {
        user: "cli".into(),
        password: PASSWORD.into(),
    };
    let reg = match Registry::start(auth, Some(tls)) {
        Ok(r) => r,
        Err(RegistryStartError::NotInstalled) => {
            skip("docker-registry is not installed (scripts/install-deps.sh)");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let layout = tmp.join("layout");
    Image::new(vec![
        Layer::new(vec![Entry::file("bin/tool", noise(9, 200_000))]).compressed(Compression::Gzip),
    ])
    .write_oci_layout(&layout, "v1")
    .unwrap();
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "cli/app:v1",
        &[
            &format!("--dest-cert-dir={}", certs.display()),
            &format!("--dest-creds=cli:{PASSWORD}"),
        ],
    )
    .unwrap();
    let src = format!("docker://{}/cli/app:v1", reg.host());
    let cert_dir = format!("--cert-dir={}", certs.display());
    Some((reg, src, cert_dir))
}

#[test]
fn credentials_from_every_place_and_none_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((reg, src, cert_dir)) = private_registry(tmp.path()) else {
        return;
    };

    // Each place a credential may live, one at a time.
    let good = auth_json("cli", PASSWORD, &reg.host());
    let file = tmp.path().join("auth.json");
    std::fs::write(&file, &good).unwrap();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(run_dir.join("containers")).unwrap();
    std::fs::write(run_dir.join("containers/auth.json"), &good).unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::write(home.join(".docker/config.json"), &good).unwrap();
    let places: [(&str, &Path); 3] = [
        ("REGISTRY_AUTH_FILE", &file),
        ("XDG_RUNTIME_DIR", &run_dir),
        ("HOME", &home),
    ];
    // The first converts; the others find it converted (the manifest is
    // still fetched with the credentials, to know its digest).
    for (i, (var, path)) in places.into_iter().enumerate() {
        let o = convert(tmp.path(), &src, &[&cert_dir], &[(var, path)]);
        let t = text(&o);
        assert!(o.status.success(), "with {var}: {t}");
        assert!(!t.contains(PASSWORD), "{t}");
        let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(stats["already_converted"], i > 0, "{t}");
    }
    // In text; and --force converts again.
    let file_env: [(&str, &Path); 1] = [("REGISTRY_AUTH_FILE", &file)];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagefs"));
    let o = cmd
        .args(["convert", &src, &cert_dir, "--store"])
        .arg(tmp.path().join("store"))
        .arg("--keys")
        .arg(tmp.path().join("keys"))
        .env("REGISTRY_AUTH_FILE", &file)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("already converted: sha256:"),
        "{t}"
    );
    let o = convert(tmp.path(), &src, &[&cert_dir, "--force"], &file_env);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["already_converted"], false, "{}", text(&o));

    // --creds, and --tls-verify=false instead of the CA (with a warning).
    let creds = format!("--creds=cli:{PASSWORD}");
    let o = convert(tmp.path(), &src, &[&creds, "--tls-verify=false"], &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("not verified") && !t.contains(PASSWORD), "{t}");

    // --authfile alone, with nothing in the environment.
    let authfile = format!("--authfile={}", file.display());
    let o = convert(tmp.path(), &src, &[&authfile, &cert_dir], &[]);
    let t = text(&o);
    assert!(o.status.success() && !t.contains(PASSWORD), "{t}");
    // $IMAGEFS_CREDS alone.
    let creds_value = format!("cli:{PASSWORD}");
    let creds_env: [(&str, &Path); 1] = [("IMAGEFS_CREDS", Path::new(&creds_value))];
    let o = convert(tmp.path(), &src, &[&cert_dir], &creds_env);
    let t = text(&o);
    assert!(o.status.success() && !t.contains(PASSWORD), "{t}");
    // --no-creds: anonymous, though $REGISTRY_AUTH_FILE holds the password,
    // and overriding $IMAGEFS_CREDS instead of conflicting with it.
    for env in [&file_env, &creds_env] {
        let o = convert(tmp.path(), &src, &["--no-creds", &cert_dir], env);
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains("wants credentials"),
            "{t}"
        );
    }
    // Flags that contradict each other, and a named auth file that is not
    // there.
    let o = convert(tmp.path(), &src, &["--no-creds", &creds], &[]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("cannot be used with"),
        "{t}"
    );
    assert!(!t.contains(PASSWORD), "{t}");
    let missing = tmp.path().join("no-such-auth.json");
    let missing = format!("--authfile={}", missing.display());
    let o = convert(tmp.path(), &src, &[&missing, &cert_dir], &file_env);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("no-such-auth.json") && t.contains(&reg.host()),
        "{t}"
    );

    // Wrong and missing credentials.
    for (args, want) in [
        (
            vec!["--creds=cli:nope-Zq81".to_owned(), cert_dir.clone()],
            "access denied for user \"cli\"",
        ),
        (vec![cert_dir.clone()], "wants credentials"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = convert(tmp.path(), &src, &args, &[]);
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(
            t.contains(want) && t.contains(&reg.host()) && t.contains("cli/app"),
            "{t}"
        );
        assert!(!t.contains("nope-Zq81") && !t.contains(PASSWORD), "{t}");
    }
}

/// Needs no registry: the flags are refused before any request.
#[test]
fn a_malformed_creds_value_is_not_echoed() {
    let tmp = tempfile::tempdir().unwrap();
    // A token given without a user: no colon, and still a secret.
    let o = convert(
        tmp.path(),
        "docker://127.0.0.1:9/app:v1",
        &["--creds=tok-Zq81-secret"],
        &[],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("USER:PASSWORD") && !t.contains("tok-Zq81"),
        "{t}"
    );
    // The same in the environment.
    let o = convert(
        tmp.path(),
        "docker://127.0.0.1:9/app:v1",
        &[],
        &[("IMAGEFS_CREDS", Path::new("tok-Zq81-secret"))],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("$IMAGEFS_CREDS must be USER:PASSWORD") && !t.contains("tok-Zq81"),
        "{t}"
    );
}

/// `--retry-times` and `--registry-timeout` reach the pull: a 503 is
/// retried by default and not with `--retry-times 0`; a registry that
/// stops answering fails after the timeout given, which the error names.
#[test]
fn retry_times_and_registry_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    Image::new(vec![
        Layer::new(vec![Entry::file("bin/tool", noise(5, 100_000))]).compressed(Compression::Gzip),
    ])
    .write_oci_layout(&layout, "v1")
    .unwrap();
    let start = |trick| HostileRegistry::start(&layout, "v1", [127, 0, 0, 1], trick).unwrap();

    let reg = start(Trick::FailFirst);
    let src = format!("docker://{}/cli/app:v1", reg.host());
    let o = convert(tmp.path(), &src, &["--retry-times", "0"], &[]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("/v2/: gave up after 1 attempts")
            && t.contains("503")
            && t.contains(&reg.host()),
        "{t}"
    );
    let o = convert(tmp.path(), &src, &[], &[]);
    assert!(o.status.success(), "{}", text(&o));

    let reg = start(Trick::StallBlobs);
    let src = format!("docker://{}/cli/app:v1", reg.host());
    // Forced: the store already has this image from the pull above.
    let args = ["--retry-times", "0", "--registry-timeout", "1s", "--force"];
    let o = convert(tmp.path(), &src, &args, &[]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("did not answer within 1s") && t.contains(&reg.host()),
        "{t}"
    );
}

/// `gpg` and `pass` set up in `dir` for `docker-credential-pass`: the
/// variables that point them there, and the gpg-agent stopped on drop.
struct PassStore {
    env: Vec<(&'static str, std::path::PathBuf)>,
}

impl PassStore {
    fn new(dir: &Path) -> PassStore {
        let gnupg = dir.join("gnupg");
        std::fs::create_dir(&gnupg).unwrap();
        std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let store = PassStore {
            env: vec![
                ("GNUPGHOME", gnupg),
                ("PASSWORD_STORE_DIR", dir.join("pass")),
            ],
        };
        store.run(
            "gpg",
            &["--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
                .iter()
                .chain(&[
                    "--quick-gen-key",
                    "imagefs-test",
                    "default",
                    "default",
                    "never",
                ])
                .copied()
                .collect::<Vec<_>>(),
            "",
        );
        store.run("pass", &["init", "imagefs-test"], "");
        store
    }

    fn run(&self, tool: &str, args: &[&str], stdin: &str) {
        use std::io::Write as _;
        let mut child = Command::new(tool)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{tool} {args:?}: {}", text(&o));
    }

    /// What `docker login` does with a helper: store `user:password`.
    fn store(&self, server: &str, user: &str, password: &str) {
        let json = serde_json::json!({"ServerURL": server, "Username": user, "Secret": password});
        self.run("docker-credential-pass", &["store"], &json.to_string());
    }

    fn env(&self) -> Vec<(&str, &Path)> {
        self.env.iter().map(|(k, v)| (*k, v.as_path())).collect()
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .status();
    }
}

/// Credential helpers, with Debian's `docker-credential-pass` as the
/// helper: named for the registry (`credHelpers`, skopeo's and Docker's)
/// and as the default (`credsStore`, Docker's); a helper that is not
/// installed is an error when named for the registry and passed over with
/// a warning when it is the default. SKIP without docker-credential-pass,
/// pass or gpg (or what `private_registry` needs).
#[test]
fn credential_helpers() {
    for tool in ["docker-credential-pass", "pass", "gpg", "gpgconf"] {
        if !require_tool(tool) {
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((reg, src, cert_dir)) = private_registry(tmp.path()) else {
        return;
    };
    let pass = PassStore::new(tmp.path());
    pass.store(&reg.host(), "cli", PASSWORD);

    // credHelpers, in the file $REGISTRY_AUTH_FILE names, before an
    // `auths` entry for the same registry (a wrong one here).
    let file = tmp.path().join("auth.json");
    let wrong_auth = || {
        use base64::Engine as _;
        serde_json::json!({"auth": base64::engine::general_purpose::STANDARD.encode("cli:nope-Zq81")})
    };
    let helpers = |name: &str| {
        serde_json::json!({"credHelpers": {reg.host(): name}, "auths": {reg.host(): wrong_auth()}})
            .to_string()
    };
    std::fs::write(&file, helpers("pass")).unwrap();
    let mut env = pass.env();
    env.push(("REGISTRY_AUTH_FILE", &file));
    let o = convert(tmp.path(), &src, &[&cert_dir], &env);
    let t = text(&o);
    assert!(o.status.success() && !t.contains(PASSWORD), "{t}");

    // credsStore, in ~/.docker/config.json, with the empty `auths` entry
    // `docker login` leaves there.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let store_with = |name: &str, entry: serde_json::Value| {
        let cfg = serde_json::json!({"auths": {reg.host(): entry}, "credsStore": name});
        std::fs::write(home.join(".docker/config.json"), cfg.to_string()).unwrap();
    };
    let store = |name: &str| store_with(name, serde_json::json!({}));
    store("pass");
    let mut env = pass.env();
    env.push(("HOME", &home));
    let o = convert(tmp.path(), &src, &[&cert_dir, "--force"], &env);
    let t = text(&o);
    assert!(o.status.success() && !t.contains(PASSWORD), "{t}");

    // What the helper holds is what is sent.
    pass.store(&reg.host(), "cli", "wrong-Zq81");
    let o = convert(tmp.path(), &src, &[&cert_dir, "--force"], &env);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("access denied for user \"cli\""),
        "{t}"
    );
    assert!(!t.contains("wrong-Zq81"), "{t}");
    // An `auths` entry with a password comes before credsStore.
    let good = auth_json("cli", PASSWORD, &reg.host());
    let good: serde_json::Value = serde_json::from_str(&good).unwrap();
    store_with("pass", good["auths"][reg.host()].clone());
    let o = convert(tmp.path(), &src, &[&cert_dir, "--force"], &env);
    assert!(o.status.success(), "{}", text(&o));

    // A helper that is not installed: named for the registry, an error
    // naming it, the file and the registry; as the default, a warning and
    // an anonymous pull (which this registry refuses).
    std::fs::write(&file, helpers("imagefs-none")).unwrap();
    let o = convert(
        tmp.path(),
        &src,
        &[&cert_dir],
        &[("REGISTRY_AUTH_FILE", &file)],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    for want in [
        "docker-credential-imagefs-none is not installed",
        "auth.json",
        &reg.host(),
    ] {
        assert!(t.contains(want), "{want:?} not in {t}");
    }
    store("imagefs-none");
    let o = convert(tmp.path(), &src, &[&cert_dir], &[("HOME", &home)]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("going on without it") && t.contains("wants credentials"),
        "{t}"
    );
}
