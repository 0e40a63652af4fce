//! Arbitrary bytes as a snapshot tree, as an install agent receives it from a server: decoding
//! and the safety check must return Ok or a clear error, never panic. The bytes go in both
//! as they are and compressed, so that the entry decoder behind zstd is reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let framed = [b"IGNTREE1".as_slice(), &zstd::bulk::compress(data, 1).unwrap()].concat();
    for bytes in [data, framed.as_slice()] {
        if let Ok(entries) = ignite_archive::snapshot::decode_tree("fuzz", bytes) {
            let _ = ignite_archive::check_tree(&entries);
        }
    }
});
