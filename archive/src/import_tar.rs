//! Tar streams (plain, gzip, zstd, xz) into file-tree snapshots.

use crate::chunk_sink::{ChunkSink, LocalSink};
use crate::chunker;
use crate::error::{Error, Result};
use crate::import::ImportOptions;
use crate::paths::{normalize, SymlinkGuard};
use crate::pipeline::{self, PendingExtents};
use crate::snapshot::{Draft, DraftContent, Entry, EntryKind, Manifest, SnapshotStats, Xattr};
use crate::stats::Progress;
use crate::store::Store;
use crate::writer::Writer;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Wraps `input` in the decompressor its first bytes call for.
pub fn decompressing<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 20, input);
    let head = r
        .fill_buf()
        .map_err(|e| Error::TarStream(format!("cannot read: {e}")))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(|e| Error::TarStream(format!("zstd: {e}")))?,
        )
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::bufread::XzDecoder::new_multi_decoder(r))
    } else if head.starts_with(b"BZh") {
        return Err(Error::TarStream(
            "bzip2 is not supported; recompress with zstd, gzip or xz".into(),
        ));
    } else {
        Box::new(r)
    })
}

/// Counts bytes as they are read, for progress.
struct Counting<'p, R> {
    inner: R,
    progress: &'p Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn bad(path: &[u8], what: impl Into<String>) -> Error {
    Error::BadTar {
        entry: String::from_utf8_lossy(path).into_owned(),
        what: what.into(),
    }
}

pub fn import_tar(
    store: &Store,
    input: impl Read,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Manifest> {
    opts.check()?;
    let writer = Writer::new(store)?;
    let draft = import_tar_into(&LocalSink(&writer), input, opts, progress)?;
    writer.commit(draft)
}

/// The same import into any sink (a remote server's, say); commit the draft where the
/// chunks went. A tar stream has no parent: nothing in it says what is unchanged.
pub fn import_tar_into(
    sink: &dyn ChunkSink,
    input: impl Read,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Draft> {
    opts.check()?;
    let started = Instant::now();
    let reader = decompressing(Counting {
        inner: input,
        progress,
    })?;
    let params = sink.config().chunker.clone();
    let ((mut entries, pending, mut stats), ids) = pipeline::run(sink, |sub| {
        let mut entries: Vec<Entry> = Vec::new();
        let mut pending = PendingExtents::default();
        let mut stats = SnapshotStats::default();
        let mut files: HashSet<Vec<u8>> = HashSet::new();
        let mut paths: HashSet<Vec<u8>> = HashSet::new();
        let mut guard = SymlinkGuard::default();
        let mut ar = tar::Archive::new(reader);
        let iter = ar.entries().map_err(|e| Error::TarStream(e.to_string()))?;
        for item in iter {
            let mut e = item.map_err(|e| Error::TarStream(e.to_string()))?;
            let raw_path = e.path_bytes().into_owned();
            let path = normalize(&raw_path).map_err(|err| bad(&raw_path, err.to_string()))?;
            // GNU tar lets a later entry replace an earlier one; a snapshot has one entry per
            // path (a file then a symlink of the same name would make export write through it).
            if !paths.insert(path.clone()) {
                return Err(bad(&raw_path, "appears twice in the archive"));
            }
            guard.check(&path)?;
            let hdr = e.header().clone();
            let num = |r: std::io::Result<u64>, field: &str| {
                r.map_err(|err| bad(&raw_path, format!("bad {field} field: {err}")))
            };
            let mut entry = Entry {
                path: path.clone(),
                kind: EntryKind::Dir,
                mode: num(hdr.mode().map(u64::from), "mode")? as u32 & 0o7777,
                uid: num(hdr.uid(), "uid")? as u32,
                gid: num(hdr.gid(), "gid")? as u32,
                mtime: num(hdr.mtime(), "mtime")? as i64,
                mtime_nsec: 0,
                xattrs: Vec::new(),
                source: None,
            };
            if let Some(exts) = e
                .pax_extensions()
                .map_err(|err| bad(&raw_path, format!("bad pax header: {err}")))?
            {
                for ext in exts {
                    let ext =
                        ext.map_err(|err| bad(&raw_path, format!("bad pax record: {err}")))?;
                    apply_pax(&mut entry, ext.key_bytes(), ext.value_bytes(), &raw_path)?;
                }
            }
            entry.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
            let ty = hdr.entry_type();
            entry.kind = match ty {
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => {
                    let idx = entries.len();
                    // A sparse entry's header size is its stored data, not its length.
                    let hint = (ty != tar::EntryType::GNUSparse).then(|| e.size());
                    let size =
                        chunker::split(&mut e, hint, &params, &entry.path_str(), |off, data| {
                            let len = data.len() as u32;
                            let seq = sub.submit(data)?;
                            pending.push(idx, off, len, seq);
                            Ok(())
                        })?;
                    stats.logical_bytes += size;
                    files.insert(path.clone());
                    EntryKind::File {
                        size,
                        extents: Vec::new(),
                    }
                }
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink {
                    target: e
                        .link_name_bytes()
                        .ok_or_else(|| bad(&raw_path, "symlink without a target"))?
                        .into_owned(),
                },
                tar::EntryType::Link => {
                    let raw = e
                        .link_name_bytes()
                        .ok_or_else(|| bad(&raw_path, "hard link without a target"))?;
                    let target = normalize(&raw).map_err(|err| bad(&raw_path, err.to_string()))?;
                    if !files.contains(&target) {
                        return Err(bad(
                            &raw_path,
                            format!(
                                "hard link to {:?}, which is not an earlier regular file of this archive",
                                String::from_utf8_lossy(&target)
                            ),
                        ));
                    }
                    EntryKind::HardLink { target }
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    let dev = |r: std::io::Result<Option<u32>>| {
                        r.map_err(|err| bad(&raw_path, format!("bad device number: {err}")))
                            .map(|v| v.unwrap_or(0))
                    };
                    let (major, minor) = (dev(hdr.device_major())?, dev(hdr.device_minor())?);
                    if ty == tar::EntryType::Char {
                        EntryKind::CharDevice { major, minor }
                    } else {
                        EntryKind::BlockDevice { major, minor }
                    }
                }
                tar::EntryType::Fifo => EntryKind::Fifo,
                other => {
                    return Err(bad(&raw_path, format!("unsupported entry type {other:?}")));
                }
            };
            if path.is_empty() && entry.kind != EntryKind::Dir {
                return Err(bad(&raw_path, "the archive root must be a directory"));
            }
            if matches!(entry.kind, EntryKind::Symlink { .. }) {
                guard.add(&path);
            }
            entries.push(entry);
        }
        stats.entries = entries.len() as u64;
        Ok((entries, pending, stats))
    })?;
    stats.chunks = ids.iter().flatten().count() as u64;
    stats.read_bytes = stats.logical_bytes;
    pending.resolve(&mut entries, &ids);
    stats.zero_bytes = stats.logical_bytes - crate::snapshot::extent_bytes(&entries);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(Draft {
        name: opts.name.clone(),
        labels: opts.labels.clone(),
        parent: None,
        content: DraftContent::Tree(entries),
        stats,
    })
}

fn apply_pax(entry: &mut Entry, key: &[u8], value: &[u8], raw_path: &[u8]) -> Result<()> {
    let text = || std::str::from_utf8(value).ok().map(str::trim);
    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
        entry.xattrs.retain(|x| x.name != name);
        entry.xattrs.push(Xattr {
            name: name.to_vec(),
            value: value.to_vec(),
        });
    } else if key.starts_with(b"GNU.sparse.") {
        return Err(bad(
            raw_path,
            "PAX-format sparse files are not supported; create the tar with GNU tar's default \
             format (--format=gnu) or without --sparse",
        ));
    } else if key == b"mtime" {
        let t = text().ok_or_else(|| bad(raw_path, "bad pax mtime"))?;
        let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
        entry.mtime = secs
            .parse()
            .map_err(|_| bad(raw_path, format!("bad pax mtime {t:?}")))?;
        let digits: String = frac.chars().take(9).collect();
        if !digits.is_empty() {
            let n: u32 = digits
                .parse()
                .map_err(|_| bad(raw_path, format!("bad pax mtime {t:?}")))?;
            entry.mtime_nsec = n * 10u32.pow(9 - digits.len() as u32);
        }
    } else if key == b"uid" || key == b"gid" {
        let v: u32 = text()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad(raw_path, "bad pax uid/gid"))?;
        if key == b"uid" {
            entry.uid = v;
        } else {
            entry.gid = v;
        }
    }
    Ok(())
}
