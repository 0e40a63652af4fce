//! The `Format` step: a file system or swap space with a UUID we choose, so that fstab and
//! the boot loader can name it without asking blkid.

use std::process::Command;

use anyhow::Result;
use ignite_profiles::Fs;

use crate::log::Log;
use crate::random;

/// The tool that makes each file system, and the Debian package it comes from.
pub fn tool(fs: Fs) -> (&'static str, &'static str) {
    match fs {
        Fs::Ext4 => ("mke2fs", "e2fsprogs"),
        Fs::Xfs => ("mkfs.xfs", "xfsprogs"),
        Fs::Vfat => ("mkfs.vfat", "dosfstools"),
        Fs::Swap => ("mkswap", "util-linux"),
    }
}

/// The longest label each file system takes.
fn max_label(fs: Fs) -> usize {
    match fs {
        Fs::Ext4 => 16,
        Fs::Xfs => 12,
        Fs::Vfat => 11,
        Fs::Swap => 16,
    }
}

/// The options that make `fs` for a disk of `sector`-byte logical sectors. The tools probe a
/// block device themselves, but not a partition of an image on a loop device, and a file
/// system made for 512-byte sectors does not mount from a 4K-native disk (xfs refuses, FAT
/// reads garbage): so the plan's sector size is said, not guessed.
fn sector_args(fs: Fs, sector: u64) -> Vec<String> {
    if sector == 512 {
        return Vec::new();
    }
    match fs {
        // An ext4 block is at least a sector.
        Fs::Ext4 => vec!["-b".into(), sector.max(4096).to_string()],
        Fs::Xfs => vec!["-s".into(), format!("size={sector}")],
        Fs::Vfat => vec!["-S".into(), sector.to_string()],
        // Swap is in pages.
        Fs::Swap => Vec::new(),
    }
}

/// Makes `fs` on `device` (of a disk with `sector`-byte sectors) and returns the UUID it was
/// given (for vfat, the volume id in the `XXXX-XXXX` form fstab and blkid use).
pub fn format(device: &str, fs: Fs, label: &str, sector: u64, log: &mut Log) -> Result<String> {
    let label: String = match fs {
        Fs::Vfat => label.to_uppercase(),
        _ => label.to_string(),
    }
    .chars()
    .take(max_label(fs))
    .collect();
    let (prog, _) = tool(fs);
    let mut cmd = Command::new(prog);
    let uuid = match fs {
        Fs::Vfat => {
            let id = random::hex(4)?.to_uppercase();
            cmd.args(["-i", &id]);
            if !label.is_empty() {
                cmd.args(["-n", &label]);
            }
            format!("{}-{}", &id[0..4], &id[4..8])
        }
        _ => {
            let uuid = random::uuid()?;
            match fs {
                Fs::Ext4 => cmd.args(["-F", "-q", "-t", "ext4", "-U", &uuid]),
                Fs::Xfs => cmd.args(["-f", "-q", "-m", &format!("uuid={uuid}")]),
                _ => cmd.args(["-f", "-U", &uuid]),
            };
            if !label.is_empty() {
                cmd.args(["-L", &label]);
            }
            uuid
        }
    };
    cmd.args(sector_args(fs, sector));
    cmd.arg(device);
    log.run(&mut cmd)?;
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_systems_are_made_for_the_disks_sector_size() {
        for fs in [Fs::Ext4, Fs::Xfs, Fs::Vfat, Fs::Swap] {
            assert!(sector_args(fs, 512).is_empty());
        }
        assert_eq!(sector_args(Fs::Ext4, 4096), ["-b", "4096"]);
        assert_eq!(sector_args(Fs::Xfs, 4096), ["-s", "size=4096"]);
        assert_eq!(sector_args(Fs::Vfat, 4096), ["-S", "4096"]);
        assert!(sector_args(Fs::Swap, 4096).is_empty());
    }
}
