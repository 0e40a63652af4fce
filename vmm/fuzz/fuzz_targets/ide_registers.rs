//! A hostile guest's accesses to the IDE channels' registers and data port (see
//! ignite_vmm::fuzzing::ide_registers): no panic, no disk image grows.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ignite_vmm::fuzzing::ide_registers(data);
});
