//! `ignite netboot`: boot-file fetching, lease listing and benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ignite_recovery::process::output as sh;

use crate::initramfs::marker_initramfs;

#[derive(Args)]
pub struct NetbootArgs {
    #[command(subcommand)]
    cmd: NetbootCmd,
}

#[derive(Subcommand)]
enum NetbootCmd {
    /// Fill a boot directory with iPXE (Debian package ipxe) and, with --kernel, a Debian
    /// kernel (linux-image-amd64) plus a small busybox initramfs.
    FetchBootFiles {
        #[arg(long, env = "IGNITE_BOOT_DIR", default_value = "/var/lib/ignite/boot")]
        boot_dir: PathBuf,
        /// Also fetch the kernel and build the test initramfs (debian/vmlinuz, debian/initrd.img).
        #[arg(long)]
        kernel: bool,
        /// Where downloaded .deb packages are kept between runs.
        #[arg(long, env = "IGNITE_CACHE_DIR", default_value = "/var/cache/ignite")]
        cache_dir: PathBuf,
        /// Text the initramfs prints on the console before powering off.
        #[arg(long, default_value = "IGNITE-INITRAMFS-OK")]
        marker: String,
    },
    /// Build the install initramfs: this `ignite` as /init (the install agent), the kernel
    /// modules it needs, mkfs tools with their libraries, busybox for the rescue shell.
    BuildInitramfs {
        /// The kernel version the modules are for (`uname -r` of the install kernel).
        /// Default: the kernel `fetch-boot-files --kernel` serves (the one the package
        /// linux-image-amd64 depends on).
        #[arg(long)]
        kernel_version: Option<String>,
        /// /lib/modules/VERSION, a package root holding lib/modules/VERSION, or a
        /// linux-image .deb. Default: /lib/modules/VERSION, else package
        /// linux-image-VERSION from the cache (downloaded with apt).
        #[arg(long)]
        modules_from: Option<PathBuf>,
        #[arg(long, default_value = "ignite-initrd.img")]
        output: PathBuf,
        #[arg(long, env = "IGNITE_CACHE_DIR", default_value = "/var/cache/ignite")]
        cache_dir: PathBuf,
    },
    /// Benchmarks against the usual peers (tftpd-hpa, dnsmasq, perfdhcp), side by side.
    Bench(crate::cli::netboot_bench::BenchArgs),
    /// List DHCP leases.
    Leases {
        #[arg(long, env = "IGNITE_STATE_DIR", default_value = "/var/lib/ignite")]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: NetbootArgs) -> Result<()> {
    match a.cmd {
        NetbootCmd::FetchBootFiles {
            boot_dir,
            kernel,
            cache_dir,
            marker,
        } => fetch_boot_files(&boot_dir, kernel, &cache_dir, &marker),
        NetbootCmd::Leases { state_dir, json } => leases(&state_dir, json),
        NetbootCmd::Bench(b) => crate::cli::netboot_bench::run(b),
        NetbootCmd::BuildInitramfs {
            kernel_version,
            modules_from,
            output,
            cache_dir,
        } => {
            let version = match kernel_version {
                Some(v) => v,
                None => kernel_package()?
                    .strip_prefix("linux-image-")
                    .map(str::to_string)
                    .context("the kernel package name does not start with linux-image-")?,
            };
            build_initramfs(&version, modules_from, &output, &cache_dir)
        }
    }
}

fn build_initramfs(
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

fn leases(state_dir: &Path, json: bool) -> Result<()> {
    let store = crate::state::State::open(state_dir)?.lease_store()?;
    let now = ignite_netboot::dhcp::unix_now();
    let rows: Vec<serde_json::Value> = store
        .all()
        .into_iter()
        .map(|l| {
            serde_json::json!({
                "ip": l.ip.to_string(),
                "mac": l.mac.map(|m| m.to_string()),
                "expires": l.expires,
                "state": format!("{:?}", l.state).to_lowercase(),
                "active": l.active(now),
                "hostname": l.hostname,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<16} {:<18} {:<9} {:<6} EXPIRES",
            "IP", "MAC", "STATE", "ACTIVE"
        );
        for r in rows {
            println!(
                "{:<16} {:<18} {:<9} {:<6} {}",
                r["ip"].as_str().unwrap_or(""),
                r["mac"].as_str().unwrap_or("-"),
                r["state"].as_str().unwrap_or(""),
                r["active"],
                r["expires"]
            );
        }
    }
    Ok(())
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
fn kernel_package() -> Result<String> {
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
struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    fn take(cache: &Path) -> Result<CacheLock> {
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

pub fn fetch_boot_files(boot_dir: &Path, kernel: bool, cache: &Path, marker: &str) -> Result<()> {
    let _lock = CacheLock::take(cache)?;
    let system = Path::new("/usr/lib/ipxe");
    let ipxe_dir = if system.join("undionly.kpxe").is_file() {
        system.to_path_buf()
    } else {
        unpack_deb("ipxe", cache)?.join("usr/lib/ipxe")
    };
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe"] {
        let src = ipxe_dir.join(f);
        if src.is_file() {
            install(&src, &boot_dir.join(f))?;
            println!("{}", boot_dir.join(f).display());
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
        println!("{}", boot_dir.join("qemu").display());
    }
    if !kernel {
        return Ok(());
    }
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
    install(&vmlinuz, &boot_dir.join("debian/vmlinuz"))?;
    println!("{}", boot_dir.join("debian/vmlinuz").display());
    let busybox = Path::new("/bin/busybox");
    let busybox = if busybox.is_file() && is_static(busybox) {
        busybox.to_path_buf()
    } else {
        unpack_deb("busybox-static", cache)?.join("bin/busybox")
    };
    let bb =
        std::fs::read(&busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    write_atomic(
        &boot_dir.join("debian/initrd.img"),
        &marker_initramfs(bb, marker),
    )?;
    println!("{}", boot_dir.join("debian/initrd.img").display());
    Ok(())
}

/// A dynamically linked busybox would not run in an initramfs without its libraries.
fn is_static(p: &Path) -> bool {
    let Ok(bytes) = std::fs::read(p) else {
        return false;
    };
    // ELF with no PT_INTERP program header: look for the interpreter path string.
    bytes.starts_with(b"\x7fELF") && !bytes.windows(13).any(|w| w == b"/lib64/ld-lin")
}
