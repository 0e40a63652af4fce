//! The recovery record: everything a restore or clone needs besides the data — the disks'
//! layouts and the snapshots holding them, the source's definition (a guest) or hardware
//! facts (a client), its identity, the boot loader and firmware, and how the capture went.
//!
//! It is stored in the archive beside the data, as the one file `recovery.json` of a small
//! tree snapshot named after the source (`web1`); the disks are block snapshots named
//! `web1:disk0`, `web1:disk1`, ... (file-level captures: one tree `web1:files`). So a store
//! alone is enough to recover (recovery media carry a store), `web1@latest` names the latest
//! capture, and the store's own retention and gc apply.

use anyhow::{bail, Context, Result};
use ignite_archive::{EntryKind, ImportOptions, Manifest, Progress, SnapshotKind, Store};
use serde::{Deserialize, Serialize};

use super::layout::{DiskLayout, SystemInfo};

/// The record's file name inside its snapshot.
pub const RECORD_FILE: &str = "recovery.json";
/// Labels every snapshot of a capture carries.
pub const LABEL_CAPTURE: &str = "ignite.capture";
/// The record format this code writes; older ones are read, newer ones refused.
pub const FORMAT: u32 = 1;
/// Largest record accepted (a guest definition and a few disk layouts are a few KiB).
const MAX_RECORD: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureKind {
    /// Whole disks, block by block.
    Block,
    /// The file systems' contents, as a file tree.
    Files,
}

impl std::fmt::Display for CaptureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            CaptureKind::Block => "block",
            CaptureKind::Files => "files",
        })
    }
}

/// Where the capture came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceInfo {
    /// A guest Ignite runs: its definition as stored (JSON), captured host-side.
    Guest {
        engine: String,
        definition: serde_json::Value,
    },
    /// Any other machine, captured by the agent or by `ignite recovery capture --server`.
    Client {
        mac: Option<String>,
        /// What the agent found: disks, sizes, serials.
        facts: serde_json::Value,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub index: usize,
    /// The block snapshot holding the disk.
    pub snapshot: String,
    pub layout: DiskLayout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesRecord {
    /// The tree snapshot holding the file systems' contents.
    pub snapshot: String,
    pub excluded: Vec<String>,
}

/// How the capture went, for `ignite recovery list` and the benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureStats {
    /// Bytes of the disks (or files) captured.
    pub logical_bytes: u64,
    /// Bytes actually read from the source.
    pub read_bytes: u64,
    /// Compressed bytes this capture added to the store.
    pub new_stored_bytes: u64,
    pub seconds: f64,
    /// How long the guest's writes were held (block captures of running guests).
    pub pause_ms: u64,
    /// Disks read in full although a previous capture exists, and why.
    pub full_reads: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub name: String,
    pub kind: CaptureKind,
    pub source: SourceInfo,
    pub disks: Vec<DiskRecord>,
    pub files: Option<FilesRecord>,
    pub system: SystemInfo,
    pub stats: CaptureStats,
}

impl Record {
    /// Stores the record as snapshot `self.name` (labelled as a capture) and returns it.
    pub fn save(&self, store: &Store) -> Result<Manifest> {
        let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
        let path = dir.path().join(RECORD_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut opts = ImportOptions::new(&self.name);
        opts.labels
            .insert(LABEL_CAPTURE.into(), self.kind.to_string());
        Ok(ignite_archive::import_dir(
            store,
            dir.path(),
            &opts,
            &Progress::default(),
        )?)
    }

    /// The record of capture `spec` (`web1`, `web1@latest`, `web1@3fa9`).
    pub fn load(store: &Store, spec: &str) -> Result<(Manifest, Record)> {
        let m = store.resolve(spec)?;
        if m.kind != SnapshotKind::Tree || !m.labels.contains_key(LABEL_CAPTURE) {
            bail!(
                "snapshot {spec} ({}@{}) is not a capture; `ignite recovery list` shows captures",
                m.name,
                short(&m.id)
            );
        }
        let text = read_file(store, &m, RECORD_FILE)?;
        let r: Record = serde_json::from_slice(&text).with_context(|| {
            format!(
                "capture {}@{}: its {RECORD_FILE} does not parse",
                m.name,
                short(&m.id)
            )
        })?;
        if r.format > FORMAT {
            bail!(
                "capture {}@{} was written in record format {}, newer than this ignite ({FORMAT}); use a newer ignite",
                m.name,
                short(&m.id),
                r.format
            );
        }
        Ok((m, r))
    }

    /// Every snapshot id this capture consists of (record, disks, files).
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.disks
            .iter()
            .map(|d| d.snapshot.clone())
            .chain(self.files.iter().map(|f| f.snapshot.clone()))
            .collect()
    }
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The contents of the regular file `path` of tree snapshot `m`, every chunk verified.
pub fn read_file(store: &Store, m: &Manifest, path: &str) -> Result<Vec<u8>> {
    let entries = store.load_tree(m)?;
    let e = entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .with_context(|| format!("snapshot {}@{} has no {path}", m.name, short(&m.id)))?;
    let EntryKind::File { size, extents } = &e.kind else {
        bail!(
            "snapshot {}@{}: {path} is not a regular file",
            m.name,
            short(&m.id)
        );
    };
    if *size > MAX_RECORD {
        bail!(
            "snapshot {}@{}: {path} is {size} bytes, more than a record can be",
            m.name,
            short(&m.id)
        );
    }
    let mut out = vec![0u8; *size as usize];
    for x in extents {
        let data = store.read_chunk(&x.id)?;
        let end = x.offset as usize + data.len();
        if data.len() != x.len as usize || end > out.len() {
            bail!(
                "snapshot {}@{}: {path} has a chunk that does not fit",
                m.name,
                short(&m.id)
            );
        }
        out[x.offset as usize..end].copy_from_slice(&data);
    }
    Ok(out)
}

/// The snapshot name of disk `index` of `name`'s captures.
pub fn disk_snapshot_name(name: &str, index: usize) -> String {
    format!("{name}:disk{index}")
}

/// The snapshot name of `name`'s file-level captures.
pub fn files_snapshot_name(name: &str) -> String {
    format!("{name}:files")
}
