//! PAX extended headers read by their length prefixes.
//!
//! A PAX record is `LEN KEY=VALUE\n` where LEN counts the whole record, so a
//! value may hold any byte, newlines included (binary xattrs such as
//! `security.capability` often do). The `tar` crate (0.4) splits records
//! on newlines instead and rejects such values, so the layer reader
//! ([`super::tarstream`]) reads them here.

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
}
