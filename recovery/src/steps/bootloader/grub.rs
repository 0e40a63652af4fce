//! GRUB: the image's grub-install puts the BIOS core image in the bios_boot partition and
//! the UEFI loader on the removable-media path of the ESP; grub.cfg is ours.

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

/// grub.cfg: boots the kernel straight away (no menu timeout) with root by UUID.
pub fn grub_cfg(
    boot_uuid: &str,
    boot_fs: Fs,
    prefix: &str,
    root_uuid: &str,
    kernel: &str,
    initrd: Option<&str>,
) -> String {
    let mut s = format!(
        "# Written by the Ignite install agent.\n\
         set timeout=0\n\
         set default=0\n\
         insmod part_gpt\n\
         insmod {}\n\
         search --no-floppy --fs-uuid --set=root {boot_uuid}\n\
         menuentry 'Linux' {{\n\
         \tlinux {prefix}/{kernel} root=UUID={root_uuid} ro {CONSOLE_ARGS}\n",
        grub_module(boot_fs)
    );
    if let Some(i) = initrd {
        s.push_str(&format!("\tinitrd {prefix}/{i}\n"));
    }
    s.push_str("}\n");
    s
}

pub(super) fn install(
    target: &mut Target,
    disk_plan: &DiskPlan,
    bios: bool,
    uefi: bool,
    disk: &str,
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
        chroot::run(
            target,
            Command::new("grub-install").args(["--target=i386-pc", disk]),
            log,
        )
        .context("grub-install for BIOS (the image needs grub-pc-bin)")?;
    }
    if uefi {
        let (esp, _) = esp_mount(target, disk_plan, "GRUB")?;
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
    let cfg = grub_cfg(
        &boot_uuid,
        f.boot_fs,
        f.prefix,
        &f.root_uuid,
        &f.kernel,
        f.initrd.as_deref(),
    );
    write_config(target, "/boot/grub/grub.cfg", &cfg, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_boots_by_uuid_without_timeout() {
        let c = grub_cfg(
            "B",
            Fs::Ext4,
            "/boot",
            "R",
            "vmlinuz-6",
            Some("initrd.img-6"),
        );
        assert!(c.contains("set timeout=0\n"));
        assert!(c.contains("search --no-floppy --fs-uuid --set=root B\n"));
        assert!(
            c.contains("linux /boot/vmlinuz-6 root=UUID=R ro console=ttyS0,115200 console=tty0\n")
        );
        assert!(c.contains("initrd /boot/initrd.img-6\n"));
    }
}
