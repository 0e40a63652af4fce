//! Arbitrary bytes as a chunk request (as a server receives it) and as a reply (as a client
//! receives it): parsing and decoding return the ids or chunks or a clear error, never panic
//! or allocate what a header claims. The first byte says how many chunks were asked for.
#![no_main]

use ignite_archive::chunk_stream::{parse_request, Decoder, Limits};
use ignite_archive::ChunkId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data, 64);
    let Some((&n, body)) = data.split_first() else {
        return;
    };
    let ids: Vec<ChunkId> = (0..n % 16).map(|i| ChunkId::of(&[i])).collect();
    let limits = Limits {
        max_raw: 1 << 20,
        max_bytes: 4 << 20,
    };
    for chunk in Decoder::new(body, &ids, limits) {
        if chunk.is_err() {
            break;
        }
    }
    let _ = ignite_archive::chunk_stream::decode(&ids, body, 1 << 20);
});
