//! Real firmware: QEMU (software emulation, no disk, network boot only) PXE-boots from
//! `ignite server` in a network namespace, under SeaBIOS (the NIC's iPXE ROM) and under
//! OVMF (UEFI PXE → ipxe.efi over TFTP → iPXE). Both end with the Debian kernel running a
//! busybox initramfs that prints a marker on the serial console.
//!
//! Boot files come from `ignite netboot fetch-boot-files --kernel`, which keeps downloaded
//! packages in $IGNITE_CACHE_DIR (default /var/cache/ignite) so reruns are quick.

use std::process::Command;
use std::time::Duration;

use ignite_e2e::*;

const MARKER: &str = "IGNITE-NETBOOT-MARKER";

fn check_steps(log: &str, mac: &str) {
    for step in [
        format!("boot step dhcp-ack mac={mac}"),
        format!("boot step script mac={mac}"),
        format!("mac={mac} ip=10.77.0.1"), // address from the pool (.100-.199)
        "GET /files/debian/vmlinuz".to_string(),
        "GET /files/debian/initrd.img".to_string(),
    ] {
        assert!(log.contains(&step), "server log lacks {step:?}:\n{log}");
    }
}

#[test]
fn seabios_ipxe_rom_boots_kernel_from_ignite() {
    if !require_tools(&[
        "qemu-system-x86_64",
        "ip",
        "apt-get",
        "/usr/lib/ipxe/qemu/efi-e1000.rom",
    ]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = fetch_boot_files(tmp.path(), MARKER);
    let state = tmp.path().join("state");
    let mac = "52:54:00:77:00:10";
    run(Command::new(ignite_bin())
        .args([
            "client",
            "add",
            mac,
            "bios1",
            "install",
            "web",
            "--state-dir",
        ])
        .arg(&state));
    let mut lab = Lab::new("bios");
    let mut server = Server::start(&lab, &state, &boot, &[]);
    let serial = tmp.path().join("serial.log");
    let fw = vec!["-boot".to_string(), "n".to_string()];
    let mut args = fw.clone();
    args.extend(["-device".to_string(), format!("e1000,netdev=n0,mac={mac}")]);
    let text = lab.netboot_qemu(&args, &serial, MARKER, Duration::from_secs(150));
    let log = server.log_text();
    assert!(
        text.contains(&format!("{MARKER} ")),
        "no marker on the console:\n{text}\n--- server log:\n{log}"
    );
    assert!(
        text.contains("ignite.action=install ignite.profile=web"),
        "{text}"
    );
    assert!(text.contains(&format!("ignite.mac={mac}")), "{text}");
    // The NIC ROM is iPXE already: it gets the script URL straight away.
    assert!(
        log.contains(&format!("boot step dhcp-ack mac={mac}"))
            && log.contains("ipxe=true boot=http://10.77.0.1:8080/ipxe/52-54-00-77-00-10"),
        "{log}"
    );
    check_steps(&log, mac);
    server.stop();
}

#[test]
fn ovmf_uefi_pxe_chains_ipxe_over_tftp_and_boots_kernel() {
    let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    let vars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    if !require_tools(&["qemu-system-x86_64", "ip", "apt-get", code, vars]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let boot = fetch_boot_files(tmp.path(), MARKER);
    let state = tmp.path().join("state");
    let mac = "52:54:00:77:00:11";
    // Unknown client: the registry default decides.
    run(Command::new(ignite_bin())
        .args(["client", "default", "capture", "--state-dir"])
        .arg(&state));
    let my_vars = tmp.path().join("vars.fd");
    std::fs::copy(vars, &my_vars).unwrap();
    let mut lab = Lab::new("uefi");
    let mut server = Server::start(&lab, &state, &boot, &[]);
    let serial = tmp.path().join("serial.log");
    let fw = vec![
        "-machine".to_string(),
        "q35".to_string(),
        "-drive".to_string(),
        format!("if=pflash,format=raw,readonly=on,file={code}"),
        "-drive".to_string(),
        format!("if=pflash,format=raw,file={}", my_vars.display()),
    ];
    // No option ROM: OVMF's own virtio-net driver and PXE client do the first step, so
    // the chain goes through TFTP (with an iPXE ROM, iPXE would take over from the start).
    let mut args = fw.clone();
    args.extend([
        "-device".to_string(),
        format!("virtio-net-pci,romfile=,netdev=n0,mac={mac}"),
    ]);
    let text = lab.netboot_qemu(&args, &serial, MARKER, Duration::from_secs(170));
    let log = server.log_text();
    assert!(
        text.contains(&format!("{MARKER} ")),
        "no marker on the console:\n{text}\n--- server log:\n{log}"
    );
    assert!(text.contains("ignite.action=capture"), "{text}");
    // Firmware PXE (arch 7) got ipxe.efi over TFTP; then iPXE got its script.
    assert!(
        log.contains("firmware=efi-x64 ipxe=false boot=ipxe.efi"),
        "{log}"
    );
    assert!(
        log.contains(&format!("boot step tftp mac={mac}")) && log.contains("sent file ipxe.efi"),
        "{log}"
    );
    assert!(
        log.contains(
            "firmware=efi-x64 ipxe=true boot=http://10.77.0.1:8080/ipxe/52-54-00-77-00-11"
        ),
        "{log}"
    );
    check_steps(&log, mac);
    server.stop();
}
