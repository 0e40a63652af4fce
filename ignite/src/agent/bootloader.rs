//! The `BootLoader` step: GRUB installed by the image's own grub-install (BIOS core image in
//! the BIOS-boot partition, UEFI as the removable-media path), and a grub.cfg we write
//! ourselves so the result does not depend on grub-mkconfig or os-prober.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use ignite_profiles::{DiskPlan, Firmware, Fs, Loader, PartKind};

use super::chroot;
use super::log::Log;
use super::mount::Target;

/// The newest `vmlinuz-V` in `boot` that has a matching `initrd.img-V`.
pub fn find_kernel(boot: &Path) -> Result<(String, Option<String>)> {
    let mut versions: Vec<String> = std::fs::read_dir(boot)
        .with_context(|| format!("cannot list {}", boot.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(String::from)
        })
        .collect();
    versions.sort_by_key(|v| version_key(v));
    let Some(v) = versions.pop() else {
        bail!(
            "the image has no kernel ({}/vmlinuz-*); install a kernel package in the golden image",
            boot.display()
        );
    };
    let initrd = format!("initrd.img-{v}");
    let initrd = boot.join(&initrd).exists().then_some(initrd);
    Ok((format!("vmlinuz-{v}"), initrd))
}

/// Compares `6.1.0-10-amd64` after `6.1.0-9-amd64`: numbers as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(|c: char| !c.is_ascii_alphanumeric())
        .map(|p| (p.parse().unwrap_or(0), p.to_string()))
        .collect()
}

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
         \tlinux {prefix}/{kernel} root=UUID={root_uuid} ro console=ttyS0,115200 console=tty0\n",
        grub_module(boot_fs)
    );
    if let Some(i) = initrd {
        s.push_str(&format!("\tinitrd {prefix}/{i}\n"));
    }
    s.push_str("}\n");
    s
}

pub fn install(
    target: &mut Target,
    disk_plan: &DiskPlan,
    loader: Loader,
    firmware: Firmware,
    disk: &str,
    log: &mut Log,
) -> Result<()> {
    match loader {
        Loader::None => return Ok(()),
        Loader::Extlinux => {
            bail!("boot loader extlinux is not supported by this agent yet; use loader = \"grub\"")
        }
        Loader::Grub => {}
    }
    let mounted = |at: &str| target.mounted.iter().find(|m| m.mount == at);
    let root = mounted("/").context("nothing is mounted at / in the target")?;
    let (boot_dev, boot_fs, prefix) = match mounted("/boot") {
        Some(b) => (b.device.clone(), b.fs, ""),
        None => (root.device.clone(), root.fs, "/boot"),
    };
    let uuid = |dev: &str| {
        target
            .uuids
            .get(dev)
            .cloned()
            .with_context(|| format!("{dev} has no UUID from this install"))
    };
    let root_uuid = uuid(&root.device)?;
    let boot_uuid = uuid(&boot_dev)?;
    let (kernel, initrd) = find_kernel(&target.path("/boot"))?;

    let bios = matches!(firmware, Firmware::Bios | Firmware::Both);
    let uefi = matches!(firmware, Firmware::Uefi | Firmware::Both);
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
        let esp = target
            .mounted
            .iter()
            .find(|m| {
                disk_plan
                    .partitions
                    .iter()
                    .any(|p| p.device == m.device && p.kind == PartKind::Efi)
            })
            .map(|m| m.mount.clone())
            .context("GRUB for UEFI needs a mounted EFI system partition; add one (type = \"efi\") to the profile")?;
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
        boot_fs,
        prefix,
        &root_uuid,
        &kernel,
        initrd.as_deref(),
    );
    let path = target.path("/boot/grub/grub.cfg");
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))?;
    std::fs::write(&path, &cfg).with_context(|| format!("cannot write {}", path.display()))?;
    log.line(&format!("/boot/grub/grub.cfg:\n{}", cfg.trim_end()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_with_its_initrd() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "initrd.img-6.1.0-10-amd64",
            "config-6.1.0-10-amd64",
        ] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let (k, i) = find_kernel(d.path()).unwrap();
        assert_eq!(k, "vmlinuz-6.1.0-10-amd64");
        assert_eq!(i.as_deref(), Some("initrd.img-6.1.0-10-amd64"));
        let empty = tempfile::tempdir().unwrap();
        assert!(format!("{:#}", find_kernel(empty.path()).unwrap_err()).contains("no kernel"));
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
        );
        assert!(c.contains("set timeout=0\n"));
        assert!(c.contains("search --no-floppy --fs-uuid --set=root B\n"));
        assert!(
            c.contains("linux /boot/vmlinuz-6 root=UUID=R ro console=ttyS0,115200 console=tty0\n")
        );
        assert!(c.contains("initrd /boot/initrd.img-6\n"));
    }
}
