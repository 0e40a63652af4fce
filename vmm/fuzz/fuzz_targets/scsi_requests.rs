//! See ignite_vmm::fuzzing::scsi_requests: no panic, no image grows past its bounds.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ignite_vmm::fuzzing::scsi_requests(data);
});
