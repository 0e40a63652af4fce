//! Secure Boot end to end: QEMU with OVMF built for Secure Boot and Microsoft's keys
//! enrolled (Debian's `ovmf`: OVMF_CODE_4M.secboot.fd + OVMF_VARS_4M.ms.fd, SMM on).
//!
//! First the refusal: a server serving iPXE (unsigned) to UEFI clients; the firmware fetches
//! ipxe.efi, refuses it without a word on the network, and moves on to its next boot option;
//! the server's boot log names the client, the file and the fix. Then the install: with
//! `[boot] uefi_secure_boot = true` the client boots Debian's signed shim → signed network
//! GRUB → signed kernel with the agent, installs the golden image (which carries
//! shim-signed and grub-efi-amd64-signed), reboots through the network GRUB's local boot
//! into shim → GRUB → kernel from its own disk, and the installed system reports Secure Boot
//! on (mokutil and the kernel's log).

use std::time::{Duration, Instant};

use ignite_e2e::lab::Lab;
use ignite_e2e::site::*;
use ignite_e2e::*;

/// Printed by the installed system on its first boot: Secure Boot's state as mokutil and
/// the kernel see it (spaces made `_`, one `key=value` word each).
const FIRSTBOOT_SCRIPT: &str = r#"sb=$(mokutil --sb-state 2>&1 | head -1 | tr ' ' _)
kernel=$(dmesg | grep -o 'secureboot: Secure boot [a-z]*' | head -1 | tr ' ' _)
echo "IGNITE-FIRSTBOOT host=$(hostname) sb=$sb kernel=$kernel end" >/dev/ttyS0"#;

const MAC: &str = "52:54:00:78:00:01";

#[test]
fn secure_boot_client_is_told_off_for_ipxe_then_installs_through_shim_and_boots_with_secure_boot_on(
) {
    if !lab_prerequisites(&[OVMF_SECBOOT_CODE, OVMF_MS_VARS]) {
        return;
    }
    let t0 = Instant::now();
    let site = Site::new(&[("lab", profile(&[&firstboot_hook(FIRSTBOOT_SCRIPT)]))]);
    let lab = Lab::new("sboot");
    eprintln!("site ready in {:?}", t0.elapsed());

    // The refusal, on a server that serves iPXE to UEFI clients.
    let t = Instant::now();
    {
        let server = site.server(&lab, "");
        let mut refused = Guest::start(
            &lab,
            site.tmp.path(),
            2,
            Firmware::UefiSecureBoot,
            1 << 30,
            1,
        );
        let note = "Secure Boot most likely refused ipxe.efi";
        while !server.log_text().contains(note) {
            assert!(
                !refused.exited() && t.elapsed() < Duration::from_secs(300),
                "no refusal noted:\n{}",
                failure(&refused, &server)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let log = server.log_text();
        let line = log.lines().find(|l| l.contains(note)).unwrap_or_default();
        assert!(
            line.contains("client 52:54:00:78:00:02 fetched ipxe.efi")
                && line.contains("uefi_secure_boot = true"),
            "{line}"
        );
        assert!(
            refused.console().contains("Access Denied"),
            "the firmware did not refuse ipxe.efi:\n{}",
            failure(&refused, &server)
        );
    }
    eprintln!("refusal noted in {:?}", t.elapsed());

    // The signed chain: prepared like iPXE, and every file of it signed.
    let listing = site.prepare_with("uefi_secure_boot = true\n");
    for file in ["shimx64.efi", "grubx64.efi", "debian/vmlinuz"] {
        assert!(
            listing
                .lines()
                .any(|l| l.contains(file) && l.trim_end().ends_with("present")),
            "after --prepare, {file} is not present and signed:\n{listing}"
        );
    }
    let server = site.server_with(&lab, "", "uefi_secure_boot = true\n");
    site.client(MAC, "g1", "lab");
    let t = Instant::now();
    let mut guest = Guest::start(
        &lab,
        site.tmp.path(),
        1,
        Firmware::UefiSecureBoot,
        4 << 30,
        1,
    );
    let limit = Duration::from_secs(1500);
    while guest.firstboot().is_none() {
        assert!(
            !guest.exited(),
            "the guest stopped before its installed system reported:\n{}",
            failure(&guest, &server)
        );
        assert!(
            t.elapsed() < limit,
            "no report within {limit:?}:\n{}",
            failure(&guest, &server)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!(
        "install and first boot with Secure Boot in {:?}",
        t.elapsed()
    );
    let id = guest.firstboot().unwrap();
    assert_eq!(id["host"], "lab-780001", "{id:?}");
    assert_eq!(id["sb"], "SecureBoot_enabled", "{id:?}");
    assert_eq!(id["kernel"], "secureboot:_Secure_boot_enabled", "{id:?}");

    let console = strip_ansi(&guest.console());
    // The network GRUB got this client's plan: the agent's command line, token included.
    let agent = first_command_line(&console);
    assert!(
        agent.contains("ignite.action=install ignite.profile=lab ignite.token="),
        "{agent}"
    );
    assert!(console.contains("Ignite: loading kernel"), "{console}");
    let log = server.log_text();
    for fetched in [
        "shimx64.efi",
        "grubx64.efi",
        "grub/ignite/52:54:00:78:00:01.cfg",
    ] {
        assert!(
            log.contains(fetched),
            "the server never sent {fetched}:\n{log}"
        );
    }
    // Rebooted from its own disk: the network GRUB handed over, the disk's GRUB loaded the
    // installed kernel (GRUB names the path it loaded) with Secure Boot still on.
    let after = &console[console.rfind("install done").expect("install done")..];
    assert!(after.contains("Ignite: booting from local disk"), "{after}");
    let installed = first_command_line(after);
    assert!(
        installed.starts_with("BOOT_IMAGE=/boot/vmlinuz-"),
        "{installed}"
    );
    eprintln!("test took {:?} in all", t0.elapsed());
}

/// The command line of the first kernel that printed one on `console`.
fn first_command_line(console: &str) -> &str {
    console
        .lines()
        .find_map(|l| l.split_once("Command line: ").map(|x| x.1))
        .unwrap_or_else(|| panic!("no kernel command line:\n{console}"))
}

/// What a failure shows: the console's tail and the server's log.
fn failure(guest: &Guest, server: &ignite_e2e::lab::Server) -> String {
    format!(
        "--- {} console (tail):\n{}\n--- server log:\n{}",
        guest.name,
        tail(&strip_ansi(&guest.console()), 60),
        tail(&server.log_text(), 200)
    )
}
