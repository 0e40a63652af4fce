//! `ignite server` configuration: a TOML file whose every field has a default (the built-in
//! lab network), overridden by command-line flags.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ignite_netboot::boot::SHIM_X64;
use ignite_netboot::dhcp::{DhcpConfig, DhcpLimits, RateLimit, RelayPool, Reservation};
use ignite_netboot::http::HttpLimits;
use ignite_netboot::tftp::TftpConfig;
use ignite_netboot::MacAddr;
use serde::Deserialize;

use crate::state::Action;

/// The built-in lab network: a bridge named `ignite0` with 10.77.0.1/24.
pub const LAB_INTERFACE: &str = "ignite0";
pub const LAB_ADDRESS: &str = "10.77.0.1/24";
/// The lab bridge's MAC, fixed: a bridge left to choose takes its lowest port's MAC and
/// changes it as guests' taps join, and a guest that resolved the server before then sends
/// to a MAC the bridge no longer answers to (its connections hang until its ARP entry
/// expires). Locally administered: 02:00 and the four bytes of 10.77.0.1.
pub const LAB_MAC: &str = "02:00:0a:4d:00:01";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Defaults to `<state_dir>/boot`.
    pub boot_dir: Option<PathBuf>,
    /// Install profiles (`<name>.toml`); defaults to `<state_dir>/profiles`.
    pub profiles_dir: Option<PathBuf>,
    /// The archive store installs stream from; defaults to `<state_dir>/store`.
    pub store: Option<PathBuf>,
    /// Memory for chunks shared by concurrent installs.
    pub chunk_cache_mib: u64,
    /// Scheduled captures running at once, at most.
    pub max_captures: usize,
    pub network: Network,
    pub boot: Boot,
    pub install: Install,
    pub limits: Limits,
    #[serde(rename = "reservation")]
    pub reservations: Vec<ReservationCfg>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    pub interface: String,
    /// `FIRST-LAST`; default: .100-.199 of the interface's subnet.
    pub dhcp_range: Option<String>,
    /// Answer boot information only, next to another DHCP server.
    pub proxy_dhcp: bool,
    /// Run no DHCP at all (only TFTP and HTTP).
    pub dhcp: bool,
    pub tftp: bool,
    pub http_port: u16,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: u32,
    /// Largest TFTP block size; default: interface MTU - 32.
    pub tftp_max_blksize: Option<u16>,
    /// Answer netbooting clients' IPv6 router solicitations with "no router here", so
    /// iPXE does not wait ~16 s for one (netboot/src/ra.rs). Off where iPXE must learn
    /// IPv6 from a real router.
    pub answer_router_solicitations: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Boot {
    /// Kernel, initrds and command line for install/recover/capture, relative to boot_dir.
    pub kernel: String,
    pub initrd: Vec<String>,
    pub cmdline: String,
    /// Action for clients not in the registry (until `ignite client default` sets one).
    pub default_action: String,
    pub bios: String,
    pub efi_x64: String,
    pub efi_arm64: String,
    /// x64 UEFI PXE clients get the signed chain (Debian's shim, then its signed network
    /// GRUB, then the kernel with the same command line) instead of `efi_x64` (iPXE, which
    /// nobody signs): what clients with Secure Boot on need. Shim boots with Secure Boot
    /// off too.
    pub uefi_secure_boot: bool,
}

impl Boot {
    /// The file x64 UEFI clients are told to load.
    pub fn efi_x64_served(&self) -> &str {
        if self.uefi_secure_boot {
            SHIM_X64
        } else {
            &self.efi_x64
        }
    }
}

/// How install tokens are handed out (see README "Security model").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Install {
    /// Install clients that are not in the registry when the default action is `install`.
    /// Any machine on the boot network can then install, and so read the golden image.
    pub unregistered: bool,
    /// Hand a client's token only to the address holding its DHCP lease (learnt by our
    /// DHCP server, or in proxy mode from the client's own requests). Turn off only when
    /// another DHCP server, without proxyDHCP, gives the addresses.
    pub require_lease: bool,
    /// A token stops working this long after it was last handed to its client.
    pub token_ttl_secs: u64,
    /// Most installs of unregistered clients scheduled at once.
    pub max_unregistered: usize,
    /// An install whose client fetched the agent and whose agent has not reported this
    /// long after the client's last boot step is marked `failed: agent silent`; 0: never.
    pub agent_silent_secs: u64,
    /// Serve the install and capture API over HTTPS only, on `tls_port`, with a certificate
    /// authority made at first start that agents pin (see `server::tls`).
    pub tls: bool,
    pub tls_port: u16,
}

impl Default for Install {
    fn default() -> Self {
        Install {
            unregistered: false,
            require_lease: true,
            token_ttl_secs: 6 * 3600,
            max_unregistered: 256,
            agent_silent_secs: 300,
            tls: false,
            tls_port: 8443,
        }
    }
}

/// What clients on the boot network can make the server hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open HTTP connections, in all and from one address.
    pub http_connections: usize,
    pub http_connections_per_address: usize,
    /// A request's head must arrive within this (and an idle keep-alive connection is
    /// closed after it).
    pub http_header_timeout_secs: u64,
    /// A request must be read and answered (up to its body's first byte) within this.
    pub http_request_timeout_secs: u64,
    /// A connection on which no byte moves either way for this long is closed.
    pub http_idle_timeout_secs: u64,
    /// TFTP transfers running at once, in all and for one client address.
    pub tftp_transfers: usize,
    pub tftp_transfers_per_client: usize,
    /// Chunk batch requests served at once (the others wait).
    pub chunk_batches: usize,
    /// Boot log rows kept per client MAC and in all.
    pub boot_log_per_client: usize,
    pub boot_log_total: usize,
    /// Bytes of install log kept per install (the rest is dropped, and the log says so).
    pub install_log_bytes: usize,
    /// DHCP requests per client MAC and per relay port (option 82): `BURST/PER_MINUTE`,
    /// or "off".
    pub dhcp_per_mac: String,
    pub dhcp_per_port: String,
    /// How long an offer holds its address, and how long once the pool is short.
    pub dhcp_offer_hold_secs: u64,
    pub dhcp_offer_hold_short_secs: u64,
    /// Bytes of one upload to the management API (a tar for `POST /api/v1/archives/import`);
    /// a larger one is refused (413).
    pub api_upload_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let dhcp = DhcpLimits::default();
        let http = HttpLimits::default();
        // netboot's defaults (the other fields do not matter here).
        let tftp = TftpConfig::new(PathBuf::new(), Ipv4Addr::UNSPECIFIED, None, String::new());
        let rate = |r: Option<RateLimit>| match r {
            Some(r) => format!("{}/{}", r.burst, r.per_minute),
            None => "off".into(),
        };
        Limits {
            http_connections: http.max_connections,
            http_connections_per_address: http.max_per_client,
            http_header_timeout_secs: http.header_timeout.as_secs(),
            http_request_timeout_secs: 120,
            http_idle_timeout_secs: http.idle_timeout.as_secs(),
            tftp_transfers: tftp.max_transfers,
            tftp_transfers_per_client: tftp.max_per_client,
            chunk_batches: 32,
            boot_log_per_client: 500,
            boot_log_total: 200_000,
            install_log_bytes: 4 << 20,
            dhcp_per_mac: rate(dhcp.per_mac),
            dhcp_per_port: rate(dhcp.per_port),
            dhcp_offer_hold_secs: dhcp.offer_hold_secs,
            dhcp_offer_hold_short_secs: dhcp.offer_hold_short_secs,
            // A golden image's tar: generous; the upload is kept on disk until imported.
            api_upload_bytes: 64 << 30,
        }
    }
}

impl Limits {
    /// The DHCP engine's limits, checked.
    pub fn dhcp(&self) -> Result<DhcpLimits> {
        let rate = |name: &str, v: &str| -> Result<Option<RateLimit>> {
            if v.trim() == "off" {
                return Ok(None);
            }
            let parsed = v.split_once('/').and_then(|(b, m)| {
                Some(RateLimit {
                    burst: b.trim().parse().ok()?,
                    per_minute: m.trim().parse().ok()?,
                })
            });
            parsed.map(Some).with_context(|| {
                format!("config [limits] {name} = {v:?} is not BURST/PER_MINUTE (e.g. \"20/60\") or \"off\"")
            })
        };
        let l = DhcpLimits {
            per_mac: rate("dhcp_per_mac", &self.dhcp_per_mac)?,
            per_port: rate("dhcp_per_port", &self.dhcp_per_port)?,
            offer_hold_secs: self.dhcp_offer_hold_secs,
            offer_hold_short_secs: self.dhcp_offer_hold_short_secs,
            ..DhcpLimits::default()
        };
        l.validate().context("config [limits]")?;
        Ok(l)
    }

    pub fn validate(&self) -> Result<()> {
        self.dhcp()?;
        for (name, v) in [
            ("http_connections", self.http_connections),
            (
                "http_connections_per_address",
                self.http_connections_per_address,
            ),
            ("tftp_transfers", self.tftp_transfers),
            ("tftp_transfers_per_client", self.tftp_transfers_per_client),
            ("chunk_batches", self.chunk_batches),
            ("boot_log_per_client", self.boot_log_per_client),
            ("boot_log_total", self.boot_log_total),
            ("install_log_bytes", self.install_log_bytes),
            ("api_upload_bytes", self.api_upload_bytes as usize),
        ] {
            if v == 0 {
                bail!("config [limits] {name} = 0 would refuse everything; give at least 1");
            }
        }
        for (name, v) in [
            ("http_header_timeout_secs", self.http_header_timeout_secs),
            ("http_request_timeout_secs", self.http_request_timeout_secs),
            ("http_idle_timeout_secs", self.http_idle_timeout_secs),
        ] {
            if v == 0 {
                bail!(
                    "config [limits] {name} = 0 would end every request at once; give at least 1"
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationCfg {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/ignite"),
            boot_dir: None,
            profiles_dir: None,
            store: None,
            chunk_cache_mib: 256,
            max_captures: 2,
            network: Network::default(),
            boot: Boot::default(),
            install: Install::default(),
            limits: Limits::default(),
            reservations: Vec::new(),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interface: LAB_INTERFACE.into(),
            dhcp_range: None,
            proxy_dhcp: false,
            dhcp: true,
            tftp: true,
            http_port: 8080,
            router: None,
            dns: Vec::new(),
            domain: None,
            lease_time: 3600,
            tftp_max_blksize: None,
            answer_router_solicitations: true,
        }
    }
}

/// Where the built-in configuration expects the agent initramfs (`ignite server` builds it
/// there when it is missing).
pub const AGENT_INITRD: &str = "ignite/initrd.img";

impl Default for Boot {
    fn default() -> Self {
        Boot {
            kernel: "debian/vmlinuz".into(),
            initrd: vec![AGENT_INITRD.into()],
            cmdline: "console=ttyS0".into(),
            default_action: "local".into(),
            bios: "undionly.kpxe".into(),
            efi_x64: "ipxe.efi".into(),
            efi_arm64: "ipxe-arm64.efi".into(),
            uefi_secure_boot: false,
        }
    }
}

/// Command-line overrides (flags win over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub interface: Option<String>,
    pub dhcp_range: Option<String>,
    pub proxy_dhcp: bool,
    pub boot_dir: Option<PathBuf>,
    pub http_port: Option<u16>,
    pub profiles_dir: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub install_unregistered: bool,
}

impl Config {
    /// The boot network interfaces: `interface` may list several, comma-separated.
    pub fn interfaces(&self) -> Vec<String> {
        self.network
            .interface
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn load(path: Option<&Path>, o: &Overrides) -> Result<Config> {
        let mut c = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("config {}: cannot read it", p.display()))?;
                toml::from_str::<Config>(&text).map_err(|e| {
                    anyhow::anyhow!("config {}: {}", p.display(), e.to_string().trim_end())
                })?
            }
            None => Config::default(),
        };
        if let Some(v) = &o.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &o.interface {
            c.network.interface = v.clone();
        }
        if let Some(v) = &o.dhcp_range {
            c.network.dhcp_range = Some(v.clone());
        }
        if o.proxy_dhcp {
            c.network.proxy_dhcp = true;
        }
        if let Some(v) = &o.boot_dir {
            c.boot_dir = Some(v.clone());
        }
        if let Some(v) = o.http_port {
            c.network.http_port = v;
        }
        if let Some(v) = &o.profiles_dir {
            c.profiles_dir = Some(v.clone());
        }
        if let Some(v) = &o.store {
            c.store = Some(v.clone());
        }
        if o.install_unregistered {
            c.install.unregistered = true;
        }
        c.limits.validate()?;
        if c.install.token_ttl_secs == 0 {
            bail!("config [install] token_ttl_secs = 0 would refuse every install; give e.g. 21600 (6 h)");
        }
        Ok(c)
    }

    pub fn boot_dir(&self) -> PathBuf {
        self.boot_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("boot"))
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.profiles_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("profiles"))
    }

    pub fn store_dir(&self) -> PathBuf {
        self.store
            .clone()
            .unwrap_or_else(|| self.state_dir.join("store"))
    }

    pub fn default_action(&self) -> Result<Action> {
        self.boot.default_action.parse().with_context(|| {
            format!(
                "config [boot] default_action = {:?}",
                self.boot.default_action
            )
        })
    }
}

pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let Some((a, b)) = s.split_once('-') else {
        bail!("DHCP range {s:?} is not FIRST-LAST; use e.g. 10.77.0.100-10.77.0.199");
    };
    let p = |x: &str| {
        x.trim()
            .parse::<Ipv4Addr>()
            .with_context(|| format!("DHCP range {s:?}: {x:?} is not an IPv4 address"))
    };
    Ok((p(a)?, p(b)?))
}

/// What the server runs with once the interface's address is known.
#[derive(Debug)]
pub struct Resolved {
    pub http_base: String,
    pub dhcp: DhcpConfig,
}

/// Settings for interface `iface` with address `server_ip/prefix`. With several interfaces,
/// each takes the `dhcp_range` (comma-separated list) and reservations inside its subnet.
pub fn resolve(c: &Config, iface: &str, server_ip: Ipv4Addr, prefix: u8) -> Result<Resolved> {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let net = u32::from(server_ip) & mask;
    let in_net = |a: Ipv4Addr| u32::from(a) & mask == net;
    let several = c.interfaces().len() > 1;
    // `FIRST-LAST/PREFIX` entries are pools for subnets behind relay agents.
    let (relay, local): (Vec<&str>, Vec<&str>) = c
        .network
        .dhcp_range
        .as_deref()
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .partition(|x| x.contains('/'));
    let ranges = local
        .into_iter()
        .map(parse_range)
        .collect::<Result<Vec<_>>>()?;
    let mut relay_pools = Vec::new();
    for r in relay {
        let (range, p) = r.split_once('/').unwrap_or((r, ""));
        let p: u8 = p
            .parse()
            .ok()
            .filter(|p| (1..=30).contains(p))
            .with_context(|| format!("relay DHCP range {r:?}: the prefix after '/' must be 1-30, e.g. 10.90.0.50-10.90.0.99/24"))?;
        let (first, last) = parse_range(range)?;
        relay_pools.push(RelayPool {
            first,
            last,
            mask: Ipv4Addr::from(u32::MAX << (32 - u32::from(p))),
        });
    }
    let pool = if c.network.proxy_dhcp {
        None
    } else {
        Some(match ranges.iter().find(|(a, _)| in_net(*a)) {
            Some(r) => *r,
            // One interface: its range, even a wrong one, which validation then names.
            None if !ranges.is_empty() && !several => ranges[0],
            None if !ranges.is_empty() => bail!(
                "interface {iface} ({server_ip}/{prefix}): none of the DHCP ranges {:?} is in its subnet; \
                 add one to --dhcp-range",
                c.network.dhcp_range.as_deref().unwrap_or_default()
            ),
            None => {
                let bcast = net | !mask;
                if bcast.saturating_sub(net) < 200 {
                    bail!(
                        "interface {iface} has {server_ip}/{prefix}, too small for the default DHCP range .100-.199; \
                         give one with --dhcp-range FIRST-LAST"
                    );
                }
                (Ipv4Addr::from(net + 100), Ipv4Addr::from(net + 199))
            }
        })
    };
    let mut reservations = Vec::new();
    for r in &c.reservations {
        let mac: MacAddr = r
            .mac
            .parse()
            .with_context(|| format!("config [[reservation]] for {}", r.ip))?;
        if several && !in_net(r.ip) {
            continue;
        }
        reservations.push(Reservation {
            mac,
            ip: r.ip,
            hostname: r.hostname.clone(),
        });
    }
    let http_base = format!("http://{server_ip}:{}", c.network.http_port);
    let dhcp = DhcpConfig {
        server_ip,
        pool,
        subnet_mask: Ipv4Addr::from(mask),
        router: c.network.router,
        dns: c.network.dns.clone(),
        domain: c.network.domain.clone(),
        lease_secs: c.network.lease_time,
        reservations,
        relay_pools,
        files: ignite_netboot::boot::BootFiles {
            bios: c.boot.bios.clone(),
            efi_x64: c.boot.efi_x64_served().to_string(),
            efi_arm64: c.boot.efi_arm64.clone(),
        },
        http_base: http_base.clone(),
    };
    dhcp.validate()?;
    c.default_action()?;
    Ok(Resolved { http_base, dhcp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ignite.toml");
        std::fs::write(
            &p,
            "state_dir = \"/srv/ig\"\n[network]\ninterface = \"br0\"\nhttp_port = 81\n\
             [[reservation]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.1.0.9\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.network.interface, "br0");
        assert_eq!(c.boot_dir(), PathBuf::from("/srv/ig/boot"));
        let o = Overrides {
            interface: Some("eth1".into()),
            http_port: Some(9000),
            proxy_dhcp: true,
            ..Default::default()
        };
        let c = Config::load(Some(&p), &o).unwrap();
        assert_eq!(
            (
                c.network.interface.as_str(),
                c.network.http_port,
                c.network.proxy_dhcp
            ),
            ("eth1", 9000, true)
        );
        let r = resolve(&c, "eth1", "10.1.0.1".parse().unwrap(), 24).unwrap();
        assert!(r.dhcp.pool.is_none());
        assert_eq!(r.http_base, "http://10.1.0.1:9000");
    }

    #[test]
    fn several_interfaces_pick_their_own_range() {
        let o = Overrides {
            interface: Some("br0, br1".into()),
            dhcp_range: Some("10.2.0.50-10.2.0.60,10.1.0.50-10.1.0.60".into()),
            ..Default::default()
        };
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.interfaces(), ["br0", "br1"]);
        let r0 = resolve(&c, "br0", "10.1.0.1".parse().unwrap(), 24).unwrap();
        let r1 = resolve(&c, "br1", "10.2.0.1".parse().unwrap(), 24).unwrap();
        assert_eq!(
            r0.dhcp.pool.unwrap().0,
            "10.1.0.50".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            r1.dhcp.pool.unwrap().0,
            "10.2.0.50".parse::<Ipv4Addr>().unwrap()
        );
        let e = resolve(&c, "br2", "10.3.0.1".parse().unwrap(), 24)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("br2") && e.contains("none of the DHCP ranges"),
            "{e}"
        );
    }

    #[test]
    fn defaults_and_errors() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        let r = resolve(&c, "ignite0", "10.77.0.1".parse().unwrap(), 24).unwrap();
        assert_eq!(
            r.dhcp.pool,
            Some((
                "10.77.0.100".parse().unwrap(),
                "10.77.0.199".parse().unwrap()
            ))
        );
        assert!(resolve(&c, "ignite0", "10.77.0.1".parse().unwrap(), 28)
            .unwrap_err()
            .to_string()
            .contains("--dhcp-range"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[network]\nhttp_prot = 1\n").unwrap();
        let e = Config::load(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("http_prot"), "{e}");
        assert!(parse_range("10.0.0.1")
            .unwrap_err()
            .to_string()
            .contains("FIRST-LAST"));
    }

    #[test]
    fn secure_boot_serves_shim_to_uefi_clients() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let ip = Ipv4Addr::new(10, 77, 0, 1);
        std::fs::write(&p, "[boot]\nuefi_secure_boot = true\n").unwrap();
        let c = Config::load(Some(&p), &Overrides::default()).unwrap();
        let files = resolve(&c, "br0", ip, 24).unwrap().dhcp.files;
        assert_eq!(
            (files.efi_x64.as_str(), files.bios.as_str()),
            ("shimx64.efi", "undionly.kpxe")
        );
        let plain = resolve(&Config::default(), "br0", ip, 24).unwrap();
        assert_eq!(plain.dhcp.files.efi_x64, "ipxe.efi");
    }

    #[test]
    fn limits_and_install_settings_parse_and_nonsense_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            let p = dir.path().join("c.toml");
            std::fs::write(&p, text).unwrap();
            Config::load(Some(&p), &Overrides::default())
        };
        let c = load(
            "[install]\nunregistered = true\ntoken_ttl_secs = 60\n\
             [limits]\ndhcp_per_mac = \"5/30\"\ndhcp_per_port = \"off\"\nchunk_batches = 4\n",
        )
        .unwrap();
        assert!(c.install.unregistered && c.install.require_lease);
        let d = c.limits.dhcp().unwrap();
        assert_eq!(
            d.per_mac,
            Some(RateLimit {
                burst: 5,
                per_minute: 30
            })
        );
        assert_eq!(d.per_port, None);
        assert_eq!(c.limits.chunk_batches, 4);
        // The defaults are netboot's own.
        let d = Config::default().limits.dhcp().unwrap();
        assert_eq!(d, DhcpLimits::default());
        let h = crate::server::serve::http_limits(&Config::default().limits);
        assert_eq!(h, HttpLimits::default());
        for (text, want) in [
            ("[limits]\ndhcp_per_mac = \"fast\"\n", "dhcp_per_mac"),
            ("[limits]\ndhcp_per_port = \"0/10\"\n", "per-port"),
            ("[limits]\nhttp_connections = 0\n", "http_connections"),
            (
                "[limits]\ntftp_transfers_per_client = 0\n",
                "tftp_transfers_per_client",
            ),
            (
                "[limits]\nhttp_header_timeout_secs = 0\n",
                "http_header_timeout_secs",
            ),
            ("[install]\ntoken_ttl_secs = 0\n", "token_ttl_secs"),
        ] {
            let e = format!("{:#}", load(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
        let o = Overrides {
            install_unregistered: true,
            ..Default::default()
        };
        assert!(Config::load(None, &o).unwrap().install.unregistered);
    }
}
