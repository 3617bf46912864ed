//! Prints, as one JSON object, how many of an image's chunks an
//! instance's dedicated tier holds, against the image's chunk table.
//! `scripts/demo.sh` runs `imagefs serve --dedicated DIR` with a fresh
//! DIR and no read-ahead, so what the tier holds afterwards is exactly
//! the chunks the guest's reads fetched on demand.
//!
//! Usage: `dedicated_chunks [--summary] STORE KEYS IMAGE DIR` (STORE a
//! directory store, KEYS a local key directory, IMAGE a tag or
//! `sha256:DIGEST`). Output: `{"image": "sha256:…", "chunks": N,
//! "holes": H, "stored": S, "present": P}`; with `--summary`, then a
//! sentence made from the same numbers.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use imagefs::lazy::{DedicatedState, DedicatedTier};

/// What the tier holds against the image's chunk table.
#[derive(Debug)]
struct Counts {
    image: String,
    chunks: usize,
    holes: usize,
    stored: usize,
    present: u64,
}

fn run(args: &[String]) -> Result<Counts, Box<dyn Error>> {
    let [store, keys, image, dir] = args else {
        return Err("usage: dedicated_chunks [--summary] STORE KEYS IMAGE DIR".into());
    };
    let store = cachetiers::DirStore::open(store)?;
    let keys = manifest::LocalKeyProvider::open(keys)?;
    let opened = imagefs::open_image(&store, image, &keys, None)?;
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
    Ok(Counts {
        image: opened.digest.to_string(),
        chunks: m.chunks.len(),
        holes: m.hole_count(),
        stored: m.present_count(),
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
                "present": c.present,
            });
            println!("{json}");
            if summary {
                println!(
                    "{} of the image's {} stored chunks are in the dedicated tier \
                     ({} chunks in all, {} of them holes that are never fetched)",
                    c.present, c.stored, c.chunks, c.holes
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dedicated_chunks: {e}");
            ExitCode::FAILURE
        }
    }
}
