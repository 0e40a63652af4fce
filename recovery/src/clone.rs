//! Clones: a capture restored as a new machine that is not the old one. Before its first
//! boot the restored disk's file systems are mounted on this host and the identity the two
//! must not share is replaced — virt-sysprep's checklist, the parts a Debian system holds:
//! hostname and `/etc/hosts`, machine-id (and the D-Bus copy), SSH host keys, the MAC in
//! network configuration and persistent-net udev rules, DHCP client leases (their client
//! identifiers), the random seed. Nothing else is touched.
//!
//! The image is hostile until proven otherwise: each file system is mounted on a directory
//! of its own (never one inside another, so no mount point is resolved through the image),
//! and every file is read and written through [`Tree`], which never follows a symlink. Only
//! this host's programs run (its `ssh-keygen`), never the image's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::capture::diff::mount_of;
use crate::capture::layout::{DiskLayout, SystemInfo};
use crate::loopdev::Loops;
use crate::process::output;
use crate::tree::Tree;

/// Files of this size at most are read for editing (configuration files are small).
const MAX_CONFIG: u64 = 1 << 20;

/// What the clone becomes.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    pub hostname: String,
    /// (old MAC, new MAC) for every NIC.
    pub macs: Vec<(String, String)>,
}

/// The file systems of a restored image, mounted on directories of their own under a
/// scratch directory; unmounted (and their loop devices detached) on drop.
pub struct MountedImage {
    loops: Loops,
    /// (mount point in the system, directory here, tree) — longest mount point first.
    mounts: Vec<(String, PathBuf, Tree)>,
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        rustix::fs::sync();
        for (_, dir, tree) in std::mem::take(&mut self.mounts) {
            // The tree holds the mounted directory open: closed first, or the file system
            // is busy and stays mounted under the guest that boots from the image.
            drop(tree);
            if let Err(e) = crate::steps::mount::umount(&dir, 0) {
                tracing::error!("{}: cannot unmount: {e:#}", dir.display());
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl MountedImage {
    /// Mounts every ext4/xfs file system on `disks` (image files with their captured
    /// layouts) that the captured system's fstab names.
    pub fn open(
        disks: &[(&Path, &DiskLayout)],
        sys: &SystemInfo,
        scratch: &Path,
    ) -> Result<MountedImage> {
        // Built as it goes, so a failure unmounts what was mounted.
        let mut mounted = MountedImage {
            loops: Loops::default(),
            mounts: Vec::new(),
        };
        std::fs::create_dir_all(scratch)?;
        for (d, (image, layout)) in disks.iter().enumerate() {
            for p in &layout.partitions {
                let (Some(fs), Some(at)) = (&p.fs, mount_of(p, sys)) else {
                    continue;
                };
                let (ty, data) = match fs.fs_type.as_str() {
                    "ext4" | "ext3" | "ext2" => (fs.fs_type.as_str(), ""),
                    // Two clones of one capture share the UUID: xfs refuses that without nouuid.
                    "xfs" => ("xfs", "nouuid"),
                    _ => continue,
                };
                let dev = mounted.loops.attach(image, p.start, p.size, false)?;
                let dir = scratch.join(format!("d{d}p{}", p.number));
                std::fs::create_dir_all(&dir)?;
                crate::steps::mount::mount(&dev, &dir, Some(ty), 0, data)
                    .with_context(|| format!("partition {} ({} {at})", p.number, fs.fs_type))?;
                let tree = Tree::open(&dir)?;
                mounted.mounts.push((at, dir, tree));
            }
        }
        mounted
            .mounts
            .sort_by_key(|(at, _, _)| std::cmp::Reverse(at.len()));
        if !mounted.mounts.iter().any(|(at, _, _)| at == "/") {
            bail!(
                "{}: no root file system this host can mount (the captured fstab names none of \
                 its ext4/xfs partitions); the clone's identity cannot be changed",
                disks.first().map_or(Path::new("-"), |d| d.0).display()
            );
        }
        Ok(mounted)
    }

    /// The tree holding absolute path `abs`, and the path relative to it.
    fn locate(&self, abs: &str) -> (&Tree, String) {
        for (at, _, tree) in &self.mounts {
            let prefix = if at == "/" {
                "/".to_string()
            } else {
                format!("{at}/")
            };
            if let Some(rel) = abs.strip_prefix(&prefix) {
                return (tree, rel.to_string());
            }
        }
        unreachable!("the root file system is always mounted")
    }

    pub fn root_dir(&self) -> &Path {
        self.mounts
            .iter()
            .find(|(at, _, _)| at == "/")
            .map(|(_, d, _)| d.as_path())
            .expect("root mounted")
    }

    pub fn read(&self, abs: &str) -> Result<Option<Vec<u8>>> {
        let (t, rel) = self.locate(abs);
        t.read(&rel, MAX_CONFIG)
    }

    pub fn write(&self, abs: &str, data: &[u8], mode: u32) -> Result<()> {
        let (t, rel) = self.locate(abs);
        t.write(&rel, data, mode)
    }

    pub fn remove(&self, abs: &str) -> Result<bool> {
        let (t, rel) = self.locate(abs);
        t.remove(&rel)
    }

    pub fn list(&self, abs_dir: &str) -> Result<Vec<String>> {
        let (t, rel) = self.locate(&format!("{}/", abs_dir.trim_end_matches('/')));
        t.list(rel.trim_end_matches('/'))
    }
}

/// Replaces the identity of the mounted system (see the module docs); returns the paths
/// changed, for the record of what the clone differs in.
pub fn reset(sys: &MountedImage, id: &NewIdentity, old: &SystemInfo) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    // Hostname, and its mentions in /etc/hosts (other entries kept).
    sys.write(
        "/etc/hostname",
        format!("{}\n", id.hostname).as_bytes(),
        0o644,
    )?;
    changed.push("/etc/hostname".to_string());
    if let Some(hosts) = sys.read("/etc/hosts")? {
        let text = String::from_utf8_lossy(&hosts);
        let new = match &old.hostname {
            Some(o) => replace_host(&text, o, &id.hostname),
            None => text.into_owned(),
        };
        if new.as_bytes() != hosts {
            sys.write("/etc/hosts", new.as_bytes(), 0o644)?;
            changed.push("/etc/hosts".into());
        }
    }
    // machine-id (and D-Bus's copy, wherever /var is).
    let mid = crate::random::hex(16)?;
    sys.write("/etc/machine-id", format!("{mid}\n").as_bytes(), 0o444)?;
    changed.push("/etc/machine-id".into());
    if sys
        .read("/var/lib/dbus/machine-id")
        .is_ok_and(|f| f.is_some())
    {
        sys.write(
            "/var/lib/dbus/machine-id",
            format!("{mid}\n").as_bytes(),
            0o444,
        )?;
        changed.push("/var/lib/dbus/machine-id".into());
    }
    changed.extend(ssh_host_keys(sys, &id.hostname)?);
    // The NICs' MACs wherever configuration binds to them.
    let mut config_files = vec!["/etc/network/interfaces".to_string()];
    for dir in [
        "/etc/network/interfaces.d",
        "/etc/systemd/network",
        "/etc/netplan",
        "/etc/udev/rules.d",
        "/etc/NetworkManager/system-connections",
    ] {
        config_files.extend(sys.list(dir)?.into_iter().map(|n| format!("{dir}/{n}")));
    }
    for f in config_files {
        let Ok(Some(data)) = sys.read(&f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&data).into_owned();
        let mut new = text.clone();
        for (old_mac, new_mac) in &id.macs {
            new = replace_mac(&new, old_mac, new_mac);
        }
        if new != text {
            sys.write(&f, new.as_bytes(), 0o644)?;
            changed.push(f);
        }
    }
    // DHCP leases carry the old client's identity; the random seed must not be shared.
    for dir in [
        "/var/lib/dhcp",
        "/var/lib/dhclient",
        "/var/lib/NetworkManager",
    ] {
        for n in sys.list(dir)? {
            if n.contains(".lease") && sys.remove(&format!("{dir}/{n}"))? {
                changed.push(format!("{dir}/{n}"));
            }
        }
    }
    for f in [
        "/var/lib/systemd/random-seed",
        "/var/lib/urandom/random-seed",
    ] {
        if sys.remove(f)? {
            changed.push(f.to_string());
        }
    }
    Ok(changed)
}

/// Fresh SSH host keys of the types the image had, made by this host's ssh-keygen.
fn ssh_host_keys(sys: &MountedImage, hostname: &str) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    let names = sys.list("/etc/ssh")?;
    let types: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("ssh_host_")?.strip_suffix("_key"))
        .filter(|t| ["rsa", "ecdsa", "ed25519", "dsa"].contains(t))
        .map(str::to_string)
        .collect();
    if types.is_empty() {
        return Ok(changed);
    }
    let tmp = tempfile::tempdir()?;
    for t in &types {
        let key = tmp.path().join(format!("ssh_host_{t}_key"));
        output(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-N",
                    "",
                    "-t",
                    t,
                    "-C",
                    &format!("root@{hostname}"),
                    "-f",
                ])
                .arg(&key),
        )
        .context("cannot make SSH host keys (ssh-keygen, package openssh-client)")?;
        for (file, mode) in [(key.clone(), 0o600), (key.with_extension("pub"), 0o644)] {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&file)?;
            let dest = format!("/etc/ssh/{name}");
            sys.write(&dest, &data, mode)?;
            changed.push(dest);
        }
    }
    Ok(changed)
}

/// `text` with whole-word `old` host names (and the short name, alone or in a domain)
/// replaced by `new`.
fn replace_host(text: &str, old: &str, new: &str) -> String {
    let old_short = old.split('.').next().unwrap_or(old);
    let new_short = new.split('.').next().unwrap_or(new);
    text.lines()
        .map(|l| {
            let (body, comment) = match l.find('#') {
                Some(i) => (&l[..i], &l[i..]),
                None => (l, ""),
            };
            let words: Vec<String> = body
                .split_inclusive(char::is_whitespace)
                .map(|w| {
                    let t = w.trim_end();
                    let rest = &w[t.len()..];
                    let domain = t.strip_prefix(old_short).and_then(|d| d.strip_prefix('.'));
                    if t == old {
                        format!("{new}{rest}")
                    } else if t == old_short {
                        format!("{new_short}{rest}")
                    } else if let (Some(domain), false) = (domain, new.contains('.')) {
                        // The old name in its domain: the new short name in the same one.
                        format!("{new_short}.{domain}{rest}")
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            format!("{}{comment}", words.concat())
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

/// `text` with every occurrence of MAC `old` (any case, `:` or `-` separated) as `new`, in
/// the case the file used.
fn replace_mac(text: &str, old: &str, new: &str) -> String {
    let mut out = text.to_string();
    for sep in [':', '-'] {
        let o = old.replace([':', '-'], &sep.to_string());
        let n = new.replace([':', '-'], &sep.to_string());
        for (from, to) in [
            (o.to_lowercase(), n.to_lowercase()),
            (o.to_uppercase(), n.to_uppercase()),
        ] {
            out = out.replace(&from, &to);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_keeps_other_entries_and_macs_keep_their_case() {
        let hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tlab-aabbcc.example lab-aabbcc # lab\n10.0.0.5 db lab-aabbcc-old\n";
        assert_eq!(
            replace_host(hosts, "lab-aabbcc.example", "web2.example"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb2.example web2 # lab\n10.0.0.5 db lab-aabbcc-old\n"
        );
        let cfg = "[Match]\nMACAddress=52:54:00:AA:BB:CC\n# 52-54-00-aa-bb-cc\n";
        assert_eq!(
            replace_mac(cfg, "52:54:00:aa:bb:cc", "52:54:00:11:22:33"),
            "[Match]\nMACAddress=52:54:00:11:22:33\n# 52-54-00-11-22-33\n"
        );
    }
}
