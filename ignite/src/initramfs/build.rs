//! The install initramfs: `/init` is this very `ignite` binary (static, so it needs nothing
//! beside it), with the kernel modules the agent loads (and their dependencies), and the
//! tools it runs with their shared libraries, found as initramfs-tools does (`ldd`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cpio::{cpio, Entry};
use crate::agent::modules::module_name;

/// Storage drivers, by class rather than by test machine: NVMe, AHCI and legacy ATA, the
/// SAS/RAID HBAs of x86-64 servers (Broadcom/LSI mpt3sas and megaraid_sas, Microchip
/// smartpqi and aacraid, HPE hpsa, QEMU's lsi53c895a as sym53c8xx), virtio, USB storage
/// behind the USB host controllers, and SCSI disks and CD-ROMs. The agent loads those the
/// machine's devices ask for (by modalias).
pub const STORAGE: &[&str] = &[
    "nvme",
    "ahci",
    "ata_piix",
    "ata_generic",
    "mpt3sas",
    "megaraid_sas",
    "smartpqi",
    "aacraid",
    "hpsa",
    "sym53c8xx",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "xhci_pci",
    "ehci_pci",
    "uhci_hcd",
    "ohci_pci",
    "usb_storage",
    "uas",
    "sd_mod",
    "sr_mod",
];

/// NIC drivers: Intel (e1000, e1000e, igb, ixgbe, i40e, ice), Broadcom (bnxt_en, tg3),
/// NVIDIA/Mellanox mlx5, Realtek r8169, virtio, and the NE2000 the bundled monitor emulates.
/// None needs firmware that Debian ships as free software: ice without its DDP package
/// runs in safe mode, r8169 and tg3 use their optional firmware patches only on some chips
/// (firmware-realtek, firmware-misc-nonfree are non-free and left out).
pub const NETWORK: &[&str] = &[
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "mlx5_core",
    "r8169",
    "tg3",
    "virtio_net",
    "ne2k_pci",
];

/// Modules every machine gets whatever its devices (`modules.always`), in this order: the
/// file systems the agent makes and what they need at run time. The crc32c implementations
/// come first because libcrc32c (for xfs) looks the algorithm up when it loads (a softdep,
/// which modinfo `depends=` does not list).
pub const ALWAYS: &[&str] = &[
    "crc32c_generic",
    "crc32c_intel",
    "af_packet",
    "ext4",
    "xfs",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "efivarfs",
    // Software RAID1 and LVM (device-mapper) under the file systems: loaded up front, as
    // the agent has no modprobe for the kernel to ask when mdadm or lvm opens them.
    "raid1",
    "dm_mod",
    // Recovery media: the CD's file system (no device asks for it; sr_mod brings cdrom).
    "isofs",
];

/// Tools the agent runs, and the Debian package of each.
pub const TOOLS: &[(&str, &str)] = &[
    ("mke2fs", "e2fsprogs"),
    ("mkfs.xfs", "xfsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mkswap", "util-linux"),
    // Software RAID and LVM (pvcreate, vgcreate, lvcreate are `lvm` subcommands).
    ("mdadm", "mdadm"),
    ("lvm", "lvm2"),
    // The rescue shell's and the install benchmark's baseline (`curl | tar`).
    ("curl", "curl"),
    ("tar", "tar"),
];

/// Where a kernel's modules are: `/lib/modules/<version>` itself, or a package root holding
/// it (`lib/modules/<version>` or `usr/lib/modules/<version>`).
pub fn modules_dir(from: &Path, version: &str) -> Result<PathBuf> {
    for d in [
        from.to_path_buf(),
        from.join("lib/modules").join(version),
        from.join("usr/lib/modules").join(version),
    ] {
        if d.join("kernel").is_dir() {
            return Ok(d);
        }
    }
    bail!(
        "{} holds no modules for kernel {version} (no kernel/ there nor in lib/modules/{version}); pass the kernel's module directory or its linux-image-{version} package",
        from.display()
    )
}

/// Every module file under `dir/kernel`, by module name.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let rel = rel.to_string_lossy().into_owned();
                if rel.contains(".ko") {
                    out.insert(module_name(&rel), rel);
                }
            }
        }
    }
    Ok(out)
}

/// Every value of `key` in a module's modinfo (`\0key=value\0` strings; what depmod reads
/// too: a kernel package ships no modules.dep nor modules.alias, depmod makes them when the
/// package is installed).
fn modinfo(ko: &[u8], key: &str) -> Vec<String> {
    let tag = format!("\0{key}=");
    let tag = tag.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = ko[at..].windows(tag.len()).position(|w| w == tag) {
        let rest = &ko[at + i + tag.len()..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        at += i + tag.len() + end;
    }
    out
}

/// The modules a module needs directly: its modinfo `depends=`.
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    modinfo(ko, "depends")
        .first()
        .map(|d| {
            d.split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// The module file as the kernel loads it (compressed modules are unpacked here, so the
/// agent needs no decompressor).
fn read_module(dir: &Path, rel: &str) -> Result<(String, Vec<u8>)> {
    let path = dir.join(rel);
    let raw =
        std::fs::read(&path).with_context(|| format!("cannot read module {}", path.display()))?;
    if let Some(plain) = rel.strip_suffix(".zst") {
        let data = zstd::decode_all(&raw[..]).with_context(|| format!("module {rel}: bad zstd"))?;
        return Ok((plain.to_string(), data));
    }
    for (suffix, tool) in [(".xz", "xz"), (".gz", "gzip")] {
        if let Some(plain) = rel.strip_suffix(suffix) {
            let out = Command::new(tool)
                .args(["-dc"])
                .arg(&path)
                .output()
                .with_context(|| format!("module {rel}: cannot run {tool} to unpack it"))?;
            if !out.status.success() {
                bail!("module {rel}: {tool} -dc failed");
            }
            return Ok((plain.to_string(), out.stdout));
        }
    }
    Ok((rel.to_string(), raw))
}

/// A module to put in the image: its path there (uncompressed), contents, direct deps.
struct Module {
    path: String,
    data: Vec<u8>,
    deps: Vec<String>,
}

impl Module {
    fn name(&self) -> String {
        module_name(&self.path)
    }
}

/// The modules wanted and everything they depend on, each after its dependencies.
fn module_closure(dir: &Path, version: &str, wanted: &[&str]) -> Result<Vec<Module>> {
    let index = index_modules(dir)?;
    let builtin: BTreeSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut out = Vec::new();
    let mut done = BTreeMap::new();
    // Depth-first, dependencies first; `needed_by` names the module that asked, for errors.
    fn visit(
        name: &str,
        needed_by: &str,
        ctx: (&Path, &str, &BTreeMap<String, String>, &BTreeSet<String>),
        done: &mut BTreeMap<String, Option<String>>,
        out: &mut Vec<Module>,
    ) -> Result<Option<String>> {
        if let Some(p) = done.get(name) {
            return Ok(p.clone());
        }
        let (dir, version, index, builtin) = ctx;
        let Some(rel) = index.get(name) else {
            if builtin.contains(name) {
                done.insert(name.to_string(), None);
                return Ok(None);
            }
            bail!(
                "kernel {version}: module {name}{needed_by} is neither in {} nor built in; it comes with package linux-image-{version}",
                dir.display()
            );
        };
        done.insert(name.to_string(), None);
        let (path, data) = read_module(dir, rel)?;
        let mut deps = Vec::new();
        for d in modinfo_depends(&data) {
            if let Some(p) = visit(&d, &format!(" (needed by {name})"), ctx, done, out)? {
                deps.push(p);
            }
        }
        done.insert(name.to_string(), Some(path.clone()));
        out.push(Module {
            path: path.clone(),
            data,
            deps,
        });
        Ok(Some(path))
    }
    for w in wanted {
        visit(
            &w.replace('-', "_"),
            "",
            (dir, version, &index, &builtin),
            &mut done,
            &mut out,
        )?;
    }
    Ok(out)
}

/// True if the ELF file has no program interpreter (PT_INTERP): it runs with no loader.
pub fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    // ELF64 little-endian only: the agent is x86_64.
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        u32_at(at).is_some_and(|t| t != 3)
    })
}

/// A program's shared libraries and loader, from `ldd` (empty for a static program).
fn libraries(prog: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(prog)
        .output()
        .context("cannot run ldd (package libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for l in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Adds `path` (absolute) and its parent directories to the image, once each.
struct Image {
    entries: Vec<Entry>,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl Image {
    fn new() -> Image {
        Image {
            entries: Vec::new(),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entries.push(Entry::Dir {
            path: path.to_string(),
            mode: 0o755,
        });
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = path.trim_start_matches('/').to_string();
        if !self.files.insert(path.clone()) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push(Entry::File { path, mode, data });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_start_matches('/').to_string();
        if !self.files.insert(path.clone()) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.push(Entry::Symlink {
            path,
            target: target.to_string(),
        });
    }

    /// A host file under the same path (symlinks followed: the content is stored).
    fn host_file(&mut self, path: &Path) -> Result<()> {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.file(&path.to_string_lossy(), 0o755, data);
        Ok(())
    }
}

pub struct Built {
    pub image: Vec<u8>,
    pub modules: usize,
    pub tools: Vec<String>,
}

/// The agent without its DWARF sections (`objcopy --strip-debug`, from binutils): in a debug
/// build they are most of the binary (74 MB, 31 MB without), and every install would
/// download and unpack them for nothing; the symbols stay, so backtraces still name
/// functions. Without objcopy, or if it fails, the binary as it is.
fn without_debug_info(agent: Vec<u8>) -> Vec<u8> {
    // From a copy: the agent is often read from /proc/self/exe, which objcopy would see as
    // its own executable.
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(_) => return agent,
    };
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let stripped = std::fs::write(&input, &agent)
        .ok()
        .and_then(|_| {
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&input)
                .arg(&output)
                .output()
                .ok()
        })
        .filter(|o| o.status.success())
        .and_then(|_| std::fs::read(&output).ok())
        .filter(|b| is_static_elf(b));
    match stripped {
        Some(b) if b.len() < agent.len() => b,
        _ => agent,
    }
}

/// Builds the compressed (zstd) initramfs for kernel `version`, modules from `mod_dir`.
pub fn build(version: &str, mod_dir: &Path, init: &Path) -> Result<Built> {
    let agent = std::fs::read(init).with_context(|| format!("cannot read {}", init.display()))?;
    if !is_static_elf(&agent) {
        bail!(
            "{} is not a statically linked executable, so it cannot be the initramfs /init; build ignite with the workspace's .cargo/config.toml (static glibc)",
            init.display()
        );
    }
    let agent = without_debug_info(agent);
    let mut img = Image::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "root", "etc"] {
        img.dir(d);
    }
    img.entries.push(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    img.file("init", 0o755, agent);

    let wanted: Vec<&str> = ALWAYS
        .iter()
        .chain(STORAGE)
        .chain(NETWORK)
        .copied()
        .collect();
    let modules = module_closure(mod_dir, version, &wanted)?;
    let count = modules.len();
    let names: BTreeSet<String> = modules.iter().map(Module::name).collect();
    // modules.dep lines, each listing its direct dependencies; modules.alias as depmod
    // writes it, for exactly these modules (see agent::modules).
    let (mut dep, mut alias) = (String::new(), String::new());
    for m in modules {
        dep.push_str(&format!("{}: {}\n", m.path, m.deps.join(" ")));
        for a in modinfo(&m.data, "alias") {
            alias.push_str(&format!("alias {a} {}\n", m.name()));
        }
        img.file(&format!("lib/modules/{version}/{}", m.path), 0o644, m.data);
    }
    // Built-in ones (af_packet in Debian's kernels) are there already.
    let always: String = ALWAYS
        .iter()
        .filter(|m| names.contains(**m))
        .map(|m| format!("{m}\n"))
        .collect();
    for (name, text) in [
        ("modules.dep", dep),
        ("modules.alias", alias),
        ("modules.always", always),
    ] {
        img.file(
            &format!("lib/modules/{version}/{name}"),
            0o644,
            text.into_bytes(),
        );
    }

    let mut tools = Vec::new();
    for (tool, package) in TOOLS {
        let path = which(tool).with_context(|| {
            format!("tool {tool} is not installed here; install package {package} (apt-get install {package})")
        })?;
        img.host_file(&path)?;
        for lib in libraries(&path)? {
            img.host_file(&lib)?;
        }
        tools.push(path.display().to_string());
    }
    // Debian is merged-/usr: programs run as /sbin/X find their libraries as /lib/X.
    img.symlink("bin", "usr/bin");
    img.symlink("sbin", "usr/sbin");
    if Path::new("/etc/mke2fs.conf").is_file() {
        img.host_file(Path::new("/etc/mke2fs.conf"))?;
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context(
            "busybox is not installed here; install package busybox-static (the rescue shell)",
        )?;
    let bb = std::fs::read(busybox)?;
    if !is_static_elf(&bb) {
        bail!(
            "{} is dynamically linked; install package busybox-static for the rescue shell",
            busybox.display()
        );
    }
    img.file("usr/bin/busybox", 0o755, bb);
    img.symlink("usr/bin/sh", "busybox");
    tools.push(busybox.display().to_string());

    let raw = cpio(&img.entries);
    let image = zstd::encode_all(&raw[..], 3).context("cannot compress the initramfs")?;
    Ok(Built {
        image,
        modules: count,
        tools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_aliases_are_all_read() {
        let ko = b"\x7fELF\0alias=pci:v*d*sv*sd*bc01sc08i02*\0depends=nvme-core\0alias=pci:v0000106Bd00002005sv*sd*bc*sc*i*\0";
        assert_eq!(
            modinfo(ko, "alias"),
            [
                "pci:v*d*sv*sd*bc01sc08i02*",
                "pci:v0000106Bd00002005sv*sd*bc*sc*i*"
            ]
        );
        assert!(modinfo(b"\0depends=\0", "alias").is_empty());
    }

    #[test]
    fn modinfo_depends_are_read() {
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio,virtio-ring\0intree=Y\0";
        assert_eq!(modinfo_depends(ko), ["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(modinfo_depends(b"nothing").is_empty());
    }

    #[test]
    fn closure_puts_dependencies_first_and_names_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("kernel/fs");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("xfs.ko"), b"ELF\0depends=libcrc32c,crc-builtin\0").unwrap();
        std::fs::write(
            k.join("libcrc32c.ko.zst"),
            zstd::encode_all(&b"ELF\0depends=\0"[..], 3).unwrap(),
        )
        .unwrap();
        std::fs::write(
            d.path().join("modules.builtin"),
            "kernel/lib/crc-builtin.ko\n",
        )
        .unwrap();
        let m = module_closure(d.path(), "6.1.0-9-amd64", &["xfs"]).unwrap();
        let paths: Vec<&str> = m.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["kernel/fs/libcrc32c.ko", "kernel/fs/xfs.ko"]);
        assert_eq!(m[1].deps, ["kernel/fs/libcrc32c.ko"]);
        assert_eq!(m[0].data, b"ELF\0depends=\0");
        let Err(e) = module_closure(d.path(), "6.1.0-9-amd64", &["e1000"]) else {
            panic!("a missing module was not an error");
        };
        assert!(
            format!("{e:#}").contains("module e1000 is neither in")
                && format!("{e:#}").contains("package linux-image-6.1.0-9-amd64"),
            "{e:#}"
        );
    }

    #[test]
    fn module_names_ignore_dashes_and_compression() {
        assert_eq!(module_name("kernel/drivers/net/ne2k-pci.ko.xz"), "ne2k_pci");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
    }

    #[test]
    fn this_test_binary_is_static_and_ls_is_not() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_static_elf(&me), "the workspace builds static binaries");
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(!is_static_elf(&ls));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn the_agent_goes_in_without_its_debug_info() {
        // This test binary is built like the agent: static, with line tables.
        let me = std::fs::read("/proc/self/exe").unwrap();
        let small = without_debug_info(me.clone());
        assert!(is_static_elf(&small));
        assert!(
            small.len() < me.len() * 3 / 4,
            "{} of {}",
            small.len(),
            me.len()
        );
        // What objcopy cannot read goes in as it is.
        let text = b"#!/bin/sh\n".to_vec();
        assert_eq!(without_debug_info(text.clone()), text);
    }
}
