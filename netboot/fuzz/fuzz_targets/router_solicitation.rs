//! Any bytes as an ICMPv6 message on the router solicitation socket: refused or read as a
//! solicitation naming a MAC, never a panic or a read past the message.
#![no_main]

use ignite_netboot::ra::solicitation_mac;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mac) = solicitation_mac(data) {
        assert_eq!(data[0], 133, "{mac} from a message that is not a solicitation");
    }
});
