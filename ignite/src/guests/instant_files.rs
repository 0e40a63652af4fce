//! Where an instant restore's files sit beside a guest's disks: what both the restore
//! (`instant`) and the QEMU command line (`qemu`) need, in a module of its own so that
//! neither imports the other.

use std::path::{Path, PathBuf};

/// QEMU's second monitor, for the background copy.
pub fn qmp_socket(dir: &Path) -> PathBuf {
    dir.join("instant-qmp.sock")
}

pub fn overlay_of(disk: &Path) -> PathBuf {
    let mut p = disk.as_os_str().to_owned();
    p.push(".instant.qcow2");
    PathBuf::from(p)
}

/// The overlay QEMU must open instead of `disk`: while an instant restore has not finished
/// copying it (the disk's own image does not exist yet).
pub fn overlay_in_use(disk: &Path) -> Option<PathBuf> {
    let o = overlay_of(disk);
    (o.exists() && !disk.exists()).then_some(o)
}
