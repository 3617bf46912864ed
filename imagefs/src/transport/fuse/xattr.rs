//! `getxattr` and `listxattr` answers from an inode's decoded xattrs,
//! following the kernel's rules for both calls: a size of 0 asks for the
//! size, a buffer too small is `ERANGE`, a missing name is `ENODATA`.
//!
//! Only what Linux's ext4 shows is shown (see
//! [`Xattr::shown_by_linux`]), and `trusted.` names are listed only to
//! root, as ext4 lists them only to `CAP_SYS_ADMIN`.

use fuser::Errno;

use crate::ext4::Xattr;

/// The trusted namespace's index.
const TRUSTED: u8 = 4;

/// What to send back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XattrReply {
    /// The size the answer needs (the caller passed size 0).
    Size(u32),
    /// The answer.
    Data(Vec<u8>),
}

fn visible(x: &Xattr, privileged: bool) -> bool {
    x.shown_by_linux() && (privileged || x.index != TRUSTED)
}

/// `bytes` for a caller whose buffer holds `size` bytes.
fn sized(bytes: &[u8], size: u32) -> Result<XattrReply, Errno> {
    let len = u32::try_from(bytes.len()).map_err(|_| Errno::E2BIG)?;
    if size == 0 {
        Ok(XattrReply::Size(len))
    } else if len > size {
        Err(Errno::ERANGE)
    } else {
        Ok(XattrReply::Data(bytes.to_vec()))
    }
}

/// The answer to `getxattr(name)` with a buffer of `size` bytes. The
/// first match wins: the in-inode attributes come first, as the kernel
/// looks there first.
pub(crate) fn get(
    attrs: &[Xattr],
    name: &[u8],
    size: u32,
    privileged: bool,
) -> Result<XattrReply, Errno> {
    let x = attrs
        .iter()
        .find(|x| x.name == name && visible(x, privileged))
        .ok_or(Errno::NO_XATTR)?;
    sized(&x.value, size)
}

/// The answer to `listxattr` with a buffer of `size` bytes: the names,
/// each ending in a NUL byte.
pub(crate) fn list(attrs: &[Xattr], size: u32, privileged: bool) -> Result<XattrReply, Errno> {
    let mut names = Vec::new();
    for x in attrs.iter().filter(|x| visible(x, privileged)) {
        names.extend_from_slice(&x.name);
        names.push(0);
    }
    sized(&names, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(index: u8, name: &str, value: &[u8]) -> Xattr {
        Xattr {
            index,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
        }
    }

    fn attrs() -> Vec<Xattr> {
        vec![
            x(1, "user.a", b"1\n2"),
            x(4, "trusted.t", b"tt"),
            x(7, "system.data", b""),
            x(6, "security.capability", b"cap"),
            x(1, "user.a", b"second"),
        ]
    }

    #[test]
    fn get_sizes_ranges_and_missing_names() {
        let a = attrs();
        assert_eq!(get(&a, b"user.a", 0, true), Ok(XattrReply::Size(3)));
        assert_eq!(
            get(&a, b"user.a", 3, true),
            Ok(XattrReply::Data(b"1\n2".to_vec()))
        );
        assert_eq!(
            get(&a, b"user.a", 100, false),
            Ok(XattrReply::Data(b"1\n2".to_vec()))
        );
        assert_eq!(get(&a, b"user.a", 2, true), Err(Errno::ERANGE));
        assert_eq!(get(&a, b"user.b", 0, true), Err(Errno::NO_XATTR));
        assert_eq!(get(&a, b"system.data", 0, true), Err(Errno::NO_XATTR));
        assert_eq!(
            get(&a, b"trusted.t", 10, true),
            Ok(XattrReply::Data(b"tt".to_vec()))
        );
        assert_eq!(get(&a, b"trusted.t", 10, false), Err(Errno::NO_XATTR));
    }

    #[test]
    fn list_sizes_and_ranges() {
        let a = attrs();
        let all = b"user.a\0trusted.t\0security.capability\0user.a\0".to_vec();
        let n = all.len() as u32;
        assert_eq!(list(&a, 0, true), Ok(XattrReply::Size(n)));
        assert_eq!(list(&a, n, true), Ok(XattrReply::Data(all)));
        assert_eq!(list(&a, n - 1, true), Err(Errno::ERANGE));
        assert_eq!(
            list(&a, 1000, false),
            Ok(XattrReply::Data(
                b"user.a\0security.capability\0user.a\0".to_vec()
            ))
        );
        assert_eq!(list(&[], 0, true), Ok(XattrReply::Size(0)));
        assert_eq!(list(&[], 10, true), Ok(XattrReply::Data(Vec::new())));
    }
}
