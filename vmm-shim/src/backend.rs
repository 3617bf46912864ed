//! Starting vhost-user-blk backends as child processes: the reference
//! backend (`qemu-storage-daemon`) and `imagefs serve`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A backend process serving a vhost-user socket; killed on drop.
#[derive(Debug)]
pub struct BackendProcess {
    child: Child,
    socket: PathBuf,
    program: String,
    log: PathBuf,
}

/// Runs `cmd` to its end and returns its stdout; `what` names it in the
/// error when it cannot start or fails (with its stderr).
pub fn stdout_of(mut cmd: Command, what: &str) -> Result<Vec<u8>> {
    let o = cmd.output().map_err(|e| {
        let program = Path::new(cmd.get_program()).display().to_string();
        Error::process(what, format!("cannot start {program}: {e}"))
    })?;
    if !o.status.success() {
        return Err(Error::process(
            what,
            format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(o.stdout)
}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl BackendProcess {
    /// Starts `qemu-storage-daemon` exporting `image` (a raw file) read-only
    /// as a vhost-user-blk device on `socket`. Output goes to `socket`.log.
    pub fn qemu_storage_daemon(image: &Path, socket: &Path) -> Result<Self> {
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=disk,filename={},read-only=on",
                image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path={},writable=off",
                socket.display()
            ));
        Self::spawn(cmd, "qemu-storage-daemon", socket)
    }

    /// Starts an arbitrary backend command that will listen on `socket`.
    pub fn spawn(cmd: Command, program: &str, socket: &Path) -> Result<Self> {
        Self::spawn_inner(cmd, program, socket, None)
    }

    fn spawn_inner(
        mut cmd: Command,
        program: &str,
        socket: &Path,
        tcp: Option<&str>,
    ) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let log = socket.with_extension("log");
        let out = std::fs::File::create(&log).map_err(|source| Error::Io {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| Error::Io {
            path: log.clone(),
            source,
        })?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Process {
                program: program.to_owned(),
                reason: format!("cannot start: {e}"),
            })?;
        let mut me = Self {
            child,
            socket: socket.to_path_buf(),
            program: program.to_owned(),
            log,
        };
        me.wait_for_socket(Duration::from_secs(60), tcp)?;
        Ok(me)
    }

    /// Starts a command that listens on TCP `addr` (an `imagefs
    /// cache-node`); `socket` only names its log file.
    pub fn spawn_tcp(cmd: Command, program: &str, socket: &Path, addr: &str) -> Result<Self> {
        Self::spawn_inner(cmd, program, socket, Some(addr))
    }

    fn ready(&self, tcp: Option<&str>) -> bool {
        match tcp {
            Some(a) => std::net::TcpStream::connect(a).is_ok(),
            // Not a test connection: imagefs serve takes its first
            // connection as the frontend and exits when it goes away.
            None => {
                use std::os::unix::fs::FileTypeExt;
                std::fs::metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket())
            }
        }
    }

    fn wait_for_socket(&mut self, limit: Duration, tcp: Option<&str>) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.ready(tcp) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Process {
                    program: self.program.clone(),
                    reason: format!(
                        "exited with {status} before listening; log: {}",
                        self.log_tail()
                    ),
                });
            }
            if start.elapsed() > limit {
                return Err(Error::Process {
                    program: self.program.clone(),
                    reason: format!(
                        "no socket at {} after {limit:?}; log: {}",
                        self.socket.display(),
                        self.log_tail()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines the process printed.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process (tests use SIGKILL, SIGSTOP, SIGCONT).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|_| Error::Process {
            program: self.program.clone(),
            reason: "pid out of range".into(),
        })?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(Error::Process {
                program: self.program.clone(),
                reason: format!("kill {signal}: {}", std::io::Error::last_os_error()),
            });
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to exit by itself (a backend
    /// exits when its frontend disconnects); kills it if it does not.
    /// Returns whether it exited by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        false
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) process still dies of SIGKILL.
        self.stop();
    }
}
