//! Network installs end to end: real firmware (SeaBIOS + iPXE, OVMF) in QEMU under software
//! emulation PXE-boots the Ignite agent from `ignite server` in a network namespace, the
//! agent installs the golden Debian image (scripts/fixtures/golden) onto the guest's empty
//! virtio disk with a profile, reports its phases, and the guest reboots from its own disk
//! into the installed system, which prints its identity on the serial console. The four
//! guests of the first test install over HTTPS (`[install] tls`), across a server restart.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ignite_e2e::site::*;
use ignite_e2e::*;

/// Installed by a profile hook: on the first boot of the installed system, print the
/// guest's identity and hardware on the serial console, then power off (which ends QEMU).
fn firstboot_script() -> String {
    format!(
        r#"{HW_FACTS}
key=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)
addr=$(ip -4 -o addr show dev "$nic" scope global | awk '{{print $4}}' | head -1)
echo "IGNITE-FIRSTBOOT host=$(hostname) machine-id=$(cat /etc/machine-id) sshkey=$key mac=$(cat /sys/class/net/$nic/address) addr=$addr root=$(findmnt -no FSTYPE /) var=$(findmnt -no FSTYPE /var) boot=$(findmnt -no FSTYPE /boot) {HW_FIELDS} end" >/dev/ttyS0"#
    )
}

/// The first lab's server: the install API over HTTPS only.
const TLS: &str = "[install]\ntls = true\n";

/// The tests here each run four software-emulated guests; on two cores they take turns.
static QEMU_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn prerequisites() -> bool {
    lab_prerequisites(&[])
}

/// How a guest boots its installed system: which firmware, which loader, and what the
/// loader leaves on the serial console; on which hardware, and what the system sees of it.
struct Boot {
    fw: Firmware,
    profile: &'static str,
    hw: Hardware,
    seen: Seen,
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
        ("lab", profile(&[&firstboot_hook(&firstboot_script())])),
        ("lab-extlinux", extlinux_profile()),
    ]);
    let lab = Lab::new("inst4");
    // The agents talk to the install API over HTTPS, pinning the server's authority; the
    // restart below keeps the authority and signs a new server certificate.
    let mut server = site.server_with(&lab, "", TLS);
    // Two of the machines are also install_hw's matrix cases (an NVMe disk under OVMF, a
    // SATA disk on AHCI under SeaBIOS): every emulated guest costs a minute or two of CPU,
    // so this lab carries them rather than that one.
    let on = |bus| Hardware {
        nic: "virtio-net-pci",
        disks: vec![bus],
    };
    let boots = [
        Boot {
            fw: Firmware::Bios,
            profile: "lab",
            hw: Hardware::default(),
            seen: Seen::VIRTIO,
        },
        Boot {
            fw: Firmware::Uefi,
            profile: "lab",
            hw: on(DiskBus::Nvme),
            seen: Seen {
                disk: "nvme0n1",
                driver: "nvme",
                ..Seen::VIRTIO
            },
        },
        Boot {
            fw: Firmware::Bios,
            profile: "lab-extlinux",
            hw: on(DiskBus::Ahci),
            seen: Seen {
                disk: "sda",
                driver: "sd",
                hba: "ahci",
                ..Seen::VIRTIO
            },
        },
        Boot {
            fw: Firmware::Uefi,
            profile: "lab-extlinux",
            hw: Hardware::default(),
            seen: Seen::VIRTIO,
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
        let hw = b.hw.clone();
        guests.push(Guest::start_on(
            &lab,
            site.tmp.path(),
            n,
            b.fw,
            hw,
            4 << 30,
            1,
        ));
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
    let server = site.server_with(&lab, "", TLS);
    eprintln!(
        "server killed and restarted mid-extract after {:?}",
        t.elapsed()
    );
    // Far more than a loaded machine needs: a guest that stops short (exits, or comes to a
    // dead end on its console) fails the test at once.
    let limit = Duration::from_secs(3000);
    while guests.iter().any(|g| g.firstboot().is_none()) {
        for g in &mut guests {
            if let (Some(how), None) = (g.stopped_short(), g.firstboot()) {
                panic!(
                    "guest {} {how} before its installed system reported:\n{}\n--- clients:\n{}\n--- server log:\n{}",
                    g.name,
                    tail(&strip_ansi(&g.console()), 80),
                    site.ignite(&["client", "list"]),
                    server.log_text()
                );
            }
        }
        if t.elapsed() >= limit {
            panic!(
                "not every guest came up within {limit:?}:\n{}\n{}\n--- server log:\n{}",
                site.ignite(&["client", "list"]),
                console_tails(guests.iter().filter(|g| g.firstboot().is_none())),
                server.log_text()
            );
        }
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
        b.seen.check(&g.name, &id);
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
    // The same lab goes on: the first guest (SeaBIOS, GRUB) is captured, changed, captured
    // again, restored and cloned.
    for g in &mut guests {
        wait_for(
            &format!("{} to power off after its first boot", g.name),
            Duration::from_secs(300),
            || g.exited(),
        );
    }
    capture_change_restore_and_clone(&site, &lab, &server, &guests[0]);
    // The UEFI guest booted by Syslinux: clones of both loaders and both firmwares boot.
    verify_uefi_capture(&site, &lab, &server, &guests[3]);
}

/// `ignite vm ARGS` in the lab's namespace on the site's state; its output.
fn vm(lab: &Lab, site: &Site, server: &Server, args: &[&str]) -> String {
    let mut all = vec!["vm"];
    all.extend(args);
    in_lab(lab, site, server, &all)
}

/// `ignite vm create NAME` (QEMU engine, 1 GiB) over an existing disk image, its NIC with
/// `mac` on the lab bridge; `boot` is `disk` or `net`, `firmware` `bios` or `uefi`.
fn define(
    (lab, site, server): (&Lab, &Site, &Server),
    name: &str,
    disk: &Path,
    boot: &str,
    firmware: &str,
    mac: &str,
) {
    vm(
        lab,
        site,
        server,
        &[
            "create",
            name,
            "--mem",
            "1024M",
            "--disk",
            disk.to_str().unwrap(),
            "--boot",
            boot,
            "--engine",
            "qemu",
            "--firmware",
            firmware,
            "--net",
            "bridge=br0",
            "--mac",
            mac,
        ],
    );
}

/// `ignite ARGS` in the lab's namespace on the site's state; its output.
fn in_lab(lab: &Lab, site: &Site, server: &Server, args: &[&str]) -> String {
    let out = Lab::cmd(&lab.ns, ignite_bin())
        .args(args)
        .env("IGNITE_STATE_DIR", &site.state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ignite {args:?}: {}{}\n--- server log (tail):\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&server.log_text(), 40)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The files an `ignite recovery clone` says its identity reset changed, sorted.
fn identity_changed(out: &str) -> Vec<String> {
    let mut changed: Vec<String> = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("identity changed in: "))
        .unwrap_or_else(|| panic!("no identity list in {out}"))
        .split_whitespace()
        .map(String::from)
        .collect();
    changed.sort();
    changed
}

/// The instant clone (`--instant`): it starts before its disk exists and reports its first
/// boot (login is up) while the background copy still runs — held to 1 MiB/s until then, so
/// that the copy cannot win the race on a fast machine (the disk holds far more than the boot
/// takes seconds). Powered off mid-copy by its first-boot job, it loses nothing: started
/// again with the copy unleashed, it finishes the copy while it boots, reports the same
/// identity, and its disk, now its own raw image, differs from the capture's (`full`, a
/// full restore of the same capture) in the identity files and in files the guest itself
/// wrote (changed after the clone was made), and in nothing else.
fn instant_clone(
    site: &Site,
    lab: &Lab,
    server: &Server,
    source: &HashMap<String, String>,
    full: &Path,
    parts: &HashMap<u64, (u64, u64)>,
) {
    let t = Instant::now();
    let made = std::time::SystemTime::now();
    let status = || -> serde_json::Value {
        serde_json::from_str(&site.ignite(&["recovery", "instant", "twin2", "--json"])).unwrap()
    };
    let out = site.ignite(&[
        "recovery",
        "clone",
        "src1",
        "--as",
        "twin2",
        "--instant",
        "--rate",
        "1M",
    ]);
    eprintln!("{out}");
    let changed = identity_changed(&out);
    let first = boot_clone(site, lab, server, "twin2", source);
    let at_login = status();
    eprintln!(
        "instant clone reported its first boot {:?} after the clone command; copy: {at_login}",
        t.elapsed()
    );
    let p = &at_login["progress"];
    assert!(
        at_login["pending"] == true && p["copied"].as_u64() < p["total"].as_u64(),
        "the background copy was not running when the clone reached its login: {at_login}"
    );
    let disk = site.state.join("guests/twin2/disk0.img");
    assert!(!disk.exists(), "the disk is whole before the copy ended");

    site.ignite(&["recovery", "instant", "twin2", "--rate", "0"]);
    // The console log is appended to: the next report must be the next boot's.
    std::fs::remove_file(site.state.join("guests/twin2/console.log")).unwrap();
    let second = boot_clone(site, lab, server, "twin2", source);
    assert_eq!(
        (&second["machine-id"], &second["sshkey"]),
        (&first["machine-id"], &first["sshkey"])
    );
    wait_until(
        "the instant clone's copy to end",
        Duration::from_secs(300),
        || status()["pending"] == false,
        || format!("{}", status()),
    );
    eprintln!("instant clone's copy done after {:?}", t.elapsed());

    // What differs from the full restore: the identity, and what the guest wrote (a file
    // changed since the clone was made, or gone from a directory changed since).
    let since = made - Duration::from_secs(5);
    let touched = |root: &Path, rel: &str| -> bool {
        let p = root.join(rel.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&p)
            .or_else(|_| std::fs::symlink_metadata(p.parent().unwrap()))
            .unwrap();
        let ctime = std::time::UNIX_EPOCH
            + Duration::new(
                std::os::unix::fs::MetadataExt::ctime(&meta) as u64,
                std::os::unix::fs::MetadataExt::ctime_nsec(&meta) as u32,
            );
        ctime >= since
    };
    let (a, b) = (
        site.tmp.path().join("cmp-full"),
        site.tmp.path().join("cmp-instant"),
    );
    let mut unexplained = Vec::new();
    let mut identity = Vec::new();
    let mut by_guest = 0;
    for (n, fs, at) in [(3, "ext4", ""), (4, "xfs", "/var")] {
        mount_part(full, parts[&n], fs, &a);
        mount_part(&disk, parts[&n], fs, &b);
        for p in differing(&a, &b) {
            let abs = format!("{at}{p}");
            if changed.contains(&abs) {
                identity.push(abs);
            } else if touched(&b, &p) {
                by_guest += 1;
            } else {
                unexplained.push(abs);
            }
        }
        umount(&a);
        umount(&b);
    }
    identity.sort();
    assert_eq!(
        identity, changed,
        "the identity reset is in the instant clone's disk"
    );
    assert!(
        unexplained.is_empty(),
        "the instant clone's disk differs from a full restore in files neither its identity \
         reset nor the guest wrote: {unexplained:?}"
    );
    eprintln!(
        "instant clone lab done in {:?}: {} identity file(s), {by_guest} file(s) the guest wrote",
        t.elapsed(),
        identity.len()
    );
    vm(lab, site, server, &["remove", "twin2"]);
}

/// Starts clone `name` and checks what its first boot reports: its own hostname,
/// machine-id and SSH host key, its new MAC, and a DHCP lease of its own from the server.
/// Returns what it reported.
fn boot_clone(
    site: &Site,
    lab: &Lab,
    server: &Server,
    name: &str,
    source: &HashMap<String, String>,
) -> HashMap<String, String> {
    let def: serde_json::Value =
        serde_json::from_str(&vm(lab, site, server, &["show", name, "--json"])).unwrap();
    let mac = def["nics"][0]["mac"].as_str().unwrap().to_string();
    vm(lab, site, server, &["start", name]);
    let _running = GuestGuard::new(&site.state, name);
    let log = site.state.join(format!("guests/{name}/console.log"));
    let console = || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let marker = format!("{FIRSTBOOT} host={name} ");
    wait_until(
        &format!("{name}'s first boot to report its identity"),
        Duration::from_secs(600),
        || console().contains(&marker),
        || {
            format!(
                "--- {name} console (tail):\n{}\n--- server log (tail):\n{}",
                tail(&strip_ansi(&console()), 40),
                tail(&server.log_text(), 40)
            )
        },
    );
    let text = console();
    let line = text
        .lines()
        .filter_map(|l| l.find(&marker).map(|i| &l[i..]))
        .find(|l| l.ends_with(" end"))
        .unwrap();
    let twin: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    eprintln!("source: {source:?}\nclone:  {twin:?}");
    assert_ne!(twin["machine-id"], source["machine-id"]);
    assert_eq!(twin["machine-id"].len(), 32);
    assert_ne!(twin["sshkey"], source["sshkey"]);
    assert_eq!(twin["mac"], mac);
    assert!(
        twin["addr"].starts_with("10."),
        "the clone has no DHCP address: {line}"
    );
    assert_ne!(twin["addr"], source["addr"], "{line}");
    let leases = site.ignite(&["netboot", "leases"]);
    let addr = twin["addr"].split('/').next().unwrap();
    assert!(
        leases
            .lines()
            .any(|l| l.to_lowercase().contains(&mac) && l.contains(addr)),
        "the server holds no lease of {addr} for the clone's MAC {mac}:\n{leases}"
    );
    twin.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A UEFI guest (OVMF) captured with `--verify-boot`: the capture is
/// cloned into a throwaway guest on the isolated bridge, which boots under OVMF with its own
/// identity and no address; the verdict is in the capture history, and the guest is gone.
fn verify_uefi_capture(site: &Site, lab: &Lab, server: &Server, g: &Guest) {
    let t = Instant::now();
    let disk = site.tmp.path().join(format!("{}.raw", g.name));
    define((lab, site, server), "src2", &disk, "disk", "uefi", &g.mac);

    let marker = format!("{FIRSTBOOT} host=");
    let out = in_lab(
        lab,
        site,
        server,
        &[
            "recovery",
            "capture",
            "src2",
            "--verify-boot",
            "--verify-marker",
            &marker,
            "--verify-timeout",
            "900",
        ],
    );
    eprintln!("{out}");
    let rows: serde_json::Value =
        serde_json::from_str(&site.ignite(&["recovery", "list", "src2", "--json"])).unwrap();
    let verdict = rows.as_array().unwrap().last().unwrap()["boot_check"]
        .as_str()
        .unwrap_or_else(|| panic!("no boot check recorded: {rows}"))
        .to_string();
    assert!(verdict.starts_with("boots in "), "{verdict}");
    let line = &verdict[verdict.find(FIRSTBOOT).unwrap()..];
    let twin: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let source = g.firstboot().unwrap();
    eprintln!("source: {source:?}\ntest boot: {twin:?}");
    assert!(twin["host"].starts_with("src2-verify-"), "{line}");
    assert_ne!(twin["machine-id"], source["machine-id"]);
    assert_ne!(twin["sshkey"], source["sshkey"]);
    assert_ne!(twin["mac"], source["mac"]);
    assert_eq!(
        twin["addr"], "",
        "the test boot reached a DHCP server: {line}"
    );
    assert!(line.ends_with(" end"), "{line}");
    // The throwaway guest is gone; the isolated bridge has no port left.
    let guests = vm(lab, site, server, &["list"]);
    assert!(!guests.contains("src2-verify"), "{guests}");
    let ports =
        run(Command::new("ip").args(["-n", &lab.ns, "link", "show", "master", "ignite-verify"]));
    assert!(ports.trim().is_empty(), "ports left on the bridge: {ports}");
    eprintln!(
        "UEFI guest captured and its test restore booted in {:?}",
        t.elapsed()
    );
}

/// Mounts the file system at `start`..+`size` of `image` on `dir` (a loop device by offset).
fn mount_part(image: &Path, (start, size): (u64, u64), fs: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let opts = if fs == "xfs" { ",nouuid" } else { "" };
    run(Command::new("mount")
        .args(["-t", fs, "-o"])
        .arg(format!("loop,offset={start},sizelimit={size}{opts}"))
        .arg(image)
        .arg(dir));
}

fn umount(dir: &Path) {
    run(Command::new("umount").arg(dir));
}

/// (start, size) of the partitions of the lab layout: 3 = ext4 /, 4 = xfs /var.
fn partitions(site: &Site, capture: &str) -> HashMap<u64, (u64, u64)> {
    let rec: serde_json::Value =
        serde_json::from_str(&site.ignite(&["recovery", "show", capture, "--json"])).unwrap();
    rec["disks"][0]["layout"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["number"].as_u64().unwrap(),
                (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// `ignite recovery capture NAME`: the capture's id.
fn capture(site: &Site, name: &str) -> String {
    let out = site.ignite(&["recovery", "capture", name]);
    eprintln!("{out}");
    let at = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}@")))
        .unwrap_or_else(|| panic!("no capture id in {out}"));
    at.trim_end_matches(':').to_string()
}

/// Paths that differ between two trees (`diff -rq --no-dereference`), relative, sorted.
fn differing(a: &Path, b: &Path) -> Vec<String> {
    let out = Command::new("diff")
        .args(["-rq", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let strip = |p: &str| {
        p.strip_prefix(a.to_str().unwrap())
            .or_else(|| p.strip_prefix(b.to_str().unwrap()))
            .unwrap_or(p)
            .to_string()
    };
    let mut paths: Vec<String> = text
        .lines()
        .filter_map(|l| {
            if let Some(r) = l.strip_prefix("Files ") {
                Some(strip(r.split(" and ").next()?))
            } else if let Some(r) = l.strip_prefix("Only in ") {
                let (dir, name) = r.split_once(": ")?;
                Some(format!("{}/{name}", strip(dir)))
            } else if let Some(r) = l.strip_prefix("Symbolic links ") {
                Some(strip(r.split(" and ").next()?))
            } else {
                Some(format!("?? {l}"))
            }
        })
        .collect();
    paths.sort();
    paths
}

/// install (done by the caller) → write a file → capture → change files → capture → restore
/// the first capture (its files exactly) and the second (byte for byte the disk) → clone,
/// whose tree differs from the capture's in the identity files alone, boots with a new
/// hostname, machine-id, SSH host key, MAC and DHCP lease → the source restored in place of
/// itself keeps its MAC → the client recovers the latest capture over the network (boot
/// action `recover`), only the blocks that differ written, and boots it.
fn capture_change_restore_and_clone(site: &Site, lab: &Lab, server: &Server, g: &Guest) {
    let t = Instant::now();
    let dir = site.tmp.path();
    let disk = dir.join(format!("{}.raw", g.name));
    let vm = |args: &[&str]| vm(lab, site, server, args);
    let source_id = g.firstboot().unwrap();
    define((lab, site, server), "src1", &disk, "disk", "bios", &g.mac);

    let root = dir.join("mnt-src");
    let write_notes = |parts: &HashMap<u64, (u64, u64)>, text: &str, extra: bool| {
        mount_part(&disk, parts[&3], "ext4", &root);
        std::fs::write(root.join("root/notes.txt"), text).unwrap();
        if extra {
            std::fs::write(
                root.join("root/added.txt"),
                "added after the first capture\n",
            )
            .unwrap();
            std::fs::remove_file(root.join("etc/motd")).unwrap();
        }
        umount(&root);
    };
    // The layout comes from a first look at the installed disk (a capture's record).
    let c0 = capture(site, "src1");
    let parts = partitions(site, &format!("src1@{c0}"));
    // The record as an install profile: it renders to the captured layout, mounts included.
    let text = site.ignite(&[
        "recovery",
        "show",
        "src1",
        "--profile",
        "--archive",
        "debian-12",
    ]);
    let file = dir.join("as-captured.toml");
    std::fs::write(&file, &text).unwrap();
    let plan: serde_json::Value = serde_json::from_str(&run(Command::new(ignite_bin()).args([
        "profile",
        "render",
        file.to_str().unwrap(),
        "--mac",
        &g.mac,
        "--disk",
        "/dev/vda:4G",
        "--json",
    ])))
    .unwrap();
    let planned: HashMap<u64, (u64, u64)> = plan["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = p["number"].as_u64().unwrap();
            (
                n,
                (
                    p["start_bytes"].as_u64().unwrap(),
                    p["size_bytes"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(planned, parts, "{text}");
    for mount in ["\"/\"", "\"/var\""] {
        assert!(text.contains(&format!("mount = {mount}")), "{text}");
    }
    write_notes(&parts, "first\n", false);
    let c1 = capture(site, "src1");
    write_notes(&parts, "second\n", true);
    let c2 = capture(site, "src1");
    let diff = site.ignite(&["recovery", "diff", "src1", &c1, &c2]);
    for want in ["/root/notes.txt", "/root/added.txt", "/etc/motd"] {
        assert!(diff.contains(want), "recovery diff lacks {want}:\n{diff}");
    }
    eprintln!("three captures and a diff after {:?}", t.elapsed());

    // The first capture restored: its files exactly.
    let r1 = dir.join("r1.img");
    site.ignite(&[
        "recovery",
        "restore",
        &format!("src1@{c1}"),
        "--to",
        r1.to_str().unwrap(),
    ]);
    let m = dir.join("mnt-r1");
    mount_part(&r1, parts[&3], "ext4", &m);
    let notes = std::fs::read_to_string(m.join("root/notes.txt")).unwrap();
    let added = m.join("root/added.txt").exists();
    let motd = m.join("etc/motd").exists();
    umount(&m);
    assert_eq!((notes.as_str(), added, motd), ("first\n", false, true));
    std::fs::remove_file(&r1).unwrap();
    // The latest capture restored: the disk itself, byte for byte.
    let r2 = dir.join("r2.img");
    site.ignite(&["recovery", "restore", "src1", "--to", r2.to_str().unwrap()]);
    run(Command::new("cmp").arg(&r2).arg(&disk));
    eprintln!("two restores checked after {:?}", t.elapsed());

    // The clone: its tree differs from the capture's in what its identity reset changed.
    let out = site.ignite(&["recovery", "clone", "src1", "--as", "twin1"]);
    eprintln!("{out}");
    let changed = identity_changed(&out);
    for want in [
        "/etc/hostname",
        "/etc/machine-id",
        "/etc/ssh/ssh_host_ed25519_key",
    ] {
        assert!(
            changed.iter().any(|c| c == want),
            "{want} not reset: {changed:?}"
        );
    }
    let twin_disk = site.state.join("guests/twin1/disk0.img");
    let (a, b) = (dir.join("cmp-src"), dir.join("cmp-twin"));
    let mut differ = Vec::new();
    for (n, fs, at) in [(3, "ext4", ""), (4, "xfs", "/var")] {
        mount_part(&r2, parts[&n], fs, &a);
        mount_part(&twin_disk, parts[&n], fs, &b);
        differ.extend(differing(&a, &b).into_iter().map(|p| format!("{at}{p}")));
        umount(&a);
        umount(&b);
    }
    differ.sort();
    assert_eq!(
        differ, changed,
        "the clone differs from its capture in exactly these files"
    );

    // The clone boots as itself.
    let full = Instant::now();
    boot_clone(site, lab, server, "twin1", &source_id);
    eprintln!(
        "clone booted as itself after {:?} ({:?} from its start)",
        t.elapsed(),
        full.elapsed()
    );

    instant_clone(site, lab, server, &source_id, &r2, &parts);
    std::fs::remove_file(&r2).unwrap();

    // A restore in place of the source keeps its identity: the MAC included.
    vm(&["remove", "src1", "--keep-disks"]);
    let out = site.ignite(&[
        "recovery",
        "restore",
        &format!("src1@{c1}"),
        "--as-guest",
        "src1b",
    ]);
    assert!(out.contains(&format!("mac {}", g.mac)), "{out}");
    mount_part(
        &site.state.join("guests/src1b/disk0.img"),
        parts[&3],
        "ext4",
        &m,
    );
    let notes = std::fs::read_to_string(m.join("root/notes.txt")).unwrap();
    let host = std::fs::read_to_string(m.join("etc/hostname")).unwrap();
    umount(&m);
    assert_eq!(notes, "first\n");
    assert_eq!(host.trim(), source_id["host"]);
    eprintln!("restored as a replacement after {:?}", t.elapsed());

    // Recovery over the network (boot action `recover`): the client's disk holds the first
    // capture; it netboots the agent, which writes the latest capture back in place, moving
    // only the blocks that differ, then reboots into the recovered system.
    vm(&["remove", "src1b", "--keep-disks"]);
    let disk_b = site.state.join("guests/src1b/disk0.img");
    define((lab, site, server), "src1n", &disk_b, "net", "bios", &g.mac);
    site.ignite(&["client", "set", &g.name, "recover", &format!("src1@{c2}")]);
    vm(&["start", "src1n"]);
    let running = GuestGuard::new(&site.state, "src1n");
    let log = site.state.join("guests/src1n/console.log");
    let console = || {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&log).unwrap_or_default(),
        ))
    };
    let booted = format!("{FIRSTBOOT} host={} ", source_id["host"]);
    wait_until(
        "the client to recover over the network and boot the recovered system",
        Duration::from_secs(900),
        || {
            let c = console();
            c.find("recovered disk 0 of")
                .is_some_and(|at| c[at..].contains(&booted))
        },
        || {
            format!(
                "--- src1n console (tail):\n{}\n--- client:\n{}\n--- server log (tail):\n{}",
                tail(&console(), 40),
                site.ignite(&["client", "show", &g.name]),
                tail(&server.log_text(), 40)
            )
        },
    );
    let text = console();
    let line = text
        .lines()
        .find_map(|l| l.find("recovered disk 0 of").map(|at| l[at..].to_string()))
        .unwrap();
    eprintln!("{line}");
    let number = |after: &str| -> u64 {
        let at = line
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} not in {line}"));
        line[at + after.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    let (blocks, fetched) = (number(": "), number("captured, "));
    assert!(
        fetched > 0 && fetched * 20 < blocks,
        "a recovery onto the disk the capture came from moves what changed, not the disk: {line}"
    );
    let show = site.ignite(&["client", "show", &g.name]);
    assert!(show.contains("action: local"), "{show}");
    wait_until(
        "the recovered guest to power off",
        Duration::from_secs(300),
        || {
            let show: serde_json::Value =
                serde_json::from_str(&vm(&["show", "src1n", "--json"])).unwrap();
            show["state"] != "running"
        },
        || tail(&console(), 20),
    );
    drop(running);
    mount_part(&disk_b, parts[&3], "ext4", &m);
    let notes = std::fs::read_to_string(m.join("root/notes.txt")).unwrap();
    let added = m.join("root/added.txt").exists();
    let motd = m.join("etc/motd").exists();
    umount(&m);
    assert_eq!((notes.as_str(), added, motd), ("second\n", true, false));
    eprintln!(
        "capture, restore, clone and recover lab done in {:?}",
        t.elapsed()
    );
}

/// The clone benchmark (`scripts/bench-clone`; not a test): one guest installed, then in one
/// run the time to its first-boot report (multi-user, login up) booting from its own disk
/// (the better of two boots),
/// after a full clone (the `recovery clone` command and the boot), and after an instant clone
/// (the command and the boot, the copy going on meanwhile at full speed); then the two peer
/// paths on the same stopped disk, each ending in the same checked boot: `restic restore` of
/// the image + `virt-sysprep`, and `qemu-img convert` of the raw image + `virt-sysprep`
/// (see [`Peers`]); the ratios.
#[test]
#[ignore]
fn bench_clone_to_login() {
    if !prerequisites() {
        return;
    }
    Peers::check_tools();
    let _turn = QEMU_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new(&[("lab", profile(&[&firstboot_hook(&firstboot_script())]))]);
    let lab = Lab::new("bclone");
    let server = site.server(&lab, "");
    site.client("52:54:00:78:00:01", "g1", "lab");
    let mut g = Guest::start(&lab, site.tmp.path(), 1, Firmware::Bios, 4 << 30, 1);
    let t = Instant::now();
    while !g.exited() {
        assert!(
            t.elapsed() < Duration::from_secs(1500),
            "the guest did not install, boot and power off:\n{}",
            seen(&site, &server, std::slice::from_ref(&g))
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let source = g
        .firstboot()
        .expect("the installed guest reported its first boot");
    let disk = site.tmp.path().join("g1.raw");
    define((&lab, &site, &server), "src", &disk, "disk", "bios", &g.mac);
    let report = |name: &str| {
        let log = site.state.join(format!("guests/{name}/console.log"));
        let marker = format!("{FIRSTBOOT} host=");
        wait_until(
            &format!("{name} to report its boot"),
            Duration::from_secs(900),
            || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).contains(&marker),
            || tail(&server.log_text(), 20),
        );
    };
    // Booted twice, the faster counting: the first boot after the install ran slower here
    // than either clone (111 s against 61 s in one run), which would flatter the ratio.
    let mut own = Duration::MAX;
    for _ in 0..2 {
        let _ = std::fs::remove_file(site.state.join("guests/src/console.log"));
        let t = Instant::now();
        vm(&lab, &site, &server, &["start", "src"]);
        let guard = GuestGuard::new(&site.state, "src");
        report("src");
        own = own.min(t.elapsed());
        drop(guard);
    }
    capture(&site, "src");
    vm(&lab, &site, &server, &["remove", "src", "--keep-disks"]);
    // The peers' preparation, not timed and done before any timing so that it loads no
    // timed step: the image backed up into restic, libguestfs's appliance built.
    let peers = Peers::prepare(site.tmp.path(), &disk);

    let t = Instant::now();
    site.ignite(&["recovery", "clone", "src", "--as", "full1"]);
    let restored = t.elapsed();
    boot_clone(&site, &lab, &server, "full1", &source);
    let full = t.elapsed();

    let t = Instant::now();
    site.ignite(&["recovery", "clone", "src", "--as", "fast1", "--instant"]);
    let made = t.elapsed();
    boot_clone(&site, &lab, &server, "fast1", &source);
    let instant = t.elapsed();
    // The instant clone's copy runs in its QEMU, which its first-boot job powered off: the
    // peers below share the CPU with nothing of Ignite's.
    let ctx = (&lab, &site, &server);
    let restic = peers.clone_and_boot(ctx, "rst1", Peer::Restic, &g.mac, &source);
    let qemu_img = peers.clone_and_boot(ctx, "qimg1", Peer::QemuImg, &g.mac, &source);
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "BENCH clone to login (4 GiB disk, QEMU TCG, first-boot report on the serial console)"
    );
    println!(
        "BENCH source boot from its own disk (best of 2): {:7.1} s",
        s(own)
    );
    println!(
        "BENCH full clone + boot:                    {:7.1} s (clone {:.1} s)",
        s(full),
        s(restored)
    );
    println!(
        "BENCH instant clone + boot:                 {:7.1} s (clone {:.1} s)",
        s(instant),
        s(made)
    );
    for (name, p) in [("restic restore", &restic), ("qemu-img convert", &qemu_img)] {
        println!(
            "BENCH {name:<16} + virt-sysprep + boot: {:7.1} s (copy {:.1} s, virt-sysprep {:.1} s)",
            s(p.total),
            s(p.copy),
            s(p.sysprep)
        );
    }
    println!("BENCH virt-sysprep: {}", peers.describe());
    println!(
        "BENCH instant / own boot = {:.2} (goal <= 1.5); full / instant = {:.2}",
        s(instant) / s(own),
        s(full) / s(instant)
    );
    println!(
        "BENCH restic path / ignite full = {:.2}, / ignite instant = {:.2} (goal >= 3)",
        s(restic.total) / s(full),
        s(restic.total) / s(instant)
    );
    println!(
        "BENCH qemu-img path / ignite full = {:.2}, / ignite instant = {:.2}",
        s(qemu_img.total) / s(full),
        s(qemu_img.total) / s(instant)
    );
}

/// The clone benchmark's peer paths: how an administrator clones a guest with standard
/// tools. The disk comes back whole — from a restic backup, or from an uncompressed (raw)
/// copy by `qemu-img convert` — and `virt-sysprep` (libguestfs) resets what Ignite's clone
/// resets: the hostname (`--hostname`, /etc/hostname and /etc/hosts), `machine-id`, SSH host
/// keys (`ssh-hostkeys` deletes them; Debian does not make new ones at boot, so `ssh-keygen
/// -A` in the guest makes fresh ones as Ignite does), MAC-bound network configuration
/// (`net-hwaddr`, `udev-persistent-net`, and the old MAC rewritten to the new one in the
/// files that name it, as Ignite does: the lab's networkd configuration matches on the
/// MAC), DHCP leases (`dhcp-client-state`) and the random seed (`customize` writes a new
/// one).
struct Peers {
    dir: std::path::PathBuf,
    /// The stopped source disk: the uncompressed copy `qemu-img convert` reads.
    raw: std::path::PathBuf,
    /// LIBGUESTFS_BACKEND_SETTINGS: `force_tcg` when the appliance cannot run under KVM.
    settings: String,
    /// Why KVM was not used, if it was not.
    no_kvm: Option<String>,
}

#[derive(Clone, Copy)]
enum Peer {
    Restic,
    QemuImg,
}

/// The time of one peer path: its copy, its virt-sysprep, and all of it to the booted guest.
struct PeerTimes {
    copy: Duration,
    sysprep: Duration,
    total: Duration,
}

/// The restic repository's password (a throwaway repository).
const RESTIC_PASSWORD: &str = "bench";

impl Peers {
    /// Fails the benchmark, saying what to install, when a peer's tool is missing (not in
    /// scripts/deps: CI does not run this benchmark).
    fn check_tools() {
        let missing: Vec<&str> = ["restic", "qemu-img", "virt-sysprep", "guestfish"]
            .into_iter()
            .filter(|t| which(t).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "the clone benchmark's peers need {missing:?}: apt-get install restic qemu-utils \
             libguestfs-tools libguestfs-xfs linux-image-amd64 (the appliance needs a kernel)"
        );
    }

    /// Backs `raw` up into a restic repository and builds libguestfs's appliance (its
    /// cache is kept between runs: a warm start is the usual case). The appliance runs
    /// under KVM when it can; if it cannot start there, under TCG, and why is kept.
    fn prepare(tmp: &Path, raw: &Path) -> Peers {
        let dir = tmp.join("peers");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = dir.join("restic");
        run(Command::new("restic")
            .env("RESTIC_PASSWORD", RESTIC_PASSWORD)
            .arg("init")
            .arg("--repo")
            .arg(&repo));
        run(Command::new("restic")
            .env("RESTIC_PASSWORD", RESTIC_PASSWORD)
            .arg("backup")
            .arg("--repo")
            .arg(&repo)
            .arg(raw));
        let mut peers = Peers {
            dir,
            raw: raw.to_path_buf(),
            settings: String::new(),
            no_kvm: None,
        };
        let started = peers.guestfish_run();
        if !started.status.success() {
            let err = String::from_utf8_lossy(&started.stderr);
            let why = err
                .lines()
                .filter(|l| l.starts_with("qemu-system-x86_64:"))
                .collect::<Vec<_>>()
                .join(" / ");
            eprintln!("libguestfs appliance under KVM failed:\n{}", tail(&err, 30));
            peers.settings = "force_tcg".into();
            peers.no_kvm = Some(why);
            let again = peers.guestfish_run();
            assert!(
                again.status.success(),
                "libguestfs's appliance does not start, even under TCG:\n{}",
                String::from_utf8_lossy(&again.stderr)
            );
        }
        peers
    }

    /// `guestfish -a /dev/null run`: starts (and, the first time, builds) the appliance.
    /// With libguestfs's debug output, which holds QEMU's own error if it fails.
    fn guestfish_run(&self) -> std::process::Output {
        self.libguestfs(Command::new("guestfish").args(["-a", "/dev/null", "run"]))
            .env("LIBGUESTFS_DEBUG", "1")
            .output()
            .unwrap()
    }

    fn libguestfs<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("LIBGUESTFS_BACKEND", "direct")
            .env("LIBGUESTFS_BACKEND_SETTINGS", &self.settings)
    }

    /// How virt-sysprep's appliance ran.
    fn describe(&self) -> String {
        match &self.no_kvm {
            None => "appliance under KVM (LIBGUESTFS_BACKEND=direct)".into(),
            Some(why) => format!(
                "appliance under TCG (LIBGUESTFS_BACKEND=direct, force_tcg): KVM failed: {why}"
            ),
        }
    }

    /// Timed from here: the disk copied back (`peer`), reset by virt-sysprep as guest
    /// `name` with a new MAC, defined and booted to the same checked first-boot report as
    /// Ignite's clones.
    fn clone_and_boot(
        &self,
        (lab, site, server): (&Lab, &Site, &Server),
        name: &str,
        peer: Peer,
        old_mac: &str,
        source: &HashMap<String, String>,
    ) -> PeerTimes {
        let mac = match peer {
            Peer::Restic => "52:54:00:78:00:21",
            Peer::QemuImg => "52:54:00:78:00:22",
        };
        let t = Instant::now();
        let img = match peer {
            Peer::Restic => {
                let out = self.dir.join(name);
                run(Command::new("restic")
                    .env("RESTIC_PASSWORD", RESTIC_PASSWORD)
                    .arg("restore")
                    .arg("latest")
                    .arg("--repo")
                    .arg(self.dir.join("restic"))
                    .arg("--target")
                    .arg(&out));
                // restic restores the file under its absolute path.
                out.join(self.raw.strip_prefix("/").unwrap())
            }
            Peer::QemuImg => {
                let img = self.dir.join(format!("{name}.raw"));
                run(Command::new("qemu-img")
                    .args(["convert", "-O", "raw"])
                    .arg(&self.raw)
                    .arg(&img));
                img
            }
        };
        let copy = t.elapsed();
        let rewrite_mac = format!(
            "grep -rilsF {old_mac} /etc/network /etc/systemd/network /etc/netplan \
             /etc/udev/rules.d /etc/NetworkManager/system-connections \
             | xargs -r sed -i 's/{old_mac}/{mac}/I'"
        );
        let out = run(self
            .libguestfs(&mut Command::new("virt-sysprep"))
            .args(["--format", "raw", "-a"])
            .arg(&img)
            .args(["--hostname", name])
            .args([
                "--operations",
                "machine-id,ssh-hostkeys,net-hwaddr,udev-persistent-net,dhcp-client-state,customize",
            ])
            .args(["--run-command", "ssh-keygen -A"])
            .args(["--run-command", &rewrite_mac]));
        eprintln!("virt-sysprep {name}:\n{out}");
        let sysprep = t.elapsed() - copy;
        define((lab, site, server), name, &img, "disk", "bios", mac);
        boot_clone(site, lab, server, name, source);
        let total = t.elapsed();
        // A disk the user named is kept by `vm remove`: deleted here (4 GiB each).
        vm(lab, site, server, &["remove", name]);
        std::fs::remove_file(&img).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(name));
        PeerTimes {
            copy,
            sysprep,
            total,
        }
    }
}

/// Runs `c`; its standard output. A failure fails the benchmark with its output.
fn run(c: &mut Command) -> String {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
