//! What a recovery needs to know about a disk, read from the disk itself (an image, a
//! point-in-time view, or a capture in the store): its partition table, each partition's
//! file system (type, UUID, label), and from the root file system the mount table, the
//! identity (hostname, machine-id) and the boot loader.
//!
//! Everything read is untrusted (a guest wrote it): sizes and counts are bounded, entries
//! outside the disk are skipped, and a file system that cannot be read is recorded as such
//! rather than failing the capture.

use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::disk::{ImageReader, Slice};
use crate::steps::gpt::{crc32, format_guid};

/// At most this many GPT entries are read (128 is the default; 1024 is more than any table).
const MAX_GPT_ENTRIES: u32 = 1024;
/// Files read from a guest's root file system are small text files.
const MAX_TEXT: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Gpt,
    Mbr,
    /// A file system (or nothing known) on the whole disk.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    pub size: u64,
    pub sector_size: u64,
    pub table: Table,
    /// GPT disk GUID or MBR disk signature.
    pub disk_id: Option<String>,
    pub partitions: Vec<PartitionLayout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLayout {
    /// 1-based, as the kernel numbers it; 0 for a whole-disk file system.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// GPT type GUID or MBR type byte (`0x83`).
    pub type_id: String,
    /// What the type means, when known: `bios_boot`, `efi`, `linux`, `swap`, `lvm`, `raid`.
    pub kind: Option<String>,
    /// GPT partition GUID (PARTUUID).
    pub part_uuid: Option<String>,
    pub name: Option<String>,
    /// GPT attribute bits (bit 2: legacy BIOS bootable).
    pub attributes: u64,
    pub fs: Option<FsInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// `ext4`, `ext3`, `ext2`, `xfs`, `vfat`, `swap`, `LVM2_member`, `linux_raid_member`.
    pub fs_type: String,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

/// What the root file system says about the system on the disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// Partition number holding `/` (and `/etc`), if an ext4 one does.
    pub root_partition: Option<u32>,
    pub hostname: Option<String>,
    pub machine_id: Option<String>,
    /// `/etc/fstab` entries: (what, mount point, type, options).
    pub fstab: Vec<FstabEntry>,
    /// `grub`, `extlinux`, or none found.
    pub boot_loader: Option<String>,
    /// `uefi` when an EFI system partition exists, `bios` when a BIOS boot partition or an
    /// MBR boot loader does; both may hold.
    pub firmware: Vec<String>,
    /// Why something could not be read (e.g. the root file system is not ext4).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FstabEntry {
    pub what: String,
    pub mount: String,
    pub fs_type: String,
    pub options: String,
}

/// Reads the partition table and each partition's file system.
pub fn probe(disk: &dyn ImageReader) -> Result<DiskLayout> {
    let size = disk.size();
    let mut mbr = [0u8; 512];
    if size >= 512 {
        disk.read_at(&mut mbr, 0)?;
    }
    let mbr_ok = mbr[510] == 0x55 && mbr[511] == 0xaa;
    let protective = mbr_ok && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xee);
    if protective {
        for sector in [512u64, 4096] {
            if let Some(mut layout) = gpt(disk, sector)? {
                fill_filesystems(disk, &mut layout.partitions);
                return Ok(layout);
            }
        }
    }
    let (sector, mut partitions) = if mbr_ok && !protective {
        mbr_layout(disk, &mbr, size)
    } else {
        (512, Vec::new())
    };
    let table = if partitions.is_empty() {
        // A whole-disk file system, or nothing we know.
        partitions.push(PartitionLayout {
            number: 0,
            start: 0,
            size,
            type_id: String::new(),
            kind: None,
            part_uuid: None,
            name: None,
            attributes: 0,
            fs: None,
        });
        Table::None
    } else {
        Table::Mbr
    };
    if table == Table::None {
        fill_filesystems(disk, &mut partitions);
        if partitions[0].fs.is_none() {
            partitions.clear();
        }
    }
    Ok(DiskLayout {
        size,
        sector_size: sector,
        disk_id: (table == Table::Mbr).then(|| format!("{:08x}", u32_le(&mbr, 440))),
        table,
        partitions,
    })
}

fn fill_filesystems(disk: &dyn ImageReader, parts: &mut [PartitionLayout]) {
    for p in parts {
        let slice = Slice {
            disk,
            start: p.start,
            len: p.size,
        };
        p.fs = probe_fs(&slice);
    }
}

fn u16_le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A GUID as stored in GPT (first three fields little-endian), in its text form.
fn guid_text(b: &[u8]) -> String {
    format_guid(b[..16].try_into().unwrap())
}

/// A UUID stored in big-endian byte order (ext4, xfs, swap), in its text form.
fn uuid_text(b: &[u8]) -> String {
    let h: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn gpt_kind(type_guid: &str) -> Option<&'static str> {
    Some(match type_guid {
        "21686148-6449-6e6f-744e-656564454649" => "bios_boot",
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "efi",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "linux",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "linux",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "swap",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "lvm",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "raid",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "xbootldr",
        _ => return None,
    })
}

/// The GPT at LBA 1 in units of `sector` bytes, if its header is valid there.
fn gpt(disk: &dyn ImageReader, sector: u64) -> Result<Option<DiskLayout>> {
    let size = disk.size();
    if size < sector * 3 {
        return Ok(None);
    }
    let mut h = vec![0u8; 92];
    disk.read_at(&mut h, sector)?;
    if &h[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_size = u32_le(&h, 12) as usize;
    if !(92..=sector as usize).contains(&header_size) {
        return Ok(None);
    }
    let mut full = vec![0u8; header_size];
    disk.read_at(&mut full, sector)?;
    let crc = u32_le(&full, 16);
    full[16..20].fill(0);
    if crc32(&full) != crc {
        return Ok(None);
    }
    let entries_lba = u64_le(&h, 72);
    let count = u32_le(&h, 80).min(MAX_GPT_ENTRIES);
    let entry_size = u32_le(&h, 84) as u64;
    if !(128..=4096).contains(&entry_size) || !entry_size.is_power_of_two() {
        return Ok(None);
    }
    let table_len = count as u64 * entry_size;
    let Some(table_start) = entries_lba.checked_mul(sector) else {
        return Ok(None);
    };
    if table_start.checked_add(table_len).is_none_or(|e| e > size) {
        return Ok(None);
    }
    let mut table = vec![0u8; table_len as usize];
    disk.read_at(&mut table, table_start)?;
    let mut partitions = Vec::new();
    for i in 0..count as usize {
        let e = &table[i * entry_size as usize..(i + 1) * entry_size as usize];
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_le(e, 32), u64_le(e, 40));
        let (Some(start), Some(end)) = (
            first.checked_mul(sector),
            last.checked_add(1).and_then(|l| l.checked_mul(sector)),
        ) else {
            continue;
        };
        if end <= start || end > size {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let type_id = guid_text(&e[..16]);
        partitions.push(PartitionLayout {
            number: i as u32 + 1,
            start,
            size: end - start,
            kind: gpt_kind(&type_id.to_ascii_lowercase()).map(str::to_string),
            type_id,
            part_uuid: Some(guid_text(&e[16..32])),
            name: Some(String::from_utf16_lossy(&name)).filter(|n| !n.is_empty()),
            attributes: u64_le(e, 48),
            fs: None,
        });
    }
    Ok(Some(DiskLayout {
        size,
        sector_size: sector,
        table: Table::Gpt,
        disk_id: Some(guid_text(&h[56..72])),
        partitions,
    }))
}

/// An MBR's sector size and partitions (with their file systems). The table counts in the
/// disk's logical sectors but does not say their size: as for GPT, each size a disk may have
/// is tried, and the one under which more partitions hold a file system we know wins (512,
/// the common case, on a tie: a table of unformatted partitions says nothing either way).
fn mbr_layout(disk: &dyn ImageReader, mbr: &[u8], size: u64) -> (u64, Vec<PartitionLayout>) {
    let mut best: Option<(usize, u64, Vec<PartitionLayout>)> = None;
    for sector in [512u64, 4096] {
        let mut parts = mbr_partitions(mbr, size, sector);
        fill_filesystems(disk, &mut parts);
        let known = parts.iter().filter(|p| p.fs.is_some()).count();
        if best.as_ref().is_none_or(|b| known > b.0) {
            best = Some((known, sector, parts));
        }
    }
    best.map(|(_, s, p)| (s, p)).unwrap_or((512, Vec::new()))
}

fn mbr_partitions(mbr: &[u8], size: u64, sector: u64) -> Vec<PartitionLayout> {
    let mut out = Vec::new();
    for i in 0..4 {
        let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
        let ty = e[4];
        let (first, count) = (u32_le(e, 8) as u64, u32_le(e, 12) as u64);
        // Extended partitions hold logical ones we do not follow.
        if ty == 0 || count == 0 || [0x05, 0x0f, 0x85].contains(&ty) {
            continue;
        }
        let (start, len) = (first * sector, count * sector);
        if start + len > size {
            continue;
        }
        out.push(PartitionLayout {
            number: i as u32 + 1,
            start,
            size: len,
            type_id: format!("0x{ty:02x}"),
            kind: match ty {
                0x83 => Some("linux"),
                0x82 => Some("swap"),
                0xef => Some("efi"),
                0x8e => Some("lvm"),
                0xfd => Some("raid"),
                _ => None,
            }
            .map(str::to_string),
            part_uuid: None,
            name: None,
            attributes: if e[0] == 0x80 { 4 } else { 0 },
            fs: None,
        });
    }
    out
}

/// The file system on `part`, from its superblock, if it is one we know.
pub fn probe_fs(part: &dyn ImageReader) -> Option<FsInfo> {
    let size = part.size();
    let mut head = vec![0u8; 8192.min(size) as usize];
    part.read_at(&mut head, 0).ok()?;
    let text = |b: &[u8]| -> Option<String> {
        let s: String = String::from_utf8_lossy(b)
            .trim_end_matches(['\0', ' '])
            .to_string();
        (!s.is_empty()).then_some(s)
    };
    // ext2/3/4: superblock at 1024, magic 0xEF53 at 56.
    if head.len() >= 2048 && u16_le(&head, 1024 + 56) == 0xef53 {
        let sb = &head[1024..2048];
        let compat = u32_le(sb, 92);
        let incompat = u32_le(sb, 96);
        let fs_type = if incompat & 0x40 != 0 || incompat & 0x80 != 0 {
            "ext4" // extents or 64bit
        } else if compat & 0x4 != 0 {
            "ext3" // has journal
        } else {
            "ext2"
        };
        return Some(FsInfo {
            fs_type: fs_type.into(),
            uuid: Some(uuid_text(&sb[104..120])),
            label: text(&sb[120..136]),
        });
    }
    if head.len() >= 120 && &head[0..4] == b"XFSB" {
        return Some(FsInfo {
            fs_type: "xfs".into(),
            uuid: Some(uuid_text(&head[32..48])),
            label: text(&head[108..120]),
        });
    }
    if head.len() >= 4096 && &head[4086..4096] == b"SWAPSPACE2" {
        return Some(FsInfo {
            fs_type: "swap".into(),
            uuid: Some(uuid_text(&head[1024 + 12..1024 + 28])),
            label: text(&head[1024 + 28..1024 + 44]),
        });
    }
    if head.len() >= 1024 && &head[512..520] == b"LABELONE" && &head[536..544] == b"LVM2 001" {
        return Some(FsInfo {
            fs_type: "LVM2_member".into(),
            uuid: text(&head[544..576]),
            label: None,
        });
    }
    // md superblock v1.2 at 4096 (magic a92b4efc).
    if head.len() >= 4096 + 48 && u32_le(&head, 4096) == 0xa92b4efc {
        return Some(FsInfo {
            fs_type: "linux_raid_member".into(),
            uuid: Some(uuid_text(&head[4096 + 16..4096 + 32])),
            label: text(&head[4096 + 32..4096 + 64]),
        });
    }
    // FAT: boot signature, a sane bytes-per-sector, and the type string.
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        let bps = u16_le(&head, 11);
        if [512, 1024, 2048, 4096].contains(&bps) {
            let (serial, label, ty) = if &head[82..87] == b"FAT32" {
                (u32_le(&head, 67), &head[71..82], true)
            } else if &head[54..57] == b"FAT" {
                (u32_le(&head, 39), &head[43..54], true)
            } else {
                (0, &head[0..0], false)
            };
            if ty {
                return Some(FsInfo {
                    fs_type: "vfat".into(),
                    uuid: Some(format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff)),
                    label: text(label).filter(|l| l != "NO NAME"),
                });
            }
        }
    }
    None
}

/// Reads identity, mount table and boot loader from the ext4 file systems of `disk`.
pub fn system_info(disk: Arc<dyn ImageReader + Send>, layout: &DiskLayout) -> SystemInfo {
    let mut info = SystemInfo::default();
    if layout
        .partitions
        .iter()
        .any(|p| p.kind.as_deref() == Some("efi"))
    {
        info.firmware.push("uefi".into());
    }
    if layout
        .partitions
        .iter()
        .any(|p| p.kind.as_deref() == Some("bios_boot") || p.attributes & 4 != 0)
    {
        info.firmware.push("bios".into());
    }
    let mut boot_fs = Vec::new();
    for p in &layout.partitions {
        let Some(fs) = &p.fs else { continue };
        if !fs.fs_type.starts_with("ext") {
            continue;
        }
        let Some(ext) = open_ext4(disk.clone(), p) else {
            info.notes.push(format!(
                "partition {}: its {} file system does not load",
                p.number, fs.fs_type
            ));
            continue;
        };
        let read = |path: &str| -> Option<String> {
            let md = ext.metadata(path).ok()?;
            if !md.file_type().is_regular_file() || md.len() > MAX_TEXT {
                return None;
            }
            ext.read(path)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        if info.root_partition.is_none() && ext.exists("/etc").unwrap_or(false) {
            info.root_partition = Some(p.number);
            info.hostname = read("/etc/hostname").map(|s| s.trim().to_string());
            info.machine_id = read("/etc/machine-id").map(|s| s.trim().to_string());
            info.fstab = read("/etc/fstab")
                .map(|t| parse_fstab(&t))
                .unwrap_or_default();
        }
        for (path, loader) in [
            ("/boot/grub/grub.cfg", "grub"),
            ("/grub/grub.cfg", "grub"),
            ("/boot/extlinux/extlinux.conf", "extlinux"),
            ("/extlinux/extlinux.conf", "extlinux"),
        ] {
            if ext.exists(path).unwrap_or(false) {
                boot_fs.push(loader);
            }
        }
    }
    info.boot_loader = boot_fs.first().map(|s| s.to_string());
    if info.root_partition.is_none() {
        info.notes.push(
            "no ext4 file system holds /etc: hostname, machine-id and mount points are unknown"
                .into(),
        );
    }
    info
}

/// The ext4 file system on partition `p` of `disk`, if it loads.
pub fn open_ext4(
    disk: Arc<dyn ImageReader + Send>,
    p: &PartitionLayout,
) -> Option<ext4_view::Ext4> {
    let reader = PartReader {
        disk,
        start: p.start,
        len: p.size,
    };
    ext4_view::Ext4::load(Box::new(reader)).ok()
}

/// `/etc/fstab` lines that name something to mount (comments and blanks skipped).
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| FstabEntry {
                what: f[0].into(),
                mount: f[1].into(),
                fs_type: f[2].into(),
                options: f.get(3).unwrap_or(&"defaults").to_string(),
            })
        })
        .take(256)
        .collect()
}

/// A partition as ext4-view reads it.
struct PartReader {
    disk: Arc<dyn ImageReader + Send>,
    start: u64,
    len: u64,
}

impl ext4_view::Ext4Read for PartReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        if start_byte
            .checked_add(dst.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err("read past the end of the partition".into());
        }
        self.disk
            .read_at(dst, self.start + start_byte)
            .map_err(|e| e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk image in memory.
    struct Mem(Vec<u8>);

    impl ImageReader for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let o = offset as usize;
            let src = self.0.get(o..o + buf.len()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end")
            })?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn name(&self) -> String {
            "mem".into()
        }
    }

    /// An MBR disk whose one partition (type 0x83) starts at LBA 256 and is 512 sectors
    /// long, with an ext4 superblock where that partition starts in `sector`-byte units.
    fn mbr_disk(sector: u64) -> Mem {
        let mut d = vec![0u8; 4 << 20];
        d[510] = 0x55;
        d[511] = 0xaa;
        let e = 446;
        d[e + 4] = 0x83;
        d[e + 8..e + 12].copy_from_slice(&256u32.to_le_bytes());
        d[e + 12..e + 16].copy_from_slice(&512u32.to_le_bytes());
        let sb = (256 * sector) as usize + 1024;
        d[sb + 56..sb + 58].copy_from_slice(&0xef53u16.to_le_bytes());
        d[sb + 96..sb + 100].copy_from_slice(&0x40u32.to_le_bytes());
        Mem(d)
    }

    #[test]
    fn an_mbr_disk_records_the_sector_size_its_table_counts_in() {
        for sector in [512u64, 4096] {
            let l = probe(&mbr_disk(sector)).unwrap();
            assert_eq!(l.table, Table::Mbr);
            assert_eq!(l.sector_size, sector);
            let p = &l.partitions[0];
            assert_eq!((p.start, p.size), (256 * sector, 512 * sector));
            assert_eq!(p.fs.as_ref().map(|f| f.fs_type.as_str()), Some("ext4"));
        }
        // Nothing formatted: the table alone cannot tell, and 512 is assumed.
        let mut blank = mbr_disk(4096);
        blank.0[256 * 4096 + 1024 + 56] = 0;
        assert_eq!(probe(&blank).unwrap().sector_size, 512);
    }
}
