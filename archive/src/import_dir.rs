//! Directories into file-tree snapshots. With a parent snapshot of the same directory, files
//! whose size, mtime, ctime and inode are unchanged are not read again (restic's files cache).

use crate::chunk_sink::{ChunkSink, LocalSink};
use crate::chunker;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::data_ranges;
use crate::id::ChunkId;
use crate::import::ImportOptions;
use crate::pipeline::{self, PendingExtents, Submitter};
use crate::snapshot::{
    Draft, DraftContent, Entry, EntryKind, Extent, Manifest, SnapshotKind, SnapshotStats,
    SourceStamp, Xattr,
};
use crate::stats::Progress;
use crate::store::Store;
use crate::writer::Writer;
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

/// Files are read by several threads at once: on a cold cache, reading thousands of small
/// files one after another waits on the disk for each (restic reads two at once).
const READERS: usize = 4;

/// A regular file to read: its path (for messages), the opened file, its size and its index
/// among the entries.
type ReadJob = (std::path::PathBuf, File, u64, usize);

struct Walk<'a> {
    progress: &'a Progress,
    jobs: Option<crossbeam_channel::Sender<ReadJob>>,
    parent: HashMap<&'a [u8], &'a Entry>,
    /// Files taken from the parent unread (index among the entries, path): their chunks are
    /// confirmed with the sink once the walk is done.
    reused: Vec<(usize, PathBuf)>,
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    root_dev: u64,
    one_fs: bool,
    entries: Vec<Entry>,
    stats: SnapshotStats,
}

/// What the reader threads share.
struct Readers<'a> {
    params: crate::config::ChunkerParams,
    progress: &'a Progress,
    pending: Mutex<PendingExtents>,
    read_bytes: AtomicU64,
    failure: Mutex<Option<Error>>,
}

pub fn import_dir(
    store: &Store,
    root: &Path,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Manifest> {
    opts.check()?;
    let parent = opts.find_parent(store, SnapshotKind::Tree)?;
    let parent_entries = match &parent {
        Some(m) => store.load_tree(m)?,
        None => Vec::new(),
    };
    let writer = Writer::new(store)?;
    let parent = parent.as_ref().map(|m| (m, parent_entries.as_slice()));
    let draft = import_dir_into(&LocalSink(&writer), root, opts, parent, progress)?;
    writer.commit(draft)
}

/// The same import into any sink (a remote server's, say); commit the draft where the
/// chunks went. `parent` (its manifest and tree, e.g. fetched from the server) lets files
/// unchanged since it go unread; `opts.parent` is not consulted.
pub fn import_dir_into(
    sink: &dyn ChunkSink,
    root: &Path,
    opts: &ImportOptions,
    parent: Option<(&Manifest, &[Entry])>,
    progress: &Progress,
) -> Result<Draft> {
    opts.check()?;
    let started = Instant::now();
    let meta = fs::metadata(root).at(root)?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory",
            root.display()
        )));
    }
    let readers = Readers {
        params: sink.config().chunker.clone(),
        progress,
        pending: Mutex::new(PendingExtents::default()),
        read_bytes: AtomicU64::new(0),
        failure: Mutex::new(None),
    };
    let mut walk = Walk {
        progress,
        jobs: None,
        parent: parent
            .map(|(_, entries)| entries)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.source.is_some())
            .map(|e| (e.path.as_slice(), e))
            .collect(),
        reused: Vec::new(),
        hardlinks: HashMap::new(),
        root_dev: meta.dev(),
        one_fs: opts.one_file_system,
        entries: Vec::new(),
        stats: SnapshotStats::default(),
    };
    let ((), ids) = pipeline::run(sink, |sub| {
        std::thread::scope(|s| {
            let (tx, rx) = crossbeam_channel::bounded::<ReadJob>(256);
            for _ in 0..READERS {
                let (rx, readers) = (rx.clone(), &readers);
                s.spawn(move || {
                    for (path, file, size, idx) in rx.iter() {
                        if let Err(e) = readers.read_file(&path, file, size, idx, sub) {
                            readers.failure.lock().unwrap().get_or_insert(e);
                            return; // the walk sees the failure and stops
                        }
                    }
                });
            }
            // Only the readers hold the queue's end: once they all stopped on errors, the
            // walk's sends fail at once instead of waiting on a full queue.
            drop(rx);
            walk.jobs = Some(tx);
            let r = walk
                .visit(root, Vec::new(), &meta, &readers)
                .and_then(|()| walk.recheck_reused(sink, &readers));
            walk.jobs = None; // readers finish the queue and exit
            r
        })?;
        match readers.failure.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })?;
    let Walk {
        mut entries,
        mut stats,
        ..
    } = walk;
    stats.read_bytes = readers.read_bytes.load(Ordering::Relaxed);
    readers
        .pending
        .into_inner()
        .unwrap()
        .resolve(&mut entries, &ids);
    stats.entries = entries.len() as u64;
    stats.chunks = entries.iter().map(|e| file_extents(e).len() as u64).sum();
    stats.zero_bytes = stats.logical_bytes - crate::snapshot::extent_bytes(&entries);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(Draft {
        name: opts.name.clone(),
        labels: opts.labels.clone(),
        parent: parent.map(|(m, _)| m.id.clone()),
        content: DraftContent::Tree(entries),
        stats,
    })
}

fn file_extents(e: &Entry) -> &[Extent] {
    match &e.kind {
        EntryKind::File { extents, .. } => extents,
        _ => &[],
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// Extended attributes of `path` (not following it), or of the opened `file` at `path`.
fn read_xattrs(path: &Path, file: Option<&File>) -> Result<Vec<Xattr>> {
    use xattr::FileExt;
    let mut out = Vec::new();
    let names = match file.map_or_else(|| xattr::list(path), |f| f.list_xattr()) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e).at(path),
    };
    for name in names {
        let value = match file {
            Some(f) => f.get_xattr(&name),
            None => xattr::get(path, &name),
        };
        if let Some(value) = value.at(path)? {
            out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn describe(entry: &mut Entry, meta: &Metadata) {
    entry.mode = meta.mode() & 0o7777;
    entry.uid = meta.uid();
    entry.gid = meta.gid();
    entry.mtime = meta.mtime();
    entry.mtime_nsec = meta.mtime_nsec() as u32;
}

fn stamp(meta: &Metadata) -> SourceStamp {
    SourceStamp {
        dev: meta.dev(),
        ino: meta.ino(),
        ctime: meta.ctime(),
        ctime_nsec: meta.ctime_nsec() as u32,
    }
}

/// Opens a file listed as regular, never following a symlink that replaced it since (which
/// would pull another file, say /etc/shadow, into the snapshot) and never waiting on a fifo;
/// its metadata comes from the opened handle. None if it is gone.
fn open_regular(path: &Path) -> Result<Option<(File, Metadata)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::Invalid(format!(
                "{}: replaced by a symlink while being imported; import again",
                path.display()
            )))
        }
        Err(e) => return Err(e).at(path),
    };
    let meta = file.metadata().at(path)?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{}: replaced by a special file while being imported; import again",
            path.display()
        )));
    }
    Ok(Some((file, meta)))
}

impl Walk<'_> {
    fn visit(
        &mut self,
        path: &Path,
        rel: Vec<u8>,
        meta: &Metadata,
        readers: &Readers,
    ) -> Result<()> {
        let ft = meta.file_type();
        let mut entry = Entry {
            path: rel.clone(),
            kind: EntryKind::Dir,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
            source: None,
        };
        describe(&mut entry, meta);
        if ft.is_dir() {
            entry.xattrs = read_xattrs(path, None)?;
            self.entries.push(entry);
            if self.one_fs && meta.dev() != self.root_dev {
                return Ok(()); // a mount point: record it, do not descend
            }
            let mut children: Vec<_> = fs::read_dir(path)
                .at(path)?
                .map(|d| d.map(|d| d.file_name()))
                .collect::<std::io::Result<_>>()
                .at(path)?;
            children.sort();
            for name in children {
                let child = path.join(&name);
                let cmeta = match fs::symlink_metadata(&child) {
                    Ok(m) => m,
                    // Deleted while we walked: a live system changes under a capture.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).at(&child),
                };
                self.visit(&child, join(&rel, name.as_bytes()), &cmeta, readers)?;
            }
            return Ok(());
        }
        if !ft.is_file() {
            entry.xattrs = read_xattrs(path, None)?;
        }
        entry.kind = if ft.is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(path)
                    .at(path)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            }
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.hardlinks.get(&key) {
                    entry.xattrs = read_xattrs(path, None)?;
                    entry.kind = EntryKind::HardLink {
                        target: first.clone(),
                    };
                    self.entries.push(entry);
                    return Ok(());
                }
                self.hardlinks.insert(key, rel.clone());
            }
            entry.source = Some(stamp(meta));
            match self.unchanged_extents(&entry, meta.len()) {
                Some(extents) => {
                    entry.xattrs = read_xattrs(path, None)?;
                    self.stats.logical_bytes += meta.len();
                    self.progress.fetch_add(meta.len(), Ordering::Relaxed);
                    self.reused.push((self.entries.len(), path.to_path_buf()));
                    EntryKind::File {
                        size: meta.len(),
                        extents,
                    }
                }
                None => match self.read(self.entries.len(), path, &mut entry, readers)? {
                    Some(kind) => kind,
                    None => return Ok(()), // deleted since it was listed
                },
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            if ft.is_char_device() {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            tracing::warn!("{}: sockets are not archived (as with tar)", path.display());
            return Ok(());
        };
        self.entries.push(entry);
        Ok(())
    }

    /// Opens a file to read it and queues it for the readers; describes the entry by the
    /// opened file, which may have replaced the one listed (a live system renames new
    /// versions into place). None if the file is gone.
    fn read(
        &mut self,
        idx: usize,
        path: &Path,
        entry: &mut Entry,
        readers: &Readers,
    ) -> Result<Option<EntryKind>> {
        let Some((file, fmeta)) = open_regular(path)? else {
            return Ok(None);
        };
        describe(entry, &fmeta);
        entry.source = Some(stamp(&fmeta));
        entry.xattrs = read_xattrs(path, Some(&file))?;
        self.stats.logical_bytes += fmeta.len();
        let kind = EntryKind::File {
            size: fmeta.len(),
            extents: Vec::new(),
        };
        if readers.failure.lock().unwrap().is_some() {
            return Ok(Some(kind)); // a reader failed; the caller reports it
        }
        let job = (path.to_path_buf(), file, fmeta.len(), idx);
        // A failed send means every reader stopped on an error, which the caller reports.
        let _ = self.jobs.as_ref().expect("readers running").send(job);
        Ok(Some(kind))
    }

    /// The parent's extents if the file is unchanged (size, mtime, ctime, inode).
    fn unchanged_extents(&self, entry: &Entry, size: u64) -> Option<Vec<Extent>> {
        let old = self.parent.get(entry.path.as_slice())?;
        let EntryKind::File {
            size: old_size,
            extents,
        } = &old.kind
        else {
            return None;
        };
        let same = *old_size == size
            && old.mtime == entry.mtime
            && old.mtime_nsec == entry.mtime_nsec
            && old.source == entry.source;
        same.then(|| extents.clone())
    }

    /// Confirms with the sink that it still has the chunks of the files taken from the
    /// parent (and now counts them as referenced); a file with a chunk gone (gc removed it
    /// since) is read after all.
    fn recheck_reused(&mut self, sink: &dyn ChunkSink, readers: &Readers) -> Result<()> {
        let ids: Vec<ChunkId> = self
            .reused
            .iter()
            .flat_map(|(i, _)| file_extents(&self.entries[*i]).iter().map(|x| x.id))
            .collect();
        let have = pipeline::still_there(sink, &ids)?;
        for (idx, path) in std::mem::take(&mut self.reused) {
            let mut entry = self.entries[idx].clone();
            if file_extents(&entry).iter().all(|x| have.contains(&x.id)) {
                continue;
            }
            if let EntryKind::File { size, .. } = entry.kind {
                self.stats.logical_bytes -= size;
            }
            entry.kind = self.read(idx, &path, &mut entry, readers)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: removed while being imported; import again",
                    path.display()
                ))
            })?;
            self.entries[idx] = entry;
        }
        Ok(())
    }
}

impl Readers<'_> {
    fn read_file(
        &self,
        path: &Path,
        mut file: File,
        size: u64,
        idx: usize,
        sub: &Submitter,
    ) -> Result<()> {
        let what = path.display().to_string();
        // Holes matter only in files larger than a chunk; small files skip the lseeks.
        let ranges = if size < self.params.min as u64 {
            vec![(0, size)]
        } else {
            data_ranges(&file, size)
        };
        for (start, end) in ranges {
            file.seek(SeekFrom::Start(start)).at(path)?;
            let (pending, progress) = (&self.pending, self.progress);
            let read = chunker::split(
                (&mut file).take(end - start),
                Some(end - start),
                &self.params,
                &what,
                |off, data| {
                    let len = data.len() as u32;
                    progress.fetch_add(len as u64, Ordering::Relaxed);
                    let seq = sub.submit(data)?;
                    pending.lock().unwrap().push(idx, start + off, len, seq);
                    Ok(())
                },
            )?;
            self.read_bytes.fetch_add(read, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_swapped_after_listing_is_never_followed_or_waited_on() {
        let t = tempfile::tempdir().unwrap();
        let (p, secret) = (t.path().join("f"), t.path().join("secret"));
        fs::write(&secret, b"root:$6$hash").unwrap();
        fs::write(&p, b"listed").unwrap();
        let listed = fs::symlink_metadata(&p).unwrap();
        assert!(listed.is_file());
        // Swapped for a symlink between listing and reading: refused, the secret unread.
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&secret, &p).unwrap();
        let e = open_regular(&p).unwrap_err();
        assert!(e.to_string().contains("replaced by a symlink"), "{e}");
        // For a fifo, no open that waits for a writer.
        fs::remove_file(&p).unwrap();
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&p).unwrap_err();
        assert!(e.to_string().contains("special file"), "{e}");
        // Replaced by another regular file (renamed into place): read, and described by
        // what was opened.
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"new version").unwrap();
        let (mut f, m) = open_regular(&p).unwrap().unwrap();
        assert_eq!(m.len(), 11);
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "new version");
        fs::remove_file(&p).unwrap();
        assert!(open_regular(&p).unwrap().is_none(), "gone");
    }
}
