//! Argument parsing: one variant per subcommand, each calling the library.

use std::error::Error;
use std::io::{Write, stdout};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cachetiers::Origin;

use chunker::convert::{ConvertOptions, Pipeline, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use clap::{Parser, Subcommand};
use imagefs::tiers::parse_size;
use imagefs::tiers::stats::{render, render_prefetch, tiers_report};
use imagefs::{DedicatedOptions, LazyOptions, PrefetchMode, PrefetchOptions};
use manifest::report::MountStats;

use crate::node;
use crate::pull::RegistryArgs;
use crate::report;
use crate::signals::Signals;
use crate::tiers::{self, TierArgs};

/// Boot microVMs from container images without downloading them first.
#[derive(Debug, Parser)]
#[command(name = "imagefs", version)]
pub struct Cli {
    /// Log lines on stderr as text or JSON lines; which ones, `RUST_LOG`
    /// says (default `info`; e.g. `RUST_LOG=imagefs=debug`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "IMAGEFS_LOG_FORMAT"
    )]
    pub log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Flatten an OCI image into a deterministic ext4 image.
    Flatten {
        /// oci:DIR[:REF], docker-archive:FILE, oci-archive:FILE or
        /// docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST].
        source: ImageSource,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Where to write the image (written to a temporary name, then renamed).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        layout: LayoutArgs,
    },
    /// Convert an OCI image into encrypted chunks and a sealed manifest.
    Convert {
        /// oci:DIR[:REF], docker-archive:FILE, oci-archive:FILE or
        /// docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST].
        source: ImageSource,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        store: StoreArgs,
        /// A name to point at the new manifest (among the --domain's
        /// tags).
        #[arg(long)]
        tag: Option<String>,
        /// Encryption threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// `overlapped` (layers read ahead on their own thread, chunks
        /// synced in one batch before the manifest) or `serial` (the
        /// earlier path, each chunk synced on its own; kept to compare).
        /// The output is the same.
        #[arg(long, default_value_t = Pipeline::Overlapped)]
        pipeline: Pipeline,
        /// Convert even if the store records this source manifest as
        /// converted with the same options (otherwise that is a no-op).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        layout: LayoutArgs,
        /// Print the report as JSON (`manifest::report::ConvertStats`)
        /// instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a manifest (keys only with --show-keys).
    Inspect {
        /// sha256:DIGEST or a tag.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Include the chunk keys.
        #[arg(long)]
        show_keys: bool,
    },
    /// Check every chunk of an image: present, matching its id, decrypting.
    Verify {
        /// sha256:DIGEST or a tag.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Reassemble the plaintext ext4 image (sparse).
    Export {
        /// sha256:DIGEST or a tag.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Where to write the image.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Mount an image read-only through FUSE, fetching chunks as they are
    /// read; SIGINT or SIGTERM unmounts.
    Mount {
        /// sha256:DIGEST or a tag.
        image: String,
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// Show the whole block device as one file, `disk.img`.
        #[arg(long)]
        raw: bool,
        /// Let every user read the mount (FUSE `allow_other`).
        #[arg(long)]
        allow_other: bool,
        /// At exit, print each tier's counters and latencies to stderr.
        #[arg(long)]
        stats: bool,
        /// Serve every read through the daemon: no FUSE passthrough, even
        /// for files the dedicated tier holds in full.
        #[arg(long)]
        no_passthrough: bool,
        /// Where files passed through to the kernel are copied (default:
        /// the dedicated tier's directory; without one, no passthrough).
        #[arg(long)]
        passthrough_dir: Option<PathBuf>,
        /// The most bytes of passthrough copies kept at once.
        #[arg(long, value_parser = parse_size, default_value = "1G")]
        passthrough_capacity: u64,
        /// At exit, write the report (each tier's counters, the reader's,
        /// passthrough's) to FILE as JSON (`manifest::report::MountStats`).
        #[arg(long, value_name = "FILE")]
        stats_json: Option<PathBuf>,
        /// Discard what the dedicated directory holds (a disk with guest
        /// writes included) and start from the image. Without it, a disk
        /// with writes that does not match the image is an error.
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        prefetch: PrefetchArgs,
        #[command(flatten)]
        tiers: TierArgs,
    },
    /// Serve an image to a VM as a vhost-user-blk device on a Unix socket,
    /// fetching chunks as the guest reads them; ends when the frontend
    /// disconnects (unless --keep-alive), or cleanly, with its report, on
    /// SIGINT or SIGTERM.
    Serve(crate::serve::ServeArgs),
    /// The host agent: serves every VM of the host from one set of shared
    /// tiers, controlled through an HTTP API on a Unix socket (`imagefs
    /// vm`); a restart re-creates every VM's socket from its state file.
    Agent(crate::agent::AgentArgs),
    /// Start, stop, list and show the agent's VMs (a client of its API).
    Vm(crate::agent::VmArgs),
    /// Start profiles (the chunks a start reads, in order, for prefetch):
    /// show, merge recorded runs, delete, or derive one from a trace.
    Profile(crate::profile::ProfileArgs),
    /// Tags: list, set or remove the names that point at images.
    Tag(crate::images::TagArgs),
    /// Images: list them (tags, domain, sizes, unique bytes) or remove one.
    Image(crate::images::ImageArgs),
    /// Garbage collection: delete the untagged manifests the retention
    /// rule lets go, and the chunks, start profiles and temporary files
    /// nothing kept names, once older than the grace period.
    Gc(crate::gc::GcArgs),
    /// Master keys: create, list, retire.
    Key(crate::keys::KeyCmdArgs),
    /// Re-seal manifests (and start profiles) under another master key,
    /// in place: digests, tags and chunks stay. Idempotent and resumable.
    Rewrap(crate::keys::RewrapArgs),
    /// Run an AZ cache node: GET /v1/chunks/{id}, /metrics, /healthz.
    CacheNode(node::CacheNodeArgs),
    /// Fetch every chunk of an image through the tiers, filling the caches
    /// on the way (and checking each chunk).
    Fetch {
        /// sha256:DIGEST or a tag.
        image: String,
        #[command(flatten)]
        tiers: TierArgs,
        /// Parallel fetches.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Print the report as JSON (`manifest::report::FetchStats`) on
        /// stdout instead of text on stdout and the tier table on stderr.
        #[arg(long)]
        json: bool,
    },
}

/// How `serve` and `mount` prefetch a start profile's chunks.
#[derive(Debug, clap::Args)]
pub struct PrefetchArgs {
    /// auto: prefetch the image's start profile, when it has one, in the
    /// order it was recorded; off: fetch only what is read.
    #[arg(long = "prefetch", default_value = "auto", value_name = "auto|off")]
    mode: PrefetchMode,
    /// Chunks prefetched at once.
    #[arg(long = "prefetch-concurrency", value_name = "N",
          default_value_t = PrefetchOptions::default().concurrency)]
    concurrency: usize,
    /// Most bytes per second prefetch fetches (K, M, G suffixes; 0 or
    /// absent: no cap). Demand reads are never held back by it.
    #[arg(long = "prefetch-bandwidth", value_name = "BYTES", value_parser = parse_size)]
    bandwidth: Option<u64>,
}

impl PrefetchArgs {
    /// Starts prefetching on `lazy` as asked, in the order `load_order`
    /// gives (the image's stored start profile); it is called only when
    /// the mode is `auto`, so `--prefetch off` reads nothing extra.
    pub fn start(
        &self,
        lazy: &imagefs::LazyImage,
        load_order: impl FnOnce() -> Option<Vec<manifest::ChunkIndex>>,
    ) -> Result<Option<imagefs::PrefetchHandle>, imagefs::LazyError> {
        let options = PrefetchOptions {
            concurrency: self.concurrency,
            bandwidth: self.bandwidth,
        };
        let order = match self.mode {
            PrefetchMode::Auto => load_order(),
            PrefetchMode::Off => None,
        };
        imagefs::lazy::prefetch::start(lazy, self.mode, order, &options)
    }
}

/// Where chunks, manifests and keys are.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The store: a directory, file:///DIR or s3://BUCKET/PREFIX (S3
    /// settings from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "IMAGEFS_STORE")]
    store: String,
    /// The key directory (master keys and domain secrets).
    #[arg(long, env = "IMAGEFS_KEYS", default_value = tiers::DEFAULT_KEYS)]
    keys: PathBuf,
    #[command(flatten)]
    key_provider: crate::keys::KeyArgs,
    /// The tenant's dedup domain. `convert` encrypts into it (chunks dedupe
    /// only within one domain) and sets its tag among the domain's tags;
    /// readers look tags up among its tags and refuse an image of another
    /// domain.
    #[arg(long, env = "IMAGEFS_DOMAIN", default_value = manifest::DEFAULT_DOMAIN)]
    pub(crate) domain: String,
}

/// Options that shape the ext4 image.
#[derive(Debug, clap::Args)]
pub struct LayoutArgs {
    /// Chunk size; each layer's data starts on a chunk boundary (64K..4M).
    #[arg(long, default_value = "512K", value_parser = parse_size)]
    chunk_size: u64,
    /// Free space to leave in the filesystem.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    free_space: u64,
    /// Free inodes to leave beyond those the image uses.
    #[arg(long, default_value_t = 4096)]
    spare_inodes: u32,
    /// Most uncompressed bytes one layer may have.
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    max_layer_bytes: u64,
    /// Most uncompressed bytes all layers together may have.
    #[arg(long, default_value = "256G", value_parser = parse_size)]
    max_image_bytes: u64,
}

impl LayoutArgs {
    fn flatten(&self) -> FlattenOptions {
        let mut opts = FlattenOptions {
            ext4: self.ext4(),
            ..FlattenOptions::default()
        };
        opts.limits.max_layer_bytes = self.max_layer_bytes;
        opts.limits.max_image_bytes = self.max_image_bytes;
        opts
    }

    fn ext4(&self) -> Ext4Options {
        Ext4Options {
            chunk_size: self.chunk_size,
            free_bytes: self.free_space,
            spare_inodes: self.spare_inodes,
        }
    }
}

impl StoreArgs {
    /// Open the store and the key provider; `create` makes them if missing.
    pub(crate) fn open(
        &self,
        create: bool,
    ) -> Result<(Arc<dyn Origin>, crate::keys::Keys), Box<dyn Error>> {
        let store = cachetiers::origin::open_origin(&self.store, create).map_err(|e| {
            format!(
                "opening the store {}: {}",
                self.store,
                imagefs::error_chain(&e)
            )
        })?;
        let keys = self.key_provider.spec(&self.keys)?.open(create)?;
        Ok((store, keys))
    }

    /// The key provider flags.
    pub(crate) fn key_args(&self) -> &crate::keys::KeyArgs {
        &self.key_provider
    }

    /// The local key directory.
    pub(crate) fn keys_dir(&self) -> &std::path::Path {
        &self.keys
    }
}

impl Command {
    /// Run the subcommand; `signals` stops what it starts.
    pub fn run(self, signals: &Signals) -> Result<(), Box<dyn Error>> {
        match self {
            Command::Flatten {
                mut source,
                registry,
                output,
                layout,
            } => {
                registry.apply(&mut source, true)?;
                let opts = layout.flatten();
                let flattened = flatten_to_file(&source, &output, &opts)?;
                report::flattened(&mut stdout(), &flattened, &output)?;
                Ok(())
            }
            Command::Convert {
                mut source,
                registry,
                store,
                tag,
                threads,
                pipeline,
                force,
                layout,
                json,
            } => {
                registry.apply(&mut source, !json)?;
                let (dir, keys) = store.open(true)?;
                let mut opts = ConvertOptions {
                    flatten: layout.flatten(),
                    domain: store.domain.clone(),
                    tag,
                    progress: !json,
                    pipeline,
                    force,
                    ..ConvertOptions::default()
                };
                if let Some(n) = threads {
                    opts.threads = n;
                }
                let converted = convert(&source, dir.as_ref(), &keys, &opts)?;
                let stats = report::convert_stats(&converted);
                if json {
                    report::print_json(&stats)?;
                } else {
                    report::converted(&mut stdout(), &stats)?;
                }
                Ok(())
            }
            Command::Inspect {
                image,
                store,
                json,
                show_keys,
            } => {
                let (dir, keys) = store.open(false)?;
                let opened = imagefs::open_image(dir.as_ref(), &image, &keys, &store.domain)?;
                report::inspected(&mut stdout(), &opened, json, show_keys)?;
                Ok(())
            }
            Command::Verify { image, store } => {
                let (dir, keys) = store.open(false)?;
                let opened = imagefs::open_image(dir.as_ref(), &image, &keys, &store.domain)?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let verified = imagefs::verify(dir.as_ref(), &opened.manifest, threads);
                report::verified(&mut stdout(), &opened, &verified)?;
                if verified.bad.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} bad chunk(s) in {}", verified.bad.len(), opened.digest).into())
                }
            }
            Command::Export {
                image,
                store,
                output,
            } => {
                let (dir, keys) = store.open(false)?;
                let opened = imagefs::open_image(dir.as_ref(), &image, &keys, &store.domain)?;
                let exported = imagefs::export(dir.as_ref(), &opened.manifest, &output)?;
                writeln!(
                    stdout(),
                    "exported {} to {}: {} bytes, {} chunks, {} holes",
                    opened.digest,
                    output.display(),
                    exported.size,
                    exported.chunks,
                    exported.holes
                )?;
                Ok(())
            }
            Command::Mount {
                image,
                mountpoint,
                raw,
                allow_other,
                stats: stats_flag,
                no_passthrough,
                passthrough_dir,
                passthrough_capacity,
                stats_json,
                reset,
                prefetch,
                tiers,
            } => {
                let domain = tiers.domain.clone();
                let (config, tiers, keys) = tiers.open()?;
                let opened = imagefs::open_image(tiers.origin.as_ref(), &image, &keys, &domain)?;
                let digest = opened.digest;
                let lazy = Arc::new(imagefs::LazyImage::open(
                    opened.manifest,
                    tiers.store.clone(),
                    tiers.dedicated.as_deref(),
                    LazyOptions {
                        dedicated: DedicatedOptions {
                            image: Some(digest),
                            reset,
                        },
                        label: digest.to_string(),
                        ..LazyOptions::from(&config.read)
                    },
                )?);
                report::dedicated_state("imagefs mount", &lazy);
                prefetch.start(&lazy, || {
                    imagefs::profile::load_profile(
                        tiers.origin.as_ref(),
                        &digest,
                        &keys,
                        lazy.manifest(),
                    )
                })?;
                let passthrough_dir = passthrough_dir
                    .or_else(|| config.dedicated.as_ref().map(|d| d.dir.clone()))
                    .filter(|_| !no_passthrough);
                let opts = imagefs::transport::fuse::MountOptions {
                    raw,
                    allow_other,
                    fs_name: Some(format!("imagefs:{digest}")),
                    passthrough: passthrough_dir.map(|dir| {
                        imagefs::transport::fuse::PassthroughOptions {
                            dir,
                            capacity: passthrough_capacity,
                        }
                    }),
                };
                let armed = signals.arm();
                let mounted = imagefs::transport::fuse::mount(lazy.clone(), &mountpoint, &opts)?;
                let unmount = mounted.stop_handle();
                let stopped = Arc::new(AtomicBool::new(false));
                let stopping = Arc::clone(&stopped);
                armed.stop_with(move || {
                    stopping.store(true, Ordering::SeqCst);
                    if let Err(e) = unmount.unmount() {
                        eprintln!("imagefs: {}", imagefs::error_chain(&e));
                    }
                });
                // A closed stdout must not stop the mount.
                let _ = writeln!(
                    stdout(),
                    "mounted {digest} at {}; SIGINT or SIGTERM unmounts",
                    mounted.mountpoint().display()
                );
                let served = mounted.wait();
                drop(armed);
                if !stopped.load(Ordering::SeqCst) {
                    eprintln!(
                        "imagefs: {} was unmounted from outside",
                        mountpoint.display()
                    );
                }
                let stats = MountStats {
                    image: digest.to_string(),
                    tiers: tiers_report(tiers.store.metrics()),
                    reader: lazy.metrics(),
                    passthrough: served.as_ref().ok().copied().flatten(),
                    prefetch: lazy.end_prefetch(),
                };
                if stats_flag {
                    eprint!("{}", render(&stats.tiers, &stats.reader));
                    if let Some(p) = &stats.prefetch {
                        eprint!("{}", render_prefetch(p));
                    }
                    if let Some(p) = &stats.passthrough {
                        eprintln!("{}", report::passthrough(p));
                    }
                }
                if let Some(path) = &stats_json {
                    report::write_json(path, &stats)?;
                }
                served?;
                Ok(())
            }
            Command::Serve(args) => args.run(signals),
            Command::Agent(args) => args.run(signals),
            Command::Vm(args) => args.run(),
            Command::Profile(args) => args.run(),
            Command::Tag(args) => args.run(),
            Command::Image(args) => args.run(),
            Command::Gc(args) => args.run(),
            Command::Key(args) => args.run(),
            Command::Rewrap(args) => args.run(),
            Command::CacheNode(args) => args.run(signals),
            Command::Fetch {
                image,
                tiers,
                threads,
                json,
            } => {
                let domain = tiers.domain.clone();
                let (_, tiers, keys) = tiers.open()?;
                let opened = imagefs::open_image(tiers.origin.as_ref(), &image, &keys, &domain)?;
                let verified = imagefs::verify(tiers.store.as_ref(), &opened.manifest, threads);
                let stats =
                    report::fetch_stats(&opened, &verified, tiers_report(tiers.store.metrics()));
                if json {
                    report::print_json(&stats)?;
                } else {
                    report::verified(&mut stdout(), &opened, &verified)?;
                    eprint!("{}", render(&stats.tiers, &imagefs::LazyMetrics::default()));
                }
                if verified.bad.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} chunk(s) of {} could not be fetched",
                        verified.bad.len(),
                        opened.digest
                    )
                    .into())
                }
            }
        }
    }
}
