//! Which client gets which boot files: the one place both TFTP and HTTP (and DHCP's boot-file
//! answer) take per-client boot configuration from.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    /// The plan for this client; unknown clients get the registry's default. `requester`
    /// is the address asking for it: a plan may carry what only the client itself may
    /// have (an install token), which the provider then gives only to the client's address.
    fn plan(&self, mac: MacAddr, requester: Option<Ipv4Addr>) -> BootPlan;

    /// Record a boot step. The default only logs it.
    fn step(&self, ev: &BootEvent) {
        log_step(ev);
    }
}

/// The log line an admin reads to see where a boot stopped. Rate-limited per step kind
/// (a flood of forged requests must not flood the log); what is left out is counted.
pub fn log_step(ev: &BootEvent) {
    let Some(left_out) = crate::lograte::STEPS.check(ev.step, Instant::now()) else {
        return;
    };
    let mac = ev.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
    let ip = ev.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
    let note = match left_out {
        0 => String::new(),
        n => format!(
            " ({n} more {} steps were not logged in the previous {} s)",
            ev.step,
            crate::lograte::WINDOW.as_secs()
        ),
    };
    tracing::info!(target: "ignite::boot", "boot step {} mac={} ip={} {}{note}", ev.step, mac, ip, ev.detail);
}

/// A provider with one plan for everyone; for tests and `ignite netboot` tools.
pub struct FixedPlan(pub BootPlan);

impl BootProvider for FixedPlan {
    fn plan(&self, _mac: MacAddr, _requester: Option<Ipv4Addr>) -> BootPlan {
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
/// and `pxelinux.cfg/01-<mac>`, for `requester`. `None` if `path` is not one of them.
pub fn virtual_file(
    provider: &dyn BootProvider,
    path: &str,
    http_base: &str,
    requester: Option<Ipv4Addr>,
) -> Option<(MacAddr, String)> {
    let path = path.trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("ipxe/") {
        let mac: MacAddr = rest.trim_end_matches(".ipxe").parse().ok()?;
        return Some((mac, ipxe_script(&provider.plan(mac, requester), http_base)));
    }
    if let Some(rest) = path.strip_prefix("pxelinux.cfg/01-") {
        let mac: MacAddr = rest.parse().ok()?;
        return Some((mac, pxelinux_config(&provider.plan(mac, requester))));
    }
    None
}

/// Which MAC holds which address, filled by DHCP so that TFTP and HTTP log lines can name
/// the client. Addresses handed out by another DHCP server (proxy mode) are learnt from the
/// clients' own requests, so the map is bounded: at most `cap` entries (the oldest goes
/// first) and none older than `ttl`.
pub struct ClientMap {
    inner: Mutex<ClientIndex>,
    cap: usize,
    ttl: Duration,
}

#[derive(Default)]
struct ClientIndex {
    /// Address → (MAC, generation of its latest insert, when).
    by_ip: HashMap<Ipv4Addr, (MacAddr, u64, Instant)>,
    /// (generation, address) in insertion order; an entry whose generation is not the
    /// address's latest is stale and skipped.
    order: VecDeque<(u64, Ipv4Addr)>,
    generation: u64,
}

/// Entries a [`ClientMap`] keeps by default: a /16 of clients.
pub const CLIENT_MAP_CAP: usize = 65536;
/// How long a [`ClientMap`] entry lives by default without being renewed.
pub const CLIENT_MAP_TTL: Duration = Duration::from_secs(24 * 3600);

impl Default for ClientMap {
    fn default() -> Self {
        ClientMap::new(CLIENT_MAP_CAP, CLIENT_MAP_TTL)
    }
}

impl ClientMap {
    pub fn new(cap: usize, ttl: Duration) -> ClientMap {
        ClientMap {
            inner: Mutex::new(ClientIndex::default()),
            cap: cap.max(1),
            ttl,
        }
    }

    fn index(&self) -> MutexGuard<'_, ClientIndex> {
        // Every change below leaves the index consistent at each step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, ip: Ipv4Addr, mac: MacAddr) {
        self.insert_at(ip, mac, Instant::now());
    }

    fn insert_at(&self, ip: Ipv4Addr, mac: MacAddr, now: Instant) {
        let mut guard = self.index();
        let x = &mut *guard;
        x.generation += 1;
        x.by_ip.insert(ip, (mac, x.generation, now));
        x.order.push_back((x.generation, ip));
        // Drop what is stale, too old, or over the cap, oldest first.
        while let Some(&(g, front)) = x.order.front() {
            match x.by_ip.get(&front) {
                Some(&(_, lg, at)) if lg == g => {
                    let expired = now.saturating_duration_since(at) >= self.ttl;
                    if !expired && x.by_ip.len() <= self.cap {
                        break;
                    }
                    x.by_ip.remove(&front);
                }
                _ => {}
            }
            x.order.pop_front();
        }
        // Renewals leave stale entries behind the live front; compact when they dominate.
        if x.order.len() > 2 * self.cap {
            let by_ip = &x.by_ip;
            x.order
                .retain(|(g, ip)| by_ip.get(ip).is_some_and(|(_, lg, _)| lg == g));
        }
    }

    pub fn remove(&self, ip: Ipv4Addr) {
        self.index().by_ip.remove(&ip);
    }

    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.mac_of_at(ip, Instant::now())
    }

    /// Entries are pruned on insert; an expired one must not answer meanwhile.
    fn mac_of_at(&self, ip: Ipv4Addr, now: Instant) -> Option<MacAddr> {
        let (mac, _, at) = *self.index().by_ip.get(&ip)?;
        (now.saturating_duration_since(at) < self.ttl).then_some(mac)
    }

    pub fn len(&self) -> usize {
        self.index().by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let (m, s) = virtual_file(&p, "/ipxe/52-54-00-00-00-01.ipxe", "http://h", None).unwrap();
        assert_eq!(m, mac());
        assert!(s.starts_with("#!ipxe"));
        let (_, s) =
            virtual_file(&p, "pxelinux.cfg/01-52-54-00-00-00-01", "http://h", None).unwrap();
        assert!(s.contains("LOCALBOOT"));
        assert!(virtual_file(&p, "ipxe/nonsense", "http://h", None).is_none());
        assert!(virtual_file(&p, "undionly.kpxe", "http://h", None).is_none());
    }

    #[test]
    fn client_map_is_capped_and_forgets_old_entries() {
        let m = ClientMap::new(100, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip = |n: u32| Ipv4Addr::from(0x0a00_0000 + n);
        // Forged addresses by the thousand: the map keeps the newest 100.
        for n in 0..10_000 {
            m.insert_at(ip(n), mac(), t0);
        }
        assert_eq!(m.len(), 100);
        assert_eq!(m.mac_of_at(ip(9_999), t0), Some(mac()));
        assert_eq!(m.mac_of_at(ip(0), t0), None, "the oldest went first");
        // Renewing one address over and over neither grows the map nor loses others.
        for _ in 0..1000 {
            m.insert_at(ip(9_950), mac(), t0);
        }
        assert_eq!(m.len(), 100);
        assert!(
            m.index().order.len() <= 200,
            "stale order entries are compacted"
        );
        assert_eq!(m.mac_of_at(ip(9_901), t0), Some(mac()));
        // Entries past their time answer nothing and are pruned by the next insert.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(m.mac_of_at(ip(9_999), later), None);
        m.insert_at(ip(1), mac(), later);
        assert_eq!(m.len(), 1);
    }
}
