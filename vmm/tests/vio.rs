//! VIO devices under real KVM, driven by guest test programs: the PIIX IDE controller.

mod common;

use ignite_vmm::change_tracking::ChangeTracker;
use ignite_vmm::guest::ProgramRun;
use ignite_vmm::DiskConfig;
use std::os::unix::fs::FileExt;

/// Sparse images of `size` bytes with "VIODISK<i>" in sector 0.
fn disks(dir: &std::path::Path, n: usize, size: u64) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("vio{i}.img"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(size).unwrap();
            f.write_all_at(format!("VIODISK{i}").as_bytes(), 0).unwrap();
            p
        })
        .collect()
}

fn cfg(p: &std::path::Path) -> DiskConfig {
    DiskConfig::parse(&p.display().to_string()).unwrap()
}

#[test]
fn ide_four_disks_identify_pio_multiple_lba48_irq_and_tracking() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    // 200 GiB (sparse): LBA48 commands above 2^28 sectors.
    let size = 200u64 << 30;
    let sectors = size / 512;
    let paths = disks(dir.as_path(), 4, size);
    let mut run = ProgramRun::new("ide");
    run.vio_disks = paths.iter().map(|p| cfg(p)).collect();
    run.args = format!("disks=4 sectors={sectors}");
    let r = common::expect_pass(run);
    assert!(r.serial.contains("ide: 4 disk(s)"), "{}", r.serial);
    // Pattern A in sectors 64..72 of disk 0, as the guest wrote it.
    let f = std::fs::File::open(&paths[0]).unwrap();
    let mut got = vec![0u8; 8 * 512];
    f.read_exact_at(&mut got, 64 * 512).unwrap();
    for (i, b) in got.iter().enumerate() {
        let s = 64 + i / 512;
        assert_eq!(*b, ((s * 31 + i % 512) as u8) ^ 0x5a, "byte {i}");
    }
    // Change tracking as on virtio-blk: 64 KiB regions written by the guest, nothing else.
    let set = ChangeTracker::load(&paths[0]).unwrap();
    let marked: Vec<u64> = (0..set.regions()).filter(|&x| set.is_marked(x)).collect();
    let high = (sectors - 48) * 512 / (64 << 10);
    let last = (size - 1) / (64 << 10);
    let mut want = vec![0, 7, 8];
    want.extend(high..=last);
    assert_eq!(marked, want);
    for p in &paths[1..] {
        assert_eq!(
            ChangeTracker::load(p).unwrap().count(),
            0,
            "{}",
            p.display()
        );
    }
}

#[test]
fn ide_single_disk_and_empty_secondary_channel() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let size = 64u64 << 20;
    let paths = disks(dir.as_path(), 1, size);
    let mut run = ProgramRun::new("ide");
    run.vio_disks = vec![cfg(&paths[0])];
    run.args = format!("disks=1 sectors={}", size / 512);
    common::expect_pass(run);
}

#[test]
fn a_fifth_vio_disk_is_refused() {
    let mut run = ProgramRun::new("ide");
    run.vio_disks = vec![cfg(std::path::Path::new("/nonexistent.img")); 5];
    let err = ignite_vmm::guest::run_program(run)
        .err()
        .expect("5 IDE disks must fail");
    let msg = err.to_string();
    assert!(msg.contains("at most 4") && msg.contains("AVIO"), "{msg}");
}
