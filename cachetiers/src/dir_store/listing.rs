//! The timed listing of a [`DirStore`] that garbage collection works from
//! ([`Catalog::list_objects`](crate::Catalog::list_objects) and friends):
//! every chunk, start profile and leftover temporary file with its size
//! and modification time, and the clock probe.
//!
//! Times are file modification times. A chunk's is when its bytes were
//! written (a batch's rename into place keeps it), and a put that finds
//! the chunk already stored sets it to now (`touch`), so a chunk a running
//! convert wrote or reused is young whatever its manifest's state.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use manifest::{ChunkId, ManifestDigest};

use super::atomic::{TEMP_PREFIX, io_error, write_atomically};
use super::{DirStore, is_shard_name, read_dir_names};
use crate::catalog::{ObjectName, StoredObject};
use crate::store::StoreError;

/// The clock probe's file name, in the store's root.
pub const CLOCK_PROBE: &str = "gc-clock";

impl DirStore {
    /// [`Catalog::list_objects`](crate::Catalog::list_objects): chunks
    /// shard by shard, then profiles, then temporaries of the manifest,
    /// profile and tag directories and of the root.
    pub fn list_objects(&self, visit: &mut dyn FnMut(StoredObject)) -> Result<(), StoreError> {
        let chunks = self.chunks_dir();
        for first in read_dir_names(&chunks)? {
            if !is_shard_name(&first) {
                continue;
            }
            let first_dir = chunks.join(&first);
            for second in read_dir_names(&first_dir)? {
                if !is_shard_name(&second) {
                    continue;
                }
                let shard = first_dir.join(&second);
                for name in read_dir_names(&shard)? {
                    let object = match name.parse::<ChunkId>() {
                        Ok(id)
                            if name == id.to_hex()
                                && name[0..2] == first
                                && name[2..4] == second =>
                        {
                            ObjectName::Chunk(id)
                        }
                        _ if name.starts_with(TEMP_PREFIX) => {
                            ObjectName::Temporary(format!("chunks/{first}/{second}/{name}"))
                        }
                        // Not ours: left alone.
                        _ => continue,
                    };
                    self.visit_file(&shard.join(&name), object, visit)?;
                }
            }
        }
        let profiles = self.profiles_dir();
        if profiles.is_dir() {
            for name in read_dir_names(&profiles)? {
                if let Ok(digest) = ManifestDigest::from_hex(&name) {
                    let path = profiles.join(&name);
                    self.visit_file(&path, ObjectName::Profile(digest), visit)?;
                }
            }
        }
        let mut temp_dirs = vec![
            (String::new(), self.root().to_path_buf()),
            ("manifests/".to_owned(), self.manifests_dir()),
            ("profiles/".to_owned(), profiles),
        ];
        let tags = self.tags_dir();
        if tags.is_dir() {
            for domain in read_dir_names(&tags)? {
                if tags.join(&domain).is_dir() {
                    temp_dirs.push((format!("tags/{domain}/"), tags.join(&domain)));
                }
            }
        }
        for (relative, dir) in temp_dirs {
            if !dir.is_dir() {
                continue;
            }
            for name in read_dir_names(&dir)? {
                if name.starts_with(TEMP_PREFIX) {
                    let object = ObjectName::Temporary(format!("{relative}{name}"));
                    self.visit_file(&dir.join(&name), object, visit)?;
                }
            }
        }
        Ok(())
    }

    /// Visits the file at `path` as `object`, unless it is gone since the
    /// listing or not a plain file.
    fn visit_file(
        &self,
        path: &Path,
        object: ObjectName,
        visit: &mut dyn FnMut(StoredObject),
    ) -> Result<(), StoreError> {
        if let Some(found) = stat_file(path, object)? {
            visit(found);
        }
        Ok(())
    }

    /// Where `object` is stored; `None` for a temporary path that is not
    /// a plain relative path starting with the temporary prefix (it could
    /// name anything).
    fn object_path(&self, object: &ObjectName) -> Option<PathBuf> {
        match object {
            ObjectName::Chunk(id) => Some(self.chunk_path(id)),
            ObjectName::Profile(digest) => Some(self.profile_path(digest)),
            ObjectName::Temporary(relative) => {
                let path = Path::new(relative);
                let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
                let temp = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(TEMP_PREFIX));
                (plain && temp).then(|| self.root().join(path))
            }
        }
    }

    /// The object as it is now; `None` when it is gone.
    fn stat_object(&self, object: &ObjectName) -> Result<Option<StoredObject>, StoreError> {
        match self.object_path(object) {
            Some(path) => stat_file(&path, object.clone()),
            None => Ok(None),
        }
    }

    /// [`Catalog::remove_object`](crate::Catalog::remove_object). A chunk
    /// is first renamed aside and its time read there: a put that
    /// refreshed it before the rename shows, and a put after it finds the
    /// chunk gone (its check of the name, see `DirStore::touch`) and
    /// writes it again, so no put is told "already there" about a chunk
    /// deleted under it. A chunk found young is renamed back.
    pub fn remove_object(
        &self,
        object: &ObjectName,
        modified_by: SystemTime,
    ) -> Result<bool, StoreError> {
        let old = |found: Option<StoredObject>| {
            found.is_some_and(|o| o.modified.is_some_and(|t| t <= modified_by))
        };
        match object {
            ObjectName::Chunk(id) => {
                let path = self.chunk_path(id);
                let aside = self.shard_dir(id).join(format!(
                    "{TEMP_PREFIX}gc.{}.{}",
                    id.to_hex(),
                    std::process::id()
                ));
                match fs::rename(&path, &aside) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(io_error("rename", &path)(e)),
                }
                if old(stat_file(&aside, object.clone())?) {
                    fs::remove_file(&aside).map_err(io_error("remove", &aside))?;
                    Ok(true)
                } else {
                    fs::rename(&aside, &path).map_err(io_error("rename", &aside))?;
                    Ok(false)
                }
            }
            _ if !old(self.stat_object(object)?) => Ok(false),
            ObjectName::Profile(digest) => self.remove_profile(digest),
            _ => {
                let Some(path) = self.object_path(object) else {
                    return Ok(false);
                };
                match fs::remove_file(&path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io_error("remove", &path)(e)),
                }
            }
        }
    }

    /// [`Catalog::clock_probe`](crate::Catalog::clock_probe): rewrites
    /// `<root>/gc-clock` and returns its modification time.
    pub fn clock_probe(&self) -> Result<SystemTime, StoreError> {
        let root = self.root().to_path_buf();
        write_atomically(&root, CLOCK_PROBE, b"imagefs gc clock probe\n")?;
        let path = root.join(CLOCK_PROBE);
        fs::symlink_metadata(&path)
            .and_then(|meta| meta.modified())
            .map_err(io_error("read the time of", &path))
    }

    /// Sets chunk `id`'s modification time to now, as a put found it
    /// stored and reuses it (see the module documentation); false when it
    /// is no longer there under its name afterwards (garbage collection
    /// took it meanwhile), and the put must write it.
    pub(super) fn touch(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let path = self.chunk_path(id);
        let file = match File::options().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("open", &path)(e)),
        };
        let touched = file
            .set_modified(SystemTime::now())
            .and_then(|()| file.metadata())
            .map_err(io_error("refresh the time of", &path))?;
        // Still under its name after the refresh: a collector renames a
        // chunk aside before it looks at its time, so it sees this one.
        match fs::symlink_metadata(&path) {
            Ok(now) => Ok(now.ino() == touched.ino() && now.dev() == touched.dev()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("inspect", &path)(e)),
        }
    }
}

/// The file at `path` as `object`; `None` when it is gone or not a plain
/// file.
fn stat_file(path: &Path, object: ObjectName) -> Result<Option<StoredObject>, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Ok(Some(StoredObject {
            name: object,
            size: meta.len(),
            modified: meta.modified().ok(),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("inspect", path)(e)),
    }
}
