//! `imagefs serve`: the image as a vhost-user-blk device on a Unix socket
//! (a call into [`imagefs::transport::vhost::serve`]).

use std::error::Error;
use std::io::{Write, stdout};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imagefs::profile::{ProfileRecorder, save_profile};
use imagefs::tiers::stats::{render, render_prefetch, tiers_report};
use imagefs::transport::vhost::{ServeOptions, Server};
use imagefs::{DedicatedOptions, LazyOptions};
use manifest::report::ServeStats;

use crate::args::PrefetchArgs;
use crate::report::write_json;
use crate::signals::Signals;
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
    /// tier (`--dedicated DIR`; without it, a private temporary directory
    /// removed at exit). Without --writable the device is read-only.
    #[arg(long)]
    writable: bool,
    /// Discard what the dedicated directory holds (a disk with guest
    /// writes included) and start from the image. Without it, a disk with
    /// writes that does not match the image is an error.
    #[arg(long)]
    reset: bool,
    /// After the frontend disconnects, wait for a reconnecting one instead
    /// of exiting.
    #[arg(long)]
    keep_alive: bool,
    /// Threads doing the blocking reads and writes.
    #[arg(long, default_value_t = 8)]
    io_threads: usize,
    /// Record every guest read (offset, length, time) to FILE as JSON
    /// lines (format: manifest::trace).
    #[arg(long, value_name = "FILE")]
    record_trace: Option<PathBuf>,
    /// Record this start's profile (the chunks the guest reads, in order)
    /// and store it, sealed, in the origin beside the manifest when the
    /// daemon exits or the window ends, whichever is first.
    #[arg(long)]
    record_profile: bool,
    /// Stop recording this long after the guest's first read (e.g. 30s,
    /// 500ms, 2m); without it, at exit.
    #[arg(long, value_name = "DURATION", value_parser = crate::profile::parse_duration, requires = "record_profile")]
    record_profile_window: Option<Duration>,
    /// Write the recorded profile (sealed) to FILE instead of the origin,
    /// to merge several runs later (`imagefs profile merge`).
    #[arg(long, value_name = "FILE", requires = "record_profile")]
    record_profile_file: Option<PathBuf>,
    /// Log every fetch from the chunk store (chunk, cause, start and end,
    /// from when the image was opened) into the `--stats-json` report's
    /// `fetches` (at most 1,000,000 events).
    #[arg(long)]
    record_fetches: bool,
    /// At exit, print each tier's counters and latencies to stderr.
    #[arg(long)]
    stats: bool,
    /// At exit, write the report (what was served, each tier's counters,
    /// the reader's) to FILE as JSON (`manifest::report::ServeStats`).
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    #[command(flatten)]
    prefetch: PrefetchArgs,
    #[command(flatten)]
    tiers: TierArgs,
}

/// A temporary dedicated directory for a `--writable` instance without
/// `--dedicated`: 0700 under a random name (created `O_EXCL`-style, so
/// nothing planted in the shared temporary directory is used), removed
/// on drop.
struct Ephemeral(tempfile::TempDir);

impl Ephemeral {
    fn create() -> std::io::Result<Self> {
        tempfile::Builder::new()
            .prefix("imagefs-instance-")
            .tempdir()
            .map(Self)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl ServeArgs {
    /// Runs the daemon until the frontend disconnects (or, with
    /// `--keep-alive`, until a signal); prints what it served.
    pub fn run(self, signals: &Signals) -> Result<(), Box<dyn Error>> {
        let (config, tiers, keys) = self.tiers.open()?;
        let opened = imagefs::open_image(
            tiers.origin.as_ref(),
            &self.image,
            &keys,
            &self.tiers.domain,
        )?;
        let digest = opened.digest.to_string();
        let recorder = self.record_profile.then(|| {
            Arc::new(ProfileRecorder::new(
                opened.digest,
                &opened.manifest,
                self.record_profile_window,
            ))
        });
        let ephemeral = match (&tiers.dedicated, self.writable) {
            (None, true) => Some(Ephemeral::create()?),
            _ => None,
        };
        let dedicated: Option<&Path> = tiers
            .dedicated
            .as_deref()
            .or(ephemeral.as_ref().map(Ephemeral::path));
        let lazy = Arc::new(imagefs::LazyImage::open(
            opened.manifest,
            tiers.store.clone(),
            dedicated,
            LazyOptions {
                dedicated: DedicatedOptions {
                    image: Some(opened.digest),
                    reset: self.reset,
                },
                label: opened.digest.to_string(),
                ..LazyOptions::from(&config.read)
            },
        )?);
        crate::report::dedicated_state("imagefs serve", &lazy);
        if self.record_fetches {
            lazy.record_fetches(1_000_000);
        }
        self.prefetch.start(&lazy, || {
            imagefs::profile::load_profile(
                tiers.origin.as_ref(),
                &opened.digest,
                &keys,
                lazy.manifest(),
            )
        })?;
        let opts = ServeOptions {
            queues: self.queues,
            queue_size: self.queue_size,
            writable: self.writable,
            keep_alive: self.keep_alive,
            io_threads: self.io_threads,
            record_trace: self.record_trace.clone(),
            ..ServeOptions::new(self.socket.clone(), digest.clone())
        };
        let armed = signals.arm();
        let server = Server::new(lazy.clone(), &opts)?;
        if let Some(recorder) = &recorder {
            server.record_profile(recorder.clone());
        }
        let stop = server.stop_handle();
        armed.stop_with(move || stop.stop());
        // The profile is saved by its own thread once the window ends, or
        // right after the daemon returns, whichever is first.
        let save_profile = |recorder: &ProfileRecorder| {
            recorder.wait_done();
            let profile = recorder.profile();
            if profile.entries.is_empty() {
                eprintln!("imagefs serve: the guest read nothing; no start profile saved");
                return Ok(());
            }
            let saved = save_profile(
                self.record_profile_file.as_deref(),
                tiers.origin.as_ref(),
                &keys,
                lazy.manifest(),
                &profile,
            )?;
            eprintln!(
                "imagefs serve: start profile of {}: {} chunks, {saved}",
                profile.manifest,
                profile.entries.len()
            );
            Ok::<(), imagefs::profile::ProfileOpError>(())
        };
        let (served, saved) = std::thread::scope(|scope| {
            let saver = recorder
                .as_deref()
                .map(|r| scope.spawn(move || save_profile(r)));
            let served = server.run(|socket| {
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
            if let Some(recorder) = &recorder {
                recorder.close();
            }
            let saved = saver.map(|s| s.join());
            (served, saved)
        });
        drop(armed);
        let stats = ServeStats {
            image: digest.clone(),
            served: served.as_ref().ok().cloned(),
            tiers: tiers_report(tiers.store.metrics()),
            reader: lazy.metrics(),
            prefetch: lazy.end_prefetch(),
            fetches: lazy.fetch_log(),
        };
        if self.stats {
            eprint!("{}", render(&stats.tiers, &stats.reader));
            if let Some(p) = &stats.prefetch {
                eprint!("{}", render_prefetch(p));
            }
        }
        if let Some(path) = &self.stats_json {
            write_json(path, &stats)?;
        }
        let report = served?;
        let _ = writeln!(stdout(), "served {digest}: {report}");
        match saved {
            None | Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(e.into()),
            Some(Err(_)) => return Err("the start-profile thread panicked".into()),
        }
        drop(lazy);
        drop(ephemeral);
        Ok(())
    }
}
