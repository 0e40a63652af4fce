//! PCI and virtio-blk under real KVM, driven by guest test programs.

mod common;

use ignite_vmm::change_tracking::ChangeTracker;
use ignite_vmm::guest::ProgramRun;
use ignite_vmm::DiskConfig;
use std::os::unix::fs::OpenOptionsExt;

fn disk(path: &std::path::Path, ro: bool) -> DiskConfig {
    DiskConfig::parse(&format!(
        "{}{}",
        path.display(),
        if ro { ",ro" } else { "" }
    ))
    .unwrap()
}

#[test]
fn pci_enumeration_finds_exactly_the_configured_devices() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let a = common::image(dir.as_path(), "a.img", 1 << 20, 0);
    let b = common::image(dir.as_path(), "b.img", 1 << 20, 0);
    let mut run = ProgramRun::new("pci_enum");
    run.disks = vec![disk(&a, false), disk(&b, true)];
    run.args = "expect=1af4:1042,1af4:1042".into();
    let r = common::expect_pass(run);
    assert!(r.serial.contains("found exactly 2 devices"), "{}", r.serial);

    // The same program must notice a device that is missing.
    let mut run = ProgramRun::new("pci_enum");
    run.disks = vec![disk(&a, false)];
    run.args = "expect=1af4:1042,1af4:1042".into();
    let r = ignite_vmm::guest::run_program(run).unwrap();
    assert!(!r.passed(), "{}", r.serial);
}

#[test]
fn virtio_blk_read_write_flush_ro_in_flight_msix() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let size = 4 << 20;
    let a = common::image(dir.as_path(), "disk-a.img", size, 0xee);
    let ro = common::image(dir.as_path(), "ro.img", 1 << 20, 0x5a);
    let mut run = ProgramRun::new("blk");
    run.disks = vec![disk(&a, false), disk(&ro, true)];
    run.args = format!("sectors={} id=disk-a.img ro=1", size / 512);
    let r = common::expect_pass(run);
    assert!(
        r.serial
            .contains("16 writes and 16 reads in flight: pattern verified"),
        "{}",
        r.serial
    );
    assert!(
        r.serial.contains("read-only disk rejects writes"),
        "{}",
        r.serial
    );
    // The guest's writes are in the file: request i wrote chunk i at sector 64*i+8.
    let data = std::fs::read(&a).unwrap();
    let off = (64 * 5 + 8) * 512;
    let expect: Vec<u8> = (0..4096usize)
        .map(|j| (5 * 131 + j * 7 + (j >> 8)) as u8)
        .collect();
    assert_eq!(&data[off..off + 4096], &expect[..]);
    assert_eq!(data[0], 0xee, "bytes before the first write are untouched");
    assert!(
        std::fs::read(&ro).unwrap().iter().all(|&b| b == 0x5a),
        "read-only image changed"
    );
}

#[test]
fn change_tracking_marks_exactly_the_written_regions() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let size = 8 << 20;
    let img = common::image(dir.as_path(), "t.img", size, 0);
    let mut run = ProgramRun::new("dirty");
    run.disks = vec![disk(&img, false)];
    // 64 KiB regions are 128 sectors: one sector in region 0; regions 3..=4 by a write
    // straddling their boundary; region 20 exactly; write-zeroes of region 40.
    run.args = "writes=5+1,511+2,2560+128 zero=5120+128".into();
    common::expect_pass(run);
    let set = ChangeTracker::load(&img).unwrap();
    let marked: Vec<u64> = (0..set.regions()).filter(|&r| set.is_marked(r)).collect();
    assert_eq!(marked, vec![0, 3, 4, 20, 40]);
}

#[test]
fn virtio_blk_with_o_direct() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let size = 4 << 20;
    let a = common::image(dir.as_path(), "direct.img", size, 0xee);
    // O_DIRECT needs file system support (tmpfs has none).
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&a)
        .map(|_| ())
        .map_err(|e| format!("O_DIRECT on {}: {e}", dir.as_path().display()));
    if !common::require("a file system with O_DIRECT", probe) {
        return;
    }
    let mut run = ProgramRun::new("blk");
    let mut d = disk(&a, false);
    d.direct = true;
    run.disks = vec![d];
    run.args = format!("sectors={} id=direct.img", size / 512);
    let r = common::expect_pass(run);
    assert!(r.serial.contains("pattern verified"), "{}", r.serial);
    let data = std::fs::read(&a).unwrap();
    let expect: Vec<u8> = (0..4096usize)
        .map(|j| (7 * 131 + j * 7 + (j >> 8)) as u8)
        .collect();
    let off = (64 * 7 + 8) * 512;
    assert_eq!(&data[off..off + 4096], &expect[..]);
}

#[test]
fn one_hundred_twenty_eight_avio_disks_on_multifunction_devices() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let mut disks = Vec::new();
    for i in 0..128 {
        let p = dir.as_path().join(format!("m{i}.img"));
        let mut data = vec![0u8; 4096];
        data[..7].copy_from_slice(format!("MANY{i:03}").as_bytes());
        std::fs::write(&p, data).unwrap();
        disks.push(disk(&p, true));
    }
    let mut run = ProgramRun::new("manydisks");
    run.disks = disks;
    run.mem_bytes = 128 << 20;
    run.args = "disks=128".into();
    run.timeout = std::time::Duration::from_secs(120);
    let r = common::expect_pass(run);
    assert!(
        r.serial
            .contains("read 128 disks (97 on functions other than 0)"),
        "{}",
        r.serial
    );
}
