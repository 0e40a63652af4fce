//! File-level captures: which file systems and paths of a machine go into its `NAME:files`
//! tree, and a read-only view of the machine that holds exactly those.
//!
//! Rules, as Ignite-UX's `-x`: `include=X` and `exclude=X`, where X is a disk (`/dev/vdb`),
//! or a path — a mount point names its file system, any other path its subtree — or
//! `/path/*`, the contents of a directory (the directory itself stays). A capture holds the
//! file systems of the disks that hold the [`ESSENTIALS`]; `include` adds disks and file
//! systems; exclusions win; an essential cannot be excluded (refused with the reason). File
//! captures also leave out [`DEFAULT_EXCLUDES`] and swap files.
//!
//! The view is a private tmpfs holding `root/`, on which every selected file system is
//! mounted read-only at its mount point — the client's devices for the agent, bind mounts
//! of the live system's mounts (non-recursive, in a mount namespace of the capture's own)
//! for a live capture — and every excluded path present is covered by an empty read-only
//! mount, so the walk never reads it. Paths are resolved inside `root/` as the system would
//! resolve them (`openat2` with `RESOLVE_IN_ROOT`): a symlink in a captured file system never
//! leads a mount out of the view. The walk's draft is then [`View::filter`]ed: covered paths
//! leave the tree, and a directory whose contents were excluded gets its own metadata back.

use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ignite_archive::{Entry, EntryKind, FileImage, Manifest, Store, Xattr};
use ignite_profiles::DiskFact;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

use super::layout::{parse_fstab, DiskLayout, SystemInfo};
use super::record::{read_file, short};
use crate::steps::mount::mount;

/// Paths a recovery cannot do without, and why; exclusions touching them are refused.
pub const ESSENTIALS: &[(&str, &str)] = &[
    ("/", "the root file system"),
    ("/bin", "the system's programs"),
    (
        "/boot",
        "the kernel, its initramfs and the boot loader's files",
    ),
    (
        "/etc",
        "the system's configuration (accounts, mounts, network)",
    ),
    ("/lib", "the system's libraries and kernel modules"),
    ("/lib64", "the system's libraries"),
    ("/sbin", "the system's administration programs"),
    ("/usr", "the system's programs and libraries"),
];

/// What every file capture leaves out: the contents of the kernel's and the runtime's file
/// systems (on disk these are only mount points) and of /tmp.
pub const DEFAULT_EXCLUDES: &[&str] = &["/proc/*", "/sys/*", "/dev/*", "/run/*", "/tmp/*"];

/// File system types that live on a disk (anything else, say tmpfs or nfs, is never
/// captured unless it is the root).
const DISK_FS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs", "jfs", "reiserfs", "exfat",
];

/// Mount options that change what a file system shows (kept when the agent mounts it).
const MOUNT_VIEW_OPTIONS: &[&str] = &[
    "subvol=",
    "subvolid=",
    "uid=",
    "gid=",
    "umask=",
    "fmask=",
    "dmask=",
    "codepage=",
    "iocharset=",
    "shortname=",
];

/// Largest /etc/fstab, /proc/self/mountinfo or /proc/swaps read.
const MAX_TABLE: u64 = 1 << 20;

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A whole disk (`/dev/vdb`): its file systems, or itself in a block capture.
    Disk(String),
    /// A path and everything under it (a mount point: its file system).
    Path(String),
    /// The contents of a directory (`/tmp/*`): the directory itself stays.
    Contents(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Target::Disk(p) | Target::Path(p) => f.write_str(p),
            Target::Contents(p) if p == "/" => f.write_str("/*"),
            Target::Contents(p) => write!(f, "{p}/*"),
        }
    }
}

impl Target {
    fn parse(text: &str) -> Result<Target> {
        let (path, contents) = match text.strip_suffix("/*") {
            Some(p) => (if p.is_empty() { "/" } else { p }, true),
            None => (text, false),
        };
        if !path.starts_with('/') {
            bail!("{text:?} is not an absolute path; name a disk (/dev/vdb), a file system or a path (/srv), or a directory's contents (/srv/cache/*)");
        }
        let mut parts = Vec::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            if c == "." || c == ".." || c.contains('*') {
                bail!("{text:?}: `{c}` is not allowed in a rule's path; write the path plainly");
            }
            parts.push(c);
        }
        let norm = format!("/{}", parts.join("/"));
        Ok(match (parts.first(), contents) {
            (_, true) => Target::Contents(norm),
            (Some(&"dev"), false) if parts.len() == 2 => Target::Disk(norm),
            _ => Target::Path(norm),
        })
    }

    /// The path a path rule is about (None for a disk).
    fn path(&self) -> Option<&str> {
        match self {
            Target::Disk(_) => None,
            Target::Path(p) | Target::Contents(p) => Some(p),
        }
    }

    /// Whether `path` (absolute, normalized) is excluded by this as an exclusion.
    fn covers(&self, path: &str) -> bool {
        match self {
            Target::Disk(_) => false,
            Target::Path(p) => under(path, p),
            Target::Contents(p) => path != p && under(path, p),
        }
    }
}

/// `path` is `dir` or below it (both absolute and normalized).
fn under(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Include and exclude rules, normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub include: Vec<Target>,
    pub exclude: Vec<Target>,
}

impl Rules {
    /// Rules from `-x` arguments: each a comma-separated list of `include=X` / `exclude=X`.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Rules> {
        let mut rules = Rules::default();
        for arg in args {
            for item in arg.as_ref().split(',').filter(|i| !i.trim().is_empty()) {
                let item = item.trim();
                let (key, value) = item.split_once('=').with_context(|| {
                    format!("rule {item:?}: write include=PATH or exclude=PATH")
                })?;
                let t = Target::parse(value.trim()).with_context(|| format!("rule {item:?}"))?;
                match key.trim() {
                    "include" => {
                        if let Target::Contents(_) = t {
                            bail!("rule {item:?}: an include names a disk, a file system or a path, not a directory's contents");
                        }
                        rules.include.push(t);
                    }
                    "exclude" => rules.exclude.push(t),
                    other => bail!("rule {item:?}: {other:?} is neither include nor exclude"),
                }
            }
        }
        rules.include.sort();
        rules.include.dedup();
        rules.exclude.sort();
        rules.exclude.dedup();
        Ok(rules)
    }

    /// The rules as `include=X` / `exclude=X` items (what [`Rules::parse`] reads).
    pub fn to_args(&self) -> Vec<String> {
        let inc = self.include.iter().map(|t| format!("include={t}"));
        inc.chain(self.exclude.iter().map(|t| format!("exclude={t}")))
            .collect()
    }

    /// Both sets of rules at once.
    pub fn merged(&self, other: &Rules) -> Rules {
        let mut r = self.clone();
        r.include.extend(other.include.iter().cloned());
        r.exclude.extend(other.exclude.iter().cloned());
        Rules::parse(&r.to_args()).expect("normalized rules parse")
    }

    /// Refuses exclusions of an essential path (or of a directory above one), each with the
    /// reason; every refusal at once.
    pub fn check_essentials(&self) -> Result<()> {
        let mut refusals = Vec::new();
        for t in &self.exclude {
            let Some(p) = t.path() else { continue };
            for (e, why) in ESSENTIALS {
                // An essential directory's contents are the essential: `/usr/*` leaves
                // out as much of /usr as `/usr` does.
                if under(e, p) {
                    refusals.push(if *e == p {
                        format!("exclude={t} is refused: {e} is essential ({why})")
                    } else {
                        format!("exclude={t} is refused: it would leave out {e}, which is essential ({why})")
                    });
                    break;
                }
            }
        }
        if refusals.is_empty() {
            return Ok(());
        }
        bail!(
            "{}; a recovery needs every essential: {}",
            refusals.join("; "),
            essentials_list()
        )
    }
}

fn essentials_list() -> String {
    ESSENTIALS
        .iter()
        .map(|(e, _)| *e)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One mounted (or mountable) file system of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSystem {
    /// Where the system mounts it (`/`, `/var`).
    pub mount: String,
    /// Its device (`/dev/vda3`), or what the mount table names.
    pub device: String,
    pub fs_type: String,
    pub options: String,
    pub uuid: Option<String>,
    /// The disks it lives on (`/dev/vda`), for disk rules.
    pub disks: Vec<String>,
    /// Live captures: where it can be reached on this machine now (bind mount source).
    #[serde(skip)]
    pub reach: Option<PathBuf>,
}

impl FileSystem {
    fn on_disk(&self) -> bool {
        DISK_FS.contains(&self.fs_type.as_str())
    }
}

/// The file system holding `path` among `fss`: the one with the longest mount point above it.
fn holder<'a>(fss: &'a [FileSystem], path: &str) -> Option<&'a FileSystem> {
    fss.iter()
        .filter(|f| under(path, &f.mount))
        .max_by_key(|f| f.mount.len())
}

/// The disks holding an essential's file system.
pub fn essential_disks(fss: &[FileSystem]) -> BTreeSet<String> {
    ESSENTIALS
        .iter()
        .filter_map(|(e, _)| holder(fss, e))
        .flat_map(|f| f.disks.iter().cloned())
        .collect()
}

/// Refuses an exclusion of a disk holding an essential, or of a disk the machine lacks.
pub fn check_disk_rules(rules: &Rules, fss: &[FileSystem], disks: &[String]) -> Result<()> {
    let essential = essential_disks(fss);
    for t in rules.include.iter().chain(&rules.exclude) {
        if let Target::Disk(d) = t {
            if !disks.contains(d) {
                bail!(
                    "rule names disk {d}, which this machine does not have (its disks: {})",
                    disks.join(", ")
                );
            }
        }
    }
    for t in &rules.exclude {
        if let Target::Disk(d) = t {
            if essential.contains(d) {
                let holds: Vec<&str> = ESSENTIALS
                    .iter()
                    .filter(|(e, _)| holder(fss, e).is_some_and(|f| f.disks.contains(d)))
                    .map(|(e, _)| *e)
                    .collect();
                bail!(
                    "exclude={d} is refused: that disk holds {}, which is essential; a recovery needs every essential: {}",
                    holds.join(", "),
                    essentials_list()
                );
            }
        }
    }
    Ok(())
}

/// What a file capture takes: file systems (parents first) and what to leave out of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub file_systems: Vec<FileSystem>,
    /// Paths (and directories' contents) left out, each with why.
    pub excluded: Vec<(Target, String)>,
    /// File systems not taken, and why (for the record).
    pub notes: Vec<String>,
}

/// Chooses the file systems and exclusions of a file capture (see the module docs).
/// `swap_files` are absolute paths in the system.
pub fn select(fss: &[FileSystem], rules: &Rules, swap_files: &[String]) -> Result<Selection> {
    rules.check_essentials()?;
    let disks: Vec<String> = fss
        .iter()
        .flat_map(|f| f.disks.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    check_disk_rules(rules, fss, &disks)?;
    let Some(root) = fss.iter().find(|f| f.mount == "/") else {
        bail!("no file system is mounted at / (the mount table has none); a file capture starts at the root");
    };
    let essential = essential_disks(fss);
    let mut notes = Vec::new();
    let mut chosen: Vec<&FileSystem> = Vec::new();
    for f in fss {
        let included = rules.include.iter().any(|t| match t {
            Target::Disk(d) => f.disks.contains(d),
            Target::Path(p) => holder(fss, p).is_some_and(|h| h.mount == f.mount),
            Target::Contents(_) => false,
        });
        let by_default = f.on_disk() && f.disks.iter().any(|d| essential.contains(d));
        if f.mount == root.mount || by_default || included {
            chosen.push(f);
        } else if f.on_disk() {
            notes.push(format!(
                "{} ({} on {}) not captured: not on a disk holding the system; include={} takes it",
                f.mount, f.fs_type, f.device, f.mount
            ));
        }
    }
    // A file system can only be placed where its parent is: included ones bring theirs.
    let mut i = 0;
    while i < chosen.len() {
        if let Some(parent) = fss
            .iter()
            .filter(|p| p.mount != chosen[i].mount && under(&chosen[i].mount, &p.mount))
            .max_by_key(|p| p.mount.len())
        {
            if !chosen.iter().any(|c| c.mount == parent.mount) {
                chosen.push(parent);
            }
        }
        i += 1;
    }
    let mut excluded: Vec<(Target, String)> = Vec::new();
    for t in &rules.exclude {
        excluded.push((t.clone(), format!("rule exclude={t}")));
    }
    for d in DEFAULT_EXCLUDES {
        let t = Target::parse(d).expect("default excludes parse");
        if !excluded.iter().any(|(e, _)| e == &t) {
            excluded.push((t, "left out by default".into()));
        }
    }
    for s in swap_files {
        let t = Target::parse(s).with_context(|| format!("swap file {s}"))?;
        excluded.push((t, "a swap file".into()));
    }
    let mut taken = Vec::new();
    for f in chosen {
        let disk_rule = rules
            .exclude
            .iter()
            .find(|t| matches!(t, Target::Disk(d) if f.disks.contains(d)));
        let path_rule = excluded
            .iter()
            .find(|(t, _)| f.mount != "/" && t.covers(&f.mount));
        match (disk_rule, path_rule) {
            (Some(t), _) => notes.push(format!("{} not captured: rule exclude={t}", f.mount)),
            (None, Some((t, why))) => notes.push(format!("{} not captured: {why} ({t})", f.mount)),
            (None, None) => taken.push(f.clone()),
        }
    }
    // A file system whose parent is not taken has nowhere to go.
    let placed: Vec<FileSystem> = taken
        .iter()
        .filter(|f| {
            let parent = fss
                .iter()
                .filter(|p| p.mount != f.mount && under(&f.mount, &p.mount))
                .max_by_key(|p| p.mount.len());
            match parent {
                Some(p) if !taken.iter().any(|t| t.mount == p.mount) => {
                    notes.push(format!(
                        "{} not captured: the file system it is mounted in ({}) is not",
                        f.mount, p.mount
                    ));
                    false
                }
                _ => true,
            }
        })
        .cloned()
        .collect();
    let mut file_systems = placed;
    file_systems.sort_by_key(|f| (depth(&f.mount), f.mount.clone()));
    // Exclusions inside another exclusion need no cover of their own.
    let covering = excluded.clone();
    excluded.retain(|(t, _)| {
        let p = t.path().unwrap_or("");
        !covering
            .iter()
            .any(|(o, _)| o != t && t.path().is_some() && o.covers(p))
    });
    excluded.retain(|(t, _)| t.path().is_some());
    Ok(Selection {
        file_systems,
        excluded,
        notes,
    })
}

fn depth(mount: &str) -> usize {
    mount.split('/').filter(|c| !c.is_empty()).count()
}

/// `\040` and friends, as the kernel escapes mount table fields.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub dev: (u32, u32),
    /// The directory of the file system that is mounted (`/` unless a bind of a subtree).
    pub root: String,
    pub mount: String,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

/// Parses /proc/self/mountinfo (malformed lines skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 6 || r.len() < 2 {
                return None;
            }
            let (maj, min) = f[2].split_once(':')?;
            Some(MountInfo {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                root: unescape(f[3]),
                mount: unescape(f[4]),
                options: f[5].to_string(),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

/// The disks under block device `maj:min` (`/dev/vda` for vda3; the slaves' disks for a
/// device-mapper or md device), from sysfs.
fn disks_of(sys: &Path, dev: (u32, u32)) -> Vec<String> {
    fn walk(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
        let Ok(dir) = dir.canonicalize() else { return };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { return };
        if dir.join("partition").exists() {
            if let Some(parent) = dir.parent().and_then(|p| p.file_name()) {
                out.insert(format!("/dev/{}", parent.to_string_lossy()));
            }
            return;
        }
        let slaves: Vec<PathBuf> = std::fs::read_dir(dir.join("slaves"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if slaves.is_empty() || depth > 8 {
            out.insert(format!("/dev/{name}"));
            return;
        }
        for s in slaves {
            walk(&s, depth + 1, out);
        }
    }
    let mut out = BTreeSet::new();
    if dev.0 != 0 {
        walk(
            &sys.join(format!("dev/block/{}:{}", dev.0, dev.1)),
            0,
            &mut out,
        );
    }
    out.into_iter().collect()
}

fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(MAX_TABLE)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text)
}

/// The live system's file systems under `root` (`/` for the whole system) as the system
/// would mount them, and its swap files; `root`'s own file system is its `/`.
pub fn live_system(root: &Path) -> Result<(Vec<FileSystem>, Vec<String>)> {
    let root = root
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve it", root.display()))?;
    let root_text = root.to_string_lossy().into_owned();
    let infos = parse_mountinfo(&read_small(Path::new("/proc/self/mountinfo"))?);
    let sys = Path::new("/sys");
    let inside = |m: &str| -> Option<String> {
        if root_text == "/" {
            return Some(m.to_string());
        }
        if m == root_text {
            return Some("/".into());
        }
        m.strip_prefix(&root_text)
            .filter(|r| r.starts_with('/'))
            .map(str::to_string)
    };
    let mut fss: Vec<FileSystem> = Vec::new();
    // The file system holding `root`: the last mount (mounts stack) at or above it.
    let holder = infos
        .iter()
        .filter(|m| under(&root_text, &m.mount))
        .max_by_key(|m| m.mount.len())
        .with_context(|| format!("no mount holds {}", root.display()))?;
    let fs = |m: &MountInfo, mount: String, reach: PathBuf| FileSystem {
        mount,
        device: m.source.clone(),
        fs_type: m.fs_type.clone(),
        options: m.options.clone(),
        uuid: None,
        disks: disks_of(sys, m.dev),
        reach: Some(reach),
    };
    fss.push(fs(holder, "/".into(), root.clone()));
    // Seen (device, subtree) pairs: a bind mount of a part of a file system already taken
    // is the same data twice.
    let mut seen: Vec<((u32, u32), String)> = vec![(holder.dev, holder.root.clone())];
    for m in &infos {
        let Some(mount) = inside(&m.mount) else {
            continue;
        };
        if mount == "/" || !DISK_FS.contains(&m.fs_type.as_str()) {
            continue;
        }
        // A later mount on the same point hides an earlier one.
        let visible = infos.iter().rev().find(|o| o.mount == m.mount) == Some(m);
        if !visible {
            continue;
        }
        if seen.iter().any(|(d, r)| *d == m.dev && under(&m.root, r)) {
            continue;
        }
        seen.push((m.dev, m.root.clone()));
        fss.retain(|f| f.mount != mount);
        fss.push(fs(m, mount, PathBuf::from(&m.mount)));
    }
    let swaps = read_small(Path::new("/proc/swaps")).unwrap_or_default();
    let swap_files = swaps
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 2 && f[1] == "file").then(|| unescape(f[0]))
        })
        .filter_map(|p| inside(&p))
        .collect();
    Ok((fss, swap_files))
}

/// The partitions' device names of `disk` as the kernel names them (`/dev/vda` → `/dev/vda3`,
/// `/dev/nvme0n1` → `/dev/nvme0n1p3`).
pub fn partition_device(disk: &str, number: u32) -> String {
    if number == 0 {
        return disk.to_string();
    }
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// A partition (or whole-disk file system) the agent found, with what it knows of it.
#[derive(Debug, Clone)]
pub struct Volume {
    pub device: String,
    pub disk: String,
    pub fs_type: String,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub part_uuid: Option<String>,
}

/// The volumes of the probed disks (`(disk device, layout)`).
pub fn volumes(layouts: &[(String, DiskLayout)]) -> Vec<Volume> {
    let mut out = Vec::new();
    for (disk, l) in layouts {
        for p in &l.partitions {
            let Some(fs) = &p.fs else { continue };
            out.push(Volume {
                device: partition_device(disk, p.number),
                disk: disk.clone(),
                fs_type: fs.fs_type.clone(),
                uuid: fs.uuid.clone(),
                label: fs.label.clone(),
                part_uuid: p.part_uuid.clone(),
            });
        }
    }
    out
}

/// The file systems an `/etc/fstab` mounts, matched to the volumes found (by UUID, LABEL,
/// PARTUUID or device name); entries naming nothing found are noted.
pub fn fstab_file_systems(fstab: &str, vols: &[Volume]) -> (Vec<FileSystem>, Vec<String>) {
    let mut fss = Vec::new();
    let mut notes = Vec::new();
    for e in parse_fstab(fstab) {
        if e.fs_type == "swap" || e.mount == "none" || !e.mount.starts_with('/') {
            continue;
        }
        let Ok(Target::Path(mount)) = Target::parse(&e.mount) else {
            continue;
        };
        let eq =
            |a: &Option<String>, b: &str| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b));
        let what = e.what.as_str();
        let vol = vols.iter().find(|v| {
            if let Some(u) = what
                .strip_prefix("UUID=")
                .or_else(|| what.strip_prefix("/dev/disk/by-uuid/"))
            {
                eq(&v.uuid, u)
            } else if let Some(l) = what
                .strip_prefix("LABEL=")
                .or_else(|| what.strip_prefix("/dev/disk/by-label/"))
            {
                eq(&v.label, l)
            } else if let Some(p) = what
                .strip_prefix("PARTUUID=")
                .or_else(|| what.strip_prefix("/dev/disk/by-partuuid/"))
            {
                eq(&v.part_uuid, p)
            } else {
                v.device == what
            }
        });
        match vol {
            Some(v) => fss.push(FileSystem {
                mount,
                device: v.device.clone(),
                fs_type: if e.fs_type == "auto" {
                    v.fs_type.clone()
                } else {
                    e.fs_type.clone()
                },
                options: e.options.clone(),
                uuid: v.uuid.clone(),
                disks: vec![v.disk.clone()],
                reach: None,
            }),
            None if DISK_FS.contains(&e.fs_type.as_str()) => notes.push(format!(
                "fstab entry {} on {} names no file system found on the disks",
                e.what, e.mount
            )),
            None => {}
        }
    }
    (fss, notes)
}

/// What the agent found on a client's disks.
#[derive(Debug, Default)]
pub struct Found {
    /// Each disk's layout (`(device, layout)`), for those that could be read.
    pub layouts: Vec<(String, DiskLayout)>,
    /// What the system's /etc/fstab mounts (empty when no file system holds one).
    pub file_systems: Vec<FileSystem>,
    pub swap_files: Vec<String>,
    pub hostname: Option<String>,
    pub notes: Vec<String>,
}

/// File system types a root can be found on (mounted read-only to look for /etc/fstab).
const ROOT_FS: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs"];

/// The agent's look at the client's disks: their layouts, and the file systems the system's
/// /etc/fstab mounts, found by mounting each candidate read-only in turn.
pub fn device_system(disks: &[DiskFact]) -> Result<Found> {
    let mut found = Found::default();
    for d in disks {
        let probed = FileImage::open(Path::new(&d.path))
            .map_err(anyhow::Error::from)
            .and_then(|img| super::layout::probe(&img));
        match probed {
            Ok(l) => found.layouts.push((d.path.clone(), l)),
            Err(e) => found
                .notes
                .push(format!("{}: cannot read its layout: {e:#}", d.path)),
        }
    }
    let vols = volumes(&found.layouts);
    for v in vols
        .iter()
        .filter(|v| ROOT_FS.contains(&v.fs_type.as_str()))
    {
        let Some((fstab, hostname)) = peek_root(v, &mut found.notes) else {
            continue;
        };
        let (mut fss, notes) = fstab_file_systems(&fstab, &vols);
        if !fss.iter().any(|f| f.mount == "/") {
            fss.push(FileSystem {
                mount: "/".into(),
                device: v.device.clone(),
                fs_type: v.fs_type.clone(),
                options: "defaults".into(),
                uuid: v.uuid.clone(),
                disks: vec![v.disk.clone()],
                reach: None,
            });
        }
        found.swap_files = parse_fstab(&fstab)
            .into_iter()
            .filter(|e| {
                e.fs_type == "swap" && e.what.starts_with('/') && !e.what.starts_with("/dev/")
            })
            .map(|e| e.what)
            .collect();
        found.file_systems = fss;
        found.hostname = hostname;
        found.notes.extend(notes);
        found
            .notes
            .push(format!("the system's root is {} ({})", v.device, v.fs_type));
        break;
    }
    Ok(found)
}

/// Mounts `v` read-only for a look: its /etc/fstab and /etc/hostname if it has them.
fn peek_root(v: &Volume, notes: &mut Vec<String>) -> Option<(String, Option<String>)> {
    let dir = tempfile::tempdir().ok()?;
    if let Err(e) = mount(&v.device, dir.path(), Some(&v.fs_type), libc::MS_RDONLY, "") {
        notes.push(format!("{e:#}"));
        return None;
    }
    let root = rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).ok();
    let read = |rel: &str| -> Option<String> {
        let fd = rustix::fs::openat2(
            root.as_ref()?,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()?;
        if rustix::fs::fstat(&fd).ok()?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::from(fd)
            .take(MAX_TABLE)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    };
    let found = read("etc/fstab").map(|f| (f, read("etc/hostname").map(|h| h.trim().to_string())));
    drop(root);
    let c = CString::new(dir.path().as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid path string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        // SAFETY: as above.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    found
}

/// How the view's file systems get there.
pub enum Source {
    /// Bind mounts of a live system's mounts (`FileSystem::reach`), in the capture's own
    /// mount namespace ([`private_mounts`]).
    Live,
    /// The devices, mounted read-only (the agent: nothing else uses the disks).
    Devices,
}

/// Moves this thread (and the threads it starts) into a mount namespace of its own whose
/// mounts do not propagate back: the view's mounts stay invisible to the system and go away
/// with the process, however it ends.
pub fn private_mounts() -> Result<()> {
    // SAFETY: unshare(2) with a flag, no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!(
            "cannot make a mount namespace for the capture's view: {} (needs root)",
            std::io::Error::last_os_error()
        );
    }
    mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    )
}

/// A path covered by an empty mount, and what the walk must do with it.
struct Cover {
    /// Relative to the view's root, as the walk names it.
    rel: Vec<u8>,
    /// For a directory whose contents were excluded: its own metadata, to put back.
    keep: Option<Entry>,
}

/// The read-only view a file capture walks (see the module docs). Dropping it unmounts
/// everything it mounted.
pub struct View {
    /// Taken on drop: kept (not deleted) if anything stays mounted under it.
    base: Option<tempfile::TempDir>,
    root: PathBuf,
    /// Every mount made, in order (unmounted in reverse).
    mounts: Vec<PathBuf>,
    covers: Vec<Cover>,
    /// Paths dropped without a cover (a symlink cannot be covered; it has no contents).
    drops: Vec<Vec<u8>>,
    pub notes: Vec<String>,
}

impl View {
    /// Mounts the selected file systems under a fresh tmpfs and covers the exclusions.
    pub fn build(sel: &Selection, source: Source) -> Result<View> {
        let base = tempfile::Builder::new()
            .prefix("ignite-capture-")
            .tempdir()
            .context("cannot make the capture's view directory")?;
        let mut view = View {
            root: base.path().join("root"),
            base: Some(base),
            mounts: Vec::new(),
            covers: Vec::new(),
            drops: Vec::new(),
            notes: Vec::new(),
        };
        let b = view.base_dir();
        mount(
            "tmpfs",
            &b,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0700,size=1m",
        )?;
        view.mounts.push(b.clone());
        std::fs::create_dir(&view.root)?;
        std::fs::create_dir(b.join("empty-dir"))?;
        std::fs::write(b.join("empty-file"), b"")?;
        for f in &sel.file_systems {
            view.place(f, &source)?;
        }
        for (t, _) in &sel.excluded {
            view.cover(t)?;
        }
        Ok(view)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn base_dir(&self) -> PathBuf {
        self.base
            .as_ref()
            .expect("present until drop")
            .path()
            .to_path_buf()
    }

    /// `path` inside the view, resolved as the system would (symlinks stay inside).
    fn open_inside(&self, path: &str, follow: bool) -> std::io::Result<OwnedFd> {
        let root = rustix::fs::open(&self.root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let mut flags = OFlags::PATH | OFlags::CLOEXEC;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        Ok(rustix::fs::openat2(
            root,
            rel,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?)
    }

    /// Where an opened path is, relative to the view's root.
    fn rel_of(&self, fd: &OwnedFd) -> Result<Vec<u8>> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let rel = link
            .strip_prefix(&self.root)
            .with_context(|| format!("{} resolved outside the view", link.display()))?;
        Ok(rel.as_os_str().as_bytes().to_vec())
    }

    fn mount_on(
        &mut self,
        fd: &OwnedFd,
        source: &str,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: &str,
    ) -> Result<()> {
        let at = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let real = std::fs::read_link(&at)?;
        mount(source, &at, fstype, flags, data)?;
        self.mounts.push(real);
        Ok(())
    }

    /// Binds `source` read-only onto the opened path (a bind mount takes the read-only flag
    /// only on a remount).
    fn bind_read_only(&mut self, fd: &OwnedFd, source: &str) -> Result<()> {
        self.mount_on(fd, source, None, libc::MS_BIND, "")?;
        let at = self.mounts.last().expect("just mounted").clone();
        mount(
            "none",
            &at,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            "",
        )
    }

    /// Mounts file system `f` read-only at its mount point in the view.
    fn place(&mut self, f: &FileSystem, source: &Source) -> Result<()> {
        let fd = self
            .open_inside(&f.mount, true)
            .with_context(|| format!("{}: its mount point is not in the captured tree", f.mount))?;
        if rustix::fs::fstat(&fd)?.st_mode & libc::S_IFMT != libc::S_IFDIR {
            bail!("{}: its mount point is not a directory", f.mount);
        }
        match source {
            Source::Live => {
                let from = f
                    .reach
                    .as_ref()
                    .with_context(|| format!("{}: not reachable", f.mount))?;
                let from = from
                    .to_str()
                    .with_context(|| format!("{}: not UTF-8", from.display()))?;
                self.bind_read_only(&fd, from)
                    .with_context(|| format!("{}: cannot place its view", f.mount))?;
            }
            Source::Devices => {
                // What decides what the system sees: btrfs's subvolume, FAT's owners and
                // modes (FAT stores none). Nothing that writes.
                let data: Vec<&str> = f
                    .options
                    .split(',')
                    .filter(|o| MOUNT_VIEW_OPTIONS.iter().any(|k| o.starts_with(k)) || *o == "utf8")
                    .collect();
                self.mount_on(
                    &fd,
                    &f.device,
                    Some(&f.fs_type),
                    libc::MS_RDONLY,
                    &data.join(","),
                )
                .with_context(|| format!("{} ({})", f.mount, f.fs_type))?;
            }
        }
        Ok(())
    }

    /// Covers an excluded path (or a directory's contents) with an empty read-only mount.
    fn cover(&mut self, t: &Target) -> Result<()> {
        let (path, contents) = match t {
            Target::Path(p) => (p.as_str(), false),
            Target::Contents(p) => (p.as_str(), true),
            Target::Disk(_) => return Ok(()),
        };
        let fd = match self.open_inside(path, contents) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                self.notes.push(format!(
                    "exclude={t}: cannot look at it ({e}); nothing left out"
                ));
                return Ok(());
            }
        };
        let st = rustix::fs::fstat(&fd)?;
        let rel = self.rel_of(&fd)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFLNK {
            // A symlink has nothing to read: it only leaves the tree.
            if !contents {
                self.drops.push(rel);
            }
            return Ok(());
        }
        if contents && kind != libc::S_IFDIR {
            self.notes.push(format!(
                "exclude={t}: {path} is not a directory; nothing left out"
            ));
            return Ok(());
        }
        let keep = if contents {
            Some(Entry {
                path: rel.clone(),
                kind: EntryKind::Dir,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                mtime: st.st_mtime,
                mtime_nsec: st.st_mtime_nsec as u32,
                xattrs: read_xattrs(&fd)?,
                source: None,
            })
        } else {
            None
        };
        let mask = self.base_dir().join(if kind == libc::S_IFDIR {
            "empty-dir"
        } else {
            "empty-file"
        });
        let mask = mask
            .to_str()
            .context("temporary directory path is not UTF-8")?
            .to_string();
        self.bind_read_only(&fd, &mask)
            .with_context(|| format!("exclude={t}: cannot cover it"))?;
        self.covers.push(Cover { rel, keep });
        Ok(())
    }

    /// Takes the covered and dropped paths out of a walk of the view; a directory whose
    /// contents were excluded gets its own metadata back.
    pub fn filter(&self, entries: &mut Vec<Entry>) {
        let inside = |p: &[u8], dir: &[u8]| {
            dir.is_empty() || p == dir || (p.starts_with(dir) && p.get(dir.len()) == Some(&b'/'))
        };
        entries.retain_mut(|e| {
            if self.drops.contains(&e.path) {
                return false;
            }
            for c in &self.covers {
                if !inside(&e.path, &c.rel) {
                    continue;
                }
                match &c.keep {
                    Some(k) if e.path == c.rel => {
                        *e = k.clone();
                        return true;
                    }
                    _ => return false,
                }
            }
            true
        });
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let mut all_gone = true;
        for m in self.mounts.iter().rev() {
            let gone = CString::new(m.as_os_str().as_bytes()).is_ok_and(|c| {
                // SAFETY: a valid path string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
            });
            all_gone &= gone;
        }
        if !all_gone {
            // Deleting the directory would reach into a file system still mounted there.
            std::mem::forget(self.base.take());
        }
    }
}

/// Extended attributes of an opened path (through its /proc/self/fd link).
fn read_xattrs(fd: &OwnedFd) -> Result<Vec<Xattr>> {
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))?;
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: p is a valid string, names a buffer of the length given.
    let n = unsafe { libc::listxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(Vec::new());
        }
        return Err(e).context("cannot list extended attributes");
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name)?;
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: valid strings and a buffer of the length given.
        let len = unsafe {
            libc::getxattr(
                p.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push(Xattr {
                name: name.to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a file capture's tree says about the system: identity, mount table, boot loader;
/// firmware from the disks' layouts.
pub fn system_info(store: &Store, tree: &Manifest, layouts: &[DiskLayout]) -> SystemInfo {
    let mut info = SystemInfo::default();
    let text = |path: &str| -> Option<String> {
        read_file(store, tree, path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
    };
    info.hostname = text("etc/hostname");
    info.machine_id = text("etc/machine-id").filter(|m| !m.is_empty());
    match text("etc/fstab") {
        Some(t) => info.fstab = parse_fstab(&t),
        None => info.notes.push(format!(
            "capture {}@{} has no /etc/fstab",
            tree.name,
            short(&tree.id)
        )),
    }
    let paths: HashSet<Vec<u8>> = store
        .load_tree(tree)
        .map(|entries| entries.into_iter().map(|e| e.path).collect())
        .unwrap_or_default();
    info.boot_loader = [
        ("boot/grub/grub.cfg", "grub"),
        ("boot/extlinux/extlinux.conf", "extlinux"),
    ]
    .iter()
    .find(|(p, _)| paths.contains(p.as_bytes()))
    .map(|(_, l)| l.to_string());
    let parts = || layouts.iter().flat_map(|l| &l.partitions);
    if parts().any(|p| p.kind.as_deref() == Some("efi")) {
        info.firmware.push("uefi".into());
    }
    if parts().any(|p| p.kind.as_deref() == Some("bios_boot") || p.attributes & 4 != 0) {
        info.firmware.push("bios".into());
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(mount: &str, device: &str, ty: &str, disk: &str) -> FileSystem {
        FileSystem {
            mount: mount.into(),
            device: device.into(),
            fs_type: ty.into(),
            options: "rw".into(),
            uuid: None,
            disks: if disk.is_empty() {
                vec![]
            } else {
                vec![disk.into()]
            },
            reach: None,
        }
    }

    fn machine() -> Vec<FileSystem> {
        vec![
            fs("/", "/dev/vda3", "ext4", "/dev/vda"),
            fs("/boot/efi", "/dev/vda2", "vfat", "/dev/vda"),
            fs("/var", "/dev/vda4", "xfs", "/dev/vda"),
            fs("/srv", "/dev/vdb1", "ext4", "/dev/vdb"),
            fs("/srv/data", "/dev/vdc1", "xfs", "/dev/vdc"),
            fs("/run", "tmpfs", "tmpfs", ""),
        ]
    }

    fn mounts(s: &Selection) -> Vec<&str> {
        s.file_systems.iter().map(|f| f.mount.as_str()).collect()
    }

    #[test]
    fn rules_parse_normalize_and_print_back() {
        let r = Rules::parse(&["include=/dev/vdb,exclude=/srv//cache/", "exclude=/tmp/*"]).unwrap();
        assert_eq!(r.include, vec![Target::Disk("/dev/vdb".into())]);
        assert_eq!(
            r.exclude,
            vec![
                Target::Path("/srv/cache".into()),
                Target::Contents("/tmp".into())
            ]
        );
        assert_eq!(Rules::parse(&r.to_args()).unwrap(), r);
        for bad in [
            "exclude=srv",
            "exclude=/a/../etc",
            "keep=/x",
            "/x",
            "include=/x/*",
            "exclude=/a*b",
        ] {
            assert!(Rules::parse(&[bad]).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn essentials_are_refused_with_the_reason_and_the_list() {
        for bad in [
            "exclude=/usr",
            "exclude=/",
            "exclude=/*",
            "exclude=/usr/*",
            "exclude=/etc",
        ] {
            let e = format!(
                "{:#}",
                Rules::parse(&[bad])
                    .unwrap()
                    .check_essentials()
                    .unwrap_err()
            );
            assert!(
                e.contains("is refused") && e.contains("/boot, /etc"),
                "{bad}: {e}"
            );
        }
        let e = format!(
            "{:#}",
            Rules::parse(&["exclude=/usr"])
                .unwrap()
                .check_essentials()
                .unwrap_err()
        );
        assert!(
            e.contains("/usr is essential (the system's programs and libraries)"),
            "{e}"
        );
        // Below an essential is fine, and so is its neighbour with a similar name.
        for ok in [
            "exclude=/usr/share/doc",
            "exclude=/etcetera",
            "exclude=/boot/old/*",
            "exclude=/var",
        ] {
            Rules::parse(&[ok]).unwrap().check_essentials().unwrap();
        }
    }

    #[test]
    fn by_default_the_system_disk_and_nothing_else() {
        let s = select(&machine(), &Rules::default(), &[]).unwrap();
        assert_eq!(mounts(&s), ["/", "/var", "/boot/efi"]);
        assert!(
            s.notes
                .iter()
                .any(|n| n.starts_with("/srv (ext4 on /dev/vdb1) not captured")),
            "{:?}",
            s.notes
        );
        let excluded: Vec<String> = s.excluded.iter().map(|(t, _)| t.to_string()).collect();
        assert_eq!(
            excluded,
            ["/proc/*", "/sys/*", "/dev/*", "/run/*", "/tmp/*"]
        );
    }

    #[test]
    fn includes_add_disks_and_file_systems_with_their_parents() {
        let s = select(
            &machine(),
            &Rules::parse(&["include=/srv/data/x"]).unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(mounts(&s), ["/", "/srv", "/var", "/boot/efi", "/srv/data"]);
        let s = select(
            &machine(),
            &Rules::parse(&["include=/dev/vdb"]).unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(mounts(&s), ["/", "/srv", "/var", "/boot/efi"]);
    }

    #[test]
    fn exclusions_win_and_take_what_is_mounted_below() {
        let r =
            Rules::parse(&["include=/dev/vdb,include=/dev/vdc,exclude=/srv,exclude=/var/cache/*"])
                .unwrap();
        let s = select(&machine(), &r, &["/swapfile".into()]).unwrap();
        assert_eq!(mounts(&s), ["/", "/var", "/boot/efi"]);
        let excluded: Vec<String> = s.excluded.iter().map(|(t, _)| t.to_string()).collect();
        assert!(
            excluded.contains(&"/srv".to_string())
                && excluded.contains(&"/var/cache/*".to_string())
        );
        assert!(excluded.contains(&"/swapfile".to_string()));
        assert!(
            s.notes.iter().any(|n| n.contains("/srv/data not captured")),
            "{:?}",
            s.notes
        );
        // A disk exclusion takes its file systems, even an included one.
        let r = Rules::parse(&["include=/srv,exclude=/dev/vdb"]).unwrap();
        assert_eq!(
            mounts(&select(&machine(), &r, &[]).unwrap()),
            ["/", "/var", "/boot/efi"]
        );
    }

    #[test]
    fn a_disk_holding_an_essential_cannot_be_excluded_nor_a_missing_one_named() {
        let refusal = |rule: &str| {
            let rules = Rules::parse(&[rule]).unwrap();
            format!("{:#}", select(&machine(), &rules, &[]).unwrap_err())
        };
        let e = refusal("exclude=/dev/vda");
        assert!(
            e.contains("exclude=/dev/vda is refused: that disk holds /, /bin"),
            "{e}"
        );
        let e = refusal("include=/dev/sdz");
        assert!(
            e.contains("does not have (its disks: /dev/vda, /dev/vdb, /dev/vdc)"),
            "{e}"
        );
    }

    #[test]
    fn mountinfo_lines_are_read_with_escapes() {
        let text = "22 1 254:3 / / rw,relatime shared:1 - ext4 /dev/vda3 rw\n\
                    30 22 254:4 / /var rw - xfs /dev/vda4 rw\n\
                    31 22 0:25 / /my\\040dir rw - tmpfs tmpfs rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dev, (254, 3));
        assert_eq!(m[1].mount, "/var");
        assert_eq!(m[2].mount, "/my dir");
        assert_eq!(m[2].fs_type, "tmpfs");
    }

    #[test]
    fn fstab_entries_find_their_volumes() {
        let vols = vec![
            Volume {
                device: "/dev/vda3".into(),
                disk: "/dev/vda".into(),
                fs_type: "ext4".into(),
                uuid: Some("AAAA-1".into()),
                label: None,
                part_uuid: None,
            },
            Volume {
                device: "/dev/vda4".into(),
                disk: "/dev/vda".into(),
                fs_type: "xfs".into(),
                uuid: None,
                label: Some("var".into()),
                part_uuid: None,
            },
            Volume {
                device: "/dev/vda2".into(),
                disk: "/dev/vda".into(),
                fs_type: "vfat".into(),
                uuid: None,
                label: None,
                part_uuid: Some("PP".into()),
            },
        ];
        let fstab = "# comment\nUUID=aaaa-1 / ext4 errors=remount-ro 0 1\nLABEL=var /var auto defaults 0 2\n\
                     PARTUUID=pp /boot/efi vfat umask=077 0 1\nUUID=gone /srv ext4 defaults 0 2\n\
                     /swapfile none swap sw 0 0\nproc /proc proc defaults 0 0\n";
        let (fss, notes) = fstab_file_systems(fstab, &vols);
        let got: Vec<(&str, &str, &str)> = fss
            .iter()
            .map(|f| (f.mount.as_str(), f.device.as_str(), f.fs_type.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/", "/dev/vda3", "ext4"),
                ("/var", "/dev/vda4", "xfs"),
                ("/boot/efi", "/dev/vda2", "vfat")
            ]
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(partition_device("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_device("/dev/sda", 2), "/dev/sda2");
    }

    #[test]
    fn filtering_drops_covered_paths_and_restores_kept_directories() {
        let entry = |p: &str, mode: u32| Entry {
            path: p.as_bytes().to_vec(),
            kind: EntryKind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![],
            source: None,
        };
        let view = View {
            base: None,
            root: PathBuf::new(),
            mounts: vec![],
            covers: vec![
                Cover {
                    rel: b"srv".to_vec(),
                    keep: None,
                },
                Cover {
                    rel: b"tmp".to_vec(),
                    keep: Some(entry("tmp", 0o1777)),
                },
            ],
            drops: vec![b"link".to_vec()],
            notes: vec![],
        };
        let mut entries: Vec<Entry> = ["", "srv", "srv/a", "srvx", "tmp", "tmp/x", "link", "etc"]
            .iter()
            .map(|p| entry(p, 0o755))
            .collect();
        view.filter(&mut entries);
        let got: Vec<(String, u32)> = entries
            .iter()
            .map(|e| (String::from_utf8_lossy(&e.path).into_owned(), e.mode))
            .collect();
        assert_eq!(
            got,
            [
                ("".into(), 0o755),
                ("srvx".into(), 0o755),
                ("tmp".into(), 0o1777),
                ("etc".into(), 0o755)
            ]
        );
    }
}
