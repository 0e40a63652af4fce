//! DHCPv4 server (pools, reservations, persisted leases, relays) and proxyDHCP, with the PXE
//! answers of [`crate::boot`].
//!
//! [`DhcpEngine::handle`] is the whole protocol as a synchronous function from one request
//! packet to at most one reply; [`serve`] only moves packets between sockets and the engine,
//! and drops a packet whose handling panics instead of losing the service. What a hostile
//! client can make the engine hold is bounded by [`DhcpLimits`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::v4::{
    DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable, Encodable};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::boot::{
    boot_target, refusal_note, BootEvent, BootFiles, BootProvider, BootTarget, ClientMap,
};
use crate::error::{Error, Result};
use crate::iface::udp_socket;
use crate::leases::LeaseStore;
use crate::lograte::{error_limited, info_limited, warn_limited};
use crate::pxe::{classify, Firmware, PxeClient};
use crate::MacAddr;

mod limits;
pub use limits::{DhcpLimits, RateLimit};

/// BOOTP minimum: the Linux in-kernel DHCP client and some ROMs ignore shorter replies.
pub const MIN_REPLY_LEN: usize = 300;
/// The largest message every DHCP client must accept (RFC 2131 section 2); replies are
/// kept within it whatever the configuration.
pub const MAX_REPLY_LEN: usize = 576;
/// The BOOTP `file` field, which holds the boot file name or URL.
const FILE_FIELD_LEN: usize = 128;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// Addresses for a remote subnet reached through a relay agent (whose giaddr lies in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub mask: Ipv4Addr,
}

/// The addresses and network settings one request is served from: the local pool, or a
/// relay pool.
#[derive(Debug, Clone, Copy)]
struct Scope {
    first: u32,
    last: u32,
    mask: Ipv4Addr,
    router: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Our address on the boot network: server identifier, next-server, URL host.
    pub server_ip: Ipv4Addr,
    /// `None` in proxy mode, where another server hands out addresses.
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    pub reservations: Vec<Reservation>,
    /// Pools for clients behind DHCP relays, chosen by the relay's giaddr.
    pub relay_pools: Vec<RelayPool>,
    pub files: BootFiles,
    /// e.g. `http://10.0.0.1:8080`; iPXE scripts and HTTP boot URLs start with it.
    pub http_base: String,
}

impl DhcpConfig {
    pub fn proxy(&self) -> bool {
        self.pool.is_none()
    }

    /// Checks the pool and reservations against the subnet.
    pub fn validate(&self) -> Result<()> {
        let mask = u32::from(self.subnet_mask);
        let net = u32::from(self.server_ip) & mask;
        if let Some((first, last)) = self.pool {
            let pool_err = |msg: String| Error::Pool { first, last, msg };
            if u32::from(first) > u32::from(last) {
                return Err(pool_err(
                    "the first address is after the last; swap them".into(),
                ));
            }
            for a in [first, last] {
                if u32::from(a) & mask != net {
                    return Err(pool_err(format!(
                        "{a} is outside the server's subnet {}/{}; use addresses of that subnet",
                        Ipv4Addr::from(net),
                        mask.count_ones()
                    )));
                }
            }
            if (u32::from(first)..=u32::from(last)).contains(&u32::from(self.server_ip)) {
                return Err(pool_err(format!(
                    "contains the server's own address {}; start the range after it",
                    self.server_ip
                )));
            }
        }
        for p in &self.relay_pools {
            let m = u32::from(p.mask);
            let err = |msg: String| Error::Pool {
                first: p.first,
                last: p.last,
                msg,
            };
            if u32::from(p.first) > u32::from(p.last)
                || u32::from(p.first) & m != u32::from(p.last) & m
            {
                return Err(err(format!(
                    "a relay pool must run upwards inside one subnet of mask {}",
                    p.mask
                )));
            }
            if u32::from(p.first) & mask == net {
                return Err(err(
                    "is on the server's own subnet; relay pools are for subnets behind a relay"
                        .into(),
                ));
            }
        }
        let mut seen = HashSet::new();
        for r in &self.reservations {
            if !seen.insert(r.ip) {
                return Err(Error::Config(format!(
                    "reservation for {}: address {} is reserved twice; give each MAC its own",
                    r.mac, r.ip
                )));
            }
        }
        if self.lease_secs < 60 {
            return Err(Error::Config(format!(
                "lease time {} s is too short; use at least 60",
                self.lease_secs
            )));
        }
        self.validate_lengths()
    }

    /// Every boot file name or URL a reply may carry (what, name).
    fn boot_names(&self) -> Vec<(&'static str, String)> {
        let f = &self.files;
        let sample_mac = MacAddr([0; 6]);
        vec![
            ("BIOS boot file", f.bios.clone()),
            ("x64 UEFI boot file", f.efi_x64.clone()),
            ("arm64 UEFI boot file", f.efi_arm64.clone()),
            (
                "iPXE script URL",
                crate::boot::script_url(&self.http_base, sample_mac),
            ),
            (
                "x64 HTTP boot URL",
                format!("{}/files/{}", self.http_base, f.efi_x64),
            ),
            (
                "arm64 HTTP boot URL",
                format!("{}/files/{}", self.http_base, f.efi_arm64),
            ),
        ]
    }

    /// Lengths the wire format limits: boot file names and URLs go into the 128-byte
    /// `file` field, and a whole reply must fit the 576 bytes every client accepts.
    fn validate_lengths(&self) -> Result<()> {
        for (what, name) in self.boot_names() {
            if name.len() > FILE_FIELD_LEN {
                return Err(Error::Config(format!(
                    "{what} {name:?} is {} bytes; DHCP carries at most {FILE_FIELD_LEN} \
                     (the BOOTP file field); use a shorter file name or HTTP address",
                    name.len()
                )));
            }
        }
        if let Some(d) = &self.domain {
            if d.is_empty() || d.len() > 253 {
                return Err(Error::Config(format!(
                    "domain name {d:?} must be 1 to 253 bytes long"
                )));
            }
        }
        for r in &self.reservations {
            if let Some(h) = &r.hostname {
                if h.is_empty() || h.len() > 253 {
                    return Err(Error::Config(format!(
                        "reservation for {}: host name {h:?} must be 1 to 253 bytes long",
                        r.mac
                    )));
                }
            }
        }
        let n = self.largest_reply_len();
        if n > MAX_REPLY_LEN {
            return Err(Error::Config(format!(
                "DHCP replies would be up to {n} bytes, more than the {MAX_REPLY_LEN} every \
                 client accepts; list fewer DNS servers or shorten the domain and host names"
            )));
        }
        Ok(())
    }

    /// Lease times, mask, router, DNS, domain and host name, as every reply carries them.
    fn network_options(
        &self,
        o: &mut DhcpOptions,
        mask: Ipv4Addr,
        router: Option<Ipv4Addr>,
        hostname: Option<String>,
        with_lease: bool,
    ) {
        if with_lease {
            o.insert(DhcpOption::AddressLeaseTime(self.lease_secs));
            o.insert(DhcpOption::Renewal(self.lease_secs / 2));
            o.insert(DhcpOption::Rebinding(self.lease_secs / 8 * 7));
        }
        o.insert(DhcpOption::SubnetMask(mask));
        if let Some(r) = router {
            o.insert(DhcpOption::Router(vec![r]));
        }
        if !self.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(self.dns.clone()));
        }
        if let Some(d) = &self.domain {
            o.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Some(h) = hostname {
            o.insert(DhcpOption::Hostname(h));
        }
    }

    /// The encoded size of the largest reply this configuration can produce (an offer to a
    /// UEFI HTTP boot client with the longest boot URL and host name), without option 82,
    /// which a relay adds and strips.
    fn largest_reply_len(&self) -> usize {
        let u = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new(u, u, u, u, &[0; 6]);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(MessageType::Offer));
        o.insert(DhcpOption::ServerIdentifier(self.server_ip));
        let longest_hostname = self
            .reservations
            .iter()
            .filter_map(|r| r.hostname.clone())
            .max_by_key(|h| h.len());
        self.network_options(
            o,
            self.subnet_mask,
            Some(self.server_ip),
            longest_hostname,
            true,
        );
        o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        o.insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
        o.insert(DhcpOption::TFTPServerName(
            self.server_ip.to_string().into_bytes(),
        ));
        let longest = self
            .boot_names()
            .into_iter()
            .map(|(_, n)| n)
            .max_by_key(|n| n.len())
            .unwrap_or_default();
        o.insert(DhcpOption::BootfileName(longest.into_bytes()));
        o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        m.to_vec().map(|v| v.len()).unwrap_or(usize::MAX)
    }
}

/// Which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: DHCP (and proxyDHCP offers).
    Dhcp,
    /// 4011: PXE boot server discovery (proxy mode).
    Pxe,
}

#[derive(Debug)]
pub struct Reply {
    pub msg: Message,
    pub to: SocketAddrV4,
}

/// Why a packet was dropped (logged at debug; hostile input must never do more).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("truncated ({0} bytes, a BOOTP header needs 240)")]
    Truncated(usize),
    #[error("no DHCP magic cookie")]
    NoMagic,
    #[error("undecodable: {0}")]
    Undecodable(String),
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("not an Ethernet hardware address")]
    NotEthernet,
    #[error("uses option overload (52), which we do not accept")]
    Overload,
    #[error("no or unknown DHCP message type")]
    NoMessageType,
    #[error("option {0} has an impossible length")]
    BadOptionLength(u8),
}

/// Options whose length dhcproto 0.15 asserts on instead of returning an error (found by
/// the `dhcp_packet` fuzz target: option 94 with length 2 panicked the decoder), with the
/// lengths they may have.
fn checked_len_ok(code: u8, len: usize) -> Option<bool> {
    Some(match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        151 => len >= 1,
        152..=155 => len == 4,
        _ => return None,
    })
}

/// Walks the raw options (after the 240-byte header) and refuses lengths the decoder cannot
/// take. Split options (RFC 3396) of these fixed-size kinds are refused too.
fn check_options(bytes: &[u8]) -> std::result::Result<(), Dropped> {
    let mut seen = [false; 256];
    let mut i = 240;
    while i < bytes.len() {
        let code = bytes[i];
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let Some(&len) = bytes.get(i + 1) else { break };
                let len = len as usize;
                if let Some(ok) = checked_len_ok(code, len) {
                    if !ok || seen[code as usize] {
                        return Err(Dropped::BadOptionLength(code));
                    }
                }
                seen[code as usize] = true;
                i += 2 + len;
            }
        }
    }
    Ok(())
}

/// Parses and sanity-checks a client packet. Everything a hostile packet can do ends here.
pub fn parse_request(bytes: &[u8]) -> std::result::Result<Message, Dropped> {
    if bytes.len() < 240 {
        return Err(Dropped::Truncated(bytes.len()));
    }
    if bytes[236..240] != MAGIC {
        return Err(Dropped::NoMagic);
    }
    check_options(bytes)?;
    // Defence in depth: should the decoder still panic on some input, drop the packet
    // instead of losing the DHCP service.
    let msg = std::panic::catch_unwind(|| Message::from_bytes(bytes))
        .map_err(|_| Dropped::Undecodable("decoder panicked".into()))?
        .map_err(|e| Dropped::Undecodable(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(Dropped::NotRequest);
    }
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(Dropped::NotEthernet);
    }
    if msg.opts().get(OptionCode::OptionOverload).is_some() {
        return Err(Dropped::Overload);
    }
    match msg.opts().msg_type() {
        Some(
            MessageType::Discover
            | MessageType::Request
            | MessageType::Decline
            | MessageType::Release
            | MessageType::Inform,
        ) => Ok(msg),
        _ => Err(Dropped::NoMessageType),
    }
}

/// Encodes a reply, padded to [`MIN_REPLY_LEN`].
pub fn encode_reply(msg: &Message) -> Vec<u8> {
    // Encoding a message we built ourselves cannot fail short of a bug; an empty packet is
    // then dropped by the sender rather than crashing the server.
    let mut out = msg.to_vec().unwrap_or_default();
    if !out.is_empty() && out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, 0);
    }
    out
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An address offered to `mac` at `at` and held for it until `until`.
#[derive(Debug, Clone, Copy)]
struct Offer {
    mac: MacAddr,
    at: u64,
    until: u64,
}

/// Addresses offered and not yet requested, held for their client for a short while.
/// Indexed by address, by client and by age, so each packet costs O(log n) even with tens
/// of thousands outstanding. `by_mac[m] == ip` exactly when `by_ip[ip].mac == m`.
#[derive(Default)]
struct Offers {
    by_ip: HashMap<Ipv4Addr, Offer>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    /// (offered at, address), oldest first.
    by_age: BTreeSet<(u64, Ipv4Addr)>,
}

impl Offers {
    fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<MacAddr> {
        self.by_ip.get(&ip).filter(|o| o.until > now).map(|o| o.mac)
    }

    fn of(&self, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        let ip = *self.by_mac.get(&mac)?;
        (self.holder(ip, now) == Some(mac)).then_some(ip)
    }

    fn insert(&mut self, ip: Ipv4Addr, mac: MacAddr, now: u64, until: u64) {
        self.remove_mac(mac);
        self.remove_ip(ip);
        self.by_ip.insert(
            ip,
            Offer {
                mac,
                at: now,
                until,
            },
        );
        self.by_mac.insert(mac, ip);
        self.by_age.insert((now, ip));
    }

    fn remove_ip(&mut self, ip: Ipv4Addr) {
        if let Some(o) = self.by_ip.remove(&ip) {
            self.by_age.remove(&(o.at, ip));
            self.by_mac.remove(&o.mac);
        }
    }

    fn remove_mac(&mut self, mac: MacAddr) {
        if let Some(ip) = self.by_mac.get(&mac).copied() {
            self.remove_ip(ip);
        }
    }

    /// Live offers made at or before `before`, oldest first.
    fn made_before(&self, before: u64, now: u64) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.by_age
            .range(..=(before, Ipv4Addr::BROADCAST))
            .map(|(_, ip)| *ip)
            .filter(move |ip| self.holder(*ip, now).is_some())
    }

    /// Drops expired offers: the oldest first, stopping at the first live one.
    fn sweep(&mut self, now: u64) {
        while let Some(&(at, ip)) = self.by_age.first() {
            match self.by_ip.get(&ip) {
                Some(o) if o.at == at && o.until > now => break,
                Some(o) if o.at == at => self.remove_ip(ip),
                // Cannot happen while the indexes agree; never loop on it if it does.
                _ => {
                    self.by_age.pop_first();
                }
            }
        }
    }
}

/// One lease store for all interfaces' engines: a MAC holds one address in the whole
/// server, and an address is never bound twice.
pub type SharedLeases = Arc<Mutex<LeaseStore>>;

pub fn shared(l: LeaseStore) -> SharedLeases {
    Arc::new(Mutex::new(l))
}

fn lock(l: &SharedLeases) -> MutexGuard<'_, LeaseStore> {
    // Every lease change is one SQLite statement plus map updates done after it succeeds;
    // a panic elsewhere while holding the lock leaves the store usable.
    l.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct DhcpEngine {
    cfg: DhcpConfig,
    leases: Option<SharedLeases>,
    reserved_by_mac: HashMap<MacAddr, Reservation>,
    reserved_ips: HashSet<Ipv4Addr>,
    offers: Offers,
    cursor: u32,
    /// Where the request being handled is served from (set by `handle_full`).
    scope: Scope,
    provider: Arc<dyn BootProvider>,
    clients: Arc<ClientMap>,
    limits: DhcpLimits,
    limiter: limits::Limiter,
}

impl DhcpEngine {
    /// `leases` may be `None` only in proxy mode.
    pub fn new(
        cfg: DhcpConfig,
        leases: Option<SharedLeases>,
        provider: Arc<dyn BootProvider>,
        clients: Arc<ClientMap>,
    ) -> Result<DhcpEngine> {
        cfg.validate()?;
        if !cfg.proxy() && leases.is_none() {
            return Err(Error::Config(
                "a DHCP server with an address pool needs a lease database".into(),
            ));
        }
        let reserved_by_mac = cfg
            .reservations
            .iter()
            .map(|r| (r.mac, r.clone()))
            .collect();
        let reserved_ips = cfg.reservations.iter().map(|r| r.ip).collect();
        let cursor = cfg.pool.map(|(f, _)| u32::from(f)).unwrap_or(0);
        if let Some(l) = &leases {
            for lease in lock(l).all() {
                if let (Some(m), true) = (lease.mac, lease.active(unix_now())) {
                    clients.insert(lease.ip, m);
                }
            }
        }
        Ok(DhcpEngine {
            cfg,
            leases,
            reserved_by_mac,
            reserved_ips,
            offers: Offers::default(),
            cursor,
            scope: Scope {
                first: 1,
                last: 0,
                mask: Ipv4Addr::UNSPECIFIED,
                router: None,
            },
            provider,
            clients,
            limiter: limits::Limiter::new(&DhcpLimits::default()),
            limits: DhcpLimits::default(),
        })
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    /// Replaces the default [`DhcpLimits`]; rate-limit state starts afresh.
    pub fn set_limits(&mut self, limits: DhcpLimits) -> Result<()> {
        limits.validate()?;
        self.limiter = limits::Limiter::new(&limits);
        self.limits = limits;
        Ok(())
    }

    /// The lease store, locked (shared with the engines of other interfaces).
    pub fn leases(&self) -> Option<MutexGuard<'_, LeaseStore>> {
        self.leases.as_ref().map(|l| lock(l))
    }

    /// One packet in, at most one reply out. `src` is the UDP source of the packet.
    pub fn handle(
        &mut self,
        bytes: &[u8],
        src: SocketAddrV4,
        port: Port,
        now: u64,
    ) -> Option<Reply> {
        let req = match parse_request(bytes) {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!("DHCP packet from {src} dropped: {why}");
                return None;
            }
        };
        let mac = MacAddr::from_chaddr(req.chaddr())?;
        if let Err(which) = self.limiter.admit(&self.limits, &req, mac, now) {
            warn_limited!(
                "DHCP request over a rate limit",
                "DHCP request from {mac} dropped: over the {which} rate limit"
            );
            return None;
        }
        let r = if self.cfg.proxy() || port == Port::Pxe {
            self.handle_proxy(&req, mac, src, port)
        } else {
            self.handle_full(&req, mac, now)
        };
        match r {
            Ok(r) => r,
            Err(e) => {
                error_limited!("DHCP request failed", "DHCP request from {mac}: {e}");
                None
            }
        }
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.scope.first..=self.scope.last).contains(&u32::from(ip))
    }

    /// The pool for a request: by giaddr for relayed ones, else the local pool.
    fn scope_for(&self, req: &Message) -> Option<Scope> {
        let (first, last) = self.cfg.pool?;
        let local = Scope {
            first: u32::from(first),
            last: u32::from(last),
            mask: self.cfg.subnet_mask,
            router: self.cfg.router,
        };
        let gi = req.giaddr();
        if gi.is_unspecified() {
            return Some(local);
        }
        let same = |a: Ipv4Addr, b: Ipv4Addr, m: Ipv4Addr| {
            u32::from(a) & u32::from(m) == u32::from(b) & u32::from(m)
        };
        if let Some(p) = self
            .cfg
            .relay_pools
            .iter()
            .find(|p| same(gi, p.first, p.mask))
        {
            return Some(Scope {
                first: u32::from(p.first),
                last: u32::from(p.last),
                mask: p.mask,
                router: Some(gi),
            });
        }
        // A relay on our own network.
        same(gi, self.cfg.server_ip, self.cfg.subnet_mask).then_some(local)
    }

    /// Whether `mac` may have `ip` now. An offer to another client stands in the way only
    /// when `offers` is set: a REQUEST takes an address that was merely offered to someone
    /// else (who gets a NAK when it asks), since offers bind nobody.
    fn can_have(
        &self,
        ip: Ipv4Addr,
        mac: MacAddr,
        now: u64,
        prefer_unused: bool,
        offers: bool,
    ) -> bool {
        if let Some(r) = self.reserved_by_mac.get(&mac) {
            return r.ip == ip;
        }
        if !self.in_pool(ip) || self.reserved_ips.contains(&ip) {
            return false;
        }
        if offers && self.offers.holder(ip, now).is_some_and(|m| m != mac) {
            return false;
        }
        self.leases()
            .is_some_and(|l| l.available(ip, mac, now, prefer_unused))
    }

    /// Address to offer: the reservation, the client's previous address, the one it asks
    /// for, then the next free one (never-used addresses first, then expired ones), and when
    /// none is free, the oldest offer nobody REQUESTed within the short hold.
    fn choose(&mut self, mac: MacAddr, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        if let Some(r) = self.reserved_by_mac.get(&mac) {
            return Some(r.ip);
        }
        let prev = self.leases().and_then(|l| l.ip_of(mac));
        // A client that DISCOVERs again before REQUESTing gets the same offer.
        let offered = self.offers.of(mac, now);
        for ip in offered.into_iter().chain(prev).chain(requested) {
            if self.can_have(ip, mac, now, false, true) {
                return Some(ip);
            }
        }
        let (first, last) = (self.scope.first, self.scope.last);
        let size = last - first + 1;
        for prefer_unused in [true, false] {
            for i in 0..size {
                let ip = first + (self.cursor.wrapping_sub(first).wrapping_add(i)) % size;
                let ip = Ipv4Addr::from(ip);
                if self.can_have(ip, mac, now, prefer_unused, true) {
                    self.cursor = u32::from(ip).wrapping_add(1);
                    return Some(ip);
                }
            }
        }
        let before = now.saturating_sub(self.limits.offer_hold_short_secs);
        let ip = self
            .offers
            .made_before(before, now)
            .find(|ip| self.can_have(*ip, mac, now, false, false))?;
        info_limited!(
            "DHCP pool short: unrequested offer given to another client",
            "DHCP pool has no free address: {ip}, offered at least {} s ago and not requested, is offered to {mac} instead",
            self.limits.offer_hold_short_secs
        );
        Some(ip)
    }

    fn reply(&self, req: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> Message {
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            req.chaddr(),
        );
        m.set_opcode(Opcode::BootReply).set_flags(req.flags());
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        if let Some(opt82) = req.opts().get(OptionCode::RelayAgentInformation) {
            o.insert(opt82.clone());
        }
        m
    }

    fn network_options(&self, m: &mut Message, mac: MacAddr, with_lease: bool) {
        let hostname = self
            .reserved_by_mac
            .get(&mac)
            .and_then(|r| r.hostname.clone());
        self.cfg.network_options(
            m.opts_mut(),
            self.scope.mask,
            self.scope.router,
            hostname,
            with_lease,
        );
    }

    /// Adds the PXE answer for boot clients; returns what it told the client.
    fn boot_options(
        &self,
        req: &Message,
        m: &mut Message,
        mac: MacAddr,
        proxy: bool,
    ) -> Option<(PxeClient, BootTarget)> {
        let client = classify(req)?;
        self.clients.firmware_asked(mac);
        if let Some(file) = self.clients.asked_again(mac, &client) {
            self.step(mac, None, "secure-boot", refusal_note(mac, &file));
        }
        let Some(target) = boot_target(&client, mac, &self.cfg.files, &self.cfg.http_base) else {
            info_limited!(
                "DHCP boot client with unknown firmware",
                "boot client {mac} has firmware {} we have no boot loader for; answering without boot file",
                client.firmware.name()
            );
            return None;
        };
        let server = self.cfg.server_ip;
        m.set_siaddr(server)
            .set_sname_str(server.to_string())
            .set_fname_str(target.as_str());
        let wants = |code: u8| {
            matches!(req.opts().get(OptionCode::ParameterRequestList),
                Some(DhcpOption::ParameterRequestList(l)) if l.contains(&OptionCode::from(code)))
        };
        let o = m.opts_mut();
        let class: &[u8] = if client.http_client {
            b"HTTPClient"
        } else {
            b"PXEClient"
        };
        o.insert(DhcpOption::ClassIdentifier(class.to_vec()));
        if let Some(u) = &client.uuid {
            o.insert(DhcpOption::ClientMachineIdentifier(u.clone()));
        }
        if wants(66) {
            o.insert(DhcpOption::TFTPServerName(server.to_string().into_bytes()));
        }
        if wants(67) {
            o.insert(DhcpOption::BootfileName(
                target.as_str().as_bytes().to_vec(),
            ));
        }
        // PXE discovery control 8: "boot the file in this offer, skip boot-server discovery".
        // UEFI firmware in proxy mode instead comes back on port 4011 (as with dnsmasq and
        // pixiecore), and some of it ignores proxy offers that carry option 43.
        if client.firmware == Firmware::Bios || !proxy {
            o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        }
        Some((client, target))
    }

    fn step(&self, mac: MacAddr, ip: Option<Ipv4Addr>, step: &'static str, detail: String) {
        self.provider.step(&BootEvent {
            mac: Some(mac),
            ip,
            step,
            detail,
        });
    }

    fn destination(req: &Message, kind: MessageType) -> SocketAddrV4 {
        if !req.giaddr().is_unspecified() {
            SocketAddrV4::new(req.giaddr(), 67)
        } else if kind != MessageType::Nak && !req.ciaddr().is_unspecified() {
            SocketAddrV4::new(req.ciaddr(), 68)
        } else {
            // An unconfigured client cannot be reached by unicast without writing its ARP
            // entry by hand; broadcast always reaches it.
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        }
    }

    fn handle_full(&mut self, req: &Message, mac: MacAddr, now: u64) -> Result<Option<Reply>> {
        let opts = req.opts();
        let requested = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let hostname = match opts.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.clone()),
            _ => None,
        };
        let kind = opts.msg_type();
        self.offers.sweep(now);
        let Some(scope) = self.scope_for(req) else {
            info_limited!(
                "DHCP relay without a pool",
                "DHCP request from {mac} via relay {} dropped: no pool for that subnet; add a relay range (FIRST-LAST/PREFIX) to --dhcp-range",
                req.giaddr()
            );
            return Ok(None);
        };
        self.scope = scope;
        match kind {
            Some(MessageType::Discover) => {
                let Some(ip) = self.choose(mac, requested, now) else {
                    warn_limited!(
                        "DHCP pool exhausted",
                        "DHCP pool exhausted: no address for {mac}; enlarge --dhcp-range"
                    );
                    return Ok(None);
                };
                let until = now + self.limits.offer_hold_secs;
                self.offers.insert(ip, mac, now, until);
                let mut m = self.reply(req, MessageType::Offer, ip);
                self.network_options(&mut m, mac, true);
                let boot = self.boot_options(req, &mut m, mac, false);
                self.log_boot(mac, ip, "dhcp-offer", boot.as_ref());
                Ok(Some(Reply {
                    to: Self::destination(req, MessageType::Offer),
                    msg: m,
                }))
            }
            Some(MessageType::Request) => {
                if let Some(sid) = server_id {
                    if sid != self.cfg.server_ip {
                        // The client took another server's offer: free ours.
                        self.offers.remove_mac(mac);
                        return Ok(None);
                    }
                }
                // SELECTING / INIT-REBOOT name the address in option 50; RENEWING and
                // REBINDING put it in ciaddr.
                let ip = requested.or(Some(req.ciaddr()).filter(|c| !c.is_unspecified()));
                let Some(ip) = ip else {
                    return Ok(Some(self.nak(req, mac, "no requested address")));
                };
                let ours =
                    self.in_pool(ip) || self.reserved_by_mac.get(&mac).is_some_and(|r| r.ip == ip);
                if !ours && server_id.is_none() {
                    // INIT-REBOOT/REBINDING for an address on some other network: RFC 2131
                    // says NAK only if we know it is wrong for this network; stay silent
                    // when it may belong to another server.
                    let mask = u32::from(self.cfg.subnet_mask);
                    let same_net = u32::from(ip) & mask == u32::from(self.cfg.server_ip) & mask;
                    if !same_net || !req.giaddr().is_unspecified() {
                        return Ok(None);
                    }
                }
                if !self.can_have(ip, mac, now, false, false) {
                    return Ok(Some(self.nak(
                        req,
                        mac,
                        &format!("{ip} is not available for this client"),
                    )));
                }
                let expires = now + u64::from(self.cfg.lease_secs);
                if let Some(mut l) = self.leases() {
                    l.bind(ip, mac, expires, hostname)?;
                }
                self.offers.remove_mac(mac);
                // Offered to someone else: the lease wins; that client's REQUEST gets a NAK.
                self.offers.remove_ip(ip);
                self.clients.insert(ip, mac);
                let mut m = self.reply(req, MessageType::Ack, ip);
                m.set_ciaddr(req.ciaddr());
                self.network_options(&mut m, mac, true);
                let boot = self.boot_options(req, &mut m, mac, false);
                self.log_boot(mac, ip, "dhcp-ack", boot.as_ref());
                Ok(Some(Reply {
                    to: Self::destination(req, MessageType::Ack),
                    msg: m,
                }))
            }
            Some(MessageType::Release) => {
                let ip = req.ciaddr();
                if let Some(mut l) = self.leases() {
                    if l.release(ip, mac, now)? {
                        self.clients.remove(ip);
                        info_limited!("DHCP release", "DHCP release of {ip} by {mac}");
                    }
                }
                Ok(None)
            }
            Some(MessageType::Decline) => {
                if let (Some(ip), Some(mut l)) = (requested, self.leases()) {
                    if l.decline(ip, mac, now + u64::from(self.cfg.lease_secs))? {
                        self.clients.remove(ip);
                        warn_limited!(
                            "DHCP decline",
                            "DHCP decline: {mac} found {ip} already in use; kept out of the pool for {} s",
                            self.cfg.lease_secs
                        );
                    }
                }
                Ok(None)
            }
            Some(MessageType::Inform) => {
                let mut m = self.reply(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
                m.set_ciaddr(req.ciaddr());
                self.network_options(&mut m, mac, false);
                self.boot_options(req, &mut m, mac, false);
                Ok(Some(Reply {
                    to: Self::destination(req, MessageType::Ack),
                    msg: m,
                }))
            }
            _ => Ok(None),
        }
    }

    fn log_boot(
        &self,
        mac: MacAddr,
        ip: Ipv4Addr,
        step: &'static str,
        boot: Option<&(PxeClient, BootTarget)>,
    ) {
        match boot {
            Some((c, t)) => self.step(
                mac,
                Some(ip),
                step,
                format!(
                    "firmware={} ipxe={} boot={}",
                    c.firmware.name(),
                    c.is_ipxe,
                    t.as_str()
                ),
            ),
            None => tracing::debug!("DHCP {step} {ip} to {mac}"),
        }
    }

    fn nak(&self, req: &Message, mac: MacAddr, why: &str) -> Reply {
        info_limited!("DHCP NAK", "DHCP NAK to {mac}: {why}");
        let mut m = self.reply(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED);
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::Message(why.to_string()));
        Reply {
            to: Self::destination(req, MessageType::Nak),
            msg: m,
        }
    }

    /// proxyDHCP: boot information only, never an address.
    fn handle_proxy(
        &mut self,
        req: &Message,
        mac: MacAddr,
        src: SocketAddrV4,
        port: Port,
    ) -> Result<Option<Reply>> {
        let kind = req.opts().msg_type();
        let our_sid = matches!(req.opts().get(OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(ip)) if *ip == self.cfg.server_ip);
        let answer = match (port, kind) {
            (Port::Dhcp, Some(MessageType::Discover)) => MessageType::Offer,
            (Port::Dhcp, Some(MessageType::Request)) if our_sid => MessageType::Ack,
            (Port::Pxe, Some(MessageType::Request | MessageType::Inform)) => MessageType::Ack,
            _ => return Ok(None),
        };
        if classify(req).is_none() {
            tracing::debug!("proxyDHCP: ignoring {mac}, not a PXE client");
            return Ok(None);
        }
        let mut m = self.reply(req, answer, Ipv4Addr::UNSPECIFIED);
        m.set_ciaddr(req.ciaddr());
        let Some(boot) = self.boot_options(req, &mut m, mac, true) else {
            return Ok(None);
        };
        let (step, to) = if port == Port::Pxe {
            // Boot server discovery: answer the sender directly.
            ("proxy-4011-ack", src)
        } else {
            m.set_flags(Flags::default().set_broadcast());
            ("proxy-offer", Self::destination(req, MessageType::Nak))
        };
        let ip = Some(req.ciaddr()).filter(|c| !c.is_unspecified());
        if let Some(ip) = ip.filter(|ip| ip == src.ip()) {
            // Lets TFTP and HTTP logs name the client even though another server leased it;
            // only from a packet that came from that address, and the map is bounded.
            self.clients.insert(ip, mac);
        }
        self.step(
            mac,
            ip,
            step,
            format!(
                "firmware={} ipxe={} boot={}",
                boot.0.firmware.name(),
                boot.0.is_ipxe,
                boot.1.as_str()
            ),
        );
        Ok(Some(Reply { msg: m, to }))
    }
}

/// Binds the DHCP sockets on `iface` (port 67, plus 4011 in proxy mode).
pub fn bind(iface: &str, proxy: bool) -> Result<Vec<(UdpSocket, Port)>> {
    let mut v = vec![(
        udp_socket(
            Some(iface),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
            "DHCP server",
        )?,
        Port::Dhcp,
    )];
    if proxy {
        v.push((
            udp_socket(
                Some(iface),
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4011),
                "PXE boot server",
            )?,
            Port::Pxe,
        ));
    }
    Ok(v)
}

/// How many receive errors in a row end a socket's service (a socket that keeps failing,
/// e.g. its interface is gone, would otherwise spin).
const MAX_RECV_FAILURES: u32 = 1000;

/// Serves until `shutdown` turns true, then returns `Ok`.
///
/// A packet whose handling panics is dropped (and logged) and the service goes on. If a
/// socket's task ends anyway (its socket keeps failing, or a bug outside packet handling),
/// the other sockets are stopped and the error returned: the caller should then take the
/// server down rather than run half a DHCP service.
pub async fn serve(
    engine: DhcpEngine,
    sockets: Vec<(UdpSocket, Port)>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let engine = Arc::new(Mutex::new(engine));
    let mut tasks = tokio::task::JoinSet::new();
    for (sock, port) in sockets {
        let what = match sock.local_addr() {
            Ok(a) => format!("DHCP service on {a}"),
            Err(_) => "DHCP service".to_string(),
        };
        let task = socket_loop(engine.clone(), sock, port, shutdown.clone());
        tasks.spawn(async move { task.await.map_err(|msg| (what, msg)) });
    }
    supervise(tasks).await
}

/// [`serve`], logging the error it may end with.
pub async fn run(
    engine: DhcpEngine,
    sockets: Vec<(UdpSocket, Port)>,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = serve(engine, sockets, shutdown).await {
        tracing::error!("{e}");
    }
}

type SocketTask = std::result::Result<(), (String, String)>;

/// Waits for every socket task; the first to fail (or panic) stops the rest and is returned.
/// Flushes the rate-limited log's counts meanwhile.
async fn supervise(mut tasks: tokio::task::JoinSet<SocketTask>) -> Result<()> {
    let mut flusher = crate::lograte::Flusher::new();
    loop {
        let done = tokio::select! {
            d = tasks.join_next() => d,
            _ = flusher.tick() => continue,
        };
        let failure = match done {
            None => return Ok(()),
            Some(Ok(Ok(()))) => continue,
            Some(Ok(Err((what, msg)))) => Error::Stopped { what, msg },
            Some(Err(e)) => Error::Stopped {
                what: "DHCP service".into(),
                msg: format!(
                    "a socket task {}",
                    if e.is_panic() {
                        "panicked"
                    } else {
                        "was cancelled"
                    }
                ),
            },
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        return Err(failure);
    }
}

async fn socket_loop(
    engine: Arc<Mutex<DhcpEngine>>,
    sock: UdpSocket,
    port: Port,
    mut shutdown: watch::Receiver<bool>,
) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; 4096];
    let mut failures = 0;
    loop {
        let (n, src) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_RECV_FAILURES {
                        return Err(format!("receiving failed {failures} times in a row, last: {e}"));
                    }
                    warn_limited!("DHCP receive failed", "DHCP receive: {e}");
                    continue;
                }
            },
            _ = shutdown.wait_for(|v| *v) => return Ok(()),
        };
        failures = 0;
        let std::net::SocketAddr::V4(src) = src else {
            continue;
        };
        if n == buf.len() {
            tracing::debug!(
                "DHCP packet from {src} dropped: larger than {} bytes",
                buf.len()
            );
            continue;
        }
        if let Some((out, to)) = handle_isolated(&engine, &buf[..n], src, port) {
            if let Err(e) = sock.send_to(&out, to).await {
                warn_limited!("DHCP reply failed", "DHCP reply to {to}: {e}");
            }
        }
    }
}

/// One packet through the engine, encoded. A panic is caught here, inside the lock, so it
/// neither poisons the engine's mutex nor ends the socket's task: the packet is dropped.
fn handle_isolated(
    engine: &Mutex<DhcpEngine>,
    bytes: &[u8],
    src: SocketAddrV4,
    port: Port,
) -> Option<(Vec<u8>, SocketAddrV4)> {
    let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let r = e.handle(bytes, src, port, unix_now())?;
        Some((encode_reply(&r.msg), r.to))
    }));
    match r {
        Ok(r) => r.filter(|(out, _)| !out.is_empty()),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error_limited!(
                "DHCP packet panicked",
                "DHCP packet from {src} dropped: handling it panicked ({why}); this is a bug, please report it"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
