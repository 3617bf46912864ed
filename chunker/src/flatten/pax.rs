//! PAX extended headers read by their length prefixes.
//!
//! A PAX record is `LEN KEY=VALUE\n` where LEN counts the whole record, so a
//! value may hold any byte, newlines included (binary xattrs such as
//! `security.capability` often do). The `tar` crate (0.4) splits records
//! on newlines instead and rejects such values, so the layer reader keeps
//! a copy of the bytes between one entry's data and the next entry's
//! header ([`Recorder`]) and, when the crate's parse fails, reads the
//! records from that copy ([`records_before`]).

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// At most this many bytes of extension headers are kept per entry.
const KEEP_LIMIT: usize = 16 << 20;
const BLOCK: u64 = 512;

#[derive(Debug, Default)]
struct Kept {
    /// Absolute stream offset of `bytes[0]`.
    from: u64,
    bytes: Vec<u8>,
    overflow: bool,
    /// Set once the entry's header has been read: its data is not kept.
    frozen: bool,
}

/// The shared view of what a [`Recorder`] kept.
#[derive(Clone, Debug, Default)]
pub struct Recorded(Rc<RefCell<Kept>>);

impl Recorded {
    /// Keep the bytes from absolute offset `from` on (the next header).
    pub fn keep_from(&self, from: u64) {
        let mut k = self.0.borrow_mut();
        k.from = from;
        k.bytes.clear();
        k.overflow = false;
        k.frozen = false;
    }

    /// Stop keeping bytes (the entry's header has been read); what was
    /// kept stays for [`records_before`].
    pub fn freeze(&self) {
        self.0.borrow_mut().frozen = true;
    }
}

/// A reader that tracks its stream offset and keeps the bytes from a set
/// offset on, up to a limit.
#[derive(Debug)]
pub struct Recorder<R> {
    inner: R,
    pos: u64,
    kept: Recorded,
}

impl<R: Read> Recorder<R> {
    /// Wrap `inner`; `kept` is where the bytes go.
    pub fn new(inner: R, kept: Recorded) -> Self {
        Recorder {
            inner,
            pos: 0,
            kept,
        }
    }
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.pos;
        self.pos += n as u64;
        let mut k = self.kept.0.borrow_mut();
        if self.pos > k.from && !k.overflow && !k.frozen {
            let skip = k.from.saturating_sub(start) as usize;
            let take = &buf[skip..n];
            if k.bytes.len() + take.len() > KEEP_LIMIT {
                k.overflow = true;
                k.bytes = Vec::new();
            } else {
                k.bytes.extend_from_slice(take);
            }
        }
        Ok(n)
    }
}

fn octal_or_binary(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian, top bit of the first byte is the flag.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The PAX records of the extended header(s) that precede the entry whose
/// header is at absolute offset `header_at`, found in what `kept` holds
/// (which must start at the first header after the previous entry's data).
/// `None` when the bytes are not all there or do not parse.
pub fn records_before(kept: &Recorded, header_at: u64) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let k = kept.0.borrow();
    if k.overflow || header_at < k.from {
        return None;
    }
    let end = usize::try_from(header_at - k.from).ok()?;
    let bytes = k.bytes.get(..end)?;
    let mut at = 0usize;
    let mut records = None;
    while at < end {
        let header = bytes.get(at..at + BLOCK as usize)?;
        let size = usize::try_from(octal_or_binary(&header[124..136])?).ok()?;
        let data = bytes.get(at + BLOCK as usize..at + BLOCK as usize + size)?;
        if header[156] == b'x' {
            records = Some(parse_records(data)?);
        }
        at += BLOCK as usize + size.next_multiple_of(BLOCK as usize);
    }
    (at == end).then_some(records?)
}

/// Split PAX data into `(key, value)` pairs by the records' length prefixes.
pub fn parse_records(mut data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=')?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_may_hold_newlines() {
        let data = b"31 SCHILY.xattr.user.nl=a\nb=c\n\n12 path=abc\n";
        let r = parse_records(data).unwrap();
        assert_eq!(
            r[0],
            (b"SCHILY.xattr.user.nl".to_vec(), b"a\nb=c\n".to_vec())
        );
        assert_eq!(r[1], (b"path".to_vec(), b"abc".to_vec()));
        assert!(parse_records(b"99 path=abc\n").is_none());
        assert!(parse_records(b"11 path=abc").is_none());
        assert!(parse_records(b"x path=abc\n").is_none());
    }

    #[test]
    fn recorder_keeps_from_an_offset() {
        let kept = Recorded::default();
        kept.keep_from(3);
        let mut r = Recorder::new(&b"0123456789"[..], kept.clone());
        let mut buf = [0u8; 4];
        r.read_exact(&mut buf).unwrap();
        r.read_exact(&mut buf).unwrap();
        assert_eq!(kept.0.borrow().bytes, b"34567");
        kept.freeze();
        r.read_exact(&mut buf[..2]).unwrap();
        assert_eq!(kept.0.borrow().bytes, b"34567");
    }
}
