//! A real `docker-registry` (Debian's package, distribution 2.x) for tests:
//! its own config file and storage in a temporary directory, on a free
//! loopback port, with optional TLS, htpasswd or token auth. Images go in
//! with `skopeo copy`. Without the binary, [`Registry::start`] returns
//! [`RegistryStartError::NotInstalled`] and the test prints `SKIP:`.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long the registry may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Who may pull.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Anyone.
    None,
    /// Basic auth against one bcrypt htpasswd user.
    Htpasswd {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// Bearer tokens from an issuer whose signing certificate is in
    /// `root_cert_bundle`.
    Token {
        /// The issuer's token endpoint.
        realm: String,
        /// The `service` (the tokens' audience).
        service: String,
        /// The tokens' `iss`.
        issuer: String,
        /// PEM file of the certificate the tokens are signed with.
        root_cert_bundle: PathBuf,
    },
}

/// Server TLS: PEM certificate and key files.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The server certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// CAs whose client certificates the registry requires (none: no
    /// client certificate asked for).
    pub client_cas: Vec<PathBuf>,
}

/// Starting the registry failed.
#[derive(Debug)]
pub enum RegistryStartError {
    /// No `docker-registry` binary.
    NotInstalled,
    /// Anything else, with the log tail.
    Failed(String),
}

impl std::fmt::Display for RegistryStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryStartError::NotInstalled => {
                write!(
                    f,
                    "docker-registry is not installed (scripts/install-deps.sh)"
                )
            }
            RegistryStartError::Failed(s) => f.write_str(s),
        }
    }
}

/// A running registry; killed when dropped.
pub struct Registry {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Registry {
    /// Start a registry with `auth` and, when given, TLS.
    pub fn start(auth: Auth, tls: Option<Tls>) -> Result<Registry, RegistryStartError> {
        let bin =
            crate::harness::find_tool("docker-registry").ok_or(RegistryStartError::NotInstalled)?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            RegistryStartError::Failed(format!("registry: {what}: {e}"))
        };
        let dir = tempfile::tempdir().map_err(|e| fail("temporary directory", &e))?;
        let port = free_port().map_err(|e| fail("free port", &e))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut config = String::new();
        let _ = write!(
            config,
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(tls) = &tls {
            let _ = write!(
                config,
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            );
            if !tls.client_cas.is_empty() {
                config.push_str("    clientcas:\n");
                for ca in &tls.client_cas {
                    let _ = writeln!(config, "      - {}", ca.display());
                }
            }
        }
        match &auth {
            Auth::None => {}
            Auth::Htpasswd { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .map_err(|e| fail("htpasswd (apache2-utils)", &e))?;
                if !out.status.success() {
                    return Err(fail("htpasswd", &String::from_utf8_lossy(&out.stderr)));
                }
                let file = dir.path().join("htpasswd");
                fs::write(&file, &out.stdout).map_err(|e| fail("write htpasswd", &e))?;
                let _ = write!(
                    config,
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    file.display()
                );
            }
            Auth::Token {
                realm,
                service,
                issuer,
                root_cert_bundle,
            } => {
                let _ = write!(
                    config,
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    \
                     issuer: {issuer}\n    rootcertbundle: {}\n",
                    root_cert_bundle.display()
                );
            }
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).map_err(|e| fail("write config", &e))?;
        let log = File::create(dir.path().join("registry.log")).map_err(|e| fail("log", &e))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail("log", &e))?)
            .stderr(log)
            .spawn()
            .map_err(|e| fail("spawn docker-registry", &e))?;
        let mut reg = Registry { child, dir, addr };
        let deadline = Instant::now() + START_TIMEOUT;
        while !reg.answers() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                return Err(fail(
                    "exited",
                    &format!("{status}; log:\n{}", reg.log_tail(30)),
                ));
            }
            if Instant::now() > deadline {
                return Err(fail("no answer in time", &reg.log_tail(30)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// Whether something answers on the port (TLS or not, any bytes).
    fn answers(&self) -> bool {
        TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// CPU seconds the registry process has used so far.
    pub fn cpu_secs(&self) -> Result<f64, String> {
        crate::harness::proc_cpu_secs(&self.child.id().to_string(), false)
    }

    /// The registry's own directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        let _ = File::open(self.dir.path().join("registry.log"))
            .and_then(|mut f| f.read_to_string(&mut s));
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `skopeo copy` `src` (any skopeo source) into `repo:tag` here. `args`
    /// are extra skopeo flags (`--dest-creds`, `--dest-cert-dir`, `--all`).
    pub fn push(&self, src: &str, repo_tag: &str, args: &[&str]) -> Result<(), String> {
        let dest = format!("docker://{}/{repo_tag}", self.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--preserve-digests"]);
        let tls_given = args.iter().any(|a| a.starts_with("--dest-cert-dir"));
        if !tls_given {
            cmd.arg("--dest-tls-verify=false");
        }
        cmd.args(args).arg(src).arg(&dest);
        let out = cmd.output().map_err(|e| format!("skopeo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "skopeo copy {src} {dest}: {}\nregistry log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            ));
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `openssl ARGS` in `dir`; its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Serve each connection `listener` accepts on its own thread with
/// `handle`, until `stop` is set (and one more connection wakes the loop).
pub fn accept_loop<S, F>(listener: TcpListener, state: Arc<S>, stop: fn(&S) -> bool, handle: F)
where
    S: Send + Sync + 'static,
    F: Fn(&S, TcpStream) -> std::io::Result<()> + Send + Sync + Copy + 'static,
{
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop(&state) {
                return;
            }
            if let Ok(conn) = conn {
                let state = state.clone();
                std::thread::spawn(move || {
                    let _ = handle(&state, conn);
                });
            }
        }
    });
}

/// A P-256 key `STEM.key` and either a self-signed certificate `STEM.crt`
/// (valid two days) or a signing request `STEM.csr`; `extra` goes to
/// `openssl req` as is.
pub fn ec_key(
    dir: &Path,
    stem: &str,
    subject: &str,
    self_signed: bool,
    extra: &[&str],
) -> Result<(), String> {
    let key = format!("{stem}.key");
    let out = format!("{stem}.{}", if self_signed { "crt" } else { "csr" });
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &out,
        "-subj",
        subject,
    ];
    if self_signed {
        args.extend(["-x509", "-days", "2"]);
    }
    args.extend(extra);
    openssl(dir, &args)
}

/// A CA and a server certificate for 127.0.0.1/localhost made with the
/// `openssl` command: `ca.crt`, `server.crt`, `server.key` in `dir`.
pub fn make_tls(dir: &Path) -> Result<(PathBuf, Tls), String> {
    ec_key(
        dir,
        "ca",
        "/CN=imagefs test CA",
        true,
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    )?;
    ec_key(dir, "server", "/CN=127.0.0.1", false, &[])?;
    let mut ext = File::create(dir.join("server.ext")).map_err(|e| e.to_string())?;
    ext.write_all(
        b"subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
          extendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    sign(dir, "server")?;
    Ok((
        dir.join("ca.crt"),
        Tls {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_cas: Vec::new(),
        },
    ))
}

/// Sign `STEM.csr` with `make_tls`'s CA, with the extensions in
/// `STEM.ext`, into `STEM.crt`.
fn sign(dir: &Path, stem: &str) -> Result<(), String> {
    let (csr, crt, ext) = (
        format!("{stem}.csr"),
        format!("{stem}.crt"),
        format!("{stem}.ext"),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    )
}

/// A client certificate from `make_tls`'s CA (run first, in `dir`):
/// `client.crt` and `client.key`.
pub fn make_client_cert(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    ec_key(dir, "client", "/CN=imagefs test client", false, &[])?;
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .map_err(|e| e.to_string())?;
    sign(dir, "client")?;
    Ok((dir.join("client.crt"), dir.join("client.key")))
}
