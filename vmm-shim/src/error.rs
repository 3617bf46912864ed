//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can end a VM run or a harness step.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed; `what` names the step.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// The step that failed (e.g. "create vCPU").
        what: &'static str,
        /// The errno from the ioctl.
        source: kvm_ioctls::Error,
    },
    /// Setting up or accessing guest memory failed.
    #[error("guest memory: {what}: {source}")]
    Memory {
        /// The step that failed.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A guest-physical access outside guest memory or a bad layout.
    #[error("guest memory access: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// The vhost-user backend socket could not be connected.
    #[error("vhost-user backend socket {path}: cannot connect: {source}")]
    BackendConnect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A vhost-user message to the backend failed.
    #[error("vhost-user backend {path}: {what}: {source}")]
    Vhost {
        /// The socket path.
        path: PathBuf,
        /// The message or step that failed.
        what: &'static str,
        /// The cause.
        source: vhost::Error,
    },
    /// The backend did not answer within the I/O limit.
    #[error("vhost-user backend {path}: no reply within {secs} s during {what}")]
    BackendTimeout {
        /// The socket path.
        path: PathBuf,
        /// The phase.
        what: &'static str,
        /// The limit.
        secs: u64,
    },
    /// The backend lacks something the frontend needs.
    #[error("vhost-user backend {path}: {what}")]
    BackendUnsupported {
        /// The socket path.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// The backend closed its socket while the guest was running.
    #[error(
        "vhost-user backend {path} disconnected mid-run after {completed} of {total} requests; VM stopped"
    )]
    BackendDisconnected {
        /// The socket path.
        path: PathBuf,
        /// Requests the guest had completed.
        completed: u64,
        /// Requests in the trace.
        total: u64,
    },
    /// The watchdog stopped a guest that ran too long.
    #[error(
        "guest did not finish within {secs} s ({completed} of {total} requests completed); VM stopped"
    )]
    Timeout {
        /// The limit.
        secs: u64,
        /// Requests the guest had completed.
        completed: u64,
        /// Requests in the trace.
        total: u64,
    },
    /// A driver waited too long for the device to complete requests.
    #[error("{what}: not complete within {secs} s")]
    QueueTimeout {
        /// What was waited for.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// The probe guest reported a failure in its parameter block.
    #[error("probe guest failed: {reason} (detail {detail:#x}); console: {console:?}")]
    Guest {
        /// What the status code means.
        reason: &'static str,
        /// The guest's detail word.
        detail: u64,
        /// What the guest printed.
        console: String,
    },
    /// The vCPU stopped in a way the VMM does not handle.
    #[error("vCPU: {0}")]
    VcpuExit(String),
    /// An eventfd or other host resource could not be created.
    #[error("{what}: {source}")]
    Host {
        /// The resource.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A trace file could not be read or parsed.
    #[error("trace {path}: {reason}")]
    Trace {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the line number where there is one).
        reason: String,
    },
    /// A trace or configuration does not fit the probe guest.
    #[error("invalid run configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A plot could not be drawn or written.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The PNG.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A helper program could not be started or failed.
    #[error("{program}: {reason}")]
    Process {
        /// The program.
        program: String,
        /// What went wrong.
        reason: String,
    },
    /// Loading a Linux kernel failed.
    #[error("kernel {path}: {source}")]
    KernelLoad {
        /// The kernel file.
        path: PathBuf,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
}

/// Shorthand for results with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

impl Error {
    /// [`Error::Process`] for `program`.
    pub fn process(program: &str, reason: String) -> Self {
        Self::Process {
            program: program.into(),
            reason,
        }
    }
}
