//! Random-access reading of disks, whatever holds them, through the archive's
//! [`ImageReader`]: an image file or block device ([`ignite_archive::FileImage`]), a block
//! snapshot read in place ([`SnapshotDisk`]: chunks fetched, checked and decompressed on
//! demand), a partition of either ([`Slice`]). Layout probing, captures and restores read
//! through it, so they work the same on a guest's image, a point-in-time view of it, and a
//! capture in the store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use ignite_archive::{ChunkId, Manifest, SnapshotKind, Store};

pub use ignite_archive::ImageReader;

fn check_range(size: u64, len: usize, offset: u64, name: &str) -> std::io::Result<()> {
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("disk {name}: {len} bytes at {offset} reach past its end ({size} bytes)"),
        ));
    }
    Ok(())
}

/// Chunks kept decompressed: a partition-table and file-system probe reads a few hundred
/// scattered blocks, a sequential reader one block at a time.
const CACHED_CHUNKS: usize = 64;

/// A block snapshot in the store, read in place.
pub struct SnapshotDisk {
    store: Arc<Store>,
    blocks: Vec<Option<ChunkId>>,
    block_size: u64,
    size: u64,
    name: String,
    cache: Mutex<ChunkCache>,
}

#[derive(Default)]
struct ChunkCache {
    map: HashMap<u64, Arc<Vec<u8>>>,
    order: VecDeque<u64>,
}

impl SnapshotDisk {
    pub fn open(store: Arc<Store>, m: &Manifest) -> Result<SnapshotDisk> {
        if m.kind != SnapshotKind::Image {
            bail!("snapshot {}@{} is a file tree, not a disk", m.name, m.id);
        }
        let (Some(size), Some(bs)) = (m.image_size, m.block_size) else {
            bail!("snapshot {}@{} lacks its image size", m.name, m.id);
        };
        let blocks = store.load_image(m)?;
        Ok(SnapshotDisk {
            store,
            blocks,
            block_size: bs as u64,
            size,
            name: format!("{}@{}", m.name, &m.id[..m.id.len().min(12)]),
            cache: Mutex::new(ChunkCache::default()),
        })
    }

    /// Block `i`'s bytes (zeros for a hole), verified against its id.
    fn block(&self, i: u64) -> Result<Arc<Vec<u8>>> {
        let lock = || self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = lock().map.get(&i) {
            return Ok(b.clone());
        }
        // Read and decompressed without the lock: the NBD server's threads (a guest's reads
        // beside an instant restore's background copy) fetch blocks in parallel.
        let len = self.block_size.min(self.size - i * self.block_size) as usize;
        let data = match &self.blocks[i as usize] {
            None => vec![0; len],
            Some(id) => {
                let d = self
                    .store
                    .read_chunk(id)
                    .with_context(|| format!("disk {}: block {i}", self.name))?;
                if d.len() != len {
                    bail!(
                        "disk {}: block {i} holds {} bytes, the image needs {len}",
                        self.name,
                        d.len()
                    );
                }
                d
            }
        };
        let data = Arc::new(data);
        let mut c = lock();
        if let Some(b) = c.map.get(&i) {
            // Another thread read it meanwhile.
            return Ok(b.clone());
        }
        if c.order.len() == CACHED_CHUNKS {
            if let Some(old) = c.order.pop_front() {
                c.map.remove(&old);
            }
        }
        c.order.push_back(i);
        c.map.insert(i, data.clone());
        Ok(data)
    }
}

impl ImageReader for SnapshotDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_range(self.size, buf.len(), offset, &self.name)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = self
                .block(pos / self.block_size)
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            let start = (pos % self.block_size) as usize;
            let n = (block.len() - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[start..start + n]);
            done += n;
        }
        Ok(())
    }

    /// Blocks stored as holes read as zeros without fetching anything.
    fn data_ranges(&self) -> std::io::Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            if b.is_none() {
                continue;
            }
            let start = i as u64 * self.block_size;
            let len = self.block_size.min(self.size - start);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
        Ok(out)
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// A byte range of another disk (a partition), itself a disk.
pub struct Slice<'a> {
    pub disk: &'a dyn ImageReader,
    pub start: u64,
    pub len: u64,
}

impl ImageReader for Slice<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_range(self.len, buf.len(), offset, "partition")?;
        self.disk.read_at(buf, self.start + offset)
    }

    fn name(&self) -> String {
        format!("{} at {}", self.disk.name(), self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_archive::{ImageSource, ImportOptions, Progress};

    #[test]
    fn a_snapshot_reads_like_the_image_it_was_made_from() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let mut data = vec![0u8; 3 << 20];
        for (i, b) in data.iter_mut().enumerate().skip(100_000).take(500_000) {
            *b = (i * 7 % 251) as u8;
        }
        data.truncate(3 * 1024 * 1024 - 4096); // not a whole number of blocks
        std::fs::write(&img, &data).unwrap();
        let store_dir = dir.path().join("store");
        let store = Store::init(&store_dir, ignite_archive::StoreConfig::default()).unwrap();
        let opts = ImportOptions::new("d");
        let m = ignite_archive::import_image(
            &store,
            ImageSource {
                reader: &ignite_archive::FileImage::open(&img).unwrap(),
                changed: None,
            },
            &opts,
            &Progress::default(),
        )
        .unwrap();
        let snap = SnapshotDisk::open(Arc::new(store), &m).unwrap();
        let file = ignite_archive::FileImage::open(&img).unwrap();
        assert_eq!(snap.size(), file.size());
        for (off, len) in [
            (0u64, 512usize),
            (99_000, 70_000),
            (65_530, 20),
            (data.len() as u64 - 10, 10),
        ] {
            let (mut a, mut b) = (vec![0; len], vec![0; len]);
            snap.read_at(&mut a, off).unwrap();
            file.read_at(&mut b, off).unwrap();
            assert_eq!(a, b, "at {off}");
        }
        let mut past = [0u8; 2];
        assert!(snap.read_at(&mut past, data.len() as u64 - 1).is_err());
        let part = Slice {
            disk: &snap,
            start: 100_000,
            len: 1000,
        };
        let mut p = [0u8; 4];
        part.read_at(&mut p, 0).unwrap();
        assert_eq!(p[..], data[100_000..100_004]);
        assert!(part.read_at(&mut p, 998).is_err());
    }
}
