//! Restores: a captured disk written back to an image file or a block device, every chunk
//! verified (its SHA-256 id) before the target can hold a partial result.
//!
//! - An image file is written beside the target under a temporary name, synced and renamed
//!   over it: a failure (a damaged chunk, a full disk) leaves the old file, or none.
//! - A block device cannot be swapped, so every chunk is read and checked first, then the
//!   disk is written; a device smaller than the captured disk is refused before either, with
//!   the size that works.

use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use ignite_archive::{export_image, Manifest, Progress, SnapshotKind, Store};
use rayon::prelude::*;

use crate::capture::record::short;

/// Where a disk is restored to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    ImageFile,
    BlockDevice { size: u64 },
}

impl Target {
    /// What `path` is: an existing block device (with its size), or an image file (existing
    /// or not; its directory must exist).
    pub fn of(path: &Path) -> Result<Target> {
        match std::fs::metadata(path) {
            Ok(md) if md.file_type().is_block_device() => {
                // A block device's end is its size.
                let size = std::fs::File::open(path)
                    .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
                    .with_context(|| format!("{}: cannot read its size", path.display()))?;
                Ok(Target::BlockDevice { size })
            }
            Ok(md) if md.is_file() => Ok(Target::ImageFile),
            Ok(_) => bail!(
                "{}: neither an image file nor a block device",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !dir.is_dir() {
                    bail!(
                        "{}: its directory {} does not exist",
                        path.display(),
                        dir.display()
                    );
                }
                Ok(Target::ImageFile)
            }
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }
}

/// The captured disk's size; a block snapshot is required.
pub fn disk_size(m: &Manifest) -> Result<u64> {
    if m.kind != SnapshotKind::Image {
        bail!(
            "snapshot {}@{} is a file tree, not a disk; restore it with `ignite archive export --dir`",
            m.name,
            short(&m.id)
        );
    }
    Ok(m.image_size.unwrap_or(0))
}

/// Fails, before anything is written, when `target` cannot hold snapshot `m`.
pub fn check_fits(m: &Manifest, path: &Path, target: Target) -> Result<()> {
    let need = disk_size(m)?;
    if let Target::BlockDevice { size } = target {
        if size < need {
            bail!(
                "{} holds {size} bytes ({}), smaller than the captured disk {}@{}: it needs at \
                 least {need} bytes ({}); restore to a disk of that size or larger, or to an image file",
                path.display(),
                ignite_profiles::human(size),
                m.name,
                short(&m.id),
                ignite_profiles::human(need)
            );
        }
    }
    Ok(())
}

/// Reads and checks every chunk of `m` (the store verifies each against its id).
pub fn verify(store: &Store, m: &Manifest, progress: &Progress) -> Result<()> {
    let blocks = store.load_image(m)?;
    let bs = m.block_size.unwrap_or(1) as u64;
    blocks.par_iter().try_for_each(|b| -> Result<()> {
        if let Some(id) = b {
            store.read_chunk(id).with_context(|| {
                format!(
                    "snapshot {}@{}: a chunk is damaged or missing; nothing was written \
                     (`ignite archive verify` lists the damage)",
                    m.name,
                    short(&m.id)
                )
            })?;
        }
        progress.fetch_add(bs, Ordering::Relaxed);
        Ok(())
    })
}

/// Restores disk snapshot `m` to `path` (see the module docs); returns bytes written.
pub fn restore_disk(store: &Store, m: &Manifest, path: &Path, progress: &Progress) -> Result<u64> {
    let target = Target::of(path)?;
    check_fits(m, path, target)?;
    match target {
        Target::BlockDevice { .. } => {
            verify(store, m, &Progress::default())?;
            export_image(store, m, path, progress)
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Target::ImageFile => {
            let tmp = temp_beside(path);
            let _ = std::fs::remove_file(&tmp);
            let written = export_image(store, m, &tmp, progress).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                anyhow::Error::new(e).context(format!(
                    "snapshot {}@{}: restore to {} failed; the target is unchanged",
                    m.name,
                    short(&m.id),
                    path.display()
                ))
            })?;
            std::fs::rename(&tmp, path).with_context(|| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
            // The rename is durable once the directory is.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                OpenOptions::new().read(true).open(dir)?.sync_all()?;
            }
            Ok(written)
        }
    }
}

/// `DIR/.NAME.restoring`: same file system as `path`, so the rename is atomic.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.restoring"))
}
