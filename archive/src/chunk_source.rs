//! Where an export gets chunk contents: the local store, or a remote server's install API
//! (the agent's implementation asks over HTTP). Export asks in batches, at most
//! `BATCH_CHUNKS` chunks or `BATCH_BYTES` bytes of file content at a time: a root file system
//! is mostly small files, and a remote request per chunk costs more than the chunk.

use crate::chunk_stream::{HEADER_LEN, MAX_CHUNK_BYTES, MAX_REPLY_BYTES};
use crate::error::Result;
use crate::id::ChunkId;
use crate::store::Store;

/// Implementations return the chunks asked for, in that order, each checked against its id.
pub trait ChunkSource: Sync {
    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>>;
}

/// Most file content one batch asks for...
pub const BATCH_BYTES: u64 = 4 << 20;
/// ...and most chunks. A server's batch limit must be at least this.
pub const BATCH_CHUNKS: usize = 256;
// A batch is one chunk, or up to BATCH_BYTES of them: its reply fits a server's limit.
const _: () = assert!(
    BATCH_BYTES + MAX_CHUNK_BYTES as u64 + (BATCH_CHUNKS * HEADER_LEN) as u64 <= MAX_REPLY_BYTES
);

impl ChunkSource for Store {
    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>> {
        ids.iter().map(|id| self.read_chunk(id)).collect()
    }
}
