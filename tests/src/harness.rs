//! Process and mount helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Prints `SKIP: <reason>` to stderr (tests return right after).
pub fn skip(reason: &str) {
    eprintln!("SKIP: {reason}");
}

/// True when `tool` is on `PATH` (or in `/sbin`, `/usr/sbin`); otherwise
/// prints a SKIP line naming it.
pub fn require_tool(tool: &str) -> bool {
    if find_tool(tool).is_some() {
        return true;
    }
    skip(&format!(
        "`{tool}` is not installed (run scripts/install-deps.sh)"
    ));
    false
}

/// The full path of `tool`, looking in `PATH`, `/usr/sbin` and `/sbin`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// True when running as root; otherwise prints a SKIP line with `why`.
pub fn require_root(why: &str) -> bool {
    let out = Command::new("id").arg("-u").output();
    let root = matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        skip(&format!("not running as root, needed for {why}"));
    }
    root
}

/// Runs a command, returning (success, stdout+stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("could not run {cmd:?}: {e}")),
    }
}

/// Panics with e2fsck's output unless `e2fsck -fn IMAGE` exits 0.
pub fn assert_fsck_clean(image: &Path) {
    let tool = find_tool("e2fsck").expect("e2fsck");
    let (ok, out) = run(Command::new(tool).arg("-fn").arg(image));
    assert!(
        ok,
        "e2fsck -fn {} reported problems:\n{out}",
        image.display()
    );
}

/// A mounted filesystem, unmounted on drop.
pub struct Mount {
    dir: PathBuf,
}

impl Mount {
    /// `mount -o loop,OPTS IMAGE DIR`. `Ok(None)` (after a SKIP line) when
    /// the kernel refuses loop mounts here; `Err` when the mount fails for
    /// another reason (a bad image).
    pub fn loop_mount(image: &Path, dir: &Path, read_only: bool) -> Result<Option<Mount>, String> {
        let opts = if read_only { "loop,ro" } else { "loop,rw" };
        let (ok, out) = run(Command::new("mount")
            .args(["-t", "ext4", "-o", opts])
            .arg(image)
            .arg(dir));
        if ok {
            return Ok(Some(Mount {
                dir: dir.to_path_buf(),
            }));
        }
        let not_permitted = out.contains("permission denied")
            || out.contains("must be superuser")
            || out.contains("Operation not permitted")
            || out.contains("failed to setup loop device")
            || out.contains("could not find any free loop device");
        if not_permitted {
            skip(&format!("loop mount not permitted here: {}", out.trim()));
            return Ok(None);
        }
        Err(format!(
            "mount -o {opts} {} failed: {}",
            image.display(),
            out.trim()
        ))
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts now, reporting failure.
    pub fn unmount(mut self) -> Result<(), String> {
        let r = self.do_unmount();
        self.dir = PathBuf::new();
        r
    }

    fn do_unmount(&self) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Ok(());
        }
        // "target is busy" can be transient (a process that briefly holds a
        // file: a fork in another test thread, a scanner); retry for a while,
        // then detach lazily so no mount outlives the test, and report it.
        let mut last = String::new();
        for _ in 0..100 {
            let (ok, out) = run(Command::new("umount").arg(&self.dir));
            if ok {
                return Ok(());
            }
            if !out.contains("busy") {
                return Err(out);
            }
            last = out;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (_, lazy) = run(Command::new("umount").arg("-l").arg(&self.dir));
        Err(format!(
            "{last} (still busy after retries; lazily unmounted: {lazy})"
        ))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmount() {
            eprintln!("umount {} failed: {e}", self.dir.display());
        }
    }
}

/// The release `imagefs` the benchmarks run:
/// `$CARGO_TARGET_DIR/release/imagefs`, or `IMAGEFS_BIN` (a debug build
/// would make every comparison meaningless). `None` after a SKIP line.
pub fn release_imagefs() -> Option<PathBuf> {
    let path = match std::env::var_os("IMAGEFS_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::guest::workspace_root().join("target"))
            .join("release/imagefs"),
    };
    if path.is_file() {
        Some(path)
    } else {
        skip(&format!(
            "no release imagefs at {} (cargo build --release -p tools, or set IMAGEFS_BIN)",
            path.display()
        ));
        None
    }
}

/// Runs `cmd` to its end; its stdout, or an error with its status and
/// stderr.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// CPU seconds (user + system) from `/proc/PID/stat` (`pid` a number or
/// `self`): the process's own when `children` is false, else those of
/// its children it has waited for.
pub fn proc_cpu_secs(pid: &str, children: bool) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    stat_cpu_secs(&stat, children).map_err(|e| format!("{path}: {e}"))
}

/// [`proc_cpu_secs`] of one `stat` line, in USER_HZ ticks (100 a second).
fn stat_cpu_secs(stat: &str, children: bool) -> Result<f64, String> {
    // The fields after the command name, which is in parentheses and may
    // hold spaces and parentheses: utime and stime are the 12th and 13th,
    // cutime and cstime the 14th and 15th.
    let (_, after) = stat.rsplit_once(')').ok_or("no command name")?;
    let skip = if children { 13 } else { 11 };
    let ticks = after
        .split_whitespace()
        .skip(skip)
        .take(2)
        .map(|f| f.parse::<u64>().map_err(|e| format!("{f:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    match ticks[..] {
        [user, system] => Ok((user + system) as f64 / 100.0),
        _ => Err("too few fields".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 10 0 0 0 150 25 7 3 20 0 1 0 5";
        assert_eq!(stat_cpu_secs(line, false), Ok(1.75));
        assert_eq!(stat_cpu_secs(line, true), Ok(0.10));
        assert!(stat_cpu_secs("42 (a) S 1 2", false).is_err());
        assert!(stat_cpu_secs("no name", false).is_err());
        assert!(proc_cpu_secs("self", false).is_ok());
    }
}
