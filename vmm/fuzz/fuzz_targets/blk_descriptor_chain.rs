//! A hostile guest's virtqueue: arbitrary descriptor table and available ring, processed by
//! the virtio-blk device. Must not panic or touch memory outside the guest.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ignite_vmm::fuzzing::run_block_queue(data);
});
