//! Retention for captures: the policy (restic's semantics, the archive's `retention`) decides
//! over a source's capture records; the disk and file snapshots of the records that go, go
//! with them. Snapshots of a capture that never stored its record (interrupted) go too, but
//! only those older than the newest record: a capture running now is younger than that.

use anyhow::Result;
use ignite_archive::retention::{apply, Policy};
use ignite_archive::Store;
use serde::Serialize;

use super::record::{Record, LABEL_CAPTURE};

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Capture records kept, with why.
    pub kept: Vec<(String, Vec<String>)>,
    /// Record ids removed.
    pub removed: Vec<String>,
    /// Disk and file snapshots removed with them (or left by interrupted captures).
    pub removed_data: Vec<String>,
}

/// Applies `policy` to the captures of `name`; with `dry_run` only decides.
pub fn prune(store: &Store, name: &str, policy: &Policy, dry_run: bool) -> Result<PruneReport> {
    let all = store.list_snapshots()?;
    let records: Vec<_> = all
        .iter()
        .filter(|m| m.name == name && m.labels.contains_key(LABEL_CAPTURE))
        .cloned()
        .collect();
    let mut report = PruneReport::default();
    let decisions = apply(policy, &records)?;
    let mut referenced = std::collections::HashSet::new();
    for d in &decisions {
        if d.keep {
            let (_, r) = Record::load(store, &d.id)?;
            referenced.extend(r.snapshot_ids());
            report.kept.push((d.id.clone(), d.reasons.clone()));
        } else {
            report.removed.push(d.id.clone());
        }
    }
    let newest_record = records.iter().map(|m| (m.time, m.time_nsec)).max();
    let prefix = format!("{name}:");
    for m in &all {
        let data_of_name = m.name.starts_with(&prefix) && m.labels.contains_key(LABEL_CAPTURE);
        let older = newest_record.is_some_and(|t| (m.time, m.time_nsec) <= t);
        if data_of_name && older && !referenced.contains(&m.id) {
            report.removed_data.push(m.id.clone());
        }
    }
    if !dry_run {
        // Records first: a capture is gone once its record is; its data after.
        for id in report.removed.iter().chain(&report.removed_data) {
            store.forget(id)?;
        }
    }
    Ok(report)
}
