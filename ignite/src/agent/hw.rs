//! What the agent says about the machine's controllers when a disk or NIC does not show up:
//! the PCI storage (class 01) and network (class 02) functions from
//! `/sys/bus/pci/devices/*/{vendor,device,class,driver}`, and which have no driver bound.

use std::path::Path;

/// One PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// `0000:00:04.0`
    pub addr: String,
    pub vendor: u16,
    pub device: u16,
    /// Base class, subclass and programming interface (`0x010802` for NVMe).
    pub class: u32,
    /// The bound driver's name.
    pub driver: Option<String>,
}

impl PciDevice {
    pub fn base_class(&self) -> u8 {
        (self.class >> 16) as u8
    }

    /// What the class says the function is.
    pub fn kind(&self) -> &'static str {
        match self.class >> 8 {
            0x0100 => "SCSI controller",
            0x0101 => "IDE controller",
            0x0104 => "RAID controller",
            0x0106 => "SATA controller",
            0x0107 => "SAS controller",
            0x0108 => "NVMe controller",
            0x0200 => "Ethernet controller",
            c if c >> 8 == 0x01 => "storage controller",
            c if c >> 8 == 0x02 => "network controller",
            _ => "device",
        }
    }

    /// `1000:0060 RAID controller at 0000:00:05.0 (driver megaraid_sas)`.
    pub fn describe(&self) -> String {
        format!(
            "{:04x}:{:04x} {} at {} ({})",
            self.vendor,
            self.device,
            self.kind(),
            self.addr,
            match &self.driver {
                Some(d) => format!("driver {d}"),
                None => "no driver".into(),
            }
        )
    }
}

fn hex_file(p: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(p).ok()?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Every PCI function under `dir` (`/sys/bus/pci/devices`), by address.
pub fn pci_devices(dir: &Path) -> Vec<PciDevice> {
    let mut out: Vec<PciDevice> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            Some(PciDevice {
                addr: e.file_name().to_string_lossy().into_owned(),
                vendor: hex_file(&p.join("vendor"))? as u16,
                device: hex_file(&p.join("device"))? as u16,
                class: hex_file(&p.join("class"))?,
                driver: std::fs::read_link(p.join("driver"))
                    .ok()
                    .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned())),
            })
        })
        .collect();
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    out
}

/// Why no device of PCI base class `class` (0x01 storage, 0x02 network) is usable, in one
/// sentence: the functions of that class without a driver by PCI ID, then all of them.
pub fn diagnose(devices: &[PciDevice], class: u8) -> String {
    let what = if class == 0x01 { "storage" } else { "network" };
    let of: Vec<&PciDevice> = devices.iter().filter(|d| d.base_class() == class).collect();
    if of.is_empty() {
        return format!("the machine shows no PCI {what} controller");
    }
    let missing: Vec<String> = of
        .iter()
        .filter(|d| d.driver.is_none())
        .map(|d| {
            format!(
                "no driver for device PCI ID {:04x}:{:04x} ({} at {})",
                d.vendor,
                d.device,
                d.kind(),
                d.addr
            )
        })
        .collect();
    let seen: Vec<String> = of.iter().map(|d| d.describe()).collect();
    let mut out = String::new();
    if !missing.is_empty() {
        out = format!(
            "{}; the initramfs carries no module for it; ",
            missing.join("; ")
        );
    }
    out + &format!("{what} controllers seen: {}", seen.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_without_a_driver_are_named_by_pci_id() {
        let d = tempfile::tempdir().unwrap();
        let dev = |addr: &str, vendor: &str, device: &str, class: &str, driver: Option<&str>| {
            let p = d.path().join(addr);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(p.join("device"), format!("{device}\n")).unwrap();
            std::fs::write(p.join("class"), format!("{class}\n")).unwrap();
            if let Some(drv) = driver {
                std::os::unix::fs::symlink(
                    format!("../../../bus/pci/drivers/{drv}"),
                    p.join("driver"),
                )
                .unwrap();
            }
        };
        dev("0000:00:00.0", "0x8086", "0x1237", "0x060000", None);
        dev(
            "0000:00:01.1",
            "0x8086",
            "0x7010",
            "0x010180",
            Some("ata_piix"),
        );
        dev("0000:00:05.0", "0x1000", "0x0079", "0x010400", None);
        dev("0000:00:03.0", "0x10ec", "0x8139", "0x020000", None);
        let devs = pci_devices(d.path());
        assert_eq!(devs.len(), 4);
        assert_eq!(
            diagnose(&devs, 0x01),
            "no driver for device PCI ID 1000:0079 (RAID controller at 0000:00:05.0); \
             the initramfs carries no module for it; storage controllers seen: \
             8086:7010 IDE controller at 0000:00:01.1 (driver ata_piix), \
             1000:0079 RAID controller at 0000:00:05.0 (no driver)"
        );
        assert!(diagnose(&devs, 0x02).starts_with(
            "no driver for device PCI ID 10ec:8139 (Ethernet controller at 0000:00:03.0)"
        ));
        assert_eq!(
            diagnose(&devs[..1], 0x01),
            "the machine shows no PCI storage controller"
        );
    }
}
