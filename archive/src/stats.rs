//! `stats`: what the store holds and what deduplication and compression save.

use crate::error::Result;
use crate::store::Store;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;

/// Bytes processed so far by an import or export, for progress display from another thread.
pub type Progress = AtomicU64;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    pub snapshots: usize,
    /// Sum of every snapshot's logical size (what restoring them all would write).
    pub logical_bytes: u64,
    /// Bytes of pack files on disk.
    pub stored_bytes: u64,
    pub chunks: usize,
    /// Uncompressed bytes of the unique chunks.
    pub unique_bytes: u64,
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    pub total_ratio: f64,
    /// Packs whose trailer cannot be read (their chunks are not counted).
    pub damaged_packs: usize,
}

pub fn stats(store: &Store) -> Result<StoreStats> {
    let mut s = StoreStats::default();
    let snaps = store.list_snapshots()?;
    s.snapshots = snaps.len();
    s.logical_bytes = snaps.iter().map(|m| m.stats.logical_bytes).sum();
    let mut seen = HashSet::new();
    let mut stored_chunk_bytes = 0u64;
    for (_, _, path) in store.list_packs()? {
        s.stored_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let Ok(entries) = crate::pack::read_trailer(&path) else {
            s.damaged_packs += 1; // `verify` says what is wrong with it
            continue;
        };
        for e in entries {
            if seen.insert(e.id) {
                s.unique_bytes += e.raw_len as u64;
                stored_chunk_bytes += e.stored_len as u64;
            }
        }
    }
    s.chunks = seen.len();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let zero: u64 = snaps.iter().map(|m| m.stats.zero_bytes).sum();
    s.dedup_ratio = ratio(s.logical_bytes - zero, s.unique_bytes);
    s.compression_ratio = ratio(s.unique_bytes, stored_chunk_bytes);
    s.total_ratio = ratio(s.logical_bytes, s.stored_bytes);
    Ok(s)
}
