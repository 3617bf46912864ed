//! Access traces: the reads a guest made, in order.
//!
//! Two formats are read. `imagefs serve --record-trace` writes JSON lines
//! ([`manifest::trace`], decoded by that module); a file whose first
//! non-blank line that is not a `#` comment starts with `{` is read that
//! way (a committed trace may carry a `#` comment header saying how it was
//! recorded; those leading comment lines are skipped).
//!
//! Text format, one read per line: `OFFSET LEN [anything else]`, where OFFSET
//! and LEN are bytes (decimal or `0x` hex) and fields are separated by
//! whitespace or commas. Blank lines and lines starting with `#` are skipped;
//! extra fields (a timestamp, a request type) are ignored, except that a line
//! whose third field is a write/flush marker (`W`, `write`, `F`, `flush`) is
//! skipped, so a recorded trace of a writable run replays its reads.

use std::path::Path;

use crate::error::{Error, Result};
use crate::probe::TraceEntry;

fn num(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Reads the reads of an `imagefs serve --record-trace` trace.
fn parse_recorded(text: &str, path: &Path) -> Result<Vec<TraceEntry>> {
    let (_, records) = manifest::trace::decode(text.as_bytes()).map_err(|e| Error::Trace {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let bad = |what: &str| Error::Trace {
                path: path.to_path_buf(),
                reason: format!("record {}: {what}", i + 1),
            };
            let len = u32::try_from(r.len).map_err(|_| bad("length over 4 GiB"))?;
            if r.offset % 512 != 0 || len % 512 != 0 || len == 0 {
                return Err(bad(&format!(
                    "offset {} and length {len} must be multiples of 512 (length > 0)",
                    r.offset
                )));
            }
            Ok(TraceEntry {
                offset: r.offset,
                len,
            })
        })
        .collect()
}

/// `text` without its leading blank and `#` comment lines.
fn strip_comment_header(text: &str) -> &str {
    let mut rest = text;
    while let Some(line) = rest.lines().next() {
        let t = line.trim();
        if !(t.is_empty() || t.starts_with('#')) {
            break;
        }
        rest = rest.split_once('\n').map_or("", |(_, after)| after);
    }
    rest
}

/// Parses trace text; `path` only names the source in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<TraceEntry>> {
    let body = strip_comment_header(text);
    if body.trim_start().starts_with('{') {
        let out = parse_recorded(body, path)?;
        if out.is_empty() {
            return Err(Error::Trace {
                path: path.to_path_buf(),
                reason: "no reads in the trace".into(),
            });
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|f| !f.is_empty())
            .collect();
        if fields.len() < 2 {
            return Err(Error::Trace {
                path: path.to_path_buf(),
                reason: format!("line {}: want OFFSET LEN, got {line:?}", i + 1),
            });
        }
        if fields.len() >= 3
            && matches!(
                fields[2].to_ascii_lowercase().as_str(),
                "w" | "write" | "f" | "flush"
            )
        {
            continue;
        }
        let bad = |what: &str| Error::Trace {
            path: path.to_path_buf(),
            reason: format!("line {}: {what} in {line:?}", i + 1),
        };
        let offset = num(fields[0]).ok_or_else(|| bad("bad offset"))?;
        let len = num(fields[1]).ok_or_else(|| bad("bad length"))?;
        let len = u32::try_from(len).map_err(|_| bad("length over 4 GiB"))?;
        if offset % 512 != 0 || len % 512 != 0 || len == 0 {
            return Err(bad(
                "offset and length must be multiples of 512 (length > 0)",
            ));
        }
        out.push(TraceEntry { offset, len });
    }
    if out.is_empty() {
        return Err(Error::Trace {
            path: path.to_path_buf(),
            reason: "no reads in the trace".into(),
        });
    }
    Ok(out)
}

/// Reads and parses a trace file.
pub fn load(path: &Path) -> Result<Vec<TraceEntry>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Writes a trace in the text format.
pub fn format(trace: &[TraceEntry]) -> String {
    let mut s = String::from("# offset len (bytes)\n");
    for e in trace {
        s.push_str(&format!("{} {}\n", e.offset, e.len));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("t");
        let t = parse("# c\n0 4096\n0x1000,512, 17.5\n8192 512 W\n", p).unwrap();
        assert_eq!(
            t,
            vec![
                TraceEntry {
                    offset: 0,
                    len: 4096
                },
                TraceEntry {
                    offset: 4096,
                    len: 512
                }
            ]
        );
        assert!(
            parse("1 512\n", p)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(parse("0\n", p).is_err());
        assert!(parse("# nothing\n", p).is_err());
        assert!(
            parse("0 zz\n", p)
                .unwrap_err()
                .to_string()
                .contains("bad length")
        );
    }

    #[test]
    fn loads_the_testdata_traces() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let recorded = load(&dir.join("python-import-json-sqlite3.serve.trace")).unwrap();
        let qemu = load(&dir.join("python-import-json-sqlite3.trace")).unwrap();
        let node = load(&dir.join("node-require-http-crypto.serve.trace")).unwrap();
        assert!(!recorded.is_empty() && !qemu.is_empty());
        assert_eq!(node.len(), 526);
        assert_eq!(
            recorded[0],
            TraceEntry {
                offset: 0,
                len: 4096
            }
        );
    }

    #[test]
    fn parses_recorded_json_lines() {
        let p = Path::new("t.jsonl");
        let text = concat!(
            r#"{"format":"imagefs-trace","version":1,"image":"sha256:00","device_size":1048576,"started_unix_ns":1}"#,
            "\n",
            r#"{"t_ns":5,"queue":0,"offset":4096,"len":512}"#,
            "\n",
            r#"{"t_ns":9,"queue":0,"offset":0,"len":1024}"#,
            "\n"
        );
        let t = parse(text, p).unwrap();
        let commented = format!("# how it was made\n#\n\n{text}");
        assert_eq!(parse(&commented, p).unwrap(), t);
        assert_eq!(
            t,
            vec![
                TraceEntry {
                    offset: 4096,
                    len: 512
                },
                TraceEntry {
                    offset: 0,
                    len: 1024
                }
            ]
        );
        let header = text.lines().next().unwrap();
        let bad = format!(
            "{header}\n{}\n",
            r#"{"t_ns":5,"queue":0,"offset":4097,"len":512}"#
        );
        assert!(parse(&bad, p).unwrap_err().to_string().contains("record 1"));
        let other = r#"{"format":"something-else"}"#;
        assert!(parse(other, p).is_err());
    }
}
