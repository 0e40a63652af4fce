//! Which client gets which boot files: the one place both TFTP and HTTP (and DHCP's boot-file
//! answer) take per-client boot configuration from.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::RwLock;

use crate::pxe::{Firmware, PxeClient};
use crate::MacAddr;

/// What a client should do once its iPXE (or pxelinux) runs. Paths are relative to the boot
/// directory; the renderers turn them into HTTP URLs or TFTP names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPlan {
    /// Boot from the local disk: leave network boot.
    Local,
    /// Load a kernel and initrd(s) with a command line.
    Kernel {
        kernel: String,
        initrds: Vec<String>,
        cmdline: String,
    },
}

/// Something a boot client did, for the per-client boot step log.
#[derive(Debug, Clone)]
pub struct BootEvent {
    pub mac: Option<MacAddr>,
    pub ip: Option<Ipv4Addr>,
    /// Short step name: `dhcp-offer`, `dhcp-ack`, `proxy-offer`, `tftp`, `http`, `script`.
    pub step: &'static str,
    pub detail: String,
}

/// Implemented by the server (the `ignite` binary) from its client registry.
pub trait BootProvider: Send + Sync + 'static {
    /// The plan for this client; unknown clients get the registry's default.
    fn plan(&self, mac: MacAddr) -> BootPlan;

    /// Record a boot step. The default only logs it.
    fn step(&self, ev: &BootEvent) {
        log_step(ev);
    }
}

/// The log line an admin reads to see where a boot stopped.
pub fn log_step(ev: &BootEvent) {
    let mac = ev.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
    let ip = ev.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
    tracing::info!(target: "ignite::boot", "boot step {} mac={} ip={} {}", ev.step, mac, ip, ev.detail);
}

/// A provider with one plan for everyone; for tests and `ignite netboot` tools.
pub struct FixedPlan(pub BootPlan);

impl BootProvider for FixedPlan {
    fn plan(&self, _mac: MacAddr) -> BootPlan {
        self.0.clone()
    }
}

/// Boot loader file names (relative to the boot directory) per firmware.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub bios: String,
    pub efi_x64: String,
    pub efi_arm64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            efi_x64: "ipxe.efi".into(),
            efi_arm64: "ipxe-arm64.efi".into(),
        }
    }
}

/// What DHCP tells a boot client to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    /// A file name on our TFTP server (siaddr).
    Tftp(String),
    /// A URL (iPXE scripts, UEFI HTTP boot).
    Url(String),
}

impl BootTarget {
    pub fn as_str(&self) -> &str {
        match self {
            BootTarget::Tftp(s) | BootTarget::Url(s) => s,
        }
    }
}

/// The URL of a client's iPXE script on our HTTP server.
pub fn script_url(http_base: &str, mac: MacAddr) -> String {
    format!("{http_base}/ipxe/{}", mac.dashed())
}

/// Pick the boot file: iPXE already running gets its script (this breaks the chain-load
/// loop), firmware PXE gets an iPXE binary over TFTP, UEFI HTTP boot gets a URL.
/// `None` for firmware we have no loader for.
pub fn boot_target(
    client: &PxeClient,
    mac: MacAddr,
    files: &BootFiles,
    http_base: &str,
) -> Option<BootTarget> {
    if client.is_ipxe {
        return Some(BootTarget::Url(script_url(http_base, mac)));
    }
    match client.firmware {
        Firmware::Bios => Some(BootTarget::Tftp(files.bios.clone())),
        Firmware::EfiX64 => Some(BootTarget::Tftp(files.efi_x64.clone())),
        Firmware::EfiArm64 => Some(BootTarget::Tftp(files.efi_arm64.clone())),
        Firmware::HttpX64 => Some(BootTarget::Url(format!(
            "{http_base}/files/{}",
            files.efi_x64
        ))),
        Firmware::HttpArm64 => Some(BootTarget::Url(format!(
            "{http_base}/files/{}",
            files.efi_arm64
        ))),
        Firmware::EfiIa32 | Firmware::Other(_) => None,
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// The iPXE script for a plan. Under UEFI the kernel's EFI stub only finds the initrd if the
/// command line names it (`initrd=<iPXE image name>`), so the names are always added.
pub fn ipxe_script(plan: &BootPlan, http_base: &str) -> String {
    match plan {
        // A failure status sends the firmware on to its next boot device, the disk. UEFI
        // firmware treats a boot program that exits with success as "boot done" and opens
        // its boot manager menu instead (EDK2's BDS does).
        BootPlan::Local => "#!ipxe\necho Ignite: booting from local disk\nexit 1\n".to_string(),
        BootPlan::Kernel {
            kernel,
            initrds,
            cmdline,
        } => {
            let mut s = String::from("#!ipxe\necho Ignite: loading kernel\n");
            let mut args: Vec<String> = initrds
                .iter()
                .map(|i| format!("initrd={}", basename(i)))
                .collect();
            if !cmdline.is_empty() {
                args.push(cmdline.clone());
            }
            s += &format!("kernel {http_base}/files/{kernel} {}\n", args.join(" "));
            for i in initrds {
                s += &format!("initrd {http_base}/files/{i}\n");
            }
            s += "boot\n";
            s
        }
    }
}

/// The pxelinux configuration for a plan (served as `pxelinux.cfg/01-<mac>` over TFTP).
pub fn pxelinux_config(plan: &BootPlan) -> String {
    match plan {
        BootPlan::Local => "DEFAULT local\nLABEL local\n  LOCALBOOT 0\n".to_string(),
        BootPlan::Kernel {
            kernel,
            initrds,
            cmdline,
        } => {
            let mut s = format!("DEFAULT ignite\nLABEL ignite\n  KERNEL {kernel}\n");
            if !initrds.is_empty() {
                s += &format!("  INITRD {}\n", initrds.join(","));
            }
            s += &format!("  APPEND {cmdline}\n");
            s
        }
    }
}

/// Per-client virtual files, the same for TFTP and HTTP: `ipxe/<mac>` (and `ipxe/<mac>.ipxe`)
/// and `pxelinux.cfg/01-<mac>`. `None` if `path` is not one of them.
pub fn virtual_file(
    provider: &dyn BootProvider,
    path: &str,
    http_base: &str,
) -> Option<(MacAddr, String)> {
    let path = path.trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("ipxe/") {
        let mac: MacAddr = rest.trim_end_matches(".ipxe").parse().ok()?;
        return Some((mac, ipxe_script(&provider.plan(mac), http_base)));
    }
    if let Some(rest) = path.strip_prefix("pxelinux.cfg/01-") {
        let mac: MacAddr = rest.parse().ok()?;
        return Some((mac, pxelinux_config(&provider.plan(mac))));
    }
    None
}

/// Which MAC holds which address, filled by DHCP so that TFTP and HTTP log lines can name
/// the client. Addresses handed out by another DHCP server (proxy mode) stay unknown.
#[derive(Default)]
pub struct ClientMap {
    by_ip: RwLock<HashMap<Ipv4Addr, MacAddr>>,
}

impl ClientMap {
    pub fn insert(&self, ip: Ipv4Addr, mac: MacAddr) {
        if let Ok(mut m) = self.by_ip.write() {
            m.insert(ip, mac);
        }
    }

    pub fn remove(&self, ip: Ipv4Addr) {
        if let Ok(mut m) = self.by_ip.write() {
            m.remove(&ip);
        }
    }

    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.by_ip.read().ok()?.get(&ip).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        "52:54:00:00:00:01".parse().unwrap()
    }

    fn client(firmware: Firmware, is_ipxe: bool) -> PxeClient {
        PxeClient {
            firmware,
            http_client: matches!(firmware, Firmware::HttpX64 | Firmware::HttpArm64),
            is_ipxe,
            uuid: None,
        }
    }

    #[test]
    fn per_arch_boot_files_and_loop_break() {
        let f = BootFiles::default();
        let base = "http://10.0.0.1:8080";
        let t = |fw, ipxe| boot_target(&client(fw, ipxe), mac(), &f, base);
        assert_eq!(
            t(Firmware::Bios, false),
            Some(BootTarget::Tftp("undionly.kpxe".into()))
        );
        assert_eq!(
            t(Firmware::EfiX64, false),
            Some(BootTarget::Tftp("ipxe.efi".into()))
        );
        assert_eq!(
            t(Firmware::EfiArm64, false),
            Some(BootTarget::Tftp("ipxe-arm64.efi".into()))
        );
        assert_eq!(
            t(Firmware::HttpX64, false),
            Some(BootTarget::Url(
                "http://10.0.0.1:8080/files/ipxe.efi".into()
            ))
        );
        let script = Some(BootTarget::Url(
            "http://10.0.0.1:8080/ipxe/52-54-00-00-00-01".into(),
        ));
        assert_eq!(t(Firmware::Bios, true), script);
        assert_eq!(t(Firmware::EfiX64, true), script);
        assert_eq!(t(Firmware::EfiIa32, false), None);
    }

    #[test]
    fn script_names_initrd_for_efi_stub() {
        let plan = BootPlan::Kernel {
            kernel: "debian/vmlinuz".into(),
            initrds: vec!["debian/initrd.img".into()],
            cmdline: "console=ttyS0".into(),
        };
        let s = ipxe_script(&plan, "http://h:1");
        assert_eq!(
            s,
            "#!ipxe\necho Ignite: loading kernel\n\
             kernel http://h:1/files/debian/vmlinuz initrd=initrd.img console=ttyS0\n\
             initrd http://h:1/files/debian/initrd.img\nboot\n"
        );
        assert!(ipxe_script(&BootPlan::Local, "x").contains("\nexit 1\n"));
        assert!(pxelinux_config(&plan).contains("INITRD debian/initrd.img"));
    }

    #[test]
    fn virtual_files_by_mac() {
        let p = FixedPlan(BootPlan::Local);
        let (m, s) = virtual_file(&p, "/ipxe/52-54-00-00-00-01.ipxe", "http://h").unwrap();
        assert_eq!(m, mac());
        assert!(s.starts_with("#!ipxe"));
        let (_, s) = virtual_file(&p, "pxelinux.cfg/01-52-54-00-00-00-01", "http://h").unwrap();
        assert!(s.contains("LOCALBOOT"));
        assert!(virtual_file(&p, "ipxe/nonsense", "http://h").is_none());
        assert!(virtual_file(&p, "undionly.kpxe", "http://h").is_none());
    }
}
