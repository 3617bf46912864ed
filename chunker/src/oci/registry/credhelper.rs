//! Docker credential helpers, as an auth file's `credHelpers` (per
//! registry) and `credsStore` (the default) name them.
//!
//! The protocol is docker-credential-helpers': run
//! `docker-credential-NAME get`, write the server on its stdin, and read
//! `{"ServerURL", "Username", "Secret"}` from its stdout. "No credentials"
//! is either an exit status of 1 with `credentials not found` on stdout
//! (current helpers) or an empty user and secret (older ones, such as
//! Debian 12's `docker-credential-pass`). The helper's stdout is parsed and
//! dropped: only its error message, never its answer, can reach an error.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::auth::{Credentials, Secret};

/// How long a helper may take (it may ask a keyring or a cloud's metadata
/// service).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a helper gave no usable answer (the caller adds which file named it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperError {
    /// A name that would not be a program on `$PATH`.
    #[error("{name:?} is not a credential helper's name")]
    BadName {
        /// The name as the file gives it.
        name: String,
    },
    /// The program is not on `$PATH`.
    #[error("{program} is not installed (not on $PATH)")]
    NotInstalled {
        /// `docker-credential-NAME`.
        program: String,
    },
    /// It could not be started, or its pipes failed.
    #[error("cannot run {program}")]
    Spawn {
        /// `docker-credential-NAME`.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not finish in time, and was killed.
    #[error("{program} did not answer within {after:?}")]
    Timeout {
        /// `docker-credential-NAME`.
        program: String,
        /// The time it had.
        after: Duration,
    },
    /// It failed, saying `message` (its own words, from stdout or stderr).
    #[error("{program} failed ({status}): {message}")]
    Failed {
        /// `docker-credential-NAME`.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The first line it printed, shortened.
        message: String,
    },
    /// Its answer is not the protocol's JSON (the answer is not shown).
    #[error("{program} gave an answer that is not credentials JSON")]
    Malformed {
        /// `docker-credential-NAME`.
        program: String,
    },
}

/// What a helper answered.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The helper's program for `name` (`pass` → `docker-credential-pass`).
pub fn program(name: &str) -> Result<String, HelperError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(format!("docker-credential-{name}"))
    } else {
        Err(HelperError::BadName { name: name.into() })
    }
}

/// Ask the helper `name` for `server`'s credentials.
pub fn get(name: &str, server: &str) -> Result<Option<Credentials>, HelperError> {
    let program = program(name)?;
    run(Path::new(&program), &program, server, HELPER_TIMEOUT)
}

/// Run `path get` with `server` on stdin; `program` names it in errors.
pub fn run(
    path: &Path,
    program: &str,
    server: &str,
    timeout: Duration,
) -> Result<Option<Credentials>, HelperError> {
    let spawn_err = |source: std::io::Error| HelperError::Spawn {
        program: program.into(),
        source,
    };
    let timed_out = || HelperError::Timeout {
        program: program.into(),
        after: timeout,
    };
    let mut child = Command::new(path)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HelperError::NotInstalled {
                program: program.into(),
            },
            _ => spawn_err(e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading closes the pipe: its exit
        // status says more than this write's error would.
        let _ = stdin.write_all(server.as_bytes());
    }
    let (tx, rx) = mpsc::channel();
    let readers = [
        child.stdout.take().map(boxed),
        child.stderr.take().map(boxed),
    ];
    for (i, r) in readers.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let read = r.map(|mut r| r.read_to_end(&mut bytes));
            let _ = tx.send((i, read.transpose().map(|_| bytes)));
        });
    }
    drop(tx);
    let mut out = [Vec::new(), Vec::new()];
    let deadline = std::time::Instant::now() + timeout;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Ok(bytes))) => out[i] = bytes,
            Ok((_, Err(e))) => return Err(kill(child, spawn_err(e))),
            Err(_) => return Err(kill(child, timed_out())),
        }
    }
    // Its pipes are closed, so it has exited or is about to (unless it
    // closed them early): still bounded by the deadline.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(None) => return Err(kill(child, timed_out())),
            Err(e) => return Err(kill(child, spawn_err(e))),
        }
    };
    let [stdout, stderr] = out;
    answer(program, status, &stdout, &stderr)
}

fn boxed(r: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    Box::new(r)
}

fn kill(mut child: Child, e: HelperError) -> HelperError {
    let _ = child.kill();
    let _ = child.wait();
    e
}

/// What a finished helper's output means.
fn answer(
    program: &str,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Option<Credentials>, HelperError> {
    if !status.success() {
        let said = |b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            let line = text.lines().find(|l| !l.trim().is_empty())?.trim();
            // An answer printed before failing may hold the secret.
            if line.starts_with('{') {
                return Some("(its answer is not shown)".to_owned());
            }
            Some(line.chars().take(200).collect::<String>())
        };
        let message = said(stdout).or_else(|| said(stderr)).unwrap_or_default();
        if message.contains("credentials not found") {
            return Ok(None);
        }
        return Err(HelperError::Failed {
            program: program.into(),
            status,
            message,
        });
    }
    let a: Answer = serde_json::from_slice(stdout).map_err(|_| HelperError::Malformed {
        program: program.into(),
    })?;
    if a.username.is_empty() && a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: a.username,
        password: Secret::new(a.secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A helper written as a shell script: the protocol's other end.
    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let path = dir.join("docker-credential-t");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn ask(path: &Path, timeout: Duration) -> Result<Option<Credentials>, HelperError> {
        for _ in 0..20 {
            match run(path, "docker-credential-t", "reg.example:5000", timeout) {
                // The script was just written: a process another test
                // forks meanwhile may hold it open for a moment.
                Err(HelperError::Spawn { source, .. })
                    if source.kind() == std::io::ErrorKind::ExecutableFileBusy =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
        panic!("the helper script stayed busy for a second");
    }

    #[test]
    fn names() {
        assert_eq!(program("pass").unwrap(), "docker-credential-pass");
        assert_eq!(program("ecr-login").unwrap(), "docker-credential-ecr-login");
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(
                matches!(program(bad), Err(HelperError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn answers_of_a_helper() {
        let tmp = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(20);
        // It reads the server from stdin, as helpers do.
        let h = script(
            tmp.path(),
            r#"read -r s; [ "$1" = get ] && [ "$s" = reg.example:5000 ] || exit 3
echo '{"ServerURL":"reg.example:5000","Username":"u","Secret":"pw-Zq81"}'"#,
        );
        let c = ask(&h, t).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("u", "pw-Zq81"));
        // No credentials, both ways.
        let h = script(
            tmp.path(),
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert!(ask(&h, t).unwrap().is_none());
        let h = script(
            tmp.path(),
            r#"echo '{"ServerURL":"x","Username":"","Secret":""}'"#,
        );
        assert!(ask(&h, t).unwrap().is_none());
        // Failures say so without showing an answer.
        let h = script(tmp.path(), "echo 'keyring locked' >&2; exit 2");
        let e = ask(&h, t).unwrap_err().to_string();
        assert!(
            e.contains("keyring locked") && e.contains("docker-credential-t"),
            "{e}"
        );
        let h = script(
            tmp.path(),
            r#"echo '{"Username":"u","Secret":"pw-Zq81"}'; exit 1"#,
        );
        let e = ask(&h, t).unwrap_err().to_string();
        assert!(e.contains("not shown") && !e.contains("pw-Zq81"), "{e}");
        let h = script(tmp.path(), "echo 'pw-Zq81 is not json'");
        let e = ask(&h, t).unwrap_err().to_string();
        assert!(
            e.contains("not credentials JSON") && !e.contains("pw-Zq81"),
            "{e}"
        );
        // An identity token, as helpers give one.
        let h = script(tmp.path(), r#"echo '{"Username":"<token>","Secret":"rt"}'"#);
        assert!(ask(&h, t).unwrap().unwrap().is_identity_token());
        let e = ask(&tmp.path().join("docker-credential-none"), t).unwrap_err();
        assert!(matches!(e, HelperError::NotInstalled { .. }), "{e}");
    }

    #[test]
    fn a_helper_that_hangs_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let h = script(tmp.path(), "exec sleep 30");
        let e = ask(&h, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, HelperError::Timeout { .. }), "{e}");
    }
}
