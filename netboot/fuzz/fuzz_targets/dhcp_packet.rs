//! Any bytes into the DHCP parser and a full server engine (pool + proxy): no panic, and
//! a reply, if any, encodes to at least the BOOTP minimum.
#![no_main]

use std::sync::{Mutex, OnceLock};

use ignite_netboot::dhcp::parse_request;
use ignite_netboot::testing::Engines;
use libfuzzer_sys::fuzz_target;

/// The engines live for the whole run, so state accumulates.
static ENGINES: OnceLock<Mutex<Engines>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let mut e = ENGINES.get_or_init(|| Mutex::new(Engines::new())).lock().unwrap();
    if let Err(why) = e.check(data) {
        panic!("{why}");
    }
});
