//! Untrusted input of the network boot firmware: DHCP replies, TFTP packets, HTTP responses
//! and iPXE scripts (see ignite_vmm::fuzzing::netboot_parsers).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ignite_vmm::fuzzing::netboot_parsers(data);
});
