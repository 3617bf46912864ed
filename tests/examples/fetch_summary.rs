//! Prints, as one JSON object, how many chunks a run of `imagefs serve`
//! fetched on demand, taken from its JSON report (`--stats-json`),
//! against the image's chunk table, and how many the instance's
//! dedicated tier holds afterwards. `scripts/demo.sh` serves with a
//! fresh dedicated tier and no read-ahead, so the two counts agree.
//!
//! Usage: `fetch_summary [--summary] STORE KEYS IMAGE DIR REPORT` (STORE a
//! directory store, KEYS a local key directory, IMAGE a tag or
//! `sha256:DIGEST`, DIR the dedicated tier, REPORT serve's JSON report).
//! Output: `{"image": "sha256:…", "chunks": N, "holes": H, "stored": S,
//! "fetched": F, "readahead": R, "present": P}`; with `--summary`, then a sentence made
//! from the same numbers.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use imagefs::lazy::{DedicatedState, DedicatedTier};
use manifest::report::ServeStats;

/// What the tier holds against the image's chunk table.
#[derive(Debug)]
struct Counts {
    image: String,
    chunks: usize,
    holes: usize,
    stored: usize,
    fetched: u64,
    readahead: u64,
    present: u64,
}

fn run(args: &[String]) -> Result<Counts, Box<dyn Error>> {
    let [store, keys, image, dir, report] = args else {
        return Err("usage: fetch_summary [--summary] STORE KEYS IMAGE DIR REPORT".into());
    };
    let report_text = std::fs::read_to_string(report)
        .map_err(|e| format!("reading the serve report {report}: {e}"))?;
    let report: ServeStats = serde_json::from_str(&report_text)
        .map_err(|e| format!("{report} is not a serve report: {e}"))?;
    let store = cachetiers::DirStore::open(store)?;
    let keys = manifest::LocalKeyProvider::open(keys)?;
    let opened = imagefs::open_image(&store, image, &keys, manifest::DEFAULT_DOMAIN)?;
    let dir = PathBuf::from(dir);
    if !dir.join("present").is_file() {
        return Err(format!("{} holds no dedicated tier", dir.display()).into());
    }
    let (tier, state) = DedicatedTier::open(&dir, &opened.manifest)?;
    if let DedicatedState::Reset { reason } = state {
        return Err(format!(
            "the dedicated tier in {} was not usable: {reason}",
            dir.display()
        )
        .into());
    }
    let m = &opened.manifest;
    if report.image != opened.digest.to_string() {
        return Err(format!(
            "the serve report is for {}, not {}",
            report.image, opened.digest
        )
        .into());
    }
    Ok(Counts {
        image: opened.digest.to_string(),
        chunks: m.chunks.len(),
        holes: m.hole_count(),
        stored: m.present_count(),
        fetched: report.reader.store_fetches,
        readahead: report.reader.readahead_fetches,
        present: tier.present_count(),
    })
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let summary = args.first().is_some_and(|a| a == "--summary");
    if summary {
        args.remove(0);
    }
    match run(&args) {
        Ok(c) => {
            let json = serde_json::json!({
                "image": c.image,
                "chunks": c.chunks,
                "holes": c.holes,
                "stored": c.stored,
                "fetched": c.fetched,
                "readahead": c.readahead,
                "present": c.present,
            });
            println!("{json}");
            if summary {
                println!(
                    "the guest's reads fetched {} of the image's {} stored chunks on demand, \
                     {} of them by read-ahead ({} chunks in all, {} of them holes that are \
                     never fetched); the dedicated tier now holds {}",
                    c.fetched, c.stored, c.readahead, c.chunks, c.holes, c.present
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fetch_summary: {e}");
            ExitCode::FAILURE
        }
    }
}
