//! `imagefs gc`: garbage collection of the origin (a call into
//! [`imagefs::gc::gc`]).

use std::error::Error;
use std::io::{Write, stdout};
use std::time::Duration;

use imagefs::gc::{GcOptions, gc};

use crate::args::StoreArgs;
use crate::profile::parse_duration;

/// Arguments of `imagefs gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Keep unreferenced chunks, profiles, temporary files and untagged
    /// manifests younger than this (s, m, h, d); it must exceed the
    /// longest convert.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    grace: Duration,
    /// Delete untagged manifests stored longer ago than this (and, once
    /// the grace has passed, the chunks only they named). Without it,
    /// every untagged manifest is kept.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_untagged: Option<Duration>,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON (`imagefs::gc::GcReport`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

impl GcArgs {
    /// Runs the collection.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        let (origin, keys) = self.store.open(false)?;
        let opts = GcOptions {
            grace: self.grace,
            keep_untagged: self.keep_untagged,
            dry_run: self.dry_run,
        };
        let report = gc(origin.as_ref(), &keys, &opts)?;
        if self.json {
            crate::report::print_json(&report)?;
        } else {
            write!(stdout(), "{}", crate::report::gc_table(&report))?;
        }
        Ok(())
    }
}
