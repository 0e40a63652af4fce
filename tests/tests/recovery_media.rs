//! Recovery media end to end: a guest's disk (a GPT with an ext4 file system holding a
//! hostname, and a patterned region outside any partition) is captured, `ignite recovery
//! media --yes` writes a bootable ISO with Debian's kernel and the agent initramfs, and a
//! QEMU machine (software emulation) with an empty disk and no network boots the ISO from its
//! CD drive, once with SeaBIOS and once with OVMF (UEFI); the agent restores the capture and reboots (QEMU's -no-reboot
//! ends it there). The disk must then equal, byte for byte, `ignite recovery restore --to`
//! of the same capture.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ignite_e2e::site::{Firmware, OVMF_CODE, OVMF_VARS};
use ignite_e2e::*;

const DISK: u64 = 64 << 20;
const HOSTNAME: &str = "rmedia-restored";
const DONE: &str = "RECOVERY-MEDIA-DONE";

fn ig(state: &Path, args: &[&str]) -> String {
    run(ignite_cmd(args).env("IGNITE_STATE_DIR", state))
}

/// A GPT with one ext4 partition (1 MiB..41 MiB) holding /etc/hostname, and 1 MiB of
/// pattern at 48 MiB that no file system owns.
fn fill_disk(image: &Path, scratch: &Path) {
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+40M", "-t", "1:8300"])
        .arg(image));
    let tree = scratch.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), format!("{HOSTNAME}\n")).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "offset=1048576", "-d"])
        .arg(&tree)
        .arg(image)
        .arg("40M"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .unwrap()
        .write_all_at(&pattern(1 << 20, 7), 48 << 20)
        .unwrap();
}

/// Boots `iso` on a machine with an empty disk and no network under `firmware` (`fw` in messages); returns the
/// disk once the agent has restored and rebooted, and checks its console said so.
fn boot_and_restore(dir: &Path, iso: &Path, (firmware, fw): (Firmware, &str)) -> Vec<u8> {
    let target = dir.join(format!("{fw}-disk.img"));
    std::fs::File::create(&target)
        .unwrap()
        .set_len(DISK)
        .unwrap();
    let serial = dir.join(format!("{fw}-serial.log"));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(EMULATED_CPU)
        .args(["-m", "1024", "-display", "none", "-monitor", "none"])
        // The agent reboots when done: QEMU exits instead.
        .args(["-no-reboot", "-nic", "none", "-boot", "d", "-cdrom"])
        .arg(iso)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", target.display()))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()));
    if firmware == Firmware::Uefi {
        let vars = dir.join("ovmf-vars.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        qemu.arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let qemu_log = dir.join(format!("{fw}-qemu.log"));
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&qemu_log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let limit = Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let console = format!(
        "{}\n--- QEMU: {}",
        // OVMF's output is not all UTF-8.
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&serial).unwrap_or_default()
        )),
        std::fs::read_to_string(&qemu_log).unwrap_or_default()
    );
    assert!(
        status.is_some(),
        "{fw}: the machine did not finish within {} s:\n{}",
        limit.as_secs(),
        tail(&console, 60)
    );
    assert!(
        console.contains(DONE),
        "{fw}: no {DONE} on the console (QEMU {status:?} after {:.1} s):\n{}",
        t.elapsed().as_secs_f64(),
        tail(&console, 60)
    );
    eprintln!(
        "{fw}: booted from the ISO, restored and rebooted in {:.1} s; {}",
        t.elapsed().as_secs_f64(),
        console
            .lines()
            .find(|l| l.contains(DONE))
            .unwrap_or_default()
    );
    std::fs::read(&target).unwrap()
}

#[test]
fn recovery_iso_restores_a_capture_onto_an_empty_disk_without_network() {
    if !require_tools(&[
        "qemu-system-x86_64",
        "grub-mkrescue",
        "xorriso",
        "mformat",
        "sgdisk",
        "mkfs.ext4",
        "apt-get",
        "dpkg-deb",
        "mkfs.xfs",
        "mkfs.vfat",
        "busybox",
    ]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    ig(
        s,
        &[
            "vm", "create", "g", "--disk", "64M", "--boot", "disk", "--engine", "bundled",
        ],
    );
    fill_disk(&s.join("guests/g/disk0.img"), tmp.path());
    ig(s, &["recovery", "capture", "g"]);

    // The boot directory as `ignite server --prepare` lays it out.
    let boot = s.join("boot");
    ig(
        s,
        &[
            "netboot",
            "fetch-boot-files",
            "--kernel",
            "--boot-dir",
            boot.to_str().unwrap(),
        ],
    );
    let version = bzimage_version(&std::fs::read(boot.join("debian/vmlinuz")).unwrap());
    std::fs::create_dir_all(boot.join("ignite")).unwrap();
    ig(
        s,
        &[
            "netboot",
            "build-initramfs",
            "--kernel-version",
            &version,
            "--output",
            boot.join("ignite/initrd.img").to_str().unwrap(),
        ],
    );

    let iso = tmp.path().join("g.iso");
    let out = ig(
        s,
        &[
            "recovery",
            "media",
            "g",
            "--iso",
            iso.to_str().unwrap(),
            "--yes",
        ],
    );
    eprintln!("{out}");
    assert!(out.contains("recovery media for g@"), "{out}");
    let reference = tmp.path().join("reference.img");
    ig(
        s,
        &[
            "recovery",
            "restore",
            "g",
            "--to",
            reference.to_str().unwrap(),
        ],
    );

    let want = std::fs::read(&reference).unwrap();
    let name = format!("{HOSTNAME}\n");
    assert!(
        want.windows(name.len()).any(|w| w == name.as_bytes()),
        "the capture does not hold the hostname written into it"
    );
    for (firmware, fw) in [(Firmware::Bios, "BIOS"), (Firmware::Uefi, "UEFI")] {
        let got = boot_and_restore(tmp.path(), &iso, (firmware, fw));
        assert_eq!(got.len(), want.len());
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!("{fw}: the restored disk differs from `recovery restore --to` at byte {at}");
        }
    }
}
