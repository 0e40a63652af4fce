//! `diff` of two snapshots (Ignite's `check_net_recovery`): what a restore would change.

use crate::error::{Error, Result};
use crate::snapshot::{Entry, EntryKind, Manifest, SnapshotKind};
use crate::store::Store;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    Added {
        path: String,
    },
    Removed {
        path: String,
    },
    Changed {
        path: String,
        /// What differs: content, type, target, mode, owner, xattrs, mtime, links, size.
        what: Vec<String>,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DiffReport {
    Tree {
        changes: Vec<Change>,
    },
    Image {
        blocks: u64,
        changed_blocks: u64,
        changed_bytes: u64,
    },
}

/// Decides whether two files hold the same bytes when their chunk lists differ (the same
/// content can be chunked differently: a sparse file read from disk is cut at its holes, the
/// same file from a tar stream is not).
pub type SameContent<'a> = dyn Fn(&Entry, &Entry) -> bool + 'a;

fn what_changed(a: &Entry, b: &Entry, same_content: &SameContent) -> Vec<&'static str> {
    let mut w = Vec::new();
    match (&a.kind, &b.kind) {
        (
            EntryKind::File {
                size: sa,
                extents: xa,
            },
            EntryKind::File {
                size: sb,
                extents: xb,
            },
        ) if sa != sb || (xa != xb && !same_content(a, b)) => w.push("content"),
        (EntryKind::File { .. }, EntryKind::File { .. }) => {}
        (ka, kb) if std::mem::discriminant(ka) != std::mem::discriminant(kb) => w.push("type"),
        (ka, kb) if ka != kb => w.push("target"),
        _ => {}
    }
    if a.mode != b.mode {
        w.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        w.push("owner");
    }
    if (a.mtime, a.mtime_nsec) != (b.mtime, b.mtime_nsec) {
        w.push("mtime");
    }
    if a.xattrs != b.xattrs {
        w.push("xattrs");
    }
    w
}

/// Path → (entry, hard-link group). A hard link is compared as the file it names, and the
/// group says which paths share it, so the same tree imported in another order (the first name
/// seen becomes the file) compares equal.
fn canonical(es: &[Entry]) -> BTreeMap<String, (Entry, Vec<String>)> {
    let by_path: BTreeMap<&[u8], &Entry> = es.iter().map(|e| (e.path.as_slice(), e)).collect();
    let mut groups: BTreeMap<&[u8], Vec<String>> = BTreeMap::new();
    for e in es {
        if let EntryKind::HardLink { target } = &e.kind {
            let g = groups.entry(target.as_slice()).or_default();
            if g.is_empty() {
                g.push(String::from_utf8_lossy(target).into_owned());
            }
            g.push(e.path_str());
        }
    }
    let mut out = BTreeMap::new();
    for e in es {
        let (key, entry) = match &e.kind {
            EntryKind::HardLink { target } => match by_path.get(target.as_slice()) {
                Some(t) => (
                    target.as_slice(),
                    Entry {
                        path: e.path.clone(),
                        ..(*t).clone()
                    },
                ),
                None => (e.path.as_slice(), e.clone()),
            },
            _ => (e.path.as_slice(), e.clone()),
        };
        let mut group = groups.get(key).cloned().unwrap_or_default();
        group.sort();
        out.insert(e.path_str(), (entry, group));
    }
    out
}

pub fn diff_trees(a: &[Entry], b: &[Entry], same_content: &SameContent) -> Vec<Change> {
    let (ma, mb) = (canonical(a), canonical(b));
    let mut out = Vec::new();
    for (p, (ea, ga)) in &ma {
        match mb.get(p) {
            None => out.push(Change::Removed { path: p.clone() }),
            Some((eb, gb)) => {
                let mut what = what_changed(ea, eb, same_content);
                if ga != gb {
                    what.push("links");
                }
                // A file whose only change is its mtime is reported: a restore resets it.
                if !what.is_empty() {
                    out.push(Change::Changed {
                        path: p.clone(),
                        what: what.into_iter().map(String::from).collect(),
                    });
                }
            }
        }
    }
    for p in mb.keys().filter(|p| !ma.contains_key(*p)) {
        out.push(Change::Added { path: p.clone() });
    }
    out.sort_by(|x, y| path_of(x).cmp(path_of(y)));
    out
}

fn path_of(c: &Change) -> &str {
    match c {
        Change::Added { path } | Change::Removed { path } | Change::Changed { path, .. } => path,
    }
}

pub fn diff(store: &Store, a: &Manifest, b: &Manifest) -> Result<DiffReport> {
    match (a.kind, b.kind) {
        (SnapshotKind::Tree, SnapshotKind::Tree) => Ok(DiffReport::Tree {
            changes: diff_trees(
                &store.load_tree(a)?,
                &store.load_tree(b)?,
                &|x, y| matches!((file_bytes(store, x), file_bytes(store, y)), (Ok(p), Ok(q)) if p == q),
            ),
        }),
        (SnapshotKind::Image, SnapshotKind::Image) => {
            let (ba, bb) = (store.load_image(a)?, store.load_image(b)?);
            let bs = b.block_size.unwrap_or(0) as u64;
            if a.block_size != b.block_size {
                return Err(Error::Invalid("images with different block sizes".into()));
            }
            let n = ba.len().max(bb.len());
            let changed = (0..n).filter(|&i| ba.get(i) != bb.get(i)).count() as u64;
            Ok(DiffReport::Image {
                blocks: n as u64,
                changed_blocks: changed,
                changed_bytes: changed * bs,
            })
        }
        _ => Err(Error::Invalid(format!(
            "cannot compare {} (a {:?}) with {} (a {:?})",
            a.id, a.kind, b.id, b.kind
        ))),
    }
}

/// A file's whole content, zeros included (used only when chunk lists differ).
pub fn file_bytes(store: &Store, e: &Entry) -> Result<Vec<u8>> {
    let EntryKind::File { size, extents } = &e.kind else {
        return Ok(Vec::new());
    };
    let mut out = vec![0u8; *size as usize];
    for x in extents {
        let data = store.read_chunk(&x.id)?;
        let at = x.offset as usize;
        let end = (at + data.len()).min(out.len());
        out[at..end].copy_from_slice(&data[..end - at]);
    }
    Ok(out)
}
