//! GRUB: the image's grub-install puts the BIOS core image in the bios_boot partition and
//! the UEFI loader on the removable-media path of the ESP; grub.cfg is ours.
//!
//! An image that carries Debian's signed boot chain (shim-signed, grub-efi-amd64-signed)
//! gets it on the ESP instead, so the machine boots with Secure Boot on:
//! `EFI/BOOT/BOOTX64.EFI` is shim, which loads `grubx64.efi` (signed GRUB, all its modules
//! built in) from beside it, `mmx64.efi` is shim's MOK manager. That GRUB looks for its
//! configuration in `/EFI/debian` and `/boot/grub` of the ESP, then beside itself:
//! `EFI/BOOT/grub.cfg` ([`esp_grub_cfg`]) finds /boot by UUID and reads our grub.cfg there.

use std::process::Command;

use anyhow::{bail, Context, Result};
use ignite_profiles::{DiskPlan, Fs, PartKind};

use super::{esp_mount, write_config, BootFiles, CONSOLE_ARGS};
use crate::log::Log;
use crate::steps::chroot;
use crate::steps::mount::Target;

fn grub_module(fs: Fs) -> &'static str {
    match fs {
        Fs::Xfs => "xfs",
        Fs::Vfat => "fat",
        _ => "ext2",
    }
}

/// `insmod` lines for GRUB's modules that read the RAID array and LVM under /boot.
fn insmods(storage: &[&str]) -> String {
    storage.iter().map(|m| format!("insmod {m}\n")).collect()
}

/// grub.cfg: boots the kernel straight away (no menu timeout) with root by UUID; `storage`
/// names the modules that read what /boot is on (`mdraid1x`, `lvm`), if any.
pub fn grub_cfg(
    boot_uuid: &str,
    boot_fs: Fs,
    prefix: &str,
    root_uuid: &str,
    kernel: &str,
    initrd: Option<&str>,
    storage: &[&str],
) -> String {
    let mut s = format!(
        "# Written by the Ignite install agent.\n\
         set timeout=0\n\
         set default=0\n\
         insmod part_gpt\n\
         {}insmod {}\n\
         search --no-floppy --fs-uuid --set=root {boot_uuid}\n\
         menuentry 'Linux' {{\n\
         \tlinux {prefix}/{kernel} root=UUID={root_uuid} ro {CONSOLE_ARGS}\n",
        insmods(storage),
        grub_module(boot_fs)
    );
    if let Some(i) = initrd {
        s.push_str(&format!("\tinitrd {prefix}/{i}\n"));
    }
    s.push_str("}\n");
    s
}

/// Debian's signed boot chain in an image (path inside it) and each file's name in
/// `EFI/BOOT` of the ESP.
const SIGNED_CHAIN: [(&str, &str); 3] = [
    ("/usr/lib/shim/shimx64.efi.signed", "BOOTX64.EFI"),
    ("/usr/lib/shim/mmx64.efi.signed", "mmx64.efi"),
    (
        "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "grubx64.efi",
    ),
];

/// `EFI/BOOT/grub.cfg`: what the signed GRUB reads on the ESP, pointing it at /boot.
pub fn esp_grub_cfg(boot_uuid: &str, prefix: &str, storage: &[&str]) -> String {
    format!(
        "# Written by the Ignite install agent: the signed GRUB (loaded by shim) reads this\n\
         # first and goes on to /boot/grub/grub.cfg.\n\
         {}search --no-floppy --fs-uuid --set=root {boot_uuid}\n\
         set prefix=($root){prefix}/grub\n\
         configfile $prefix/grub.cfg\n",
        insmods(storage)
    )
}

/// Shim, its MOK manager and the signed GRUB onto the ESP's removable-media path, with
/// [`esp_grub_cfg`]. `false` (nothing done) when the image lacks any of them.
fn install_signed(
    target: &Target,
    esp: &str,
    boot_uuid: &str,
    prefix: &str,
    storage: &[&str],
    log: &mut Log,
) -> Result<bool> {
    let missing: Vec<&str> = SIGNED_CHAIN
        .iter()
        .map(|(inside, _)| *inside)
        .filter(|inside| !target.path(inside).is_file())
        .collect();
    if !missing.is_empty() {
        if missing.len() < SIGNED_CHAIN.len() {
            log.line(&format!(
                "UEFI: the image has only part of the signed boot chain ({} missing: the \
                 packages shim-signed and grub-efi-amd64-signed carry it); installing the \
                 unsigned GRUB, which does not boot with Secure Boot on",
                missing.join(", ")
            ));
        }
        return Ok(false);
    }
    let dir = target.path(&format!("{esp}/EFI/BOOT"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (inside, name) in SIGNED_CHAIN {
        let (src, dst) = (target.path(inside), dir.join(name));
        std::fs::copy(&src, &dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    log.line(&format!(
        "UEFI: shim and the signed GRUB on the ESP ({esp}/EFI/BOOT: BOOTX64.EFI is shim, \
         grubx64.efi, mmx64.efi): boots with Secure Boot on"
    ));
    write_config(
        target,
        &format!("{esp}/EFI/BOOT/grub.cfg"),
        &esp_grub_cfg(boot_uuid, prefix, storage),
        log,
    )?;
    Ok(true)
}

/// GRUB for BIOS onto each of `disks` (the same layout on each), for UEFI onto the first
/// disk's ESP.
#[allow(clippy::too_many_arguments)]
pub(super) fn install(
    target: &mut Target,
    disk_plan: &DiskPlan,
    bios: bool,
    uefi: bool,
    disks: &[&str],
    storage: &[&str],
    f: &BootFiles,
    log: &mut Log,
) -> Result<()> {
    let boot_uuid = f.boot_uuid(target)?;
    if bios {
        if !disk_plan
            .partitions
            .iter()
            .any(|p| p.kind == PartKind::BiosBoot)
        {
            bail!("GRUB for BIOS on GPT needs a bios_boot partition; add one (size = \"1M\") to the profile");
        }
        for disk in disks {
            chroot::run(
                target,
                Command::new("grub-install").args(["--target=i386-pc", disk]),
                log,
            )
            .with_context(|| {
                format!("grub-install for BIOS on {disk} (the image needs grub-pc-bin)")
            })?;
        }
    }
    if uefi {
        let (esp, _) = esp_mount(target, disk_plan, "GRUB")?;
        if !install_signed(target, &esp, &boot_uuid, f.prefix, storage, log)? {
            chroot::run(
                target,
                Command::new("grub-install").args([
                    "--target=x86_64-efi",
                    "--removable",
                    "--no-nvram",
                    &format!("--efi-directory={esp}"),
                ]),
                log,
            )
            .context("grub-install for UEFI (the image needs grub-efi-amd64-bin)")?;
        }
    }
    write_config(
        target,
        "/boot/grub/grub.cfg",
        &grub_cfg(
            &boot_uuid,
            f.boot_fs,
            f.prefix,
            &f.root_uuid,
            &f.kernel,
            f.initrd.as_deref(),
            storage,
        ),
        log,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Phase, Source};
    use ignite_profiles::{ArchiveRef, ClientFacts, InstallPlan};

    /// A server that only takes log lines.
    struct Quiet;

    impl Source for Quiet {
        fn plan(&self, _: &ClientFacts) -> Result<InstallPlan> {
            bail!("no plan here")
        }
        fn report(&self, _: &Phase) -> Result<()> {
            Ok(())
        }
        fn log(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn extract(
            &self,
            _: &ArchiveRef,
            _: &std::path::Path,
            _: &mut dyn FnMut(u64, u64),
        ) -> Result<u64> {
            bail!("no archive here")
        }
    }

    #[test]
    fn the_signed_chain_goes_onto_the_esp_when_the_image_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::new(dir.path()).unwrap();
        let mut log = Log::new(&Quiet);
        // Only shim: not the whole chain, nothing is copied.
        let put = |inside: &str| {
            let p = target.path(inside);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, inside).unwrap();
        };
        put(SIGNED_CHAIN[0].0);
        assert!(!install_signed(&target, "/boot/efi", "B", "/boot", &[], &mut log).unwrap());
        assert!(log.tail().contains("mmx64.efi.signed"), "{}", log.tail());
        assert!(!target.path("/boot/efi/EFI").exists());
        for (inside, _) in SIGNED_CHAIN {
            put(inside);
        }
        assert!(install_signed(&target, "/boot/efi", "B", "/boot", &[], &mut log).unwrap());
        let esp = target.path("/boot/efi/EFI/BOOT");
        for (inside, name) in SIGNED_CHAIN {
            assert_eq!(
                std::fs::read_to_string(esp.join(name)).unwrap(),
                inside,
                "{name}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(esp.join("grub.cfg")).unwrap(),
            esp_grub_cfg("B", "/boot", &[])
        );
    }

    #[test]
    fn esp_grub_cfg_finds_boot_by_uuid() {
        let c = esp_grub_cfg("1234-AB", "/boot", &[]);
        assert!(c.contains("search --no-floppy --fs-uuid --set=root 1234-AB\n"));
        assert!(c.contains("set prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n"));
        // /boot on its own file system: GRUB's files are at its top.
        assert!(esp_grub_cfg("U", "", &[]).contains("set prefix=($root)/grub\n"));
        // On RAID and LVM: the modules that read them, before the search.
        assert!(esp_grub_cfg("U", "/boot", &["mdraid1x", "lvm"])
            .contains("insmod mdraid1x\ninsmod lvm\nsearch --no-floppy --fs-uuid --set=root U\n"));
    }

    #[test]
    fn grub_cfg_boots_by_uuid_without_timeout() {
        let c = grub_cfg(
            "B",
            Fs::Ext4,
            "/boot",
            "R",
            "vmlinuz-6",
            Some("initrd.img-6"),
            &[],
        );
        assert!(c.contains("set timeout=0\n"));
        assert!(c.contains("search --no-floppy --fs-uuid --set=root B\n"));
        assert!(
            c.contains("linux /boot/vmlinuz-6 root=UUID=R ro console=ttyS0,115200 console=tty0\n")
        );
        assert!(c.contains("initrd /boot/initrd.img-6\n"));
    }
}
