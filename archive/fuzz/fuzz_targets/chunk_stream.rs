//! Arbitrary bytes as a batch of chunks from the install API, as an agent receives it: the
//! decoder must return the chunks or a clear error, never panic or allocate what a header
//! claims. The first byte says how many chunks were asked for.
#![no_main]

use ignite_archive::ChunkId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, body)) = data.split_first() else {
        return;
    };
    let ids: Vec<ChunkId> = (0..n % 16).map(|i| ChunkId::of(&[i])).collect();
    let _ = ignite_archive::chunk_stream::decode(&ids, body, 1 << 20);
});
