//! The import pipeline: one producer (reading, chunking) feeds a bounded queue; one worker per
//! core detects zero chunks and hashes, then, a batch at a time, asks the sink which chunks it
//! lacks, compresses only those and hands them over. Results come back by sequence number, so
//! the producer can describe files before their chunks are stored. The bounded queue and the
//! batch limits cap memory however large the input.

use crate::chunk_sink::ChunkSink;
use crate::chunk_source::{BATCH_BYTES, BATCH_CHUNKS};
use crate::error::{Error, Result};
use crate::id::{is_zero, ChunkId};
use crate::snapshot::{Entry, EntryKind, Extent};
use crate::writer::compress;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Shared by any number of producer threads (directory imports read files in parallel).
pub struct Submitter {
    tx: Sender<(usize, Vec<u8>)>,
    next: AtomicUsize,
}

impl Submitter {
    /// Queues a chunk; returns its sequence number.
    pub fn submit(&self, data: Vec<u8>) -> Result<usize> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send((seq, data))
            .map_err(|_| Error::Invalid("import workers stopped".into()))?;
        Ok(seq)
    }
}

pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}

/// Chunk ids by sequence number; `None` for an all-zero chunk, which is never stored.
type Results = Mutex<Vec<Option<ChunkId>>>;

fn record(results: &Results, seq: usize, id: Option<ChunkId>) {
    let mut res = results.lock().unwrap();
    if res.len() <= seq {
        res.resize(seq + 1, None);
    }
    res[seq] = id;
}

/// Hashed chunks of one worker waiting for the sink.
#[derive(Default)]
struct Batch {
    items: Vec<(usize, ChunkId, Vec<u8>)>,
    bytes: usize,
}

impl Batch {
    fn full(&self) -> bool {
        self.items.len() >= BATCH_CHUNKS || self.bytes as u64 >= BATCH_BYTES
    }

    /// Asks the sink what it lacks of the batch, compresses and hands over that, and only
    /// then records the ids: a draft never names a chunk the sink was not given or has not.
    fn flush(
        &mut self,
        sink: &dyn ChunkSink,
        zc: &mut zstd::bulk::Compressor<'static>,
        results: &Results,
    ) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let ids: Vec<ChunkId> = self
            .items
            .iter()
            .map(|(_, id, _)| *id)
            .filter(|id| seen.insert(*id))
            .collect();
        let mut missing: HashSet<ChunkId> = sink.missing(&ids)?.into_iter().collect();
        let mut stored = Vec::new();
        for (_, id, data) in &self.items {
            if missing.remove(id) {
                stored.push(compress(*id, data, zc)?);
            }
        }
        if !stored.is_empty() {
            sink.put(&stored)?;
        }
        for (seq, id, _) in self.items.drain(..) {
            record(results, seq, Some(id));
        }
        self.bytes = 0;
        Ok(())
    }
}

/// One worker: takes chunks while there are some, and hands a batch to the sink when it is
/// full or when the queue runs dry (so a slow producer does not hold chunks back).
fn work(
    sink: &dyn ChunkSink,
    rx: &Receiver<(usize, Vec<u8>)>,
    results: &Results,
    level: i32,
) -> Result<()> {
    let mut zc =
        zstd::bulk::Compressor::new(level).map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
    let mut batch = Batch::default();
    loop {
        let next = if batch.items.is_empty() {
            rx.recv().ok()
        } else {
            match rx.try_recv() {
                Ok(item) => Some(item),
                Err(TryRecvError::Empty) => {
                    batch.flush(sink, &mut zc, results)?;
                    continue;
                }
                Err(TryRecvError::Disconnected) => None,
            }
        };
        let Some((seq, data)) = next else {
            return batch.flush(sink, &mut zc, results);
        };
        if is_zero(&data) {
            record(results, seq, None);
            continue;
        }
        batch.bytes += data.len();
        batch.items.push((seq, ChunkId::of(&data), data));
        if batch.full() {
            batch.flush(sink, &mut zc, results)?;
        }
    }
}

/// Runs `produce` with a submitter; returns its result and, per sequence number, the chunk id
/// (`None` for an all-zero chunk, which is never stored).
pub fn run<R>(
    sink: &dyn ChunkSink,
    produce: impl FnOnce(&Submitter) -> Result<R>,
) -> Result<(R, Vec<Option<ChunkId>>)> {
    let level = sink.config().compression.level;
    let n = workers();
    let (tx, rx) = bounded::<(usize, Vec<u8>)>(4 * n);
    let results: Results = Mutex::new(Vec::new());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let produced = std::thread::scope(|s| {
        for _ in 0..n {
            let rx = rx.clone();
            let (results, failure) = (&results, &failure);
            s.spawn(move || {
                if let Err(e) = work(sink, &rx, results, level) {
                    failure.lock().unwrap().get_or_insert(e);
                    // Dropping the receiver makes the producer's next send fail.
                }
            });
        }
        drop(rx);
        let sub = Submitter {
            tx,
            next: AtomicUsize::new(0),
        };
        let r = produce(&sub);
        let count = sub.next.load(Ordering::Relaxed);
        drop(sub); // closes the queue; workers drain and exit
        (r, count)
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    let (r, count) = produced;
    let r = r?;
    let mut res = results.into_inner().unwrap();
    res.resize(count, None);
    Ok((r, res))
}

/// Chunk ids already in the parent snapshot, confirmed with the sink a batch at a time: the
/// ones it still has (and now counts as referenced), so that what they stand for need not be
/// read again.
pub fn still_there(sink: &dyn ChunkSink, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
    let distinct: Vec<ChunkId> = ids
        .iter()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut have: HashSet<ChunkId> = distinct.iter().copied().collect();
    for batch in distinct.chunks(BATCH_CHUNKS) {
        for id in sink.missing(batch)? {
            have.remove(&id);
        }
    }
    Ok(have)
}

/// File extents whose chunks are still in the pipeline.
#[derive(Default)]
pub struct PendingExtents {
    items: Vec<(usize, u64, u32, usize)>,
}

impl PendingExtents {
    pub fn push(&mut self, entry: usize, offset: u64, len: u32, seq: usize) {
        self.items.push((entry, offset, len, seq));
    }

    /// Fills the entries' extents; all-zero chunks become gaps.
    pub fn resolve(self, entries: &mut [Entry], ids: &[Option<ChunkId>]) {
        for (entry, offset, len, seq) in self.items {
            if let (Some(id), EntryKind::File { extents, .. }) =
                (ids[seq], &mut entries[entry].kind)
            {
                extents.push(Extent { offset, len, id });
            }
        }
    }
}
