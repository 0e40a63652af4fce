//! What changed between two captures of a source (`ignite recovery diff`), and where a set of
//! changed disk regions falls (`ignite recovery check`).
//!
//! Block captures compare block by block (chunk ids), summed per partition and named by the
//! mount point the record's fstab gives; then, for each ext4 file system present in both, the
//! trees are walked (metadata only: type, size, mode, owner, link target — ext4 exposes no
//! cheaper change marker to a reader) to list paths added, removed and changed. File
//! captures compare their trees with the archive's diff (content included).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ignite_archive::diff::Change;
use ignite_archive::{Manifest, Store};
use serde::{Deserialize, Serialize};

use super::layout::{DiskLayout, PartitionLayout, SystemInfo};
use super::record::{Record, LABEL_CAPTURE};
use crate::disk::{ImageReader, SnapshotDisk};

/// Entries walked per file system at most (a root file system has tens of thousands).
const MAX_ENTRIES: usize = 2_000_000;

#[derive(Debug, Serialize, Deserialize)]
pub struct RegionReport {
    pub disk: usize,
    /// Partition number (0: outside any partition), its mount point, changed bytes.
    pub partitions: Vec<(u32, Option<String>, u64)>,
    pub changed_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CaptureDiff {
    pub regions: Vec<RegionReport>,
    /// Per file system (disk, partition, mount point): path changes.
    pub files: Vec<(usize, u32, Option<String>, Vec<Change>)>,
}

/// The mount point of partition `p`, from the fstab of the captured system.
pub fn mount_of(p: &PartitionLayout, sys: &SystemInfo) -> Option<String> {
    let fs = p.fs.as_ref()?;
    sys.fstab
        .iter()
        .find(|e| {
            fs.uuid
                .as_ref()
                .is_some_and(|u| e.what.eq_ignore_ascii_case(&format!("UUID={u}")))
                || fs
                    .label
                    .as_ref()
                    .is_some_and(|l| e.what == format!("LABEL={l}"))
        })
        .map(|e| e.mount.clone())
}

/// Byte ranges summed per partition of `layout`.
pub fn regions(
    disk: usize,
    ranges: &[(u64, u64)],
    layout: &DiskLayout,
    sys: &SystemInfo,
) -> RegionReport {
    let mut per: BTreeMap<u32, u64> = BTreeMap::new();
    let mut total = 0;
    for &(off, len) in ranges {
        total += len;
        let mut inside = 0;
        for p in &layout.partitions {
            let overlap = (off + len)
                .min(p.start + p.size)
                .saturating_sub(off.max(p.start));
            if overlap > 0 {
                *per.entry(p.number).or_default() += overlap;
                inside += overlap;
            }
        }
        if inside < len {
            *per.entry(0).or_default() += len - inside;
        }
    }
    RegionReport {
        disk,
        partitions: per
            .into_iter()
            .map(|(n, b)| {
                let mount = layout
                    .partitions
                    .iter()
                    .find(|p| p.number == n)
                    .and_then(|p| mount_of(p, sys));
                (n, mount, b)
            })
            .collect(),
        changed_bytes: total,
    }
}

/// Compares capture `a` (older) with `b`.
/// A capture and its record.
pub type Capture = (Manifest, Record);

/// The two captures of `name` to compare: `from` and `to` (capture ids, or NAME@ID), by
/// default the last two.
pub fn pick_two(
    store: &Store,
    name: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Capture, Capture)> {
    let all: Vec<Manifest> = store
        .list_snapshots()?
        .into_iter()
        .filter(|m| m.name == name && m.labels.contains_key(LABEL_CAPTURE))
        .collect();
    let pick = |s: Option<&str>, back: usize| -> Result<String> {
        match s {
            Some(s) if s.contains('@') => Ok(s.to_string()),
            Some(s) => Ok(format!("{name}@{s}")),
            None => all
                .iter()
                .rev()
                .nth(back)
                .map(|m| m.id.clone())
                .with_context(|| format!("{name} has fewer than {} captures; name them", back + 1)),
        }
    };
    let (sa, sb) = (pick(from, 1)?, pick(to, 0)?);
    Ok((Record::load(store, &sa)?, Record::load(store, &sb)?))
}

pub fn diff(store: Arc<Store>, a: &Record, b: &Record) -> Result<CaptureDiff> {
    if let (Some(fa), Some(fb)) = (&a.files, &b.files) {
        let (ma, mb) = (store.resolve(&fa.snapshot)?, store.resolve(&fb.snapshot)?);
        let changes = match ignite_archive::diff::diff(&store, &ma, &mb)? {
            ignite_archive::diff::DiffReport::Tree { changes } => changes,
            _ => bail!("file captures whose snapshots are not trees"),
        };
        return Ok(CaptureDiff {
            regions: Vec::new(),
            files: vec![(0, 0, Some("/".into()), changes)],
        });
    }
    let mut out = CaptureDiff {
        regions: Vec::new(),
        files: Vec::new(),
    };
    for db in &b.disks {
        let Some(da) = a.disks.iter().find(|d| d.index == db.index) else {
            continue;
        };
        let (ma, mb) = (store.resolve(&da.snapshot)?, store.resolve(&db.snapshot)?);
        if ma.block_size != mb.block_size {
            bail!("disk {}: the captures use different block sizes", db.index);
        }
        let (ba, bb) = (store.load_image(&ma)?, store.load_image(&mb)?);
        let bs = mb.block_size.unwrap_or(0) as u64;
        let size = mb.image_size.unwrap_or(0);
        let ranges: Vec<(u64, u64)> = (0..ba.len().max(bb.len()))
            .filter(|&i| ba.get(i) != bb.get(i))
            .map(|i| {
                let start = i as u64 * bs;
                (start, bs.min(size.saturating_sub(start)))
            })
            .collect();
        out.regions
            .push(regions(db.index, &ranges, &db.layout, &b.system));
        let (va, vb): (Arc<dyn ImageReader + Send>, Arc<dyn ImageReader + Send>) = (
            Arc::new(SnapshotDisk::open(store.clone(), &ma)?),
            Arc::new(SnapshotDisk::open(store.clone(), &mb)?),
        );
        for pb in &db.layout.partitions {
            let same_fs = da.layout.partitions.iter().find(|pa| {
                pa.number == pb.number
                    && pa.fs.as_ref().and_then(|f| f.uuid.as_ref())
                        == pb.fs.as_ref().and_then(|f| f.uuid.as_ref())
            });
            let (Some(pa), Some(fs)) = (same_fs, &pb.fs) else {
                continue;
            };
            if !fs.fs_type.starts_with("ext") {
                continue;
            }
            let (Some(ta), Some(tb)) = (walk(va.clone(), pa), walk(vb.clone(), pb)) else {
                continue;
            };
            let changes = compare(&ta, &tb);
            out.files
                .push((db.index, pb.number, mount_of(pb, &b.system), changes));
        }
    }
    Ok(out)
}

/// What the walk records of each path: type, size, mode, owner, link target.
type Meta = (String, u64, u16, u32, u32, Option<String>);

fn walk(disk: Arc<dyn ImageReader + Send>, p: &PartitionLayout) -> Option<BTreeMap<String, Meta>> {
    let fs = super::layout::open_ext4(disk, p)?;
    let mut out = BTreeMap::new();
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs.read_dir(dir.as_str()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Ok(name) = name.as_str() else { continue };
            if name == "." || name == ".." {
                continue;
            }
            let path = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            let Ok(m) = e.metadata() else { continue };
            let kind = format!("{:?}", m.file_type());
            let target = if m.is_symlink() {
                fs.read_link(path.as_str())
                    .ok()
                    .map(|t| String::from_utf8_lossy(t.as_ref()).into_owned())
            } else {
                None
            };
            if m.is_dir() {
                stack.push(path.clone());
            }
            out.insert(
                path,
                (
                    kind,
                    if m.is_dir() { 0 } else { m.len() },
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    target,
                ),
            );
            if out.len() >= MAX_ENTRIES {
                return Some(out);
            }
        }
    }
    Some(out)
}

fn compare(a: &BTreeMap<String, Meta>, b: &BTreeMap<String, Meta>) -> Vec<Change> {
    let mut out = Vec::new();
    for (path, mb) in b {
        match a.get(path) {
            None => out.push(Change::Added { path: path.clone() }),
            Some(ma) if ma != mb => {
                let mut what = Vec::new();
                if ma.0 != mb.0 {
                    what.push("type");
                }
                if ma.1 != mb.1 {
                    what.push("size");
                }
                if ma.2 != mb.2 {
                    what.push("mode");
                }
                if (ma.3, ma.4) != (mb.3, mb.4) {
                    what.push("owner");
                }
                if ma.5 != mb.5 {
                    what.push("target");
                }
                out.push(Change::Changed {
                    path: path.clone(),
                    what: what.into_iter().map(String::from).collect(),
                });
            }
            _ => {}
        }
    }
    for path in a.keys() {
        if !b.contains_key(path) {
            out.push(Change::Removed { path: path.clone() });
        }
    }
    out
}
