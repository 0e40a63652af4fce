//! The install lab: a site (boot files with the agent initramfs, a store holding the golden
//! image, profiles) served by `ignite server` in a network namespace, and QEMU guests with
//! real firmware (SeaBIOS + iPXE, OVMF) that network-install from it. Used by the install
//! tests and the install benchmark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::lab::{Lab, Server};
use crate::{fixture, ignite_bin, run, strip_ansi, tail, EMULATED_CPU};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// A boot network without IPv6, as the sysadmin's firmware setup says (ignite's QEMU engine
/// does the same): otherwise each boot after an install, or after a refused boot file,
/// waits out DHCPv6 (about 80 s, up to two minutes) before the firmware's next option.
const OVMF_IPV4_ONLY: [&str; 2] = ["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"];
/// OVMF built for Secure Boot (SMM-protected variables), and variables with Microsoft's
/// keys enrolled (its UEFI CA, which signs shim, is in db): Secure Boot on from the start.
pub const OVMF_SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_MS_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
/// What the installed system prints on its first boot (see `FIRSTBOOT_HOOK` in the tests).
pub const FIRSTBOOT: &str = "IGNITE-FIRSTBOOT";

/// A shell function for first-boot scripts: `drivers DISK` (`sda`, `nvme0n1`) prints the
/// disk's driver and the SCSI host's driver behind it (`-`: none) as `DRIVER:HOST`.
const DRIVERS_FN: &str = r#"drivers() {
  dev=/sys/block/$1/device
  [ -e $dev/driver ] || dev=$dev/device
  hba=$(cat "$(readlink -f /sys/block/$1/device)"/../../scsi_host/*/proc_name 2>/dev/null || echo -)
  echo "$(basename "$(readlink -f $dev/driver)"):$hba"
}"#;

/// Shell lines for a first-boot script ([`firstboot_hook`] defines `drivers`): they set
/// `disk` (the disk holding `/`), `lbs` (its logical sector size), `drv` (its driver), `hba`
/// (the driver of the SCSI host it hangs off, or `-`) and `nicdrv` (the first NIC's driver),
/// for the line [`HW_FIELDS`] prints.
pub const HW_FACTS: &str = r#"src=$(findmnt -no SOURCE /)
disk=$(lsblk -no PKNAME "$src" | head -1)
lbs=$(cat /sys/block/$disk/queue/logical_block_size)
d=$(drivers $disk)
drv=${d%%:*}
hba=${d#*:}
nic=$(ls /sys/class/net | grep -v '^lo$' | head -1)
nicdrv=$(basename "$(readlink -f /sys/class/net/$nic/device/driver)")"#;

/// The fields [`HW_FACTS`] sets, as a first-boot line prints them.
pub const HW_FIELDS: &str = "disk=$disk lbs=$lbs drv=$drv hba=$hba nicdrv=$nicdrv";

/// What an installed machine's first-boot line ([`HW_FIELDS`]) says of its hardware.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub disk: &'static str,
    pub driver: &'static str,
    pub hba: &'static str,
    pub lbs: &'static str,
    pub nic_driver: &'static str,
}

impl Seen {
    /// A virtio disk and NIC, 512-byte sectors.
    pub const VIRTIO: Seen = Seen {
        disk: "vda",
        driver: "virtio_blk",
        hba: "-",
        lbs: "512",
        nic_driver: "virtio_net",
    };

    /// Asserts that the first-boot line `id` of machine `name` shows this hardware.
    pub fn check(&self, name: &str, id: &HashMap<String, String>) {
        let got = |k: &str| id.get(k).map(String::as_str).unwrap_or("(none)");
        let want = [
            ("disk", self.disk),
            ("drv", self.driver),
            ("hba", self.hba),
            ("lbs", self.lbs),
            ("nicdrv", self.nic_driver),
        ];
        for (k, v) in want {
            assert_eq!(got(k), v, "{name}: {k} in {id:?}");
        }
    }
}

/// The lab profile (`profiles/examples/lab.toml`) with `hooks` run at the end of the install.
pub fn profile(hooks: &[&str]) -> String {
    let hooks: Vec<String> = hooks.iter().map(|h| format!("'''\n{h}'''")).collect();
    // Top-level keys go before the first table.
    format!(
        "hooks = [{}]\n{}",
        hooks.join(", "),
        include_str!("../../profiles/examples/lab.toml")
    )
}

/// Whether an install lab can run here (QEMU, namespaces, debootstrap for the golden image,
/// OVMF, the virtio iPXE ROM) and the `extra` tools and files a test needs beside them;
/// see [`crate::require_tools`].
pub fn lab_prerequisites(extra: &[&str]) -> bool {
    let mut need = vec![
        "qemu-system-x86_64",
        "ip",
        "apt-get",
        "debootstrap",
        OVMF_CODE,
        OVMF_VARS,
        "/usr/lib/ipxe/qemu/efi-virtio.rom",
    ];
    need.extend_from_slice(extra);
    crate::require_tools(&need)
}

/// A profile hook that installs `script` (a shell script that prints to /dev/ttyS0) as a
/// oneshot service run once the installed system is up, which then powers off (ending
/// QEMU). The install tests print what they check about the installed system this way;
/// [`DRIVERS_FN`] is defined for them.
pub fn firstboot_hook(script: &str) -> String {
    format!(
        r#"cat >/usr/local/sbin/ignite-firstboot <<'EOF'
#!/bin/sh
{DRIVERS_FN}
{script}
EOF
chmod 755 /usr/local/sbin/ignite-firstboot
cat >/etc/systemd/system/ignite-firstboot.service <<'EOF'
[Unit]
Description=Print this machine's facts on the serial console (Ignite tests)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ignite-firstboot
ExecStartPost=/bin/systemctl poweroff
[Install]
WantedBy=multi-user.target
EOF
systemctl enable ignite-firstboot.service"#
    )
}

/// The lab profile booted by Syslinux (`profiles/examples/lab-extlinux.toml`); it extends
/// `lab`, whose hooks it keeps.
pub fn extlinux_profile() -> String {
    include_str!("../../profiles/examples/lab-extlinux.toml").to_string()
}

/// Everything a lab install needs: boot files with the agent initramfs, a store holding the
/// golden image as `debian-12`, the profiles, and a server config.
pub struct Site {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub boot: PathBuf,
}

impl Site {
    pub fn new(profiles: &[(&str, String)]) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let boot = tmp.path().join("boot");
        eprintln!("site in {}", tmp.path().display());
        // What a sysadmin's first `ignite server` does on a fresh state directory: make the
        // boot files of the defaults (iPXE, Debian's kernel, the agent initramfs for it).
        let dirs = |c: &mut Command| {
            c.arg("--state-dir")
                .arg(&state)
                .arg("--boot-dir")
                .arg(&boot);
        };
        let mut prepare = Command::new(ignite_bin());
        prepare.args(["server", "--prepare"]);
        dirs(&mut prepare);
        run(&mut prepare);
        let mut check = Command::new(ignite_bin());
        check.args(["server", "--check", "--interface", "lo"]);
        dirs(&mut check);
        let listing = run(&mut check);
        for file in [
            "undionly.kpxe",
            "ipxe.efi",
            "debian/vmlinuz",
            "ignite/initrd.img",
        ] {
            assert!(
                listing
                    .lines()
                    .any(|l| l.contains(file) && l.contains("present")),
                "after --prepare, {file} is not present:\n{listing}"
            );
        }
        let golden = fixture("golden");
        let store = state.join("store");
        run(Command::new(ignite_bin())
            .args(["archive", "--store"])
            .arg(&store)
            .arg("init"));
        run(Command::new(ignite_bin())
            .args(["archive", "--store"])
            .arg(&store)
            .args(["import", "--name", "debian-12"])
            .arg(&golden[1]));
        std::fs::create_dir_all(state.join("profiles")).unwrap();
        for (name, text) in profiles {
            std::fs::write(state.join("profiles").join(format!("{name}.toml")), text).unwrap();
        }
        Site { tmp, state, boot }
    }

    /// `ignite server` booting the agent with `args` added to its kernel command line.
    pub fn server(&self, lab: &Lab, args: &str) -> Server {
        self.server_with(lab, args, "")
    }

    /// `ignite server` as [`Site::server`], with `config` (TOML tables) added to its config.
    pub fn server_with(&self, lab: &Lab, args: &str, config: &str) -> Server {
        let cfg = self.tmp.path().join("server.toml");
        std::fs::write(
            &cfg,
            format!(
                "[boot]\nkernel = \"debian/vmlinuz\"\ninitrd = [\"ignite/initrd.img\"]\ncmdline = \"console=ttyS0,115200 {args}\"\n{config}"
            ),
        )
        .unwrap();
        Server::start(
            lab,
            &self.state,
            &self.boot,
            &["--config", cfg.to_str().unwrap()],
        )
    }

    /// `ignite server --prepare` with `boot` (settings of its [boot] table) added to the
    /// defaults, as a sysadmin turning them on runs it; then `--check`'s listing.
    pub fn prepare_with(&self, boot: &str) -> String {
        let cfg = self.tmp.path().join("prepare.toml");
        std::fs::write(&cfg, format!("[boot]\n{boot}")).unwrap();
        let mut listing = String::new();
        for what in ["--prepare", "--check"] {
            listing = run(Command::new(ignite_bin())
                .args(["server", what, "--interface", "lo", "--config"])
                .arg(&cfg)
                .arg("--state-dir")
                .arg(&self.state)
                .arg("--boot-dir")
                .arg(&self.boot));
        }
        listing
    }

    pub fn client(&self, mac: &str, name: &str, profile: &str) {
        run(Command::new(ignite_bin())
            .args([
                "client",
                "add",
                mac,
                name,
                "install",
                profile,
                "--state-dir",
            ])
            .arg(&self.state));
    }

    pub fn ignite(&self, args: &[&str]) -> String {
        run(Command::new(ignite_bin())
            .args(args)
            .arg("--state-dir")
            .arg(&self.state))
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Firmware {
    Bios,
    Uefi,
    /// OVMF with Secure Boot on ([`OVMF_SECBOOT_CODE`], [`OVMF_MS_VARS`]).
    UefiSecureBoot,
}

/// The controller a guest disk hangs off, as QEMU emulates it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiskBus {
    /// virtio-blk (512-byte sectors).
    Virtio,
    /// virtio-blk with 4096-byte logical and physical sectors (a 4K-native disk).
    Virtio4k,
    /// An NVMe controller with one namespace.
    Nvme,
    /// A SATA disk on an AHCI controller.
    Ahci,
    /// A SCSI disk behind an LSI MegaRAID SAS 1078 HBA (QEMU `megasas`).
    Megasas,
    /// A SCSI disk on a virtio-scsi controller.
    VirtioScsi,
}

impl DiskBus {
    /// QEMU `-device` arguments for disk `i` (drive `d{i}`) of guest `name`.
    fn devices(self, name: &str, i: usize) -> Vec<String> {
        let boot = format!("bootindex={}", i + 2);
        match self {
            DiskBus::Virtio => vec![format!("virtio-blk-pci,drive=d{i},{boot}")],
            DiskBus::Virtio4k => vec![format!(
                "virtio-blk-pci,drive=d{i},logical_block_size=4096,physical_block_size=4096,{boot}"
            )],
            DiskBus::Nvme => vec![format!("nvme,drive=d{i},serial=ign-{name}-{i},{boot}")],
            DiskBus::Ahci => vec![
                format!("ahci,id=ahci{i}"),
                format!("ide-hd,drive=d{i},bus=ahci{i}.0,{boot}"),
            ],
            DiskBus::Megasas => vec![
                format!("megasas,id=sas{i}"),
                format!("scsi-hd,drive=d{i},bus=sas{i}.0,{boot}"),
            ],
            DiskBus::VirtioScsi => vec![
                format!("virtio-scsi-pci,id=vscsi{i}"),
                format!("scsi-hd,drive=d{i},bus=vscsi{i}.0,{boot}"),
            ],
        }
    }
}

/// A guest's NIC model and disks.
#[derive(Clone, Debug)]
pub struct Hardware {
    /// QEMU NIC device: `virtio-net-pci`, `e1000e`, `rtl8139`, ...
    pub nic: &'static str,
    /// One empty sparse disk on each (none: a machine without a disk).
    pub disks: Vec<DiskBus>,
}

impl Default for Hardware {
    fn default() -> Hardware {
        Hardware {
            nic: "virtio-net-pci",
            disks: vec![DiskBus::Virtio],
        }
    }
}

/// One QEMU guest: empty sparse disks (by default one on virtio), a NIC (by default virtio)
/// on the lab bridge that boots first, the disks after it.
pub struct Guest {
    pub name: String,
    pub mac: String,
    pub serial: PathBuf,
    disk: PathBuf,
    hw: Hardware,
    dir: PathBuf,
    tap: String,
    fw: Firmware,
    cpus: u8,
    child: Child,
}

impl Guest {
    /// `cpus` vCPUs (TCG runs each on a host thread of its own).
    pub fn start(lab: &Lab, dir: &Path, n: u8, fw: Firmware, disk_size: u64, cpus: u8) -> Guest {
        Guest::start_on(lab, dir, n, fw, Hardware::default(), disk_size, cpus)
    }

    /// A guest with `hw`'s NIC and disks (each `disk_size` bytes).
    pub fn start_on(
        lab: &Lab,
        dir: &Path,
        n: u8,
        fw: Firmware,
        hw: Hardware,
        disk_size: u64,
        cpus: u8,
    ) -> Guest {
        let name = format!("g{n}");
        let mac = format!("52:54:00:78:00:{n:02x}");
        let tap = format!("tap{n}");
        lab.add_tap(&tap);
        let disk = dir.join(format!("{name}.raw"));
        for i in 0..hw.disks.len() {
            std::fs::File::create(disk_path(&disk, i))
                .unwrap()
                .set_len(disk_size)
                .unwrap();
        }
        let serial = dir.join(format!("{name}.serial"));
        if fw == Firmware::Uefi {
            // Fresh variables: a guest's first boot knows nothing of earlier ones.
            std::fs::copy(OVMF_VARS, dir.join(format!("{name}-vars.fd"))).unwrap();
        }
        if fw == Firmware::UefiSecureBoot {
            std::fs::copy(OVMF_MS_VARS, dir.join(format!("{name}-vars.fd"))).unwrap();
        }
        let child = launch(lab, dir, &name, &mac, &tap, &disk, &hw, &serial, fw, cpus);
        Guest {
            name,
            mac,
            serial,
            disk,
            hw,
            dir: dir.to_path_buf(),
            tap,
            fw,
            cpus,
            child,
        }
    }

    /// Starts the guest again on the same disk once it has powered off (network boot first,
    /// as always), its console in a new file named after `boot`.
    pub fn boot_again(&mut self, lab: &Lab, boot: &str) {
        assert!(self.exited(), "{} is still running", self.name);
        self.serial = self.dir.join(format!("{}-{boot}.serial", self.name));
        self.child = launch(
            lab,
            &self.dir,
            &self.name,
            &self.mac,
            &self.tap,
            &self.disk,
            &self.hw,
            &self.serial,
            self.fw,
            self.cpus,
        );
    }

    /// Starts the guest again once it has powered off with only its disk `keep`, the others
    /// taken out (as a failed disk is): that disk is the machine's only one, on its own
    /// controller, with the same firmware variables; the console goes to a new file named
    /// after `boot`.
    pub fn boot_with_only_disk(&mut self, lab: &Lab, boot: &str, keep: usize) {
        let only = Hardware {
            nic: self.hw.nic,
            disks: vec![self.hw.disks[keep]],
        };
        let first = self.disk_at(keep);
        // Started as a machine with that one disk; then the guest is again the one that owns
        // all its disks (for `disk_at` and for removing them when dropped).
        let all = (
            std::mem::replace(&mut self.disk, first),
            std::mem::replace(&mut self.hw, only),
        );
        self.boot_again(lab, boot);
        (self.disk, self.hw) = all;
    }

    /// The disk image (for the host to look at once the guest is off).
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// Disk image `i` (0 is [`Guest::disk`]).
    pub fn disk_at(&self, i: usize) -> PathBuf {
        disk_path(&self.disk, i)
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// The installed system's identity line, once it has printed it.
    pub fn firstboot(&self) -> Option<HashMap<String, String>> {
        let text = self.console();
        // A getty prompt may share the line; the agent's log of the hook has `$(` in it.
        let line = text
            .lines()
            .filter_map(|l| l.find(FIRSTBOOT).map(|i| &l[i..]))
            .find(|l| l.ends_with(" end") && !l.contains("$("))?;
        Some(
            line.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// How the guest stopped short of what a test waits for, if it has: it exited, or its
    /// console came to a dead end ([`DEAD_ENDS`]: it will not go on by itself). A test
    /// waiting for the guest then fails at once, with the console.
    pub fn stopped_short(&mut self) -> Option<String> {
        if self.exited() {
            return Some("stopped".into());
        }
        let text = strip_ansi(&self.console());
        text.lines()
            .find(|l| DEAD_ENDS.iter().any(|d| l.contains(d)))
            .map(|l| format!("came to a dead end ({l})"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

/// The end of each guest's console, headed by its name: what a test that waited for them in
/// vain shows.
pub fn console_tails<'a>(guests: impl IntoIterator<Item = &'a Guest>) -> String {
    let tails: Vec<String> = guests
        .into_iter()
        .map(|g| {
            format!(
                "--- {} console (tail):\n{}",
                g.name,
                tail(&strip_ansi(&g.console()), 40)
            )
        })
        .collect();
    tails.join("\n")
}

/// What a console shows when a boot has stopped short of its system for good: a kernel
/// panic, Debian's initramfs shell, systemd's emergency mode (its sulogin finding root
/// locked). (The agent's own shell after a failed install is not one: it reports first.)
const DEAD_ENDS: &[&str] = &[
    "Kernel panic - not syncing",
    "Dropping to a shell!",
    "You are in emergency mode",
    "Cannot open access to console, the root account is locked",
];

/// Disk `i` of a guest whose first disk is `first` (`g1.raw`, `g1-1.raw`, ...).
fn disk_path(first: &Path, i: usize) -> PathBuf {
    match i {
        0 => first.to_path_buf(),
        _ => first.with_file_name(format!(
            "{}-{i}.raw",
            first.file_stem().unwrap().to_string_lossy()
        )),
    }
}

/// The NIC's option ROM: QEMU's default (iPXE, whose UEFI driver offers a boot option of
/// its own), except under Secure Boot, where OVMF's own driver and PXE stand in for a
/// machine's signed NIC firmware.
fn nic_rom(fw: Firmware) -> &'static str {
    match fw {
        Firmware::UefiSecureBoot => ",romfile=",
        Firmware::Bios | Firmware::Uefi => "",
    }
}

#[allow(clippy::too_many_arguments)]
fn launch(
    lab: &Lab,
    dir: &Path,
    name: &str,
    mac: &str,
    tap: &str,
    disk: &Path,
    hw: &Hardware,
    serial: &Path,
    fw: Firmware,
    cpus: u8,
) -> Child {
    let mut cmd = Lab::cmd(&lab.ns, "qemu-system-x86_64");
    cmd.args(EMULATED_CPU)
        .args(["-m", "1024"])
        .args(["-smp", &cpus.to_string()])
        .args(["-display", "none", "-monitor", "none"])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        ])
        .args([
            "-device",
            &format!("{},netdev=n0,mac={mac},bootindex=1{}", hw.nic, nic_rom(fw)),
        ]);
    for (i, bus) in hw.disks.iter().enumerate() {
        let file = disk_path(disk, i);
        cmd.args([
            "-drive",
            &format!("if=none,id=d{i},format=raw,file={}", file.display()),
        ]);
        for d in bus.devices(name, i) {
            cmd.args(["-device", &d]);
        }
    }
    cmd.arg("-serial").arg(format!("file:{}", serial.display()));
    if fw == Firmware::Uefi {
        let vars = dir.join(format!("{name}-vars.fd"));
        cmd.args(["-machine", "q35"])
            .args(OVMF_IPV4_ONLY)
            .args([
                "-drive",
                &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            ])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,file={}", vars.display()),
            ]);
    }
    if fw == Firmware::UefiSecureBoot {
        // As Debian's ovmf README says: SMM keeps the variables (and so Secure Boot's keys)
        // out of the guest's reach.
        let vars = dir.join(format!("{name}-vars.fd"));
        cmd.args(["-machine", "q35,smm=on"])
            .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,readonly=on,file={OVMF_SECBOOT_CODE}"),
            ])
            .args([
                "-drive",
                &format!("if=pflash,format=raw,file={}", vars.display()),
            ])
            .args(OVMF_IPV4_ONLY);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu")
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Installed disks are large: benchmarks run many rounds in one directory.
        for i in 0..self.hw.disks.len() {
            let _ = std::fs::remove_file(disk_path(&self.disk, i));
        }
    }
}
