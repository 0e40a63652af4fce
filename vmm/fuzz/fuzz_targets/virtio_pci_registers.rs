//! A hostile guest's PCI configuration accesses and virtio-pci BAR accesses (common config,
//! notify, device config, MSI-X table and PBA) to a virtio-blk function (see
//! ignite_vmm::fuzzing::virtio_pci_registers): no panic, no access outside guest memory or
//! past the end of the disk.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ignite_vmm::fuzzing::virtio_pci_registers(data);
});
