//! Private files and directories for key material: directories 0700, files
//! 0600, checked on every read, written atomically.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::KeyError;

/// Mode of key directories.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of key files.
pub(crate) const FILE_MODE: u32 = 0o600;

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.to_path_buf();
    move |source| KeyError::Io {
        action,
        path,
        source,
    }
}

/// Fails unless `mode` gives nothing to group or others.
fn check_mode(path: &Path, mode: u32, expected: u32) -> Result<(), KeyError> {
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
            expected,
        });
    }
    Ok(())
}

/// Creates `path` as a 0700 directory if missing; checks it if present.
pub(crate) fn ensure_private_dir(path: &Path) -> Result<(), KeyError> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {
            // The umask may have removed bits we asked for; set exactly.
            fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
                .map_err(io_error("set permissions of", path))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_private_dir(path),
        Err(e) => Err(io_error("create directory", path)(e)),
    }
}

/// Checks that `path` is a directory that only its owner can use.
pub(crate) fn check_private_dir(path: &Path) -> Result<(), KeyError> {
    let meta = fs::symlink_metadata(path).map_err(io_error("inspect", path))?;
    if !meta.is_dir() {
        return Err(KeyError::NotRegular {
            path: path.to_path_buf(),
            expected: "directory",
        });
    }
    check_mode(path, meta.permissions().mode(), DIR_MODE)
}

/// Reads a key file of exactly `N` bytes, checking type and permissions.
pub(crate) fn read_key_file<const N: usize>(path: &Path) -> Result<[u8; N], KeyError> {
    let meta = fs::symlink_metadata(path).map_err(io_error("read key file", path))?;
    if !meta.is_file() {
        return Err(KeyError::NotRegular {
            path: path.to_path_buf(),
            expected: "regular file",
        });
    }
    let file = File::open(path).map_err(io_error("read key file", path))?;
    let meta = file.metadata().map_err(io_error("read key file", path))?;
    check_mode(path, meta.permissions().mode(), FILE_MODE)?;
    let mut bytes = Vec::with_capacity(N + 1);
    file.take(N as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read key file", path))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| KeyError::KeyLength {
        path: path.to_path_buf(),
        len: meta.len(),
        expected: N,
    })
}

/// Reads a small private file (at most 4 KiB).
pub(crate) fn read_text_bytes(path: &Path) -> Result<Vec<u8>, KeyError> {
    let file = File::open(path).map_err(io_error("read", path))?;
    let meta = file.metadata().map_err(io_error("read", path))?;
    check_mode(path, meta.permissions().mode(), FILE_MODE)?;
    let mut bytes = Vec::new();
    file.take(4096)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    Ok(bytes)
}

/// Reads a small private text file (at most 4 KiB).
pub(crate) fn read_text_file(path: &Path) -> Result<String, KeyError> {
    String::from_utf8(read_text_bytes(path)?).map_err(|e| {
        io_error("read", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })
}

fn temp_path(final_path: &Path) -> Result<PathBuf, KeyError> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(KeyError::Random)?;
    let name = format!(".tmp-{}-{}", std::process::id(), hex::encode(suffix));
    Ok(final_path.with_file_name(name))
}

/// Writes `bytes` to a new 0600 temporary file next to `final_path` and
/// syncs it.
fn write_temp(final_path: &Path, bytes: &[u8]) -> Result<PathBuf, KeyError> {
    let temp = temp_path(final_path)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp)?;
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(io_error("write", &temp)(e));
    }
    Ok(temp)
}

fn sync_parent(path: &Path) -> Result<(), KeyError> {
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync directory", parent))?;
    }
    Ok(())
}

/// Creates `final_path` with `bytes` unless it already exists. Returns
/// whether this call created it. Never replaces an existing file, so two
/// processes racing to create the same secret agree on one value.
pub(crate) fn create_file_once(final_path: &Path, bytes: &[u8]) -> Result<bool, KeyError> {
    let temp = write_temp(final_path, bytes)?;
    let linked = fs::hard_link(&temp, final_path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            sync_parent(final_path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_error("create", final_path)(e)),
    }
}

/// Atomically replaces `final_path` with `bytes`.
pub(crate) fn replace_file(final_path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let temp = write_temp(final_path, bytes)?;
    if let Err(e) = fs::rename(&temp, final_path) {
        let _ = fs::remove_file(&temp);
        return Err(io_error("replace", final_path)(e));
    }
    sync_parent(final_path)
}
