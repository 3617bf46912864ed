//! Reads of regular files, by their extent maps: a read needs only the
//! file's map and the block device, so it runs on the FUSE thread that
//! took the request, and several run at once.

use std::cell::RefCell;

use fuser::Errno;

use crate::device::BlockDevice;
use crate::error_chain;
use crate::ext4::FileMap;

/// Up to `size` bytes of the file mapped by `map` at `offset` (fewer at
/// the end), handed to `reply`; a device error is `EIO` and a log line
/// naming the file (`path` says how). The bytes live in a buffer the
/// thread reuses.
pub(crate) fn read<R>(
    source: &dyn BlockDevice,
    map: &FileMap,
    path: impl FnOnce() -> String,
    offset: u64,
    size: u32,
    reply: impl FnOnce(Result<&[u8], Errno>) -> R,
) -> R {
    let len = map.size();
    if offset >= len {
        return reply(Ok(&[]));
    }
    let want = (len - offset).min(u64::from(size)) as usize;
    BUFFER.with_borrow_mut(|buf| {
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let buf = &mut buf[..want];
        match map.read_at(source, buf, offset) {
            Ok(()) => reply(Ok(buf)),
            Err(e) => {
                tracing::warn!(
                    "reading at offset {offset} of {}: {}",
                    path(),
                    error_chain(&e)
                );
                reply(Err(Errno::EIO))
            }
        }
    })
}

thread_local! {
    /// Each FUSE thread's read buffer (up to the largest request, 1 MiB
    /// with the kernel's default `max_pages`).
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}
