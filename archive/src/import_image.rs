//! Raw disk images and block devices into block snapshots: fixed, aligned chunks; holes and
//! all-zero blocks are never read twice, hashed or stored.

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{data_ranges, source_size};
use crate::id::ChunkId;
use crate::import::ImportOptions;
use crate::pipeline;
use crate::snapshot::{Manifest, SnapshotKind, SnapshotStats};
use crate::stats::Progress;
use crate::store::Store;
use crate::writer::{Draft, DraftContent, Writer};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Which blocks to read. With `changed`, blocks marked false are taken from the parent
/// snapshot without reading (the monitor's change log says they were not written).
pub struct ImageSource<'a> {
    pub path: &'a Path,
    pub changed: Option<&'a [bool]>,
}

pub fn import_image(
    store: &Store,
    src: ImageSource,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<Manifest> {
    opts.check()?;
    let started = Instant::now();
    let path = src.path;
    let file = File::open(path).at(path)?;
    let size = source_size(&file).at(path)?;
    let bs = store.config().block_size as u64;
    let nblocks = size.div_ceil(bs) as usize;
    let parent = opts.find_parent(store, SnapshotKind::Image)?;
    let parent_blocks = match (&parent, src.changed) {
        (Some(m), Some(changed)) => {
            if m.image_size != Some(size) || m.block_size != Some(bs as u32) {
                return Err(Error::Invalid(format!(
                    "{}: changed-block import needs a parent of the same size and block size",
                    path.display()
                )));
            }
            if changed.len() != nblocks {
                return Err(Error::Invalid(format!(
                    "{}: change map has {} blocks, the image {nblocks}",
                    path.display(),
                    changed.len()
                )));
            }
            Some(store.load_image(m)?)
        }
        (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "{}: a changed-block import needs a parent snapshot",
                path.display()
            )))
        }
        _ => None,
    };
    // Which blocks hold any data at all.
    let mut has_data = vec![false; nblocks];
    for (a, b) in data_ranges(&file, size) {
        for flag in &mut has_data[(a / bs) as usize..b.div_ceil(bs) as usize] {
            *flag = true;
        }
    }
    let writer = Writer::new(store)?;
    let mut read_bytes = 0u64;
    let mut blocks: Vec<Option<ChunkId>> = vec![None; nblocks];
    let (seqs, ids) = pipeline::run(&writer, |sub| {
        let mut seqs: Vec<(usize, usize)> = Vec::new();
        for (i, block) in blocks.iter_mut().enumerate() {
            let off = i as u64 * bs;
            let len = bs.min(size - off) as usize;
            if let (Some(pb), Some(changed)) = (&parent_blocks, src.changed) {
                if !changed[i] {
                    if let Some(id) = pb[i] {
                        if writer.reference(&id)? {
                            *block = Some(id);
                            progress.fetch_add(len as u64, Ordering::Relaxed);
                            continue;
                        }
                    } else {
                        progress.fetch_add(len as u64, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            if !has_data[i] {
                progress.fetch_add(len as u64, Ordering::Relaxed);
                continue;
            }
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, off).at(path)?;
            read_bytes += len as u64;
            progress.fetch_add(len as u64, Ordering::Relaxed);
            seqs.push((i, sub.submit(buf)?));
        }
        Ok(seqs)
    })?;
    for (i, seq) in seqs {
        blocks[i] = ids[seq];
    }
    let data_blocks = blocks.iter().flatten().count() as u64;
    let stats = SnapshotStats {
        logical_bytes: size,
        zero_bytes: size
            - blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_some())
                .map(|(i, _)| bs.min(size - i as u64 * bs))
                .sum::<u64>(),
        entries: nblocks as u64,
        chunks: data_blocks,
        read_bytes,
        seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    writer.commit(Draft {
        name: opts.name.clone(),
        labels: opts.labels.clone(),
        parent: parent.map(|m| m.id),
        content: DraftContent::Image {
            size,
            block_size: bs as u32,
            blocks,
        },
        stats,
    })
}
