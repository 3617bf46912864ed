//! Key rotation (`imagefs rewrap`): re-wraps the data keys of sealed
//! manifests and start profiles under a new master key, without touching
//! a chunk.
//!
//! A manifest's digest covers its ciphertext, not its wrapped key (see
//! [`manifest::seal`](fn@manifest::seal)), so a re-wrapped manifest keeps its digest: it is
//! replaced in place, atomically, and every tag and start profile that
//! names it stays valid. Each manifest is read under either key at every
//! moment, so a rewrap stopped half way leaves every image readable (as
//! long as the old key is kept), and running it again finishes the rest:
//! what is already under the target key is left alone, so a second run
//! does nothing.

use cachetiers::{Catalog, StoreError};
use manifest::{
    DomainSecrets, KeyProvider, ManifestDigest, rewrap_sealed, seal_profile, sealed_key_id,
    sealed_profile_key_id, unseal_profile,
};
use serde::{Deserialize, Serialize};

/// Which manifests to re-wrap, and when to stop.
#[derive(Debug, Clone, Default)]
pub struct RewrapOptions {
    /// Only these manifests; `None` for every manifest of the catalog.
    pub images: Option<Vec<ManifestDigest>>,
    /// Stop after re-wrapping this many images (a batch; a later run
    /// continues). `None`: no limit.
    pub limit: Option<u64>,
    /// Domain secrets to move under the target key as well: from the
    /// first directory (its secrets unwrapped with `from`) to the second
    /// (the same directory: re-wrapped in place), so converting goes on
    /// deduplicating against the images already there.
    pub domain_secrets: Option<(DomainSecrets, DomainSecrets)>,
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewrapOutcome {
    /// Re-wrapped under the target key now.
    Rewrapped,
    /// Already under the target key (manifest and profile).
    AlreadyDone,
    /// Not re-wrapped: see `error`.
    Failed,
    /// Not looked at: the run stopped at its limit first.
    NotReached,
}

/// One image of a [`RewrapReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapEntry {
    /// `sha256:…` of the sealed manifest (unchanged by re-wrapping).
    pub digest: String,
    /// The master key its manifest was under before this run, if it
    /// could be read.
    pub from_key: Option<String>,
    /// What happened.
    pub outcome: RewrapOutcome,
    /// Whether its start profile was re-wrapped by this run.
    pub profile_rewrapped: bool,
    /// Why it failed.
    pub error: Option<String>,
}

/// What `imagefs rewrap` did (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapReport {
    /// Where the catalog is.
    pub store: String,
    /// The master key manifests are now wrapped under.
    pub target_key: String,
    /// Images re-wrapped by this run (manifest, start profile or both).
    pub rewrapped: u64,
    /// Start profiles re-wrapped by this run.
    pub profiles_rewrapped: u64,
    /// Images already under the target key.
    pub already_done: u64,
    /// Images that could not be re-wrapped.
    pub failed: u64,
    /// Domain secrets re-wrapped (or copied) under the target key.
    pub domain_secrets_rewrapped: u64,
    /// Whether the run stopped at its limit with manifests left.
    pub stopped_early: bool,
    /// Every selected image, by digest.
    pub images: Vec<RewrapEntry>,
}

/// Why a rewrap could not run at all (one image's failure is in the
/// report instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewrapError {
    /// The catalog could not be listed.
    #[error("listing the manifests of {location}")]
    Store {
        /// Where the catalog is.
        location: String,
        /// What failed.
        source: StoreError,
    },
    /// The target key provider has no current key.
    #[error("the target key")]
    Target(#[source] manifest::KeyError),
    /// The domain secrets could not be moved under the target key.
    #[error("moving the domain secrets under the target key")]
    DomainSecrets(#[source] manifest::KeyError),
    /// A selected image is not in the catalog.
    #[error("no image {digest} in {location}")]
    NotFound {
        /// The digest asked for.
        digest: ManifestDigest,
        /// Where the catalog is.
        location: String,
    },
}

/// Re-wraps the selected manifests (and their start profiles) of
/// `catalog`: data keys unwrapped with `from`, wrapped again under `to`'s
/// current master key, each manifest replaced in place. Chunks are not
/// read or written.
pub fn rewrap_images(
    catalog: &dyn Catalog,
    from: &dyn KeyProvider,
    to: &dyn KeyProvider,
    opts: &RewrapOptions,
) -> Result<RewrapReport, RewrapError> {
    let target = to.current_key_id().map_err(RewrapError::Target)?;
    let store_err = |source| RewrapError::Store {
        location: catalog.location(),
        source,
    };
    let stored: Vec<ManifestDigest> = catalog
        .list_manifests()
        .map_err(store_err)?
        .into_iter()
        .map(|m| m.digest)
        .collect();
    let selected = match &opts.images {
        None => stored,
        Some(wanted) => {
            if let Some(missing) = wanted.iter().find(|d| !stored.contains(d)) {
                return Err(RewrapError::NotFound {
                    digest: *missing,
                    location: catalog.location(),
                });
            }
            let mut wanted = wanted.clone();
            wanted.sort();
            wanted.dedup();
            wanted
        }
    };
    // Secrets first: they are few, and a convert after this run then
    // needs only the target key.
    let secrets_moved = match &opts.domain_secrets {
        Some((source, target)) => source
            .move_to(target, from, to)
            .map_err(RewrapError::DomainSecrets)?,
        None => 0,
    };
    let mut report = RewrapReport {
        store: catalog.location(),
        target_key: target.clone(),
        rewrapped: 0,
        profiles_rewrapped: 0,
        already_done: 0,
        failed: 0,
        domain_secrets_rewrapped: secrets_moved,
        stopped_early: false,
        images: Vec::with_capacity(selected.len()),
    };
    for digest in selected {
        let mut entry = RewrapEntry {
            digest: digest.to_string(),
            from_key: None,
            outcome: RewrapOutcome::NotReached,
            profile_rewrapped: false,
            error: None,
        };
        if opts.limit.is_some_and(|limit| report.rewrapped >= limit) {
            report.stopped_early = true;
            report.images.push(entry);
            continue;
        }
        match rewrap_one(catalog, &digest, from, to, &target, &mut entry) {
            Ok(()) => match entry.outcome {
                RewrapOutcome::Rewrapped => report.rewrapped += 1,
                _ => report.already_done += 1,
            },
            Err(why) => {
                entry.outcome = RewrapOutcome::Failed;
                entry.error = Some(why);
                report.failed += 1;
            }
        }
        report.profiles_rewrapped += u64::from(entry.profile_rewrapped);
        report.images.push(entry);
    }
    Ok(report)
}

/// Re-wraps manifest `digest`, then its profile: each only if it is not
/// under `target` yet, so a run stopped between the two is finished by
/// the next.
fn rewrap_one(
    catalog: &dyn Catalog,
    digest: &ManifestDigest,
    from: &dyn KeyProvider,
    to: &dyn KeyProvider,
    target: &str,
    entry: &mut RewrapEntry,
) -> Result<(), String> {
    let chain = |e: &dyn std::error::Error| crate::error_chain(e);
    let sealed = catalog.get_manifest(digest).map_err(|e| chain(&e))?;
    let key_id = sealed_key_id(&sealed).map_err(|e| chain(&e))?;
    entry.from_key = Some(key_id.clone());
    entry.outcome = RewrapOutcome::AlreadyDone;
    if key_id != target {
        let rewrapped = rewrap_sealed(&sealed, from, to).map_err(|e| chain(&e))?;
        catalog
            .replace_manifest(digest, &rewrapped)
            .map_err(|e| chain(&e))?;
        entry.outcome = RewrapOutcome::Rewrapped;
    }
    let Some(profile) = catalog.get_profile(digest).map_err(|e| chain(&e))? else {
        return Ok(());
    };
    if sealed_profile_key_id(&profile).map_err(|e| chain(&e))? != target {
        let opened = unseal_profile(&profile, from, digest).map_err(|e| chain(&e))?;
        let resealed = seal_profile(&opened, to).map_err(|e| chain(&e))?;
        catalog
            .put_profile(digest, &resealed)
            .map_err(|e| chain(&e))?;
        entry.profile_rewrapped = true;
        entry.outcome = RewrapOutcome::Rewrapped;
    }
    Ok(())
}
