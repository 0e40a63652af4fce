//! What `ignite server` serves, and making what is missing before it starts: a fresh state
//! directory needs no other command. Only the files of the built-in defaults can be made
//! (iPXE from Debian's ipxe, the install kernel from linux-image-amd64, the agent initramfs
//! built for that kernel); a file the configuration names otherwise must be provided, and
//! `ignite server --check` lists it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::{Config, AGENT_INITRD};
use crate::bootfiles::{self, CacheLock};

/// How a boot file comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// Copied from Debian's package ipxe.
    Ipxe,
    /// The kernel linux-image-amd64 depends on.
    Kernel,
    /// The agent initramfs, built for the served kernel.
    Agent,
}

/// One file the configuration serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    /// Relative to the boot directory.
    pub rel: String,
    /// Who asks for it, for the listing.
    pub role: &'static str,
    /// None: the operator provides it.
    pub maker: Option<Maker>,
    /// Only some clients need it (a missing one is listed, not fatal).
    pub optional: bool,
}

/// Every file the configuration serves, in the order a client fetches them.
pub fn boot_files(cfg: &Config) -> Vec<BootFile> {
    let b = &cfg.boot;
    let made = |rel: &str, default: &str, m: Maker| (rel == default).then_some(m);
    let mut files = vec![
        BootFile {
            rel: b.bios.clone(),
            role: "BIOS PXE clients",
            maker: made(&b.bios, "undionly.kpxe", Maker::Ipxe),
            optional: false,
        },
        BootFile {
            rel: b.efi_x64.clone(),
            role: "UEFI x86-64 clients",
            maker: made(&b.efi_x64, "ipxe.efi", Maker::Ipxe),
            optional: false,
        },
        BootFile {
            // Debian's ipxe has no arm64 build: only arm64 clients need it.
            rel: b.efi_arm64.clone(),
            role: "UEFI arm64 clients",
            maker: None,
            optional: true,
        },
        BootFile {
            rel: b.kernel.clone(),
            role: "install kernel",
            maker: made(&b.kernel, "debian/vmlinuz", Maker::Kernel),
            optional: false,
        },
    ];
    for i in &b.initrd {
        files.push(BootFile {
            rel: i.clone(),
            role: "install initramfs",
            maker: made(i, AGENT_INITRD, Maker::Agent),
            optional: false,
        });
    }
    files
}

/// `boot_files` that are not in `boot_dir`.
pub fn missing(cfg: &Config) -> Vec<BootFile> {
    let dir = cfg.boot_dir();
    boot_files(cfg)
        .into_iter()
        .filter(|f| !dir.join(&f.rel).is_file())
        .collect()
}

/// The listing `ignite server --check` prints, one line per boot file.
pub fn listing(cfg: &Config) -> String {
    let dir = cfg.boot_dir();
    let mut out = format!("boot files in {}:\n", dir.display());
    for f in boot_files(cfg) {
        let state = match (dir.join(&f.rel).is_file(), f.maker, f.optional) {
            (true, ..) => "present".to_string(),
            (false, Some(m), _) => format!("missing: `ignite server` makes it ({})", source(m)),
            (false, None, true) => "missing (optional: only these clients need it)".to_string(),
            (false, None, false) => "MISSING: provide it (not a built-in default)".to_string(),
        };
        out += &format!("  {:<22} {:<20} {state}\n", f.rel, f.role);
    }
    out
}

fn source(m: Maker) -> &'static str {
    match m {
        Maker::Ipxe => "from Debian's package ipxe",
        Maker::Kernel => "from Debian's package linux-image-amd64",
        Maker::Agent => "built for the install kernel",
    }
}

/// Makes every missing file that has a maker, saying what it does on stderr; then fails
/// naming any required file still missing.
pub fn prepare(cfg: &Config, cache: &Path) -> Result<()> {
    let dir = cfg.boot_dir();
    let todo = missing(cfg);
    let has = |m: Maker| todo.iter().any(|f| f.maker == Some(m));
    let offline = |what: &str, e: anyhow::Error| {
        e.context(format!(
            "cannot prepare {what} in {}: it is fetched from Debian's packages with apt; on a \
             machine without network, copy it there (e.g. from `ignite server --prepare` run \
             elsewhere) or name your own files in [boot] of the configuration",
            dir.display()
        ))
    };
    if has(Maker::Ipxe) || has(Maker::Kernel) {
        let _lock = CacheLock::take(cache)?;
        if has(Maker::Ipxe) {
            eprintln!("preparing iPXE boot files (Debian package ipxe)");
            bootfiles::fetch_ipxe(&dir, cache).map_err(|e| offline("iPXE", e))?;
        }
        if has(Maker::Kernel) {
            eprintln!("preparing the install kernel (Debian package linux-image-amd64)");
            bootfiles::fetch_kernel(&dir, cache).map_err(|e| offline("the install kernel", e))?;
        }
    }
    if has(Maker::Agent) {
        let kernel = dir.join(&cfg.boot.kernel);
        let release = kernel_release(&kernel)?;
        eprintln!("preparing the agent initramfs for kernel {release}");
        bootfiles::build_initramfs(&release, None, &dir.join(AGENT_INITRD), cache)
            .map_err(|e| offline("the agent initramfs (the kernel's modules)", e))?;
    }
    let left: Vec<String> = missing(cfg)
        .into_iter()
        .filter(|f| !f.optional)
        .map(|f| format!("{} ({})", dir.join(&f.rel).display(), f.role))
        .collect();
    anyhow::ensure!(
        left.is_empty(),
        "boot files missing: {}; provide them or change [boot] in the configuration \
         (`ignite server --check` lists every file)",
        left.join(", ")
    );
    Ok(())
}

fn kernel_release(kernel: &PathBuf) -> Result<String> {
    let bytes =
        std::fs::read(kernel).with_context(|| format!("cannot read {}", kernel.display()))?;
    bootfiles::kernel_release(&bytes).with_context(|| format!("{}", kernel.display()))
}
