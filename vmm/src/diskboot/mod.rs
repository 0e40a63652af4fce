//! Booting a disk guest without a boot loader: find the kernel and initramfs on the guest
//! disk's ext4 `/boot` (GPT, MBR or a whole-disk file system; `/boot` inside the root file
//! system or a partition of its own), read them from the host, and name the root file system
//! by UUID for the kernel command line.

pub mod partitions;

use crate::error::{Error, Result};
use ext4_view::Ext4;
use partitions::Partition;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Random-access bytes of a disk image.
pub trait DiskSource: Send + Sync {
    fn size(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl DiskSource for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl DiskSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// One partition of a disk as ext4-view reads it.
struct PartitionReader {
    disk: Arc<dyn DiskSource>,
    part: Partition,
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let end = start.checked_add(dst.len() as u64);
        if end.is_none_or(|e| e > self.part.len) {
            return Err(format!("read past the end of {}", self.part).into());
        }
        Ok(self.disk.read_at(self.part.start + start, dst)?)
    }
}

/// What `find` found: the kernel, its initramfs, and the root file system's UUID.
#[derive(Debug)]
pub struct BootFiles {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub root_uuid: String,
    /// Where they were, for users: `partition 2: /boot/vmlinuz-6.1.0-18-amd64 + ...`.
    pub found: String,
}

impl BootFiles {
    /// The kernel command line: root by UUID, console on the first serial port.
    pub fn cmdline(&self) -> String {
        format!(
            "root=UUID={} ro console=ttyS0 reboot=k panic=1",
            self.root_uuid
        )
    }

    /// Writes kernel and initramfs into `dir` (as `vmlinuz`, `initrd.img`, each through a
    /// temporary name) and returns their paths.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<(PathBuf, Option<PathBuf>)> {
        let put = |name: &str, data: &[u8]| -> std::io::Result<PathBuf> {
            let p = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, &p)?;
            Ok(p)
        };
        let kernel = put("vmlinuz", &self.kernel)?;
        let initrd = match &self.initrd {
            Some(d) => Some(put("initrd.img", d)?),
            None => None,
        };
        Ok((kernel, initrd))
    }
}

/// Finds the boot files on the disk image at `path`.
pub fn find_on_image(path: &Path) -> Result<BootFiles> {
    let file = std::fs::File::open(path).map_err(|err| Error::DiskUnreadable {
        path: path.to_owned(),
        err,
    })?;
    find(Arc::new(file)).map_err(|msg| Error::DiskBoot {
        path: path.to_owned(),
        msg,
    })
}

/// Finds the boot files on `disk`; the error says what was looked at.
pub fn find(disk: Arc<dyn DiskSource>) -> std::result::Result<BootFiles, String> {
    let parts = partitions::list(disk.as_ref());
    let filesystems: Vec<(Partition, Ext4)> = parts
        .iter()
        .filter_map(|&part| {
            let r = PartitionReader {
                disk: disk.clone(),
                part,
            };
            Some((part, Ext4::load(Box::new(r)).ok()?))
        })
        .collect();
    if filesystems.is_empty() {
        return Err(format!(
            "no ext4 file system on {} ({}); --boot disk on the bundled monitor reads the kernel from an ext4 /boot: \
             use --boot kernel=PATH or --engine qemu for other disks",
            if parts.len() == 1 { "it" } else { "any partition" },
            parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    // /boot inside a root file system first; then a file system that is /boot itself.
    for (part, fs) in &filesystems {
        if let Some((kernel, initrd)) = kernel_in(fs, "/boot") {
            return load(fs, &fs.uuid().to_string(), part, "/boot/", kernel, initrd);
        }
    }
    for (part, fs) in &filesystems {
        if let Some((kernel, initrd)) = kernel_in(fs, "/") {
            let root = filesystems
                .iter()
                .find(|(p, f)| p != part && f.exists("/etc").unwrap_or(false))
                .ok_or_else(|| {
                    format!(
                        "{part} holds {kernel} (a separate /boot) but no other ext4 file system has /etc, \
                         so the root file system is unknown"
                    )
                })?;
            return load(fs, &root.1.uuid().to_string(), part, "/", kernel, initrd);
        }
    }
    Err(format!(
        "no kernel (vmlinuz or vmlinuz-*) in /boot of the ext4 file system on {}; \
         install a kernel in the guest or use --boot kernel=PATH",
        filesystems
            .iter()
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn load(
    fs: &Ext4,
    root_uuid: &str,
    part: &Partition,
    dir: &str,
    kernel: String,
    initrd: Option<String>,
) -> std::result::Result<BootFiles, String> {
    let read = |name: &str| {
        fs.read(format!("{dir}{name}").as_str())
            .map_err(|e| format!("{part}: cannot read {dir}{name}: {e}"))
    };
    let mut found = format!("{part}: {dir}{kernel}");
    if let Some(i) = &initrd {
        found += &format!(" + {dir}{i}");
    }
    Ok(BootFiles {
        kernel: read(&kernel)?,
        initrd: initrd.as_deref().map(read).transpose()?,
        root_uuid: root_uuid.to_owned(),
        found,
    })
}

/// The newest kernel in `dir` and the initramfs that goes with it, by name.
fn kernel_in(fs: &Ext4, dir: &str) -> Option<(String, Option<String>)> {
    let names: Vec<String> = fs
        .read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().as_str().ok().map(str::to_owned))
        .collect();
    let is_file = |n: &str| {
        fs.metadata(format!("{}/{n}", dir.trim_end_matches('/')).as_str())
            .is_ok_and(|m| m.file_type().is_regular_file())
    };
    let kernel = if names.iter().any(|n| n == "vmlinuz") && is_file("vmlinuz") {
        "vmlinuz".to_owned()
    } else {
        names
            .iter()
            .filter(|n| n.starts_with("vmlinuz-") && !n.ends_with(".old") && is_file(n))
            .max_by(|a, b| version_order(a, b))?
            .clone()
    };
    let version = &kernel["vmlinuz".len()..];
    let initrd = [
        format!("initrd.img{version}"),
        format!("initramfs{version}.img"),
        format!("initrd{version}"),
    ]
    .into_iter()
    .find(|n| names.contains(n) && is_file(n));
    Some((kernel, initrd))
}

/// Orders names so that `vmlinuz-6.10` comes after `vmlinuz-6.9`: runs of digits compare
/// as numbers.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
                rest = &rest[digits..];
            } else {
                let text =
                    rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
                out.push((0, rest[..text].to_owned()));
                rest = &rest[text..];
            }
        }
        out
    }
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        let mut v = ["vmlinuz-6.9.0", "vmlinuz-6.10.1", "vmlinuz-6.1.0-18-amd64"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(
            v,
            ["vmlinuz-6.1.0-18-amd64", "vmlinuz-6.9.0", "vmlinuz-6.10.1"]
        );
    }

    /// The cargo-fuzz target's input class, randomized: partition tables and ext4
    /// superblocks with random fields never make `find` panic.
    #[test]
    fn hostile_images_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..400 {
            let mut d = vec![0u8; 256 << 10];
            for _ in 0..64 {
                let at = rnd() as usize % (d.len() - 8);
                d[at..at + 8].copy_from_slice(&rnd().to_le_bytes());
            }
            d[510] = 0x55;
            d[511] = 0xaa;
            if round % 2 == 0 {
                d[446 + 4] = 0xee;
                d[512..520].copy_from_slice(b"EFI PART");
                d[512 + 80..512 + 84].copy_from_slice(&(rnd() as u32 % 300).to_le_bytes());
                d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
            }
            // An ext4 superblock magic where a whole-disk or first partition would have it.
            for base in [0usize, 34 * 512, 64 << 10] {
                d[base + 1024 + 56..base + 1024 + 58].copy_from_slice(&0xef53u16.to_le_bytes());
            }
            let _ = find(Arc::new(d));
        }
    }

    #[test]
    fn disks_without_ext4_say_what_was_looked_at() {
        let e = find(Arc::new(vec![0u8; 1 << 20])).unwrap_err();
        assert!(
            e.contains("no ext4 file system on it (the whole disk)"),
            "{e}"
        );
    }
}
