//! Block captures: each disk becomes a block snapshot `NAME:diskN`. With a change set (the
//! regions written since the disk's previous capture, from the monitor's change log or a
//! QEMU dirty bitmap) only those regions are read and the rest comes from that capture;
//! without one the disk is read in full (holes and zeros are still never stored).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ignite_archive::{ImageSource, ImportOptions, Manifest, ParentChoice, Progress, Store};

use super::record::{disk_snapshot_name, LABEL_CAPTURE};

/// Regions written since a capture, and which capture (its disk snapshot id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub base: String,
    /// Byte ranges (offset, length).
    pub ranges: Vec<(u64, u64)>,
}

/// One disk to capture.
#[derive(Debug, Clone)]
pub struct BlockDisk {
    pub index: usize,
    /// The image or device to read (for a running guest: while its writes are held).
    pub path: PathBuf,
    /// `None`: read it all (first capture, or the change log cannot be trusted).
    pub changes: Option<Changes>,
}

/// Captures `disk` of `name` into `store`; returns its snapshot.
pub fn capture_disk(
    store: &Store,
    name: &str,
    disk: &BlockDisk,
    progress: &Progress,
) -> Result<Manifest> {
    let mut opts = ImportOptions::new(&disk_snapshot_name(name, disk.index));
    opts.labels.insert(LABEL_CAPTURE.into(), "disk".into());
    let changed;
    let src = match &disk.changes {
        Some(c) => {
            let base = store
                .resolve(&c.base)
                .with_context(|| format!("disk {}: its previous capture {}", disk.index, c.base))?;
            let (Some(size), Some(bs)) = (base.image_size, base.block_size) else {
                bail!(
                    "disk {}: previous capture {} is not a disk",
                    disk.index,
                    c.base
                );
            };
            opts.parent = ParentChoice::Id(base.id.clone());
            changed = blocks_touched(&c.ranges, size, bs as u64);
            ImageSource {
                path: &disk.path,
                changed: Some(&changed),
            }
        }
        None => {
            // A full read still dedups against the last capture; naming it as the parent
            // keeps the history a chain.
            opts.parent = ParentChoice::Auto;
            ImageSource {
                path: &disk.path,
                changed: None,
            }
        }
    };
    ignite_archive::import_image(store, src, &opts, progress).with_context(|| {
        format!(
            "cannot capture disk {} ({})",
            disk.index,
            disk.path.display()
        )
    })
}

/// One flag per block of `block_size` bytes of a `size`-byte disk: true where any range
/// touches the block.
pub fn blocks_touched(ranges: &[(u64, u64)], size: u64, block_size: u64) -> Vec<bool> {
    let n = size.div_ceil(block_size) as usize;
    let mut out = vec![false; n];
    for &(off, len) in ranges {
        if len == 0 || off >= size {
            continue;
        }
        let first = (off / block_size) as usize;
        let last = ((off.saturating_add(len).min(size) - 1) / block_size) as usize;
        for b in &mut out[first..=last] {
            *b = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_every_block_they_touch() {
        let bs = 64 << 10;
        let t = blocks_touched(
            &[(0, 1), (bs - 1, 2), (5 * bs, bs), (10 * bs - 1, 100)],
            10 * bs - 10,
            bs,
        );
        let marked: Vec<usize> = t
            .iter()
            .enumerate()
            .filter(|(_, &b)| b)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(marked, vec![0, 1, 5, 9]);
        assert!(blocks_touched(&[(100 * bs, 5)], 10 * bs, bs)
            .iter()
            .all(|b| !b));
    }
}
