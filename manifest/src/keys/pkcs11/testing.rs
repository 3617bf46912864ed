//! SoftHSM2 tokens for tests: a private configuration and token directory
//! under a temporary directory, tokens initialised with `softhsm2-util`.
//! Not part of the API.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{PinSource, Pkcs11Config, SOFTHSM2_MODULE, TokenSelector};

/// The user PIN of every test token.
pub const USER_PIN: &str = "4321";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "87654321";
/// The environment variable SoftHSM2 reads its configuration path from.
pub const CONF_ENV: &str = "SOFTHSM2_CONF";

/// Why SoftHSM2 tests cannot run here, if they cannot: the reason to
/// print with `SKIP`.
pub fn unavailable() -> Option<String> {
    if !Path::new(SOFTHSM2_MODULE).exists() {
        return Some(format!(
            "{SOFTHSM2_MODULE} is missing (Debian package softhsm2; scripts/install-deps.sh installs it)"
        ));
    }
    match Command::new("softhsm2-util").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("softhsm2-util --version failed: {}", out.status)),
        Err(e) => Some(format!("softhsm2-util cannot run: {e}")),
    }
}

/// A SoftHSM2 configuration with its own token directory.
#[derive(Debug)]
pub struct SoftHsm {
    /// The configuration file to point `SOFTHSM2_CONF` at.
    pub conf: PathBuf,
    /// A 0600 file holding [`USER_PIN`].
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// Writes a configuration under `dir` and initialises one token per
    /// label in `tokens`.
    pub fn new(dir: &Path, tokens: &[&str]) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let tokendir = dir.join("tokens");
        std::fs::create_dir_all(&tokendir).map_err(|e| e.to_string())?;
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokendir.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{USER_PIN}\n")).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        let hsm = Self { conf, pin_file };
        for label in tokens {
            let out = Command::new("softhsm2-util")
                .env(CONF_ENV, &hsm.conf)
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
                .output()
                .map_err(|e| format!("softhsm2-util: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "softhsm2-util --init-token {label}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(hsm)
    }

    /// A configuration for token `token` and key `key_label`, PIN from
    /// the PIN file, no domain secrets.
    pub fn config(&self, token: &str, key_label: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: PathBuf::from(SOFTHSM2_MODULE),
            token: TokenSelector::Label(token.to_owned()),
            pin: PinSource::File(self.pin_file.clone()),
            key_label: key_label.to_owned(),
            domain_secrets: None,
        }
    }
}
