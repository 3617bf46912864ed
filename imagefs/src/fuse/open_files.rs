//! Open regular files, shared between the tree thread (which opens them)
//! and the FUSE threads (which read them): a read needs only the file's
//! extent map and the byte source, so it runs on the FUSE thread that took
//! the request, without a hop to the tree thread, and several run at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use fuser::Errno;

use crate::device::BlockDevice;
use crate::error_chain;
use crate::ext4::FileMap;

/// One open file.
#[derive(Debug)]
pub(crate) struct OpenFile {
    /// Where its bytes are.
    pub map: FileMap,
    /// Its path, for the log line of a failed read.
    pub path: String,
}

/// The open files by handle.
#[derive(Debug, Default, Clone)]
pub(crate) struct OpenFiles(Arc<Mutex<HashMap<u64, Arc<OpenFile>>>>);

impl OpenFiles {
    pub(crate) fn insert(&self, fh: u64, file: OpenFile) {
        self.lock().insert(fh, Arc::new(file));
    }

    pub(crate) fn remove(&self, fh: u64) {
        self.lock().remove(&fh);
    }

    pub(crate) fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.lock().get(&fh).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<OpenFile>>> {
        // The map stays consistent whatever a panicking holder was doing:
        // every change is one insert or remove.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to `size` bytes of open file `fh` at `offset` (fewer at the
    /// end), handed to `reply`; a source error is `EIO` and a log line
    /// naming the file. The bytes live in a buffer the thread reuses.
    pub(crate) fn read<R>(
        &self,
        source: &dyn BlockDevice,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(Result<&[u8], Errno>) -> R,
    ) -> R {
        let Some(file) = self.get(fh) else {
            return reply(Err(Errno::EBADF));
        };
        let len = file.map.size();
        if offset >= len {
            return reply(Ok(&[]));
        }
        let want = (len - offset).min(u64::from(size)) as usize;
        BUFFER.with_borrow_mut(|buf| {
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let buf = &mut buf[..want];
            match file.map.read_at(source, buf, offset) {
                Ok(()) => reply(Ok(buf)),
                Err(e) => {
                    eprintln!(
                        "imagefs: reading at offset {offset} of {}: {}",
                        file.path,
                        error_chain(&e)
                    );
                    reply(Err(Errno::EIO))
                }
            }
        })
    }
}

thread_local! {
    /// Each FUSE thread's read buffer (up to the largest request, 1 MiB
    /// with the kernel's default `max_pages`).
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}
