//! Install profiles (TOML): disk layout, file systems, golden archive, identity, network, hooks.
//!
//! Ignite-UX config clauses made modern. A profile is a TOML file:
//!
//! ```toml
//! extends = "base"            # inherit base.toml from the same directory, then override it
//! archive = "debian-12"       # or "debian-12@3fa9c2" (a snapshot id prefix) or "debian-12@latest"
//!
//! [disk]                      # which client disk: every criterion given must match; none = first disk
//! path = "/dev/vda"           # and/or serial = "QM00001", size = "10G..100G" ("10G..", "..2T"),
//!                             # by_id = "nvme-Samsung_SSD_980_S64" (a /dev/disk/by-id/ name),
//!                             # transport = "nvme" (sata | sas | scsi | virtio | usb),
//!                             # media = "ssd" (hdd)
//! pick = "first"              # of the matching disks: first (default) | smallest (that the layout fits)
//! table = "gpt"               # the only table written
//! count = 1                   # disks that get this layout (2 for a mirror), sized for the smallest
//!
//! [[disk.partitions]]         # in disk order
//! type = "bios_boot"          # linux (default) | efi | bios_boot | swap | raid | lvm
//! size = "1M"
//!
//! [[disk.partitions]]
//! size = "rest"               # "512M", "1.5G", "20%" of the usable space, or "rest"
//! fs = "ext4"                 # ext4 | xfs | vfat | swap
//! mount = "/"
//! options = ["noatime"]
//!
//! [raid]                      # one md array of the raid partition of every disk
//! level = 1                   # a mirror (the only level)
//!
//! [lvm]                       # a volume group on the array (or on the lvm partitions)
//! vg = "vg0"
//! [[lvm.volumes]]             # written like partitions: name, size, fs, mount, options
//! name = "root"
//! size = "rest"               # "8G" (whole 4 MiB extents), "20%" of the group, or "rest"
//! fs = "ext4"
//! mount = "/"
//!
//! [identity]
//! hostname = "web-{mac6}"     # {mac} {mac6} {name} (the client's registered hostname)
//! fresh_machine_id = true     # default true
//! fresh_ssh_host_keys = true  # default true
//! root_authorized_keys = ["ssh-ed25519 AAAA... admin@example"]
//!
//! [[identity.users]]
//! name = "admin"
//! uid = 1000
//! groups = ["sudo"]
//! shell = "/bin/bash"         # default
//! authorized_keys = ["ssh-ed25519 AAAA... admin@example"]
//!
//! [network]
//! format = "auto"             # auto | ifupdown | networkd | netplan
//! [network.interfaces.boot]   # "boot" = the NIC the client booted from (by MAC); or a name
//! dhcp = true                 # default: DHCP on "boot" when no interface is given
//! [network.interfaces.eth1]
//! address = "192.0.2.10/24"
//! gateway = "192.0.2.1"
//! dns = ["192.0.2.53"]
//!
//! [boot]
//! loader = "grub"             # grub (default) | extlinux | none (the monitor boots the kernel)
//! firmware = "bios"           # bios (default) | uefi | both
//!
//! hooks = ["systemctl enable nginx"]   # run in the installed system (chroot), in order
//! ```
//!
//! Rules worth knowing:
//! - `extends`: the base is merged first, then the profile over it; tables merge key by key,
//!   arrays (partitions, users, hooks, keys) are replaced whole. Chains may be any depth (16
//!   at most); a cycle is an error naming the chain.
//! - Partitions are laid out in the disk's logical sectors (512, or 4096 on 4K-native disks,
//!   as the agent reports them); a size that is not whole MiB is rounded up and the plan's
//!   partition `note` says so.
//! - Sizes use binary units (`M` = MiB). Fixed sizes round up to whole MiB, percentages are of
//!   the usable space (disk minus the 1 MiB head and the GPT tail) rounded down to whole MiB.
//!   At most one partition may be `"rest"`, anywhere in the list: partitions after it are laid
//!   out after it, so they end at the end of the disk.
//! - An EFI partition defaults to `fs = "vfat"`, `mount = "/boot/efi"`.
//! - `loader = "grub"` on BIOS needs a `bios_boot` partition (GRUB's core image goes there).
//! - `loader = "extlinux"` (Syslinux 6.04 from the image: packages extlinux, syslinux-common,
//!   syslinux-efi) needs no `bios_boot` partition. On BIOS, gptmbr.bin boots the partition
//!   holding `/boot` (its own, else `/`), which the plan marks legacy BIOS bootable; that
//!   file system must be ext4 or vfat: xfs keeps its superblock where Syslinux's boot
//!   sector goes, so the check refuses it. On UEFI, syslinux.efi reads only the EFI system
//!   partition, so the agent copies the kernel and initrd there: the ESP must hold them
//!   (about 45 MiB for Debian 12; the agent checks and says how much it needs), and a
//!   kernel update in the installed system does not refresh those copies. Either way the
//!   config names the kernel installed with the image.
//! - Several disks (`disk.count`): each gets the same partitions at the same places; only
//!   the EFI partition may have a file system of its own (disk k's is mounted at its mount
//!   point with k appended, `/boot/efi2`, and every ESP is `nofail`, so a lost disk does
//!   not stop the boot). File systems go on `[lvm]` volumes, on the `[raid]` array (whose
//!   members start 4 MiB in) or spanning the `lvm` partitions. A layout that does not fit
//!   names the smallest disk and the size that would.
//! - A profile with syntax errors reports only its syntax errors (all of them, in every file
//!   of the chain); otherwise every type, key and rule error is reported at once.

mod decode;
mod error;
mod model;
mod render;
mod size;
mod source;
mod template;

pub use error::{Diagnostic, Errors, RenderError};
pub use model::*;
pub use render::{
    partition_device, volume_device, ClientFacts, DiskFact, DiskPlan, InstallPlan, LvmPlan,
    PartitionPlan, RaidPlan, Step, VolumePlan, EXTENT, PV_DATA_START, RAID_DATA_OFFSET,
    RAID_DEVICE, SECTOR,
};
pub use size::{human, parse_bytes, parse_range, parse_size, Size, SizeRange, MIB};
pub use template::{hostname_problem, normalize_mac};

use source::{Loc, Sources, Table, Value};
use std::path::Path;

/// Finds a base profile by name (`base`): its display name (for errors) and its text, or why
/// it cannot be read.
pub type Resolver<'a> = dyn FnMut(&str) -> Result<(String, String), String> + 'a;

/// The deepest `extends` chain accepted.
pub const MAX_EXTENDS: usize = 16;

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("profile {file}: cannot read it ({error}); check the path")]
    Read { file: String, error: String },
    #[error("{0}")]
    Invalid(Errors),
}

impl LoadError {
    /// The positioned problems (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Read { .. } => &[],
            LoadError::Invalid(e) => &e.0,
        }
    }
}

impl Profile {
    /// Load a profile file; `extends = "base"` reads `base.toml` from the same directory.
    pub fn load(path: &Path) -> Result<Profile, LoadError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read {
            file: display.clone(),
            error: e.to_string(),
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut resolve = |base: &str| -> Result<(String, String), String> {
            let p = dir.join(format!("{base}.toml"));
            std::fs::read_to_string(&p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        Profile::from_str_with(&display, &text, &mut resolve).map_err(LoadError::Invalid)
    }

    /// Parse a profile that does not extend another (`extends` is an error).
    pub fn from_str_named(file: &str, text: &str) -> Result<Profile, Errors> {
        let mut none = |b: &str| Err(format!("no base profiles are available here ({b})"));
        Profile::from_str_with(file, text, &mut none)
    }

    /// Parse a profile; `resolve(base)` returns the display name and text of `base`.
    pub fn from_str_with(
        file: &str,
        text: &str,
        resolve: &mut Resolver<'_>,
    ) -> Result<Profile, Errors> {
        let mut sources = Sources::default();
        let top = sources.add(file.to_string(), text.to_string());
        let mut chain: Vec<(String, usize)> = vec![(stem(file), top)];
        let mut trees: Vec<Table> = Vec::new();
        let mut errs: Vec<Diagnostic> = Vec::new();
        let mut cur = top;
        loop {
            let (tree, syntax) = source::parse(&sources, cur);
            errs.extend(syntax);
            let ext = tree.get("extends").and_then(|e| match &e.node.v {
                Value::Str(s) => Some((s.clone(), e.node.loc)),
                v => {
                    let msg = format!(
                        "extends is {}, not a string; write e.g. extends = \"base\"",
                        v.type_name()
                    );
                    errs.push(sources.diag(e.node.loc, msg));
                    None
                }
            });
            trees.push(tree);
            let Some((base, loc)) = ext else { break };
            let name = base.strip_suffix(".toml").unwrap_or(&base).to_string();
            if name.is_empty()
                || name.starts_with('.')
                || name.contains(['/', '\\'])
                || name.chars().any(|c| c.is_control())
            {
                errs.push(sources.diag(loc, format!("extends {base:?} is not a profile name; write the name of a profile in the same directory, e.g. extends = \"base\" for base.toml")));
                break;
            }
            if chain.iter().any(|c| c.0 == name) {
                let mut names: Vec<String> =
                    chain.iter().map(|c| format!("{}.toml", c.0)).collect();
                names.push(format!("{name}.toml"));
                errs.push(sources.diag(
                    loc,
                    format!(
                        "extends cycle: {}; remove one of these extends",
                        names.join(" -> ")
                    ),
                ));
                break;
            }
            if chain.len() > MAX_EXTENDS {
                errs.push(sources.diag(
                    loc,
                    format!("extends chain is deeper than {MAX_EXTENDS} profiles; flatten it"),
                ));
                break;
            }
            match resolve(&name) {
                Ok((display, text)) => {
                    cur = sources.add(display, text);
                    chain.push((name, cur));
                }
                Err(why) => {
                    errs.push(sources.diag(loc, format!("extends {base:?}: cannot read the base profile ({why}); create {name}.toml beside this profile or fix the name")));
                    break;
                }
            }
        }
        if errs.is_empty() {
            let mut merged = Table::default();
            for t in trees.into_iter().rev() {
                merged.merge(t);
            }
            let names: Vec<String> = chain.iter().rev().map(|c| c.0.clone()).collect();
            let mut d = decode::Decoder::new(&sources, top);
            let profile = d.profile(&stem(file), names, &merged);
            errs = d.errs;
            if let Some(p) = profile {
                if errs.is_empty() {
                    return Ok(p);
                }
            }
            if errs.is_empty() {
                // Defensive: a rejected profile always says why.
                errs.push(sources.diag(
                    Loc {
                        file: top,
                        start: 0,
                        end: 0,
                    },
                    "profile rejected; fix the errors above",
                ));
            }
        }
        let order = |name: &str| {
            sources
                .files
                .iter()
                .position(|f| f.name == name)
                .unwrap_or(0)
        };
        errs.sort_by_key(|d| (order(&d.file), d.line, d.col));
        errs.dedup();
        Err(Errors(errs))
    }
}

fn stem(file: &str) -> String {
    let base = Path::new(file)
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| file.to_string());
    base.strip_suffix(".toml").unwrap_or(&base).to_string()
}

/// The closest of `known` to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (levenshtein(&w, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(w.len()) / 3).max(1))
        .min_by_key(|(d, k)| (*d, k.len().abs_diff(w.len())))
        .map(|(_, k)| k)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment).
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests;
