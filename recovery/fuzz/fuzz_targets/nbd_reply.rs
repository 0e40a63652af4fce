//! Whatever an NBD server sends is parsed without panicking, and a read chunk never lands
//! outside the buffer of the request it answers.
#![no_main]

use ignite_recovery::nbd::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 18 {
        let _ = parse_greeting(data[..18].try_into().unwrap());
    }
    if data.len() >= 20 {
        let _ = parse_option_reply_header(data[..20].try_into().unwrap());
    }
    let _ = parse_meta_context(data);
    let _ = parse_info_export(data);
    let _ = parse_block_status(data);
    let _ = parse_error_payload(data);
    if data.len() >= 24 {
        let magic = u32::from_be_bytes(data[..4].try_into().unwrap());
        if let Ok(h) = parse_chunk_header(magic, data[4..20].try_into().unwrap()) {
            let start = u64::from(u32::from_be_bytes(data[20..24].try_into().unwrap()));
            let mut part = vec![0u8; (data[0] as usize) * 16];
            let _ = place_read_chunk(&h, &data[24..], start, &mut part);
        }
    }
});
