//! Buffers of one size, reused.

use std::sync::Mutex;

/// Blocks handed back, for the next ones to fill: a read-ahead pipe's
/// reader takes from it and the flattener gives back, a registry download
/// and its reader likewise, so blocks are not allocated (and zeroed)
/// again for each. Holds at most `cap` blocks.
#[derive(Debug)]
pub(crate) struct BlockPool {
    block: usize,
    cap: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl BlockPool {
    pub(crate) fn new(block: usize, cap: usize) -> Self {
        BlockPool {
            block,
            cap,
            free: Mutex::new(Vec::new()),
        }
    }

    /// A block of the block size.
    pub(crate) fn get(&self) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        reused.unwrap_or_else(|| vec![0; self.block])
    }

    /// Gives `block` back (dropped if the pool is full or it is not a
    /// whole block).
    pub(crate) fn put(&self, block: Vec<u8>) {
        if block.len() != self.block {
            return;
        }
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.cap
        {
            free.push(block);
        }
    }
}
