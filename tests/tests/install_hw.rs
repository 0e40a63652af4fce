//! Network installs on the hardware people own (issue 16), end to end under QEMU: one lab,
//! one `ignite server`, a matrix of guests at once, each installing the golden image onto its
//! own disk and booting from it — NVMe under SeaBIOS (on an e1000e NIC instead of
//! virtio-net) and under OVMF, a 4K-native virtio disk under OVMF, a SATA disk on AHCI, a
//! SCSI disk behind an LSI MegaRAID SAS HBA, and a UEFI machine with two disks that gets
//! them mirrored (md RAID1, LVM on it, an ESP on each) and still boots with its first disk
//! taken out — and two that cannot install, whose failure the server shows: a machine with
//! no disk (the agent reports it, naming the controllers it saw) and one whose NIC the
//! agent has no driver for (the server marks it `agent silent`).

use std::time::{Duration, Instant};

use ignite_e2e::site::*;
use ignite_e2e::*;

/// Run on the installed system's first boot (see [`firstboot_hook`]): what it booted from,
/// as the kernel sees it (the root file system's disk, its driver, the SCSI host's driver
/// behind it, its logical sector size, the NIC's driver).
const HW_SCRIPT: &str = r#"src=$(findmnt -no SOURCE /)
disk=$(lsblk -no PKNAME "$src" | head -1)
dev=/sys/block/$disk/device
[ -e $dev/driver ] || dev=$dev/device
drv=$(basename "$(readlink -f $dev/driver)")
hba=$(cat "$(readlink -f /sys/block/$disk/device)"/../../scsi_host/*/proc_name 2>/dev/null || echo -)
nic=$(ls /sys/class/net | grep -v '^lo$' | head -1)
echo "IGNITE-FIRSTBOOT host=$(hostname) disk=$disk lbs=$(cat /sys/block/$disk/queue/logical_block_size) drv=$drv hba=$hba nicdrv=$(basename "$(readlink -f /sys/class/net/$nic/device/driver)") root=$(findmnt -no FSTYPE /) var=$(findmnt -no FSTYPE /var) efi=$(test -d /sys/firmware/efi && echo yes || echo no) end" >/dev/ttyS0"#;

/// The RAID machine's first-boot report (profile `raid`: profiles/examples/raid1-lvm.toml):
/// what `/`, `/var` and swap are on, the array's state and members as /proc/mdstat has them
/// (`[UU]`: both in sync, `[_U]`: one missing), the ESPs mounted, and whether a change to the
/// first ESP's loader reaches the second (`espsync`: the path unit at work; `none` when only
/// one ESP is there).
const RAID_SCRIPT: &str = r##"root=$(findmnt -no SOURCE /)
swap=$(swapon --noheadings --show=NAME | head -1)
md=$(awk '/^md/ {s=$3"-"$4; getline; print s"-"$NF; exit}' /proc/mdstat)
members=$(awk '/^md/ {for (i = 5; i <= NF; i++) printf "%s,", $i; exit}' /proc/mdstat)
esps=$(findmnt -rno TARGET | grep '^/boot/efi' | sort | tr '\n' ,)
sync=none
if mountpoint -q /boot/efi && mountpoint -q /boot/efi2; then
  want="# ignite sync check $(cat /proc/sys/kernel/random/uuid)"
  echo "$want" >>/boot/efi/EFI/BOOT/grub.cfg
  sync=no
  for i in $(seq 120); do
    if [ "$(tail -1 /boot/efi2/EFI/BOOT/grub.cfg)" = "$want" ]; then sync=yes; break; fi
    sleep 1
  done
fi
echo "IGNITE-FIRSTBOOT host=$(hostname) root=$(lsblk -no TYPE $root) rootfs=$(findmnt -no FSTYPE /) var=$(lsblk -no TYPE $(findmnt -no SOURCE /var)) swap=$(lsblk -no TYPE $swap) md=$md members=$members esps=$esps espsync=$sync efi=$(test -d /sys/firmware/efi && echo yes || echo no) end" >/dev/ttyS0"##;

/// Where the RAID machine is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RaidStep {
    /// Installing, then booting on both disks.
    FirstBoot,
    /// Reported; powering off.
    PoweringOff,
    /// Started again with only its second disk.
    Degraded,
    Done,
}

/// What both of the RAID machine's boots report: `/`, `/var` and swap on LVM, under UEFI.
fn assert_on_lvm(id: &std::collections::HashMap<String, String>) {
    for (k, v) in [
        ("root", "lvm"),
        ("rootfs", "ext4"),
        ("var", "lvm"),
        ("swap", "lvm"),
        ("efi", "yes"),
        ("host", "raid"),
    ] {
        assert_eq!(id[k], v, "{k}: {id:?}");
    }
}

/// One look at the RAID machine: checks a report as it comes and moves it on. Its first
/// boot: installed on both disks, both members in sync, an ESP on each, a change to the
/// first copied onto the second. Then its first disk is taken out: the second alone boots
/// (its own ESP, the array degraded).
fn raid_progress(
    at: RaidStep,
    raid: &mut Guest,
    lab: &Lab,
    site: &Site,
    context: &dyn Fn() -> String,
) -> RaidStep {
    let stopped = |raid: &Guest, what: &str| -> ! {
        panic!(
            "the RAID machine stopped before its {what} boot reported:\n{}\n{}",
            tail(&strip_ansi(&raid.console()), 80),
            context()
        )
    };
    match at {
        RaidStep::FirstBoot => match raid.firstboot() {
            Some(id) => {
                eprintln!("raid (both disks): {id:?}");
                assert_on_lvm(&id);
                assert!(id["md"].starts_with("active-raid1-[UU]"), "{id:?}");
                assert!(
                    id["members"].contains("vda2[") && id["members"].contains("vdb2["),
                    "{id:?}"
                );
                assert_eq!(id["esps"], "/boot/efi,/boot/efi2,", "{id:?}");
                assert_eq!(id["espsync"], "yes", "{id:?}");
                let text = site.ignite(&["client", "show", "raid"]);
                assert!(text.contains("install: profile raid, done"), "{text}");
                RaidStep::PoweringOff
            }
            None if raid.exited() => stopped(raid, "first"),
            None => at,
        },
        RaidStep::PoweringOff if raid.exited() => {
            raid.boot_with_only_disk(lab, "degraded", 1);
            RaidStep::Degraded
        }
        RaidStep::Degraded => match raid.firstboot() {
            Some(id) => {
                eprintln!("raid (second disk alone): {id:?}");
                assert_on_lvm(&id);
                assert!(id["md"].starts_with("active-raid1-[_U]"), "{id:?}");
                assert_eq!(id["members"], "vda2[1],", "the second disk, alone: {id:?}");
                assert_eq!(id["esps"], "/boot/efi2,", "{id:?}");
                RaidStep::Done
            }
            None if raid.exited() => stopped(raid, "degraded"),
            None => at,
        },
        RaidStep::PoweringOff | RaidStep::Done => at,
    }
}

/// The server's quiet time before an agent it handed out is called silent: longer than a
/// kernel takes from the agent's download to its first report with seven emulated guests
/// on two busy cores (over 120 s was seen). The NIC-less guest is marked while the others
/// install, so this costs the test no time.
const SILENT_SECS: u64 = 300;

/// One guest of the matrix and what its installed system must report.
struct Case {
    name: &'static str,
    fw: Firmware,
    hw: Hardware,
    /// The root disk's kernel name, its driver and the SCSI host driver behind it (`-`:
    /// none), and its logical sector size.
    disk: &'static str,
    driver: &'static str,
    hba: &'static str,
    lbs: &'static str,
    nic_driver: &'static str,
}

fn installs() -> Vec<Case> {
    let on = |nic, bus| Hardware {
        nic,
        disks: vec![bus],
    };
    vec![
        // The one guest on an Intel 82574L (e1000e) instead of virtio-net.
        Case {
            name: "nvme-bios-e1000e",
            fw: Firmware::Bios,
            hw: on("e1000e", DiskBus::Nvme),
            disk: "nvme0n1",
            driver: "nvme",
            hba: "-",
            lbs: "512",
            nic_driver: "e1000e",
        },
        Case {
            name: "nvme-uefi",
            fw: Firmware::Uefi,
            hw: on("virtio-net-pci", DiskBus::Nvme),
            disk: "nvme0n1",
            driver: "nvme",
            hba: "-",
            lbs: "512",
            nic_driver: "virtio_net",
        },
        Case {
            name: "4kn-uefi",
            fw: Firmware::Uefi,
            hw: on("virtio-net-pci", DiskBus::Virtio4k),
            disk: "vda",
            driver: "virtio_blk",
            hba: "-",
            lbs: "4096",
            nic_driver: "virtio_net",
        },
        Case {
            name: "ahci",
            fw: Firmware::Bios,
            hw: on("virtio-net-pci", DiskBus::Ahci),
            disk: "sda",
            driver: "sd",
            hba: "ahci",
            lbs: "512",
            nic_driver: "virtio_net",
        },
        Case {
            name: "megasas",
            fw: Firmware::Bios,
            hw: on("virtio-net-pci", DiskBus::Megasas),
            disk: "sda",
            driver: "sd",
            hba: "megaraid_sas",
            lbs: "512",
            nic_driver: "virtio_net",
        },
    ]
}

/// The whole matrix in one lab: five installs on different hardware boot their own disks,
/// the disk-less machine's failure names the cause within a minute of the agent's start,
/// and the machine whose NIC has no driver is marked `agent silent` with its last boot step.
#[test]
fn a_matrix_of_machines_installs_at_once_and_failures_show_in_client_show() {
    if !lab_prerequisites(&[
        "/usr/lib/ipxe/qemu/efi-e1000e.rom",
        "/usr/lib/ipxe/qemu/efi-rtl8139.rom",
    ]) {
        return;
    }
    let t = Instant::now();
    // Top-level keys go before the first table.
    let raid_profile = format!(
        "hooks = ['''\n{}''']\n{}",
        firstboot_hook(RAID_SCRIPT),
        include_str!("../../profiles/examples/raid1-lvm.toml")
    );
    let site = Site::new(&[
        ("lab", profile(&[&firstboot_hook(HW_SCRIPT)])),
        ("raid", raid_profile),
    ]);
    let lab = Lab::new("hw");
    let server = site.server_with(
        &lab,
        "",
        &format!("[install]\nagent_silent_secs = {SILENT_SECS}\n"),
    );
    let cases = installs();
    let mut guests = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let n = i as u8 + 1;
        site.client(&format!("52:54:00:78:00:{n:02x}"), c.name, "lab");
        guests.push(Guest::start_on(
            &lab,
            site.tmp.path(),
            n,
            c.fw,
            c.hw.clone(),
            3 << 30,
            1,
        ));
    }
    let (nodisk_n, silent_n) = (cases.len() as u8 + 1, cases.len() as u8 + 2);
    // Two virtio disks under OVMF, mirrored: an ESP on each is what makes either bootable.
    let raid_n = cases.len() as u8 + 3;
    site.client(&format!("52:54:00:78:00:{raid_n:02x}"), "raid", "raid");
    let mut raid = Guest::start_on(
        &lab,
        site.tmp.path(),
        raid_n,
        Firmware::Uefi,
        Hardware {
            nic: "virtio-net-pci",
            disks: vec![DiskBus::Virtio, DiskBus::Virtio],
        },
        3 << 30,
        1,
    );
    site.client(&format!("52:54:00:78:00:{nodisk_n:02x}"), "nodisk", "lab");
    site.client(&format!("52:54:00:78:00:{silent_n:02x}"), "nonic", "lab");
    let mut nodisk = Some(Guest::start_on(
        &lab,
        site.tmp.path(),
        nodisk_n,
        Firmware::Bios,
        Hardware {
            nic: "virtio-net-pci",
            disks: vec![],
        },
        0,
        1,
    ));
    // An RTL8139: iPXE drives it, the agent carries no 8139too.
    let mut nonic = Some(Guest::start_on(
        &lab,
        site.tmp.path(),
        silent_n,
        Firmware::Bios,
        Hardware {
            nic: "rtl8139",
            disks: vec![DiskBus::Virtio],
        },
        1 << 30,
        1,
    ));
    let show = |name: &str| site.ignite(&["client", "show", name]);
    let context = || {
        format!(
            "--- clients:\n{}\n--- server log (tail):\n{}",
            site.ignite(&["client", "list"]),
            tail(&server.log_text(), 40)
        )
    };

    // `client show NAME` once it contains `needle`, waiting up to `secs`; on timeout, the
    // guest's console and the server's view.
    let show_once = |name: &str, needle: &str, guest: &Guest, secs: u64| {
        wait_until(
            &format!("{needle:?} in `client show {name}`"),
            Duration::from_secs(secs),
            || show(name).contains(needle),
            || {
                format!(
                    "--- {name} console:\n{}\n{}",
                    tail(&strip_ansi(&guest.console()), 30),
                    context()
                )
            },
        );
        show(name)
    };

    // The disk-less machine: its agent reports the missing disk, naming the controller it
    // found (PIIX IDE, with its driver, and nothing on it).
    let text = show_once(
        "nodisk",
        "cause: no disk appeared",
        nodisk.as_ref().unwrap(),
        600,
    );
    eprintln!("{text}");
    assert!(
        text.contains("cause: no disk appeared within 20 s; storage controllers seen: 8086:7010 IDE controller at 0000:00:01.1 (driver ata_piix)"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&site.ignite(&["client", "show", "nodisk", "--json"])).unwrap();
    let phases = json["phases"].as_array().unwrap();
    let booted = phases
        .iter()
        .find(|p| p["phase"] == "booted")
        .unwrap_or_else(|| panic!("no booted phase: {json}"))["time_ms"]
        .as_i64()
        .unwrap();
    let failed = phases.last().unwrap()["time_ms"].as_i64().unwrap();
    assert!(
        failed - booted < 60_000,
        "the failure came {} ms after the agent had an address",
        failed - booted
    );
    eprintln!(
        "nodisk: failure reported {:.1} s after the agent had an address, {:?} after the start",
        (failed - booted) as f64 / 1000.0,
        t.elapsed()
    );
    nodisk.take();

    // The machine whose NIC has no driver: the agent fails before it has an address (its
    // console says why), and the server calls it silent, with the last boot step it saw.
    let text = show_once(
        "nonic",
        "agent silent",
        nonic.as_ref().unwrap(),
        600 + SILENT_SECS,
    );
    eprintln!("{text}");
    assert!(
        text.contains(
            "cause: agent silent: the client fetched the agent (GET /files/ignite/initrd.img"
        ),
        "{text}"
    );
    // The agent's own word on its console (it waits for the NIC on its own, slow, clock).
    wait_until(
        "the NIC-less agent to name the NIC it has no driver for",
        Duration::from_secs(300),
        || {
            nonic
                .as_ref()
                .unwrap()
                .console()
                .contains("no driver for device PCI ID 10ec:8139 (Ethernet controller at ")
        },
        || tail(&strip_ansi(&nonic.as_ref().unwrap().console()), 30),
    );
    eprintln!("nonic: marked silent {:?} after the start", t.elapsed());
    nonic.take();

    let limit = Duration::from_secs(2400);
    // The RAID machine goes through its two boots while the others install and boot.
    let mut raid_at = RaidStep::FirstBoot;
    while guests.iter().any(|g| g.firstboot().is_none()) || raid_at != RaidStep::Done {
        raid_at = raid_progress(raid_at, &mut raid, &lab, &site, &context);
        for (g, c) in guests.iter_mut().zip(&cases) {
            if g.exited() && g.firstboot().is_none() {
                panic!(
                    "{} ({}) stopped before its installed system reported:\n{}\n{}",
                    c.name,
                    g.name,
                    tail(&strip_ansi(&g.console()), 60),
                    context()
                );
            }
        }
        assert!(
            t.elapsed() < limit,
            "not every guest came up within {limit:?} (the RAID machine: {raid_at:?}):\n{}",
            context()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    for (g, c) in guests.iter().zip(&cases) {
        let id = g.firstboot().unwrap();
        eprintln!("{}: {id:?}", c.name);
        assert_eq!(id["host"], format!("lab-{}", &g.mac.replace(':', "")[6..]));
        assert_eq!(id["disk"], c.disk, "{}: {id:?}", c.name);
        assert_eq!(id["drv"], c.driver, "{}: {id:?}", c.name);
        assert_eq!(id["hba"], c.hba, "{}: {id:?}", c.name);
        assert_eq!(id["lbs"], c.lbs, "{}: {id:?}", c.name);
        assert_eq!(id["nicdrv"], c.nic_driver, "{}: {id:?}", c.name);
        assert_eq!((id["root"].as_str(), id["var"].as_str()), ("ext4", "xfs"));
        let efi = if c.fw == Firmware::Uefi { "yes" } else { "no" };
        assert_eq!(id["efi"], efi, "{}: {id:?}", c.name);
        let text = show(c.name);
        assert!(text.contains("install: profile lab, done"), "{text}");
    }
    eprintln!(
        "matrix: {} installs on different hardware booted their own disks, {:?} after the start",
        cases.len(),
        t.elapsed()
    );
    eprintln!(
        "matrix: the RAID1 machine booted on both disks, then degraded from its second disk; whole test {:?}",
        t.elapsed()
    );
}
