//! A hostile disk (its partition table and superblocks written by a guest) is probed without
//! panicking, and every partition found lies inside the disk.
#![no_main]

use ignite_recovery::capture::layout::probe;
use ignite_recovery::disk::ImageReader;
use libfuzzer_sys::fuzz_target;

struct Mem(Vec<u8>);

impl ImageReader for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| std::io::Error::other("past the end"))?;
        buf.copy_from_slice(&self.0[offset as usize..end as usize]);
        Ok(())
    }
    fn name(&self) -> String {
        "fuzz".into()
    }
}

fuzz_target!(|data: &[u8]| {
    // Spread the input over a disk: the first bytes at LBA 0, the rest from LBA 1 on, so
    // both MBR and GPT headers and entries come from the fuzzer.
    let mut disk = vec![0u8; 64 << 10];
    let n = data.len().min(disk.len());
    disk[..n].copy_from_slice(&data[..n]);
    let d = Mem(disk);
    if let Ok(layout) = probe(&d) {
        for p in layout.partitions {
            assert!(p.start.checked_add(p.size).is_some_and(|e| e <= d.size()));
        }
    }
});
