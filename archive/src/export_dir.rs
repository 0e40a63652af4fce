//! File-tree snapshots out to a directory, with owners, modes, xattrs, times, hard links,
//! device nodes and holes restored. Nothing is written outside the target: paths are checked
//! again (a store may hold snapshots committed by remote clients), nothing is placed beneath a
//! symlink, and existing symlinks in a non-empty target are never followed.

use crate::chunk_source::{ChunkSource, BATCH_BYTES, BATCH_CHUNKS};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::paths::ancestors;
use crate::snapshot::{check_tree, Entry, EntryKind, Extent, Manifest};
use crate::stats::Progress;
use crate::store::Store;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes not created because we are not root.
    pub skipped_devices: u64,
}

fn target_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{}: path contains NUL", p.display())))
}

fn os_err<T>(ret: libc::c_int, path: &Path, ok: T) -> Result<T> {
    if ret == 0 {
        Ok(ok)
    } else {
        Err(std::io::Error::last_os_error()).at(path)
    }
}

pub fn export_dir(
    store: &Store,
    m: &Manifest,
    target: &Path,
    progress: &Progress,
) -> Result<ExportStats> {
    export_tree(store, &store.load_tree(m)?, target, progress)
}

/// Writes `entries` under `target`, file contents from `source`. File contents are written
/// on the current rayon pool: run it inside a larger pool for more chunk reads in flight.
pub fn export_tree(
    source: &dyn ChunkSource,
    entries: &[Entry],
    target: &Path,
    progress: &Progress,
) -> Result<ExportStats> {
    check_tree(entries)?;
    fs::create_dir_all(target).at(target)?;
    let root = fs::canonicalize(target).at(target)?;
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut stats = ExportStats::default();
    let mut safe_dirs: HashSet<Vec<u8>> = HashSet::new();
    safe_dirs.insert(Vec::new());

    // Pass 1, in order: directories, links, special files, empty regular files.
    for e in entries {
        if e.path.is_empty() {
            continue;
        }
        for a in ancestors(&e.path) {
            if safe_dirs.contains(a) {
                continue;
            }
            let p = target_path(&root, a);
            match fs::symlink_metadata(&p) {
                Ok(md) if md.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(Error::UnsafePath {
                        path: e.path_str(),
                        what: format!("{} in the target is not a directory", p.display()),
                    })
                }
                Err(_) => fs::create_dir(&p).at(&p)?,
            }
            safe_dirs.insert(a.to_vec());
        }
        let p = target_path(&root, &e.path);
        let existing = fs::symlink_metadata(&p).ok();
        if let Some(md) = &existing {
            let keep_dir = md.is_dir() && e.kind == EntryKind::Dir;
            if md.is_dir() && !keep_dir {
                return Err(Error::UnsafePath {
                    path: e.path_str(),
                    what: format!("{} exists in the target as a directory", p.display()),
                });
            }
            if !keep_dir {
                fs::remove_file(&p).at(&p)?;
            }
        }
        match &e.kind {
            EntryKind::Dir => {
                if existing.is_none() {
                    fs::create_dir(&p).at(&p)?;
                }
                // Owner-writable while we fill it; the real mode is set at the end.
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).at(&p)?;
                safe_dirs.insert(e.path.clone());
            }
            EntryKind::File { size, .. } => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .at(&p)?;
                f.set_len(*size).at(&p)?;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).at(&p)?;
            }
            EntryKind::HardLink { target } => {
                fs::hard_link(target_path(&root, target), &p).at(&p)?;
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                let kind = if matches!(e.kind, EntryKind::CharDevice { .. }) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                let c = cstr(&p)?;
                let dev = libc::makedev(*major, *minor);
                // SAFETY: valid C string; mknod reads no other memory.
                if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) } != 0 {
                    let err = std::io::Error::last_os_error();
                    if !as_root && err.raw_os_error() == Some(libc::EPERM) {
                        tracing::warn!("{}: device nodes need root; skipped", p.display());
                        stats.skipped_devices += 1;
                        continue;
                    }
                    return Err(err).at(&p);
                }
            }
            EntryKind::Fifo => {
                let c = cstr(&p)?;
                // SAFETY: valid C string.
                os_err(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, &p, ())?;
            }
        }
    }

    // Pass 2, in parallel: file contents (holes stay holes), a batch at a time.
    let bytes = extent_batches(entries)
        .par_iter()
        .map(|batch| write_batch(source, &root, batch, progress))
        .sum::<Result<u64>>()?;
    stats.bytes = bytes;

    // Pass 3: metadata; directories last and deepest first, so their mtimes stay.
    entries
        .par_iter()
        .filter(|e| e.kind != EntryKind::Dir && !matches!(e.kind, EntryKind::HardLink { .. }))
        .try_for_each(|e| apply_metadata(&root, e, as_root))?;
    let mut dirs: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.path.len()));
    for d in dirs {
        apply_metadata(&root, d, as_root)?;
    }
    stats.entries = entries.len() as u64;
    Ok(stats)
}

/// One extent of one file.
type Piece<'a> = (&'a [u8], &'a Extent);

/// The files' extents in tree order, cut into batches of `BATCH_BYTES` / `BATCH_CHUNKS`.
fn extent_batches(entries: &[Entry]) -> Vec<Vec<Piece<'_>>> {
    let mut batches = Vec::new();
    let (mut batch, mut bytes): (Vec<Piece>, u64) = (Vec::new(), 0);
    for e in entries {
        let EntryKind::File { extents, .. } = &e.kind else {
            continue;
        };
        for x in extents {
            if !batch.is_empty()
                && (bytes + u64::from(x.len) > BATCH_BYTES || batch.len() == BATCH_CHUNKS)
            {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            batch.push((&e.path, x));
            bytes += u64::from(x.len);
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Fetches a batch's chunks (each once) and writes them where they belong.
fn write_batch(
    source: &dyn ChunkSource,
    root: &Path,
    batch: &[Piece],
    progress: &Progress,
) -> Result<u64> {
    let mut ids: Vec<ChunkId> = Vec::with_capacity(batch.len());
    let mut index: HashMap<ChunkId, usize> = HashMap::with_capacity(batch.len());
    for (_, x) in batch {
        index.entry(x.id).or_insert_with(|| {
            ids.push(x.id);
            ids.len() - 1
        });
    }
    let data = source.chunks(&ids)?;
    if data.len() != ids.len() {
        return Err(Error::Invalid(format!(
            "asked for {} chunks, got {}",
            ids.len(),
            data.len()
        )));
    }
    let mut open: Option<(&[u8], fs::File)> = None;
    let mut written = 0;
    for (path, x) in batch {
        let p = target_path(root, path);
        if open.as_ref().is_none_or(|(o, _)| o != path) {
            open = Some((path, OpenOptions::new().write(true).open(&p).at(&p)?));
        }
        let (_, f) = open.as_ref().expect("opened above");
        let d = &data[index[&x.id]];
        f.write_all_at(d, x.offset).at(&p)?;
        progress.fetch_add(d.len() as u64, Ordering::Relaxed);
        written += d.len() as u64;
    }
    Ok(written)
}

/// Owner, then mode (chown clears setuid bits), then xattrs (chown clears file
/// capabilities), then times.
fn apply_metadata(root: &Path, e: &Entry, as_root: bool) -> Result<()> {
    let p = target_path(root, &e.path);
    if fs::symlink_metadata(&p).is_err() {
        return Ok(()); // a device node we could not create
    }
    let c = cstr(&p)?;
    let is_link = matches!(e.kind, EntryKind::Symlink { .. });
    if as_root {
        // SAFETY: valid C string.
        os_err(unsafe { libc::lchown(c.as_ptr(), e.uid, e.gid) }, &p, ())?;
    }
    if !is_link {
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode)).at(&p)?;
    }
    for x in &e.xattrs {
        let name = OsStr::from_bytes(&x.name);
        if let Err(err) = xattr::set(&p, name, &x.value) {
            // Unprivileged users cannot set trusted.* or security.* attributes.
            if as_root || err.raw_os_error() != Some(libc::EPERM) {
                return Err(err).at(&p);
            }
        }
    }
    let times = [
        libc::timespec {
            tv_sec: e.mtime as libc::time_t,
            tv_nsec: e.mtime_nsec as _,
        },
        libc::timespec {
            tv_sec: e.mtime as libc::time_t,
            tv_nsec: e.mtime_nsec as _,
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    os_err(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        &p,
        (),
    )
}
