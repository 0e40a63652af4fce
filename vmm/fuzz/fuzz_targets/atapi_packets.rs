//! See ignite_vmm::fuzzing::atapi_packets: no panic, no image grows past its bounds.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ignite_vmm::fuzzing::atapi_packets(data);
});
