//! Writing an image file so that it exists only when complete.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{FlattenError, FlattenOptions, FlattenReport, flatten_image};
use crate::oci::{Image, ImageSource};
use crate::sink::FileSink;

/// Tells temporaries of one process apart (tests flatten in parallel).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary unless the output was put in place; also on a
/// panic, so no half-written image is left behind.
struct Temp(Option<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Flatten the image `source` names into the file `output`.
///
/// The image is written to a temporary file next to `output`
/// (`.NAME.tmp-PID-N`) and renamed into place only when complete, so a
/// failure leaves no output file (and an existing one untouched).
pub fn flatten_to_file(
    source: &ImageSource,
    output: &Path,
    opts: &FlattenOptions,
) -> Result<FlattenReport, FlattenError> {
    let image = Image::open(source)?;
    let out_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FlattenError::Output { path, source }
    };
    let name = output.file_name().ok_or_else(|| {
        out_err(output)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the output path names no file",
        ))
    })?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(out_err(&tmp))?;
    let mut guard = Temp(Some(tmp.clone()));
    let (_sink, report) = flatten_image(&image, FileSink::new(file), opts)?;
    fs::rename(&tmp, output).map_err(out_err(output))?;
    guard.0 = None;
    Ok(report)
}
