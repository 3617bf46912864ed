//! The tier configuration file (TOML), shared by `mount`, `serve` and
//! `cache-node`. Every section is optional except the origin; flags given
//! on the command line override the file (the CLI merges them before
//! calling [`super::open_tiers`]).
//!
//! ```toml
//! keys = "/var/lib/imagefs/keys"      # master keys and domain secrets
//!
//! [dedicated]                         # the instance's own plaintext copy
//! dir = "/var/lib/imagefs/instance-1"
//!
//! [shared]                            # host-wide encrypted chunks (RocksDB)
//! path = "/var/cache/imagefs/shared"
//! capacity = "20G"
//!
//! [az]                                # AZ cache nodes (HTTP)
//! nodes = ["http://10.0.0.1:7070", "http://10.0.0.2:7070"]
//! timeout_ms = 2000
//! hedge_after_ms = 30                 # replicated mode only
//! mode = "replicated"                 # or "erasure" (4+1 stripes, >= 5 nodes)
//! fleet_token_file = "/etc/imagefs/fleet-token"   # erasure: stripe writes
//!
//! [origin]                            # the source of truth
//! url = "s3://bucket/prefix"          # or a directory, or file:///dir
//! max_concurrent_requests = 16        # requests in flight at once (remote)
//!
//! [read]
//! readahead_chunks = 4
//! memory_chunks = 8
//! parallel_fetches = 8
//!
//! [agent]                             # used by `imagefs agent`
//! api = "/run/imagefs/agent.sock"     # the control API (mode 0600)
//! run_dir = "/run/imagefs/vms"        # the VMs' vhost-user sockets
//! state = "/var/lib/imagefs/agent-state.json"
//! connect_timeout_secs = 60           # reap a VM whose VMM never connects
//! max_fetches = 32                    # fetches in flight, host-wide
//! vm_max_fetches = 8                  # ... and per VM
//! memory_cache = "256M"               # decrypted chunks the VMs share
//!
//! [node]                              # used by `imagefs cache-node`
//! listen = "0.0.0.0:7070"
//! data = "/var/cache/imagefs/node"
//! capacity = "100G"
//! stripe_capacity = "8G"              # erasure-coded stripes, in memory
//! fleet_token_file = "/etc/imagefs/fleet-token"   # what stripe writes carry
//! ```
//!
//! S3 endpoint, region and credentials come from the usual environment
//! variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`), never from this file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The key directory.
    pub keys: Option<PathBuf>,
    /// The dedicated local tier.
    pub dedicated: Option<DedicatedConfig>,
    /// The shared local tier.
    pub shared: Option<SharedConfig>,
    /// The AZ cache nodes.
    pub az: Option<cachenode::client::AzConfig>,
    /// The origin.
    pub origin: Option<OriginConfig>,
    /// How reads behave.
    #[serde(default)]
    pub read: ReadConfig,
    /// The cache node's own settings.
    pub node: Option<NodeSection>,
    /// The host agent's own settings.
    #[serde(default)]
    pub agent: AgentSection,
}

/// `[dedicated]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedicatedConfig {
    /// Directory of the instance's plaintext copy and presence bitmap.
    pub dir: PathBuf,
}

/// `[shared]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// The RocksDB directory.
    pub path: PathBuf,
    /// Most object bytes it holds.
    pub capacity: ByteSize,
}

/// `[origin]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// A directory, `file:///dir` or `s3://bucket/prefix`.
    pub url: String,
    /// Most requests in flight to a remote origin at once, from the whole
    /// process (default
    /// [`cachetiers::origin::DEFAULT_MAX_CONCURRENT_REQUESTS`]).
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
}

impl OriginConfig {
    /// An origin at `url` with the default request limits.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_concurrent_requests: None,
        }
    }

    /// The request limits this section asks for.
    pub fn limits(&self) -> cachetiers::origin::RequestLimits {
        let mut limits = cachetiers::origin::RequestLimits::default();
        if let Some(n) = self.max_concurrent_requests {
            limits.max_concurrent_requests = n;
        }
        limits
    }
}

/// `[read]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReadConfig {
    /// Chunks to fetch ahead of a read (0: off).
    pub readahead_chunks: usize,
    /// Threads doing read-ahead.
    pub readahead_threads: usize,
    /// Plaintext chunks kept in memory.
    pub memory_chunks: usize,
    /// Chunks one read fetches at once when it covers several missing
    /// ones (1: one after another).
    pub parallel_fetches: usize,
}

/// The defaults of a lazily read image (`LazyOptions::default` is made
/// from these). Read-ahead of 4 chunks: `cargo bench -p tests --bench
/// readahead` (2 ms per get, 2 threads) showed a sequential reader at
/// 0.50x the time of no read-ahead with 2 chunks, 0.44x with 4 and 0.42x
/// with 8, while a sparse random reader was not slowed (0.80x, 0.78x,
/// 0.74x) but fetched 75, 99 and 109 chunks it never read on top of its
/// 58: 4 takes most of the gain for a third more waste than 2. Tests that
/// count fetches exactly set it to 0.
impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            readahead_chunks: 4,
            readahead_threads: 2,
            memory_chunks: 8,
            parallel_fetches: 8,
        }
    }
}

/// `[agent]`: the host agent's own settings (`imagefs agent`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// The control API's Unix socket (mode 0600).
    pub api: PathBuf,
    /// Where the VMs' vhost-user sockets are made (`ID.sock`).
    pub run_dir: PathBuf,
    /// The VM table, rewritten atomically on every change.
    pub state: PathBuf,
    /// A VM whose frontend has not connected this many seconds after it
    /// was started (or the agent restarted) is stopped and removed.
    pub connect_timeout_secs: u64,
    /// Chunk fetches in flight at once, host-wide (below the VMs' own
    /// dedicated tiers).
    pub max_fetches: usize,
    /// Of those, the most one VM holds.
    pub vm_max_fetches: usize,
    /// Threads doing each VM's blocking reads and writes.
    pub io_threads: usize,
    /// Most bytes of decrypted chunks kept in the agent's memory for
    /// every VM to read (`imagefs::lazy::SharedPlain`; 0 turns it off):
    /// VMs of one image then decrypt each chunk once, not once each.
    pub memory_cache: ByteSize,
}

/// Paths under `/run/imagefs` and `/var/lib/imagefs`; 32 fetches in
/// flight host-wide (twice the origin's default request limit, so a
/// miss in the shared tier never waits on a slot held by an origin
/// fetch alone), 8 per VM (one read's parallel fetches); 256 MiB of
/// shared plaintext (the working sets of a few images' starts: the
/// python image's is about 60 MB).
impl Default for AgentSection {
    fn default() -> Self {
        Self {
            api: PathBuf::from("/run/imagefs/agent.sock"),
            run_dir: PathBuf::from("/run/imagefs/vms"),
            state: PathBuf::from("/var/lib/imagefs/agent-state.json"),
            connect_timeout_secs: 60,
            max_fetches: 32,
            vm_max_fetches: 8,
            io_threads: 8,
            memory_cache: ByteSize(256 << 20),
        }
    }
}

/// `[node]`: the cache node's own settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Its RocksDB directory.
    pub data: Option<PathBuf>,
    /// Most object bytes it holds.
    pub capacity: Option<ByteSize>,
    /// `[node.limits]`: its load limits (defaults for what is left out).
    pub limits: Option<cachenode::server::NodeLimits>,
    /// Bytes of erasure-coded stripes it keeps in memory.
    pub stripe_capacity: Option<ByteSize>,
    /// The file holding the fleet token stripe writes must carry.
    pub fleet_token_file: Option<PathBuf>,
}

/// A byte count written as a number or as text with a K, M, G or T suffix
/// (powers of 1024): `4096`, `"512K"`, `"20G"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_size(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// Parse a byte size: a number with an optional K, M, G or T suffix
/// (powers of 1024), optionally followed by `i`/`iB`/`B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .or_else(|| t.strip_suffix('i'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 4096, 512K, 4M, 1G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading tier configuration {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("tier configuration {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause (with line and column).
        #[source]
        source: Box<toml::de::Error>,
    },
}

impl TierConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section() {
        let c = TierConfig::parse(
            r#"
            keys = "/k"
            [dedicated]
            dir = "/d"
            [shared]
            path = "/s"
            capacity = "2G"
            [az]
            nodes = ["http://a:1", "http://b:2"]
            hedge_after_ms = 20
            mode = "erasure"
            fleet_token_file = "/t"
            [origin]
            url = "s3://bucket/prefix"
            [read]
            readahead_chunks = 4
            [node]
            listen = "127.0.0.1:7070"
            capacity = 1048576
            stripe_capacity = "1G"
            fleet_token_file = "/t"
            "#,
        )
        .unwrap();
        assert_eq!(c.keys.as_deref(), Some(Path::new("/k")));
        assert_eq!(c.shared.unwrap().capacity, ByteSize(2 << 30));
        let az = c.az.unwrap();
        assert_eq!(az.nodes.len(), 2);
        assert_eq!(az.hedge_after_ms, 20);
        assert_eq!(az.mode, cachenode::client::AzMode::Erasure);
        assert_eq!(az.fleet_token_file.as_deref(), Some(Path::new("/t")));
        assert_eq!(
            az.timeout_ms,
            cachenode::client::AzConfig::default().timeout_ms
        );
        assert_eq!(c.origin.unwrap().url, "s3://bucket/prefix");
        assert_eq!(c.read.readahead_chunks, 4);
        assert_eq!(c.read.memory_chunks, ReadConfig::default().memory_chunks);
        let node = c.node.unwrap();
        assert_eq!(node.capacity, Some(ByteSize(1 << 20)));
        assert_eq!(node.stripe_capacity, Some(ByteSize(1 << 30)));
    }

    #[test]
    fn unknown_keys_and_bad_sizes_are_named() {
        let err = TierConfig::parse("[shared]\npath = \"/s\"\ncapacity = \"lots\"\n").unwrap_err();
        assert!(err.to_string().contains("not a size"), "{err}");
        let c = TierConfig::parse("[origin]\nurl = \"/o\"\nmax_concurrent_requests = 4\n").unwrap();
        let o = c.origin.unwrap();
        assert_eq!(o.limits().max_concurrent_requests, 4);
        assert_eq!(
            OriginConfig::at("/o").limits().max_concurrent_requests,
            cachetiers::origin::DEFAULT_MAX_CONCURRENT_REQUESTS
        );
        let err = TierConfig::parse("[origin]\nurl = \"/o\"\nbucket = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("bucket"), "{err}");
    }

    #[test]
    fn the_agent_example_parses_and_unset_agent_keys_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/agent/agent.toml");
        let c = TierConfig::load(&path).unwrap();
        assert_eq!(c.agent.run_dir, Path::new("/run/imagefs/vms"));
        assert_eq!(c.agent.vm_max_fetches, 8);
        assert!(c.shared.is_some() && c.origin.is_some());
        let c = TierConfig::parse("[agent]\nconnect_timeout_secs = 5\n").unwrap();
        assert_eq!(c.agent.connect_timeout_secs, 5);
        assert_eq!(c.agent.api, AgentSection::default().api);
        let c = TierConfig::parse("[agent]\nmemory_cache = \"64M\"\n").unwrap();
        assert_eq!(c.agent.memory_cache, ByteSize(64 << 20));
        let err = TierConfig::parse("[agent]\nsocket = \"/x\"\n").unwrap_err();
        assert!(err.to_string().contains("socket"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
