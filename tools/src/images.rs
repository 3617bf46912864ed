//! `imagefs tag ls|set|rm` and `imagefs image ls|rm`: the names and
//! images of a store (calls into the [`cachetiers::Catalog`] and
//! [`imagefs::images`]).

use std::error::Error;
use std::io::{Write, stdout};

use imagefs::images::{list_images, remove_image};
use manifest::ManifestDigest;

use crate::args::StoreArgs;

/// Arguments of `imagefs tag`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    #[command(subcommand)]
    command: TagCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TagCommand {
    /// List the --domain's tags (every domain's with --all-domains).
    Ls {
        /// Every domain's tags.
        #[arg(long)]
        all_domains: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Point tag NAME of the --domain at an image (replacing its target).
    Set {
        /// The tag.
        name: String,
        /// sha256:DIGEST or another tag of the --domain.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove tag NAME of the --domain (the image stays).
    Rm {
        /// The tag.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// A tag as `tag ls --json` prints it.
#[derive(Debug, serde::Serialize)]
struct TagRow {
    domain: String,
    name: String,
    digest: String,
}

impl TagArgs {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        let mut out = stdout();
        match self.command {
            TagCommand::Ls {
                all_domains,
                json,
                store,
            } => {
                let (origin, _keys) = store.open(false)?;
                let rows: Vec<TagRow> = origin
                    .list_tags()?
                    .into_iter()
                    .filter(|t| all_domains || t.domain == store.domain)
                    .map(|t| TagRow {
                        domain: t.domain,
                        name: t.name,
                        digest: t.digest.to_string(),
                    })
                    .collect();
                if json {
                    crate::report::print_json(&rows)?;
                } else {
                    for r in &rows {
                        writeln!(out, "{}/{}\t{}", r.domain, r.name, r.digest)?;
                    }
                }
            }
            TagCommand::Set { name, image, store } => {
                let (origin, _keys) = store.open(false)?;
                let digest = origin.resolve(&store.domain, &image)?;
                origin.set_tag(&store.domain, &name, &digest)?;
                writeln!(out, "{}/{name} -> {digest}", store.domain)?;
            }
            TagCommand::Rm { name, store } => {
                let (origin, _keys) = store.open(false)?;
                if !origin.remove_tag(&store.domain, &name)? {
                    return Err(
                        format!("no tag {}/{name} in {}", store.domain, origin.location()).into(),
                    );
                }
                writeln!(out, "removed tag {}/{name}", store.domain)?;
            }
        }
        Ok(())
    }
}

/// Arguments of `imagefs image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ImageCommand {
    /// List every stored image: digest, tags, domain, size, the bytes only
    /// it holds, and when it was stored.
    Ls {
        /// Print JSON (`imagefs::images::ImageList`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an image's manifest and start profile (its chunks go at the
    /// next `gc`). Refused while a tag points at it, unless --untag.
    Rm {
        /// sha256:DIGEST (a tag is not enough: say which image).
        digest: ManifestDigest,
        /// Remove the tags (of every domain) that point at it first.
        #[arg(long)]
        untag: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl ImageArgs {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        match self.command {
            ImageCommand::Ls { json, store } => {
                let (origin, keys) = store.open(false)?;
                let list = list_images(origin.as_ref(), &keys)?;
                if json {
                    crate::report::print_json(&list)?;
                } else {
                    write!(stdout(), "{}", crate::report::image_table(&list))?;
                }
            }
            ImageCommand::Rm {
                digest,
                untag,
                store,
            } => {
                let (origin, _keys) = store.open(false)?;
                let removed = remove_image(origin.as_ref(), &digest, untag)?;
                let mut out = stdout();
                for tag in &removed.untagged {
                    writeln!(out, "removed tag {tag}")?;
                }
                writeln!(out, "removed image {}", removed.digest)?;
            }
        }
        Ok(())
    }
}
