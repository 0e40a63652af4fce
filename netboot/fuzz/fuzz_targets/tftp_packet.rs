//! Any bytes into the TFTP packet parser: no panic, and requests re-encode to what parsed.
#![no_main]

use ignite_netboot::tftp::{encode_rrq, parse, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Read(r)) = parse(data) {
        let opts: Vec<(&str, &str)> = r.options.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let again = encode_rrq(&r.filename, &r.mode, &opts);
        assert_eq!(parse(&again), Ok(Packet::Read(r)));
    }
});
