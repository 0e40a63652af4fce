//! What `ignite server` serves, and making what is missing before it starts: a fresh state
//! directory needs no other command. Only the files of the built-in defaults can be made
//! (iPXE from Debian's ipxe, the install kernel from linux-image-amd64, the agent initramfs
//! built for that kernel; with `uefi_secure_boot`, shim from shim-signed and the network
//! GRUB from grub-efi-amd64-signed); a file the configuration names otherwise must be
//! provided, and `ignite server --check` lists it. With `uefi_secure_boot`, every file of
//! the signed chain (shim, GRUB, kernel) must carry a signature, or the server says which
//! does not before any client meets it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use ignite_netboot::boot::{GRUB_X64, SHIM_X64};
use ignite_netboot::pe::{self, PeSignature};

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
    /// Debian's signed shim and network GRUB (shim-signed, grub-efi-amd64-signed).
    SecureBoot,
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
    let mut files = vec![BootFile {
        rel: b.bios.clone(),
        role: "BIOS PXE clients",
        maker: made(&b.bios, "undionly.kpxe", Maker::Ipxe),
        optional: false,
    }];
    if b.uefi_secure_boot {
        for (rel, role) in [
            (SHIM_X64, "UEFI x86-64 clients"),
            (GRUB_X64, "GRUB, loaded by shim"),
        ] {
            files.push(BootFile {
                rel: rel.into(),
                role,
                maker: Some(Maker::SecureBoot),
                optional: false,
            });
        }
    } else {
        files.push(BootFile {
            rel: b.efi_x64.clone(),
            role: "UEFI x86-64 clients",
            maker: made(&b.efi_x64, "ipxe.efi", Maker::Ipxe),
            optional: false,
        });
    }
    files.extend([
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
    ]);
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
    let unsigned = unsigned_chain(cfg);
    for f in boot_files(cfg) {
        let state = match (dir.join(&f.rel).is_file(), f.maker, f.optional) {
            (true, ..) if unsigned.contains(&f.rel.as_str()) => {
                "present, NOT SIGNED: Secure Boot clients refuse it".to_string()
            }
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
        Maker::SecureBoot => "from Debian's packages shim-signed and grub-efi-amd64-signed",
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
    if has(Maker::Ipxe) || has(Maker::Kernel) || has(Maker::SecureBoot) {
        let _lock = CacheLock::take(cache)?;
        if has(Maker::Ipxe) {
            eprintln!("preparing iPXE boot files (Debian package ipxe)");
            bootfiles::fetch_ipxe(&dir, cache).map_err(|e| offline("iPXE", e))?;
        }
        if has(Maker::SecureBoot) {
            eprintln!(
                "preparing the Secure Boot chain (Debian packages shim-signed, grub-efi-amd64-signed)"
            );
            bootfiles::fetch_secure_boot(&dir, cache).map_err(|e| offline("shim and GRUB", e))?;
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
    check_signed(cfg)
}

/// With `uefi_secure_boot`: shim, GRUB and the kernel each carry a signature (Secure Boot
/// firmware refuses shim otherwise, shim GRUB, GRUB the kernel; all silently for the
/// admin). Whether the signer is trusted is the client's business.
pub fn check_signed(cfg: &Config) -> Result<()> {
    let dir = cfg.boot_dir();
    let unsigned: Vec<String> = unsigned_chain(cfg)
        .iter()
        .map(|rel| dir.join(rel).display().to_string())
        .collect();
    anyhow::ensure!(
        unsigned.is_empty(),
        "[boot] uefi_secure_boot is on, but {} carries no Secure Boot signature: Secure Boot \
         clients would refuse it. Serve Debian's signed files (shim-signed, \
         grub-efi-amd64-signed, and the kernel linux-image-amd64 depends on: delete a file to \
         have `ignite server` make it again) or turn uefi_secure_boot off",
        unsigned.join(", ")
    );
    Ok(())
}

fn kernel_release(kernel: &PathBuf) -> Result<String> {
    let bytes =
        std::fs::read(kernel).with_context(|| format!("cannot read {}", kernel.display()))?;
    bootfiles::kernel_release(&bytes).with_context(|| format!("{}", kernel.display()))
}

/// With `uefi_secure_boot`, the files of the signed chain (shim, GRUB, the kernel) that are
/// not signed PE images.
fn unsigned_chain(cfg: &Config) -> Vec<&str> {
    if !cfg.boot.uefi_secure_boot {
        return Vec::new();
    }
    let dir = cfg.boot_dir();
    [SHIM_X64, GRUB_X64, cfg.boot.kernel.as_str()]
        .into_iter()
        .filter(|rel| pe::file_signature(&dir.join(rel)) != PeSignature::Signed)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Secure Boot configuration on a boot directory holding `files` (name, signed).
    fn secure(dir: &Path, files: &[(&str, bool)]) -> Config {
        for (name, signed) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, pe::test_image(*signed)).unwrap();
        }
        let mut cfg = Config {
            boot_dir: Some(dir.to_path_buf()),
            ..Config::default()
        };
        cfg.boot.uefi_secure_boot = true;
        cfg
    }

    #[test]
    fn secure_boot_lists_shim_and_grub_instead_of_ipxe() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = secure(dir.path(), &[]);
        let rels: Vec<String> = boot_files(&cfg).into_iter().map(|f| f.rel).collect();
        assert_eq!(
            rels,
            [
                "undionly.kpxe",
                "shimx64.efi",
                "grubx64.efi",
                "ipxe-arm64.efi",
                "debian/vmlinuz",
                "ignite/initrd.img"
            ]
        );
        let listing = listing(&cfg);
        assert!(
            listing.contains("shimx64.efi") && listing.contains("shim-signed"),
            "{listing}"
        );
        let plain: Vec<String> = boot_files(&Config::default())
            .into_iter()
            .map(|f| f.rel)
            .collect();
        assert!(
            plain.contains(&"ipxe.efi".to_string()) && !plain.contains(&"shimx64.efi".to_string())
        );
    }

    #[test]
    fn an_unsigned_file_in_the_secure_boot_chain_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = secure(
            dir.path(),
            &[
                ("shimx64.efi", true),
                ("grubx64.efi", true),
                ("debian/vmlinuz", false),
            ],
        );
        let e = format!("{:#}", check_signed(&cfg).unwrap_err());
        assert!(
            e.contains("debian/vmlinuz carries no Secure Boot signature") && !e.contains("shimx64"),
            "{e}"
        );
        assert!(listing(&cfg).contains("NOT SIGNED"), "{}", listing(&cfg));
        let cfg = secure(dir.path(), &[("debian/vmlinuz", true)]);
        check_signed(&cfg).unwrap();
        assert!(!listing(&cfg).contains("NOT SIGNED"));
        // Without Secure Boot nothing need be signed.
        let mut off = cfg.clone();
        off.boot.uefi_secure_boot = false;
        std::fs::write(dir.path().join("debian/vmlinuz"), b"MZ").unwrap();
        check_signed(&off).unwrap();
    }
}
