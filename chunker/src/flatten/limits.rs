//! Caps on what a layer may ask of the flattener, so that a hostile layer
//! ends in a clear error instead of exhausting memory, time or the stack.
//!
//! Each cap is far above what real images use (Debian's deepest path has
//! about 15 components; PAX headers are a few hundred bytes):
//! - a path (of an entry, a hard link target or a path a symlink leads to)
//!   has at most [`Limits::max_path_bytes`] bytes (4096, Linux's `PATH_MAX`)
//!   and [`Limits::max_depth`] components (256), which bounds the tree's
//!   depth and the work per entry;
//! - one entry's extension headers (PAX `x`, GNU `L` and `K`, old-GNU
//!   sparse map blocks) have at most [`Limits::max_header_bytes`] bytes
//!   (1 MiB), checked before they are read;
//! - a sparse file's real size is at most ext4's largest file (16 TiB,
//!   [`MAX_FILE_SIZE`]; not configurable), and its holes are never read;
//! - a layer's uncompressed tar has at most [`Limits::max_layer_bytes`]
//!   (64 GiB) and all layers together [`Limits::max_image_bytes`] (256 GiB).

/// ext4's largest file with 4 KiB blocks: 2^32 blocks.
pub const MAX_FILE_SIZE: u64 = 1 << 44;

/// Caps on layer input; see the module doc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a path.
    pub max_path_bytes: usize,
    /// Components of a path.
    pub max_depth: usize,
    /// Bytes of one entry's extension headers.
    pub max_header_bytes: u64,
    /// Uncompressed bytes of one layer.
    pub max_layer_bytes: u64,
    /// Uncompressed bytes of all layers together.
    pub max_image_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_path_bytes: 4096,
            max_depth: 256,
            max_header_bytes: 1 << 20,
            max_layer_bytes: 64 << 30,
            max_image_bytes: 256 << 30,
        }
    }
}
