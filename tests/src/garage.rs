//! A real single-node Garage S3 server for tests, on loopback ports, with
//! its data in a temporary directory.
//!
//! [`Garage::start_new`] writes a config (replication factor 1, SQLite
//! metadata, a fresh `rpc_secret`), starts `garage server`, assigns and
//! applies a layout, creates a bucket and a key allowed on it, and
//! returns once the S3 API answers. [`Garage::stop`] and
//! [`Garage::start`] stop and restart the same server on the same data
//! (for "origin down, then back" tests); dropping the [`Garage`] kills
//! it. Every wait has a deadline, and a failure carries the tail of the
//! server's log.
//!
//! The binary: `$IMAGEFS_GARAGE`, else
//! `${IMAGEFS_CACHE:-/var/cache/imagefs}/tools/bin/garage` (where
//! `scripts/install-deps.sh` puts it), else `garage` on `PATH`. Without
//! it, [`Garage::start_new`] returns [`GarageError::NotInstalled`] and the
//! test prints `SKIP:`.

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long the server may take to answer after it is started.
const STARTUP: Duration = Duration::from_secs(60);
/// How long one `garage` CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// The S3 region the server is configured with.
pub const REGION: &str = "garage";

/// Why Garage could not be started or driven.
#[derive(Debug)]
#[non_exhaustive]
pub enum GarageError {
    /// No `garage` binary was found.
    NotInstalled {
        /// Where it was looked for.
        looked: String,
    },
    /// A file operation failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `garage` command failed or printed something unexpected.
    Command {
        /// The command line.
        command: String,
        /// What went wrong, with its output.
        problem: String,
    },
    /// The server did not come up (or exited).
    Startup {
        /// What did not happen.
        problem: String,
        /// The last lines of the server's log.
        log_tail: String,
    },
}

impl fmt::Display for GarageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GarageError::NotInstalled { looked } => write!(
                f,
                "garage not installed (looked in {looked}; run scripts/install-deps.sh)"
            ),
            GarageError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            GarageError::Command { command, problem } => write!(f, "`{command}`: {problem}"),
            GarageError::Startup { problem, log_tail } => {
                write!(
                    f,
                    "garage did not start: {problem}\n--- server log (tail) ---\n{log_tail}"
                )
            }
        }
    }
}

impl std::error::Error for GarageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GarageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GarageError {
    let path = path.to_path_buf();
    move |source| GarageError::Io {
        action,
        path,
        source,
    }
}

/// The `garage` binary to use, or where it was looked for.
pub fn find_garage() -> Result<PathBuf, GarageError> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os("IMAGEFS_GARAGE") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        looked.push(format!("$IMAGEFS_GARAGE={}", path.display()));
    }
    let cache = std::env::var_os("IMAGEFS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/imagefs"));
    let cached = cache.join("tools/bin/garage");
    if cached.is_file() {
        return Ok(cached);
    }
    looked.push(cached.display().to_string());
    if let Some(path) = crate::harness::find_tool("garage") {
        return Ok(path);
    }
    looked.push("PATH".into());
    Err(GarageError::NotInstalled {
        looked: looked.join(", "),
    })
}

/// A free TCP port on loopback (bound, then released for garage to take).
fn free_port() -> Result<u16, GarageError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(io_error("bind a loopback port", Path::new("127.0.0.1:0")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(io_error("bind a loopback port", Path::new("127.0.0.1:0")))
}

/// 32 random bytes as hex (garage's `rpc_secret`).
fn random_hex() -> Result<String, GarageError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 32];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_error("read", path))?;
    Ok(hex::encode(bytes))
}

/// A running (or stopped) single-node Garage server, with a bucket and a
/// key that may read and write it.
#[derive(Debug)]
pub struct Garage {
    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The S3 region ([`REGION`]).
    pub region: String,
    /// The bucket created for the test.
    pub bucket: String,
    /// The access key id (`GK…`).
    pub key_id: String,
    /// The secret access key.
    pub secret: String,
    bin: PathBuf,
    dir: TempDir,
    config: PathBuf,
    s3_addr: SocketAddr,
    child: Option<Child>,
}

impl Garage {
    /// Starts a fresh server with bucket `imagefs-test` and a key allowed
    /// to read, write and own it.
    pub fn start_new() -> Result<Garage, GarageError> {
        let bin = find_garage()?;
        let dir = tempfile::Builder::new()
            .prefix("imagefs-garage.")
            .tempdir()
            .map_err(io_error(
                "create a temporary directory in",
                &std::env::temp_dir(),
            ))?;
        let (s3_port, rpc_port) = (free_port()?, free_port()?);
        let config = dir.path().join("garage.toml");
        let root = dir.path().display();
        let text = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
# Every object is ciphertext: zstd would spend CPU and save nothing.
compression_level = "none"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            secret = random_hex()?,
        );
        fs::write(&config, text).map_err(io_error("write", &config))?;
        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: REGION.to_owned(),
            bucket: "imagefs-test".to_owned(),
            key_id: String::new(),
            secret: String::new(),
            bin,
            dir,
            config,
            s3_addr: SocketAddr::from(([127, 0, 0, 1], s3_port)),
            child: None,
        };
        garage.start()?;
        garage.setup()?;
        Ok(garage)
    }

    /// Layout, bucket and key: the one-time setup of a new cluster.
    fn setup(&mut self) -> Result<(), GarageError> {
        let out = self.cli(&["node", "id", "-q"])?;
        let node = out
            .trim()
            .split('@')
            .next()
            .filter(|id| id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| GarageError::Command {
                command: "garage node id -q".into(),
                problem: format!("no node id in its output: {out:?}"),
            })?
            .to_owned();
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        let bucket = self.bucket.clone();
        // Right after the layout is applied the cluster may still refuse
        // writes for a moment; retry until the startup deadline.
        self.cli_retrying(&["bucket", "create", &bucket])?;
        let out = self.cli_retrying(&["json-api", "CreateKey", r#"{"name":"imagefs-test"}"#])?;
        let parsed: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| GarageError::Command {
                command: "garage json-api CreateKey".into(),
                problem: format!("output is not JSON ({e}): {out}"),
            })?;
        let field = |name: &str| {
            parsed[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| GarageError::Command {
                    command: "garage json-api CreateKey".into(),
                    problem: format!("no `{name}` in its output: {out}"),
                })
        };
        self.key_id = field("accessKeyId")?;
        self.secret = field("secretAccessKey")?;
        let key = self.key_id.clone();
        self.cli_retrying(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key,
        ])?;
        Ok(())
    }

    /// The server's temporary directory (config, data, `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Starts the server (again) on its data and waits until both its RPC
    /// (`garage status`) and its S3 API answer. Does nothing if it runs.
    pub fn start(&mut self) -> Result<(), GarageError> {
        if self.is_running() {
            return Ok(());
        }
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        let log2 = log.try_clone().map_err(io_error("open", &log_path))?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_error("run", &self.bin))?;
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        loop {
            if !self.is_running() {
                return Err(self.startup_error("the server exited"));
            }
            let status_ok = self
                .cli_within(&["status"], Duration::from_secs(10))
                .is_ok();
            if status_ok && self.s3_answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.startup_error(&format!(
                    "no answer from `garage status` and the S3 API at {} within {}s",
                    self.endpoint,
                    STARTUP.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits for
    /// it to exit. Its data stays; [`Garage::start`] brings it back.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // std has no SIGTERM; `kill` does it without unsafe code.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the S3 port gives an HTTP answer (any status: an anonymous
    /// request is refused, which is an answer).
    fn s3_answers(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect_timeout(&self.s3_addr, Duration::from_secs(2)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "GET /{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.bucket, self.s3_addr
        );
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
    }

    fn startup_error(&self, problem: &str) -> GarageError {
        GarageError::Startup {
            problem: problem.to_owned(),
            log_tail: self.log_tail(40),
        }
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `garage -c <config> ARGS` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, GarageError> {
        self.cli_within(args, CLI_TIMEOUT)
    }

    /// [`Garage::cli`], retried every half second until [`STARTUP`] has
    /// passed.
    fn cli_retrying(&self, args: &[&str]) -> Result<String, GarageError> {
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.cli(args) {
                Ok(out) => return Ok(out),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    fn cli_within(&self, args: &[&str], timeout: Duration) -> Result<String, GarageError> {
        let command = format!("garage {}", args.join(" "));
        let fail = |problem: String| GarageError::Command {
            command: command.clone(),
            problem,
        };
        let out_path = self.dir.path().join("cli.out");
        let err_path = self.dir.path().join("cli.err");
        let stdout = File::create(&out_path).map_err(io_error("create", &out_path))?;
        let stderr = File::create(&err_path).map_err(io_error("create", &err_path))?;
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io_error("run", &self.bin))?;
        // Output goes to files, so polling for exit cannot deadlock on a
        // full pipe.
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("no exit within {}s", timeout.as_secs())));
                }
                Err(e) => return Err(fail(format!("cannot wait for it: {e}"))),
            }
        };
        let out = fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            let err = fs::read_to_string(&err_path).unwrap_or_default();
            return Err(fail(format!("{status}\n{out}{err}")));
        }
        Ok(out)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
