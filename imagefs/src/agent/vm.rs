//! One VM of the agent: its image, its device, the thread serving it.
//!
//! The same parts as `imagefs serve`: a [`LazyImage`] over the host's
//! store (seen through the VM's place at the [`FairGate`]), the start
//! profile's prefetch, and a vhost-user-blk [`Server`] that keeps
//! listening for its frontend to reconnect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use manifest::agent::{VmInfo, VmPhase, VmRecord};
use manifest::{KeyProvider, ManifestDigest};

use super::AgentError;
use super::fair::{FairGate, FairStore};
use crate::lazy::prefetch::{self, PrefetchMode, PrefetchOptions};
use crate::lazy::{DedicatedOptions, LazyImage, LazyOptions, SharedPlain};
use crate::tiers::Tiers;
use crate::transport::vhost::{ServeOptions, Server, Service, StopHandle};

/// What every VM is built from (the agent's shared parts and settings).
pub(super) struct Parts<'a> {
    pub tiers: &'a Tiers,
    pub keys: &'a dyn KeyProvider,
    pub gate: &'a Arc<FairGate>,
    pub shared_plain: Option<&'a Arc<SharedPlain>>,
    pub read: LazyOptions,
    pub prefetch: PrefetchOptions,
    pub io_threads: usize,
}

/// What the serving thread says when it ends.
#[derive(Debug, Default)]
struct Ended {
    error: Option<String>,
}

/// Where the serving thread leaves its [`Ended`].
type EndSlot = Arc<Mutex<Option<Ended>>>;

/// A VM being served.
pub(super) struct Vm {
    pub record: VmRecord,
    pub socket: PathBuf,
    lazy: Arc<LazyImage>,
    service: Arc<Service>,
    stop: StopHandle,
    thread: Mutex<Option<JoinHandle<()>>>,
    ended: EndSlot,
    /// When the VM was started or restored: the connect timeout runs from
    /// here.
    pub since: Instant,
}

impl Vm {
    /// Opens the VM's image (`record.digest`, already pinned) and starts
    /// serving it on `socket`.
    pub fn start(parts: &Parts<'_>, record: VmRecord, socket: PathBuf) -> Result<Self, AgentError> {
        let spec = &record.spec;
        let opened = crate::open::open_image(
            parts.tiers.origin.as_ref(),
            &record.digest,
            parts.keys,
            spec.domain(),
        )
        .map_err(|e| AgentError::from_open(&spec.image, e))?;
        if let Some(dir) = &spec.dedicated {
            std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
                what: format!("creating the dedicated directory {}", dir.display()),
                source,
            })?;
        }
        let store = Arc::new(FairStore::new(parts.tiers.store.clone(), parts.gate));
        // The dedicated disk is pinned to the digest the VM was pinned to
        // (no `--reset` through the API: a restart re-creates VMs from
        // their records, and must never discard their writes).
        let read = LazyOptions {
            dedicated: DedicatedOptions {
                image: Some(opened.digest),
                reset: false,
            },
            label: opened.digest.to_string(),
            ..parts.read.clone()
        };
        let lazy = Arc::new(
            LazyImage::open_with(
                opened.manifest,
                store,
                spec.dedicated.as_deref(),
                read,
                parts.shared_plain.cloned(),
            )
            .map_err(|source| AgentError::Image {
                id: spec.id.clone(),
                source: Box::new(source),
            })?,
        );
        let order = crate::profile::load_profile(
            parts.tiers.origin.as_ref(),
            &opened.digest,
            parts.keys,
            lazy.manifest(),
        );
        prefetch::start(&lazy, PrefetchMode::Auto, order, &parts.prefetch).map_err(|source| {
            AgentError::Image {
                id: spec.id.clone(),
                source: Box::new(source),
            }
        })?;
        let opts = ServeOptions {
            queues: spec.queues.unwrap_or(1),
            writable: spec.writable,
            keep_alive: true,
            io_threads: parts.io_threads,
            log_prefix: format!("imagefs agent: VM {}", spec.id),
            ..ServeOptions::new(socket.clone(), opened.digest.to_string())
        };
        let server = Server::new(lazy.clone(), &opts).map_err(|source| AgentError::Serve {
            id: spec.id.clone(),
            source: Box::new(source),
        })?;
        let (service, stop) = (server.stats(), server.stop_handle());
        let (thread, ended) = run_server(server, &spec.id)?;
        Ok(Self {
            record,
            socket,
            lazy,
            service,
            stop,
            thread: Mutex::new(Some(thread)),
            ended,
            since: Instant::now(),
        })
    }

    /// The VM's id.
    pub fn id(&self) -> &str {
        &self.record.spec.id
    }

    /// Whether a frontend has connected since the VM was started here.
    pub fn ever_connected(&self) -> bool {
        self.service.stats().connections() > 0
    }

    /// The device's and the reader's counters.
    pub fn service(&self) -> &Service {
        &self.service
    }

    fn phase(&self) -> (VmPhase, Option<String>) {
        if let Some(ended) = &*self.ended.lock().unwrap_or_else(PoisonError::into_inner) {
            return (VmPhase::Failed, ended.error.clone());
        }
        let phase = if self.service.stats().connected() {
            VmPhase::Connected
        } else if self.ever_connected() {
            VmPhase::Disconnected
        } else {
            VmPhase::Waiting
        };
        (phase, None)
    }

    /// The VM as the API reports it.
    pub fn info(&self) -> VmInfo {
        let spec = &self.record.spec;
        let (phase, error) = self.phase();
        VmInfo {
            id: spec.id.clone(),
            image: spec.image.clone(),
            digest: self.record.digest.clone(),
            writable: spec.writable,
            dedicated: spec.dedicated.clone(),
            socket: self.socket.clone(),
            queues: spec.queues.unwrap_or(1),
            phase,
            error,
            created_unix_ms: self.record.created_unix_ms,
            served: self.service.stats().report(),
            reader: self.lazy.metrics(),
            prefetch: self.lazy.prefetch_stats(),
        }
    }

    /// Stops serving: disconnects the frontend, joins the thread, and
    /// makes the dedicated tier durable. The socket file is left to the
    /// caller.
    pub fn stop(&self) {
        self.stop.stop();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.lazy.end_prefetch();
        if let Err(e) = self.lazy.sync() {
            tracing::error!(
                "VM {}: syncing its dedicated tier: {}",
                self.id(),
                crate::error_chain(&e)
            );
        }
    }
}

/// The thread serving VM `id` and where it says how it ended; returns
/// once the socket listens (a VMM given the path can connect at once), or
/// with the reason it could not.
fn run_server(server: Server, id: &str) -> Result<(JoinHandle<()>, EndSlot), AgentError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ended = Arc::new(Mutex::new(None));
    let thread = {
        let (ended, id) = (Arc::clone(&ended), id.to_string());
        std::thread::Builder::new()
            .name(format!("imagefs-vm-{id}"))
            .spawn(move || {
                let mut tx = Some(tx);
                let result = server.run(|_| {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                });
                let error = result.err().map(|e| crate::error_chain(&e));
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(error.clone().unwrap_or_default()));
                }
                if let Some(e) = &error {
                    tracing::warn!("VM {id}: {e}");
                }
                *ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(Ended { error });
            })
            .map_err(|source| AgentError::Io {
                what: "starting the VM's thread".into(),
                source,
            })?
    };
    let message = match rx.recv() {
        Ok(Ok(())) => return Ok((thread, ended)),
        Ok(Err(message)) => message,
        Err(_) => "the serving thread ended before listening".into(),
    };
    let _ = thread.join();
    Err(AgentError::Listen {
        id: id.to_string(),
        message,
    })
}

/// The socket of VM `id` under `run_dir`.
pub(super) fn socket_of(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join(format!("{id}.sock"))
}

/// The digest `image` names now among `domain`'s tags, in the origin.
pub(super) fn pin(tiers: &Tiers, domain: &str, image: &str) -> Result<ManifestDigest, AgentError> {
    tiers.origin.resolve(domain, image).map_err(|source| {
        AgentError::from_open(
            image,
            crate::open::OpenError::Store {
                name: image.to_string(),
                source,
            },
        )
    })
}
