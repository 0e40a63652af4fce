//! The agent's side of the install API over HTTP (see `server/install_api.rs`).
//!
//! Extraction fetches the snapshot's tree, then its chunks with several requests in flight,
//! checks each chunk against its id, and writes through the archive crate's own export. When
//! the server goes away every request is retried with backoff until it returns (or until
//! `give_up_after`); the export then simply goes on, so files and chunks already written are
//! not fetched again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ignite_archive::chunk_stream;
use ignite_archive::snapshot::decode_tree;
use ignite_archive::ChunkId;
use ignite_archive::{export_tree, ChunkSource, BATCH_BYTES, BATCH_CHUNKS};
use ignite_profiles::{ArchiveRef, ClientFacts, InstallPlan};

use crate::api_client::{ApiClient, Endpoint};
use crate::protocol::{Phase, Source};

/// Largest chunk accepted from a server (the store's chunker stays far below).
const MAX_CHUNK: u32 = 64 << 20;
/// Largest tree or plan accepted.
const MAX_BODY: u64 = 1 << 30;

pub struct Http {
    api: ApiClient,
    mac: String,
    /// Chunk requests in flight during extraction.
    pub fetchers: usize,
}

impl Http {
    pub fn new(server: &Endpoint, mac: &str, token: &str) -> Http {
        let mut api = ApiClient::new(server, token, Duration::from_secs(60), 32, MAX_BODY);
        api.when_away = "check that `ignite server` runs and is reachable, then reboot the client";
        Http {
            api,
            mac: mac.to_string(),
            fetchers: 8,
        }
    }

    /// How long requests keep retrying while the server cannot be reached.
    pub fn give_up_after(&mut self, d: Duration) {
        self.api.give_up_after = d;
    }

    fn request(&self, what: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        let path = format!("/api/install/{}/{path}", self.mac);
        self.api.request(what, &path, body)
    }

    /// Chunks in one request, each checked against its id.
    fn fetch_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>> {
        let what = match ids {
            [one] => format!("chunk {}", one.to_hex()),
            _ => format!("{} chunks from {}", ids.len(), ids[0].to_hex()),
        };
        let body: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        let stream = self.request(&what, "chunks", Some(&body))?;
        chunk_stream::decode(ids, &stream, MAX_CHUNK).map_err(|e| {
            anyhow!(
                "{e} (served by {}); refusing it: run `ignite archive verify` on the server's store",
                self.api.server()
            )
        })
    }
}

impl Http {
    /// A recovery's plan (boot action `recover`): the capture and its disks.
    pub fn recover_plan(&self) -> Result<crate::recover::RecoverPlan> {
        let data = self.request("the recovery plan request", "recover", Some(b""))?;
        serde_json::from_slice(&data).context("the server's recovery plan does not parse")
    }

    /// Disk `d`'s block list.
    pub fn image(&self, d: &crate::recover::RecoverDisk) -> Result<Vec<Option<ChunkId>>> {
        let data = self.request(
            &format!("the block list of disk {}", d.index),
            &format!("image/{}", d.index),
            None,
        )?;
        let blocks = d.size.div_ceil(d.block_size.max(1));
        ignite_archive::snapshot::decode_image(&d.snapshot, &data, blocks)
            .with_context(|| format!("disk {} from server {}", d.index, self.api.server()))
    }

    /// The server's chunks, each checked against its id.
    pub fn chunk_source(&self) -> impl ChunkSource + '_ {
        RemoteChunks(self)
    }

    /// What an extraction of `archive` fetches (the tree, then every chunk once, in batches
    /// within the server's limits with `fetchers` in flight, each checked and decompressed),
    /// with nothing written: the server's side of an install, for measuring many at once.
    pub fn fetch_all(&self, archive: &ArchiveRef) -> Result<FetchStats> {
        let data = self.request(&format!("the tree of archive {archive}"), "tree", None)?;
        let id = archive.id.clone().unwrap_or_else(|| archive.name.clone());
        let entries = decode_tree(&id, &data)
            .with_context(|| format!("archive {archive} from server {}", self.api.server()))?;
        // Each chunk once, in batches as the server takes them.
        let mut seen = std::collections::HashSet::new();
        let (mut batches, mut batch, mut batch_bytes) = (Vec::new(), Vec::new(), 0);
        let extents = entries.iter().flat_map(|e| match &e.kind {
            ignite_archive::EntryKind::File { extents, .. } => extents.as_slice(),
            _ => &[],
        });
        for x in extents.filter(|x| seen.insert(x.id)) {
            let len = u64::from(x.len);
            if !batch.is_empty() && (batch.len() == BATCH_CHUNKS || batch_bytes + len > BATCH_BYTES)
            {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch.push(x.id);
            batch_bytes += len;
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        let next = AtomicUsize::new(0);
        let bytes = AtomicU64::new(0);
        let latencies = std::sync::Mutex::new(Vec::with_capacity(batches.len()));
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..self.fetchers.max(1))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        while let Some(b) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let t = Instant::now();
                            let chunks = self.fetch_chunks(b)?;
                            let took = t.elapsed();
                            let n: usize = chunks.iter().map(Vec::len).sum();
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                            latencies
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(took);
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })?;
        let mut latencies = latencies.into_inner().unwrap_or_else(|p| p.into_inner());
        latencies.sort();
        Ok(FetchStats {
            bytes: bytes.into_inner(),
            chunks: seen.len(),
            latencies,
        })
    }
}

/// What [`Http::fetch_all`] fetched.
pub struct FetchStats {
    /// Chunk content, decompressed.
    pub bytes: u64,
    pub chunks: usize,
    /// Each batch request's time, shortest first.
    pub latencies: Vec<Duration>,
}

impl FetchStats {
    /// The batch latency that `q` (0..=1) of the batches stayed within.
    pub fn latency(&self, q: f64) -> Duration {
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// Chunks from the server for one extraction, a batch per request.
struct RemoteChunks<'a>(&'a Http);

impl ChunkSource for RemoteChunks<'_> {
    fn chunks(&self, ids: &[ChunkId]) -> ignite_archive::Result<Vec<Vec<u8>>> {
        self.0
            .fetch_chunks(ids)
            .map_err(|e| ignite_archive::Error::Invalid(format!("{e:#}")))
    }
}

impl Source for Http {
    fn plan(&self, facts: &ClientFacts) -> Result<InstallPlan> {
        let body = serde_json::to_vec(facts)?;
        let data = self.request("the install plan request", "plan", Some(&body))?;
        serde_json::from_slice(&data).context("the server's install plan does not parse")
    }

    fn report(&self, phase: &Phase) -> Result<()> {
        let body = serde_json::to_vec(phase)?;
        self.request("a phase report", "phase", Some(&body))
            .map(|_| ())
    }

    fn log(&self, text: &str) -> Result<()> {
        self.request("a log append", "log", Some(text.as_bytes()))
            .map(|_| ())
    }

    fn extract(
        &self,
        archive: &ArchiveRef,
        root: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        let data = self.request(&format!("the tree of archive {archive}"), "tree", None)?;
        let id = archive.id.clone().unwrap_or_else(|| archive.name.clone());
        let entries = decode_tree(&id, &data)
            .with_context(|| format!("archive {archive} from server {}", self.api.server()))?;
        let total: u64 = entries
            .iter()
            .map(|e| match &e.kind {
                ignite_archive::EntryKind::File { extents, .. } => {
                    extents.iter().map(|x| u64::from(x.len)).sum()
                }
                _ => 0,
            })
            .sum();
        let source = RemoteChunks(self);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.fetchers.max(1))
            .build()
            .context("cannot start the chunk fetch threads")?;
        let done = AtomicU64::new(0);
        let finished = AtomicBool::new(false);
        let stats = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let r = pool.install(|| export_tree(&source, &entries, root, &done));
                finished.store(true, Ordering::Release);
                r
            });
            while !finished.load(Ordering::Acquire) {
                progress(done.load(Ordering::Relaxed), total);
                std::thread::sleep(Duration::from_millis(200));
            }
            worker
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
        .with_context(|| format!("extracting archive {archive} into {}", root.display()))?;
        progress(stats.bytes, total);
        Ok(stats.bytes)
    }
}
