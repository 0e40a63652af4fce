//! `gc`: removes chunks no snapshot references, while imports keep running.
//!
//! Only one gc runs at a time (`locks/gc.lock`); imports never wait for it. The protocol with
//! writers is described in writer.rs: gc moves doomed packs to `trash/` *before* reading the
//! writers' reference logs and the snapshots committed meanwhile, and puts back any trashed
//! pack that turns out to be needed. A gc killed at any point leaves packs in `trash/`, which
//! readers still read and the next gc puts back first.

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, flock, fsync_dir, make_dir_durable};
use crate::id::ChunkId;
use crate::pack::{self, pack_path, PackEntry, PackWriter};
use crate::store::Store;
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub packs_before: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_rescued: usize,
    pub chunks_removed: usize,
    pub bytes_freed: i64,
    pub stale_writers: usize,
    /// Packs whose trailer cannot be read: kept as they are.
    pub packs_damaged: usize,
}

/// Files this old in tmp/ or snapshots/ without an owner are leftovers of a crash.
const GRACE: Duration = Duration::from_secs(3600);

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > age)
        .unwrap_or(false)
}

fn move_pack(store: &Store, name: &str, to_trash: bool) -> Result<()> {
    let from = store.pack_file_path(name, !to_trash);
    let to = store.pack_file_path(name, to_trash);
    let dir = to.parent().unwrap();
    make_dir_durable(dir)?;
    fs::rename(&from, &to).at(&to)?;
    fsync_dir(dir)?;
    fsync_dir(from.parent().unwrap())
}

/// Live writers' ids; stale leases (their process died) are cleared with their leftovers.
fn sweep_writers(store: &Store, report: &mut GcReport) -> Result<HashSet<String>> {
    let locks = store.dir("locks");
    let mut live = HashSet::new();
    for f in fs::read_dir(&locks).at(&locks)? {
        let p = f.at(&locks)?.path();
        let Some(wid) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lock"))
            .filter(|n| *n != "gc")
            .map(str::to_string)
        else {
            continue;
        };
        let Ok(file) = File::open(&p) else { continue };
        if !flock(&file, true).at(&p)? {
            live.insert(wid);
            continue;
        }
        report.stale_writers += 1;
        let _ = fs::remove_file(locks.join(format!("{wid}.refs")));
        let tmp = store.dir("tmp");
        for t in fs::read_dir(&tmp).at(&tmp)? {
            let t = t.at(&tmp)?.path();
            if t.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{wid}.")))
            {
                let _ = fs::remove_file(&t);
            }
        }
        let _ = fs::remove_file(&p);
    }
    // Orphaned refs (lock already gone) and old temporary files.
    for f in fs::read_dir(&locks).at(&locks)? {
        let p = f.at(&locks)?.path();
        if let Some(wid) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".refs"))
        {
            if !live.contains(wid) && !locks.join(format!("{wid}.lock")).exists() {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let tmp = store.dir("tmp");
    for t in fs::read_dir(&tmp).at(&tmp)? {
        let t = t.at(&tmp)?.path();
        let owner = t
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next());
        if !owner.is_some_and(|o| live.contains(o)) && older_than(&t, GRACE) {
            let _ = fs::remove_file(&t);
        }
    }
    Ok(live)
}

fn read_refs(store: &Store) -> Result<HashSet<ChunkId>> {
    let locks = store.dir("locks");
    let mut out = HashSet::new();
    for f in fs::read_dir(&locks).at(&locks)? {
        let p = f.at(&locks)?.path();
        if p.extension().and_then(|e| e.to_str()) != Some("refs") {
            continue;
        }
        let Ok(bytes) = fs::read(&p) else { continue };
        out.extend(
            bytes
                .chunks_exact(32)
                .map(|c| ChunkId(c.try_into().unwrap())),
        );
    }
    Ok(out)
}

pub fn gc(store: &Store) -> Result<GcReport> {
    let mut report = GcReport::default();
    let lock_path = store.dir("locks").join("gc.lock");
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .at(&lock_path)?;
    if !flock(&lock, true).at(&lock_path)? {
        return Err(Error::Invalid(format!(
            "store {}: another gc is running",
            store.root().display()
        )));
    }
    // A gc that died left packs in trash: put them back before deciding anything.
    for (name, trash, _) in store.list_packs()? {
        if trash {
            move_pack(store, &name, false)?;
        }
    }
    sweep_writers(store, &mut report)?;
    store.rebuild_index()?;

    // Mark.
    let snapshots = store.list_snapshots()?;
    let seen: HashSet<String> = snapshots.iter().map(|m| m.id.clone()).collect();
    let mut live: HashSet<ChunkId> = HashSet::new();
    for m in &snapshots {
        live.extend(store.snapshot_chunks(m)?);
    }
    let snapdir = store.dir("snapshots");
    for f in fs::read_dir(&snapdir).at(&snapdir)? {
        let p = f.at(&snapdir)?.path();
        if p.extension().and_then(|e| e.to_str()) == Some("data") {
            let id = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            if !store.manifest_path(id).exists() && older_than(&p, GRACE) {
                let _ = fs::remove_file(&p);
            }
        }
    }

    // Plan: keep one copy of each live chunk; drop or repack packs with dead space. A
    // damaged pack is left alone: what it holds is unknown (verify names it).
    let mut packs: Vec<(String, Vec<PackEntry>, u64)> = Vec::new();
    for (name, _, path) in store.list_packs()? {
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match pack::read_trailer(&path) {
            Ok(entries) => packs.push((name, entries, size)),
            Err(e) => {
                tracing::warn!("gc leaves {e} alone");
                report.packs_damaged += 1;
            }
        }
    }
    report.packs_before = packs.len() + report.packs_damaged;
    packs.sort_by_key(|p| std::cmp::Reverse(p.2)); // keep copies in the fullest packs
    let mut kept: HashSet<ChunkId> = HashSet::new();
    let mut doomed: Vec<(String, u64)> = Vec::new();
    let mut to_copy: Vec<(String, PackEntry)> = Vec::new();
    for (name, entries, size) in &packs {
        let keep: Vec<&PackEntry> = entries
            .iter()
            .filter(|e| live.contains(&e.id) && !kept.contains(&e.id))
            .collect();
        let keep_bytes: u64 = keep.iter().map(|e| e.stored_len as u64).sum();
        let all_bytes: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
        if keep.len() == entries.len() || (keep_bytes * 10 >= all_bytes * 8 && !keep.is_empty()) {
            kept.extend(keep.iter().map(|e| e.id)); // mostly live: leave it
            continue;
        }
        report.chunks_removed += entries.len() - keep.len();
        doomed.push((name.clone(), *size));
        for e in keep {
            kept.insert(e.id);
            to_copy.push((name.clone(), *e));
        }
    }
    if doomed.is_empty() {
        return Ok(report);
    }

    // Repack the live chunks of doomed packs (copied as stored, after checking them).
    let mut new_bytes = 0u64;
    if !to_copy.is_empty() {
        let mut pw = PackWriter::create(&store.dir("tmp"), "gc")?;
        let packs_dir = store.dir("packs");
        for (name, e) in &to_copy {
            let path = pack_path(&packs_dir, name);
            let f = File::open(&path).at(&path)?;
            let stored = pack::read_stored(&f, &path, e)?;
            pack::decode(e, &stored)?;
            pw.add(e.id, e.codec, e.raw_len, &stored)?;
            if pw.size() >= store.config().pack_size {
                new_bytes += pw.size();
                pw.seal(&packs_dir)?;
                pw = PackWriter::create(&store.dir("tmp"), "gc")?;
            }
        }
        new_bytes += pw.size();
        pw.seal(&packs_dir)?;
        report.packs_repacked = doomed
            .iter()
            .filter(|(n, _)| to_copy.iter().any(|(m, _)| m == n))
            .count();
    }

    // Trash, then look at what writers and fresh snapshots need.
    for (name, _) in &doomed {
        move_pack(store, name, true)?;
    }
    let mut needed = read_refs(store)?;
    for m in store.list_snapshots()? {
        if !seen.contains(&m.id) {
            needed.extend(store.snapshot_chunks(&m)?);
        }
    }
    store.rebuild_index()?;
    let available: HashSet<ChunkId> = store.packed_ids().into_keys().collect();
    let mut removed: Vec<(PathBuf, u64)> = Vec::new();
    for (name, size) in &doomed {
        let path = store.pack_file_path(name, true);
        let entries = pack::read_trailer(&path)?;
        if entries
            .iter()
            .any(|e| needed.contains(&e.id) && !available.contains(&e.id))
        {
            move_pack(store, name, false)?;
            report.packs_rescued += 1;
        } else {
            fsutil::remove_file(&path)?;
            removed.push((path, *size));
        }
    }
    // Report only what is durably gone: after a power cut, an unsynced removal comes back.
    let dirs: BTreeSet<&Path> = removed.iter().filter_map(|(p, _)| p.parent()).collect();
    for dir in dirs {
        fsync_dir(dir)?;
    }
    report.packs_deleted = removed.len();
    report.bytes_freed =
        removed.iter().map(|(_, size)| *size as i64).sum::<i64>() - new_bytes as i64;
    store.rebuild_index()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::fsutil::journal;
    use crate::snapshot::{Draft, DraftContent, Entry, EntryKind, Extent};
    use crate::writer::Writer;

    /// A snapshot of one file of `data`, in a pack of its own.
    fn snapshot(store: &Store, data: &[u8]) -> String {
        let w = Writer::new(store).unwrap();
        let mut zc = zstd::bulk::Compressor::new(1).unwrap();
        let id = w.put(data, &mut zc).unwrap();
        w.commit(draft(&[(id, data.len())])).unwrap().id
    }

    /// A draft naming `ids` as one file each.
    fn draft(ids: &[(ChunkId, usize)]) -> Draft {
        let entries = ids
            .iter()
            .enumerate()
            .map(|(i, (id, size))| Entry {
                path: format!("f{i}").into_bytes(),
                kind: EntryKind::File {
                    size: *size as u64,
                    extents: vec![Extent {
                        offset: 0,
                        len: *size as u32,
                        id: *id,
                    }],
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: vec![],
                source: None,
            })
            .collect();
        Draft {
            name: "s".into(),
            labels: Default::default(),
            parent: None,
            content: DraftContent::Tree(entries),
            stats: Default::default(),
        }
    }

    /// A session that was told the store has a chunk commits after gc moved that chunk to a
    /// new pack and removed the old one (the race CI met with three captures beside gc).
    #[test]
    fn a_session_commits_a_chunk_gc_repacked_meanwhile() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::init(&t.path().join("s"), StoreConfig::default()).unwrap();
        let mut zc = zstd::bulk::Compressor::new(1).unwrap();
        let small: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 253) as u8).collect();
        // One pack holds a small live chunk and a big dead one: gc repacks the small one.
        let w = Writer::new(&store).unwrap();
        let x = w.put(&small, &mut zc).unwrap();
        let z = w.put(&big, &mut zc).unwrap();
        let both = w
            .commit(draft(&[(x, small.len()), (z, big.len())]))
            .unwrap();
        let w = Writer::new(&store).unwrap();
        assert!(w.missing(&[x]).unwrap().is_empty());
        w.commit(draft(&[(x, small.len())])).unwrap();
        store.forget(&both.id).unwrap();
        // A remote session learns the chunk where it is now, then gc moves it.
        let session = Writer::new(&store).unwrap();
        assert!(session.missing(&[x]).unwrap().is_empty());
        let r = gc(&store).unwrap();
        assert_eq!((r.packs_repacked, r.packs_deleted), (1, 1), "{r:?}");
        session
            .commit_uploaded(draft(&[(x, small.len())]))
            .expect("the chunk is in the store, in gc's new pack");
    }

    #[test]
    fn what_gc_reports_freed_is_durably_gone() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::init(&t.path().join("s"), StoreConfig::default()).unwrap();
        let doomed = snapshot(&store, &[1u8; 5000]);
        snapshot(&store, &[2u8; 5000]);
        store.forget(&doomed).unwrap();
        journal::take();
        let r = gc(&store).unwrap();
        assert_eq!(r.packs_deleted, 1);
        assert!(r.bytes_freed > 0);
        let log = journal::take();
        // The doomed pack went to a new trash/ fan-out directory, then was removed.
        let trash = store.dir("trash");
        assert!(log
            .iter()
            .any(|(w, p)| *w == "mkdir" && p.parent() == Some(&trash)));
        assert!(log
            .iter()
            .any(|(w, p)| *w == "remove" && p.starts_with(&trash)));
        journal::assert_durable(&log);
    }
}
