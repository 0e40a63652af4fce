//! Captures (`make_net_recovery`): a machine's disks or file systems into the archive, with
//! the record a recovery needs ([`record`]).
//!
//! A block capture runs in two halves. [`read_disks`] reads each disk at one consistent point
//! — the caller holds the guest's writes, or reads a point-in-time view — and only the
//! regions its change set names when it has one. [`finish`] then, with the guest running
//! again, probes each captured disk's layout and system from the store itself (so the
//! record describes exactly what was captured) and saves the record last: a capture killed
//! before that leaves disk snapshots that no record names, which the next capture dedups
//! against and retention forgets.

pub mod as_profile;
pub mod block;
pub mod compare;
pub mod diff;
pub mod files;
pub mod layout;
pub mod record;
pub mod remote;
pub mod retention;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use ignite_archive::{Manifest, Progress, Store};

use crate::disk::SnapshotDisk;
use block::BlockDisk;
use record::{CaptureKind, CaptureStats, DiskRecord, FilesRecord, Record, SourceInfo};

/// Reads every disk into its snapshot (see the module docs).
pub fn read_disks(
    store: &Store,
    name: &str,
    disks: &[BlockDisk],
    progress: &Progress,
) -> Result<Vec<Manifest>> {
    disks
        .iter()
        .map(|d| block::capture_disk(store, name, d, progress))
        .collect()
}

/// What a capture stored besides its record.
pub enum Content<'a> {
    /// A block capture: each disk's index and snapshot.
    Disks(&'a [(usize, Manifest)]),
    /// A file capture: its tree, what it left out, and the system as the tree and the
    /// client's disks describe it.
    Files {
        tree: &'a Manifest,
        excluded: Vec<String>,
        system: layout::SystemInfo,
    },
}

/// Probes the captured disks and saves the record; returns the record's snapshot and the
/// record. `stats` comes in with what the caller knows (pause, full reads, start time).
pub fn finish(
    store: Arc<Store>,
    name: &str,
    source: SourceInfo,
    disks: &[(usize, Manifest)],
    stats: CaptureStats,
    started: Instant,
) -> Result<(Manifest, Record)> {
    finish_capture(store, name, source, Content::Disks(disks), stats, started)
}

/// [`finish`] for either kind of capture: block captures' disks are probed from the store,
/// file captures bring their system description.
pub fn finish_capture(
    store: Arc<Store>,
    name: &str,
    source: SourceInfo,
    content: Content,
    mut stats: CaptureStats,
    started: Instant,
) -> Result<(Manifest, Record)> {
    let add = |stats: &mut CaptureStats, m: &Manifest| {
        stats.logical_bytes += m.stats.logical_bytes;
        stats.read_bytes += m.stats.read_bytes;
        stats.new_stored_bytes += m.stats.new_stored_bytes;
    };
    let (kind, records, files, system) = match content {
        Content::Disks(disks) => {
            let mut records = Vec::new();
            let mut system = None;
            for (index, m) in disks {
                let view: Arc<dyn crate::disk::ImageReader + Send> =
                    Arc::new(SnapshotDisk::open(store.clone(), m)?);
                let layout = layout::probe(view.as_ref())?;
                if system.is_none() {
                    let info = layout::system_info(view.clone(), &layout);
                    if info.root_partition.is_some() {
                        system = Some(info);
                    }
                }
                add(&mut stats, m);
                records.push(DiskRecord {
                    index: *index,
                    snapshot: m.id.clone(),
                    layout,
                });
            }
            let system = system.unwrap_or_else(|| layout::SystemInfo {
                notes: vec!["no disk holds an ext4 root file system with /etc".into()],
                ..Default::default()
            });
            (CaptureKind::Block, records, None, system)
        }
        Content::Files {
            tree,
            excluded,
            system,
        } => {
            add(&mut stats, tree);
            let files = FilesRecord {
                snapshot: tree.id.clone(),
                excluded,
            };
            (CaptureKind::Files, Vec::new(), Some(files), system)
        }
    };
    stats.seconds = started.elapsed().as_secs_f64();
    let record = Record {
        format: record::FORMAT,
        name: name.to_string(),
        kind,
        source,
        disks: records,
        files,
        system,
        stats,
    };
    let m = record.save(&store)?;
    Ok((m, record))
}
