//! `imagefs serve`: the image as a vhost-user-blk device on a Unix socket
//! (a call into [`imagefs::vhost::serve`]).

use std::error::Error;
use std::io::{Write, stdout};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagefs::vhost::{ServeOptions, serve};

use crate::tiers::TierArgs;

/// Arguments of `imagefs serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// sha256:DIGEST or a tag.
    image: String,
    /// The vhost-user socket to listen on (replaced if it exists).
    #[arg(long)]
    socket: PathBuf,
    /// Request queues (virtio MQ), each served by its own worker thread.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// The largest queue a frontend may set up, in descriptors (a power of
    /// two; QEMU asks for 1024).
    #[arg(long, default_value_t = 1024)]
    queue_size: u16,
    /// Accept guest writes, copy-on-write into this instance's dedicated
    /// tier (`--dedicated DIR`; without it, a temporary directory removed
    /// at exit). Without --writable the device is read-only.
    #[arg(long)]
    writable: bool,
    /// After the frontend disconnects, wait for a reconnecting one instead
    /// of exiting.
    #[arg(long)]
    keep_alive: bool,
    /// Threads doing the blocking reads and writes.
    #[arg(long, default_value_t = 8)]
    io_threads: usize,
    /// Record every guest read (offset, length, time) to FILE as JSON
    /// lines (format: imagefs::vhost::trace).
    #[arg(long, value_name = "FILE")]
    record_trace: Option<PathBuf>,
    /// At exit, print each tier's counters and latencies to stderr.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    tiers: TierArgs,
}

/// A temporary dedicated directory for a `--writable` instance without
/// `--dedicated`, removed on drop.
struct Ephemeral(PathBuf);

impl Ephemeral {
    fn create() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "imagefs-instance-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ServeArgs {
    /// Runs the daemon until the frontend disconnects (or forever with
    /// `--keep-alive`); prints what it served.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        let (config, tiers, keys) = self.tiers.open()?;
        let opened = imagefs::open_image(tiers.origin.as_ref(), &self.image, &keys, None)?;
        let digest = opened.digest.to_string();
        let ephemeral = match (&tiers.dedicated, self.writable) {
            (None, true) => Some(Ephemeral::create()?),
            _ => None,
        };
        let dedicated: Option<&Path> = tiers
            .dedicated
            .as_deref()
            .or(ephemeral.as_ref().map(|e| e.0.as_path()));
        let lazy = Arc::new(imagefs::LazyImage::open(
            opened.manifest,
            tiers.store.clone(),
            dedicated,
            config.read.lazy_options(),
        )?);
        let opts = ServeOptions {
            queues: self.queues,
            queue_size: self.queue_size,
            writable: self.writable,
            keep_alive: self.keep_alive,
            io_threads: self.io_threads,
            record_trace: self.record_trace.clone(),
            ..ServeOptions::new(self.socket.clone(), digest.clone())
        };
        let served = serve(lazy.clone(), &opts, |socket| {
            // A closed stdout must not stop the daemon.
            let mut out = stdout();
            let _ = writeln!(
                out,
                "serving {digest} ({} bytes, {}) on {}",
                lazy.size(),
                if opts.writable {
                    "writable"
                } else {
                    "read-only"
                },
                socket.display()
            );
            let _ = out.flush();
        });
        if self.stats {
            eprint!(
                "{}",
                imagefs::tiers::stats::render(&tiers.store.metrics(), &lazy.metrics())
            );
        }
        let report = served?;
        let _ = writeln!(stdout(), "served {digest}: {report}");
        drop(lazy);
        drop(ephemeral);
        Ok(())
    }
}
