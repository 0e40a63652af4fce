//! Block captures: each disk becomes a block snapshot `NAME:diskN`. With a change set (the
//! regions written since the disk's previous capture, from the monitor's change log or a
//! QEMU dirty bitmap) only those regions are read and the rest comes from that capture;
//! without one the disk is read in full (holes and zeros are still never stored).

use anyhow::{bail, Context, Result};
use ignite_archive::{
    ImageReader, ImageSource, ImportOptions, Manifest, ParentChoice, Progress, Store,
};

use super::record::{disk_snapshot_name, LABEL_CAPTURE};

/// Regions written since a capture, and which capture (its disk snapshot id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub base: String,
    /// Byte ranges (offset, length).
    pub ranges: Vec<(u64, u64)>,
}

/// One disk to capture.
pub struct BlockDisk {
    pub index: usize,
    /// The image or device to read (for a running guest: while its writes are held), or a
    /// point-in-time view of it.
    pub reader: Box<dyn ImageReader + Send>,
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
    let src = match &disk.changes {
        Some(c) => {
            let base = store
                .resolve(&c.base)
                .with_context(|| format!("disk {}: its previous capture {}", disk.index, c.base))?;
            if base.image_size.is_none() {
                bail!(
                    "disk {}: previous capture {} is not a disk",
                    disk.index,
                    c.base
                );
            }
            opts.parent = ParentChoice::Id(base.id.clone());
            ImageSource {
                reader: disk.reader.as_ref(),
                changed: Some(&c.ranges),
            }
        }
        None => {
            // A full read still dedups against the last capture; naming it as the parent
            // keeps the history a chain.
            opts.parent = ParentChoice::Auto;
            ImageSource {
                reader: disk.reader.as_ref(),
                changed: None,
            }
        }
    };
    ignite_archive::import_image(store, src, &opts, progress).with_context(|| {
        format!(
            "cannot capture disk {} ({})",
            disk.index,
            disk.reader.name()
        )
    })
}
