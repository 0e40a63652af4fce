//! The files `ignite server` serves to boot clients, fetched from Debian's packages with the
//! ordinary apt client and kept in a cache directory: iPXE (package ipxe), the install kernel
//! (the package linux-image-amd64 depends on; Debian signs it for Secure Boot) and the agent
//! initramfs built for that kernel; for Secure Boot clients, shim (shim-signed) and the
//! network GRUB (grub-efi-amd64-signed), both signed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ignite_netboot::boot::{GRUB_X64, SHIM_X64};
use ignite_recovery::process::output as sh;

use crate::initramfs::marker_initramfs;

pub fn build_initramfs(
    version: &str,
    modules_from: Option<PathBuf>,
    output: &Path,
    cache: &Path,
) -> Result<()> {
    use crate::initramfs::build;
    let _tmp;
    let from = match modules_from {
        Some(p) if p.extension().is_some_and(|e| e == "deb") => {
            let t = tempfile_dir(cache)?;
            sh(Command::new("dpkg-deb").arg("-x").arg(&p).arg(&t.0))
                .with_context(|| format!("cannot unpack {}", p.display()))?;
            let dir = t.0.clone();
            _tmp = t;
            dir
        }
        Some(p) => p,
        None if Path::new("/lib/modules").join(version).is_dir() => {
            Path::new("/lib/modules").join(version)
        }
        None => {
            let _lock = CacheLock::take(cache)?;
            unpack_deb_part(
                &format!("linux-image-{version}"),
                cache,
                Some("./lib/modules"),
            )?
        }
    };
    let dir = build::modules_dir(&from, version)?;
    let built = build::build(version, &dir, Path::new("/proc/self/exe"))?;
    write_atomic(output, &built.image)?;
    eprintln!(
        "{}: {} bytes, {} modules, tools: {}",
        output.display(),
        built.image.len(),
        built.modules,
        built.tools.join(" ")
    );
    Ok(())
}

/// A scratch directory in the cache, removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(cache: &Path) -> Result<ScratchDir> {
    let d = cache.join(format!("tmp-initramfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(ScratchDir(d))
}

/// Unpacks Debian package `pkg` into `<cache>/root/<pkg>` (downloading its .deb once) and
/// returns that directory. Uses the ordinary apt client. With `only`, just that member
/// directory (e.g. `./boot`) is unpacked: a kernel package's modules are 400 MB we never use.
fn unpack_deb(pkg: &str, cache: &Path) -> Result<PathBuf> {
    unpack_deb_part(pkg, cache, None)
}

fn unpack_deb_part(pkg: &str, cache: &Path, only: Option<&str>) -> Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)
        .with_context(|| format!("cache directory {}", debs.display()))?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
    };
    let deb = match find() {
        Some(d) => d,
        None => {
            tracing::info!("downloading Debian package {pkg}");
            sh(Command::new("apt-get")
                .arg("download")
                .arg(pkg)
                .current_dir(&debs))
            .with_context(|| {
                format!("package {pkg}: download failed; run `apt-get update` first")
            })?;
            find().with_context(|| format!("package {pkg}: apt-get download left no .deb"))?
        }
    };
    // A partial unpack gets its own directory (`<pkg>@boot`), so it never passes for the
    // whole package or for another part.
    let name = match only {
        None => pkg.to_string(),
        Some(m) => format!("{pkg}@{}", m.trim_start_matches("./").replace('/', "_")),
    };
    let root = cache.join("root").join(&name);
    if !root.is_dir() {
        let tmp = cache.join("root").join(format!(".{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        match only {
            None => {
                sh(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
            }
            Some(member) => {
                let mut deb_tar = Command::new("dpkg-deb")
                    .arg("--fsys-tarfile")
                    .arg(&deb)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .context("cannot run dpkg-deb")?;
                let stdout = deb_tar.stdout.take().context("dpkg-deb output")?;
                sh(Command::new("tar")
                    .arg("-x")
                    .arg("-C")
                    .arg(&tmp)
                    .arg(member)
                    .stdin(stdout))?;
                if !deb_tar.wait()?.success() {
                    bail!("dpkg-deb --fsys-tarfile {} failed", deb.display());
                }
            }
        }
        std::fs::rename(&tmp, &root)?;
    }
    Ok(root)
}

/// The versioned kernel package linux-image-amd64 currently depends on.
pub fn kernel_package() -> Result<String> {
    let out = sh(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim().to_string())
        .find(|p| p.starts_with("linux-image-") && p != "linux-image-amd64")
        .context("linux-image-amd64 names no kernel package; run `apt-get update`")
}

/// Copies `src` to `dst` through a temporary name, so readers never see half a file.
fn install(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
    write_atomic(dst, &bytes)
}

fn write_atomic(dst: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let tmp = dst.with_extension("tmp-ignite");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

/// Holds an exclusive lock on the cache directory while alive, so that concurrent runs
/// (parallel tests, two admins) do not download or unpack the same package at once.
pub struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    pub fn take(cache: &Path) -> Result<CacheLock> {
        std::fs::create_dir_all(cache)
            .with_context(|| format!("cache directory {}", cache.display()))?;
        let f = std::fs::File::create(cache.join(".lock")).with_context(|| {
            format!(
                "cache directory {}: cannot create its lock file",
                cache.display()
            )
        })?;
        // Released when the file is closed.
        if let Err(e) = rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive) {
            bail!("cache directory {}: cannot lock it: {e}", cache.display());
        }
        Ok(CacheLock { _file: f })
    }
}

/// `ignite netboot fetch-boot-files`: iPXE, and with `kernel` the install kernel plus the
/// busybox test initramfs that prints `marker` (debian/initrd.img).
pub fn fetch_boot_files(boot_dir: &Path, kernel: bool, cache: &Path, marker: &str) -> Result<()> {
    let _lock = CacheLock::take(cache)?;
    for f in fetch_ipxe(boot_dir, cache)? {
        println!("{}", f.display());
    }
    if !kernel {
        return Ok(());
    }
    println!("{}", fetch_kernel(boot_dir, cache)?.display());
    let busybox = Path::new("/bin/busybox");
    let busybox = if busybox.is_file() && is_static(busybox) {
        busybox.to_path_buf()
    } else {
        unpack_deb("busybox-static", cache)?.join("bin/busybox")
    };
    let bb =
        std::fs::read(&busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    let initrd = boot_dir.join("debian/initrd.img");
    write_atomic(&initrd, &marker_initramfs(bb, marker))?;
    println!("{}", initrd.display());
    Ok(())
}

/// iPXE's boot files (undionly.kpxe, ipxe.efi, snponly.efi, ipxe.pxe) into `boot_dir`, and
/// its option ROMs for emulated NICs into `boot_dir/qemu`; the files written.
pub fn fetch_ipxe(boot_dir: &Path, cache: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let system = Path::new("/usr/lib/ipxe");
    let ipxe_dir = if system.join("undionly.kpxe").is_file() {
        system.to_path_buf()
    } else {
        unpack_deb("ipxe", cache)?.join("usr/lib/ipxe")
    };
    for f in IPXE_FILES {
        let src = ipxe_dir.join(f);
        if src.is_file() {
            install(&src, &boot_dir.join(f))?;
            written.push(boot_dir.join(f));
        }
    }
    // iPXE option ROMs for emulated NICs (Debian package ipxe-qemu), for guests of a
    // monitor that wants a network-bootable NIC ROM.
    let roms = Path::new("/usr/lib/ipxe/qemu");
    let roms = if roms.join("pxe-virtio.rom").is_file() {
        Some(roms.to_path_buf())
    } else {
        unpack_deb("ipxe-qemu", cache)
            .map_err(|e| tracing::warn!("iPXE NIC ROMs skipped: {e:#}"))
            .ok()
            .map(|r| r.join("usr/lib/ipxe/qemu"))
    };
    if let Some(dir) = roms {
        for e in std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .flatten()
        {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".rom") {
                install(&e.path(), &boot_dir.join("qemu").join(&name))?;
            }
        }
        written.push(boot_dir.join("qemu"));
    }
    Ok(written)
}

/// Debian's signed shim and network GRUB into `boot_dir` under the names shim and netboot
/// serve them by (`shimx64.efi`, and `grubx64.efi`, which shim loads from beside itself);
/// the files written. The host's copies are used when its packages are installed.
pub fn fetch_secure_boot(boot_dir: &Path, cache: &Path) -> Result<Vec<PathBuf>> {
    let from_package = |pkg: &str, inside: &str| -> Result<PathBuf> {
        let host = Path::new("/").join(inside);
        if host.is_file() {
            return Ok(host);
        }
        Ok(unpack_deb(pkg, cache)?.join(inside))
    };
    let mut written = Vec::new();
    for (pkg, inside, name) in [
        ("shim-signed", "usr/lib/shim/shimx64.efi.signed", SHIM_X64),
        (
            "grub-efi-amd64-signed",
            "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
            GRUB_X64,
        ),
    ] {
        let src = from_package(pkg, inside)?;
        let dst = boot_dir.join(name);
        install(&src, &dst).with_context(|| format!("package {pkg}: /{inside}"))?;
        written.push(dst);
    }
    Ok(written)
}

/// The iPXE boot files Debian's package ipxe ships for x86 clients.
pub const IPXE_FILES: [&str; 4] = ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe"];

/// The install kernel (the one linux-image-amd64 depends on) as `boot_dir/debian/vmlinuz`.
pub fn fetch_kernel(boot_dir: &Path, cache: &Path) -> Result<PathBuf> {
    let pkg = kernel_package()?;
    let root = unpack_deb_part(&pkg, cache, Some("./boot"))?;
    let vmlinuz = std::fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("package {pkg} has no boot/vmlinuz-*"))?;
    let dst = boot_dir.join("debian/vmlinuz");
    install(&vmlinuz, &dst)?;
    Ok(dst)
}

/// The release (`uname -r`) of a bzImage kernel, from the version string its setup header
/// points to: the agent initramfs must carry modules of exactly this release.
pub fn kernel_release(bzimage: &[u8]) -> Result<String> {
    let field = |at: usize, n: usize| bzimage.get(at..at + n);
    if field(0x202, 4) != Some(b"HdrS") {
        bail!("not a Linux bzImage (no HdrS setup header)");
    }
    let ptr = field(0x20e, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let text = ptr
        .filter(|&p| p != 0)
        .and_then(|p| bzimage.get(p + 0x200..))
        .context("the kernel's setup header has no version string")?;
    let end = text.iter().position(|&b| b == 0 || b == b' ').unwrap_or(0);
    let release = std::str::from_utf8(&text[..end.min(64)]).unwrap_or("");
    if release.is_empty() || !release.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the kernel's version string is not readable");
    }
    Ok(release.to_string())
}

/// A dynamically linked busybox would not run in an initramfs without its libraries.
fn is_static(p: &Path) -> bool {
    let Ok(bytes) = std::fs::read(p) else {
        return false;
    };
    // ELF with no PT_INTERP program header: look for the interpreter path string.
    bytes.starts_with(b"\x7fELF") && !bytes.windows(13).any(|w| w == b"/lib64/ld-lin")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage's first 1 KiB as the boot protocol lays it out: "HdrS" at 0x202 and the
    /// version string's offset (less 0x200) at 0x20e.
    fn bzimage(version: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        b[0x300..0x300 + version.len()].copy_from_slice(version);
        b
    }

    #[test]
    fn kernel_release_reads_the_setup_header() {
        let img = bzimage(b"6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP\0");
        assert_eq!(kernel_release(&img).unwrap(), "6.1.0-28-amd64");
        assert!(kernel_release(&[0u8; 0x300]).is_err());
        assert!(kernel_release(&bzimage(b"\0")).is_err());
        assert!(kernel_release(&bzimage(b"6.1\x01bad\0")).is_err());
        let mut far = bzimage(b"x\0");
        far[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(
            kernel_release(&far).is_err(),
            "a pointer past the end is an error"
        );
        assert!(kernel_release(&[]).is_err());
    }
}
