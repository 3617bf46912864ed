//! `imagefs convert docker://…` against a real `docker-registry` with
//! htpasswd over TLS: credentials found in each place skopeo looks
//! (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.docker/config.json`, `--creds`, `--authfile`; none with
//! `--no-creds`), `--cert-dir`, `--tls-verify=false`
//! with its warning, and no password in any output. SKIP without
//! docker-registry, skopeo, openssl or htpasswd.

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

#[test]
fn credentials_from_every_place_and_none_printed() {
    for tool in ["skopeo", "openssl", "htpasswd"] {
        if !require_tool(tool) {
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ca, tls) = make_tls(tmp.path()).unwrap();
    let certs = tmp.path().join("certs");
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
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let layout = tmp.path().join("layout");
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
