//! What the agent tells the server about this machine: its disks, from /sys/block
//! (`size` in 512-byte units, `queue/logical_block_size`, `queue/rotational`, `serial` or
//! `device/serial`, `device/model`, `device/wwid`), the transport from where the kernel
//! found the disk (the `/sys/block/X` link's path), and the `/dev/disk/by-id/` names udev
//! would give it (the agent runs no udev): `virtio-SERIAL`, `nvme-MODEL_SERIAL`,
//! `wwn-0xNAA`.

use std::path::Path;

use ignite_profiles::{DiskFact, Transport};

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
    let link = std::fs::read_link(&dir)
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    let transport = transport(&link);
    let ids = by_id(
        transport,
        serial.as_deref(),
        read_trim(&dir.join("device/model")).as_deref(),
        read_trim(&dir.join("device/wwid")).as_deref(),
    );
    Some(DiskFact {
        path: format!("/dev/{name}"),
        // /sys/block sizes are in 512-byte units whatever the logical sector size.
        size: sectors * 512,
        serial,
        sector_size: read_trim(&dir.join("queue/logical_block_size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(ignite_profiles::SECTOR),
        ids,
        rotational: read_trim(&dir.join("queue/rotational")).map(|r| r == "1"),
        transport,
    })
}

/// The transport of a disk whose `/sys/block` link points at `link`.
fn transport(link: &str) -> Option<Transport> {
    let has = |s: &str| link.contains(s);
    Some(if has("/nvme/") {
        Transport::Nvme
    } else if has("/usb") {
        Transport::Usb
    } else if has("/virtio") {
        Transport::Virtio
    } else if has("/end_device-") || has("/sas_") {
        Transport::Sas
    } else if has("/ata") {
        Transport::Sata
    } else if has("/host") {
        Transport::Scsi
    } else {
        return None;
    })
}

/// The by-id names udev's 60-persistent-storage rules give such a disk (spaces in the model
/// and serial become `_`; udev cuts a virtio serial at 20 characters).
fn by_id(
    transport: Option<Transport>,
    serial: Option<&str>,
    model: Option<&str>,
    wwid: Option<&str>,
) -> Vec<String> {
    let clean = |s: &str| s.split_whitespace().collect::<Vec<_>>().join("_");
    let mut ids = Vec::new();
    match (transport, serial, model) {
        (Some(Transport::Virtio), Some(s), _) => {
            ids.push(format!("virtio-{}", s.chars().take(20).collect::<String>()))
        }
        (Some(Transport::Nvme), Some(s), Some(m)) => {
            ids.push(format!("nvme-{}_{}", clean(m), clean(s)))
        }
        _ => {}
    }
    if let Some(naa) = wwid.and_then(|w| w.strip_prefix("naa.")) {
        ids.push(format!("wwn-0x{}", naa.to_lowercase()));
    }
    ids
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

    #[test]
    fn transports_and_by_id_names_as_udev_gives_them() {
        for (link, t) in [
            ("../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1", Some(Transport::Nvme)),
            ("../devices/pci0000:00/0000:00:05.0/virtio2/block/vda", Some(Transport::Virtio)),
            (
                "../devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                Some(Transport::Sata),
            ),
            (
                "../devices/pci0000:00/0000:00:06.0/host2/port-2:0/end_device-2:0/target2:0:0/2:0:0:0/block/sdb",
                Some(Transport::Sas),
            ),
            (
                "../devices/pci0000:00/0000:00:05.0/host0/target0:2:0/0:2:0:0/block/sda",
                Some(Transport::Scsi),
            ),
            (
                "../devices/pci0000:00/0000:00:0d.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc",
                Some(Transport::Usb),
            ),
            ("../devices/virtual/block/loop0", None),
        ] {
            assert_eq!(transport(link), t, "{link}");
        }
        assert_eq!(
            by_id(
                Some(Transport::Nvme),
                Some("ign-g1-0     "),
                Some("QEMU NVMe Ctrl  "),
                None
            ),
            ["nvme-QEMU_NVMe_Ctrl_ign-g1-0"]
        );
        assert_eq!(
            by_id(
                Some(Transport::Virtio),
                Some("a-very-long-serial-number-here"),
                None,
                None
            ),
            ["virtio-a-very-long-serial-n"]
        );
        assert_eq!(
            by_id(
                Some(Transport::Sas),
                None,
                Some("X"),
                Some("naa.5000C500A1B2C3D4")
            ),
            ["wwn-0x5000c500a1b2c3d4"]
        );
    }
}
