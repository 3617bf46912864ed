//! A minimal tar writer with full control over every header byte.
//!
//! The `tar` crate refuses to write some of the things the tests need
//! (`..` components, absolute names) and decides on its own when to use
//! extensions; this writer does exactly what it is told: ustar headers,
//! PAX extended headers (`x`) and GNU long name / long link records
//! (`L` / `K`).

use std::io::{self, Read, Write};

/// Largest value a 7-digit octal field (uid, gid, mode, dev numbers) holds.
pub const MAX_OCTAL7: u64 = 0o7777777;
/// Largest value an 11-digit octal field (size, mtime) holds.
pub const MAX_OCTAL11: u64 = 0o77777777777;

/// One ustar header's fields; names are raw bytes and must fit (≤ 100).
#[derive(Clone, Debug, Default)]
pub struct RawHeader {
    /// `name` field (≤ 100 bytes).
    pub name: Vec<u8>,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// uid field (0 when it does not fit; a PAX record carries it).
    pub uid: u64,
    /// gid field.
    pub gid: u64,
    /// Data size in bytes.
    pub size: u64,
    /// Whole-second mtime.
    pub mtime: u64,
    /// Type flag (`b'0'`, `b'5'`, `b'x'`, `b'L'`…).
    pub typeflag: u8,
    /// `linkname` field (≤ 100 bytes).
    pub linkname: Vec<u8>,
    /// Device major.
    pub devmajor: u32,
    /// Device minor.
    pub devminor: u32,
    /// GNU magic (`ustar  \0`) instead of POSIX (`ustar\000`).
    pub gnu: bool,
    /// ustar `prefix` field (≤ 155 bytes; POSIX headers only).
    pub prefix: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    assert!(
        s.len() == digits,
        "value {value} does not fit a {digits}-digit octal field"
    );
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

impl RawHeader {
    /// Serializes the header with its checksum.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut h = [0u8; 512];
        assert!(self.name.len() <= 100 && self.linkname.len() <= 100);
        h[..self.name.len()].copy_from_slice(&self.name);
        octal(&mut h[100..108], u64::from(self.mode));
        octal(&mut h[108..116], self.uid);
        octal(&mut h[116..124], self.gid);
        octal(&mut h[124..136], self.size);
        octal(&mut h[136..148], self.mtime);
        h[156] = self.typeflag;
        h[157..157 + self.linkname.len()].copy_from_slice(&self.linkname);
        if self.gnu {
            h[257..265].copy_from_slice(b"ustar  \0");
        } else {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
        }
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        octal(&mut h[329..337], u64::from(self.devmajor));
        octal(&mut h[337..345], u64::from(self.devminor));
        assert!(self.prefix.len() <= 155 && (self.prefix.is_empty() || !self.gnu));
        h[345..345 + self.prefix.len()].copy_from_slice(&self.prefix);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }
}

/// One PAX record `"<len> key=value\n"`, where len counts the whole record.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), len);
    r
}

/// Writes tar entries to `W`, padding data to 512-byte blocks.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Writes a header and then exactly `header.size` bytes from `data`.
    pub fn entry(&mut self, header: &RawHeader, data: impl Read) -> io::Result<()> {
        self.out.write_all(&header.to_bytes())?;
        let n = io::copy(&mut data.take(header.size), &mut self.out)?;
        if n != header.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "entry data shorter than its size",
            ));
        }
        self.pad(n)
    }

    fn pad(&mut self, n: u64) -> io::Result<()> {
        let rem = (n % 512) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// A PAX extended header (type `x`) applying to the next entry.
    pub fn pax(&mut self, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(pax_record(k, v));
        }
        let h = RawHeader {
            name: b"././@PaxHeader".to_vec(),
            mode: 0o644,
            size: body.len() as u64,
            typeflag: b'x',
            ..RawHeader::default()
        };
        self.entry(&h, &body[..])
    }

    /// A GNU long name (`L`) or long link (`K`) record for the next entry.
    pub fn gnu_long(&mut self, typeflag: u8, name: &[u8]) -> io::Result<()> {
        let mut body = name.to_vec();
        body.push(0);
        let h = RawHeader {
            name: b"././@LongLink".to_vec(),
            mode: 0o644,
            size: body.len() as u64,
            typeflag,
            gnu: true,
            ..RawHeader::default()
        };
        self.entry(&h, &body[..])
    }

    /// Writes the two zero blocks that end an archive and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// The sink, without writing the end-of-archive marker.
    pub fn into_inner(self) -> W {
        self.out
    }
}
