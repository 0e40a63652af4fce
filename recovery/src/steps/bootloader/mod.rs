//! The `BootLoader` step: GRUB or Syslinux (extlinux), each installed from the image's own
//! programs and files, with a configuration we write ourselves (root by UUID, serial
//! console, no menu) so the result does not depend on grub-mkconfig, os-prober or
//! extlinux-update.
//!
//! `grub` and `syslinux` hold each loader; this module finds the kernel and the file systems
//! they boot from.
//!
//! On several disks, each disk is made bootable on its own: on BIOS GRUB goes onto every
//! disk; on UEFI the loader is installed on the first disk's ESP and that ESP is copied onto
//! the others (`esp_sync`), and the installed system keeps them copies of it after a change.

mod esp_sync;
mod grub;
mod syslinux;

use std::path::Path;

use anyhow::{Context, Result};
use ignite_profiles::{DiskPlan, Firmware, Fs, InstallPlan, Loader, PartKind};

use crate::log::Log;
use crate::steps::mount::Target;

pub use syslinux::esp_too_small;

/// What the installed kernel is told about its consoles, whichever loader starts it.
const CONSOLE_ARGS: &str = "console=ttyS0,115200 console=tty0";

/// The newest `vmlinuz-V` in `boot`, and its `initrd.img-V` if there is one.
pub fn find_kernel(boot: &Path) -> Result<(String, Option<String>)> {
    let names: Vec<String> = std::fs::read_dir(boot)
        .with_context(|| format!("cannot list {}", boot.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    newest_kernel(names.iter().map(String::as_str)).with_context(|| {
        format!(
            "the image has no kernel ({}/vmlinuz-*); install a kernel package in the golden image",
            boot.display()
        )
    })
}

/// Among the file names of a /boot, the newest `vmlinuz-V` and its `initrd.img-V` if there
/// is one.
pub fn newest_kernel<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> Option<(String, Option<String>)> {
    let v = names
        .clone()
        .into_iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .max_by_key(|v| version_key(v))?;
    let initrd = format!("initrd.img-{v}");
    let initrd = names.into_iter().any(|n| n == initrd).then_some(initrd);
    Some((format!("vmlinuz-{v}"), initrd))
}

/// Compares `6.1.0-10-amd64` after `6.1.0-9-amd64`: numbers as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(|c: char| !c.is_ascii_alphanumeric())
        .map(|p| (p.parse().unwrap_or(0), p.to_string()))
        .collect()
}

/// Where the kernel is and how the installed system finds its root.
struct BootFiles {
    root_uuid: String,
    /// The device and file system holding /boot.
    boot_dev: String,
    boot_fs: Fs,
    /// /boot's path on that file system: "" when /boot is a file system of its own.
    prefix: &'static str,
    kernel: String,
    initrd: Option<String>,
}

impl BootFiles {
    fn find(target: &Target) -> Result<BootFiles> {
        let mounted = |at: &str| target.mounted.iter().find(|m| m.mount == at);
        let root = mounted("/").context("nothing is mounted at / in the target")?;
        let (boot_dev, boot_fs, prefix) = match mounted("/boot") {
            Some(b) => (b.device.clone(), b.fs, ""),
            None => (root.device.clone(), root.fs, "/boot"),
        };
        let root_uuid = target
            .uuids
            .get(&root.device)
            .cloned()
            .with_context(|| format!("{} has no UUID from this install", root.device))?;
        let (kernel, initrd) = find_kernel(&target.path("/boot"))?;
        Ok(BootFiles {
            root_uuid,
            boot_dev,
            boot_fs,
            prefix,
            kernel,
            initrd,
        })
    }

    fn boot_uuid(&self, target: &Target) -> Result<String> {
        target
            .uuids
            .get(&self.boot_dev)
            .cloned()
            .with_context(|| format!("{} has no UUID from this install", self.boot_dev))
    }
}

pub fn install(
    target: &mut Target,
    plan: &InstallPlan,
    loader: Loader,
    firmware: Firmware,
    disk: &str,
    log: &mut Log,
) -> Result<()> {
    if loader == Loader::None {
        return Ok(());
    }
    let files = BootFiles::find(target)?;
    let bios = matches!(firmware, Firmware::Bios | Firmware::Both);
    let uefi = matches!(firmware, Firmware::Uefi | Firmware::Both);
    let disk_plan = &plan.disk;
    match loader {
        Loader::Grub => {
            // GRUB reads /boot through the array and the volume group (a degraded array
            // too): the modules are named, as the ESP's signed GRUB has them built in.
            let storage: &[&str] = match (&plan.raid, &plan.lvm) {
                (None, None) => &[],
                _ => &["mdraid1x", "lvm"],
            };
            let disks: Vec<&str> = std::iter::once(disk)
                .chain(plan.more_disks.iter().map(|d| d.path.as_str()))
                .collect();
            grub::install(target, disk_plan, bios, uefi, &disks, storage, &files, log)?;
        }
        Loader::Extlinux => {
            if bios {
                syslinux::install_bios(target, disk_plan, disk, &files, log)?;
            }
            if uefi {
                syslinux::install_uefi(target, disk_plan, &files, log)?;
            }
        }
        Loader::None => {}
    }
    if uefi {
        esp_sync::mirror(target, plan, log)?;
    }
    Ok(())
}

/// The mount point (inside the target) of the plan's EFI system partition.
fn esp_mount(target: &Target, disk_plan: &DiskPlan, loader: &str) -> Result<(String, String)> {
    target
        .mounted
        .iter()
        .find(|m| {
            disk_plan
                .partitions
                .iter()
                .any(|p| p.device == m.device && p.kind == PartKind::Efi)
        })
        .map(|m| (m.mount.clone(), m.device.clone()))
        .with_context(|| format!("{loader} for UEFI needs a mounted EFI system partition; add one (type = \"efi\") to the profile"))
}

fn write_config(target: &Target, inside: &str, text: &str, log: &mut Log) -> Result<()> {
    let path = target.path(inside);
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .with_context(|| format!("cannot create the directory of {}", path.display()))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    log.line(&format!("{inside}:\n{}", text.trim_end()));
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
    fn newest_kernel_by_name() {
        let (k, i) = newest_kernel([
            "initrd.img-6.1.0-9-amd64",
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
        ])
        .unwrap();
        assert_eq!(k, "vmlinuz-6.1.0-10-amd64");
        assert_eq!(i, None, "the newest kernel has no initrd");
        assert_eq!(newest_kernel(["System.map-6"]), None);
    }
}
