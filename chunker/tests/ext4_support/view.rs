//! Reading the image back with the `ext4-view` crate.

use std::collections::BTreeMap;

use chunker::tree::InodeKind;

use super::{Built, SparseHash, bytes_path, report, show};

impl Built {
    /// Read the image with the `ext4-view` crate and compare. (ext4-view
    /// 1.0 exposes no inode numbers, xattrs or device numbers; the mount
    /// checks cover those.)
    pub fn check_view(&self) {
        let fs = ext4_view::Ext4::load_from_path(&self.path).expect("ext4-view loads the image");
        let mut bad = Vec::new();
        // Metadata comes from each directory's listing rather than a path
        // lookup per entry: lookups scan linear directories, which would
        // make a 100,000-entry directory quadratic.
        let expected = self.expected();
        let mut found: BTreeMap<Vec<u8>, Result<ext4_view::Metadata, String>> = BTreeMap::new();
        found.insert(
            b"/".to_vec(),
            fs.symlink_metadata("/").map_err(|e| e.to_string()),
        );
        for e in expected.iter().filter(|e| e.inode.is_dir()) {
            let Ok(entries) = fs.read_dir(&e.path[..]) else {
                continue;
            };
            for d in entries {
                let d = d.unwrap();
                let name = d.file_name().as_ref().to_vec();
                if name != b"." && name != b".." {
                    found.insert(
                        bytes_path(&e.path, &name),
                        d.metadata().map_err(|e| e.to_string()),
                    );
                }
            }
        }
        for e in expected {
            let path = show(&e.path);
            let md = match found.get(&e.path) {
                Some(Ok(md)) => md,
                Some(Err(err)) if e.inode.meta.mtime.secs as i32 as u32 >= 1 << 31 => {
                    // ext4-view 1.0 decodes the 32-bit seconds field with
                    // i32::try_from(u32), so it rejects every time whose
                    // low word has the top bit set (before 1970, after
                    // 2038) that the kernel reads fine; the mount checks
                    // cover these.
                    eprintln!(
                        "NOTE {path}: ext4-view 1.0 cannot decode mtime {:?}: {err}",
                        e.inode.meta.mtime
                    );
                    continue;
                }
                Some(Err(err)) => {
                    bad.push(format!("{path}: ext4-view: {err}"));
                    continue;
                }
                None => {
                    bad.push(format!("{path}: ext4-view does not find it"));
                    continue;
                }
            };
            let m = &e.inode.meta;
            let ft = md.file_type();
            let type_ok = match &e.inode.kind {
                InodeKind::Dir { .. } => ft.is_dir(),
                InodeKind::File(_) => ft.is_regular_file(),
                InodeKind::Symlink { .. } => ft.is_symlink(),
                InodeKind::CharDev { .. } => ft.is_char_dev(),
                InodeKind::BlockDev { .. } => ft.is_block_dev(),
                InodeKind::Fifo => ft.is_fifo(),
                InodeKind::Socket => ft.is_socket(),
            };
            let got = (
                md.mode(),
                md.uid(),
                md.gid(),
                md.modified().seconds(),
                md.modified().nanoseconds(),
            );
            let want = (m.mode & 0o7777, m.uid, m.gid, m.mtime.secs, m.mtime.nanos);
            if !type_ok || got != want {
                bad.push(format!("{path}: ext4-view type ok {type_ok}, (mode, uid, gid, secs, nanos) {got:?} want {want:?}"));
            }
            match &e.inode.kind {
                InodeKind::File(data) => {
                    if md.len() != data.size {
                        bad.push(format!(
                            "{path}: ext4-view size {} want {}",
                            md.len(),
                            data.size
                        ));
                    }
                    let mut h = SparseHash::new();
                    let mut buf = vec![0u8; 1 << 20];
                    let mut f = (data.size > 0).then(|| fs.open(&e.path[..]).unwrap());
                    while let Some(f) = &mut f {
                        let n = f.read_bytes(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    if h.finish() != self.hashes[&e.id] {
                        bad.push(format!("{path}: ext4-view content differs"));
                    }
                }
                InodeKind::Symlink { target } => {
                    let got = fs.read_link(&e.path[..]).unwrap();
                    if got.as_ref() != &target[..] {
                        bad.push(format!("{path}: ext4-view link target {:?}", got));
                    }
                }
                InodeKind::Dir { .. } => {
                    let mut names: Vec<Vec<u8>> = fs
                        .read_dir(&e.path[..])
                        .unwrap()
                        .map(|d| d.unwrap().file_name().as_ref().to_vec())
                        .filter(|n| n != b"." && n != b"..")
                        .collect();
                    names.sort();
                    if Some(&names) != e.children.as_ref() {
                        bad.push(format!(
                            "{path}: ext4-view lists {} entries, want {}",
                            names.len(),
                            e.children.as_ref().unwrap().len()
                        ));
                    }
                }
                _ => {}
            }
        }
        report("ext4-view", bad);
    }
}
