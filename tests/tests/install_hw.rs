//! Network installs on the hardware people own (issue 16), end to end under QEMU: one lab,
//! one `ignite server`, a matrix of guests at once, each installing the golden image onto its
//! own disk and booting from it — NVMe under SeaBIOS (on an e1000e NIC instead of
//! virtio-net), a 4K-native virtio disk under OVMF (NVMe under OVMF and a SATA disk on AHCI
//! are in install_qemu's lab, which carries them beside its own checks) — and
//! two machines with two disks that get them mirrored (md RAID1, LVM on it) and still boot
//! with their first disk taken out: one under OVMF on virtio-scsi (an ESP on each disk),
//! one under SeaBIOS behind LSI MegaRAID SAS HBAs (GRUB in each disk's MBR, its core image
//! in each disk's bios_boot partition, checked in the disk images once it is off) — and two
//! that cannot install, whose failure the server shows: a machine with no disk (the agent
//! reports it, naming the controllers it saw) and one whose NIC the agent has no driver for
//! (the server marks it `agent silent`).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use ignite_e2e::site::*;
use ignite_e2e::*;

/// Run on the installed system's first boot (see [`firstboot_hook`]): what it booted from, as
/// the kernel sees it ([`HW_FACTS`]), and its file systems and firmware.
fn hw_script() -> String {
    format!(
        r#"{HW_FACTS}
echo "IGNITE-FIRSTBOOT host=$(hostname) {HW_FIELDS} root=$(findmnt -no FSTYPE /) var=$(findmnt -no FSTYPE /var) efi=$(test -d /sys/firmware/efi && echo yes || echo no) end" >/dev/ttyS0"#
    )
}

/// The RAID machines' first-boot report (profiles/examples/raid1-lvm.toml and
/// raid1-lvm-bios.toml): what `/`, `/var` and swap are on, the array's state and members as
/// /proc/mdstat has them (`[UU]`: both in sync, `[_U]`: one missing), each member's disk
/// with its drivers (`sda:sd:megaraid_sas,`), the ESPs mounted, and whether a change to the
/// first ESP's loader reaches the second (`espsync`: the path unit at work; `none` when
/// there are not two ESPs).
const RAID_SCRIPT: &str = r##"root=$(findmnt -no SOURCE /)
swap=$(swapon --noheadings --show=NAME | head -1)
md=$(awk '/^md/ {s=$3"-"$4; getline; print s"-"$NF; exit}' /proc/mdstat)
members=$(awk '/^md/ {for (i = 5; i <= NF; i++) printf "%s,", $i; exit}' /proc/mdstat)
disks=
for p in $(awk '/^md/ {for (i = 5; i <= NF; i++) {sub(/\[.*/, "", $i); print $i}; exit}' /proc/mdstat); do
  d=$(lsblk -dno PKNAME /dev/$p)
  disks="$disks$d:$(drivers $d),"
done
# The ESPs are nofail mounts, which nothing orders before this script: wait for each one
# whose disk is here.
for m in $(awk '$3 == "vfat" {print $2}' /etc/fstab); do
  dev=$(awk -v m="$m" '$2 == m {print $1}' /etc/fstab)
  findfs "$dev" >/dev/null 2>&1 || continue
  for i in $(seq 300); do mountpoint -q "$m" && break; sleep 1; done
done
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
echo "IGNITE-FIRSTBOOT host=$(hostname) root=$(lsblk -no TYPE $root) rootfs=$(findmnt -no FSTYPE /) var=$(lsblk -no TYPE $(findmnt -no SOURCE /var)) swap=$(lsblk -no TYPE $swap) md=$md members=$members disks=$disks esps=$esps espsync=$sync efi=$(test -d /sys/firmware/efi && echo yes || echo no) end" >/dev/ttyS0"##;

/// A machine with two disks on `bus` that a RAID1+LVM profile mirrors, and what it must
/// report.
struct Raid {
    /// Client and profile name, and the installed system's hostname.
    name: &'static str,
    /// Its firmware (`efi=no` in the report under BIOS).
    fw: Firmware,
    bus: DiskBus,
    /// The profile: an example from profiles/examples.
    profile: &'static str,
    /// Each member disk's drivers, `DRIVER:HOST`.
    drivers: &'static str,
    /// Where the ESP on the disk of each array role (0, 1) is mounted: the agent puts the
    /// first disk's at /boot/efi and makes that disk's partition role 0 (none under BIOS).
    esps: &'static [&'static str],
}

fn raids() -> [Raid; 2] {
    [
        // An ESP on each disk is what makes either bootable.
        Raid {
            name: "raid",
            fw: Firmware::Uefi,
            bus: DiskBus::VirtioScsi,
            profile: include_str!("../../profiles/examples/raid1-lvm.toml"),
            drivers: "sd:virtio_scsi",
            esps: &["/boot/efi", "/boot/efi2"],
        },
        // GRUB in each disk's MBR and bios_boot partition; each disk on a HBA of its own.
        Raid {
            name: "raid-bios",
            fw: Firmware::Bios,
            bus: DiskBus::Megasas,
            profile: include_str!("../../profiles/examples/raid1-lvm-bios.toml"),
            drivers: "sd:megaraid_sas",
            esps: &[],
        },
    ]
}

/// Where a RAID machine is.
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

/// What both of a RAID machine's boots report: `/`, `/var` and swap on LVM, the array's
/// members the second partitions of `disks` (whichever roles the disks had when the array
/// was made: the kernel names disks on several HBAs in the order their scans end), each
/// disk behind the expected drivers, the array in sync on the roles present (`[UU]`, or
/// `[U_]` / `[_U]` with one disk), and the ESPs of the roles present mounted (which disk
/// survives as the second depends on that naming too).
fn assert_raid_boot(r: &Raid, id: &HashMap<String, String>, disks: &[&str]) {
    let efi = if r.fw == Firmware::Bios { "no" } else { "yes" };
    for (k, v) in [
        ("root", "lvm"),
        ("rootfs", "ext4"),
        ("var", "lvm"),
        ("swap", "lvm"),
        ("efi", efi),
        ("host", r.name),
    ] {
        assert_eq!(id[k], v, "{}: {k}: {id:?}", r.name);
    }
    // `sdb2[0],sda2[1],`: partition and role.
    let mut members: Vec<(&str, u8)> = id["members"]
        .split_terminator(',')
        .map(|m| {
            let (part, role) = m
                .strip_suffix(']')
                .and_then(|m| m.split_once('['))
                .unwrap_or_else(|| panic!("{}: member {m:?}: {id:?}", r.name));
            (part, role.parse().unwrap())
        })
        .collect();
    members.sort();
    let parts: Vec<String> = disks.iter().map(|d| format!("{d}2")).collect();
    let roles: Vec<u8> = members.iter().map(|m| m.1).collect();
    assert_eq!(
        members.iter().map(|m| m.0).collect::<Vec<_>>(),
        parts,
        "{}: {id:?}",
        r.name
    );
    let state: String = (0..2)
        .map(|i| if roles.contains(&i) { 'U' } else { '_' })
        .collect();
    assert!(
        roles.iter().all(|&i| i < 2) && state.matches('U').count() == disks.len(),
        "{}: roles {roles:?}: {id:?}",
        r.name
    );
    assert_eq!(
        id["md"],
        format!("active-raid1-[{state}]"),
        "{}: {id:?}",
        r.name
    );
    let mut esps: Vec<&str> = roles
        .iter()
        .filter_map(|&i| r.esps.get(i as usize).copied())
        .collect();
    esps.sort();
    let esps: String = esps.iter().map(|e| format!("{e},")).collect();
    assert_eq!(
        id["esps"], esps,
        "{}: ESPs of roles {roles:?}: {id:?}",
        r.name
    );
    let mut drivers: Vec<&str> = id["disks"].split_terminator(',').collect();
    drivers.sort();
    let want: Vec<String> = disks.iter().map(|d| format!("{d}:{}", r.drivers)).collect();
    assert_eq!(drivers, want, "{}: {id:?}", r.name);
}

/// One look at a RAID machine: checks a report as it comes and moves it on. Its first boot:
/// installed on both disks, both members in sync, the ESPs (if any) kept in sync. Once it is
/// off, under BIOS, each disk's image holds GRUB's boot code and core image. Then its first
/// disk is taken out: the second alone boots (the array degraded).
fn raid_progress(
    at: RaidStep,
    r: &Raid,
    guest: &mut Guest,
    lab: &Lab,
    site: &Site,
    context: &dyn Fn() -> String,
) -> RaidStep {
    let stopped = |guest: &Guest, how: String, what: &str| -> ! {
        panic!(
            "the RAID machine {} {how} before its {what} boot reported:\n{}\n{}",
            r.name,
            tail(&strip_ansi(&guest.console()), 80),
            context()
        )
    };
    match at {
        RaidStep::FirstBoot => match guest.firstboot() {
            Some(id) => {
                eprintln!("{} (both disks): {id:?}", r.name);
                assert_raid_boot(r, &id, &["sda", "sdb"]);
                let sync = if r.esps.is_empty() { "none" } else { "yes" };
                assert_eq!(id["espsync"], sync, "{}: {id:?}", r.name);
                let text = site.ignite(&["client", "show", r.name]);
                let done = format!("install: profile {}, done", r.name);
                assert!(text.contains(&done), "{text}");
                RaidStep::PoweringOff
            }
            None => match guest.stopped_short() {
                Some(how) => stopped(guest, how, "first"),
                None => at,
            },
        },
        RaidStep::PoweringOff if guest.exited() => {
            if r.fw == Firmware::Bios {
                for i in 0..2 {
                    assert_grub_for_bios(&guest.disk_at(i));
                }
                eprintln!("{}: GRUB's boot code and core image on both disks", r.name);
            }
            guest.boot_with_only_disk(lab, "degraded", 1);
            RaidStep::Degraded
        }
        RaidStep::Degraded => match guest.firstboot() {
            Some(id) => {
                eprintln!("{} (second disk alone): {id:?}", r.name);
                assert_raid_boot(r, &id, &["sda"]);
                RaidStep::Done
            }
            None => match guest.stopped_short() {
                Some(how) => stopped(guest, how, "degraded"),
                None => at,
            },
        },
        RaidStep::PoweringOff | RaidStep::Done => at,
    }
}

/// GRUB for BIOS on `disk` (an image file with 512-byte sectors and a GPT), as the firmware
/// finds it with no other disk: the MBR holds GRUB's boot code, which loads the first sector
/// of this disk's own bios_boot partition; that sector is GRUB's diskboot code, whose block
/// list names the rest of the core image, inside the partition.
fn assert_grub_for_bios(disk: &Path) {
    let mut f = std::fs::File::open(disk).unwrap();
    let mut read = |lba: u64, len: usize| {
        let mut buf = vec![0; len];
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.read_exact(&mut buf).unwrap();
        buf
    };
    let le64 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    let le32 = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let has = |b: &[u8], s: &[u8]| b.windows(s.len()).any(|w| w == s);
    let d = disk.display();
    let mbr = read(0, 512);
    assert!(
        has(&mbr[..440], b"GRUB ") && mbr[510..] == [0x55, 0xaa],
        "{d}: no GRUB boot code in the MBR: {:02x?}",
        &mbr[..]
    );
    let header = read(1, 92);
    assert_eq!(&header[..8], b"EFI PART", "{d}: no GPT header");
    let (entries, count, size) = (
        le64(&header[72..]),
        le32(&header[80..]),
        le32(&header[84..]),
    );
    let table = read(entries, count * size);
    // The BIOS boot partition's type GUID, 21686148-6449-6E6F-744E-656564454649, as stored.
    let part = table
        .chunks(size)
        .find(|e| &e[..16] == b"Hah!IdontNeedEFI")
        .unwrap_or_else(|| panic!("{d}: no bios_boot partition"));
    let (first, last) = (le64(&part[32..]), le64(&part[40..]));
    // boot.img's kernel_sector (GRUB_BOOT_MACHINE_KERNEL_SECTOR).
    assert_eq!(
        le64(&mbr[0x5c..]),
        first,
        "{d}: the MBR loads GRUB's core from another sector than this disk's bios_boot partition ({first}..={last})"
    );
    let diskboot = read(first, 512);
    assert!(
        has(&diskboot, b"loading"),
        "{d}: sector {first} is not GRUB's diskboot: {diskboot:02x?}"
    );
    // diskboot.img's first block list entry: start sector (8 bytes), sector count (2).
    let (start, len) = (
        le64(&diskboot[0x1f4..]),
        u16::from_le_bytes([diskboot[0x1fc], diskboot[0x1fd]]) as u64,
    );
    assert!(
        start == first + 1 && len > 0 && start + len - 1 <= last,
        "{d}: the core image's block list ({len} sectors from {start}) is not the rest of the bios_boot partition ({first}..={last})"
    );
    assert!(
        read(start + len - 1, 512).iter().any(|&b| b != 0),
        "{d}: the core image's last sector ({}) is empty",
        start + len - 1
    );
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
    seen: Seen,
}

fn installs() -> Vec<Case> {
    let on = |nic, bus| Hardware {
        nic,
        disks: vec![bus],
    };
    // NVMe under OVMF and a SATA disk on AHCI are install_qemu's: its lab carries them.
    vec![
        // The one guest on an Intel 82574L (e1000e) instead of virtio-net.
        Case {
            name: "nvme-bios-e1000e",
            fw: Firmware::Bios,
            hw: on("e1000e", DiskBus::Nvme),
            seen: Seen {
                disk: "nvme0n1",
                driver: "nvme",
                nic_driver: "e1000e",
                ..Seen::VIRTIO
            },
        },
        Case {
            name: "4kn-uefi",
            fw: Firmware::Uefi,
            hw: on("virtio-net-pci", DiskBus::Virtio4k),
            seen: Seen {
                lbs: "4096",
                ..Seen::VIRTIO
            },
        },
    ]
}

/// The whole matrix in one lab: two installs on different hardware boot their own disks,
/// two RAID1 machines (UEFI on virtio-scsi, BIOS on MegaRAID SAS) boot on both disks and then
/// on their second alone, the disk-less machine's failure names the cause within a minute of
/// the agent's start, and the machine whose NIC has no driver is marked `agent silent` with
/// its last boot step.
#[test]
fn a_matrix_of_machines_installs_at_once_and_failures_show_in_client_show() {
    if !lab_prerequisites(&[
        "/usr/lib/ipxe/qemu/efi-e1000e.rom",
        "/usr/lib/ipxe/qemu/efi-rtl8139.rom",
    ]) {
        return;
    }
    let t = Instant::now();
    let raids = raids();
    let mut profiles = vec![("lab", profile(&[&firstboot_hook(&hw_script())]))];
    for r in &raids {
        // Top-level keys go before the first table.
        let text = format!(
            "hooks = ['''\n{}''']\n{}",
            firstboot_hook(RAID_SCRIPT),
            r.profile
        );
        profiles.push((r.name, text));
    }
    let site = Site::new(&profiles);
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
    let mut raid_guests: Vec<(Guest, RaidStep)> = Vec::new();
    for (i, r) in raids.iter().enumerate() {
        let n = cases.len() as u8 + 3 + i as u8;
        site.client(&format!("52:54:00:78:00:{n:02x}"), r.name, r.name);
        let hw = Hardware {
            nic: "virtio-net-pci",
            disks: vec![r.bus, r.bus],
        };
        let guest = Guest::start_on(&lab, site.tmp.path(), n, r.fw, hw, 3 << 30, 1);
        raid_guests.push((guest, RaidStep::FirstBoot));
    }
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

    // Far more than a loaded machine needs: a guest that stops short (exits, or comes to a
    // dead end on its console) fails the test at once.
    let limit = Duration::from_secs(3600);
    // The RAID machines go through their two boots while the others install and boot.
    let raids_done = |rg: &[(Guest, RaidStep)]| rg.iter().all(|(_, at)| *at == RaidStep::Done);
    while guests.iter().any(|g| g.firstboot().is_none()) || !raids_done(&raid_guests) {
        for ((g, at), r) in raid_guests.iter_mut().zip(&raids) {
            *at = raid_progress(*at, r, g, &lab, &site, &context);
        }
        for (g, c) in guests.iter_mut().zip(&cases) {
            if let (Some(how), None) = (g.stopped_short(), g.firstboot()) {
                panic!(
                    "{} ({}) {how} before its installed system reported:\n{}\n{}",
                    c.name,
                    g.name,
                    tail(&strip_ansi(&g.console()), 60),
                    context()
                );
            }
        }
        let steps: Vec<(&str, RaidStep)> = raids
            .iter()
            .zip(&raid_guests)
            .map(|(r, (_, at))| (r.name, *at))
            .collect();
        if t.elapsed() >= limit {
            // What each machine still on its way shows last.
            let waiting = guests
                .iter()
                .filter(|g| g.firstboot().is_none())
                .chain(raid_guests.iter().map(|(g, _)| g));
            panic!(
                "not every guest came up within {limit:?} (the RAID machines: {steps:?}):\n{}\n{}",
                console_tails(waiting),
                context()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    for (g, c) in guests.iter().zip(&cases) {
        let id = g.firstboot().unwrap();
        eprintln!("{}: {id:?}", c.name);
        assert_eq!(id["host"], format!("lab-{}", &g.mac.replace(':', "")[6..]));
        c.seen.check(c.name, &id);
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
        "matrix: the RAID1 machines (UEFI, BIOS) booted on both disks, then degraded from their second disk; whole test {:?}",
        t.elapsed()
    );
}
