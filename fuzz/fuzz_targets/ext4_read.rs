//! The ext4 reader on mutated images: open, walk the tree, read files,
//! symlinks and xattrs under a work bound (`imagefs::ext4::fuzzing`).
//! No single allocation may be larger than the input allows.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;

/// The largest allocation allowed for the current input.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Aborts (a crash for libFuzzer) on an allocation over [`LIMIT`].
/// Unwinding out of an allocator is not allowed, hence no panic.
fn check(size: usize) {
    let limit = LIMIT.load(Ordering::Relaxed);
    if size > limit {
        // Lifted first, so that printing may allocate.
        LIMIT.store(usize::MAX, Ordering::Relaxed);
        eprintln!("ext4_read: an allocation of {size} bytes (limit {limit} for this input)");
        std::process::abort();
    }
}

/// The system allocator, refusing (aborting on) one allocation over
/// [`LIMIT`]: a reader that sizes a buffer from a corrupt field shows up
/// as a crash, not as a slow run under the RSS limit.
struct Capped;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is a size check before it.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: `ptr` and `layout` are the caller's, as System requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

fuzz_target!(|data: &[u8]| {
    // The image itself, plus room for the reader's caches and buffers.
    let limit = data.len().saturating_mul(4).saturating_add(16 << 20);
    let image = data.to_vec();
    LIMIT.store(limit, Ordering::Relaxed);
    let _ = imagefs::ext4::fuzzing::walk(image);
    LIMIT.store(usize::MAX, Ordering::Relaxed);
});
