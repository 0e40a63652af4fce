//! Network boot firmware (`--boot net`): before the first vCPU instruction the monitor does
//! what a PXE ROM running iPXE does, on the guest's tap with the guest's MAC. DHCP (with the
//! PXE vendor class, architecture, UUID and the iPXE user class), then the boot file over
//! TFTP or HTTP; an iPXE script is followed (kernel, initrd, command line, chain), an ELF or
//! bzImage is booted as it is. Every step is printed on the VM's console, as a ROM would,
//! and every wait is bounded: failures name the step, the server and the file.

mod dhcp;
pub mod http;
mod link;
pub mod script;
pub mod tftp;
mod url;

pub use dhcp::{parse_dhcp, Client as DhcpClient};

use crate::config::NetConfig;
use crate::error::{Error, Result};
use crate::virtio::tap::Tap;
use link::{Link, Stack};
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use url::{Scheme, Url};

/// What one network boot may load in all (boot file, scripts, kernel and initrds, each
/// counted as it arrives), whatever the guest's RAM: the firmware holds it in host memory.
pub const MAX_TOTAL: usize = 1 << 30;
/// DISCOVER timeouts: four tries over 15 s (a PXE ROM waits 4+8+16+32 s; we need not).
const DISCOVER_WAITS: [u64; 4] = [1, 2, 4, 8];
const REQUEST_WAIT: Duration = Duration::from_secs(4);
/// Scripts may chain to scripts; this many levels at most.
const MAX_CHAIN: usize = 8;

/// What the firmware loaded, for the monitor to boot as with `--kernel`.
pub struct Loaded {
    /// Where the kernel came from (a URL).
    pub name: String,
    pub kernel: Vec<u8>,
    /// All initrds, concatenated (each padded to 4 bytes, as iPXE does).
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
}

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a local buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut _, 8, 0) };
    if n != 8 {
        // Without the syscall: time and pid still differ between boots.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32);
    }
    u64::from_ne_bytes(b)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Console log of the boot steps (also to the monitor's log).
struct Console<'a>(&'a mut dyn Write);

impl Console<'_> {
    fn say(&mut self, line: &str) {
        tracing::info!(target: "ignite_vmm::netboot", "{line}");
        let _ = self.0.write_all(format!("{line}\r\n").as_bytes());
        let _ = self.0.flush();
    }
}

fn fail(step: &str, msg: impl std::fmt::Display) -> Error {
    Error::Netboot(format!("{step}: {msg}"))
}

/// Bytes this boot may still download: MAX_TOTAL or the guest's RAM, whichever is less (a
/// kernel and initrds larger than the RAM cannot boot anyway).
struct Budget {
    total: usize,
    used: usize,
}

impl Budget {
    fn left(&self) -> usize {
        self.total - self.used
    }
}

/// Runs the boot firmware on `net` and returns what to boot. `cmdline` is used for a boot file
/// that is a kernel itself (no script to give one); `mem_bytes` is the guest's RAM, which
/// bounds what is downloaded (see MAX_TOTAL).
pub fn fetch(
    net: &NetConfig,
    cmdline: &str,
    mem_bytes: u64,
    out: &mut dyn Write,
) -> Result<Loaded> {
    let mut con = Console(out);
    let tap = Tap::from_backend(&net.backend)?;
    let mut link = Link::new(tap);
    con.say(&format!(
        "Ignite network boot firmware: net0 {} on tap {}",
        mac_str(net.mac),
        link.tap_name()
    ));
    let client = dhcp::Client::new(net.mac, random_u64() as u32);
    let lease = dhcp(&mut link, &client, &mut con)?;
    let mut stack = Stack::new(link, net.mac, lease.ip, lease.prefix, lease.router);
    let file = lease.boot_file.clone().ok_or_else(|| {
        fail(
            "DHCP",
            format!(
                "the answer from {} names no boot file (option 67 / file); configure the DHCP server's boot file (e.g. dnsmasq dhcp-boot=)",
                lease.server_id
            ),
        )
    })?;
    let first = if file.contains("://") {
        Url::parse(&file).map_err(|e| fail("DHCP boot file", e))?
    } else {
        let server = lease.tftp_server().map_err(|e| fail("DHCP", e))?;
        Url::tftp(server, &file)
    };
    let vars: script::Vars = [
        ("net0/mac", mac_str(net.mac)),
        ("mac", mac_str(net.mac)),
        ("net0/ip", lease.ip.to_string()),
        ("ip", lease.ip.to_string()),
        ("net0/netmask", netmask(lease.prefix).to_string()),
        ("netmask", netmask(lease.prefix).to_string()),
        (
            "net0/gateway",
            lease.router.map(|r| r.to_string()).unwrap_or_default(),
        ),
        (
            "gateway",
            lease.router.map(|r| r.to_string()).unwrap_or_default(),
        ),
        (
            "next-server",
            lease
                .tftp_server()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        ("filename", file.clone()),
        ("platform", "pcbios".into()),
        ("buildarch", "x86_64".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut budget = Budget {
        total: usize::try_from(mem_bytes).map_or(MAX_TOTAL, |m| m.min(MAX_TOTAL)),
        used: 0,
    };
    follow(
        &mut stack,
        first,
        cmdline.to_owned(),
        &vars,
        &mut budget,
        &mut con,
    )
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0))
}

fn dhcp(link: &mut Link, c: &dhcp::Client, con: &mut Console) -> Result<dhcp::Lease> {
    let start = Instant::now();
    let secs = || start.elapsed().as_secs().min(u16::MAX as u64) as u16;
    // Only the first offer is taken, as PXE ROMs do when the offer names a boot file.
    'discover: for (try_no, wait) in DISCOVER_WAITS.iter().enumerate() {
        con.say(&format!(
            "DHCP: DISCOVER (try {} of {})",
            try_no + 1,
            DISCOVER_WAITS.len()
        ));
        link.send(&dhcp::discover(c, secs()));
        let Some(offer) = wait_reply(link, c, Duration::from_secs(*wait), dhcp::Kind::Offer) else {
            continue;
        };
        con.say(&format!(
            "DHCP: OFFER {}/{} from {}{}{}",
            offer.ip,
            offer.prefix,
            offer.server_id,
            offer
                .boot_file
                .as_ref()
                .map(|f| format!(", boot file {f:?}"))
                .unwrap_or_default(),
            if offer.vendor_options {
                ", PXE vendor options (43) ignored"
            } else {
                ""
            }
        ));
        for _ in 0..2 {
            con.say(&format!(
                "DHCP: REQUEST {} from {}",
                offer.ip, offer.server_id
            ));
            link.send(&dhcp::request(c, &offer, secs()));
            match wait_reply(link, c, REQUEST_WAIT, dhcp::Kind::Ack) {
                Some(ack) if ack.kind == dhcp::Kind::Ack => {
                    let mut ack = ack;
                    // Servers may leave boot options out of the ACK when they were in the offer.
                    if ack.boot_file.is_none() {
                        ack.boot_file = offer.boot_file.clone();
                        ack.tftp_server = ack.tftp_server.or(offer.tftp_server.clone());
                    }
                    con.say(&format!(
                        "DHCP: ACK {}/{} gateway {} from {}",
                        ack.ip,
                        ack.prefix,
                        ack.router
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "none".into()),
                        ack.server_id
                    ));
                    return Ok(ack);
                }
                Some(_) => {
                    con.say(&format!(
                        "DHCP: NAK from {}; starting over",
                        offer.server_id
                    ));
                    continue 'discover;
                }
                None => {}
            }
        }
    }
    Err(fail(
        &format!("DHCP on tap {} (MAC {})", link.tap_name(), mac_str(c.mac.0)),
        format!(
            "no usable answer to {} DISCOVERs over {} s; is a DHCP server running on that network (bridge) and willing to answer PXE clients?",
            DISCOVER_WAITS.len(),
            DISCOVER_WAITS.iter().sum::<u64>()
        ),
    ))
}

/// Waits for an OFFER (or an ACK/NAK when `want` is Ack) for our transaction.
fn wait_reply(
    link: &mut Link,
    c: &dhcp::Client,
    wait: Duration,
    want: dhcp::Kind,
) -> Option<dhcp::Lease> {
    let deadline = Instant::now() + wait;
    loop {
        while let Some(frame) = link.recv() {
            if let Some(l) = dhcp::parse_reply(frame, c) {
                let wanted = match want {
                    dhcp::Kind::Offer => l.kind == dhcp::Kind::Offer,
                    _ => l.kind != dhcp::Kind::Offer,
                };
                if wanted {
                    return Some(l);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        link.wait(left);
    }
}

/// The file at `url`, and the URL it finally came from (after HTTP redirects); counted
/// against the budget.
fn download(
    stack: &mut Stack,
    url: &Url,
    budget: &mut Budget,
    con: &mut Console,
) -> Result<(Vec<u8>, Url)> {
    con.say(&format!("{url} ..."));
    let t = Instant::now();
    let limit = budget.left();
    let (data, from) = match url.scheme {
        Scheme::Tftp => tftp::get(stack, url.host, &url.path, limit).map(|d| (d, url.clone())),
        Scheme::Http => http::get(stack, url, limit),
    }
    .map_err(|e| {
        fail(
            "download",
            format!(
                "{e} (one network boot loads at most {} bytes in all: the guest's RAM, and never more than {MAX_TOTAL})",
                budget.total
            ),
        )
    })?;
    budget.used += data.len();
    let via = if from == *url {
        String::new()
    } else {
        format!(" from {from}")
    };
    con.say(&format!(
        "{url} ok{via}: {} bytes in {:.2} s",
        data.len(),
        t.elapsed().as_secs_f64()
    ));
    Ok((data, from))
}

fn is_kernel(d: &[u8]) -> bool {
    d.starts_with(b"\x7fELF") || d.get(0x202..0x206) == Some(b"HdrS")
}

/// Fetches `url` and boots what it is: a kernel directly, a script by following it.
fn follow(
    stack: &mut Stack,
    mut url: Url,
    mut cmdline: String,
    vars: &script::Vars,
    budget: &mut Budget,
    con: &mut Console,
) -> Result<Loaded> {
    for _ in 0..MAX_CHAIN {
        let (data, from) = download(stack, &url, budget, con)?;
        url = from;
        if is_kernel(&data) {
            con.say(&format!("Booting {url} as the kernel"));
            return Ok(Loaded {
                name: url.to_string(),
                kernel: data,
                initrd: None,
                cmdline,
            });
        }
        if !data.starts_with(b"#!ipxe") {
            return Err(fail(
                &format!("boot file {url}"),
                "neither an iPXE script (#!ipxe) nor an ELF or bzImage kernel; the monitor cannot run PXE NBPs (e.g. undionly.kpxe): have the server hand out an iPXE script or a kernel to clients with user class iPXE",
            ));
        }
        let text = String::from_utf8_lossy(&data);
        let outcome = script::interpret(&text, vars, &mut |l| con.say(l))
            .map_err(|e| fail(&format!("iPXE script {url}"), e))?;
        let join = |r: &str| {
            url.join(r)
                .map_err(|e| fail(&format!("iPXE script {url}"), e))
        };
        match outcome {
            script::Outcome::Chain {
                url: next,
                cmdline: c,
            } => {
                url = join(&next)?;
                cmdline = c;
            }
            script::Outcome::Boot {
                kernel,
                initrds,
                cmdline,
            } => {
                let kurl = join(&kernel)?;
                let (kernel, _) = download(stack, &kurl, budget, con)?;
                if !is_kernel(&kernel) {
                    return Err(fail(
                        &format!("kernel {kurl}"),
                        "not an ELF or bzImage kernel; check the script's kernel line",
                    ));
                }
                let mut initrd = None::<Vec<u8>>;
                for i in &initrds {
                    let (d, _) = download(stack, &join(i)?, budget, con)?;
                    let all = initrd.get_or_insert_with(Vec::new);
                    all.resize(all.len().next_multiple_of(4), 0);
                    all.extend_from_slice(&d);
                }
                con.say(&format!("Booting {kurl} with command line {cmdline:?}"));
                return Ok(Loaded {
                    name: kurl.to_string(),
                    kernel,
                    initrd,
                    cmdline,
                });
            }
        }
    }
    Err(fail(
        "iPXE script",
        format!("more than {MAX_CHAIN} chained scripts; is the server chaining in a loop?"),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    /// xorshift: reproducible random input for the parser tests.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
        /// `seed` with a few bytes replaced (from `alphabet`, or any) and cut at random.
        pub fn mutate(&mut self, seed: &[u8], alphabet: Option<&[u8]>) -> Vec<u8> {
            let mut p = seed.to_vec();
            for _ in 0..self.below(8) {
                let j = self.below(p.len());
                p[j] = match alphabet {
                    Some(a) => a[self.below(a.len())],
                    None => self.next() as u8,
                };
            }
            p.truncate(self.below(p.len() + 1));
            p
        }
    }

    #[test]
    fn kernel_detection_and_netmask() {
        assert!(super::is_kernel(b"\x7fELF...."));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(super::is_kernel(&bz));
        assert!(!super::is_kernel(b"#!ipxe\n"));
        assert_eq!(super::netmask(24).to_string(), "255.255.255.0");
        assert_eq!(super::netmask(0).to_string(), "0.0.0.0");
    }
}
