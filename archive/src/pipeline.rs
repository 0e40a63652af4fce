//! The import pipeline: one producer (reading, chunking) feeds a bounded queue; one worker per
//! core detects zero chunks, hashes, deduplicates, compresses and packs. Results come back by
//! sequence number, so the producer can describe files before their chunks are stored.
//! The bounded queue caps memory however large the input.

use crate::error::{Error, Result};
use crate::id::{is_zero, ChunkId};
use crate::snapshot::{Entry, EntryKind, Extent};
use crate::writer::Writer;
use crossbeam_channel::{bounded, Sender};
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

/// Runs `produce` with a submitter; returns its result and, per sequence number, the chunk id
/// (`None` for an all-zero chunk, which is never stored).
pub fn run<R>(
    writer: &Writer,
    produce: impl FnOnce(&Submitter) -> Result<R>,
) -> Result<(R, Vec<Option<ChunkId>>)> {
    let level = writer.store().config().compression.level;
    let n = workers();
    let (tx, rx) = bounded::<(usize, Vec<u8>)>(4 * n);
    let results: Mutex<Vec<Option<ChunkId>>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let produced = std::thread::scope(|s| {
        for _ in 0..n {
            let rx = rx.clone();
            let (results, failure) = (&results, &failure);
            s.spawn(move || {
                let mut zc = match zstd::bulk::Compressor::new(level) {
                    Ok(zc) => zc,
                    Err(e) => {
                        *failure.lock().unwrap() = Some(Error::Invalid(format!("zstd: {e}")));
                        return;
                    }
                };
                for (seq, data) in rx.iter() {
                    let r = if is_zero(&data) {
                        Ok(None)
                    } else {
                        writer.put(&data, &mut zc).map(Some)
                    };
                    match r {
                        Ok(id) => {
                            let mut res = results.lock().unwrap();
                            if res.len() <= seq {
                                res.resize(seq + 1, None);
                            }
                            res[seq] = id;
                        }
                        Err(e) => {
                            failure.lock().unwrap().get_or_insert(e);
                            // Dropping the receiver makes the producer's next send fail.
                            return;
                        }
                    }
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
