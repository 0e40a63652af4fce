//! What every import shares: options, choosing the parent snapshot, building the draft.

use crate::error::Result;
use crate::snapshot::validate_name;
use crate::snapshot::{Manifest, SnapshotKind};
use crate::store::Store;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The latest snapshot of the same name, kind and labels.
    #[default]
    Auto,
    None,
    Id(String),
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub parent: ParentChoice,
    /// Directory imports: stay on the starting file system, as `tar --one-file-system`.
    pub one_file_system: bool,
}

impl ImportOptions {
    pub fn new(name: &str) -> Self {
        ImportOptions {
            name: name.to_string(),
            one_file_system: true,
            ..Default::default()
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        validate_name(&self.name)
    }

    pub(crate) fn find_parent(
        &self,
        store: &Store,
        kind: SnapshotKind,
    ) -> Result<Option<Manifest>> {
        Ok(match &self.parent {
            ParentChoice::None => None,
            ParentChoice::Id(spec) => Some(store.resolve(spec)?).filter(|m| m.kind == kind),
            ParentChoice::Auto => store
                .list_snapshots()?
                .into_iter()
                .rev()
                .find(|m| m.name == self.name && m.kind == kind && m.labels == self.labels),
        })
    }
}
