//! Any bytes as an HTTP `Range` header value: no panic, and a range that is kept is in the
//! canonical form, which parses back to itself.
#![no_main]

use ignite_netboot::testing::check_range_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = check_range_header(data) {
        panic!("{why}");
    }
});
