//! What the agent tells the server about this machine: its disks, from /sys/block
//! (`size` in 512-byte units, `queue/logical_block_size`, `serial` or `device/serial`).

use std::path::Path;

use ignite_profiles::DiskFact;

/// Block devices that are never install targets.
fn is_disk(name: &str) -> bool {
    !["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The disk named `name` (`vda`) from `sys_block` (`/sys/block`).
pub fn disk(sys_block: &Path, name: &str) -> Option<DiskFact> {
    let dir = sys_block.join(name);
    let sectors: u64 = read_trim(&dir.join("size"))?.parse().ok()?;
    let serial = read_trim(&dir.join("serial")).or_else(|| read_trim(&dir.join("device/serial")));
    Some(DiskFact {
        path: format!("/dev/{name}"),
        // /sys/block sizes are in 512-byte units whatever the logical sector size.
        size: sectors * 512,
        serial,
        sector_size: read_trim(&dir.join("queue/logical_block_size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(ignite_profiles::SECTOR),
    })
}

/// Every disk with a non-zero size, sorted by name (vda before vdb, sda before sdb).
pub fn disks(sys_block: &Path) -> Vec<DiskFact> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_disk(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|n| disk(sys_block, n))
        .filter(|d| d.size > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_with_size_and_serial() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, size: &str, serial: Option<&str>| {
            let p = d.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("size"), size).unwrap();
            if let Some(s) = serial {
                std::fs::write(p.join("serial"), s).unwrap();
            }
        };
        mk("vdb", "2048\n", None);
        std::fs::create_dir_all(d.path().join("vdb/queue")).unwrap();
        std::fs::write(d.path().join("vdb/queue/logical_block_size"), "4096\n").unwrap();
        mk("vda", "4194304\n", Some("ign-1\n"));
        mk("loop0", "100\n", None);
        mk("sr0", "0\n", None);
        let got = disks(d.path());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].path, "/dev/vda");
        assert_eq!(got[0].size, 2 << 30);
        assert_eq!(got[0].serial.as_deref(), Some("ign-1"));
        assert_eq!(got[1].serial, None);
        assert_eq!((got[0].sector_size, got[1].sector_size), (512, 4096));
    }
}
