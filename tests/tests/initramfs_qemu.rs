//! The install initramfs boots: `ignite netboot build-initramfs` for Debian's kernel, booted
//! under QEMU (software emulation, no network needed) with `ignite.selfcheck=1`: the agent
//! runs as /init, loads its modules, sees the virtio disk and the e1000 NIC, runs each mkfs
//! tool and busybox, prints its marker and powers the machine off.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ignite_e2e::*;

const SELFCHECK_OK: &str = "IGNITE-AGENT-SELFCHECK-OK";

#[test]
fn agent_initramfs_boots_debian_kernel_and_passes_its_selfcheck() {
    if !require_tools(&[
        "qemu-system-x86_64",
        "apt-get",
        "dpkg-deb",
        "mkfs.xfs",
        "mkfs.vfat",
        "busybox",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    run(Command::new(ignite_bin())
        .args(["netboot", "fetch-boot-files", "--kernel", "--boot-dir"])
        .arg(&boot));
    let kernel = boot.join("debian/vmlinuz");
    let version = bzimage_version(&std::fs::read(&kernel).unwrap());
    let initrd = dir.path().join("agent.img");
    let t = Instant::now();
    run(Command::new(ignite_bin())
        .args([
            "netboot",
            "build-initramfs",
            "--kernel-version",
            &version,
            "--output",
        ])
        .arg(&initrd));
    eprintln!(
        "initramfs for {version} built in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();

    let serial = dir.path().join("serial.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args(EMULATED_CPU)
        .args([
            // A debug build of ignite is ~200 MB: unpacked in the initramfs it needs the room.
            "-m",
            "1024",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 ignite.selfcheck=1 ignite.after=poweroff",
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .args(["-nic", "none", "-device", "e1000", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        status.is_some(),
        "QEMU did not power off within 120 s:\n{console}"
    );
    eprintln!(
        "booted and powered off in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        console.contains(SELFCHECK_OK),
        "no self-check marker on the console:\n{console}"
    );
    assert!(
        console.contains("ignite-agent: disk /dev/vda 67108864 bytes"),
        "{console}"
    );
    assert!(console.contains("modules loaded"), "{console}");
    // Under BIOS there are no EFI variables, and TCG's CPU has no SSE4.2 for crc32c-intel;
    // every other module must load.
    for line in console.lines().filter(|l| l.contains("module not loaded")) {
        assert!(
            line.contains("efivarfs.ko: No such device")
                || line.contains("crc32c-intel.ko: No such device"),
            "{line}\n{console}"
        );
    }
    for tool in ["mke2fs", "mkfs.xfs", "mkfs.vfat", "mkswap", "sh"] {
        assert!(console.contains(&format!("tool {tool} runs")), "{console}");
    }
    assert!(console.contains("network interfaces: eth0"), "{console}");
}
