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

/// Makes `fs` on `device` and returns the UUID it was given (for vfat, the volume id in the
/// `XXXX-XXXX` form fstab and blkid use).
pub fn format(device: &str, fs: Fs, label: &str, log: &mut Log) -> Result<String> {
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
    cmd.arg(device);
    log.run(&mut cmd)?;
    Ok(uuid)
}
