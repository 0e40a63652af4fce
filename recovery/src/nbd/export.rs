//! A block snapshot of the store read in place, as a disk: each read fetches the chunks of
//! the 64 KiB (the snapshot's block size) blocks it touches, verified against their ids and
//! decompressed by the store; blocks stored as gaps read as zeros without a fetch. The last
//! few blocks read are kept, since a reader's requests need not align with blocks (a qcow2
//! overlay reads by its own clusters, a loop device by pages).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ignite_archive::{ChunkId, ImageReader, Manifest, Store};

use crate::capture::record::short;

/// Blocks kept decompressed (16 MiB at the usual 64 KiB).
const CACHED_BLOCKS: usize = 256;

pub struct SnapshotImage {
    store: Arc<Store>,
    blocks: Vec<Option<ChunkId>>,
    block_size: u64,
    size: u64,
    name: String,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    blocks: HashMap<usize, Arc<Vec<u8>>>,
    order: VecDeque<usize>,
}

impl SnapshotImage {
    /// Snapshot `m` (a block snapshot) of `store`.
    pub fn open(store: Arc<Store>, m: &Manifest) -> anyhow::Result<SnapshotImage> {
        let size = crate::restore::disk_size(m)?;
        let blocks = store.load_image(m)?;
        let block_size = u64::from(m.block_size.unwrap_or(0));
        Ok(SnapshotImage {
            store,
            blocks,
            block_size,
            size,
            name: format!("snapshot {}@{}", m.name, short(&m.id)),
            cache: Mutex::default(),
        })
    }

    fn block(&self, i: usize) -> std::io::Result<Option<Arc<Vec<u8>>>> {
        let Some(id) = self.blocks[i] else {
            return Ok(None);
        };
        if let Some(b) = self.cache().blocks.get(&i) {
            return Ok(Some(b.clone()));
        }
        // Fetched without the lock, so that requests answered at once (a guest's read beside
        // the background copy's) do not wait for each other; two readers of one block may
        // both fetch it, which costs time, not correctness.
        let data = self
            .store
            .read_chunk(&id)
            .map_err(|e| std::io::Error::other(format!("{}: block {i}: {e}", self.name)))?;
        if data.len() as u64 != self.block_len(i) {
            return Err(std::io::Error::other(format!(
                "{}: block {i} holds {} bytes, expected {}",
                self.name,
                data.len(),
                self.block_len(i)
            )));
        }
        let data = Arc::new(data);
        let mut cache = self.cache();
        if cache.blocks.contains_key(&i) {
            return Ok(Some(data));
        }
        if cache.order.len() >= CACHED_BLOCKS {
            if let Some(old) = cache.order.pop_front() {
                cache.blocks.remove(&old);
            }
        }
        cache.order.push_back(i);
        cache.blocks.insert(i, data.clone());
        Ok(Some(data))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn block_len(&self, i: usize) -> u64 {
        self.block_size.min(self.size - i as u64 * self.block_size)
    }
}

impl ImageReader for SnapshotImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{}: read past its end ({} bytes)", self.name, self.size),
                )
            })?;
        let mut pos = offset;
        while pos < end {
            let i = (pos / self.block_size) as usize;
            let within = pos - i as u64 * self.block_size;
            let n = (self.block_len(i) - within).min(end - pos) as usize;
            let out = &mut buf[(pos - offset) as usize..][..n];
            match self.block(i)? {
                Some(b) => out.copy_from_slice(&b[within as usize..][..n]),
                None => out.fill(0),
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn data_ranges(&self) -> std::io::Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            if b.is_none() {
                continue;
            }
            let (off, len) = (i as u64 * self.block_size, self.block_len(i));
            match out.last_mut() {
                Some((s, l)) if *s + *l == off => *l += len,
                _ => out.push((off, len)),
            }
        }
        Ok(out)
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
