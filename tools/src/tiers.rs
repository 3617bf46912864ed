//! Tier arguments shared by `mount`, `fetch` and `serve`: a configuration
//! file, with flags that override it.

use std::error::Error;
use std::path::PathBuf;

use crate::keys::Keys;

use imagefs::tiers::config::{DedicatedConfig, OriginConfig, SharedConfig};
use imagefs::tiers::{ByteSize, TierConfig, Tiers, open_tiers, parse_size};

/// Default key directory.
pub const DEFAULT_KEYS: &str = "/var/lib/imagefs/keys";

/// Where the tiers are: `--config FILE` and flags that override it.
#[derive(Debug, Clone, clap::Args)]
pub struct TierArgs {
    /// Tier configuration (TOML; see the README).
    #[arg(long, env = "IMAGEFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// The origin: a directory, file:///DIR or s3://BUCKET/PREFIX
    /// (overrides [origin] url).
    #[arg(long, env = "IMAGEFS_STORE")]
    pub store: Option<String>,
    /// The key directory (overrides `keys`).
    #[arg(long, env = "IMAGEFS_KEYS")]
    pub keys: Option<PathBuf>,
    /// The shared local tier's RocksDB directory (overrides [shared] path).
    #[arg(long)]
    pub shared: Option<PathBuf>,
    /// The shared local tier's capacity (overrides [shared] capacity).
    #[arg(long, value_parser = parse_size)]
    pub shared_capacity: Option<u64>,
    /// An AZ cache node URL; repeat for more (replaces [az] nodes).
    #[arg(long = "az-node")]
    pub az_nodes: Vec<String>,
    /// The dedicated local tier's directory (overrides [dedicated] dir).
    #[arg(long)]
    pub dedicated: Option<PathBuf>,
    /// Chunks to read ahead (overrides [read] readahead_chunks).
    #[arg(long)]
    pub readahead: Option<usize>,
    /// The tenant's dedup domain: tags are looked up among its tags, and
    /// an image of another domain is refused.
    #[arg(long, env = "IMAGEFS_DOMAIN", default_value = manifest::DEFAULT_DOMAIN)]
    pub domain: String,
    #[command(flatten)]
    pub key_provider: crate::keys::KeyArgs,
}

impl TierArgs {
    /// The configuration file (if any) with the flags applied.
    pub fn config(&self) -> Result<TierConfig, Box<dyn Error>> {
        let mut c = match &self.config {
            Some(path) => TierConfig::load(path)?,
            None => TierConfig::default(),
        };
        if let Some(url) = &self.store {
            // The flag names the origin; the file's request limits stay.
            match &mut c.origin {
                Some(o) => o.url = url.clone(),
                None => c.origin = Some(OriginConfig::at(url.clone())),
            }
        }
        if let Some(k) = &self.keys {
            c.keys = Some(k.clone());
        }
        match (&self.shared, self.shared_capacity, &mut c.shared) {
            (Some(path), cap, Some(s)) => {
                s.path = path.clone();
                if let Some(cap) = cap {
                    s.capacity = ByteSize(cap);
                }
            }
            (Some(path), Some(cap), None) => {
                c.shared = Some(SharedConfig {
                    path: path.clone(),
                    capacity: ByteSize(cap),
                });
            }
            (Some(_), None, None) => {
                return Err("--shared needs --shared-capacity (or a [shared] capacity)".into());
            }
            (None, Some(cap), Some(s)) => s.capacity = ByteSize(cap),
            (None, Some(_), None) => {
                return Err("--shared-capacity needs --shared (or a [shared] path)".into());
            }
            (None, None, _) => {}
        }
        if !self.az_nodes.is_empty() {
            c.az.get_or_insert_with(Default::default).nodes = self.az_nodes.clone();
        }
        if let Some(dir) = &self.dedicated {
            c.dedicated = Some(DedicatedConfig { dir: dir.clone() });
        }
        if let Some(n) = self.readahead {
            c.read.readahead_chunks = n;
        }
        Ok(c)
    }

    /// Opens the tiers and the key provider.
    pub fn open(&self) -> Result<(TierConfig, Tiers, Keys), Box<dyn Error>> {
        let config = self.config()?;
        let (tiers, keys) = open_config(&config, &self.key_provider)?;
        Ok((config, tiers, keys))
    }
}

/// Opens the tiers and the key provider: `keys`' choice, with the key
/// directory `config` names (the default key directory when it names
/// none). A serving host opens an existing provider and needs no domain
/// secrets.
pub fn open_config(
    config: &TierConfig,
    keys: &crate::keys::KeyArgs,
) -> Result<(Tiers, Keys), Box<dyn Error>> {
    let tiers = open_tiers(config, false)?;
    let dir = config
        .keys
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYS));
    let keys = keys.spec(&dir)?.open(false)?;
    Ok((tiers, keys))
}
