//! A GUID partition table writer: protective MBR, primary header and entries at the start of
//! the disk, backup entries and header at its end, each with its CRC32 (UEFI spec 2.10, 5.3).

use anyhow::{bail, Context, Result};

const SECTOR: u64 = 512;
/// Attribute bit 2, legacy BIOS bootable: Syslinux's gptmbr.bin boots the first partition
/// that has it.
pub const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by the entry array (128 entries of 128 bytes).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

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

fn header(h: &Header) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR as usize];
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

fn protective_mbr(sectors: u64) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR as usize];
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

/// Lays out a GPT for a disk of `disk_bytes` holding `parts`, checking that every partition
/// lies in the usable area and none overlap.
pub fn build(disk_bytes: u64, disk_guid: [u8; 16], parts: &[GptPartition]) -> Result<GptImage> {
    let sectors = disk_bytes / SECTOR;
    let first_usable = 2 + ENTRY_SECTORS;
    if sectors < 2 * first_usable + 1 {
        bail!("disk of {disk_bytes} bytes is too small for a GPT");
    }
    let last = sectors - 1;
    let last_usable = last - ENTRY_SECTORS - 1;
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
    let primary = header(&Header {
        my_lba: 1,
        alternate_lba: last,
        first_usable,
        last_usable,
        disk_guid,
        entries_lba: 2,
        entries_crc,
    });
    let backup = header(&Header {
        my_lba: last,
        alternate_lba: 1,
        first_usable,
        last_usable,
        disk_guid,
        entries_lba: last - ENTRY_SECTORS,
        entries_crc,
    });
    let mut head = protective_mbr(sectors);
    head.extend_from_slice(&primary);
    head.extend_from_slice(&entries);
    let mut tail = entries;
    tail.extend_from_slice(&backup);
    Ok(GptImage {
        head,
        tail_offset: (last - ENTRY_SECTORS) * SECTOR,
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
        assert!(build(64 * mib, [3; 16], &[p(2048, 4095), p(4000, 8000)]).is_err());
        assert!(build(64 * mib, [3; 16], &[p(10, 4095)]).is_err());
        assert!(build(64 * mib, [3; 16], &[p(2048, 131071)]).is_err());
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
        let img = dir.path().join("disk.img");
        let size = 100u64 << 20;
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
        let types = [
            "21686148-6449-6E6F-744E-656564454649",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        ];
        let ranges = [(2048, 4095), (4096, 69631), (69632, 204766 - 33 - 1)];
        let names = ["bios", "esp", "root-ä"];
        let parts: Vec<GptPartition> = (0..3)
            .map(|i| GptPartition {
                type_guid: parse_guid(types[i]).unwrap(),
                unique_guid: random_guid().unwrap(),
                first_lba: ranges[i].0,
                last_lba: ranges[i].1,
                attributes: if i == 2 { LEGACY_BIOS_BOOTABLE } else { 0 },
                name: names[i].into(),
            })
            .collect();
        let disk_guid = random_guid().unwrap();
        write(&f, &build(size, disk_guid, &parts).unwrap()).unwrap();

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
        let json = run_ok(std::process::Command::new("sfdisk").arg("--json").arg(&img));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let t = &v["partitiontable"];
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["id"], format_guid(&disk_guid));
        let got = t["partitions"].as_array().unwrap();
        assert_eq!(got.len(), 3);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p["start"], ranges[i].0);
            assert_eq!(p["size"], ranges[i].1 - ranges[i].0 + 1);
            assert_eq!(p["type"], types[i]);
            assert_eq!(p["uuid"], format_guid(&parts[i].unique_guid));
            assert_eq!(p["name"], names[i]);
        }
        assert_eq!(got[2]["attrs"], "LegacyBIOSBootable");
        assert!(got[0].get("attrs").is_none());
    }
}
