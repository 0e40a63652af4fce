//! The ESPs of a layout on several disks: the firmware reads each as a plain FAT file system,
//! so they are not an md mirror (metadata 1.0 at the end would do, but a firmware or a tool
//! that writes one member alone would split them silently). Each disk has its own ESP: the
//! boot loader is installed on the first one's (`/boot/efi`), then its whole tree is copied
//! onto the others (`/boot/efi2`, ...), so any disk alone boots the same loader.
//!
//! After the install, a systemd path unit in the installed system watches the first ESP's
//! loader directories (`EFI`, `EFI/BOOT`, `EFI/debian`: where grub-install, shim and our
//! loader write) and runs a oneshot service that copies the first ESP onto each other ESP
//! that is mounted: into a new directory beside, then swapped in. A missing disk's ESP is
//! skipped (it is `nofail` in fstab); replacing a disk means re-adding its array member and
//! running `systemctl start ignite-esp-sync.service` once.

use std::path::Path;

use anyhow::{Context, Result};
use ignite_profiles::{InstallPlan, PartKind};

use crate::log::Log;
use crate::steps::mount::Target;

/// Where the units and the script go in the installed system.
const SCRIPT: &str = "/usr/local/sbin/ignite-esp-sync";
const SERVICE: &str = "/etc/systemd/system/ignite-esp-sync.service";
const PATH_UNIT: &str = "/etc/systemd/system/ignite-esp-sync.path";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/ignite-esp-sync.path";

/// The script that copies `primary` onto each of `others` (mount points).
pub fn script(primary: &str, others: &[String]) -> String {
    format!(
        r#"#!/bin/sh
# Written by the Ignite install agent: copies the EFI system partition at {primary} onto
# the other disks' ESPs, so each disk boots what the first does. A new tree is copied beside
# the old one, then swapped in. An ESP that is not mounted (its disk is missing) is skipped.
set -eu
src={primary}
mountpoint -q "$src" || {{ echo "$src is not mounted; nothing to copy" >&2; exit 0; }}
for dst in {}; do
  if ! mountpoint -q "$dst"; then
    echo "$dst is not mounted (is its disk missing?); skipped" >&2
    continue
  fi
  new="$dst/.ignite-sync"
  rm -rf "$new"
  mkdir "$new"
  cp -r "$src/." "$new/"
  find "$dst" -mindepth 1 -maxdepth 1 ! -name .ignite-sync -exec rm -rf {{}} +
  find "$new" -mindepth 1 -maxdepth 1 -exec mv {{}} "$dst/" \;
  rmdir "$new"
  sync -f "$dst"
  echo "copied $src onto $dst"
done
"#,
        others.join(" ")
    )
}

/// The oneshot service that runs [`script`].
pub fn service(primary: &str, others: &[String]) -> String {
    let mounts = std::iter::once(primary.to_string())
        .chain(others.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "# Written by the Ignite install agent.\n\
         [Unit]\n\
         Description=Copy the EFI system partition {primary} onto the other disks' ESPs\n\
         After={}\n\
         ConditionPathIsMountPoint={primary}\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={SCRIPT}\n",
        mounts
            .split(' ')
            .map(mount_unit)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The path unit: a change under the first ESP's loader directories starts the service.
pub fn path_unit(primary: &str) -> String {
    format!(
        "# Written by the Ignite install agent.\n\
         [Unit]\n\
         Description=Watch the EFI system partition {primary} for boot loader changes\n\
         [Path]\n\
         PathModified={primary}/EFI\n\
         PathModified={primary}/EFI/BOOT\n\
         PathModified={primary}/EFI/debian\n\
         Unit=ignite-esp-sync.service\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// systemd's name for the mount unit of `path` (`/boot/efi` → `boot-efi.mount`).
fn mount_unit(path: &str) -> String {
    let escaped: String = path
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => "-".to_string(),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '.' => c.to_string(),
            c => format!("\\x{:02x}", c as u32),
        })
        .collect();
    format!("{escaped}.mount")
}

/// Copies a directory tree (directories and files; an ESP holds nothing else).
fn copy_tree(src: &Path, dst: &Path) -> Result<u64> {
    let mut n = 0;
    std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("cannot list {}", src.display()))? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if e.file_type()?.is_dir() {
            n += copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// On a layout of several disks: the first ESP copied onto the others, and the units that
/// keep them so. Nothing to do with one ESP.
pub fn mirror(target: &Target, plan: &InstallPlan, log: &mut Log) -> Result<()> {
    let esp_mounts: Vec<String> = plan
        .disks()
        .flat_map(|d| &d.partitions)
        .filter(|p| p.kind == PartKind::Efi)
        .filter_map(|p| {
            target
                .mounted
                .iter()
                .find(|m| m.device == p.device)
                .map(|m| m.mount.clone())
        })
        .collect();
    let Some((primary, others)) = esp_mounts.split_first() else {
        return Ok(());
    };
    if others.is_empty() {
        return Ok(());
    }
    for o in others {
        let files = copy_tree(&target.path(primary), &target.path(o))?;
        log.line(&format!(
            "UEFI: copied the ESP {primary} onto {o} ({files} files)"
        ));
    }
    let write = |inside: &str, text: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = target.path(inside);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    write(SCRIPT, &script(primary, others), 0o755)?;
    write(SERVICE, &service(primary, others), 0o644)?;
    write(PATH_UNIT, &path_unit(primary), 0o644)?;
    let wants = target.path(WANTS);
    std::fs::create_dir_all(wants.parent().unwrap_or(Path::new("/")))?;
    let _ = std::fs::remove_file(&wants);
    std::os::unix::fs::symlink("../ignite-esp-sync.path", &wants)
        .with_context(|| format!("cannot enable {}", wants.display()))?;
    log.line(&format!(
        "UEFI: {PATH_UNIT} (enabled) copies {primary} onto {} when its loader changes",
        others.join(", ")
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_name_every_esp() {
        let others = vec!["/boot/efi2".to_string(), "/boot/efi3".to_string()];
        let s = service("/boot/efi", &others);
        assert!(
            s.contains("After=boot-efi.mount boot-efi2.mount boot-efi3.mount\n"),
            "{s}"
        );
        assert!(s.contains("ConditionPathIsMountPoint=/boot/efi\n"));
        assert!(s.contains(&format!("ExecStart={SCRIPT}\n")));
        let p = path_unit("/boot/efi");
        for d in ["EFI", "EFI/BOOT", "EFI/debian"] {
            assert!(p.contains(&format!("PathModified=/boot/efi/{d}\n")), "{p}");
        }
        assert!(script("/boot/efi", &others).contains("for dst in /boot/efi2 /boot/efi3; do\n"));
        assert_eq!(mount_unit("/boot/e-fi"), "boot-e\\x2dfi.mount");
    }

    /// The script, run by sh on two directories standing in for mounted ESPs (`mountpoint`
    /// replaced by `true`): the copy matches the source, stale files are gone.
    #[test]
    fn the_script_makes_each_esp_a_copy_of_the_first() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("efi"), d.path().join("efi2"));
        std::fs::create_dir_all(src.join("EFI/BOOT")).unwrap();
        std::fs::write(src.join("EFI/BOOT/BOOTX64.EFI"), "new loader").unwrap();
        std::fs::create_dir_all(dst.join("EFI/old")).unwrap();
        std::fs::write(dst.join("EFI/old/stale.efi"), "stale").unwrap();
        let text = script(src.to_str().unwrap(), &[dst.display().to_string()])
            .replace("mountpoint -q", "true");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(dst.join("EFI/BOOT/BOOTX64.EFI")).unwrap(),
            "new loader"
        );
        assert!(!dst.join("EFI/old").exists());
        assert!(!dst.join(".ignite-sync").exists());
        // copy_tree, used at install, gives the same tree.
        let third = d.path().join("efi3");
        assert_eq!(copy_tree(&src, &third).unwrap(), 1);
        assert_eq!(
            std::fs::read(third.join("EFI/BOOT/BOOTX64.EFI")).unwrap(),
            b"new loader"
        );
    }
}
