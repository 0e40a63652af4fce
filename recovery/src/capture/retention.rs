//! Retention for captures: the policy (restic's semantics, the archive's `retention`) decides
//! over a source's capture records; the disk and file snapshots of the records that go, go
//! with them. Snapshots of a capture that never stored its record (interrupted) go too, but
//! only those older than the newest record: a capture running now is younger than that.

use anyhow::Result;
use ignite_archive::retention::{apply, Policy};
use ignite_archive::Store;
use serde::Serialize;

use super::record::{short, Record, LABEL_CAPTURE};

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Capture records kept, with why.
    pub kept: Vec<(String, Vec<String>)>,
    /// Record ids removed.
    pub removed: Vec<String>,
    /// Disk and file snapshots removed with them (or left by interrupted captures).
    pub removed_data: Vec<String>,
}

impl PruneReport {
    /// What a prune of `name`'s captures kept and removed, a line each, as shown to people.
    pub fn lines(&self, name: &str, dry_run: bool) -> Vec<String> {
        let verb = if dry_run { "would remove" } else { "remove" };
        let mut out: Vec<String> = self
            .kept
            .iter()
            .map(|(id, why)| format!("keep   {name}@{} ({})", short(id), why.join(", ")))
            .collect();
        out.extend(
            self.removed
                .iter()
                .map(|id| format!("{verb} {name}@{}", short(id))),
        );
        if !self.removed_data.is_empty() {
            out.push(format!(
                "{verb} {} disk/file snapshot(s) of those captures; `ignite archive gc` frees their space",
                self.removed_data.len()
            ));
        }
        out
    }
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
