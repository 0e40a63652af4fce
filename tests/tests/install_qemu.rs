//! Network installs end to end: real firmware (SeaBIOS + iPXE, OVMF) in QEMU under software
//! emulation PXE-boots the Ignite agent from `ignite server` in a network namespace, the
//! agent installs the golden Debian image (scripts/fixtures/golden) onto the guest's empty
//! virtio disk with a profile, reports its phases, and the guest reboots from its own disk
//! into the installed system, which prints its identity on the serial console.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ignite_e2e::site::*;
use ignite_e2e::*;

/// Installed by a profile hook: on the first boot of the installed system, print the
/// guest's identity on the serial console, then power off (which ends QEMU).
const FIRSTBOOT_HOOK: &str = r#"cat >/usr/local/sbin/ignite-firstboot <<'EOF'
#!/bin/sh
key=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)
echo "IGNITE-FIRSTBOOT host=$(hostname) machine-id=$(cat /etc/machine-id) sshkey=$key root=$(findmnt -no FSTYPE /) var=$(findmnt -no FSTYPE /var) boot=$(findmnt -no FSTYPE /boot) end" >/dev/ttyS0
EOF
chmod 755 /usr/local/sbin/ignite-firstboot
cat >/etc/systemd/system/ignite-firstboot.service <<'EOF'
[Unit]
Description=Print this machine's identity on the serial console (Ignite tests)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ignite-firstboot
ExecStartPost=/bin/systemctl poweroff
[Install]
WantedBy=multi-user.target
EOF
systemctl enable ignite-firstboot.service"#;

/// The tests here each run four software-emulated guests; on two cores they take turns.
static QEMU_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn prerequisites() -> bool {
    require_tools(&[
        "qemu-system-x86_64",
        "ip",
        "apt-get",
        "debootstrap",
        OVMF_CODE,
        OVMF_VARS,
        "/usr/lib/ipxe/qemu/efi-virtio.rom",
    ])
}

/// How a guest boots its installed system: which firmware, which loader, and what the
/// loader leaves on the serial console.
struct Boot {
    fw: Firmware,
    profile: &'static str,
}

impl Boot {
    /// Checks that the installed system was started by this guest's loader. `console` is
    /// what followed the agent's "install done".
    fn check(&self, name: &str, console: &str) {
        let cmdline = console
            .lines()
            .filter_map(|l| l.split_once("Command line: ").map(|x| x.1))
            .next_back()
            .unwrap_or_else(|| {
                panic!("{name}: no kernel command line after the install:\n{console}")
            });
        match (self.profile, self.fw) {
            // GRUB passes the path it loaded; it adds no initrd= of its own.
            ("lab", _) => assert!(
                cmdline.starts_with("BOOT_IMAGE=/boot/vmlinuz-") && !cmdline.contains("initrd="),
                "{name}: not booted by GRUB from /boot in root: {cmdline}"
            ),
            // Syslinux (BIOS) names the kernel on the /boot file system, says so on the
            // serial port (its SERIAL directive) and adds initrd=.
            ("lab-extlinux", Firmware::Bios) => {
                assert!(
                    console.contains("SYSLINUX 6.04") && console.contains("Loading /vmlinuz-"),
                    "{name}: no Syslinux banner and kernel load on the console:\n{console}"
                );
                assert!(
                    cmdline.starts_with("BOOT_IMAGE=/vmlinuz-")
                        && cmdline.contains(" initrd=/initrd.img-"),
                    "{name}: not booted by extlinux from the /boot partition: {cmdline}"
                );
            }
            // syslinux.efi loads the copies on the ESP.
            ("lab-extlinux", Firmware::Uefi) => {
                assert!(
                    console.contains("Loading /EFI/BOOT/vmlinuz-"),
                    "{name}: syslinux.efi did not report loading the kernel:\n{console}"
                );
                assert!(
                    cmdline.starts_with("BOOT_IMAGE=/EFI/BOOT/vmlinuz-")
                        && cmdline.contains(" initrd=/EFI/BOOT/initrd.img-"),
                    "{name}: not booted by syslinux.efi from the ESP: {cmdline}"
                );
            }
            (p, _) => panic!("unknown profile {p}"),
        }
        eprintln!("{name}: booted by {}: {cmdline}", self.profile);
        for l in console
            .lines()
            .filter(|l| l.contains("SYSLINUX") || l.contains("Loading /"))
        {
            eprintln!("{name}:   {l}");
        }
    }
}

/// Four guests install at once from one server — two under SeaBIOS + iPXE, two under OVMF,
/// one of each booting with GRUB and one with Syslinux — report done, reboot from their own
/// disks through their own loaders and come up with distinct identities.
#[test]
fn four_guests_bios_and_uefi_install_at_once_and_boot_their_own_disks() {
    if !prerequisites() {
        return;
    }
    let _turn = QEMU_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new(&[
        ("lab", profile(&[FIRSTBOOT_HOOK])),
        ("lab-extlinux", extlinux_profile()),
    ]);
    let lab = Lab::new("inst4");
    let mut server = site.server(&lab, "");
    let boots = [
        Boot {
            fw: Firmware::Bios,
            profile: "lab",
        },
        Boot {
            fw: Firmware::Uefi,
            profile: "lab",
        },
        Boot {
            fw: Firmware::Bios,
            profile: "lab-extlinux",
        },
        Boot {
            fw: Firmware::Uefi,
            profile: "lab-extlinux",
        },
    ];
    let mut guests = Vec::new();
    for (i, b) in boots.iter().enumerate() {
        let n = i as u8 + 1;
        site.client(
            &format!("52:54:00:78:00:{n:02x}"),
            &format!("g{n}"),
            b.profile,
        );
        guests.push(Guest::start(&lab, site.tmp.path(), n, b.fw, 4 << 30, 1));
    }
    let t = Instant::now();
    // The server dies (SIGKILL) while guests are extracting and comes back: the agents
    // retry, resume where they were, and finish. (UEFI guests boot later than BIOS ones, so
    // not all four need be extracting at that moment.)
    wait_until(
        "guests to be extracting",
        Duration::from_secs(600),
        || {
            let list = site.ignite(&["client", "list"]);
            list.lines().filter(|l| l.contains("extracting")).count() >= 2
        },
        || seen(&site, &server, &guests),
    );
    server.kill();
    std::thread::sleep(Duration::from_secs(5));
    let server = site.server(&lab, "");
    eprintln!(
        "server killed and restarted mid-extract after {:?}",
        t.elapsed()
    );
    let limit = Duration::from_secs(1500);
    while guests.iter().any(|g| g.firstboot().is_none()) {
        for g in &mut guests {
            if g.exited() && g.firstboot().is_none() {
                panic!(
                    "guest {} stopped before its installed system reported:\n{}\n--- clients:\n{}\n--- server log:\n{}",
                    g.name,
                    g.console(),
                    site.ignite(&["client", "list"]),
                    server.log_text()
                );
            }
        }
        assert!(
            t.elapsed() < limit,
            "not every guest came up within {limit:?}:\n{}\n--- server log:\n{}",
            site.ignite(&["client", "list"]),
            server.log_text()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("four installs and first boots in {:?}", t.elapsed());
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for (g, b) in guests.iter().zip(&boots) {
        let id = g.firstboot().unwrap();
        let want = format!("lab-{}", &g.mac.replace(':', "")[6..]);
        assert_eq!(id["host"], want, "{}", g.console());
        assert_eq!(id["root"], "ext4");
        assert_eq!(id["var"], "xfs");
        let boot_fs = if b.profile == "lab-extlinux" {
            "ext4"
        } else {
            ""
        };
        assert_eq!(id["boot"], boot_fs, "{id:?}");
        let console = strip_ansi(&g.console());
        let after = console
            .rfind("install done")
            .map(|i| &console[i..])
            .unwrap_or_else(|| panic!("{}: no \"install done\" on the console", g.name));
        b.check(&g.name, after);
        assert_eq!(id["machine-id"].len(), 32, "{id:?}");
        assert!(
            ids.insert(id["machine-id"].clone()),
            "machine-id repeats: {id:?}"
        );
        assert!(
            keys.insert(id["sshkey"].clone()),
            "SSH host key repeats: {id:?}"
        );
        let show = site.ignite(&["client", "show", &g.name]);
        eprintln!("{show}");
        assert!(show.contains("done"), "{show}");
    }
}

/// Everything that can go wrong before the first byte is written ends with a clear error,
/// reported to the server and shown on the guest's console (which keeps a shell): a broken
/// profile, a profile naming an archive the store lacks, a disk too small for the layout.
/// (A server killed mid-install is in the four-guest test: the agents resume.)
#[test]
fn broken_profile_missing_archive_and_small_disk_fail_clearly() {
    if !prerequisites() {
        return;
    }
    let _turn = QEMU_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let broken = "archive = \"debian-12\"\n[disk]\ntable = \"gpt\"\nsize_typo = 3\n".to_string();
    let ghost = profile(&[]).replace("archive = \"debian-12\"", "archive = \"no-such-image\"");
    let site = Site::new(&[("lab", profile(&[])), ("broken", broken), ("ghost", ghost)]);
    let lab = Lab::new("instfail");
    let server = site.server(&lab, "");
    let cases = [
        ("broken", 4u64 << 30, "broken.toml"),
        ("ghost", 4 << 30, "no-such-image"),
        ("lab", 1 << 30, "needs at least"),
    ];
    let mut guests = Vec::new();
    for (i, (profile, size, _)) in cases.iter().enumerate() {
        let n = i as u8 + 11;
        site.client(
            &format!("52:54:00:78:00:{n:02x}"),
            &format!("g{n}"),
            profile,
        );
        guests.push(Guest::start(
            &lab,
            site.tmp.path(),
            n,
            Firmware::Bios,
            *size,
            1,
        ));
    }
    let t = Instant::now();
    for (g, (_, _, why)) in guests.iter().zip(cases.iter()) {
        wait_until(
            &format!("{} to report its failure", g.name),
            Duration::from_secs(600),
            || {
                let show = site.ignite(&["client", "show", &g.name]);
                show.contains("failed") && show.contains(why)
            },
            || seen(&site, &server, &guests),
        );
        wait_until(
            &format!("{}'s console to show the error", g.name),
            Duration::from_secs(60),
            || g.console().contains(why),
            || seen(&site, &server, &guests),
        );
    }
    eprintln!("three failures reported after {:?}", t.elapsed());
}

/// What a failing test saw: every guest's console tail, the clients, the server log tail.
fn seen(site: &Site, server: &Server, guests: &[Guest]) -> String {
    let mut out = String::new();
    for g in guests {
        out += &format!(
            "--- {} console (tail):\n{}\n",
            g.name,
            tail(&strip_ansi(&g.console()), 40)
        );
    }
    out += &format!("--- clients:\n{}\n", site.ignite(&["client", "list"]));
    out += &format!("--- server log (tail):\n{}", tail(&server.log_text(), 60));
    out
}
