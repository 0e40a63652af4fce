//! Raw disk images and block devices into block snapshots: fixed, aligned chunks; holes and
//! all-zero blocks are never read twice, hashed or stored.
//!
//! With a parent snapshot of the same disk and the byte ranges written since (the monitor's
//! change log, `ChangeSet::ranges`, or a QEMU dirty bitmap read through NBD's
//! `qemu:dirty-bitmap:` context: both are (offset, length) lists), only blocks that overlap
//! a written range are read; the others are taken from the parent, once the destination
//! has confirmed it still holds their chunks.

use crate::chunk_sink::{ChunkSink, LocalSink};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::image_reader::ImageReader;
use crate::import::ImportOptions;
use crate::pipeline;
use crate::snapshot::{Draft, DraftContent, Manifest, SnapshotKind, SnapshotStats};
use crate::stats::Progress;
use crate::store::Store;
use crate::writer::Writer;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What to read. With `changed`, the byte ranges (offset, length) written since the parent
/// snapshot: blocks that overlap none are taken from the parent without reading.
pub struct ImageSource<'a> {
    pub reader: &'a dyn ImageReader,
    pub changed: Option<&'a [(u64, u64)]>,
}

pub fn import_image(
    store: &Store,
    src: ImageSource,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Manifest> {
    opts.check()?;
    let parent = opts.find_parent(store, SnapshotKind::Image)?;
    let parent_blocks = match (&parent, src.changed) {
        (Some(m), Some(_)) => store.load_image(m)?,
        (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "{}: a changed-block import needs a parent snapshot",
                src.reader.name()
            )))
        }
        _ => Vec::new(),
    };
    let writer = Writer::new(store)?;
    let parent = parent.as_ref().map(|m| (m, parent_blocks.as_slice()));
    let draft = import_image_into(&LocalSink(&writer), src, opts, parent, progress)?;
    writer.commit(draft)
}

/// Which blocks of `nblocks` overlap one of the byte ranges; an error for a range past
/// `size`.
pub fn changed_blocks(ranges: &[(u64, u64)], size: u64, block_size: u64) -> Result<Vec<bool>> {
    let nblocks = size.div_ceil(block_size) as usize;
    let mut out = vec![false; nblocks];
    for &(offset, len) in ranges {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "changed range {offset}+{len} lies beyond the image's {size} bytes"
                ))
            })?;
        if len > 0 {
            for b in &mut out[(offset / block_size) as usize..end.div_ceil(block_size) as usize] {
                *b = true;
            }
        }
    }
    Ok(out)
}

/// The same import into any sink (a remote server's, say); commit the draft where the
/// chunks went. `parent` is the snapshot this one follows (its manifest, and, when
/// `src.changed` is given, its block list, e.g. fetched from the server); `opts.parent` is
/// not consulted.
pub fn import_image_into(
    sink: &dyn ChunkSink,
    src: ImageSource,
    opts: &ImportOptions,
    parent: Option<(&Manifest, &[Option<ChunkId>])>,
    progress: &Progress,
) -> Result<Draft> {
    opts.check()?;
    let started = Instant::now();
    let reader = src.reader;
    let name = reader.name();
    let size = reader.size();
    let bs = u64::from(sink.config().block_size);
    let nblocks = size.div_ceil(bs) as usize;
    // Blocks taken from the parent: (index, its chunk in the parent).
    let mut from_parent: Vec<(usize, Option<ChunkId>)> = Vec::new();
    let mut read = vec![false; nblocks];
    let mut has_data = vec![false; nblocks];
    for (off, len) in reader.data_ranges().at(&name)? {
        let end = off.saturating_add(len).min(size);
        if len == 0 || off >= end {
            continue;
        }
        for flag in &mut has_data[(off / bs) as usize..end.div_ceil(bs) as usize] {
            *flag = true;
        }
    }
    match (parent, src.changed) {
        (Some((m, pb)), Some(ranges)) => {
            if m.image_size != Some(size) || m.block_size != Some(bs as u32) {
                return Err(Error::Invalid(format!(
                    "{}: changed-block import needs a parent of the same size and block size",
                    name
                )));
            }
            if pb.len() != nblocks {
                return Err(Error::Invalid(format!(
                    "parent {} lists {} blocks, the image has {nblocks}",
                    m.id,
                    pb.len()
                )));
            }
            for (i, changed) in changed_blocks(ranges, size, bs)?.into_iter().enumerate() {
                if changed {
                    read[i] = has_data[i];
                } else {
                    from_parent.push((i, pb[i]));
                }
            }
        }
        (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "{}: a changed-block import needs a parent snapshot",
                name
            )))
        }
        _ => read = has_data.clone(),
    }
    let mut blocks: Vec<Option<ChunkId>> = vec![None; nblocks];
    let ids: Vec<ChunkId> = from_parent.iter().filter_map(|(_, id)| *id).collect();
    let have = pipeline::still_there(sink, &ids)?;
    for (i, id) in from_parent {
        match id {
            Some(id) if !have.contains(&id) => read[i] = has_data[i], // gone: read it after all
            _ => blocks[i] = id,
        }
    }
    let block_len = |i: usize| bs.min(size - i as u64 * bs);
    progress.fetch_add(
        (0..nblocks)
            .filter(|&i| !read[i])
            .map(block_len)
            .sum::<u64>(),
        Ordering::Relaxed,
    );
    let mut read_bytes = 0u64;
    let (seqs, ids) = pipeline::run(sink, |sub| {
        let mut seqs: Vec<(usize, usize)> = Vec::new();
        for i in (0..nblocks).filter(|&i| read[i]) {
            let mut buf = vec![0u8; block_len(i) as usize];
            reader.read_at(&mut buf, i as u64 * bs).at(&name)?;
            read_bytes += buf.len() as u64;
            progress.fetch_add(buf.len() as u64, Ordering::Relaxed);
            seqs.push((i, sub.submit(buf)?));
        }
        Ok(seqs)
    })?;
    for (i, seq) in seqs {
        blocks[i] = ids[seq];
    }
    let stored: u64 = (0..nblocks)
        .filter(|&i| blocks[i].is_some())
        .map(block_len)
        .sum();
    let stats = SnapshotStats {
        logical_bytes: size,
        zero_bytes: size - stored,
        entries: nblocks as u64,
        chunks: blocks.iter().flatten().count() as u64,
        read_bytes,
        seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    Ok(Draft {
        name: opts.name.clone(),
        labels: opts.labels.clone(),
        parent: parent.map(|(m, _)| m.id.clone()),
        content: DraftContent::Image {
            size,
            block_size: bs as u32,
            blocks,
        },
        stats,
    })
}
