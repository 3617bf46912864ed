//! The host agent: one process serving every VM on a host.
//!
//! - [`Agent`]: the VM table and what the control API asks of it (start,
//!   stop, list, show, metrics), the connect-timeout reaper, and the
//!   restore after a restart;
//! - `vm`: one VM (its [`LazyImage`](crate::LazyImage), its
//!   vhost-user-blk server and the thread running it);
//! - [`fair`]: the host-wide [`FairGate`] every VM's fetches pass;
//! - [`state`]: the VM table on disk (format: [`manifest::agent`]);
//! - [`metrics`]: the Prometheus text.
//!
//! Shared by every VM: the tiers (shared local, AZ, origin) in one
//! [`TieredStore`](cachetiers::TieredStore), so two VMs missing the same
//! chunk cause one fetch (its single-flight is host-wide), and one
//! [`SharedPlain`] (`[agent] memory_cache`), so they also hash and decrypt
//! it once. Per VM: the
//! dedicated tier, copy-on-write writes, the start-profile prefetch and
//! the counters. The HTTP transport is
//! [`crate::transport::api`]; the process (signals, the API's thread) is
//! the binary's.

pub mod fair;
pub mod metrics;
pub mod state;
mod vm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cachetiers::StoreError;
use manifest::KeyProvider;
use manifest::agent::{AgentState, HostTiers, VmInfo, VmRecord, VmSpec, validate_vm_id};

use crate::lazy::prefetch::PrefetchOptions;
use crate::lazy::{LazyOptions, SharedPlain};
use crate::open::OpenError;
use crate::tiers::Tiers;
use crate::tiers::config::AgentSection;
pub use fair::{FairGate, FairStore};
pub use state::StateFile;
use vm::{Parts, Vm};

/// Errors of the agent's operations; [`AgentError::kind`] says whose
/// fault each is (the API's status code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The request is not valid.
    #[error("{0}")]
    BadRequest(String),
    /// A VM with this id is already served.
    #[error("VM `{0}` already exists")]
    Exists(String),
    /// No VM has this id.
    #[error("no VM `{0}`")]
    NoSuchVm(String),
    /// The image is not in the origin.
    #[error("image `{image}` is not in the origin")]
    UnknownImage {
        /// What was asked for.
        image: String,
        /// The origin's answer.
        #[source]
        source: StoreError,
    },
    /// The image could not be opened (origin unreachable, damaged
    /// manifest, wrong key).
    #[error("opening image `{image}`")]
    Open {
        /// What was asked for.
        image: String,
        /// Why.
        #[source]
        source: Box<OpenError>,
    },
    /// The VM's image reader could not be built.
    #[error("VM `{id}`: setting up its image")]
    Image {
        /// The VM.
        id: String,
        /// Why.
        #[source]
        source: Box<crate::lazy::LazyError>,
    },
    /// The VM's device could not be built.
    #[error("VM `{id}`: setting up its device")]
    Serve {
        /// The VM.
        id: String,
        /// Why.
        #[source]
        source: Box<crate::transport::vhost::ServeError>,
    },
    /// The VM's socket could not be listened on.
    #[error("VM `{id}`: listening on its socket: {message}")]
    Listen {
        /// The VM.
        id: String,
        /// What the server said.
        message: String,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whose fault an [`AgentError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or impossible (400).
    BadRequest,
    /// It names something that does not exist (404).
    NotFound,
    /// It clashes with what exists (409).
    Conflict,
    /// The host failed to do it (500).
    Internal,
}

impl AgentError {
    /// Whose fault this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::Exists(_) => ErrorKind::Conflict,
            Self::NoSuchVm(_) | Self::UnknownImage { .. } => ErrorKind::NotFound,
            Self::Open { .. }
            | Self::Image { .. }
            | Self::Serve { .. }
            | Self::Listen { .. }
            | Self::Io { .. } => ErrorKind::Internal,
        }
    }

    /// An image that could not be opened: unknown (a bad name, no such
    /// tag or digest) or failing.
    fn from_open(image: &str, e: OpenError) -> Self {
        match e {
            OpenError::Store { source, .. }
                if matches!(
                    source,
                    StoreError::ManifestNotFound { .. }
                        | StoreError::UnknownTag { .. }
                        | StoreError::BadDigest { .. }
                        | StoreError::InvalidTag(_)
                ) =>
            {
                Self::UnknownImage {
                    image: image.to_string(),
                    source,
                }
            }
            e => Self::Open {
                image: image.to_string(),
                source: Box::new(e),
            },
        }
    }
}

/// How an [`Agent`] runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `[agent]` section.
    pub section: AgentSection,
    /// How each VM's image is read (`[read]`).
    pub read: LazyOptions,
    /// The start-profile prefetch of each VM.
    pub prefetch: PrefetchOptions,
}

/// What [`Agent::restore`] did.
#[derive(Debug, Default)]
pub struct Restored {
    /// VMs re-created.
    pub started: Vec<String>,
    /// VMs that could not be, and why (they are dropped from the table).
    pub failed: Vec<(String, String)>,
    /// Why the state file was not used, when it was not.
    pub unusable: Option<String>,
}

/// The host agent (see the module docs).
pub struct Agent {
    tiers: Tiers,
    keys: Box<dyn KeyProvider>,
    gate: Arc<FairGate>,
    /// Every VM's chunks decrypted once host-wide (`None`: turned off).
    shared_plain: Option<Arc<SharedPlain>>,
    opts: AgentOptions,
    state: StateFile,
    /// The VM table; its lock also orders the state file's writes.
    vms: Mutex<BTreeMap<String, Arc<Vm>>>,
    /// VMs being started: their ids and dedicated directories.
    starting: Mutex<BTreeMap<String, Option<PathBuf>>>,
}

/// An id (and dedicated directory) reserved while its VM starts.
struct Claim<'a> {
    agent: &'a Agent,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.agent
            .starting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("tiers", &self.tiers)
            .field("run_dir", &self.opts.section.run_dir)
            .finish_non_exhaustive()
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Agent {
    /// An agent with no VMs over `tiers`; makes the sockets' directory
    /// (owner only). Call [`Agent::restore`] next.
    pub fn new(
        tiers: Tiers,
        keys: Box<dyn KeyProvider>,
        opts: AgentOptions,
    ) -> Result<Self, AgentError> {
        let run_dir = &opts.section.run_dir;
        private_dir(run_dir)?;
        let gate = FairGate::new(opts.section.max_fetches, opts.section.vm_max_fetches);
        let memory_cache = opts.section.memory_cache.0;
        let shared_plain = (memory_cache > 0).then(|| Arc::new(SharedPlain::new(memory_cache)));
        Ok(Self {
            shared_plain,
            state: StateFile::new(opts.section.state.clone()),
            tiers,
            keys,
            gate,
            opts,
            vms: Mutex::new(BTreeMap::new()),
            starting: Mutex::new(BTreeMap::new()),
        })
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Vm>>> {
        self.vms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            tiers: &self.tiers,
            keys: self.keys.as_ref(),
            gate: &self.gate,
            shared_plain: self.shared_plain.as_ref(),
            read: self.opts.read.clone(),
            prefetch: self.opts.prefetch.clone(),
            io_threads: self.opts.section.io_threads,
        }
    }

    /// The shared tiers (for their counters).
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Re-creates the VMs of the state file; a missing file is an empty
    /// table, and a corrupt one is set aside (`.corrupt`) and reported.
    pub fn restore(&self) -> Restored {
        let mut restored = Restored::default();
        let state = match self.state.load() {
            Ok(state) => state,
            Err(e) => {
                restored.unusable = Some(crate::error_chain(&e));
                self.state.set_aside();
                AgentState::new(Vec::new())
            }
        };
        let mut table = self.table();
        for record in state.vms {
            let id = record.spec.id.clone();
            let socket = vm::socket_of(&self.opts.section.run_dir, &id);
            match Vm::start(&self.parts(), record, socket) {
                Ok(vm) => {
                    table.insert(id.clone(), Arc::new(vm));
                    restored.started.push(id);
                }
                Err(e) => restored.failed.push((id, crate::error_chain(&e))),
            }
        }
        if let Err(e) = self.save(&table) {
            tracing::error!("{}", crate::error_chain(&e));
        }
        restored
    }

    fn save(&self, table: &BTreeMap<String, Arc<Vm>>) -> Result<(), AgentError> {
        let mut records: Vec<VmRecord> = table.values().map(|vm| vm.record.clone()).collect();
        records.sort_by_key(|r| r.created_unix_ms);
        self.state.save(&AgentState::new(records))
    }

    /// Starts serving a VM (`POST /v1/vms`): pins the image to a digest,
    /// opens it, listens on the VM's socket and records it in the state
    /// file; the socket is ready when this returns.
    pub fn start_vm(&self, spec: VmSpec) -> Result<VmInfo, AgentError> {
        validate_vm_id(&spec.id).map_err(AgentError::BadRequest)?;
        if spec.writable && spec.dedicated.is_none() {
            return Err(AgentError::BadRequest(
                "a writable VM needs a dedicated directory (`dedicated`)".into(),
            ));
        }
        if let Some(dir) = &spec.dedicated
            && !dir.is_absolute()
        {
            return Err(AgentError::BadRequest(format!(
                "the dedicated directory `{}` is not an absolute path",
                dir.display()
            )));
        }
        if spec.queues.is_some_and(|q| !(1..=64).contains(&q)) {
            return Err(AgentError::BadRequest("queues must be in 1..=64".into()));
        }
        if spec.image.trim().is_empty() {
            return Err(AgentError::BadRequest("no image given".into()));
        }
        // Claim the id (and the dedicated directory) under the table's
        // lock, then open the image without it: a slow origin must not hold
        // up the API's other calls. A second request for the id is refused.
        let claim = self.claim(&spec)?;
        let id = spec.id.clone();
        let digest = vm::pin(&self.tiers, spec.domain(), &spec.image)?;
        let record = VmRecord {
            spec,
            digest: digest.to_string(),
            created_unix_ms: now_unix_ms(),
        };
        let socket = vm::socket_of(&self.opts.section.run_dir, &id);
        let vm = Arc::new(Vm::start(&self.parts(), record, socket)?);
        let mut table = self.table();
        table.insert(id.clone(), Arc::clone(&vm));
        drop(claim);
        if let Err(e) = self.save(&table) {
            table.remove(&id);
            drop(table);
            vm.stop();
            let _ = std::fs::remove_file(&vm.socket);
            return Err(e);
        }
        Ok(vm.info())
    }

    /// Reserves `spec`'s id and dedicated directory until the returned
    /// claim is dropped; refuses them when a VM (running or starting)
    /// has them. Lock order: the table, then the claims.
    fn claim(&self, spec: &VmSpec) -> Result<Claim<'_>, AgentError> {
        let table = self.table();
        let mut starting = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        if table.contains_key(&spec.id) || starting.contains_key(&spec.id) {
            return Err(AgentError::Exists(spec.id.clone()));
        }
        if let Some(dir) = &spec.dedicated {
            let running = table
                .values()
                .map(|vm| (vm.id(), vm.record.spec.dedicated.as_deref()));
            let claimed = starting.iter().map(|(id, d)| (id.as_str(), d.as_deref()));
            if let Some((other, _)) = running
                .chain(claimed)
                .find(|(_, d)| *d == Some(dir.as_path()))
            {
                return Err(AgentError::BadRequest(format!(
                    "VM `{other}` already uses the dedicated directory {}",
                    dir.display()
                )));
            }
        }
        starting.insert(spec.id.clone(), spec.dedicated.clone());
        Ok(Claim {
            agent: self,
            id: spec.id.clone(),
        })
    }

    /// Stops a VM and forgets it (`DELETE /v1/vms/{id}`); its dedicated
    /// directory is left as it is. Returns its last report.
    pub fn stop_vm(&self, id: &str) -> Result<VmInfo, AgentError> {
        let vm = {
            let mut table = self.table();
            let vm = table
                .remove(id)
                .ok_or_else(|| AgentError::NoSuchVm(id.to_string()))?;
            self.save(&table)?;
            vm
        };
        vm.stop();
        let _ = std::fs::remove_file(&vm.socket);
        Ok(vm.info())
    }

    /// Every VM (`GET /v1/vms`), by id.
    pub fn list(&self) -> Vec<VmInfo> {
        let vms: Vec<Arc<Vm>> = self.table().values().cloned().collect();
        vms.iter().map(|vm| vm.info()).collect()
    }

    /// How many VMs are served (`GET /healthz`).
    pub fn vm_count(&self) -> usize {
        self.table().len()
    }

    /// One VM (`GET /v1/vms/{id}`).
    pub fn show(&self, id: &str) -> Result<VmInfo, AgentError> {
        let vm = self
            .table()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NoSuchVm(id.to_string()))?;
        Ok(vm.info())
    }

    /// Stops and forgets every VM whose frontend has not connected within
    /// the connect timeout of its start; returns their ids.
    pub fn reap(&self) -> Vec<String> {
        let timeout = Duration::from_secs(self.opts.section.connect_timeout_secs);
        let stale: Vec<String> = self
            .table()
            .values()
            .filter(|vm| !vm.ever_connected() && vm.since.elapsed() >= timeout)
            .map(|vm| vm.id().to_string())
            .collect();
        let mut reaped = Vec::new();
        for id in stale {
            if self.stop_vm(&id).is_ok() {
                tracing::info!(
                    "reaped VM {id}: no frontend connected within {}s",
                    timeout.as_secs()
                );
                reaped.push(id);
            }
        }
        reaped
    }

    /// The shared tiers' counters and contents (`GET /v1/tiers`).
    pub fn host_tiers(&self) -> HostTiers {
        #[cfg(feature = "rocksdb")]
        let shared = self.tiers.shared.as_ref().map(|s| {
            let u = s.usage();
            manifest::agent::SharedUsage {
                objects: u.objects,
                bytes: u.bytes,
                capacity: u.capacity,
                evictions: u.evictions,
            }
        });
        #[cfg(not(feature = "rocksdb"))]
        let shared = None;
        HostTiers {
            tiers: crate::tiers::stats::tiers_report(self.tiers.store.metrics()),
            shared,
            fetch_slots_in_use: self.gate.holding() as u64,
        }
    }

    /// The Prometheus text of every VM and tier (`GET /metrics`).
    pub fn prometheus(&self) -> String {
        let vms: Vec<Arc<Vm>> = self.table().values().cloned().collect();
        metrics::render(&vms, &self.tiers, &self.gate, self.shared_plain.as_deref())
    }

    /// Stops serving every VM but keeps them in the state file, so the
    /// next agent re-creates them (an upgrade, a SIGTERM).
    pub fn shutdown(&self) {
        let vms: Vec<Arc<Vm>> = std::mem::take(&mut *self.table()).into_values().collect();
        for vm in vms {
            vm.stop();
        }
    }
}

/// Makes `dir` (and its parents) and leaves it readable by its owner only.
pub(crate) fn private_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |source| AgentError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("making {} private", dir.display())))
}

/// The path of VM `id`'s socket for an agent whose sockets are in
/// `run_dir` (what `POST /v1/vms` answers).
pub fn vm_socket(run_dir: &Path, id: &str) -> PathBuf {
    vm::socket_of(run_dir, id)
}
