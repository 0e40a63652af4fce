//! Any bytes into the TFTP packet parser: no panic, and requests re-encode to what parsed.
#![no_main]

use ignite_netboot::testing::check_tftp_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = check_tftp_round_trip(data) {
        panic!("{why}");
    }
});
