//! Where an import puts its chunks: the local store, or a remote server.
//!
//! The import code (reading, chunking, zero detection, hashing, compression, batching) is
//! the same for a local import and for a capture agent sending to a server: it runs against
//! a `ChunkSink`. For each batch of at most `BATCH_CHUNKS` chunks or `BATCH_BYTES` bytes it
//! asks the sink which chunks are missing, compresses only those and hands them over; the
//! import's workers do this concurrently, so a remote sink has several requests in flight.
//! The import then returns a `Draft`, committed where the chunks went: `Writer::commit`
//! locally; a remote client sends it (`Draft::encode`) and the server calls
//! `Writer::commit_uploaded`, which checks the tree and that every chunk it names is there.
//!
//! A remote sink maps its two calls to requests to the server's write session:
//! `missing` → `Writer::missing` (ids as in `chunk_stream::encode_request`), `put` →
//! `chunk_stream::encode_upload` → `decode_upload` and `Writer::upload`, which checks every
//! chunk against its id before storing it. A dropped connection or a restarted server costs
//! the batches in flight: the client runs the import again, and whatever the server stored
//! is no longer missing.

use crate::chunk_stream::StoredChunk;
use crate::config::StoreConfig;
use crate::error::Result;
use crate::id::ChunkId;
use crate::writer::Writer;

pub trait ChunkSink: Sync {
    /// The destination store's config: its chunker, block size and compression decide cut
    /// points and ids, so that they deduplicate against what it holds.
    fn config(&self) -> &StoreConfig;

    /// Which of `ids` (distinct) the destination lacks, in the order given. From this call
    /// on it counts the others as referenced by the snapshot being made (a gc running
    /// meanwhile keeps them); the ones returned must be `put` before the commit.
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>>;

    /// Chunks the destination lacks, as stored (zstd-compressed, or raw).
    fn put(&self, chunks: &[StoredChunk]) -> Result<()>;
}

/// The local store, through a write session; the chunks were hashed by this process.
pub(crate) struct LocalSink<'w, 's>(pub &'w Writer<'s>);

impl ChunkSink for LocalSink<'_, '_> {
    fn config(&self) -> &StoreConfig {
        self.0.store().config()
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        self.0.missing(ids)
    }

    fn put(&self, chunks: &[StoredChunk]) -> Result<()> {
        chunks.iter().try_for_each(|c| self.0.store_chunk(c))
    }
}
