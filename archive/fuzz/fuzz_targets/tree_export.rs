//! Hostile trees (as a remote client could commit or a server could send) exported into a
//! target that already holds symlinks pointing out of it, inside a sentinel directory:
//! whatever the export returns, nothing outside the target changes. The bytes are read as a
//! little program that builds the tree from a few names, so that duplicates, symlinks on the
//! way, hard links and name clashes with the target's symlinks come up at once.
#![no_main]

use ignite_archive::{ChunkId, ChunkSource, Entry, EntryKind, Extent, Progress};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};

struct Made(HashMap<ChunkId, Vec<u8>>);

impl ChunkSource for Made {
    fn chunks(&self, ids: &[ChunkId]) -> ignite_archive::Result<Vec<Vec<u8>>> {
        Ok(ids.iter().map(|id| self.0[id].clone()).collect())
    }
}

const NAMES: [&str; 6] = ["a", "b", "c", "etc", "x", "d"];
// Never the real system: a bug must hit only the sentinel.
const TARGETS: [&str; 6] = ["../victim", "..", "/nonexistent/ignite", "a", "../outside", "x/y"];

fn tree(data: &[u8], made: &mut HashMap<ChunkId, Vec<u8>>) -> Vec<Entry> {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let mut entries: Vec<Entry> = Vec::new();
    while let (Some(op), Some(p), Some(m)) = (next(), next(), next()) {
        let depth = 1 + (p >> 6) as usize % 3;
        let path: Vec<&str> = (0..depth)
            .map(|i| NAMES[(p as usize >> (2 * i)) % NAMES.len()])
            .collect();
        let path = if op == 255 { String::new() } else { path.join("/") };
        let kind = match op % 7 {
            0 => EntryKind::Dir,
            1 => {
                let len = 1 + u32::from(m) * 17;
                let content = vec![m; len as usize];
                let id = ChunkId::of(&content);
                made.insert(id, content);
                let offset = u64::from(op / 7) * 100;
                let extents = vec![Extent { offset, len, id }];
                EntryKind::File { size: offset + u64::from(len), extents }
            }
            2 => EntryKind::Symlink {
                target: TARGETS[m as usize % TARGETS.len()].as_bytes().to_vec(),
            },
            3 => match entries.get(m as usize % entries.len().max(1)) {
                Some(e) => EntryKind::HardLink { target: e.path.clone() },
                None => EntryKind::Fifo,
            },
            4 => EntryKind::CharDevice { major: 1, minor: 3 },
            5 => EntryKind::BlockDevice { major: 7, minor: 0 },
            _ => EntryKind::Fifo,
        };
        entries.push(Entry {
            path: path.into_bytes(),
            kind,
            mode: u32::from(m) * 37 % 0o10000,
            uid: u32::from(m),
            gid: 0,
            mtime: i64::from(m),
            mtime_nsec: 0,
            xattrs: vec![],
            source: None,
        });
    }
    entries
}

fuzz_target!(|data: &[u8]| {
    let mut made = HashMap::new();
    let entries = tree(data, &mut made);
    let s = tempfile::tempdir().unwrap();
    let victim = s.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    fs::create_dir(s.path().join("outside")).unwrap();
    let target = s.path().join("target");
    fs::create_dir(&target).unwrap();
    for (name, to) in [("a", "../victim"), ("b", "../outside"), ("c", ".."), ("etc", "../outside")] {
        symlink(to, target.join(name)).unwrap();
    }
    let before = fs::metadata(&victim).unwrap();
    let _ = ignite_archive::export_tree(&Made(made), &entries, &target, &Progress::new(0));
    let after = fs::symlink_metadata(&victim).unwrap();
    assert!(after.is_file());
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(
        (after.mode(), after.uid(), after.mtime(), after.mtime_nsec()),
        (before.mode(), before.uid(), before.mtime(), before.mtime_nsec())
    );
    assert_eq!(fs::read_dir(s.path().join("outside")).unwrap().count(), 0);
    let mut names: Vec<_> = fs::read_dir(s.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "target", "victim"]);
});
