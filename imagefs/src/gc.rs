//! Garbage collection of an origin (`imagefs gc`): deletes the manifests
//! the retention rule lets go, and the chunks, start profiles and leftover
//! temporary files nothing kept names, once they are older than a grace
//! period.
//!
//! Mark: every manifest a tag names, every untagged manifest the retention
//! rule keeps (`keep_untagged`; none given: all of them, as registries do
//! unless told to delete untagged manifests) and every manifest younger
//! than the grace period is opened, and its chunks are marked. A start
//! profile names chunk indices of its own manifest and nothing else
//! (`StartProfile::check_against`), so marking the manifest covers it; a
//! kept manifest keeps its profile.
//!
//! Sweep, in an order that leaves a valid store after a crash at any
//! point: manifests (with their profiles), then profiles whose manifest is
//! gone, then chunks, then temporaries. Each object is looked at again
//! just before it is deleted.
//!
//! Ages are measured with the store's own clock: gc writes a probe object
//! first and reads back the time the store stamped on it. A store whose
//! clock is far from this host's, or holding an object stamped far in the
//! future, is refused: ages measured there mean nothing.
//!
//! Safe beside a running convert: it writes chunks, then the manifest,
//! then the tag; a chunk it has written (or reused: a put that finds its
//! chunk stored makes it young again, see
//! [`Catalog::dedup_refresh`]) but that no manifest names yet is younger
//! than the grace period, which must therefore exceed the longest convert.
//! Each delete looks at the object's time again ([`Catalog::remove_object`]):
//! a directory store leaves no gap between that look and the delete; an
//! object store leaves one request's worth, in which a convert reusing an
//! old unreferenced chunk could lose it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use cachetiers::{Catalog, ObjectName, StoreError, StoredObject};
use manifest::{ChunkId, KeyProvider, ManifestDigest, unseal};
use serde::{Deserialize, Serialize};

/// Largest difference between this host's clock and the store's that gc
/// accepts (less when the grace period is short: see [`clock_limit`]).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);

/// Added to the grace period: some stores stamp times in whole seconds.
pub const TIMESTAMP_SLACK: Duration = Duration::from_secs(1);

/// What to collect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Unreferenced objects (and untagged manifests) younger than this are
    /// kept: it must exceed the longest convert.
    pub grace: Duration,
    /// Untagged manifests stored within this are kept; `None` keeps every
    /// untagged manifest.
    pub keep_untagged: Option<Duration>,
    /// Report what would be deleted; delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    /// A day's grace, every untagged manifest kept, deleting.
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(24 * 3600),
            keep_untagged: None,
            dry_run: false,
        }
    }
}

/// What gc did (`imagefs gc --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Where the store is.
    pub store: String,
    /// Nothing was deleted: `deleted` and `items` say what would have been.
    pub dry_run: bool,
    /// The grace period, in seconds.
    pub grace_secs: u64,
    /// The retention of untagged manifests in seconds (`None`: all kept).
    pub keep_untagged_secs: Option<u64>,
    /// The store's clock minus this host's, in milliseconds.
    pub clock_offset_ms: i64,
    /// What stays.
    pub kept: GcKept,
    /// What was (or would be) deleted.
    pub deleted: GcTotals,
    /// Each object deleted (or to delete).
    pub items: Vec<GcItem>,
    /// Objects that were to go but were gone or young again when gc came
    /// to delete them.
    pub skipped: u64,
}

/// The objects gc keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcKept {
    /// Manifests a tag names.
    pub tagged_manifests: u64,
    /// Untagged manifests kept by the retention rule or the grace period.
    pub untagged_manifests: u64,
    /// Chunks a kept manifest names.
    pub chunks: u64,
    /// Their stored bytes.
    pub chunk_bytes: u64,
    /// Start profiles of kept manifests.
    pub profiles: u64,
    /// Unreferenced objects kept because they are younger than the grace
    /// period (a running convert's, say).
    pub young: u64,
}

/// Counts and stored bytes of what is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcTotals {
    /// Manifests.
    pub manifests: u64,
    /// Their bytes (with their start profiles').
    pub manifest_bytes: u64,
    /// Start profiles whose manifest was already gone.
    pub profiles: u64,
    /// Their bytes.
    pub profile_bytes: u64,
    /// Chunks.
    pub chunks: u64,
    /// Their bytes.
    pub chunk_bytes: u64,
    /// Leftover temporary files.
    pub temporaries: u64,
    /// Their bytes.
    pub temporary_bytes: u64,
}

impl GcTotals {
    /// Everything's bytes.
    pub fn bytes(&self) -> u64 {
        self.manifest_bytes + self.profile_bytes + self.chunk_bytes + self.temporary_bytes
    }

    fn add(&mut self, kind: GcKind, bytes: u64) {
        let (count, total) = match kind {
            GcKind::Manifest => (&mut self.manifests, &mut self.manifest_bytes),
            GcKind::Profile => (&mut self.profiles, &mut self.profile_bytes),
            GcKind::Chunk => (&mut self.chunks, &mut self.chunk_bytes),
            GcKind::Temporary => (&mut self.temporaries, &mut self.temporary_bytes),
        };
        *count += 1;
        *total += bytes;
    }
}

/// One object deleted (or to delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcItem {
    /// What it is.
    pub kind: GcKind,
    /// `sha256:…` for a manifest or profile (the manifest's), the chunk
    /// id's hex, or a temporary's path in the store.
    pub name: String,
    /// Its stored bytes.
    pub bytes: u64,
}

/// The kinds of object gc deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GcKind {
    /// A sealed manifest (with its start profile).
    Manifest,
    /// A start profile whose manifest is gone.
    Profile,
    /// An encrypted chunk.
    Chunk,
    /// A temporary file a writer left.
    Temporary,
}

impl GcKind {
    /// Its name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            GcKind::Manifest => "manifest",
            GcKind::Profile => "profile",
            GcKind::Chunk => "chunk",
            GcKind::Temporary => "temporary",
        }
    }
}

/// Why gc refused or stopped. It never deletes on partial information:
/// every refusal comes before the first delete, except a failing delete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// The store failed (a listing, a read, a delete).
    #[error("gc of {location}: cannot {action}")]
    Store {
        /// Where the store is.
        location: String,
        /// What gc was doing.
        action: String,
        /// What failed.
        source: Box<StoreError>,
    },
    /// The store's clock is too far from this host's.
    #[error(
        "gc of {location} refused: the store's clock is {offset_ms} ms off this host's \
         (at most {limit_ms} ms allowed with this grace period); fix the clocks first"
    )]
    ClockSkew {
        /// Where the store is.
        location: String,
        /// Store minus local, in milliseconds.
        offset_ms: i64,
        /// The limit, in milliseconds.
        limit_ms: u64,
    },
    /// An object is stamped in the store's future.
    #[error(
        "gc of {location} refused: {object} is stamped {ahead_secs} s after the store's \
         clock now, so ages cannot be trusted; fix the clock that wrote it"
    )]
    FutureObject {
        /// Where the store is.
        location: String,
        /// The object.
        object: String,
        /// How far ahead, in seconds.
        ahead_secs: u64,
    },
    /// A manifest gc keeps cannot be unsealed, so its chunks are unknown.
    #[error(
        "gc of {location} refused: kept manifest {digest} cannot be unsealed with these keys \
         ({reason}), so the chunks it names are unknown"
    )]
    Unreadable {
        /// Where the store is.
        location: String,
        /// The manifest.
        digest: ManifestDigest,
        /// Why.
        reason: String,
    },
    /// The grace period is shorter than the store's dedup refresh, so a
    /// chunk a convert reuses could look old.
    #[error(
        "gc of {location} refused: a grace of {grace_secs} s is shorter than this store's \
         dedup refresh of {refresh_secs} s (a reused chunk may look that old); use a longer --grace"
    )]
    GraceTooShort {
        /// Where the store is.
        location: String,
        /// The grace asked for.
        grace_secs: u64,
        /// [`Catalog::dedup_refresh`].
        refresh_secs: u64,
    },
}

/// The clock difference accepted with grace period `grace`: at most
/// [`MAX_CLOCK_SKEW`], at most half the grace, but never under 2 s (the
/// resolution of some stores' times plus a round trip).
pub fn clock_limit(grace: Duration) -> Duration {
    MAX_CLOCK_SKEW.min((grace / 2).max(Duration::from_secs(2)))
}

/// An unreferenced object found old enough to go.
struct Candidate {
    kind: GcKind,
    object: ObjectName,
    bytes: u64,
}

/// Collects garbage in `catalog` (an origin), opening kept manifests with
/// `keys`. See the module documentation for what goes and what stays.
pub fn gc(
    catalog: &dyn Catalog,
    keys: &dyn KeyProvider,
    opts: &GcOptions,
) -> Result<GcReport, GcError> {
    let location = catalog.location();
    let store_err = |action: &str| {
        let location = location.clone();
        let action = action.to_owned();
        move |source| GcError::Store {
            location,
            action,
            source: Box::new(source),
        }
    };
    let refresh = catalog.dedup_refresh();
    if !opts.dry_run && opts.grace < refresh {
        return Err(GcError::GraceTooShort {
            location,
            grace_secs: opts.grace.as_secs(),
            refresh_secs: refresh.as_secs(),
        });
    }

    // The store's "now", and how far it is from ours.
    let before = SystemTime::now();
    let now = catalog
        .clock_probe()
        .map_err(store_err("write the clock probe"))?;
    let after = SystemTime::now();
    let local = before + after.duration_since(before).unwrap_or_default() / 2;
    let offset_ms = signed_ms(now, local);
    let limit = clock_limit(opts.grace);
    if offset_ms.unsigned_abs() > limit.as_millis() as u64 {
        return Err(GcError::ClockSkew {
            location,
            offset_ms,
            limit_ms: limit.as_millis() as u64,
        });
    }
    let future = |object: String, stamped: Option<SystemTime>| match stamped {
        Some(t) if t.duration_since(now).is_ok_and(|ahead| ahead > limit) => {
            Err(GcError::FutureObject {
                location: location.clone(),
                object,
                ahead_secs: t.duration_since(now).unwrap_or_default().as_secs(),
            })
        }
        _ => Ok(()),
    };
    // Old enough to go: unknown times never are.
    let grace = opts.grace + TIMESTAMP_SLACK;
    // Objects modified by this went unreferenced long enough ago.
    let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let older_than = |stamped: Option<SystemTime>, age: Duration| {
        stamped.is_some_and(|t| now.duration_since(t).is_ok_and(|a| a > age))
    };

    let mut report = GcReport {
        store: location.clone(),
        dry_run: opts.dry_run,
        grace_secs: opts.grace.as_secs(),
        keep_untagged_secs: opts.keep_untagged.map(|d| d.as_secs()),
        clock_offset_ms: offset_ms,
        ..GcReport::default()
    };

    // Mark. Tags first: a tag is set after its manifest is stored, so the
    // manifest listing that follows has it (unless it was removed since).
    let tagged: HashSet<ManifestDigest> = catalog
        .list_tags()
        .map_err(store_err("list the tags"))?
        .into_iter()
        .map(|t| t.digest)
        .collect();
    let manifests = catalog
        .list_manifests()
        .map_err(store_err("list the manifests"))?;
    let mut kept_manifests: HashSet<ManifestDigest> = tagged.clone();
    let mut doomed: HashMap<ManifestDigest, u64> = HashMap::new();
    for m in &manifests {
        future(m.digest.to_string(), m.stored_at)?;
        if tagged.contains(&m.digest) {
            continue;
        }
        let retained = match opts.keep_untagged {
            None => true,
            Some(keep) => !older_than(m.stored_at, keep),
        };
        if retained || !older_than(m.stored_at, grace) {
            kept_manifests.insert(m.digest);
            report.kept.untagged_manifests += 1;
        } else {
            doomed.insert(m.digest, m.size);
        }
    }
    let mut marked: HashSet<ChunkId> = HashSet::new();
    for digest in &kept_manifests {
        let sealed = match catalog.get_manifest(digest) {
            Ok(sealed) => sealed,
            // A tag's manifest removed since the tags were listed: it
            // names nothing any more.
            Err(StoreError::ManifestNotFound { .. }) => continue,
            Err(e) => return Err(store_err(&format!("read manifest {digest}"))(e)),
        };
        if tagged.contains(digest) {
            report.kept.tagged_manifests += 1;
        }
        let manifest = unseal(&sealed, keys).map_err(|e| GcError::Unreadable {
            location: location.clone(),
            digest: *digest,
            reason: crate::error_chain(&e),
        })?;
        marked.extend(crate::images::distinct_chunks(&manifest).into_keys());
    }

    // Everything else that is old goes. The listing is trusted only once
    // it has finished: a listing error ends gc before any delete.
    let mut candidates = Vec::new();
    let mut first_future = Ok(());
    catalog
        .list_objects(&mut |o: StoredObject| {
            if first_future.is_ok() {
                first_future = future(o.name.to_string(), o.modified);
            }
            let kind = match &o.name {
                ObjectName::Chunk(id) if marked.contains(id) => {
                    report.kept.chunks += 1;
                    report.kept.chunk_bytes += o.size;
                    return;
                }
                ObjectName::Profile(digest) if kept_manifests.contains(digest) => {
                    report.kept.profiles += 1;
                    return;
                }
                ObjectName::Profile(digest) if doomed.contains_key(digest) => {
                    // Goes with its manifest.
                    if let Some(bytes) = doomed.get_mut(digest) {
                        *bytes += o.size;
                    }
                    return;
                }
                ObjectName::Chunk(_) => GcKind::Chunk,
                ObjectName::Profile(_) => GcKind::Profile,
                _ => GcKind::Temporary,
            };
            if older_than(o.modified, grace) {
                candidates.push(Candidate {
                    kind,
                    object: o.name,
                    bytes: o.size,
                });
            } else {
                report.kept.young += 1;
            }
        })
        .map_err(store_err("list the chunks, profiles and temporary files"))?;
    first_future?;

    // Sweep: manifests first, so a crash never leaves one naming a
    // deleted chunk; profiles, chunks, temporaries after.
    let mut doomed: Vec<(ManifestDigest, u64)> = doomed.into_iter().collect();
    doomed.sort();
    // A tag set since the mark saves its manifest (and, with it, the
    // chunks: they were not marked, so they are kept below too).
    let tagged_now: HashSet<ManifestDigest> = if opts.dry_run || doomed.is_empty() {
        tagged
    } else {
        catalog
            .list_tags()
            .map_err(store_err("list the tags again"))?
            .into_iter()
            .map(|t| t.digest)
            .collect()
    };
    let mut saved_by_tag = false;
    for (digest, bytes) in doomed {
        if tagged_now.contains(&digest) {
            saved_by_tag = true;
            report.skipped += 1;
            continue;
        }
        if !opts.dry_run
            && !catalog
                .remove_manifest(&digest)
                .map_err(store_err(&format!("remove manifest {digest}")))?
        {
            report.skipped += 1;
            continue;
        }
        report.deleted.add(GcKind::Manifest, bytes);
        report.items.push(GcItem {
            kind: GcKind::Manifest,
            name: digest.to_string(),
            bytes,
        });
    }
    candidates.sort_by_key(|c| c.kind as u8);
    for c in candidates {
        if saved_by_tag && c.kind == GcKind::Chunk {
            // The newly tagged manifest's chunks are among these; the
            // next run sorts them out.
            report.skipped += 1;
            continue;
        }
        if !opts.dry_run && !remove_if_old(catalog, &c, cutoff, &store_err)? {
            report.skipped += 1;
            continue;
        }
        report.deleted.add(c.kind, c.bytes);
        report.items.push(GcItem {
            kind: c.kind,
            name: match &c.object {
                ObjectName::Chunk(id) => id.to_hex(),
                ObjectName::Profile(digest) => digest.to_string(),
                ObjectName::Temporary(path) => path.clone(),
                other => other.to_string(),
            },
            bytes: c.bytes,
        });
    }
    Ok(report)
}

/// Deletes candidate `c` if it is still there and was modified by
/// `cutoff` (and, for a profile, its manifest is still gone); whether it
/// did.
fn remove_if_old<F>(
    catalog: &dyn Catalog,
    c: &Candidate,
    cutoff: SystemTime,
    store_err: &impl Fn(&str) -> F,
) -> Result<bool, GcError>
where
    F: FnOnce(StoreError) -> GcError,
{
    if let ObjectName::Profile(digest) = &c.object {
        match catalog.get_manifest(digest) {
            Err(StoreError::ManifestNotFound { .. }) => {}
            // Stored again since: its profile stays.
            Ok(_) => return Ok(false),
            Err(e) => return Err(store_err(&format!("look for manifest {digest}"))(e)),
        }
    }
    catalog
        .remove_object(&c.object, cutoff)
        .map_err(store_err(&format!("remove {}", c.object)))
}

/// `a - b` in milliseconds, signed.
fn signed_ms(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

#[cfg(test)]
mod tests;
