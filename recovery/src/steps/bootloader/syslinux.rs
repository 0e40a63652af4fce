//! Syslinux. On BIOS the image's `extlinux --install` writes Syslinux's boot sector and
//! ldlinux.sys into the file system holding /boot, Syslinux's gptmbr.bin goes into the MBR's
//! boot code, and the plan marks that partition legacy BIOS bootable (see
//! `agent::partition`), which is how gptmbr.bin finds it. On UEFI syslinux.efi goes on the
//! removable-media path of the ESP; it reads only the partition it was loaded from, so the
//! kernel and initrd are copied there.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use ignite_profiles::{DiskPlan, Fs, PartKind};

use super::{esp_mount, newest_kernel, write_config, BootFiles, CONSOLE_ARGS};
use crate::log::Log;
use crate::steps::chroot;
use crate::steps::mount::Target;

/// In the image (package syslinux-common).
const GPTMBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
/// In the image (packages syslinux-efi and syslinux-common).
const SYSLINUX_EFI: &str = "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi";
const LDLINUX_E64: &str = "/usr/lib/syslinux/modules/efi64/ldlinux.e64";
/// The boot code at the start of the MBR; what follows it (disk signature, partition
/// entries, 0x55AA) is the protective MBR we wrote and stays.
const MBR_CODE: usize = 440;
/// Where extlinux's files and config go, inside the installed system.
const EXTLINUX_DIR: &str = "/boot/extlinux";
/// The removable-media path of the ESP (firmware boots it with no NVRAM entry).
const EFI_BOOT_DIR: &str = "EFI/BOOT";

/// extlinux.conf (BIOS) or syslinux.cfg (UEFI): no menu and no prompt, so the kernel boots
/// at once, with root by UUID. `kernel` and `initrd` are paths on the file system Syslinux
/// reads them from.
pub fn syslinux_cfg(
    serial: bool,
    kernel: &str,
    initrd: Option<&str>,
    root_uuid: &str,
    note: &str,
) -> String {
    let mut s = String::new();
    // SERIAL has to come first so that everything after it reaches the serial port too.
    // Only the BIOS Syslinux drives a UART itself; syslinux.efi writes to the firmware's
    // console, which firmware such as OVMF already copies to the serial port.
    if serial {
        s.push_str("SERIAL 0 115200\n");
    }
    s.push_str("# Written by the Ignite install agent.\n");
    for l in note.lines() {
        s.push_str(&format!("# {l}\n"));
    }
    s.push_str(&format!(
        "DEFAULT linux\n\
         PROMPT 0\n\
         TIMEOUT 0\n\
         LABEL linux\n\
         \tLINUX {kernel}\n"
    ));
    if let Some(i) = initrd {
        s.push_str(&format!("\tINITRD {i}\n"));
    }
    s.push_str(&format!(
        "\tAPPEND root=UUID={root_uuid} ro {CONSOLE_ARGS}\n"
    ));
    s
}

pub(super) fn install_bios(
    target: &mut Target,
    disk_plan: &DiskPlan,
    disk: &str,
    f: &BootFiles,
    log: &mut Log,
) -> Result<()> {
    // Syslinux 6.04 reads the ext4 our mke2fs makes with Debian's defaults (64bit with
    // 64-byte group descriptors, metadata_csum, flex_bg, extents): a Debian kernel whose
    // inode sits in block group 1 of such a /boot boots under SeaBIOS, so /boot needs no
    // special mke2fs features. xfs is another matter: see below.
    match f.boot_fs {
        Fs::Ext4 | Fs::Vfat => {}
        Fs::Xfs => bail!(
            "extlinux on BIOS cannot boot from /boot on xfs: xfs keeps its superblock in the partition's first sector, where Syslinux's boot sector has to go (gptmbr.bin then stops with \"Missing OS\"); put /boot on its own ext4 partition or use loader = \"grub\""
        ),
        Fs::Swap => bail!("/boot is on swap space; mount an ext4 file system there"),
    }
    let part = disk_plan
        .boot_partition()
        .context("no partition of the plan holds /boot")?;
    if !part.legacy_bios_bootable {
        bail!(
            "the plan does not mark partition {} (which holds /boot) legacy BIOS bootable, so gptmbr.bin would not find it; the server that rendered the plan predates extlinux support: update it",
            part.number
        );
    }
    let mbr = std::fs::read(target.path(GPTMBR))
        .with_context(|| format!("cannot read {GPTMBR} in the image (it needs the packages extlinux and syslinux-common)"))?;
    if mbr.len() != MBR_CODE {
        bail!(
            "{GPTMBR} in the image is {} bytes, not Syslinux's {MBR_CODE}-byte GPT MBR; reinstall syslinux-common in the image",
            mbr.len()
        );
    }
    let kernel = format!("{}/{}", f.prefix, f.kernel);
    let initrd = f.initrd.as_ref().map(|i| format!("{}/{i}", f.prefix));
    let cfg = syslinux_cfg(
        true,
        &kernel,
        initrd.as_deref(),
        &f.root_uuid,
        "Names the kernel installed with the image: after a kernel update, change it here.",
    );
    write_config(target, &format!("{EXTLINUX_DIR}/extlinux.conf"), &cfg, log)?;
    chroot::run(
        target,
        Command::new("extlinux").args(["--install", EXTLINUX_DIR]),
        log,
    )
    .context("extlinux --install (the image needs the package extlinux)")?;
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("disk {disk}: cannot open it to write the MBR boot code"))?;
    dev.write_all_at(&mbr, 0)
        .and_then(|()| dev.sync_all())
        .with_context(|| format!("disk {disk}: cannot write the MBR boot code"))?;
    log.line(&format!(
        "disk {disk}: Syslinux gptmbr.bin in the MBR; it boots partition {} ({})",
        part.number, part.device
    ));
    Ok(())
}

/// What syslinux.efi, ldlinux.e64 and syslinux.cfg take on the ESP (about 310 KiB), with
/// room for FAT's cluster rounding of every file.
const ESP_LOADER_ROOM: u64 = 1 << 20;

/// For extlinux on UEFI, judged from the image's /boot listing (file name, size) before
/// anything is written: why the plan's ESP cannot hold the loader and copies of the kernel
/// and initrd, or `None` when it can (or when the ESP is /boot itself, or the image has no
/// kernel: the agent reports that one).
pub fn esp_too_small(disk: &DiskPlan, boot: &[(String, u64)]) -> Option<String> {
    let esp = disk.partitions.iter().find(|p| p.kind == PartKind::Efi)?;
    if disk.boot_partition().map(|p| p.number) == Some(esp.number) {
        return None;
    }
    let (kernel, initrd) = newest_kernel(boot.iter().map(|b| b.0.as_str()))?;
    let size = |n: &str| boot.iter().find(|b| b.0 == n).map_or(0, |b| b.1);
    let files = size(&kernel) + initrd.as_deref().map_or(0, size);
    let need = files + ESP_LOADER_ROOM;
    // FAT's two tables, reserved sectors and root directory take under 1% of a partition
    // of any size mkfs.vfat makes; 1/64 and 64 KiB leave a margin.
    let room = esp
        .size_bytes
        .saturating_sub(esp.size_bytes / 64 + (64 << 10));
    if need <= room {
        return None;
    }
    let want_mib = esp_mib_for(need);
    Some(format!(
        "extlinux on UEFI boots copies of the kernel and initrd from the EFI system partition (syslinux.efi reads no other partition), but partition {} ({}) cannot hold {kernel}{} ({} with the loader); make the ESP at least size = \"{want_mib}M\" or use loader = \"grub\"",
        esp.number,
        ignite_profiles::human(esp.size_bytes),
        initrd.map(|i| format!(" and {i}")).unwrap_or_default(),
        ignite_profiles::human(need),
    ))
}

/// An ESP size (MiB) whose free space holds `need` bytes.
fn esp_mib_for(need: u64) -> u64 {
    (need + need / 64 + (64 << 10)).div_ceil(1 << 20) + 1
}

/// Bytes free for a non-root user on the file system of `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path)
        .with_context(|| format!("cannot stat the file system of {}", path.display()))?;
    Ok(st.f_bavail * st.f_frsize)
}

pub(super) fn install_uefi(
    target: &mut Target,
    disk_plan: &DiskPlan,
    f: &BootFiles,
    log: &mut Log,
) -> Result<()> {
    let (esp, esp_dev) = esp_mount(target, disk_plan, "extlinux")?;
    let dir = target.path(&format!("{esp}/{EFI_BOOT_DIR}"));
    let efi = target.path(SYSLINUX_EFI);
    let ldlinux = target.path(LDLINUX_E64);
    for (p, pkg) in [(&efi, "syslinux-efi"), (&ldlinux, "syslinux-common")] {
        if !p.is_file() {
            bail!(
                "{} is not in the image; extlinux for UEFI needs the package {pkg} in the golden image",
                p.strip_prefix(target.root()).unwrap_or(p).display()
            );
        }
    }
    // What to copy: the loader always; the kernel and initrd unless /boot is the ESP itself.
    let mut copies = vec![
        (efi, "BOOTX64.EFI".to_string()),
        (ldlinux, "ldlinux.e64".to_string()),
    ];
    let on_esp = f.boot_dev == esp_dev;
    let (kernel, initrd) = if on_esp {
        (
            format!("{}/{}", f.prefix, f.kernel),
            f.initrd.as_ref().map(|i| format!("{}/{i}", f.prefix)),
        )
    } else {
        let boot = target.path("/boot");
        copies.push((boot.join(&f.kernel), f.kernel.clone()));
        if let Some(i) = &f.initrd {
            copies.push((boot.join(i), i.clone()));
        }
        (
            format!("/{EFI_BOOT_DIR}/{}", f.kernel),
            f.initrd.as_ref().map(|i| format!("/{EFI_BOOT_DIR}/{i}")),
        )
    };
    let mut need = 0u64;
    for (src, _) in &copies {
        need += std::fs::metadata(src)
            .with_context(|| format!("cannot stat {}", src.display()))?
            .len();
    }
    let free = free_bytes(&target.path(&esp))?;
    // One cluster per file may be lost to rounding; 64 KiB per file covers FAT's largest.
    let need = need + 64 * 1024 * (copies.len() as u64 + 1);
    if need > free {
        bail!(
            "the EFI system partition ({esp}) has {} free but extlinux for UEFI needs {} on it (syslinux.efi, ldlinux.e64{}): syslinux.efi reads only the partition it was loaded from; make the ESP at least size = \"{}M\" or use loader = \"grub\"",
            ignite_profiles::human(free),
            ignite_profiles::human(need),
            if on_esp { "" } else { ", the kernel and the initrd" },
            esp_mib_for(need)
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (src, name) in &copies {
        std::fs::copy(src, dir.join(name)).with_context(|| {
            format!(
                "cannot copy {} to {}",
                src.display(),
                dir.join(name).display()
            )
        })?;
    }
    let note = if on_esp {
        "Names the kernel installed with the image: after a kernel update, change it here."
            .to_string()
    } else {
        // The known trade-off of syslinux.efi: it cannot read /boot, so it boots copies.
        format!(
            "syslinux.efi reads only this partition: {}{} here {} copies made from /boot\n\
             at install time. A kernel update in the installed system does not refresh\n\
             them: copy the new kernel and initrd here and change the names below.",
            f.kernel,
            f.initrd
                .as_ref()
                .map(|i| format!(" and {i}"))
                .unwrap_or_default(),
            if f.initrd.is_some() { "are" } else { "is" }
        )
    };
    let cfg = syslinux_cfg(false, &kernel, initrd.as_deref(), &f.root_uuid, &note);
    write_config(
        target,
        &format!("{esp}/{EFI_BOOT_DIR}/syslinux.cfg"),
        &cfg,
        log,
    )?;
    if on_esp {
        log.line(&format!(
            "syslinux.efi in {esp}/{EFI_BOOT_DIR}/BOOTX64.EFI boots /boot on the ESP"
        ));
    } else {
        log.line(&format!(
            "syslinux.efi in {esp}/{EFI_BOOT_DIR}/BOOTX64.EFI; it reads only the ESP, so {}{} copied there: a kernel update in the installed system will not refresh those copies",
            f.kernel,
            f.initrd.as_ref().map(|i| format!(" and {i} were")).unwrap_or(" was".into())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::bootloader::grub::grub_cfg;

    #[test]
    fn extlinux_conf_for_bios_boots_at_once_on_the_serial_console() {
        let c = syslinux_cfg(
            true,
            "/boot/vmlinuz-6",
            Some("/boot/initrd.img-6"),
            "R",
            "one\ntwo",
        );
        assert!(c.starts_with("SERIAL 0 115200\n"), "{c}");
        assert!(c.contains("\n# one\n# two\n"), "{c}");
        assert!(
            c.contains("\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n"),
            "{c}"
        );
        assert!(
            c.contains("\n\tLINUX /boot/vmlinuz-6\n\tINITRD /boot/initrd.img-6\n"),
            "{c}"
        );
        assert!(
            c.ends_with("\tAPPEND root=UUID=R ro console=ttyS0,115200 console=tty0\n"),
            "{c}"
        );
        assert!(!c.contains("MENU") && !c.contains("UI "), "{c}");
    }

    #[test]
    fn syslinux_cfg_for_uefi_has_no_serial_directive_and_may_lack_an_initrd() {
        let c = syslinux_cfg(false, "/EFI/BOOT/vmlinuz-6", None, "R", "");
        assert!(!c.contains("SERIAL"), "{c}");
        assert!(!c.contains("INITRD"), "{c}");
        assert!(c.contains("\tLINUX /EFI/BOOT/vmlinuz-6\n"), "{c}");
        // GRUB and Syslinux give the kernel the same console arguments.
        let g = grub_cfg("B", Fs::Ext4, "", "R", "vmlinuz-6", None, &[]);
        let args = |s: &str, key: &str| {
            s.lines()
                .find(|l| l.trim_start().starts_with(key))
                .and_then(|l| l.split_once("root=").map(|x| x.1.to_string()))
                .unwrap()
        };
        assert_eq!(args(&c, "APPEND"), args(&g, "linux"));
    }

    fn plan(esp: &str, esp_mount: &str) -> DiskPlan {
        let text = format!(
            "archive = \"debian-12\"\n\
             [[disk.partitions]]\ntype = \"efi\"\nsize = \"{esp}\"\nmount = \"{esp_mount}\"\n\
             [[disk.partitions]]\nsize = \"rest\"\nfs = \"ext4\"\nmount = \"/\"\n\
             [boot]\nloader = \"extlinux\"\nfirmware = \"uefi\"\n"
        );
        ignite_profiles::Profile::from_str_named("t.toml", &text)
            .unwrap()
            .render(&ignite_profiles::ClientFacts {
                mac: "52:54:00:00:00:01".into(),
                disks: vec![ignite_profiles::DiskFact {
                    path: "/dev/vda".into(),
                    size: 4 << 30,
                    serial: None,
                    sector_size: 512,
                    ..Default::default()
                }],
                hostname: None,
            })
            .unwrap()
            .disk
    }

    #[test]
    fn esp_too_small_for_the_kernel_copies_says_what_size_would_do() {
        const M: u64 = 1 << 20;
        let boot = |initrd: u64| {
            vec![
                ("config-6.1.0-9-amd64".to_string(), 200_000),
                ("vmlinuz-6.1.0-9-amd64".to_string(), 9 * M),
                ("vmlinuz-6.1.0-10-amd64".to_string(), 8 * M),
                ("initrd.img-6.1.0-10-amd64".to_string(), initrd),
            ]
        };
        // Debian 12's 8 + 35 MiB fit the test lab's 64 MiB ESP.
        assert_eq!(
            esp_too_small(&plan("64M", "/boot/efi"), &boot(35 * M)),
            None
        );
        let e = esp_too_small(&plan("64M", "/boot/efi"), &boot(60 * M)).unwrap();
        assert!(
            e.contains("partition 1 (64 MiB) cannot hold vmlinuz-6.1.0-10-amd64 and initrd.img-6.1.0-10-amd64 (69 MiB with the loader)"),
            "{e}"
        );
        let want = e
            .split("size = \"")
            .nth(1)
            .and_then(|x| x.split('"').next())
            .unwrap();
        assert_eq!(
            esp_too_small(&plan(want, "/boot/efi"), &boot(60 * M)),
            None,
            "{want}"
        );
        // /boot on the ESP: nothing is copied; no kernel: the agent says so later.
        assert_eq!(esp_too_small(&plan("64M", "/boot"), &boot(60 * M)), None);
        assert_eq!(esp_too_small(&plan("8M", "/boot/efi"), &[]), None);
    }
}
