//! Start profiles: recording the chunks a start reads, storing them sealed
//! beside the manifest, merging several runs, and loading the order to
//! prefetch. The format is [`manifest::profile`]; this module is what the
//! `imagefs serve --record-profile` and `imagefs profile …` commands call.
//!
//! - [`ProfileRecorder`]: fed by the vhost read path (chunk = offset /
//!   chunk size), keeps each chunk's first access, µs after the guest's
//!   first read; [`ProfileRecorder::wait_done`] ends a recording window;
//! - [`from_trace`]: the same from a `--record-trace` file;
//! - [`merge`]: the union of several runs, ordered by median first access;
//! - [`store_profile`], [`stored_profile`], [`remove_profile`], and the
//!   file forms [`write_profile_file`] and [`read_profile_file`];
//! - [`load_profile`]: the prefetch order, or `None` (one log line) when
//!   the stored profile is missing, corrupt or foreign.
//!
//! Wiring point for prefetch: after `open_image`, a caller passes
//! `load_profile(origin, &opened.digest, keys, &opened.manifest)
//! .unwrap_or_default()` as the `Vec<ChunkIndex>` order `LazyImage` takes.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cachetiers::{Catalog, StoreError};
use manifest::profile::{ProfileEntry, ProfileError, StartProfile, seal_profile, unseal_profile};
use manifest::trace::{TraceHeader, TraceRecord};
use manifest::{ChunkEntry, ChunkIndex, KeyProvider, Manifest, ManifestDigest};

/// Why a start-profile operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileOpError {
    /// The origin could not store, read or remove the profile.
    #[error("start profile of {digest} in the origin")]
    Store {
        /// The manifest.
        digest: ManifestDigest,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// A profile could not be sealed, unsealed or checked (corrupt,
    /// foreign, outside the manifest).
    #[error("start profile {what}")]
    Profile {
        /// Which profile (the stored one, a file).
        what: String,
        /// Why.
        #[source]
        source: ProfileError,
    },
    /// The image has no stored profile.
    #[error(
        "image {digest} has no start profile (record one with `imagefs serve --record-profile`)"
    )]
    Missing {
        /// The manifest.
        digest: ManifestDigest,
    },
    /// A profile file could not be read or written.
    #[error("start profile file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A trace was recorded from another image.
    #[error("the trace was recorded from image {found}, not {expected}")]
    TraceOfAnotherImage {
        /// The image asked for.
        expected: ManifestDigest,
        /// The image in the trace header.
        found: String,
    },
    /// `merge` was given nothing.
    #[error("nothing to merge: give at least one recorded profile")]
    NothingToMerge,
}

/// Records a start's first access to each chunk, from the read path.
/// Shared by the queue workers; each read costs one lock.
#[derive(Debug)]
pub struct ProfileRecorder {
    digest: ManifestDigest,
    chunk_size: u64,
    /// One flag per chunk: present (a hole has nothing to prefetch).
    present: Vec<bool>,
    window: Option<Duration>,
    state: Mutex<RecorderState>,
    changed: Condvar,
    /// `closed`, readable without the lock: reads after recording ended
    /// (every read until the daemon exits) return at once.
    ended: AtomicBool,
}

#[derive(Debug, Default)]
struct RecorderState {
    /// The guest's first read: time zero of the profile.
    first: Option<Instant>,
    seen: HashSet<u64>,
    entries: Vec<ProfileEntry>,
    closed: bool,
}

impl ProfileRecorder {
    /// A recorder for image `digest` with `manifest`. With `window`,
    /// recording stops that long after the guest's first read.
    pub fn new(digest: ManifestDigest, manifest: &Manifest, window: Option<Duration>) -> Self {
        Self {
            digest,
            chunk_size: manifest.chunk_size.as_u64(),
            present: manifest.chunks.iter().map(|c| !c.is_hole()).collect(),
            window,
            state: Mutex::new(RecorderState::default()),
            changed: Condvar::new(),
            ended: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends recording (under the lock, `s` being its state).
    fn end(&self, s: &mut RecorderState) {
        s.closed = true;
        self.ended.store(true, Ordering::Release);
    }

    /// Records a guest read of `len` bytes at `offset`, now. Every chunk
    /// the read touches counts; holes and bytes past the device do not.
    pub fn record_read(&self, offset: u64, len: u64) {
        self.record_at(Instant::now(), offset, len);
    }

    fn record_at(&self, now: Instant, offset: u64, len: u64) {
        if len == 0 || self.ended.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let first = *s.first.get_or_insert_with(|| {
            // The window starts now: wake `wait_done`.
            self.changed.notify_all();
            now
        });
        let elapsed = now.saturating_duration_since(first);
        if self.window.is_some_and(|w| elapsed >= w) {
            self.end(&mut s);
            self.changed.notify_all();
            return;
        }
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // Times are taken under the lock, so entries stay in time order.
        let us = s.entries.last().map_or(us, |e| e.first_access_us.max(us));
        let first_chunk = offset / self.chunk_size;
        let last_chunk = offset.saturating_add(len - 1) / self.chunk_size;
        for chunk in first_chunk..=last_chunk {
            let present = usize::try_from(chunk)
                .ok()
                .and_then(|i| self.present.get(i))
                .copied();
            match present {
                None => break,
                Some(false) => {}
                Some(true) => {
                    if s.seen.insert(chunk) {
                        s.entries.push(ProfileEntry {
                            chunk,
                            first_access_us: us,
                        });
                    }
                }
            }
        }
    }

    /// Ends recording: later reads are not recorded.
    pub fn close(&self) {
        self.end(&mut self.lock());
        self.changed.notify_all();
    }

    /// Blocks until recording ends: [`close`](Self::close) was called, or
    /// the window has passed since the guest's first read.
    pub fn wait_done(&self) {
        let mut s = self.lock();
        loop {
            if s.closed {
                return;
            }
            let timeout = match (self.window, s.first) {
                (Some(w), Some(first)) => {
                    let left = w.saturating_sub(first.elapsed());
                    if left.is_zero() {
                        self.end(&mut s);
                        return;
                    }
                    left
                }
                // Until the first read (or `close`): nothing to time.
                _ => Duration::from_secs(3600),
            };
            s = self
                .changed
                .wait_timeout(s, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The profile recorded so far.
    pub fn profile(&self) -> StartProfile {
        StartProfile {
            manifest: self.digest,
            entries: self.lock().entries.clone(),
        }
    }
}

/// The profile of a `--record-trace` trace of image `digest`: each
/// present chunk at its first read, µs after the trace's first read.
pub fn from_trace(
    digest: &ManifestDigest,
    manifest: &Manifest,
    header: &TraceHeader,
    records: &[TraceRecord],
) -> Result<StartProfile, ProfileOpError> {
    if header.image != digest.to_string() {
        return Err(ProfileOpError::TraceOfAnotherImage {
            expected: *digest,
            found: header.image.clone(),
        });
    }
    let recorder = ProfileRecorder::new(*digest, manifest, None);
    // Records are in the order the device took them; replaying them at
    // their own times (relative to the first) gives the recorder's view.
    let base = Instant::now();
    let t0 = records.first().map_or(0, |r| r.t_ns);
    for r in records {
        let at = base + Duration::from_nanos(r.t_ns.saturating_sub(t0));
        recorder.record_at(at, r.offset, r.len);
    }
    Ok(recorder.profile())
}

/// The union of `profiles` (all of one image), each chunk at the median
/// of its first-access times over the profiles that saw it (the lower
/// middle of an even count), ordered by that time, then by chunk.
pub fn merge(profiles: &[StartProfile]) -> Result<StartProfile, ProfileOpError> {
    let first = profiles.first().ok_or(ProfileOpError::NothingToMerge)?;
    let mut times: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for p in profiles {
        if p.manifest != first.manifest {
            return Err(ProfileOpError::Profile {
                what: "to merge".into(),
                source: ProfileError::ForeignImage {
                    expected: first.manifest,
                    found: p.manifest,
                },
            });
        }
        for e in &p.entries {
            times.entry(e.chunk).or_default().push(e.first_access_us);
        }
    }
    let mut entries: Vec<ProfileEntry> = times
        .into_iter()
        .map(|(chunk, mut t)| {
            t.sort_unstable();
            ProfileEntry {
                chunk,
                first_access_us: t[(t.len() - 1) / 2],
            }
        })
        .collect();
    entries.sort_by_key(|e| (e.first_access_us, e.chunk));
    Ok(StartProfile {
        manifest: first.manifest,
        entries,
    })
}

fn profile_err(what: impl Into<String>) -> impl FnOnce(ProfileError) -> ProfileOpError {
    let what = what.into();
    move |source| ProfileOpError::Profile { what, source }
}

/// `profile` checked against `manifest`, then sealed with `keys`; `what`
/// names it in errors.
fn check_and_seal(
    profile: &StartProfile,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
    what: String,
) -> Result<Vec<u8>, ProfileOpError> {
    profile
        .check_against(manifest)
        .map_err(profile_err(what.clone()))?;
    seal_profile(profile, keys).map_err(profile_err(what))
}

/// `sealed` unsealed as image `digest`'s profile, then checked against
/// `manifest`; `what` names it in errors.
fn unseal_and_check(
    sealed: &[u8],
    digest: &ManifestDigest,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
    what: String,
) -> Result<StartProfile, ProfileOpError> {
    let profile = unseal_profile(sealed, keys, digest).map_err(profile_err(what.clone()))?;
    profile.check_against(manifest).map_err(profile_err(what))?;
    Ok(profile)
}

/// Checks `profile` against `manifest`, seals it with `keys` and stores
/// it in `origin` beside its manifest (replacing the one there).
pub fn store_profile(
    origin: &dyn Catalog,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
    profile: &StartProfile,
) -> Result<(), ProfileOpError> {
    let sealed = check_and_seal(profile, keys, manifest, format!("of {}", profile.manifest))?;
    origin
        .put_profile(&profile.manifest, &sealed)
        .map_err(|source| ProfileOpError::Store {
            digest: profile.manifest,
            source,
        })
}

/// The stored profile of image `digest`, unsealed and checked against
/// `manifest`; `Ok(None)` if it has none.
pub fn stored_profile(
    origin: &dyn Catalog,
    digest: &ManifestDigest,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
) -> Result<Option<StartProfile>, ProfileOpError> {
    let sealed = origin
        .get_profile(digest)
        .map_err(|source| ProfileOpError::Store {
            digest: *digest,
            source,
        })?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let what = format!("of {digest} in {}", origin.location());
    unseal_and_check(&sealed, digest, keys, manifest, what).map(Some)
}

/// Drops the stored profile of image `digest`; whether there was one.
pub fn remove_profile(
    origin: &dyn Catalog,
    digest: &ManifestDigest,
) -> Result<bool, ProfileOpError> {
    origin
        .remove_profile(digest)
        .map_err(|source| ProfileOpError::Store {
            digest: *digest,
            source,
        })
}

/// Writes `profile`, checked and sealed, to `path` (for collecting runs
/// to [`merge`]).
pub fn write_profile_file(
    path: &Path,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
    profile: &StartProfile,
) -> Result<(), ProfileOpError> {
    let sealed = check_and_seal(profile, keys, manifest, format!("file {}", path.display()))?;
    std::fs::write(path, sealed).map_err(|source| ProfileOpError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Saves `profile`, checked and sealed, to the file `path` when given,
/// else in `origin` beside its manifest; says where, for a message
/// ("written to FILE", "stored in ORIGIN").
pub fn save_profile(
    path: Option<&Path>,
    origin: &dyn Catalog,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
    profile: &StartProfile,
) -> Result<String, ProfileOpError> {
    match path {
        Some(path) => write_profile_file(path, keys, manifest, profile)
            .map(|()| format!("written to {}", path.display())),
        None => store_profile(origin, keys, manifest, profile)
            .map(|()| format!("stored in {}", origin.location())),
    }
}

/// Reads a sealed profile file of image `digest`, checked against
/// `manifest`.
pub fn read_profile_file(
    path: &Path,
    digest: &ManifestDigest,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
) -> Result<StartProfile, ProfileOpError> {
    let sealed = std::fs::read(path).map_err(|source| ProfileOpError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    unseal_and_check(
        &sealed,
        digest,
        keys,
        manifest,
        format!("file {}", path.display()),
    )
}

/// The chunk order to prefetch for image `digest`: its stored profile's
/// order, or `None` after one line on stderr when there is no usable
/// profile (missing, unreadable, corrupt, foreign, or naming chunks the
/// manifest does not have). A start without a profile only loses its
/// head start, so this never fails.
pub fn load_profile(
    origin: &dyn Catalog,
    digest: &ManifestDigest,
    keys: &dyn KeyProvider,
    manifest: &Manifest,
) -> Option<Vec<ChunkIndex>> {
    match stored_profile(origin, digest, keys, manifest) {
        Ok(Some(profile)) => Some(profile.order()),
        Ok(None) => {
            tracing::info!("no start profile for {digest}; not prefetching");
            None
        }
        Err(e) => {
            tracing::warn!("ignoring the start profile: {}", crate::error_chain(&e));
            None
        }
    }
}

/// The profile as text: one line for the whole, then one per chunk
/// (index, byte offset, first access).
pub fn render(profile: &StartProfile, manifest: &Manifest) -> String {
    let chunk_size = manifest.chunk_size.as_u64();
    let last = profile.entries.last().map_or(0, |e| e.first_access_us);
    let mut out = format!(
        "start profile of {}: {} chunks ({} bytes), last first access at {:.3} ms\n",
        profile.manifest,
        profile.entries.len(),
        profile.entries.len() as u64 * chunk_size,
        last as f64 / 1000.0
    );
    for e in &profile.entries {
        let kind = match manifest.chunk(ChunkIndex(e.chunk)) {
            Some(ChunkEntry::Present { .. }) => "",
            _ => " (not in the manifest)",
        };
        out += &format!(
            "  chunk {:>8}  offset {:>14}  {:>12.3} ms{kind}\n",
            e.chunk,
            e.chunk.saturating_mul(chunk_size),
            e.first_access_us as f64 / 1000.0
        );
    }
    out
}

#[cfg(test)]
mod tests;
