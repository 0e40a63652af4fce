//! `verify`: every chunk a snapshot needs is present, decompresses and hashes to its id; every
//! snapshot's data file matches its manifest; every pack trailer is intact.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::store::Store;
use rayon::prelude::*;
use std::collections::HashSet;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub packs: usize,
    pub chunks_referenced: usize,
    pub chunks_checked: usize,
    pub bytes_checked: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// `sample`: the fraction of referenced chunks to read (1.0 = all). Snapshot data files and
/// pack trailers are always checked in full.
pub fn verify(store: &Store, sample: f64) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    store.rebuild_index()?;
    for (name, trash, path) in store.list_packs()? {
        report.packs += 1;
        if let Err(e) = crate::pack::read_trailer(&path) {
            report.problems.push(format!(
                "pack {name}{}: {e}",
                if trash { " (in trash)" } else { "" }
            ));
        }
    }
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    for m in store.list_snapshots()? {
        report.snapshots += 1;
        match store.snapshot_chunks(&m) {
            Ok(ids) => referenced.extend(ids),
            Err(e) => report
                .problems
                .push(format!("snapshot {} ({}): {e}", m.id, m.name)),
        }
    }
    report.chunks_referenced = referenced.len();
    let to_check: Vec<ChunkId> = referenced
        .into_iter()
        .filter(|_| sample >= 1.0 || rand::random::<f64>() < sample)
        .collect();
    let results: Vec<std::result::Result<u64, String>> = to_check
        .par_iter()
        .map(|id| match store.read_chunk(id) {
            Ok(d) => Ok(d.len() as u64),
            Err(Error::MissingChunk { .. }) => Err(format!("chunk {id}: missing")),
            Err(e) => Err(format!("chunk {id}: {e}")),
        })
        .collect();
    report.chunks_checked = results.len();
    for r in results {
        match r {
            Ok(n) => report.bytes_checked += n,
            Err(p) => report.problems.push(p),
        }
    }
    Ok(report)
}
