//! Whatever an NBD client sends is parsed without panicking: option headers and INFO/GO
//! payloads, requests and the action taken for them, and the cut of a read into data and
//! holes always covers exactly the requested range.
#![no_main]

use ignite_recovery::nbd::server::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 16 {
        let _ = parse_option_header(data[..16].try_into().unwrap());
    }
    let _ = parse_info_request(data);
    if data.len() >= 28 {
        if let Ok(req) = parse_request(data[..28].try_into().unwrap()) {
            let size = u64::from(data[0]) << 20;
            if action(&req, size) == Action::Read {
                // Sorted, disjoint data ranges from the rest of the input.
                let mut ranges = Vec::new();
                let mut pos = 0u64;
                for c in data[28..].chunks(2) {
                    let (gap, len) = (u64::from(c[0]) << 12, u64::from(*c.last().unwrap()) << 12);
                    ranges.push((pos + gap, len));
                    pos += gap + len;
                }
                let p = pieces(&ranges, req.offset, req.length);
                let total: u64 = p.iter().map(|&(_, l, _)| u64::from(l)).sum();
                assert_eq!(total, u64::from(req.length));
                assert!(p.first().is_none_or(|&(o, _, _)| o == req.offset));
            }
        }
    }
});
