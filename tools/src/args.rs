//! Argument parsing: one variant per subcommand, each calling the library.

use std::error::Error;
use std::io::{Write, stdout};
use std::path::PathBuf;

use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use clap::{Parser, Subcommand};

use crate::report;

/// Boot microVMs from container images without downloading them first.
#[derive(Debug, Parser)]
#[command(name = "imagefs", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Flatten an OCI image into a deterministic ext4 image.
    Flatten {
        /// oci:DIR[:REF], docker-archive:FILE or oci-archive:FILE.
        source: ImageSource,
        /// Where to write the image (written to a temporary name, then renamed).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        layout: LayoutArgs,
    },
    /// Convert an OCI image into encrypted chunks and a sealed manifest.
    Convert {
        /// oci:DIR[:REF], docker-archive:FILE or oci-archive:FILE.
        source: ImageSource,
        #[command(flatten)]
        store: StoreArgs,
        /// A name to point at the new manifest.
        #[arg(long)]
        tag: Option<String>,
        /// The dedup domain: chunks dedupe only within one domain.
        #[arg(long, default_value = "default")]
        domain: String,
        /// Encryption threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        layout: LayoutArgs,
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
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where chunks, manifests and keys are.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The chunk store directory.
    #[arg(long, env = "IMAGEFS_STORE")]
    store: PathBuf,
    /// The key directory (master keys and domain secrets).
    #[arg(long, env = "IMAGEFS_KEYS", default_value = "/var/lib/imagefs/keys")]
    keys: PathBuf,
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
}

impl LayoutArgs {
    fn ext4(&self) -> Ext4Options {
        Ext4Options {
            chunk_size: self.chunk_size,
            free_bytes: self.free_space,
            spare_inodes: self.spare_inodes,
        }
    }
}

impl StoreArgs {
    /// Open the store and the key directory; `create` makes them if missing.
    fn open(
        &self,
        create: bool,
    ) -> Result<(cachetiers::DirStore, manifest::LocalKeyProvider), Box<dyn Error>> {
        let store = if create {
            cachetiers::DirStore::create(&self.store)?
        } else {
            cachetiers::DirStore::open(&self.store)?
        };
        let keys = if create {
            manifest::LocalKeyProvider::create(&self.keys)?
        } else {
            manifest::LocalKeyProvider::open(&self.keys)?
        };
        Ok((store, keys))
    }
}

impl Command {
    /// Run the subcommand.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        match self {
            Command::Flatten {
                source,
                output,
                layout,
            } => {
                let opts = FlattenOptions {
                    ext4: layout.ext4(),
                };
                let flattened = flatten_to_file(&source, &output, &opts)?;
                report::flattened(&mut stdout(), &flattened, &output)?;
                Ok(())
            }
            Command::Convert {
                source,
                store,
                tag,
                domain,
                threads,
                layout,
            } => {
                let (dir, keys) = store.open(true)?;
                let mut opts = ConvertOptions {
                    flatten: FlattenOptions {
                        ext4: layout.ext4(),
                    },
                    domain,
                    tag,
                    progress: true,
                    ..ConvertOptions::default()
                };
                if let Some(n) = threads {
                    opts.threads = n;
                }
                let converted = convert(&source, &dir, &keys, &opts)?;
                report::converted(&mut stdout(), &converted)?;
                Ok(())
            }
            Command::Inspect {
                image,
                store,
                json,
                show_keys,
            } => {
                let (dir, keys) = store.open(false)?;
                let opened = imagefs::open_image(&dir, &image, &keys, None)?;
                report::inspected(&mut stdout(), &opened, json, show_keys)?;
                Ok(())
            }
            Command::Verify { image, store } => {
                let (dir, keys) = store.open(false)?;
                let opened = imagefs::open_image(&dir, &image, &keys, None)?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let verified = imagefs::verify(&dir, &opened.manifest, threads);
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
                let opened = imagefs::open_image(&dir, &image, &keys, None)?;
                let exported = imagefs::export(&dir, &opened.manifest, &output)?;
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
                store,
            } => {
                let (dir, keys) = store.open(false)?;
                let opened = imagefs::open_image(&dir, &image, &keys, None)?;
                let digest = opened.digest;
                let lazy = imagefs::LazyImage::open(
                    opened.manifest,
                    std::sync::Arc::new(dir),
                    None,
                    imagefs::LazyOptions::default(),
                )?;
                let opts = imagefs::fuse::MountOptions {
                    raw,
                    allow_other,
                    fs_name: Some(format!("imagefs:{digest}")),
                };
                imagefs::fuse::mount_until_signal(
                    std::sync::Arc::new(lazy),
                    &mountpoint,
                    &opts,
                    |at| {
                        // A closed stdout must not stop the mount.
                        let _ = writeln!(
                            stdout(),
                            "mounted {digest} at {}; SIGINT or SIGTERM unmounts",
                            at.display()
                        );
                    },
                )?;
                Ok(())
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
