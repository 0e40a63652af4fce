//! Partition tables of a disk image: GPT (protective MBR + header at LBA 1), MBR primary
//! partitions, or none (a whole-disk file system). Everything read is untrusted: entries
//! outside the disk, absurd entry counts and sizes are skipped, never followed.

use super::DiskSource;

const SECTOR: u64 = 512;
/// More entries than any real table holds (GPT's default is 128).
const MAX_GPT_ENTRIES: u32 = 1024;
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
const MBR_GPT_PROTECTIVE: u8 = 0xee;

/// A byte range of the disk that may hold a file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number, or 0 for the whole disk.
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.number {
            0 => write!(f, "the whole disk"),
            n => write!(f, "partition {n}"),
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The partitions of `disk` in table order; the whole disk when there is no table.
pub fn list(disk: &dyn DiskSource) -> Vec<Partition> {
    let whole = vec![Partition {
        number: 0,
        start: 0,
        len: disk.size(),
    }];
    let mut mbr = [0u8; 512];
    if disk.read_at(0, &mut mbr).is_err() || mbr[510..512] != [0x55, 0xaa] {
        return whole;
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    let parts = if entries.iter().any(|e| e[4] == MBR_GPT_PROTECTIVE) {
        gpt(disk)
    } else {
        entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e[4] != 0 && !MBR_EXTENDED.contains(&e[4]))
            .filter_map(|(i, e)| {
                within(
                    disk,
                    i as u32 + 1,
                    u32_at(e, 8) as u64,
                    u32_at(e, 12) as u64,
                )
            })
            .collect()
    };
    // A boot sector signature without a usable table (e.g. a file system whose first
    // sector happens to end in 55 AA) falls back to the whole disk.
    if parts.is_empty() {
        whole
    } else {
        parts
    }
}

/// The partition if it lies inside the disk and is not empty.
fn within(disk: &dyn DiskSource, number: u32, first_lba: u64, sectors: u64) -> Option<Partition> {
    let start = first_lba.checked_mul(SECTOR)?;
    let len = sectors.checked_mul(SECTOR)?;
    (len > 0 && start > 0 && start.checked_add(len)? <= disk.size()).then_some(Partition {
        number,
        start,
        len,
    })
}

fn gpt(disk: &dyn DiskSource) -> Vec<Partition> {
    let mut hdr = [0u8; 92];
    if disk.read_at(SECTOR, &mut hdr).is_err() || &hdr[..8] != b"EFI PART" {
        return Vec::new();
    }
    let (table_lba, count, size) = (u64_at(&hdr, 72), u32_at(&hdr, 80), u32_at(&hdr, 84));
    if count == 0 || count > MAX_GPT_ENTRIES || !(128..=4096).contains(&size) || size % 8 != 0 {
        return Vec::new();
    }
    let Some(table_start) = table_lba.checked_mul(SECTOR) else {
        return Vec::new();
    };
    let mut table = vec![0u8; count as usize * size as usize];
    if disk.read_at(table_start, &mut table).is_err() {
        return Vec::new();
    }
    table
        .chunks_exact(size as usize)
        .enumerate()
        .filter(|(_, e)| e[..16].iter().any(|&b| b != 0))
        .filter_map(|(i, e)| {
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            within(disk, i as u32 + 1, first, last.checked_sub(first)? + 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr_disk(entries: &[(u8, u32, u32)], len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        for (i, &(ty, lba, n)) in entries.iter().enumerate() {
            let e = 446 + 16 * i;
            d[e + 4] = ty;
            d[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            d[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xaa;
        d
    }

    #[test]
    fn mbr_primaries_inside_the_disk_only() {
        let d = mbr_disk(
            &[
                (0x83, 2048, 100),
                (0x05, 4096, 10),
                (0x83, 1 << 30, 10),
                (0x83, 3000, 20),
            ],
            4 << 20,
        );
        let p = list(&d);
        assert_eq!(
            p,
            vec![
                Partition {
                    number: 1,
                    start: 2048 * 512,
                    len: 100 * 512
                },
                Partition {
                    number: 4,
                    start: 3000 * 512,
                    len: 20 * 512
                },
            ]
        );
    }

    #[test]
    fn no_table_is_the_whole_disk() {
        let d = vec![0u8; 8192];
        assert_eq!(
            list(&d),
            vec![Partition {
                number: 0,
                start: 0,
                len: 8192
            }]
        );
        // A signature with only empty entries: still the whole disk.
        assert_eq!(list(&mbr_disk(&[], 8192))[0].number, 0);
    }

    #[test]
    fn gpt_entries_and_hostile_headers() {
        let mut d = mbr_disk(&[(0xee, 1, 100)], 1 << 20);
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let e = 1024 + 128; // second entry
        d[e] = 1;
        d[e + 32..e + 40].copy_from_slice(&34u64.to_le_bytes());
        d[e + 40..e + 48].copy_from_slice(&99u64.to_le_bytes());
        assert_eq!(
            list(&d),
            vec![Partition {
                number: 2,
                start: 34 * 512,
                len: 66 * 512
            }]
        );
        // last < first, then an absurd entry count: no partitions, so the whole disk.
        d[e + 40..e + 48].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(list(&d)[0].number, 0);
        d[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(list(&d)[0].number, 0);
    }
}
