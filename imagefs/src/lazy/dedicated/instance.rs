//! What a dedicated directory holds besides the disk: the `instance`
//! record (which image the disk is of, and whether it holds guest writes),
//! the `lock` file, and private file creation.
//!
//! The disk is plaintext (the image and the guest's writes), so the
//! directory is created 0700 and every file 0600, each file with
//! `O_EXCL` or `O_NOFOLLOW`, and temporary files get random names.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use manifest::ManifestDigest;
use rustix::fs::{FlockOperation, OFlags, flock};

use super::{DedicatedError, io_err};

/// The record file.
pub(super) const INSTANCE_FILE: &str = "instance";
/// The lock file, held (`flock`, exclusive) while a process uses the tier.
pub(super) const LOCK_FILE: &str = "lock";
/// The first line of the record.
const RECORD_MAGIC: &str = "imagefs dedicated instance v1";
/// Longest record file read.
const MAX_RECORD_LEN: u64 = 4096;

/// The `instance` record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Record {
    /// The manifest the disk is of, when the opener said.
    pub image: Option<ManifestDigest>,
    /// Whether a guest ever wrote to the disk: then it is the instance's
    /// data, not a cache, and is never discarded without `--reset`.
    pub written: bool,
}

impl Record {
    fn encode(&self) -> String {
        let image = self
            .image
            .map_or_else(|| "-".to_string(), |d| d.to_string());
        let written = if self.written { "yes" } else { "no" };
        format!("{RECORD_MAGIC}\nimage {image}\nwritten {written}\n")
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(RECORD_MAGIC) {
            return Err(format!("{INSTANCE_FILE} file is not an imagefs record"));
        }
        let mut field = |key: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or_else(|| format!("{INSTANCE_FILE} file has no `{key}` line"))
        };
        let image = match field("image")? {
            "-" => None,
            d => Some(
                d.parse()
                    .map_err(|e| format!("{INSTANCE_FILE} file names a bad image: {e}"))?,
            ),
        };
        let written = match field("written")? {
            "yes" => true,
            "no" => false,
            other => return Err(format!("{INSTANCE_FILE} file says written `{other}`")),
        };
        Ok(Self { image, written })
    }
}

/// The record in `dir`: `Ok(None)` when there is none, `Err(why)` when it
/// cannot be read or parsed.
pub(super) fn read_record(dir: &Path) -> Result<Option<Record>, String> {
    let path = dir.join(INSTANCE_FILE);
    let file = match open_existing(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{INSTANCE_FILE} file unreadable: {e}")),
    };
    let mut text = String::new();
    io::Read::read_to_string(&mut io::Read::take(file, MAX_RECORD_LEN), &mut text)
        .map_err(|e| format!("{INSTANCE_FILE} file unreadable: {e}"))?;
    Record::parse(&text).map(Some)
}

/// Writes `record` into `dir` atomically and durably.
pub(super) fn write_record(dir: &Path, record: &Record) -> Result<(), DedicatedError> {
    write_atomically(dir, INSTANCE_FILE, record.encode().as_bytes())
}

/// Creates `dir` (and missing parents) 0700; an existing directory's mode
/// is tightened to 0700 (it is this tier's own). The path itself is the
/// operator's choice and may be a symlink; the files in it are opened
/// without following one.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), DedicatedError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    let meta = fs::metadata(dir).map_err(io_err("inspect", dir))?;
    if !meta.is_dir() {
        return Err(io_err("use", dir)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("make private", dir))?;
    }
    Ok(())
}

/// `O_NOFOLLOW | O_CLOEXEC`, for opening the tier's own files.
fn no_follow() -> i32 {
    (OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32
}

/// Opens an existing file of the tier (never through a symlink), made
/// 0600 if it was looser (files of older versions were made with the
/// umask).
pub(super) fn open_existing(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(no_follow())
        .open(path)?;
    if write && file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Creates `path` as a new 0600 file (`O_EXCL`: never an existing file
/// or symlink).
pub(super) fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
}

/// Writes `bytes` to `dir/name` atomically and durably, through a
/// temporary file with a random name created `O_EXCL`, 0600.
pub(super) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DedicatedError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    let tmp_path = tmp.path().to_path_buf();
    tmp.write_all(bytes).map_err(io_err("write", &tmp_path))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("sync", &tmp_path))?;
    let target = dir.join(name);
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(&target)
        .map_err(|e| io_err("rename into place", &target)(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Takes the directory's lock for as long as the returned file is open
/// (the kernel drops it when the process dies, kill -9 included).
pub(super) fn lock(dir: &Path) -> Result<File, DedicatedError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(&path)
        .map_err(io_err("open the lock file", &path))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(DedicatedError::InUse {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(e) => Err(io_err("lock", &path)(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_say_why() {
        let digest = ManifestDigest::of(b"x");
        for record in [
            Record::default(),
            Record {
                image: Some(digest),
                written: true,
            },
        ] {
            assert_eq!(Record::parse(&record.encode()).unwrap(), record);
        }
        assert!(
            Record::parse("nope")
                .unwrap_err()
                .contains("not an imagefs")
        );
        let bad = format!("{RECORD_MAGIC}\nimage -\nwritten maybe\n");
        assert!(Record::parse(&bad).unwrap_err().contains("maybe"));
    }
}
