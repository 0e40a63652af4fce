//! What defines a guest: memory, CPUs, disks and their bus, NICs, boot source, engine.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// AVIO (paravirtual: virtio-blk / virtio-net) or VIO (emulated: IDE / NE2000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    Avio,
    Vio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    Bundled,
    Qemu,
    Auto,
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            EngineChoice::Bundled => "bundled",
            EngineChoice::Qemu => "qemu",
            EngineChoice::Auto => "auto",
        })
    }
}

/// The engine that actually runs a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Bundled,
    Qemu,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Bundled => "bundled",
            Engine::Qemu => "qemu",
        })
    }
}

/// The firmware a guest boots with: SeaBIOS (both engines) or OVMF (UEFI; QEMU only, on a
/// q35 machine with the guest's own variable store beside its disks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "from")]
pub enum Boot {
    /// Network boot (PXE-style) on the first NIC.
    Net,
    /// The first disk: its ext4 /boot on the bundled monitor, its boot loader under QEMU.
    Disk,
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
    },
}

impl Boot {
    /// `net`, `disk` or `kernel=PATH[,initrd=PATH][,cmdline=...]` (cmdline last: it may hold
    /// commas). Paths are made absolute and must exist.
    pub fn parse(s: &str) -> Result<Boot> {
        let usage = "use --boot net, --boot disk or --boot kernel=PATH[,initrd=PATH][,cmdline=...]";
        match s {
            "net" => return Ok(Boot::Net),
            "disk" => return Ok(Boot::Disk),
            _ => {}
        }
        let Some(rest) = s.strip_prefix("kernel=") else {
            bail!("boot {s:?} is not a boot source; {usage}");
        };
        let (files, cmdline) = match rest.split_once(",cmdline=") {
            Some((f, c)) => (f, Some(c.to_owned())),
            None => (rest, None),
        };
        let mut parts = files.split(',');
        let kernel = existing_file("kernel", parts.next().unwrap_or(""))?;
        let mut initrd = None;
        for p in parts {
            match p.strip_prefix("initrd=") {
                Some(i) => initrd = Some(existing_file("initrd", i)?),
                None => bail!("boot {s:?}: unknown option {p:?}; {usage}"),
            }
        }
        Ok(Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        })
    }
}

impl std::fmt::Display for Boot {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Boot::Net => write!(f, "net"),
            Boot::Disk => write!(f, "disk"),
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                write!(f, "kernel={}", kernel.display())?;
                if let Some(i) = initrd {
                    write!(f, ",initrd={}", i.display())?;
                }
                if let Some(c) = cmdline {
                    write!(f, ",cmdline={c}")?;
                }
                Ok(())
            }
        }
    }
}

fn existing_file(what: &str, p: &str) -> Result<PathBuf> {
    if p.is_empty() {
        bail!("{what}: empty path; give the path of the {what} file");
    }
    let path = std::fs::canonicalize(p)
        .with_context(|| format!("{what} {p}: no such file; give an existing {what} file"))?;
    if !path.is_file() {
        bail!("{what} {p}: not a regular file");
    }
    Ok(path)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub path: PathBuf,
    /// Created by `create` in the guest's directory (removed with the guest unless
    /// `--keep-disks`), as opposed to an existing image the user named.
    pub owned: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub bridge: String,
    pub mac: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub mem: u64,
    pub cpus: u8,
    pub disks: Vec<Disk>,
    pub disk_bus: Bus,
    pub nics: Vec<Nic>,
    pub net_model: Bus,
    pub boot: Boot,
    pub engine: EngineChoice,
    /// Absent in definitions stored before UEFI guests: BIOS.
    #[serde(default)]
    pub firmware: Firmware,
    /// CD-ROM and tape drives (`crate::media`); absent in older definitions: none.
    #[serde(default)]
    pub drives: Vec<crate::media::Drive>,
}

/// A unicast MAC given by the user, in the lower-case colon form stored.
pub fn normalize_mac(m: &str) -> Result<String> {
    let mac: ignite_netboot::MacAddr = m.parse()?;
    if mac.0[0] & 1 != 0 {
        bail!("MAC {m} is a multicast address; a NIC needs a unicast one (first byte even)");
    }
    Ok(mac.to_string())
}

/// The IDE controller's limit (two channels of two drives).
pub const MAX_VIO_DISKS: usize = 4;

pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        bail!(
            "guest name {name:?} is not valid; use 1 to 32 letters, digits, '-', '_' or '.', \
             not starting with '.' or '-'"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sources() {
        assert_eq!(Boot::parse("net").unwrap(), Boot::Net);
        assert_eq!(Boot::parse("disk").unwrap(), Boot::Disk);
        let exe = std::env::current_exe().unwrap();
        let s = format!(
            "kernel={},initrd={},cmdline=console=ttyS0,115200 x=1",
            exe.display(),
            exe.display()
        );
        let b = Boot::parse(&s).unwrap();
        assert_eq!(b.to_string(), s);
        assert!(Boot::parse("cdrom")
            .unwrap_err()
            .to_string()
            .contains("not a boot source"));
        assert!(Boot::parse("kernel=/no/such")
            .unwrap_err()
            .to_string()
            .contains("no such file"));
        let bad = format!("kernel={},initrdd=x", exe.display());
        assert!(Boot::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("unknown option"));
    }

    #[test]
    fn names() {
        assert!(check_name("web-1.lab_2").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
