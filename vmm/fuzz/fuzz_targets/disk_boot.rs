//! A hostile disk image: partition tables (MBR, GPT) and ext4 file systems read from the host
//! to find a kernel for `--boot disk`. Must end with boot files or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ignite_vmm::diskboot::find(std::sync::Arc::new(data.to_vec()));
});
