//! A block capture written back over a client's disk in place (boot action `recover`, run by
//! the netbooted agent). A block capture is a list of fixed-size blocks, each the SHA-256 id
//! of its bytes or a gap of zeros, so the disk itself says what must change: every block is
//! read and hashed, and only blocks that differ are fetched and written — recovering the
//! disk a capture came from moves what changed since, not the whole disk. A disk smaller
//! than the capture is refused before anything is written, naming the size that works.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ignite_archive::{ChunkId, ChunkSource, BATCH_BYTES, BATCH_CHUNKS};
use serde::{Deserialize, Serialize};

/// One disk of a capture, as the agent gets it: the block list comes separately
/// (`ignite_archive::snapshot::encode_image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverDisk {
    /// The disk's position in the capture (0 is the first).
    pub index: usize,
    /// The block snapshot's id.
    pub snapshot: String,
    pub size: u64,
    pub block_size: u64,
}

/// What the server answers a recovering agent: the capture and its disks in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverPlan {
    /// `NAME@ID` of the capture.
    pub capture: String,
    pub disks: Vec<RecoverDisk>,
}

/// What a recovery did to one disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub blocks: u64,
    /// Blocks already as captured: not written.
    pub same: u64,
    /// Blocks fetched from the server and written.
    pub fetched: u64,
    /// Blocks the capture holds as zeros, written as zeros.
    pub zeroed: u64,
    pub bytes_written: u64,
}

/// Checks, before anything is written, that `disks` (this machine's, in order) can take
/// every disk of `plan`, one for one.
pub fn check_fits(plan: &RecoverPlan, disks: &[ignite_profiles::DiskFact]) -> Result<()> {
    if plan.disks.len() > disks.len() {
        bail!(
            "capture {} has {} disk(s); this machine has {} ({})",
            plan.capture,
            plan.disks.len(),
            disks.len(),
            disks
                .iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    for (d, disk) in plan.disks.iter().zip(disks) {
        if disk.size < d.size {
            bail!(
                "{} holds {} bytes; disk {} of capture {} needs {} ({} bytes or more works); nothing was written",
                disk.path, disk.size, d.index, plan.capture, d.size, d.size
            );
        }
    }
    Ok(())
}

/// The size of a disk or image file (a block device's end is its size).
pub fn disk_size(f: &mut File) -> std::io::Result<u64> {
    f.seek(SeekFrom::End(0))
}

/// Writes the capture's `blocks` over `disk` where they differ, chunks from `source`;
/// `progress(done, total)` in bytes compared.
pub fn recover_disk(
    disk: &Path,
    d: &RecoverDisk,
    blocks: &[Option<ChunkId>],
    source: &dyn ChunkSource,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Recovered> {
    let bs = d.block_size;
    if bs == 0 || blocks.len() as u64 != d.size.div_ceil(bs) {
        bail!(
            "disk {} of the capture: {} blocks of {bs} bytes do not make {} bytes",
            d.index,
            blocks.len(),
            d.size
        );
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("cannot open {}", disk.display()))?;
    let have = disk_size(&mut f).with_context(|| format!("{}: its size", disk.display()))?;
    if have < d.size {
        bail!(
            "{} holds {have} bytes; disk {} of the capture needs {} ({} bytes or more works); nothing was written",
            disk.display(),
            d.index,
            d.size,
            d.size
        );
    }
    let mut r = Recovered {
        blocks: blocks.len() as u64,
        ..Default::default()
    };
    let mut pending: Vec<(u64, ChunkId)> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut buf = vec![0u8; bs as usize];
    let zeros = vec![0u8; bs as usize];
    for (i, want) in blocks.iter().enumerate() {
        let off = i as u64 * bs;
        let len = bs.min(d.size - off) as usize;
        f.read_exact_at(&mut buf[..len], off)
            .with_context(|| format!("{}: reading at {off}", disk.display()))?;
        match want {
            Some(id) if ChunkId::of(&buf[..len]) == *id => r.same += 1,
            Some(id) => {
                pending.push((off, *id));
                pending_bytes += len as u64;
                if pending.len() >= BATCH_CHUNKS || pending_bytes >= BATCH_BYTES {
                    r.bytes_written += write_fetched(&f, disk, &pending, source)?;
                    r.fetched += pending.len() as u64;
                    pending.clear();
                    pending_bytes = 0;
                }
            }
            None if buf[..len] == zeros[..len] => r.same += 1,
            None => {
                f.write_all_at(&zeros[..len], off)
                    .with_context(|| format!("{}: writing at {off}", disk.display()))?;
                r.zeroed += 1;
                r.bytes_written += len as u64;
            }
        }
        progress(off + len as u64, d.size);
    }
    r.bytes_written += write_fetched(&f, disk, &pending, source)?;
    r.fetched += pending.len() as u64;
    f.sync_all()
        .with_context(|| format!("{}: flushing", disk.display()))?;
    Ok(r)
}

/// Fetches the chunks of `blocks` (each id once) and writes each where it belongs.
fn write_fetched(
    f: &File,
    disk: &Path,
    blocks: &[(u64, ChunkId)],
    source: &dyn ChunkSource,
) -> Result<u64> {
    if blocks.is_empty() {
        return Ok(0);
    }
    let mut ids: Vec<ChunkId> = blocks.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable_by_key(|id| id.0);
    ids.dedup();
    let data = source
        .chunks(&ids)
        .with_context(|| format!("fetching {} blocks for {}", ids.len(), disk.display()))?;
    let by_id: HashMap<ChunkId, Vec<u8>> = ids.into_iter().zip(data).collect();
    let mut written = 0;
    for (off, id) in blocks {
        let bytes = &by_id[id];
        f.write_all_at(bytes, *off)
            .with_context(|| format!("{}: writing at {off}", disk.display()))?;
        written += bytes.len() as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Chunks by id from memory, counting what was asked.
    struct Chunks {
        by_id: HashMap<ChunkId, Vec<u8>>,
        asked: Mutex<u64>,
    }

    impl ChunkSource for Chunks {
        fn chunks(&self, ids: &[ChunkId]) -> ignite_archive::Result<Vec<Vec<u8>>> {
            let mut seen = std::collections::HashSet::new();
            assert!(ids.iter().all(|id| seen.insert(*id)), "an id asked twice");
            *self.asked.lock().unwrap() += ids.len() as u64;
            Ok(ids.iter().map(|id| self.by_id[id].clone()).collect())
        }
    }

    const BS: u64 = 4096;

    /// A capture of `image`: its blocks and chunks.
    fn capture(image: &[u8]) -> (RecoverDisk, Vec<Option<ChunkId>>, Chunks) {
        let mut by_id = HashMap::new();
        let blocks = image
            .chunks(BS as usize)
            .map(|b| {
                if b.iter().all(|&x| x == 0) {
                    return None;
                }
                let id = ChunkId::of(b);
                by_id.insert(id, b.to_vec());
                Some(id)
            })
            .collect();
        let d = RecoverDisk {
            index: 0,
            snapshot: "s".into(),
            size: image.len() as u64,
            block_size: BS,
        };
        let chunks = Chunks {
            by_id,
            asked: Mutex::new(0),
        };
        (d, blocks, chunks)
    }

    /// Bytes no two blocks of which are alike (xorshift).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn only_blocks_that_differ_are_fetched_and_written() {
        // 64 blocks plus a partial one: data, a zero gap, data again, repeated blocks.
        let mut captured = pattern(64 * BS as usize + 1000, 7);
        captured[10 * BS as usize..14 * BS as usize].fill(0);
        let same = captured[20 * BS as usize..21 * BS as usize].to_vec();
        captured[21 * BS as usize..22 * BS as usize].copy_from_slice(&same);
        let (d, blocks, chunks) = capture(&captured);
        // The disk since: three blocks changed, one zero block written, one block zeroed,
        // the tail changed.
        let mut disk = captured.clone();
        disk[5 * BS as usize + 17] ^= 1;
        disk[20 * BS as usize] ^= 1;
        disk[21 * BS as usize] ^= 1;
        disk[11 * BS as usize + 3] = 9;
        disk[30 * BS as usize..31 * BS as usize].fill(0);
        let n = disk.len();
        disk[n - 1] ^= 0xff;
        disk.extend_from_slice(&[0xee; 5000]); // a bigger disk: its end is left alone
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, &disk).unwrap();
        let r = recover_disk(&path, &d, &blocks, &chunks, &mut |_, _| {}).unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(&after[..captured.len()], &captured[..]);
        assert_eq!(&after[captured.len()..], &[0xee; 5000][..]);
        assert_eq!(r.blocks, 65);
        assert_eq!(r.zeroed, 1, "{r:?}");
        // Blocks 5, 20, 21 (one id, asked once), 30 and the tail.
        assert_eq!(r.fetched, 5, "{r:?}");
        assert_eq!(*chunks.asked.lock().unwrap(), 4);
        assert_eq!(r.same, 65 - 6);
        // Recovering again changes nothing.
        let r = recover_disk(&path, &d, &blocks, &chunks, &mut |_, _| {}).unwrap();
        assert_eq!((r.same, r.bytes_written), (65, 0));
    }

    #[test]
    fn a_smaller_disk_is_refused_before_anything_is_written() {
        let captured = pattern(16 * BS as usize, 3);
        let (d, blocks, chunks) = capture(&captured);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.img");
        let small = vec![0x55u8; 15 * BS as usize];
        std::fs::write(&path, &small).unwrap();
        let e = recover_disk(&path, &d, &blocks, &chunks, &mut |_, _| {}).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&format!("needs {}", 16 * BS)) && msg.contains("nothing was written"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), small);
        let mut bad = d.clone();
        bad.size += 10 * BS;
        assert!(recover_disk(&path, &bad, &blocks, &chunks, &mut |_, _| {}).is_err());
    }

    #[test]
    fn a_failing_source_stops_with_its_error() {
        struct Broken;
        impl ChunkSource for Broken {
            fn chunks(&self, _: &[ChunkId]) -> ignite_archive::Result<Vec<Vec<u8>>> {
                Err(ignite_archive::Error::Invalid(
                    "chunk 1234 is damaged".into(),
                ))
            }
        }
        let (d, blocks, _) = capture(&pattern(4 * BS as usize, 1));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, vec![0u8; 4 * BS as usize]).unwrap();
        let e = recover_disk(&path, &d, &blocks, &Broken, &mut |_, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("chunk 1234 is damaged"), "{e:#}");
    }

    #[test]
    fn every_disk_is_checked_before_any_is_written() {
        let disk = |path: &str, size: u64| -> ignite_profiles::DiskFact {
            serde_json::from_value(serde_json::json!({"path": path, "size": size, "serial": null}))
                .unwrap()
        };
        let d = |index, size| RecoverDisk {
            index,
            snapshot: "s".into(),
            size,
            block_size: BS,
        };
        let plan = RecoverPlan {
            capture: "web1@abc".into(),
            disks: vec![d(0, 100 * BS), d(1, 50 * BS)],
        };
        check_fits(
            &plan,
            &[disk("/dev/vda", 100 * BS), disk("/dev/vdb", 50 * BS)],
        )
        .unwrap();
        let e = check_fits(&plan, &[disk("/dev/vda", 200 * BS)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("has 2 disk(s); this machine has 1 (/dev/vda)"),
            "{e}"
        );
        let e = check_fits(
            &plan,
            &[disk("/dev/vda", 100 * BS), disk("/dev/vdb", 49 * BS)],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/dev/vdb holds") && e.to_string().contains("disk 1"),
            "{e}"
        );
    }
}
