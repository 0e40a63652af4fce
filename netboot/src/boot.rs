//! Which client gets which boot files: the one place both TFTP and HTTP (and DHCP's boot-file
//! answer) take per-client boot configuration from.
//!
//! A plan is rendered for the loader that asks: an iPXE script (`ipxe/<mac>`), a pxelinux
//! configuration (`pxelinux.cfg/01-<mac>`), or a GRUB configuration for Secure Boot
//! clients, which boot shim → GRUB (both signed) instead of iPXE (unsigned). Debian's
//! network GRUB (grubnetx64.efi, served as `grubx64.efi` beside `shimx64.efi`, which loads
//! it from there) has the prefix `/grub` and reads `grub/x86_64-efi/grub.cfg` or
//! `grub/grub.cfg` from the TFTP server it came from; both are [`GRUB_NET_CFG`], the same
//! for everyone, which reads the client's own `grub/ignite/<mac>.cfg`.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::pe::PeSignature;
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

/// The signed first stage for Secure Boot clients (Debian's shim-signed), in the boot
/// directory's top level.
pub const SHIM_X64: &str = "shimx64.efi";
/// What shim loads from beside itself: Debian's signed network GRUB (grubnetx64.efi).
pub const GRUB_X64: &str = "grubx64.efi";

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

/// What network GRUB reads first (as `grub/grub.cfg` and `grub/x86_64-efi/grub.cfg`): the
/// client's own configuration, by the MAC address GRUB booted from.
pub const GRUB_NET_CFG: &str = "\
# Ignite: the same for every client; the server writes each client's own under its MAC.
set timeout=0
source $prefix/ignite/${net_default_mac}.cfg
";

/// A word of a GRUB command line: quoted unless plainly safe, since GRUB's script parser
/// gives `$`, quotes, `;`, `{` and the like meanings of their own.
fn grub_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._,:/=+@%-".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// The GRUB configuration for a plan (`grub/ignite/<mac>.cfg`). The kernel gets the plan's
/// command line, as from iPXE, less iPXE's `initrd=` names: GRUB hands the initrds to the
/// kernel itself. Files come over TFTP from the server GRUB was loaded from (`$root`):
/// Debian's GRUB 2.06 speaks HTTP only to port 80.
///
/// `Local` chain-loads the removable-media loader (`/EFI/BOOT/BOOTX64.EFI`) of the first
/// disk that has one, which Ignite's installs make shim on a Secure Boot image: leaving GRUB
/// instead would return success to the firmware, which then opens its boot menu rather
/// than trying the disk.
pub fn grub_config(plan: &BootPlan) -> String {
    let mut s = String::from("# Ignite: this client's plan.\nset timeout=0\n");
    match plan {
        BootPlan::Local => {
            // GRUB's chainloader gives the image the device path of `$root`, not of the
            // file: shim then looks for grubx64.efi there.
            s += "echo 'Ignite: booting from local disk'\n\
                  if search --no-floppy --file --set=root /EFI/BOOT/BOOTX64.EFI; then\n\
                  \tchainloader /EFI/BOOT/BOOTX64.EFI\n\
                  \tboot\n\
                  fi\n\
                  echo 'Ignite: no local disk boots (/EFI/BOOT/BOOTX64.EFI)'\n\
                  exit\n";
        }
        BootPlan::Kernel {
            kernel,
            initrds,
            cmdline,
        } => {
            let abs = |p: &str| grub_word(&format!("/{}", p.trim_start_matches('/')));
            s += "echo 'Ignite: loading kernel'\n";
            s += &format!("linux {}", abs(kernel));
            for w in cmdline.split_whitespace() {
                s += &format!(" {}", grub_word(w));
            }
            s += "\n";
            if !initrds.is_empty() {
                let names: Vec<String> = initrds.iter().map(|i| abs(i)).collect();
                s += &format!(
                    "echo 'Ignite: loading initrd'\ninitrd {}\n",
                    names.join(" ")
                );
            }
            s += "boot\n";
        }
    }
    s
}

/// Per-client virtual files, the same for TFTP and HTTP: `ipxe/<mac>` (and `ipxe/<mac>.ipxe`),
/// `pxelinux.cfg/01-<mac>` and `grub/ignite/<mac>.cfg` for `requester`, with the MAC they
/// belong to; GRUB's first configuration ([`GRUB_NET_CFG`]) belongs to nobody. `None` if
/// `path` is not one of them.
pub fn virtual_file(
    provider: &dyn BootProvider,
    path: &str,
    http_base: &str,
    requester: Option<Ipv4Addr>,
) -> Option<(Option<MacAddr>, String)> {
    let path = path.trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("ipxe/") {
        let mac: MacAddr = rest.trim_end_matches(".ipxe").parse().ok()?;
        let script = ipxe_script(&provider.plan(mac, requester), http_base);
        return Some((Some(mac), script));
    }
    if let Some(rest) = path.strip_prefix("pxelinux.cfg/01-") {
        let mac: MacAddr = rest.parse().ok()?;
        return Some((Some(mac), pxelinux_config(&provider.plan(mac, requester))));
    }
    if let Some(rest) = path.strip_prefix("grub/ignite/") {
        let mac: MacAddr = rest.strip_suffix(".cfg")?.parse().ok()?;
        return Some((Some(mac), grub_config(&provider.plan(mac, requester))));
    }
    if path == "grub/grub.cfg" || path == "grub/x86_64-efi/grub.cfg" {
        return Some((None, GRUB_NET_CFG.to_string()));
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
    /// Per MAC: the unsigned UEFI loader last sent to it whole, and when, until the client
    /// is seen to run it (see [`ClientMap::asked_again`]). At most `cap` entries.
    unsigned: Mutex<HashMap<MacAddr, (String, Instant)>>,
    /// Per MAC: when its boot firmware or loader last asked DHCP for a boot file (see
    /// [`ClientMap::netbooting`]). At most `cap` entries.
    netboots: Mutex<HashMap<MacAddr, Instant>>,
}

/// How long after its firmware or loader asked DHCP for a boot file a client counts as
/// netbooting (for the IPv6 router solicitations it sends meanwhile: [`crate::ra`]).
pub const NETBOOT_WINDOW: Duration = Duration::from_secs(60);

/// How long after an unsigned UEFI loader was sent its client's firmware asking DHCP again
/// counts as a refusal: OVMF moves on to its next boot option within seconds.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(300);

/// The boot log's note for a client whose firmware would not run `file` (see
/// [`ClientMap::asked_again`]): what happened, the likely cause, and the fix.
pub fn refusal_note(mac: MacAddr, file: &str) -> String {
    format!(
        "client {mac} fetched {file}, which carries no Secure Boot signature, then its UEFI \
         firmware asked for a boot file again without running it: Secure Boot most likely \
         refused {file}. Fix: set uefi_secure_boot = true in [boot] of the server's \
         configuration (UEFI clients then boot the signed shim -> GRUB -> kernel), or turn \
         Secure Boot off in the client's firmware"
    )
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
            unsigned: Mutex::new(HashMap::new()),
            netboots: Mutex::new(HashMap::new()),
        }
    }

    /// `mac`'s boot firmware or loader asked DHCP for a boot file just now.
    pub fn firmware_asked(&self, mac: MacAddr) {
        self.firmware_asked_at(mac, Instant::now());
    }

    fn firmware_asked_at(&self, mac: MacAddr, now: Instant) {
        // Each change is one map operation: a panic elsewhere leaves it usable.
        let mut n = self.netboots.lock().unwrap_or_else(|p| p.into_inner());
        if n.len() >= self.cap && !n.contains_key(&mac) {
            n.retain(|_, at| now.saturating_duration_since(*at) < NETBOOT_WINDOW);
            if n.len() >= self.cap {
                return;
            }
        }
        n.insert(mac, now);
    }

    /// Whether `mac`'s firmware or loader asked for a boot file within [`NETBOOT_WINDOW`].
    pub fn netbooting(&self, mac: MacAddr) -> bool {
        self.netbooting_at(mac, Instant::now())
    }

    fn netbooting_at(&self, mac: MacAddr, now: Instant) -> bool {
        let n = self.netboots.lock().unwrap_or_else(|p| p.into_inner());
        n.get(&mac)
            .is_some_and(|at| now.saturating_duration_since(*at) < NETBOOT_WINDOW)
    }

    fn unsigned(&self) -> MutexGuard<'_, HashMap<MacAddr, (String, Instant)>> {
        // Each change is one map operation: a panic elsewhere leaves it usable.
        self.unsigned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Boot file `file` (`sig`: what kind of PE image it is) was sent whole to `ip`.
    pub fn fetched(&self, ip: Ipv4Addr, file: &str, sig: PeSignature) {
        self.fetched_at(ip, file, sig, Instant::now());
    }

    fn fetched_at(&self, ip: Ipv4Addr, file: &str, sig: PeSignature, now: Instant) {
        let Some(mac) = self.mac_of_at(ip, now) else {
            return;
        };
        let mut u = self.unsigned();
        if sig != PeSignature::Unsigned {
            // Whatever ran before fetched what it needed next: it was not refused.
            u.remove(&mac);
            return;
        }
        if u.len() >= self.cap && !u.contains_key(&mac) {
            u.retain(|_, (_, at)| now.saturating_duration_since(*at) < REFUSAL_WINDOW);
            if u.len() >= self.cap {
                return;
            }
        }
        u.insert(mac, (file.to_string(), now));
    }

    /// The unsigned loader `mac` was sent last, not yet seen to run (for tests elsewhere in
    /// the crate, which see transfers end on another thread).
    #[cfg(test)]
    pub(crate) fn pending_unsigned(&self, mac: MacAddr) -> Option<String> {
        self.unsigned().get(&mac).map(|(f, _)| f.clone())
    }

    /// `mac`'s boot firmware or loader (`client`) asked DHCP for a boot file. A loader that
    /// runs asks as itself (iPXE with its user class); UEFI firmware asking again soon
    /// after it was sent an unsigned loader did not run it, which under Secure Boot it
    /// does silently: then the loader's name, for [`refusal_note`].
    pub fn asked_again(&self, mac: MacAddr, client: &PxeClient) -> Option<String> {
        self.asked_again_at(mac, client, Instant::now())
    }

    fn asked_again_at(&self, mac: MacAddr, client: &PxeClient, now: Instant) -> Option<String> {
        let (file, at) = self.unsigned().remove(&mac)?;
        let refused = !client.is_ipxe
            && client.firmware.is_uefi()
            && now.saturating_duration_since(at) < REFUSAL_WINDOW;
        refused.then_some(file)
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
    fn grub_gets_the_plan_with_the_same_command_line() {
        let plan = BootPlan::Kernel {
            kernel: "debian/vmlinuz".into(),
            initrds: vec!["ignite/initrd.img".into(), "/extra.img".into()],
            cmdline: "console=ttyS0,115200  ignite.mac=52:54:00:00:00:01 ignite.token=ab12".into(),
        };
        assert_eq!(
            grub_config(&plan),
            "# Ignite: this client's plan.\nset timeout=0\n\
             echo 'Ignite: loading kernel'\n\
             linux /debian/vmlinuz console=ttyS0,115200 ignite.mac=52:54:00:00:00:01 ignite.token=ab12\n\
             echo 'Ignite: loading initrd'\n\
             initrd /ignite/initrd.img /extra.img\nboot\n"
        );
        // Words GRUB's parser would read otherwise are quoted, quotes included.
        let odd = BootPlan::Kernel {
            kernel: "k".into(),
            initrds: vec![],
            cmdline: "a=$x b;c it's {y}".into(),
        };
        let text = grub_config(&odd);
        assert!(
            text.contains("linux /k 'a=$x' 'b;c' 'it'\\''s' '{y}'\nboot\n"),
            "{text}"
        );
        assert!(!text.contains("initrd"), "{text}");
        let local = grub_config(&BootPlan::Local);
        assert!(
            local.contains(
                "--file --set=root /EFI/BOOT/BOOTX64.EFI; then\n\
                 \tchainloader /EFI/BOOT/BOOTX64.EFI\n\tboot\n"
            ),
            "{local}"
        );
        assert!(local.ends_with("exit\n"), "{local}");
    }

    #[test]
    fn grub_reads_its_first_config_then_the_clients() {
        let plan = BootPlan::Kernel {
            kernel: "debian/vmlinuz".into(),
            initrds: vec![],
            cmdline: "ignite.action=install".into(),
        };
        let p = FixedPlan(plan.clone());
        for first in ["/grub/grub.cfg", "grub/x86_64-efi/grub.cfg"] {
            let (m, s) = virtual_file(&p, first, "http://h", None).unwrap();
            assert_eq!((m, s.as_str()), (None, GRUB_NET_CFG));
        }
        assert!(GRUB_NET_CFG.contains("source $prefix/ignite/${net_default_mac}.cfg\n"));
        // GRUB's ${net_default_mac} has colons; dashes work too.
        for name in [
            "/grub/ignite/52:54:00:00:00:01.cfg",
            "grub/ignite/52-54-00-00-00-01.cfg",
        ] {
            let (m, s) = virtual_file(&p, name, "http://h", None).unwrap();
            assert_eq!((m, s), (Some(mac()), grub_config(&plan)));
        }
        assert!(virtual_file(&p, "grub/ignite/52:54:00:00:00:01", "http://h", None).is_none());
        assert!(virtual_file(&p, "grub/ignite/.cfg", "http://h", None).is_none());
        assert!(virtual_file(&p, "grub/unicode.pf2", "http://h", None).is_none());
    }

    fn uefi(is_ipxe: bool) -> PxeClient {
        client(Firmware::EfiX64, is_ipxe)
    }

    #[test]
    fn firmware_asking_again_after_an_unsigned_loader_was_refused() {
        let m = ClientMap::default();
        let t0 = Instant::now();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        m.insert_at(ip, mac(), t0);
        // Refused: the firmware asks again, as firmware.
        m.fetched_at(ip, "ipxe.efi", PeSignature::Unsigned, t0);
        assert_eq!(
            m.asked_again_at(mac(), &uefi(false), t0 + Duration::from_secs(20)),
            Some("ipxe.efi".to_string())
        );
        assert_eq!(m.asked_again_at(mac(), &uefi(false), t0), None, "said once");
        // Ran: iPXE asks as itself, then the firmware may ask again (a local boot).
        m.fetched_at(ip, "ipxe.efi", PeSignature::Unsigned, t0);
        assert_eq!(m.asked_again_at(mac(), &uefi(true), t0), None);
        assert_eq!(m.asked_again_at(mac(), &uefi(false), t0), None);
        // Signed loaders, and anything fetched after the loader, clear it.
        m.fetched_at(ip, "ipxe.efi", PeSignature::Unsigned, t0);
        m.fetched_at(ip, "debian/vmlinuz", PeSignature::Signed, t0);
        assert_eq!(m.asked_again_at(mac(), &uefi(false), t0), None);
        m.fetched_at(ip, "shimx64.efi", PeSignature::Signed, t0);
        assert_eq!(m.asked_again_at(mac(), &uefi(false), t0), None);
        // BIOS firmware has no Secure Boot; too late is another boot.
        m.fetched_at(ip, "ipxe.efi", PeSignature::Unsigned, t0);
        assert_eq!(
            m.asked_again_at(mac(), &client(Firmware::Bios, false), t0),
            None
        );
        m.fetched_at(ip, "ipxe.efi", PeSignature::Unsigned, t0);
        assert_eq!(
            m.asked_again_at(mac(), &uefi(false), t0 + REFUSAL_WINDOW),
            None
        );
        // Fetches from an address nobody is known to hold are not counted.
        m.fetched_at(
            Ipv4Addr::new(10, 0, 0, 6),
            "x.efi",
            PeSignature::Unsigned,
            t0,
        );
        assert_eq!(m.unsigned().len(), 0);
        let note = refusal_note(mac(), "ipxe.efi");
        assert!(
            note.contains("52:54:00:00:00:01")
                && note.contains("ipxe.efi")
                && note.contains("uefi_secure_boot = true"),
            "{note}"
        );
    }

    #[test]
    fn unsigned_fetches_are_capped() {
        let m = ClientMap::new(10, Duration::from_secs(3600));
        let t0 = Instant::now();
        for n in 0..100u8 {
            let ip = Ipv4Addr::new(10, 0, 1, n);
            m.insert_at(ip, MacAddr([2, 0, 0, 0, 1, n]), t0);
            m.fetched_at(ip, "ipxe.efi", PeSignature::Unsigned, t0);
        }
        assert_eq!(m.unsigned().len(), 10);
        // Once the old ones are past the window, new ones take their places.
        let later = t0 + REFUSAL_WINDOW;
        let ip = Ipv4Addr::new(10, 0, 2, 1);
        let newer = MacAddr([2, 0, 0, 0, 2, 1]);
        m.insert_at(ip, newer, later);
        m.fetched_at(ip, "ipxe.efi", PeSignature::Unsigned, later);
        assert_eq!(m.unsigned().len(), 1);
        assert!(m.asked_again_at(newer, &uefi(false), later).is_some());
    }

    #[test]
    fn netbooting_lasts_a_window_and_is_capped() {
        let m = ClientMap::new(10, Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(!m.netbooting_at(mac(), t0));
        m.firmware_asked_at(mac(), t0);
        assert!(m.netbooting_at(mac(), t0 + NETBOOT_WINDOW / 2));
        assert!(!m.netbooting_at(mac(), t0 + NETBOOT_WINDOW));
        for n in 0..100u8 {
            m.firmware_asked_at(MacAddr([2, 0, 0, 0, 1, n]), t0);
        }
        assert_eq!(m.netboots.lock().unwrap().len(), 10);
        // Once the old ones are past the window, new ones take their places.
        let newer = MacAddr([2, 0, 0, 0, 2, 1]);
        m.firmware_asked_at(newer, t0 + NETBOOT_WINDOW);
        assert!(m.netbooting_at(newer, t0 + NETBOOT_WINDOW));
        assert_eq!(m.netboots.lock().unwrap().len(), 1);
    }

    #[test]
    fn virtual_files_by_mac() {
        let p = FixedPlan(BootPlan::Local);
        let (m, s) = virtual_file(&p, "/ipxe/52-54-00-00-00-01.ipxe", "http://h", None).unwrap();
        assert_eq!(m, Some(mac()));
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
