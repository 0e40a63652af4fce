//! Chunks in memory for concurrent installs: many clients installing the same snapshot ask
//! for the same chunks within seconds of each other, so a chunk is read from disk once per
//! burst, not once per client. Bounded by bytes (oldest chunks leave first), and
//! single-flight: clients asking for a chunk being read wait for that read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use ignite_archive::pack::PackEntry;
use ignite_archive::ChunkId;
use serde::Serialize;
use tokio::sync::OnceCell;

/// A chunk as the store keeps it (compressed or not), passed on without recompressing.
pub struct StoredChunk {
    pub entry: PackEntry,
    pub data: Bytes,
}

type Slot = Arc<OnceCell<Arc<StoredChunk>>>;

#[derive(Default)]
struct Inner {
    slots: HashMap<ChunkId, Slot>,
    /// Loaded chunks, oldest first, and their total size.
    order: VecDeque<ChunkId>,
    bytes: u64,
}

pub struct ChunkCache {
    capacity: u64,
    inner: Mutex<Inner>,
    requests: AtomicU64,
    disk_reads: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CacheStats {
    /// Chunk requests answered (from memory or disk).
    pub requests: u64,
    /// Requests answered without reading the disk for them.
    pub hits: u64,
    pub disk_reads: u64,
    pub cached_bytes: u64,
    pub capacity_bytes: u64,
}

impl ChunkCache {
    pub fn new(capacity: u64) -> ChunkCache {
        ChunkCache {
            capacity,
            inner: Mutex::new(Inner::default()),
            requests: AtomicU64::new(0),
            disk_reads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk, from memory or by `read` (run on a blocking thread, once for concurrent
    /// callers). Errors are not cached: the next request reads again.
    pub async fn get<E: Send + 'static>(
        &self,
        id: ChunkId,
        read: impl FnOnce() -> Result<StoredChunk, E> + Send + 'static,
    ) -> Result<Arc<StoredChunk>, E> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let slot = self.lock().slots.entry(id).or_default().clone();
        let mut loaded_here = false;
        let res = slot
            .get_or_try_init(|| async {
                loaded_here = true;
                self.disk_reads.fetch_add(1, Ordering::Relaxed);
                match tokio::task::spawn_blocking(read).await {
                    Ok(r) => r.map(Arc::new),
                    Err(join) => std::panic::resume_unwind(join.into_panic()),
                }
            })
            .await
            .cloned();
        let mut inner = self.lock();
        match &res {
            Ok(c) if loaded_here => {
                inner.order.push_back(id);
                inner.bytes += c.data.len() as u64;
                self.evict(&mut inner);
            }
            Err(_)
                if !slot.initialized()
                    && inner.slots.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) =>
            {
                inner.slots.remove(&id);
            }
            _ => {}
        }
        res
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.bytes > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(s) = inner.slots.remove(&old) {
                inner.bytes -= s.get().map_or(0, |c| c.data.len() as u64);
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        let requests = self.requests.load(Ordering::Relaxed);
        let disk_reads = self.disk_reads.load(Ordering::Relaxed);
        CacheStats {
            requests,
            hits: requests.saturating_sub(disk_reads),
            disk_reads,
            cached_bytes: inner.bytes,
            capacity_bytes: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_archive::pack::Codec;

    fn chunk(n: u8, len: usize) -> StoredChunk {
        let data = vec![n; len];
        StoredChunk {
            entry: PackEntry {
                id: ChunkId::of(&data),
                offset: 0,
                stored_len: len as u32,
                raw_len: len as u32,
                codec: Codec::Raw,
            },
            data: Bytes::from(data),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_read_once_and_memory_stays_bounded() {
        let cache = Arc::new(ChunkCache::new(250));
        let id = ChunkId::of(b"a");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = cache.clone();
            tasks.push(tokio::spawn(async move {
                c.get(id, || {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    Ok::<_, String>(chunk(1, 100))
                })
                .await
                .map(|c| c.data.len())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(100));
        }
        let s = cache.stats();
        assert_eq!((s.requests, s.disk_reads, s.hits), (8, 1, 7));
        // Two more chunks push the first one out (250 bytes hold two).
        for n in 2..4u8 {
            cache
                .get(ChunkId::of(&[n]), move || Ok::<_, String>(chunk(n, 100)))
                .await
                .unwrap();
        }
        assert_eq!(cache.stats().cached_bytes, 200);
        cache
            .get(id, || Ok::<_, String>(chunk(1, 100)))
            .await
            .unwrap();
        assert_eq!(cache.stats().disk_reads, 4);
        // Errors are not kept.
        let bad = ChunkId::of(b"bad");
        assert!(cache
            .get(bad, || Err::<StoredChunk, _>("gone".to_string()))
            .await
            .is_err());
        assert!(cache
            .get(bad, || Ok::<_, String>(chunk(9, 10)))
            .await
            .is_ok());
    }
}
