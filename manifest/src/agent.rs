//! The host agent's formats: its control API's JSON bodies and its state
//! file.
//!
//! - [`VmSpec`]: `POST /v1/vms`, what to start;
//! - [`VmInfo`]: what `GET /v1/vms[/{id}]` and `POST` answer;
//! - [`ApiError`]: the body of every 4xx and 5xx answer;
//! - [`AgentState`]: the VM table the agent keeps on disk, written
//!   atomically, so that a restarted agent re-creates every VM.
//!
//! JSON both ways; [`AgentState`] is versioned and refuses another format
//! or version by name.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::report::{LazyMetrics, PrefetchStats, ServeReport, TiersReport};

/// Longest VM id.
pub const MAX_VM_ID_LEN: usize = 64;

/// Checks a VM id: 1 to [`MAX_VM_ID_LEN`] ASCII letters, digits, `-`, `_`
/// or `.`, not starting with `.` (it names a socket file).
pub fn validate_vm_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_VM_ID_LEN {
        return Err(format!(
            "a VM id has 1 to {MAX_VM_ID_LEN} characters, not {}",
            id.len()
        ));
    }
    if id.starts_with('.') {
        return Err(format!("VM id `{id}` starts with a dot"));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "VM id `{}` has {c:?}; use letters, digits, `-`, `_` and `.`",
            id.escape_debug()
        )),
        None => Ok(()),
    }
}

/// `POST /v1/vms`: a VM to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Unique on the host (see [`validate_vm_id`]).
    pub id: String,
    /// A tag or `sha256:` manifest digest; a tag is pinned to the digest
    /// it names when the VM starts.
    pub image: String,
    /// Accept guest writes (copy-on-write into `dedicated`).
    #[serde(default)]
    pub writable: bool,
    /// The VM's own cache and write directory (the dedicated tier);
    /// created if missing. Required when `writable`.
    #[serde(default)]
    pub dedicated: Option<PathBuf>,
    /// Request queues (virtio MQ; 1 when absent).
    #[serde(default)]
    pub queues: Option<u16>,
    /// The tenant's dedup domain ([`DEFAULT_DOMAIN`](crate::DEFAULT_DOMAIN)
    /// when absent): a tag is looked up among this domain's tags, and a
    /// manifest of another domain is refused.
    #[serde(default)]
    pub domain: Option<String>,
}

impl VmSpec {
    /// The domain the VM's image must belong to.
    pub fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or(crate::DEFAULT_DOMAIN)
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Listening; no frontend has connected yet.
    Waiting,
    /// A frontend is connected.
    Connected,
    /// The frontend went away; listening for it to reconnect.
    Disconnected,
    /// The device stopped on an error (see [`VmInfo::error`]).
    Failed,
}

/// A VM as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's id.
    pub id: String,
    /// The image as it was asked for.
    pub image: String,
    /// The manifest digest it was pinned to.
    pub digest: String,
    /// Whether guest writes are accepted.
    pub writable: bool,
    /// The dedicated tier's directory, if any.
    pub dedicated: Option<PathBuf>,
    /// The vhost-user socket the VMM connects to.
    pub socket: PathBuf,
    /// Request queues.
    pub queues: u16,
    /// Where the VM is.
    pub phase: VmPhase,
    /// Why it failed, when [`VmPhase::Failed`].
    pub error: Option<String>,
    /// When it was started (Unix time, milliseconds).
    pub created_unix_ms: u64,
    /// The device's counters.
    pub served: ServeReport,
    /// The image reader's counters.
    pub reader: LazyMetrics,
    /// The start-profile prefetch, when one ran.
    pub prefetch: Option<PrefetchStats>,
}

/// `GET /v1/tiers`: the host's shared tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostTiers {
    /// Each tier's counters (shared local, AZ, origin), fastest first.
    pub tiers: TiersReport,
    /// What the shared local tier holds, when there is one.
    pub shared: Option<SharedUsage>,
    /// Fetch slots of the fair gate held now.
    pub fetch_slots_in_use: u64,
}

/// What the shared local tier holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedUsage {
    /// Objects stored (distinct chunks).
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The capacity in bytes.
    pub capacity: u64,
    /// Objects evicted since the agent started.
    pub evictions: u64,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
}

/// One VM of the state file: what it takes to re-create it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    /// What was asked for; `image` as given.
    pub spec: VmSpec,
    /// The digest it was pinned to (a restart serves this, even if the
    /// tag has moved since).
    pub digest: String,
    /// When it was started (Unix time, milliseconds).
    pub created_unix_ms: u64,
}

/// The state file's `format` value.
pub const STATE_FORMAT: &str = "imagefs-agent-state";
/// The state file version this build writes and reads.
pub const STATE_VERSION: u32 = 1;

/// The agent's VM table on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    /// Always [`STATE_VERSION`].
    pub version: u32,
    /// Every VM, in start order.
    pub vms: Vec<VmRecord>,
}

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Not JSON of the expected shape.
    #[error("not an agent state file: {0}")]
    Corrupt(#[source] serde_json::Error),
    /// Another format or version.
    #[error(
        "agent state format `{format}` version {version}; this build reads `{STATE_FORMAT}` version {STATE_VERSION}"
    )]
    Version {
        /// The file's format name.
        format: String,
        /// The file's version.
        version: u32,
    },
    /// Two VMs with one id.
    #[error("VM `{0}` appears twice")]
    Duplicate(String),
}

impl AgentState {
    /// A table of `vms`.
    pub fn new(vms: Vec<VmRecord>) -> Self {
        Self {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            vms,
        }
    }

    /// The file's bytes (pretty JSON, a final newline).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads a file written by [`AgentState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let state: Self = serde_json::from_slice(bytes).map_err(StateError::Corrupt)?;
        if state.format != STATE_FORMAT || state.version != STATE_VERSION {
            return Err(StateError::Version {
                format: state.format,
                version: state.version,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for vm in &state.vms {
            if !seen.insert(vm.spec.id.as_str()) {
                return Err(StateError::Duplicate(vm.spec.id.clone()));
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> VmRecord {
        VmRecord {
            spec: VmSpec {
                id: id.into(),
                image: "python:3".into(),
                writable: true,
                dedicated: Some("/var/lib/imagefs/vm-a".into()),
                queues: Some(2),
                domain: None,
            },
            digest: format!("sha256:{}", "ab".repeat(32)),
            created_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn state_round_trips() {
        let state = AgentState::new(vec![record("a"), record("b")]);
        assert_eq!(AgentState::decode(&state.encode()).unwrap(), state);
    }

    #[test]
    fn state_refuses_garbage_versions_and_duplicates() {
        assert!(matches!(
            AgentState::decode(b"{\"format\": 3"),
            Err(StateError::Corrupt(_))
        ));
        let mut state = AgentState::new(vec![record("a")]);
        state.version = 2;
        let err = AgentState::decode(&state.encode()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        let state = AgentState::new(vec![record("a"), record("a")]);
        assert!(matches!(
            AgentState::decode(&state.encode()),
            Err(StateError::Duplicate(id)) if id == "a"
        ));
    }

    #[test]
    fn spec_defaults_and_unknown_fields() {
        let spec: VmSpec = serde_json::from_str(r#"{"id":"x","image":"sha256:00"}"#).unwrap();
        assert!(!spec.writable && spec.dedicated.is_none() && spec.queues.is_none());
        let err = serde_json::from_str::<VmSpec>(r#"{"id":"x","image":"i","writeable":true}"#)
            .unwrap_err();
        assert!(err.to_string().contains("writeable"), "{err}");
    }

    #[test]
    fn vm_ids() {
        for ok in ["a", "vm-1", "A_b.c", &"x".repeat(MAX_VM_ID_LEN)] {
            validate_vm_id(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(MAX_VM_ID_LEN + 1),
        ] {
            assert!(validate_vm_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn info_round_trips() {
        let info = VmInfo {
            id: "a".into(),
            image: "t".into(),
            digest: "sha256:00".into(),
            writable: false,
            dedicated: None,
            socket: "/run/imagefs/vms/a.sock".into(),
            queues: 1,
            phase: VmPhase::Waiting,
            error: None,
            created_unix_ms: 5,
            served: ServeReport::default(),
            reader: LazyMetrics::default(),
            prefetch: None,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("\"phase\":\"waiting\""), "{json}");
        assert_eq!(serde_json::from_str::<VmInfo>(&json).unwrap(), info);
    }
}
