//! `imagefs profile show|merge|rm|from-trace`: start profiles in the
//! origin (calls into [`imagefs::profile`]), and the argument pieces of
//! `serve --record-profile`.

use std::error::Error;
use std::io::{Write, stdout};
use std::path::PathBuf;
use std::time::Duration;

use imagefs::profile::{
    ProfileOpError, from_trace, merge, read_profile_file, remove_profile, render, save_profile,
    stored_profile,
};
use imagefs::transport::vhost::read_trace;

use crate::args::StoreArgs;

/// Arguments of `imagefs profile`.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    #[command(subcommand)]
    command: ProfileCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ProfileCommand {
    /// Print an image's stored start profile (or a profile file): each
    /// chunk and when the recorded start first read it.
    Show {
        /// sha256:DIGEST or a tag.
        image: String,
        /// Show this file (from `serve --record-profile-file`) instead.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print JSON (`manifest::profile::ProfileReport`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Merge recorded runs into one profile: every chunk seen in any run,
    /// ordered by its median first access. Stores the result in the
    /// origin (or writes it to --output).
    Merge {
        /// sha256:DIGEST or a tag.
        image: String,
        /// Recorded profiles (`serve --record-profile-file FILE`).
        files: Vec<PathBuf>,
        /// Include the profile stored in the origin as one more run.
        #[arg(long)]
        with_stored: bool,
        /// Write the merged profile here instead of storing it.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete an image's stored start profile.
    Rm {
        /// sha256:DIGEST or a tag.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Derive a profile from a `serve --record-trace` file and store it
    /// (or write it to --output).
    FromTrace {
        /// sha256:DIGEST or a tag.
        image: String,
        /// The trace file.
        trace: PathBuf,
        /// Write the profile here instead of storing it.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl ProfileArgs {
    /// Runs the subcommand.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        let mut out = stdout();
        match self.command {
            ProfileCommand::Show {
                image,
                file,
                json,
                store,
            } => {
                let (origin, keys) = store.open(false)?;
                let opened = imagefs::open_image(origin.as_ref(), &image, &keys, &store.domain)?;
                let profile = match &file {
                    Some(path) => read_profile_file(path, &opened.digest, &keys, &opened.manifest)?,
                    None => {
                        stored_profile(origin.as_ref(), &opened.digest, &keys, &opened.manifest)?
                            .ok_or(ProfileOpError::Missing {
                                digest: opened.digest,
                            })?
                    }
                };
                if json {
                    crate::report::print_json(&profile.report())?;
                } else {
                    write!(out, "{}", render(&profile, &opened.manifest))?;
                }
            }
            ProfileCommand::Merge {
                image,
                files,
                with_stored,
                output,
                store,
            } => {
                let (origin, keys) = store.open(false)?;
                let opened = imagefs::open_image(origin.as_ref(), &image, &keys, &store.domain)?;
                let (digest, manifest) = (&opened.digest, &opened.manifest);
                let mut runs = files
                    .iter()
                    .map(|path| read_profile_file(path, digest, &keys, manifest))
                    .collect::<Result<Vec<_>, _>>()?;
                if with_stored {
                    runs.extend(stored_profile(origin.as_ref(), digest, &keys, manifest)?);
                }
                let merged = merge(&runs)?;
                let saved =
                    save_profile(output.as_deref(), origin.as_ref(), &keys, manifest, &merged)?;
                writeln!(
                    out,
                    "merged {} runs of {digest}: {} chunks, {}",
                    runs.len(),
                    merged.entries.len(),
                    saved
                )?;
            }
            ProfileCommand::Rm { image, store } => {
                let (origin, keys) = store.open(false)?;
                let opened = imagefs::open_image(origin.as_ref(), &image, &keys, &store.domain)?;
                if !remove_profile(origin.as_ref(), &opened.digest)? {
                    return Err(ProfileOpError::Missing {
                        digest: opened.digest,
                    }
                    .into());
                }
                writeln!(out, "removed the start profile of {}", opened.digest)?;
            }
            ProfileCommand::FromTrace {
                image,
                trace,
                output,
                store,
            } => {
                let (origin, keys) = store.open(false)?;
                let opened = imagefs::open_image(origin.as_ref(), &image, &keys, &store.domain)?;
                let (header, records) = read_trace(&trace)?;
                let profile = from_trace(&opened.digest, &opened.manifest, &header, &records)?;
                let saved = save_profile(
                    output.as_deref(),
                    origin.as_ref(),
                    &keys,
                    &opened.manifest,
                    &profile,
                )?;
                writeln!(
                    out,
                    "start profile of {} from {} reads: {} chunks, {}",
                    opened.digest,
                    records.len(),
                    profile.entries.len(),
                    saved
                )?;
            }
        }
        Ok(())
    }
}

/// Parses a duration: a whole number with `ms`, `s`, `m`, `h` or `d`
/// (`30s`, `500ms`, `2m`, `24h`, `7d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (use e.g. 30s, 500ms, 2m, 24h, 7d)"))?;
    let secs_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m, h or d, e.g. 30s)"
            ));
        }
    };
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "s", "30", "30w", "-1s", "1.5s", "99999999999999999d"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
