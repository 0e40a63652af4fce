//! A real Linux guest on the bundled monitor: the kernel `scripts/linux-guest` builds from
//! Debian's linux-source (tinyconfig + vmm/linux/guest.config, uncompressed vmlinux loaded as
//! ELF) with a busybox initramfs whose init (vmm/linux/init) mounts an ext4 disk, checks a
//! file's SHA-256, writes a file, brings up the NIC, pings a peer on a tap in a network
//! namespace and resets through the i8042. Twice: on the AVIO devices (virtio-blk and
//! virtio-net over virtio-pci with MSI-X) and on the VIO devices only (PIIX IDE and NE2000,
//! Linux's own ata_piix and ne2k-pci). Removable media too (issue 14): an ISO 9660 image
//! (xorriso) holding the same payload, mounted by Linux's sr from an ATAPI CD-ROM (VIO) or a
//! virtio-scsi CD-ROM (AVIO), and on AVIO a virtio-scsi tape that st, mt and tar write and
//! read back, whose file the host then reads as a tape independently.
//!
//! Runs where guest kernel code runs at hardware speed (building the kernel first if it is
//! not cached), or where `IGNITE_LINUX_GUEST` names the guest's files (scripts/linux-guest
//! sets it: the proof on hosts that emulate guest kernel code, where a boot takes minutes).
//! Otherwise it skips with the measured slowdown, even under IGNITE_CI=1.

mod common;

use ignite_vmm::netns::Netns;
use ignite_vmm::{
    DiskConfig, DriveConfig, KernelImage, NetBackend, NetConfig, RunOutcome, SerialTarget,
    SharedBuffer, StopReason, Vm, VmConfig,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x79, 0, 2];
/// Marks the init writes to port 0xf5.
const MARK_INIT: u32 = 1;
const MARK_DISK: u32 = 2;
const MARK_NET: u32 = 3;
const MARK_DONE: u32 = 4;

/// The directory with vmlinux, initrd.cpio, disk.ext4 and payload.sha256, or why not.
fn guest_files() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("IGNITE_LINUX_GUEST") {
        return Some(PathBuf::from(dir));
    }
    if !common::kvm() {
        return None;
    }
    let speed = ignite_vmm::hwcheck::measure().expect("speed check");
    if !speed.hardware_assisted() {
        // Skipped even under IGNITE_CI=1: no amount of installing fixes missing VT-x/AMD-V.
        eprintln!(
            "skipped: a Linux boot here takes minutes (scripts/linux-guest runs it): {}",
            speed.describe()
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/linux-guest");
    let out = Command::new(&script)
        .arg("assets")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(PathBuf::from);
    match dir {
        Some(d) if out.status.success() => Some(d),
        _ => {
            common::require(
                "the Linux guest kernel (scripts/linux-guest assets)",
                Err(stderr.trim().to_string()),
            );
            None
        }
    }
}

/// Which devices the guest gets.
#[derive(Clone, Copy, Debug)]
enum Bus {
    /// virtio-blk + virtio-net.
    Avio,
    /// PIIX IDE + NE2000.
    Vio,
}

struct Boot {
    out: RunOutcome,
    console: String,
    disk: PathBuf,
    tape: PathBuf,
    _dir: vmm_sys_util::tempdir::TempDir,
}

/// An ISO 9660 image in `dir` holding /payload as scripts/linux-guest makes it (`seq 1
/// 150000`), checked against the assets' payload.sha256.
fn payload_iso(dir: &Path, sha: &str) -> PathBuf {
    let content = dir.join("iso-content");
    std::fs::create_dir_all(&content).unwrap();
    let payload: String = (1..=150000).map(|i| format!("{i}\n")).collect();
    std::fs::write(content.join("payload"), payload).unwrap();
    let sum = Command::new("sha256sum")
        .arg(content.join("payload"))
        .output()
        .expect("sha256sum");
    assert!(
        String::from_utf8_lossy(&sum.stdout).starts_with(sha),
        "the payload recipe changed: update payload_iso to scripts/linux-guest's"
    );
    let iso = dir.join("payload.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "IGNITE", "-o"])
        .arg(&iso)
        .arg(&content)
        .output()
        .expect("xorriso (scripts/deps/vmm.apt)");
    assert!(
        out.status.success(),
        "xorriso: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

/// The records of a SIMH-format tape up to its first filemark, joined.
fn first_tape_file(tape: &[u8]) -> (Vec<u8>, usize) {
    let word = |at: usize| u32::from_le_bytes(tape[at..at + 4].try_into().unwrap()) as usize;
    let (mut at, mut data, mut records) = (0, Vec::new(), 0);
    while at < tape.len() && word(at) != 0 {
        let l = word(at);
        assert_eq!(
            word(at + 4 + l + (l & 1)),
            l,
            "record at {at}: lengths differ"
        );
        data.extend_from_slice(&tape[at + 4..at + 4 + l]);
        at += 8 + l + (l & 1);
        records += 1;
    }
    assert!(at < tape.len(), "no filemark after the first file");
    (data, records)
}

/// Boots the guest on `bus` in a namespace whose bridge holds the peer 10.79.0.1.
fn boot(files: &Path, bus: Bus, tag: &str) -> Boot {
    let dir = common::tempdir();
    let disk = dir.as_path().join("disk.ext4");
    std::fs::copy(files.join("disk.ext4"), &disk).expect("copy the guest disk");
    let sha = std::fs::read_to_string(files.join("payload.sha256")).expect("payload.sha256");
    let iso = payload_iso(dir.as_path(), sha.trim());
    let tape = dir.as_path().join("tape.tap");
    std::fs::write(&tape, b"").unwrap();
    let ns = Netns::new(tag).unwrap();
    ns.ip(&[
        "link",
        "add",
        "lgbr0",
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "10.79.0.1/24", "dev", "lgbr0"])
        .unwrap();
    ns.ip(&["link", "set", "lgbr0", "up"]).unwrap();
    let (dev, disks, vio_disks, nets, vio_nets) = {
        let d = vec![DiskConfig::parse(&disk.display().to_string()).unwrap()];
        let n = vec![NetConfig {
            backend: NetBackend::Bridge("lgbr0".into()),
            mac: MAC,
        }];
        match bus {
            Bus::Avio => ("/dev/vda", d, vec![], n, vec![]),
            Bus::Vio => ("/dev/sda", vec![], d, vec![], n),
        }
    };
    // VIO: the ATAPI CD-ROM on the primary slave; AVIO: virtio-scsi LUN 0 (CD) and 1 (tape).
    let (drives, media) = match bus {
        Bus::Vio => (
            vec![DriveConfig::parse(&format!("cd,vio,medium={}", iso.display())).unwrap()],
            "ignite.cd=/dev/sr0".to_string(),
        ),
        Bus::Avio => (
            vec![
                DriveConfig::parse(&format!("cd,avio,medium={}", iso.display())).unwrap(),
                DriveConfig::parse(&format!("tape,medium={}", tape.display())).unwrap(),
            ],
            "ignite.cd=/dev/sr0 ignite.tape=/dev/nst0".to_string(),
        ),
    };
    let serial = SharedBuffer::default();
    let mut cfg = VmConfig::new(KernelImage::Path(files.join("vmlinux")));
    cfg.initrd = Some(files.join("initrd.cpio"));
    cfg.cmdline = format!(
        "console=ttyS0 reboot=k panic=1 rdinit=/init ignite.disk={dev} ignite.sha256={} ignite.ip=10.79.0.2 ignite.peer=10.79.0.1 {media}",
        sha.trim()
    );
    cfg.drives = drives;
    cfg.mem_bytes = 128 << 20;
    cfg.disks = disks;
    cfg.vio_disks = vio_disks;
    cfg.nets = nets;
    cfg.vio_nets = vio_nets;
    cfg.serial = SerialTarget::Buffer(serial.clone());
    let out = ns
        .run(move || {
            Vm::new(&cfg)
                .unwrap()
                .run(Some(Duration::from_secs(25 * 60)))
                .unwrap()
        })
        .unwrap();
    Boot {
        out,
        console: serial.contents().replace('\r', ""),
        disk,
        tape,
        _dir: dir,
    }
}

/// Checks what every boot must show, and prints the timings the proof reports. The console
/// goes next to the guest's files (`console-avio.log`, `console-vio.log`) for reading.
fn check(b: &Boot, bus: Bus, files: &Path) {
    let log = &b.console;
    let name = format!("console-{}.log", format!("{bus:?}").to_lowercase());
    if let Err(e) = std::fs::write(files.join(&name), log) {
        eprintln!(
            "cannot keep the console in {}: {e}",
            files.join(&name).display()
        );
    }
    assert_eq!(b.out.reason, StopReason::Reset, "{bus:?}: {log}");
    for want in [
        "IGNITE-INIT",
        "IGNITE-DISK-OK",
        // The NIC has the MAC the VM was given (the NE2000's PROM once read back wrong).
        "IGNITE-MAC 52:54:00:79:00:02",
        "IGNITE-NET-OK",
        "IGNITE-CD-OK /dev/sr0",
        "IGNITE-LINUX-DONE",
    ] {
        assert!(
            log.contains(want),
            "{bus:?}: no {want} on the console:\n{log}"
        );
    }
    let marks: Vec<u32> = b.out.marks.iter().map(|m| m.value).collect();
    assert_eq!(
        marks,
        [123, MARK_INIT, MARK_DISK, MARK_NET, MARK_DONE],
        "{bus:?}: marks in order\n{log}"
    );
    let result = Command::new("debugfs")
        .args(["-R", "cat /result"])
        .arg(&b.disk)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert!(
        String::from_utf8_lossy(&result.stdout).contains("written-by-guest"),
        "{bus:?}: the guest's file is not on its disk"
    );
    if let Bus::Avio = bus {
        assert!(
            log.contains("IGNITE-TAPE-OK /dev/nst0"),
            "no IGNITE-TAPE-OK on the console:\n{log}"
        );
        // The tape file read independently: the first file is tar's archive in 10 KiB records.
        let (archive, records) = first_tape_file(&std::fs::read(&b.tape).unwrap());
        assert!(
            records > 0 && archive.len() == records * 10240,
            "{records} records"
        );
        assert_eq!(
            &archive[..8],
            b"tapedata",
            "a tar header for tapedata first"
        );
    }
    let phases: Vec<String> = b
        .out
        .marks
        .iter()
        .filter(|m| m.value != 123)
        .map(|m| {
            let name = match m.value {
                MARK_INIT => "init",
                MARK_DISK => "disk checked",
                MARK_NET => "peer answered",
                _ => "done",
            };
            format!(
                "{name} {:.1} s ({} insns emulated by KVM, {} exits)",
                m.at.as_secs_f64(),
                m.kvm_emulated.map_or("n/a".into(), |n| n.to_string()),
                m.kvm_exits.map_or("n/a".into(), |n| n.to_string()),
            )
        })
        .collect();
    eprintln!(
        "linux-guest {bus:?}: {}; reset {:.1} s; handled by the monitor: {:?}",
        phases.join(", "),
        b.out.elapsed.as_secs_f64(),
        b.out.monitor_emulated,
    );
}

#[test]
fn linux_on_avio_mounts_ext4_checks_a_file_pings_and_resets() {
    let Some(files) = guest_files() else { return };
    if !common::root() {
        return;
    }
    check(&boot(&files, Bus::Avio, "lgavio"), Bus::Avio, &files);
}

#[test]
fn linux_on_vio_only_mounts_ext4_checks_a_file_pings_and_resets() {
    let Some(files) = guest_files() else { return };
    if !common::root() {
        return;
    }
    let b = boot(&files, Bus::Vio, "lgvio");
    check(&b, Bus::Vio, &files);
    // Linux's own drivers bound the emulated hardware: no special driver for VIO.
    for want in ["ata_piix", "ne2k-pci"] {
        assert!(
            b.console.contains(want),
            "no {want} in the boot log:\n{}",
            b.console
        );
    }
}
