//! The crate's modules follow the data flow: a module may import only
//! modules earlier in it (the order the crate root's map lists), never a
//! later one, and the two transports never import each other. Read from
//! the source text, so an upward `use` or path fails here with the file
//! and line that made it.

use std::fs;
use std::path::{Path, PathBuf};

/// The layers in data-flow order; a layer may use any layer with a lower
/// rank. Layers of equal rank may not use each other.
const LAYERS: &[(&str, u32)] = &[
    ("device", 0),
    ("open", 1),
    ("profile", 2),
    ("tiers", 2),
    ("lazy", 3),
    ("verify", 4),
    ("export", 4),
    ("images", 4),
    ("gc", 5),
    ("rewrap", 4),
    ("ext4", 5),
    ("transport::fuse", 6),
    ("transport::vhost", 6),
    ("agent", 7),
    ("transport::api", 8),
];

/// Items of the crate root every layer may use.
const ROOT_ITEMS: &[&str] = &["error_chain"];

fn rank(layer: &str) -> Option<u32> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|&(_, r)| r)
}

/// The layer a source file belongs to, from its path under `src/`.
fn layer_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    match parts.first().map(String::as_str) {
        Some("lib") | None => None,
        Some("transport") if parts.len() >= 2 && parts[1] != "mod" => {
            Some(format!("transport::{}", parts[1]))
        }
        Some("transport") => None, // transport/mod.rs only declares the two
        Some(first) => Some(first.to_string()),
    }
}

/// The layer a `crate::...` path names, or the root item it names.
fn target_of(path: &str) -> String {
    let mut segs = path.split("::");
    let first = segs.next().unwrap_or_default();
    if first == "transport" {
        match segs.next() {
            Some(second) => format!("transport::{second}"),
            None => "transport".to_string(),
        }
    } else {
        first.to_string()
    }
}

/// Every `crate::a::b` path in the code of `text` (comments skipped),
/// with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            let tail = &rest[at + "crate::".len()..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            // `$crate::` in macros and identifiers ending in "crate" are not paths.
            if !matches!(before, Some(c) if c.is_alphanumeric() || c == '_' || c == '$') {
                out.push((n + 1, tail[..end].trim_end_matches(':').to_string()));
            }
            rest = &tail[end..];
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The violations in one file's text, as lines for the failure message.
fn violations(rel: &Path, text: &str) -> Vec<String> {
    let Some(layer) = layer_of(rel) else {
        return Vec::new();
    };
    let Some(own) = rank(&layer) else {
        return vec![format!(
            "{}: layer {layer} is not in this test's LAYERS table; add it in flow order",
            rel.display()
        )];
    };
    let mut bad = Vec::new();
    for (line, path) in crate_paths(text) {
        let target = target_of(&path);
        if target == layer || ROOT_ITEMS.contains(&target.as_str()) {
            continue;
        }
        match rank(&target) {
            Some(r) if r < own => {}
            Some(_) => bad.push(format!(
                "{}:{line}: layer {layer} uses crate::{path}, which is not below it",
                rel.display()
            )),
            None => bad.push(format!(
                "{}:{line}: crate::{path} is not a layer's path (use the module's own path, \
                 not a crate-root re-export)",
                rel.display()
            )),
        }
    }
    bad
}

#[test]
fn no_module_imports_a_module_later_in_the_data_flow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} source files under {}",
        files.len(),
        src.display()
    );
    let mut bad = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        bad.extend(violations(rel, &fs::read_to_string(file).unwrap()));
    }
    assert!(
        bad.is_empty(),
        "imports against the data flow:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_catches_an_upward_import_and_a_sideways_one() {
    let upward = "use crate::transport::fuse::FuseStats;\n";
    assert_eq!(violations(Path::new("lazy/mod.rs"), upward).len(), 1);
    let sideways = "fn f() { crate::transport::vhost::serve(); }\n";
    assert_eq!(
        violations(Path::new("transport/fuse/fs.rs"), sideways).len(),
        1
    );
    let root_reexport = "use crate::LazyImage;\n";
    assert_eq!(violations(Path::new("ext4/mod.rs"), root_reexport).len(), 1);
    let fine = "use crate::device::BlockDevice; // crate::transport in a comment\nuse crate::error_chain;\n";
    assert!(violations(Path::new("ext4/mod.rs"), fine).is_empty());
    assert!(
        violations(
            Path::new("transport/vhost/backend.rs"),
            "use crate::ext4::Dir;\n"
        )
        .is_empty()
    );
}
