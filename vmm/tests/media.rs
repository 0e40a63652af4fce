//! Removable media under real KVM, driven by guest test programs: the ATAPI CD-ROM on the
//! IDE channels (VIO) and the CD-ROM and tape LUNs of virtio-scsi (AVIO), with media changed
//! by the host while the guest runs.

mod common;

use ignite_vmm::guest::ProgramRun;
use ignite_vmm::scsi::MediumConfig;
use ignite_vmm::{DiskConfig, DriveConfig, SerialTarget, SharedBuffer, Vm, VmConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A CD image of `blocks` blocks (`guest::write_test_iso`).
fn iso(dir: &Path, name: &str, blocks: u32, seed: u8) -> PathBuf {
    let p = dir.join(name);
    ignite_vmm::guest::write_test_iso(&p, blocks, seed).unwrap();
    p
}

fn fnv(data: &[u8]) -> String {
    let h = ignite_vmm::guest::fnv1a(ignite_vmm::guest::FNV1A_START, data);
    format!("{h:08x}")
}

fn drive(spec: &str) -> DriveConfig {
    DriveConfig::parse(spec).unwrap()
}

#[test]
fn atapi_cdrom_on_the_primary_slave_reads_the_whole_iso() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let image = iso(dir.as_path(), "a.iso", 301, 7);
    let disk = common::image(dir.as_path(), "d.img", 1 << 20, 0);
    let mut run = ProgramRun::new("atapi");
    // A disk on the primary master: the CD-ROM is the slave, with its own signature.
    run.vio_disks = vec![DiskConfig::parse(&disk.display().to_string()).unwrap()];
    run.drives = vec![drive(&format!("cd,medium={}", image.display()))];
    run.args = "unit=1".into();
    let r = common::expect_pass(run);
    let want = format!(
        "atapi: 301 blocks fnv1a {}",
        fnv(&std::fs::read(&image).unwrap())
    );
    assert!(r.serial.contains(&want), "want {want:?}\n{}", r.serial);
}

/// Waits until the guest printed `line`, showing what it printed otherwise.
fn wait_for(out: &SharedBuffer, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.contents().contains(line) {
        assert!(
            Instant::now() < deadline,
            "the guest never printed {line:?}:\n{}",
            out.contents()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn atapi_medium_changed_by_the_host_while_the_guest_runs() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let first = iso(dir.as_path(), "first.iso", 40, 1);
    let second = iso(dir.as_path(), "second.iso", 77, 2);
    let out = SharedBuffer::default();
    let mut cfg = VmConfig::new(ignite_vmm::guest::image("atapi"));
    cfg.cmdline = "unit=0 swap=1".into();
    cfg.mem_bytes = 64 << 20;
    cfg.drives = vec![drive(&format!("cd,medium={}", first.display()))];
    cfg.serial = SerialTarget::Buffer(out.clone());
    let vm = Vm::new(&cfg).unwrap();
    let media = vm.media();
    let running = std::thread::spawn(move || vm.run(Some(Duration::from_secs(120))));
    wait_for(&out, "swap: eject now");
    assert_eq!(media.eject("cd0").unwrap(), Some(first));
    wait_for(&out, "swap: insert now");
    let m = MediumConfig {
        path: second.clone(),
        read_only: true,
    };
    media.insert("cd0", &m).unwrap();
    let outcome = running.join().unwrap().unwrap();
    assert_eq!(
        outcome.reason,
        ignite_vmm::StopReason::TestExit(0),
        "{}",
        out.contents()
    );
    let block0 = &std::fs::read(&second).unwrap()[..2048];
    let want = format!("swap: 77 blocks, first block fnv1a {}", fnv(block0));
    assert!(
        out.contents().contains(&want),
        "want {want:?}\n{}",
        out.contents()
    );
}

/// The objects of a SIMH-format tape file: Some(record) or None (filemark).
fn tape_objects(data: &[u8]) -> Vec<Option<Vec<u8>>> {
    let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    let (mut at, mut out) = (0, Vec::new());
    while at < data.len() {
        let l = word(at);
        if l == 0 {
            out.push(None);
            at += 4;
            continue;
        }
        let pad = l & 1;
        assert_eq!(word(at + 4 + l + pad), l, "trailing length at {at}");
        out.push(Some(data[at + 4..at + 4 + l].to_vec()));
        at += 8 + l + pad;
    }
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn vscsi(extra_luns: usize) {
    let dir = common::tempdir();
    let image = iso(dir.as_path(), "c.iso", 1000, 3);
    let tape = dir.as_path().join("t.tap");
    std::fs::write(&tape, b"").unwrap();
    let mut run = ProgramRun::new("vscsi");
    run.drives = vec![
        drive(&format!("cd,avio,medium={}", image.display())),
        drive(&format!("tape,medium={}", tape.display())),
    ];
    run.drives.extend((0..extra_luns).map(|_| drive("cd,avio")));
    run.args = format!("luns={}", 2 + extra_luns);
    run.mem_bytes = 128 << 20;
    let r = common::expect_pass(run);
    let want = format!(
        "vscsi: cd 1000 blocks fnv1a {}",
        fnv(&std::fs::read(&image).unwrap())
    );
    assert!(r.serial.contains(&want), "want {want:?}\n{}", r.serial);
    // The tape as written, read independently of the device model.
    let mut want: Vec<Option<Vec<u8>>> = [1000, 3001, 65536]
        .iter()
        .enumerate()
        .map(|(i, &l)| Some(pattern(l, i as u8)))
        .collect();
    want.push(None);
    want.extend(pattern(4096, 9).chunks(512).map(|c| Some(c.to_vec())));
    want.push(None);
    assert!(
        tape_objects(&std::fs::read(&tape).unwrap()) == want,
        "tape contents differ"
    );
}

#[test]
fn virtio_scsi_cd_and_tape_as_linux_uses_them() {
    if common::kvm() {
        vscsi(0);
    }
}

#[test]
fn virtio_scsi_128_luns_on_one_controller() {
    if common::kvm() {
        vscsi(126);
    }
}

#[test]
fn iso_read_rows_of_avio_vio_check_the_data_and_count_exits() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let (avio, vio) = ignite_vmm::bench::avio_vio_iso(dir.as_path(), 4 << 20, 4 << 20).unwrap();
    println!(
        "{}",
        ignite_vmm::bench::avio_vio_table(std::slice::from_ref(&avio), std::slice::from_ref(&vio))
    );
    // Exits per MiB do not depend on the machine's load: VIO pays one per 512-byte `rep
    // insw` and a dozen per command, AVIO a doorbell and an interrupt per MiB.
    assert!(
        avio.exits_per_mib() * 50.0 < vio.exits_per_mib(),
        "AVIO {:.1} vs VIO {:.1} exits/MiB",
        avio.exits_per_mib(),
        vio.exits_per_mib()
    );
}
