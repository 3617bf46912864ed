//! One tar entry, read into what the tree needs: a checked path, what kind
//! of change it is, and its attributes (with PAX records applied).
//!
//! Pure functions over header bytes and PAX records, so each rule is tested
//! on its own.

use std::collections::BTreeMap;
use std::io;

use super::limits::Limits;
use super::sparse::PaxSparse;
use crate::tree::{Metadata, Timestamp, TreeError};

/// The whiteout prefix: `.wh.NAME` hides `NAME` of lower layers.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque marker: its directory hides all lower-layer children.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Names starting with this are whiteout metadata (AUFS), not whiteouts.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// What is wrong with one entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The path is absolute.
    #[error("the path is absolute")]
    AbsolutePath,
    /// The path has a `..` component.
    #[error("the path leaves the root (it has a `..` component)")]
    PathEscapes,
    /// A whiteout names `.` or `..` or nothing.
    #[error("the whiteout names no valid entry")]
    BadWhiteout,
    /// A hard link target is absolute or has a `..` component.
    #[error("hard link target {target:?} leaves the root")]
    LinkEscapes {
        /// The target as written.
        target: String,
    },
    /// Resolving the path's symlinked parents went round in circles.
    #[error("too many levels of symbolic links in the path")]
    SymlinkLoop,
    /// A link entry without a target.
    #[error("the link has no target")]
    NoLinkTarget,
    /// A tar entry type we do not know how to flatten.
    #[error("unsupported tar entry type {0:?}")]
    UnknownType(char),
    /// A header field cannot be parsed.
    #[error("bad header field")]
    Header(#[source] io::Error),
    /// A PAX record cannot be parsed.
    #[error("bad PAX record {key}={value:?}")]
    Pax {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A GNU sparse file whose map is malformed.
    #[error("bad sparse file map: {reason}")]
    BadSparse {
        /// What is wrong.
        reason: String,
    },
    /// A path (the entry's, a link target, or where symlinks lead) is
    /// longer than [`Limits::max_path_bytes`](super::Limits).
    #[error("path of {bytes} bytes is over the limit of {limit}")]
    PathTooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A path has more components than [`Limits::max_depth`](super::Limits).
    #[error("path of {depth} components is over the limit of {limit}")]
    PathTooDeep {
        /// Its components.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// An extension header (PAX, GNU long name or link, sparse map) is
    /// larger than [`Limits::max_header_bytes`](super::Limits); it was not
    /// read.
    #[error("'{kind}' extension header of {bytes} bytes is over the limit of {limit}")]
    HeaderTooLarge {
        /// The header's type flag.
        kind: char,
        /// Its size field (or the extension bytes so far).
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A sparse file's real size is past ext4's largest file.
    #[error("sparse file of {size} bytes is larger than ext4's largest file ({limit} bytes)")]
    SparseTooLarge {
        /// Its real size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The layer or the image reached its uncompressed byte limit.
    #[error(transparent)]
    TooLarge(#[from] crate::oci::LimitExceeded),
    /// The tree refused the change.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Streaming the file's data into the image failed.
    #[error("cannot copy the file data")]
    Data(#[source] io::Error),
}

/// A path inside the image: components, none empty, `.` or `..`.
pub type Components = Vec<Vec<u8>>;

/// Normalize an entry path: strip `./`, drop empty and `.` components, and
/// refuse absolute paths and `..` (the spec forbids both; refusing is what
/// keeps a layer inside the root). The empty list is the root itself.
pub fn normalize_path(path: &[u8]) -> Result<Components, EntryError> {
    if path.first() == Some(&b'/') {
        return Err(EntryError::AbsolutePath);
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(EntryError::PathEscapes),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Check a path against the limits: `raw` as written (or as resolved)
/// and its components.
pub fn check_path(raw_len: usize, comps: &[Vec<u8>], limits: &Limits) -> Result<(), EntryError> {
    if raw_len > limits.max_path_bytes {
        return Err(EntryError::PathTooLong {
            bytes: raw_len,
            limit: limits.max_path_bytes,
        });
    }
    if comps.len() > limits.max_depth {
        return Err(EntryError::PathTooDeep {
            depth: comps.len(),
            limit: limits.max_depth,
        });
    }
    Ok(())
}

/// Bytes of a path written with `/` between its components.
pub fn path_len(comps: &[Vec<u8>]) -> usize {
    comps
        .iter()
        .map(|c| c.len() + 1)
        .sum::<usize>()
        .saturating_sub(1)
}

/// What an entry does to the tree.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Add or replace the entry at this path.
    Put,
    /// Remove `name` from the parent directory (lower layers only).
    Whiteout(&'a [u8]),
    /// Hide the parent directory's lower-layer children.
    Opaque,
    /// Whiteout metadata that carries no change (`.wh..wh.plnk` and such).
    Ignore,
}

/// Classify by the last component of a normalized path.
pub fn classify(path: &Components) -> Result<Change<'_>, EntryError> {
    let Some(name) = path.last() else {
        return Ok(Change::Put);
    };
    if name.as_slice() == OPAQUE_MARKER {
        return Ok(Change::Opaque);
    }
    if name.starts_with(WHITEOUT_META_PREFIX) {
        return Ok(Change::Ignore);
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        Some(b"" | b"." | b"..") => Err(EntryError::BadWhiteout),
        Some(hidden) => Ok(Change::Whiteout(hidden)),
        None => Ok(Change::Put),
    }
}

/// The PAX records of one entry that change its attributes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PaxAttrs {
    /// `mtime`, with its sub-second part.
    pub mtime: Option<Timestamp>,
    /// `uid`.
    pub uid: Option<u32>,
    /// `gid`.
    pub gid: Option<u32>,
    /// `SCHILY.xattr.NAME` records.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `GNU.sparse.*` records: the entry is a sparse file in PAX form.
    pub sparse: Option<PaxSparse>,
}

fn pax_error(key: &[u8], value: &[u8]) -> EntryError {
    EntryError::Pax {
        key: String::from_utf8_lossy(key).into_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
    }
}

/// Collect the attribute records from `(key, value)` pairs.
pub fn pax_attrs<'a>(
    records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<PaxAttrs, EntryError> {
    let mut out = PaxAttrs::default();
    for (key, value) in records {
        let id = |v: &[u8]| -> Result<u32, EntryError> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| pax_error(key, v))
        };
        match key {
            b"mtime" => {
                out.mtime = Some(parse_pax_time(value).ok_or_else(|| pax_error(key, value))?)
            }
            b"uid" => out.uid = Some(id(value)?),
            b"gid" => out.gid = Some(id(value)?),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    out.xattrs.insert(name.to_vec(), value.to_vec());
                } else if key.starts_with(b"GNU.sparse.") {
                    out.sparse.get_or_insert_default().record(key, value)?;
                }
            }
        }
    }
    Ok(out)
}

/// Parse a PAX time: decimal seconds, optionally negative, optionally with
/// a fraction. The value is the decimal number, as Go's archive/tar reads
/// it: `-1.5` is one and a half seconds before the epoch, stored as
/// `secs = -2, nanos = 500_000_000`.
pub fn parse_pax_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    // Digits past nanoseconds are dropped (truncation, as Go does).
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + d;
    }
    if !negative {
        return Some(Timestamp { secs, nanos });
    }
    if nanos == 0 {
        Some(Timestamp {
            secs: secs.checked_neg()?,
            nanos: 0,
        })
    } else {
        Some(Timestamp {
            secs: secs.checked_neg()?.checked_sub(1)?,
            nanos: 1_000_000_000 - nanos,
        })
    }
}

/// The header's mtime, including the negative values GNU tar stores in
/// base-256 (which the tar crate's `mtime()` cannot return).
pub fn header_mtime(h: &tar::Header) -> Result<i64, EntryError> {
    let raw = &h.as_old().mtime;
    if raw[0] == 0xff {
        // Base-256, negative: a two's complement big-endian number.
        if raw[1..4].iter().any(|&b| b != 0xff) {
            return Err(EntryError::Header(io::Error::other("mtime out of range")));
        }
        let mut be = [0u8; 8];
        be.copy_from_slice(&raw[4..12]);
        return Ok(i64::from_be_bytes(be));
    }
    let m = h.mtime().map_err(EntryError::Header)?;
    i64::try_from(m).map_err(|_| EntryError::Header(io::Error::other("mtime out of range")))
}

/// An entry's attributes: header fields, overridden by PAX records.
pub fn metadata(h: &tar::Header, pax: &PaxAttrs) -> Result<Metadata, EntryError> {
    let mode = (h.mode().map_err(EntryError::Header)? & 0o7777) as u16;
    let uid = match pax.uid {
        Some(u) => u,
        None => id_field(h.uid())?,
    };
    let gid = match pax.gid {
        Some(g) => g,
        None => id_field(h.gid())?,
    };
    let mtime = match pax.mtime {
        Some(t) => t,
        None => Timestamp {
            secs: header_mtime(h)?,
            nanos: 0,
        },
    };
    Ok(Metadata {
        mode,
        uid,
        gid,
        mtime,
        xattrs: pax.xattrs.clone(),
    })
}

fn id_field(v: io::Result<u64>) -> Result<u32, EntryError> {
    let v = v.map_err(EntryError::Header)?;
    u32::try_from(v).map_err(|_| EntryError::Header(io::Error::other("uid or gid above 2^32")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(s: &str) -> Components {
        normalize_path(s.as_bytes()).unwrap()
    }

    #[test]
    fn paths_are_normalized_and_escapes_refused() {
        assert_eq!(comps("./usr/bin/"), [b"usr".to_vec(), b"bin".to_vec()]);
        assert_eq!(comps("usr//./bin"), [b"usr".to_vec(), b"bin".to_vec()]);
        assert!(comps("./").is_empty());
        assert!(comps(".").is_empty());
        assert!(matches!(
            normalize_path(b"/etc/passwd"),
            Err(EntryError::AbsolutePath)
        ));
        assert!(matches!(
            normalize_path(b"a/../../x"),
            Err(EntryError::PathEscapes)
        ));
        assert!(matches!(
            normalize_path(b"../x"),
            Err(EntryError::PathEscapes)
        ));
        // A name that merely starts with dots is fine.
        assert_eq!(comps("a/..b"), [b"a".to_vec(), b"..b".to_vec()]);
    }

    #[test]
    fn whiteouts_are_classified() {
        assert_eq!(classify(&comps("a/.wh.b")).unwrap(), Change::Whiteout(b"b"));
        assert_eq!(classify(&comps("a/.wh..wh..opq")).unwrap(), Change::Opaque);
        assert_eq!(classify(&comps(".wh..wh.plnk")).unwrap(), Change::Ignore);
        assert_eq!(classify(&comps("a/b.wh.c")).unwrap(), Change::Put);
        assert_eq!(classify(&comps("./")).unwrap(), Change::Put);
        assert!(matches!(
            classify(&comps("a/.wh...")),
            Err(EntryError::BadWhiteout)
        ));
        assert!(matches!(
            classify(&comps("a/.wh.")),
            Err(EntryError::BadWhiteout)
        ));
    }

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes());
        assert_eq!(
            t("1700000000"),
            Some(Timestamp {
                secs: 1_700_000_000,
                nanos: 0
            })
        );
        assert_eq!(
            t("1.5"),
            Some(Timestamp {
                secs: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            t("1.123456789123"),
            Some(Timestamp {
                secs: 1,
                nanos: 123_456_789
            })
        );
        assert_eq!(
            t("-1.5"),
            Some(Timestamp {
                secs: -2,
                nanos: 500_000_000
            })
        );
        assert_eq!(t("-7"), Some(Timestamp { secs: -7, nanos: 0 }));
        assert_eq!(t("0.000000001"), Some(Timestamp { secs: 0, nanos: 1 }));
        for bad in ["", "x", "1.x", "--1", ".5", "1e9"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn pax_records_override() {
        let recs: Vec<(&[u8], &[u8])> = vec![
            (b"uid", b"4000000000"),
            (b"gid", b"70000"),
            (b"mtime", b"12.25"),
            (b"SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
            (b"SCHILY.xattr.user.k", b"v"),
            (b"atime", b"1"),
        ];
        let a = pax_attrs(recs).unwrap();
        assert_eq!(a.uid, Some(4_000_000_000));
        assert_eq!(a.gid, Some(70000));
        assert_eq!(
            a.mtime,
            Some(Timestamp {
                secs: 12,
                nanos: 250_000_000
            })
        );
        assert_eq!(a.xattrs.len(), 2);
        assert_eq!(
            a.xattrs[&b"security.capability".to_vec()],
            b"\x01\x00\x00\x02"
        );
        assert!(a.sparse.is_none());
        assert!(pax_attrs(vec![(&b"uid"[..], &b"-1"[..])]).is_err());

        let mut h = tar::Header::new_gnu();
        h.set_mode(0o104755);
        h.set_uid(5);
        h.set_gid(6);
        h.set_mtime(99);
        let m = metadata(&h, &a).unwrap();
        assert_eq!((m.mode, m.uid, m.gid), (0o4755, 4_000_000_000, 70000));
        assert_eq!(m.mtime.secs, 12);
        let m = metadata(&h, &PaxAttrs::default()).unwrap();
        assert_eq!((m.uid, m.gid, m.mtime.secs), (5, 6, 99));
    }

    #[test]
    fn negative_base256_mtime() {
        let mut h = tar::Header::new_gnu();
        let raw = &mut h.as_old_mut().mtime;
        raw.fill(0xff);
        raw[11] = 0xfe; // -2
        assert_eq!(header_mtime(&h).unwrap(), -2);
        h.set_mtime(1234);
        assert_eq!(header_mtime(&h).unwrap(), 1234);
    }
}
