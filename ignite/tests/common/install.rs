//! The install lab: a site (boot files with the agent initramfs, a store holding the golden
//! image, profiles) served by `ignite server` in a network namespace, and QEMU guests with
//! real firmware (SeaBIOS + iPXE, OVMF) that network-install from it. Used by the install
//! tests and the install benchmark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::*;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// What the installed system prints on its first boot (see `FIRSTBOOT_HOOK` in the tests).
pub const FIRSTBOOT: &str = "IGNITE-FIRSTBOOT";

pub fn profile(hooks: &[&str]) -> String {
    let hooks: Vec<String> = hooks
        .iter()
        .map(|h| format!("'''\n{h}'''"))
        .collect::<Vec<_>>();
    format!(
        r#"description = "e2e: Debian 12 on BIOS and UEFI guests"
archive = "debian-12"
hooks = [{}]

[disk]
table = "gpt"

[[disk.partitions]]
type = "bios_boot"
size = "1M"

[[disk.partitions]]
type = "efi"
size = "64M"

[[disk.partitions]]
size = "2G"
fs = "ext4"
mount = "/"

[[disk.partitions]]
size = "rest"
fs = "xfs"
mount = "/var"

[identity]
hostname = "lab-{{mac6}}"
fresh_machine_id = true
fresh_ssh_host_keys = true
root_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl e2e@ignite"]

[network]
format = "auto"

[network.interfaces.boot]
dhcp = true

[boot]
loader = "grub"
firmware = "both"
"#,
        hooks.join(", ")
    )
}

/// The lab profile booted by Syslinux instead of GRUB: extlinux on BIOS, syslinux.efi on
/// UEFI. Its own ext4 /boot (no bios_boot partition: gptmbr.bin boots the partition marked
/// legacy BIOS bootable) exercises the path where /boot is not inside root.
pub fn extlinux_profile() -> String {
    r#"extends = "lab"
description = "e2e: the lab profile with Syslinux (extlinux on BIOS, syslinux.efi on UEFI)"

[[disk.partitions]]
type = "efi"
size = "64M"

[[disk.partitions]]
size = "256M"
fs = "ext4"
mount = "/boot"

[[disk.partitions]]
size = "2G"
fs = "ext4"
mount = "/"

[[disk.partitions]]
size = "rest"
fs = "xfs"
mount = "/var"

[boot]
loader = "extlinux"
"#
    .to_string()
}

/// `text` without terminal control sequences (OVMF's console positions the cursor before
/// every character a UEFI program prints).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// Output of a fixture script (its printed paths), built once and cached.
pub fn fixture(name: &str) -> Vec<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = run(&mut Command::new(repo.join("scripts/fixtures").join(name)));
    out.lines().map(PathBuf::from).collect()
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
        run(Command::new(ignite())
            .args(["netboot", "fetch-boot-files", "--kernel", "--boot-dir"])
            .arg(&boot));
        run(Command::new(ignite())
            .args(["netboot", "build-initramfs", "--output"])
            .arg(boot.join("ignite/initrd.img")));
        let golden = fixture("golden");
        let store = state.join("store");
        run(Command::new(ignite())
            .args(["archive", "--store"])
            .arg(&store)
            .arg("init"));
        run(Command::new(ignite())
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
        let cfg = self.tmp.path().join("server.toml");
        std::fs::write(
            &cfg,
            format!(
                "[boot]\nkernel = \"debian/vmlinuz\"\ninitrd = [\"ignite/initrd.img\"]\ncmdline = \"console=ttyS0,115200 {args}\"\n"
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

    pub fn client(&self, mac: &str, name: &str, profile: &str) {
        run(Command::new(ignite())
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
        run(Command::new(ignite())
            .args(args)
            .arg("--state-dir")
            .arg(&self.state))
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// One QEMU guest: an empty sparse virtio disk, a virtio NIC on the lab bridge that boots
/// first, the disk second.
pub struct Guest {
    pub name: String,
    pub mac: String,
    pub serial: PathBuf,
    disk: PathBuf,
    child: Child,
}

impl Guest {
    /// `cpus` vCPUs (TCG runs each on a host thread of its own).
    pub fn start(lab: &Lab, dir: &Path, n: u8, fw: Firmware, disk_size: u64, cpus: u8) -> Guest {
        let name = format!("g{n}");
        let mac = format!("52:54:00:78:00:{n:02x}");
        let tap = format!("tap{n}");
        lab.add_tap(&tap);
        let disk = dir.join(format!("{name}.raw"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(disk_size)
            .unwrap();
        let serial = dir.join(format!("{name}.serial"));
        let mut cmd = Lab::cmd(&lab.ns, "qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "1024", "-smp", &cpus.to_string()])
            .args(["-display", "none", "-monitor", "none"])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            ])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
            ])
            .args([
                "-drive",
                &format!("if=none,id=d0,format=raw,file={}", disk.display()),
            ])
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=2"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        if fw == Firmware::Uefi {
            let vars = dir.join(format!("{name}-vars.fd"));
            std::fs::copy(OVMF_VARS, &vars).unwrap();
            cmd.args(["-machine", "q35"])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                ])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,file={}", vars.display()),
                ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu");
        Guest {
            name,
            mac,
            serial,
            disk,
            child,
        }
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Installed disks are large: benchmarks run many rounds in one directory.
        let _ = std::fs::remove_file(&self.disk);
    }
}
