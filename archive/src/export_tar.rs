//! File-tree snapshots out as a tar stream (GNU format, PAX records for xattrs and sub-second
//! mtimes), readable by GNU tar with `--xattrs`.

use crate::error::{Error, Result};
use crate::snapshot::{check_tree, Entry, EntryKind, Extent, Manifest};
use crate::store::Store;
use rayon::prelude::*;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

fn io(e: std::io::Error) -> Error {
    Error::TarStream(format!("writing: {e}"))
}

/// Streams a file's content in order, decompressing a window of chunks in parallel ahead of
/// the writer.
struct Content<'a> {
    store: &'a Store,
    extents: &'a [Extent],
    size: u64,
    pos: u64,
    next: usize,
    ready: std::collections::VecDeque<(u64, Vec<u8>)>,
    buf: Vec<u8>,
    buf_at: usize,
}

const AHEAD: usize = 16;

impl Read for Content<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        if self.buf_at < self.buf.len() {
            let n = out.len().min(self.buf.len() - self.buf_at);
            out[..n].copy_from_slice(&self.buf[self.buf_at..self.buf_at + n]);
            self.buf_at += n;
            self.pos += n as u64;
            return Ok(n);
        }
        if self.ready.is_empty() && self.next < self.extents.len() {
            let end = (self.next + AHEAD).min(self.extents.len());
            let batch: Vec<_> = self.extents[self.next..end]
                .par_iter()
                .map(|x| self.store.read_chunk(&x.id).map(|d| (x.offset, d)))
                .collect::<Result<_>>()
                .map_err(std::io::Error::other)?;
            self.ready.extend(batch);
            self.next = end;
        }
        // Zeros up to the next extent (a hole or an all-zero chunk), else the extent.
        let next_off = self.ready.front().map(|(o, _)| *o).unwrap_or(self.size);
        if self.pos < next_off {
            let n = (out.len() as u64).min(next_off - self.pos) as usize;
            out[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let (_, data) = self.ready.pop_front().expect("extent at pos");
        self.buf = data;
        self.buf_at = 0;
        self.read(out)
    }
}

fn tar_path(e: &Entry) -> PathBuf {
    let mut p = if e.path.is_empty() {
        b".".to_vec()
    } else {
        e.path.clone()
    };
    if e.kind == EntryKind::Dir {
        p.push(b'/');
    }
    PathBuf::from(OsStr::from_bytes(&p))
}

pub fn export_tar(store: &Store, m: &Manifest, out: impl Write) -> Result<u64> {
    let entries = store.load_tree(m)?;
    check_tree(&entries)?;
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let mut bytes = 0;
    for e in &entries {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for x in &e.xattrs {
            pax.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(&x.name)),
                x.value.clone(),
            ));
        }
        if e.mtime_nsec != 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", e.mtime, e.mtime_nsec).into_bytes(),
            ));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(e.uid as u64);
        h.set_gid(e.gid as u64);
        h.set_mtime(e.mtime.max(0) as u64);
        h.set_size(0);
        let path = tar_path(e);
        match &e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
            }
            EntryKind::File { size, extents } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                let content = Content {
                    store,
                    extents,
                    size: *size,
                    pos: 0,
                    next: 0,
                    ready: Default::default(),
                    buf: Vec::new(),
                    buf_at: 0,
                };
                b.append_data(&mut h, &path, content).map_err(io)?;
                bytes += size;
            }
            EntryKind::Symlink { target } | EntryKind::HardLink { target } => {
                h.set_entry_type(if matches!(e.kind, EntryKind::Symlink { .. }) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                b.append_link(&mut h, &path, OsStr::from_bytes(target))
                    .map_err(io)?;
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                h.set_entry_type(if matches!(e.kind, EntryKind::CharDevice { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*major).map_err(io)?;
                h.set_device_minor(*minor).map_err(io)?;
                b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
            }
            EntryKind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
            }
        }
    }
    b.into_inner().map_err(io)?.flush().map_err(io)?;
    Ok(bytes)
}
