//! Block snapshots out to a sparse raw image or a block device.

use crate::error::{IoContext, Result};
use crate::snapshot::Manifest;
use crate::stats::Progress;
use crate::store::Store;
use rayon::prelude::*;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::atomic::Ordering;

pub fn export_image(store: &Store, m: &Manifest, dest: &Path, progress: &Progress) -> Result<u64> {
    let blocks = store.load_image(m)?;
    let size = m.image_size.unwrap_or(0);
    let bs = m.block_size.unwrap_or(1) as u64;
    let is_device = fs::metadata(dest)
        .map(|md| md.file_type().is_block_device())
        .unwrap_or(false);
    let file = OpenOptions::new()
        .write(true)
        .create(!is_device)
        .truncate(!is_device)
        .open(dest)
        .at(dest)?;
    if !is_device {
        file.set_len(size).at(dest)?; // all holes; data blocks are written below
    }
    let zeros = vec![0u8; bs as usize];
    let written = blocks
        .par_iter()
        .enumerate()
        .map(|(i, b)| -> Result<u64> {
            let off = i as u64 * bs;
            let len = bs.min(size - off);
            progress.fetch_add(len, Ordering::Relaxed);
            match b {
                Some(id) => {
                    let data = store.read_chunk(id)?;
                    file.write_all_at(&data, off).at(dest)?;
                    Ok(data.len() as u64)
                }
                // A device holds old data where the image has zeros: write them.
                None if is_device => {
                    file.write_all_at(&zeros[..len as usize], off).at(dest)?;
                    Ok(0)
                }
                None => Ok(0),
            }
        })
        .sum::<Result<u64>>()?;
    file.sync_all().at(dest)?;
    Ok(written)
}
