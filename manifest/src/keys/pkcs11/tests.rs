//! Against a real SoftHSM2 token. PKCS#11 reads its configuration once
//! per process (`C_Initialize`), so each test runs in a child process of
//! this test binary with `SOFTHSM2_CONF` pointing at its own tokens.

use std::path::PathBuf;
use std::process::Command;

use super::testing::{CONF_ENV, SoftHsm, USER_PIN, unavailable};
use super::*;
use crate::format::{ChunkEntry, ImageConfig, Manifest};
use crate::{ChunkSize, seal, unseal};

const CHILD_ENV: &str = "IMAGEFS_PKCS11_TEST_DIR";
const WRONG_PIN_ENV: &str = "IMAGEFS_PKCS11_TEST_WRONG_PIN";
const TOKEN: &str = "imagefs-a";

/// Runs `body` in a child process with fresh tokens `imagefs-a` and
/// `imagefs-b`, or prints why it skips.
fn in_softhsm(test: &str, body: impl FnOnce(&SoftHsm)) {
    if let Some(why) = unavailable() {
        eprintln!("SKIP {test}: {why}");
        return;
    }
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let dir = PathBuf::from(dir);
        let hsm = SoftHsm {
            conf: dir.join("softhsm2.conf"),
            pin_file: dir.join("pin"),
        };
        body(&hsm);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    SoftHsm::new(tmp.path(), &[TOKEN, "imagefs-b"]).unwrap();
    let name = format!("{}::{test}", module_path!().split_once("::").unwrap().1);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path())
        .env(CONF_ENV, tmp.path().join("softhsm2.conf"))
        .env(WRONG_PIN_ENV, "999999")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child test {name} failed:\n{stdout}\n{stderr}"
    );
}

fn manifest() -> Manifest {
    Manifest {
        source_digest: "sha256:feed".into(),
        domain: "default".into(),
        filesystem: "ext4".into(),
        config: ImageConfig::default(),
        device_size: 65536,
        chunk_size: ChunkSize::MIN,
        chunks: vec![ChunkEntry::Hole],
    }
}

#[test]
fn wraps_in_the_token_and_the_key_never_leaves() {
    in_softhsm("wraps_in_the_token_and_the_key_never_leaves", |hsm| {
        let p = Pkcs11KeyProvider::create(&hsm.config(TOKEN, "master-a")).unwrap();
        assert_eq!(p.current_key_id().unwrap(), "p11:master-a");
        let key = DataKey::generate().unwrap();
        let wrapped = p.wrap_key(&key).unwrap();
        assert_eq!(wrapped.key_id, "p11:master-a");
        assert_eq!(wrapped.wrapped.len(), WRAPPED_LEN);
        assert!(!wrapped.wrapped.windows(32).any(|w| w == key.as_bytes()));
        assert_eq!(
            p.unwrap_key(&wrapped.key_id, &wrapped.wrapped).unwrap(),
            key
        );
        let mut altered = wrapped.wrapped.clone();
        altered[20] ^= 1;
        let err = p.unwrap_key(&wrapped.key_id, &altered);
        assert!(matches!(err, Err(KeyError::UnwrapFailed { .. })), "{err:?}");
        // Reading the key's value is refused: the token reports it
        // unavailable, and the key is sensitive and never extractable.
        let handle = p.key_handle("master-a").unwrap();
        let attrs = p
            .session()
            .get_attributes(
                handle,
                &[
                    AttributeType::Value,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        assert!(
            !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
            "{attrs:?}"
        );
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(
            attrs.contains(&Attribute::NeverExtractable(true)),
            "{attrs:?}"
        );

        // A manifest sealed through the token opens through a second
        // provider of the same token.
        let sealed = seal(&manifest(), &p).unwrap();
        let again = Pkcs11KeyProvider::open(&hsm.config(TOKEN, "master-a")).unwrap();
        assert_eq!(unseal(&sealed, &again).unwrap(), manifest());
        // A local key id is not this provider's.
        assert!(matches!(
            again.unwrap_key("mk-0000000000000000", &wrapped.wrapped),
            Err(KeyError::UnknownMasterKey { .. })
        ));
    });
}

#[test]
fn wrong_pin_is_named_without_the_pin() {
    in_softhsm("wrong_pin_is_named_without_the_pin", |hsm| {
        let config = Pkcs11Config {
            pin: PinSource::Env(WRONG_PIN_ENV.into()),
            ..hsm.config("imagefs-b", "master")
        };
        let err = Pkcs11KeyProvider::create(&config).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, KeyError::Pkcs11(e) if matches!(**e, Pkcs11Error::WrongPin { .. })),
            "{text}"
        );
        assert!(
            text.contains("imagefs-b") && text.contains(WRONG_PIN_ENV),
            "{text}"
        );
        assert!(
            !text.contains("999999") && !text.contains(USER_PIN),
            "{text}"
        );
        // A PIN variable that is not set.
        let config = Pkcs11Config {
            pin: PinSource::Env("IMAGEFS_PKCS11_TEST_UNSET".into()),
            ..hsm.config(TOKEN, "master")
        };
        let err = Pkcs11KeyProvider::create(&config).unwrap_err();
        assert!(
            err.to_string().contains("IMAGEFS_PKCS11_TEST_UNSET"),
            "{err}"
        );
    });
}

#[test]
fn missing_token_and_module_are_named() {
    in_softhsm("missing_token_and_module_are_named", |hsm| {
        let err = Pkcs11KeyProvider::open(&hsm.config("no-such-token", "master")).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, KeyError::Pkcs11(e) if matches!(**e, Pkcs11Error::TokenNotFound { .. })),
            "{text}"
        );
        // It lists the tokens that are there.
        assert!(
            text.contains("no-such-token") && text.contains(TOKEN),
            "{text}"
        );
        let config = Pkcs11Config {
            token: TokenSelector::Slot(4_000_000_000),
            ..hsm.config(TOKEN, "master")
        };
        let err = Pkcs11KeyProvider::open(&config).unwrap_err();
        assert!(err.to_string().contains("slot 4000000000"), "{err}");

        let config = Pkcs11Config {
            module: PathBuf::from("/nonexistent/libpkcs11.so"),
            ..hsm.config(TOKEN, "master")
        };
        let err = Pkcs11KeyProvider::open(&config).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/libpkcs11.so"),
            "{err}"
        );
    });
}

#[test]
fn keys_that_cannot_unwrap_are_refused() {
    in_softhsm("keys_that_cannot_unwrap_are_refused", |hsm| {
        let a = Pkcs11KeyProvider::create(&hsm.config(TOKEN, "a")).unwrap();
        // No key with that label: the error lists the ones there are.
        let err = Pkcs11KeyProvider::open(&hsm.config(TOKEN, "absent")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`absent`") && text.contains("a"), "{text}");
        assert!(
            matches!(&err, KeyError::Pkcs11(e) if matches!(**e, Pkcs11Error::KeyNotFound { .. }))
        );

        // A key that may encrypt but not decrypt.
        a.session()
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(false),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(b"encrypt-only".to_vec()),
                ],
            )
            .unwrap();
        let err = Pkcs11KeyProvider::open(&hsm.config(TOKEN, "encrypt-only")).unwrap_err();
        assert!(
            matches!(&err, KeyError::Pkcs11(e) if matches!(**e, Pkcs11Error::KeyUnusable { action: "unwrap", .. })),
            "{err}"
        );
        assert!(err.to_string().contains("encrypt-only"), "{err}");

        // Bytes wrapped under one key, presented as another's.
        let b = Pkcs11KeyProvider::create(&hsm.config(TOKEN, "b")).unwrap();
        let wrapped = a.wrap_key(&DataKey::generate().unwrap()).unwrap();
        assert!(matches!(
            b.unwrap_key("p11:b", &wrapped.wrapped),
            Err(KeyError::UnwrapFailed { .. })
        ));
        let err = b.generate_key("a").unwrap_err();
        assert!(
            err.to_string().contains("already has a key labelled `a`"),
            "{err}"
        );
    });
}

#[test]
fn domain_secrets_are_wrapped_and_absent_on_serving_hosts() {
    in_softhsm(
        "domain_secrets_are_wrapped_and_absent_on_serving_hosts",
        |hsm| {
            let tmp = tempfile::tempdir().unwrap();
            let config = Pkcs11Config {
                domain_secrets: Some(tmp.path().join("secrets")),
                ..hsm.config(TOKEN, "master")
            };
            let p = Pkcs11KeyProvider::create(&config).unwrap();
            let secret = p.domain_secret("default").unwrap();
            assert_eq!(p.domain_secret("default").unwrap(), secret);
            let file = std::fs::read(tmp.path().join("secrets/default.wrapped")).unwrap();
            assert!(!file.windows(32).any(|w| w == secret.as_bytes()));

            let serving = Pkcs11KeyProvider::open(&hsm.config(TOKEN, "master")).unwrap();
            let err = serving.domain_secret("default").unwrap_err();
            assert!(matches!(err, KeyError::NoDomainSecrets { .. }), "{err}");
            // It still opens what the converting host sealed.
            let sealed = seal(&manifest(), &p).unwrap();
            assert_eq!(unseal(&sealed, &serving).unwrap(), manifest());
        },
    );
}

#[test]
fn retired_keys_unwrap_nothing() {
    in_softhsm("retired_keys_unwrap_nothing", |hsm| {
        let tmp = tempfile::tempdir().unwrap();
        let config = |label: &str| Pkcs11Config {
            domain_secrets: Some(tmp.path().join("secrets")),
            ..hsm.config(TOKEN, label)
        };
        let old = Pkcs11KeyProvider::create(&config("old")).unwrap();
        let secret = old.domain_secret("d").unwrap();
        let sealed = seal(&manifest(), &old).unwrap();
        let new = Pkcs11KeyProvider::create(&config("new")).unwrap();
        assert!(matches!(
            new.retire("new"),
            Err(KeyError::RetireCurrent { .. })
        ));
        new.retire("old").unwrap();
        assert_eq!(new.key_labels().unwrap(), vec!["new", "retired:old"]);
        let err = unseal(&sealed, &new).unwrap_err();
        assert!(
            matches!(&err, crate::SealError::RetiredMasterKey { key_id } if key_id == "p11:old"),
            "{err}"
        );
        assert!(err.to_string().contains("p11:old"), "{err}");
        // The domain secret moved to the new key before the old one went.
        assert_eq!(new.domain_secret("d").unwrap(), secret);
    });
}
