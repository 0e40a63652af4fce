//! A hostile guest's accesses to the NE2000's I/O BAR, mixed with frames from the network
//! (see ignite_vmm::fuzzing::ne2k_registers): no panic, no frame longer than Ethernet's.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ignite_vmm::fuzzing::ne2k_registers(data);
});
