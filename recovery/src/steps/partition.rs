//! The `Partition` step: a fresh GPT exactly as the plan lays it out, then the kernel is
//! told to re-read it and we wait for the partition devices.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ignite_profiles::DiskPlan;

use super::gpt::{self, GptPartition};
use crate::log::Log;

const BLKRRPART: libc::c_ulong = 0x125f;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
/// How long the partition device nodes may take to appear after the re-read.
const DEVICE_WAIT: Duration = Duration::from_secs(15);

/// The size in bytes of a block device or file.
pub fn device_size(f: &std::fs::File) -> Result<u64> {
    let md = f.metadata()?;
    if md.is_file() {
        return Ok(md.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
        bail!("cannot read its size: {}", std::io::Error::last_os_error());
    }
    Ok(size)
}

/// The logical sector size of a block device (BLKSSZGET), or None for a file: an image
/// has the sector size the plan gives it.
pub fn device_sector_size(f: &std::fs::File) -> Result<Option<u64>> {
    if f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `size`.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKSSZGET, &mut size) } != 0 {
        bail!(
            "cannot read its sector size: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(Some(size as u64))
}

/// The plan's partitions as table entries, each with a fresh unique GUID.
pub fn gpt_partitions(plan_disk: &DiskPlan) -> Result<Vec<GptPartition>> {
    plan_disk
        .partitions
        .iter()
        .map(|p| {
            Ok(GptPartition {
                type_guid: gpt::parse_guid(&p.type_guid)
                    .with_context(|| format!("partition {}", p.number))?,
                unique_guid: gpt::random_guid()?,
                first_lba: p.start_sector,
                last_lba: p.end_sector,
                attributes: if p.legacy_bios_bootable {
                    gpt::LEGACY_BIOS_BOOTABLE
                } else {
                    0
                },
                name: p.name.clone(),
            })
        })
        .collect()
}

pub fn partition(plan_disk: &DiskPlan, disk: &str, log: &mut Log) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_EXCL on a block device fails while any of it is mounted or in use: never
    // repartition a disk that is busy.
    let excl = std::fs::metadata(disk).is_ok_and(|m| !m.is_file());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if excl { libc::O_EXCL } else { 0 })
        .open(disk)
        .with_context(|| {
            format!("disk {disk}: cannot open it for writing (is it mounted or in use?)")
        })?;
    let size = device_size(&f).with_context(|| format!("disk {disk}"))?;
    if size < plan_disk.size_bytes {
        bail!(
            "disk {disk} has {size} bytes but the plan was made for {} bytes; re-run the install so the plan is rendered for this disk",
            plan_disk.size_bytes
        );
    }
    if let Some(sector) = device_sector_size(&f).with_context(|| format!("disk {disk}"))? {
        if sector != plan_disk.sector_size {
            bail!(
                "disk {disk} has {sector}-byte logical sectors but the plan was made for {}-byte ones; re-run the install so the plan is rendered for this disk",
                plan_disk.sector_size
            );
        }
    }
    let parts = gpt_partitions(plan_disk)?;
    // The plan's partitions end where a disk of the planned size ends; a larger disk keeps
    // its extra space unpartitioned, with the backup table at its real end.
    let disk_guid = gpt::random_guid()?;
    let img = gpt::build(size, plan_disk.sector_size, disk_guid, &parts)
        .with_context(|| format!("disk {disk}: the plan does not fit"))?;
    gpt::write(&f, &img).with_context(|| format!("disk {disk}"))?;
    log.line(&format!(
        "disk {disk}: wrote GPT {} with {} partitions in {}-byte sectors",
        gpt::format_guid(&disk_guid),
        parts.len(),
        plan_disk.sector_size
    ));
    if f.metadata()?.is_file() {
        return Ok(());
    }
    // SAFETY: BLKRRPART takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART, 0) } != 0 {
        bail!(
            "disk {disk}: the kernel cannot re-read the partition table ({}); is a partition of it still mounted?",
            std::io::Error::last_os_error()
        );
    }
    drop(f);
    let start = Instant::now();
    for p in &plan_disk.partitions {
        while !Path::new(&p.device).exists() {
            if start.elapsed() > DEVICE_WAIT {
                bail!(
                    "partition device {} did not appear within {} s after writing the table",
                    p.device,
                    DEVICE_WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_e2e::{have, require, run_output};
    use ignite_profiles::{ClientFacts, DiskFact, Profile};

    fn plan(boot: &str) -> DiskPlan {
        let text = format!(
            r#"archive = "debian-12"
[[disk.partitions]]
type = "efi"
size = "64M"
[[disk.partitions]]
size = "256M"
fs = "ext4"
mount = "/boot"
[[disk.partitions]]
size = "rest"
fs = "ext4"
mount = "/"
[boot]
{boot}
"#
        );
        let p = Profile::from_str_named("t.toml", &text).unwrap();
        p.render(&ClientFacts {
            mac: "52:54:00:00:00:01".into(),
            disks: vec![DiskFact {
                path: "/dev/vda".into(),
                size: 1 << 30,
                serial: None,
                sector_size: 512,
                ..Default::default()
            }],
            hostname: None,
        })
        .unwrap()
        .disk
    }

    /// extlinux on BIOS: exactly the partition holding /boot carries "legacy BIOS bootable"
    /// in the table we write, as sfdisk (an independent reader) sees it; GRUB's plans set it
    /// nowhere.
    #[test]
    fn extlinux_bios_marks_the_boot_partition_legacy_bios_bootable() {
        if !require(have("sfdisk"), "`sfdisk` (apt package fdisk)") {
            return;
        }
        let attrs = |boot: &str| {
            let disk = plan(boot);
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("disk.img");
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(disk.size_bytes).unwrap();
            let parts = gpt_partitions(&disk).unwrap();
            gpt::write(
                &f,
                &gpt::build(disk.size_bytes, 512, [7; 16], &parts).unwrap(),
            )
            .unwrap();
            let out = run_output(std::process::Command::new("sfdisk").arg("--json").arg(&img));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["partitiontable"]["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["attrs"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            attrs("loader = \"extlinux\"\nfirmware = \"both\""),
            ["", "LegacyBIOSBootable", ""]
        );
        assert_eq!(
            attrs("loader = \"extlinux\"\nfirmware = \"uefi\""),
            ["", "", ""]
        );
        assert_eq!(
            attrs("loader = \"grub\"\nfirmware = \"uefi\""),
            ["", "", ""]
        );
    }
}
