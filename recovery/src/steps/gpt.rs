//! A GUID partition table writer: protective MBR, primary header and entries at the start of
//! the disk, backup entries and header at its end, each with its CRC32 (UEFI spec 2.10, 5.3).
//! Everything is in units of the disk's logical sector (512 or 4096 bytes; "LBA" below):
//! the MBR and each header take one sector, the 16 KiB entry array 32 or 4 sectors.

use anyhow::{bail, Context, Result};

/// Attribute bit 2, legacy BIOS bootable: Syslinux's gptmbr.bin boots the first partition
/// that has it.
pub const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Bytes of the entry array (128 entries of 128 bytes).
const ENTRY_BYTES: u64 = ENTRIES * ENTRY_SIZE;

/// Refuses a logical sector size GPT cannot use here: a power of two from 512 to 4096.
pub fn check_sector(sector: u64) -> Result<()> {
    if !(512..=4096).contains(&sector) || !sector.is_power_of_two() {
        bail!("a logical sector size of {sector} bytes is not supported; disks have 512 or 4096");
    }
    Ok(())
}

/// One partition as it goes into the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// The sectors to write: `(byte offset, bytes)` for the head and the tail of the disk.
pub struct GptImage {
    pub head: Vec<u8>,
    pub tail_offset: u64,
    pub tail: Vec<u8>,
}

/// Parses `0FC63DAF-8483-4772-8E79-3D69D8477DE4` into GPT's on-disk byte order (the first
/// three fields little-endian, the last two as written).
pub fn parse_guid(s: &str) -> Result<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let groups: Vec<usize> = s.split('-').map(str::len).collect();
    if hex.len() != 32 || groups != [8, 4, 4, 4, 12] || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        bail!("GUID {s:?} is not of the form XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX");
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Ok(b)
}

/// The text form of an on-disk GUID.
pub fn format_guid(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10..]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// A random (version 4) GUID in on-disk order.
pub fn random_guid() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    crate::random::fill(&mut b)?;
    // Version and variant sit in the big-endian view: byte 7 on disk is the high byte of
    // the third field.
    b[7] = (b[7] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b)
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn entry_array(parts: &[GptPartition]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut out[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid);
        e[16..32].copy_from_slice(&p.unique_guid);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        if name.len() > 36 {
            bail!(
                "partition name {:?} is longer than GPT's 36 UTF-16 units; shorten it",
                p.name
            );
        }
        for (j, u) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    Ok(out)
}

struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: [u8; 16],
    entries_lba: u64,
    entries_crc: u32,
}

fn header(h: &Header, sector: u64) -> Vec<u8> {
    let mut s = vec![0u8; sector as usize];
    s[0..8].copy_from_slice(b"EFI PART");
    s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    s[12..16].copy_from_slice(&92u32.to_le_bytes());
    s[24..32].copy_from_slice(&h.my_lba.to_le_bytes());
    s[32..40].copy_from_slice(&h.alternate_lba.to_le_bytes());
    s[40..48].copy_from_slice(&h.first_usable.to_le_bytes());
    s[48..56].copy_from_slice(&h.last_usable.to_le_bytes());
    s[56..72].copy_from_slice(&h.disk_guid);
    s[72..80].copy_from_slice(&h.entries_lba.to_le_bytes());
    s[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    s[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    s[88..92].copy_from_slice(&h.entries_crc.to_le_bytes());
    let crc = crc32(&s[0..92]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
    s
}

fn protective_mbr(sectors: u64, sector: u64) -> Vec<u8> {
    let mut s = vec![0u8; sector as usize];
    let e = &mut s[446..462];
    e[0] = 0x00;
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (sectors - 1).min(u32::MAX as u64) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Lays out a GPT for a disk of `disk_bytes` with `sector`-byte logical sectors holding
/// `parts` (their LBAs in those sectors), checking that every partition lies in the usable
/// area and none overlap.
pub fn build(
    disk_bytes: u64,
    sector: u64,
    disk_guid: [u8; 16],
    parts: &[GptPartition],
) -> Result<GptImage> {
    check_sector(sector)?;
    let entry_sectors = ENTRY_BYTES / sector;
    let sectors = disk_bytes / sector;
    let first_usable = 2 + entry_sectors;
    if sectors < 2 * first_usable + 1 {
        bail!("disk of {disk_bytes} bytes is too small for a GPT");
    }
    let last = sectors - 1;
    let last_usable = last - entry_sectors - 1;
    if parts.len() as u64 > ENTRIES {
        bail!("{} partitions: GPT holds at most {ENTRIES}", parts.len());
    }
    let mut sorted: Vec<&GptPartition> = parts.iter().collect();
    sorted.sort_by_key(|p| p.first_lba);
    for (i, p) in sorted.iter().enumerate() {
        if p.first_lba < first_usable || p.last_lba > last_usable || p.last_lba < p.first_lba {
            bail!(
                "partition {:?} (sectors {}-{}) lies outside the disk's usable sectors {first_usable}-{last_usable}",
                p.name,
                p.first_lba,
                p.last_lba
            );
        }
        if let Some(next) = sorted.get(i + 1) {
            if next.first_lba <= p.last_lba {
                bail!("partitions {:?} and {:?} overlap", p.name, next.name);
            }
        }
    }
    let entries = entry_array(parts)?;
    let entries_crc = crc32(&entries);
    let primary = header(
        &Header {
            my_lba: 1,
            alternate_lba: last,
            first_usable,
            last_usable,
            disk_guid,
            entries_lba: 2,
            entries_crc,
        },
        sector,
    );
    let backup = header(
        &Header {
            my_lba: last,
            alternate_lba: 1,
            first_usable,
            last_usable,
            disk_guid,
            entries_lba: last - entry_sectors,
            entries_crc,
        },
        sector,
    );
    let mut head = protective_mbr(sectors, sector);
    head.extend_from_slice(&primary);
    head.extend_from_slice(&entries);
    let mut tail = entries;
    tail.extend_from_slice(&backup);
    Ok(GptImage {
        head,
        tail_offset: (last - entry_sectors) * sector,
        tail,
    })
}

/// Writes `img` to `dev` and flushes it to the device.
pub fn write(dev: &std::fs::File, img: &GptImage) -> Result<()> {
    use std::os::unix::fs::FileExt;
    dev.write_all_at(&img.head, 0)
        .context("cannot write the primary GPT")?;
    dev.write_all_at(&img.tail, img.tail_offset)
        .context("cannot write the backup GPT")?;
    dev.sync_all().context("cannot flush the partition table")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_e2e::{have, require};

    fn run_ok(cmd: &mut std::process::Command) -> String {
        ignite_e2e::run(cmd)
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_round_trip() {
        let s = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
        let b = parse_guid(s).unwrap();
        assert_eq!(b[0], 0xAF);
        assert_eq!(format_guid(&b), s);
        assert!(parse_guid("0FC63DAF-8483-4772-8E79").is_err());
        let r = random_guid().unwrap();
        assert_eq!(format_guid(&r).as_bytes()[14], b'4');
    }

    #[test]
    fn overlapping_or_outside_partitions_are_refused() {
        let p = |a, b| GptPartition {
            type_guid: [1; 16],
            unique_guid: [2; 16],
            first_lba: a,
            last_lba: b,
            attributes: 0,
            name: "x".into(),
        };
        let mib = 1 << 20;
        assert!(build(64 * mib, 512, [3; 16], &[p(2048, 4095), p(4000, 8000)]).is_err());
        assert!(build(64 * mib, 512, [3; 16], &[p(10, 4095)]).is_err());
        assert!(build(64 * mib, 512, [3; 16], &[p(2048, 131071)]).is_err());
        // In 4096-byte sectors the first usable one is 6 and the disk has 16384.
        assert!(build(64 * mib, 4096, [3; 16], &[p(6, 16378)]).is_ok());
        assert!(build(64 * mib, 4096, [3; 16], &[p(5, 100)]).is_err());
        assert!(build(64 * mib, 4096, [3; 16], &[p(256, 16379)]).is_err());
        let e = build(64 * mib, 520, [3; 16], &[]).err().unwrap();
        assert!(e.to_string().contains("520 bytes is not supported"), "{e}");
    }

    /// Writes a three-partition table on a fresh image of `size` bytes in `sector`-byte
    /// sectors: (image, disk GUID, partitions, type GUIDs, names).
    fn table_on_image(
        dir: &std::path::Path,
        size: u64,
        sector: u64,
    ) -> (std::path::PathBuf, [u8; 16], Vec<GptPartition>) {
        let img = dir.join(format!("disk{sector}.img"));
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
        // 1 MiB-aligned ranges in this sector size, the last one up to the last usable.
        let mib = (1 << 20) / sector;
        let last_usable = size / sector - 1 - (ENTRY_BYTES / sector) - 1;
        let ranges = [
            (mib, 2 * mib - 1),
            (2 * mib, 34 * mib - 1),
            (34 * mib, last_usable),
        ];
        let parts: Vec<GptPartition> = (0..3)
            .map(|i| GptPartition {
                type_guid: parse_guid(TYPES[i]).unwrap(),
                unique_guid: random_guid().unwrap(),
                first_lba: ranges[i].0,
                last_lba: ranges[i].1,
                attributes: if i == 2 { LEGACY_BIOS_BOOTABLE } else { 0 },
                name: NAMES[i].into(),
            })
            .collect();
        let disk_guid = random_guid().unwrap();
        write(&f, &build(size, sector, disk_guid, &parts).unwrap()).unwrap();
        (img, disk_guid, parts)
    }

    const TYPES: [&str; 3] = [
        "21686148-6449-6E6F-744E-656564454649",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    ];
    const NAMES: [&str; 3] = ["bios", "esp", "root-ä"];

    /// sfdisk's view of the table on `dev` (an image: 512-byte sectors; a loop device: its
    /// own), checked against what we wrote in `sector`-byte sectors.
    fn sfdisk_agrees(dev: &std::path::Path, sector: u64, guid: &[u8; 16], parts: &[GptPartition]) {
        let json = run_ok(std::process::Command::new("sfdisk").arg("--json").arg(dev));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let t = &v["partitiontable"];
        assert_eq!(t["label"], "gpt", "{json}");
        assert_eq!(t["id"], format_guid(guid));
        assert_eq!(t["sectorsize"], sector, "{json}");
        let got = t["partitions"].as_array().unwrap();
        assert_eq!(got.len(), 3);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p["start"], parts[i].first_lba);
            assert_eq!(p["size"], parts[i].last_lba - parts[i].first_lba + 1);
            assert_eq!(p["type"], TYPES[i]);
            assert_eq!(p["uuid"], format_guid(&parts[i].unique_guid));
            assert_eq!(p["name"], NAMES[i]);
        }
        assert_eq!(got[2]["attrs"], "LegacyBIOSBootable");
        assert!(got[0].get("attrs").is_none());
    }

    /// sgdisk and sfdisk, independent GPT readers, agree with what we wrote.
    #[test]
    fn sgdisk_and_sfdisk_read_our_table() {
        if !require(have("sgdisk"), "`sgdisk` (apt package gdisk)")
            || !require(have("sfdisk"), "`sfdisk` (apt package fdisk)")
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (img, disk_guid, parts) = table_on_image(dir.path(), 100 << 20, 512);
        let verify = run_ok(std::process::Command::new("sgdisk").arg("-v").arg(&img));
        assert!(verify.contains("No problems found"), "{verify}");
        let print = run_ok(std::process::Command::new("sgdisk").arg("-p").arg(&img));
        assert!(
            print.contains(&format!(
                "Disk identifier (GUID): {}",
                format_guid(&disk_guid)
            )),
            "{print}"
        );
        sfdisk_agrees(&img, 512, &disk_guid, &parts);
    }

    /// A table for 4096-byte sectors on a loop device with 4096-byte sectors (as a 4K-native
    /// disk shows itself): sfdisk and partx (libblkid) read exactly what we wrote. Read as
    /// a 512-byte disk, there is no such table: the unit matters. (The kernel's own scan
    /// is not checked here: this host's kernel has no partition support; the QEMU guests
    /// of `install_hw` prove it.)
    #[test]
    fn a_4096_byte_sector_table_is_read_back_by_sfdisk_and_the_kernel() {
        if !require(
            ignite_e2e::is_root() && have("sfdisk") && have("losetup") && have("partx"),
            "root and sfdisk, losetup, partx (util-linux, fdisk)",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let size = 100u64 << 20;
        let (img, guid, parts) = table_on_image(dir.path(), size, 4096);
        let as512 = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&as512.stdout);
        assert!(!text.contains(&format_guid(&guid)), "{text}");
        let loopdev = run_ok(
            std::process::Command::new("losetup")
                .args(["--sector-size", "4096", "--find", "--show", "--partscan"])
                .arg(&img),
        );
        let loopdev = loopdev.trim().to_string();
        struct Detach(String);
        impl Drop for Detach {
            fn drop(&mut self) {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let _detach = Detach(loopdev.clone());
        sfdisk_agrees(std::path::Path::new(&loopdev), 4096, &guid, &parts);
        let partx = run_ok(
            std::process::Command::new("partx")
                .args(["--raw", "--noheadings", "--output", "NR,START,SECTORS,UUID"])
                .arg(&loopdev),
        );
        // partx counts in 512-byte sectors whatever the device's.
        let want: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "{} {} {} {}",
                    i + 1,
                    p.first_lba * 8,
                    (p.last_lba - p.first_lba + 1) * 8,
                    format_guid(&p.unique_guid).to_lowercase()
                )
            })
            .collect();
        assert_eq!(partx.lines().collect::<Vec<_>>(), want, "{partx}");
    }
}
