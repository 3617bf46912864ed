//! What the subcommands print.

use std::io::{self, Write};
use std::path::Path;

use chunker::convert::ConvertReport;
use chunker::flatten::FlattenReport;
use imagefs::{OpenedImage, VerifyReport};
use manifest::ChunkEntry;
use manifest::report::{
    BadChunkReport, ChunkCounts, ConvertBytes, ConvertStats, FetchStats, PassthroughStats,
    TiersReport,
};
use serde::Serialize;

const MB: f64 = 1e6;

/// What the dedicated tier found at open, on stderr: a reset is always
/// reported (the earlier state was only a cache, or `--reset` asked).
pub fn dedicated_state(who: &str, lazy: &imagefs::LazyImage) {
    match lazy.dedicated_state() {
        Some(imagefs::DedicatedState::Reset { reason }) => {
            eprintln!("{who}: dedicated tier reset: {reason}");
        }
        Some(imagefs::DedicatedState::Reused { present }) => {
            eprintln!("{who}: dedicated tier reused ({present} chunks present)");
        }
        Some(imagefs::DedicatedState::Created) | None => {}
    }
}

/// `flatten`: one line per layer, then the image.
pub fn flattened(out: &mut dyn Write, r: &FlattenReport, output: &Path) -> io::Result<()> {
    for l in &r.layers {
        writeln!(
            out,
            "layer {} {} {:.1} MB -> {:.1} MB, {} entries",
            l.digest,
            l.media_type,
            l.compressed_bytes as f64 / MB,
            l.uncompressed_bytes as f64 / MB,
            l.entries
        )?;
    }
    writeln!(
        out,
        "{}: ext4 image of {:.1} MB ({} inodes, {} blocks used) from {}",
        output.display(),
        r.ext4.size as f64 / MB,
        r.ext4.inodes_used,
        r.ext4.blocks_used,
        r.image_digest
    )?;
    Ok(())
}

/// `convert`'s report.
pub fn convert_stats(r: &ConvertReport) -> ConvertStats {
    ConvertStats {
        digest: r.digest.to_string(),
        already_converted: r.already_converted,
        chunks: ChunkCounts {
            total: r.chunks,
            holes: r.holes,
            new: r.new_chunks,
            existing: r.existing_chunks,
        },
        bytes: ConvertBytes {
            image: r.image_bytes,
            written: r.bytes_written,
            manifest: r.manifest_bytes,
        },
        elapsed_seconds: r.elapsed.as_secs_f64(),
    }
}

/// `fetch`'s report.
pub fn fetch_stats(o: &OpenedImage, r: &VerifyReport, tiers: TiersReport) -> FetchStats {
    FetchStats {
        image: o.digest.to_string(),
        checked: r.checked,
        holes: r.holes,
        bad: r
            .bad
            .iter()
            .map(|b| BadChunkReport {
                index: b.index.0,
                id: b.id.to_string(),
                problem: b.problem.clone(),
            })
            .collect(),
        tiers,
    }
}

/// A report as one JSON document on stdout.
pub fn print_json(report: &impl Serialize) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, report)?;
    writeln!(out)
}

/// A report as JSON in `path` (replaced).
pub fn write_json(path: &Path, report: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing the report to {}: {e}", path.display()),
        )
    })
}

/// `convert`: the digest first (scripts read line one), then a summary.
pub fn converted(out: &mut dyn Write, r: &ConvertStats) -> io::Result<()> {
    let secs = r.elapsed_seconds.max(1e-9);
    writeln!(out, "{}", r.digest)?;
    if r.already_converted {
        writeln!(
            out,
            "already converted: {} ({} chunks, {} holes; --force converts again)",
            r.digest, r.chunks.total, r.chunks.holes
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "chunks {} (holes {}, new {}, already present {}), {:.1} MB written, manifest {} bytes",
        r.chunks.total,
        r.chunks.holes,
        r.chunks.new,
        r.chunks.existing,
        r.bytes.written as f64 / MB,
        r.bytes.manifest
    )?;
    writeln!(
        out,
        "image {:.1} MB in {:.2} s: {:.1} MB/s",
        r.bytes.image as f64 / MB,
        secs,
        r.bytes.image as f64 / MB / secs
    )?;
    Ok(())
}

/// `inspect`: JSON, or a readable summary and the chunk table.
pub fn inspected(
    out: &mut dyn Write,
    o: &OpenedImage,
    json: bool,
    show_keys: bool,
) -> io::Result<()> {
    let m = &o.manifest;
    if json {
        let mut v = m.to_json(show_keys);
        v["digest"] = serde_json::Value::String(o.digest.to_string());
        writeln!(out, "{v:#}")?;
        return Ok(());
    }
    writeln!(out, "digest       {}", o.digest)?;
    writeln!(out, "source       {}", m.source_digest)?;
    writeln!(out, "domain       {}", m.domain)?;
    writeln!(out, "filesystem   {}", m.filesystem)?;
    writeln!(out, "device size  {} bytes", m.device_size)?;
    writeln!(out, "chunk size   {}", m.chunk_size)?;
    writeln!(
        out,
        "chunks       {} ({} holes, {} stored)",
        m.chunks.len(),
        m.hole_count(),
        m.present_count()
    )?;
    writeln!(out, "entrypoint   {:?}", m.config.entrypoint)?;
    writeln!(out, "cmd          {:?}", m.config.cmd)?;
    writeln!(out, "env          {:?}", m.config.env)?;
    writeln!(out, "working dir  {:?}", m.config.working_dir)?;
    writeln!(out, "user         {:?}", m.config.user)?;
    writeln!(out, "sealed size  {} bytes", o.sealed_bytes)?;
    for (i, c) in m.chunks.iter().enumerate() {
        match c {
            ChunkEntry::Hole => {}
            ChunkEntry::Present { id, key } if show_keys => {
                writeln!(out, "{i:>8} {id} {}", key.reveal_hex())?
            }
            ChunkEntry::Present { id, .. } => writeln!(out, "{i:>8} {id}")?,
        }
    }
    Ok(())
}

/// `verify`: every bad chunk by index and id, then a total.
pub fn verified(out: &mut dyn Write, o: &OpenedImage, r: &VerifyReport) -> io::Result<()> {
    for b in &r.bad {
        writeln!(out, "bad chunk {} {}: {}", b.index, b.id, b.problem)?;
    }
    writeln!(
        out,
        "{}: {} chunks checked, {} holes, {} bad",
        o.digest,
        r.checked,
        r.holes,
        r.bad.len()
    )?;
    Ok(())
}

/// `mount --stats`: what passthrough did.
pub fn passthrough(p: &PassthroughStats) -> String {
    format!(
        "passthrough: {} opens passed through, {} served by reads; {} files copied ({} bytes), {} evicted, {} bytes kept",
        p.passthrough_opens,
        p.cached_opens,
        p.materialized_files,
        p.materialized_bytes,
        p.evicted_files,
        p.stored_bytes
    )
}

/// `image ls` as a table: one line per image, digests shortened to 12
/// hex digits (the JSON has them whole).
pub fn image_table(list: &imagefs::images::ImageList) -> String {
    let mut out = format!(
        "{:<19} {:<12} {:>10} {:>10} {:>10} {:<20} TAGS\n",
        "DIGEST", "DOMAIN", "SIZE MB", "STORED MB", "UNIQUE MB", "STORED AT (UTC)"
    );
    for i in &list.images {
        let short = &i.digest[..i.digest.len().min(19)];
        let when = i.stored_at.map_or_else(|| "-".into(), utc);
        let tags = i.tags.join(",");
        match &i.contents {
            Some(c) => out.push_str(&format!(
                "{short:<19} {:<12} {:>10.1} {:>10.1} {:>10.1} {when:<20} {tags}\n",
                c.domain,
                c.device_size as f64 / MB,
                c.stored_bytes as f64 / MB,
                c.unique_bytes as f64 / MB,
            )),
            None => out.push_str(&format!(
                "{short:<19} {:<12} {:>10} {:>10} {:>10} {when:<20} {tags}  ({})\n",
                "?",
                "?",
                "?",
                "?",
                i.unreadable.as_deref().unwrap_or("unreadable"),
            )),
        }
    }
    out
}

/// A gc report as text: one line per object deleted (or to delete), then
/// the totals and what was kept.
pub fn gc_table(r: &imagefs::gc::GcReport) -> String {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let mut out = String::new();
    for i in &r.items {
        out.push_str(&format!(
            "{verb} {:<9} {:>10} {}\n",
            i.kind.as_str(),
            i.bytes,
            i.name
        ));
    }
    let d = &r.deleted;
    out.push_str(&format!(
        "{}: {verb} {} manifests, {} chunks, {} profiles, {} temporary files: {:.1} MB\n",
        r.store,
        d.manifests,
        d.chunks,
        d.profiles,
        d.temporaries,
        d.bytes() as f64 / MB
    ));
    let k = &r.kept;
    out.push_str(&format!(
        "kept: {} tagged and {} untagged manifests, {} chunks ({:.1} MB), {} profiles, \
         {} unreferenced objects younger than the {} s grace\n",
        k.tagged_manifests,
        k.untagged_manifests,
        k.chunks,
        k.chunk_bytes as f64 / MB,
        k.profiles,
        k.young,
        r.grace_secs
    ));
    if r.skipped > 0 {
        out.push_str(&format!(
            "skipped {} objects gone or in use again when their turn came\n",
            r.skipped
        ));
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` in UTC (civil date
/// from a day count, as in Howard Hinnant's `civil_from_days`).
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_796_342_399), "2026-12-03 23:59:59");
    }
}
