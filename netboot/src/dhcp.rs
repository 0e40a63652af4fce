//! DHCPv4 server (pools, reservations, persisted leases, relays) and proxyDHCP, with the PXE
//! answers of [`crate::boot`].
//!
//! [`DhcpEngine::handle`] is the whole protocol as a synchronous function from one request
//! packet to at most one reply; [`run`] only moves packets between sockets and the engine.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::boot::{boot_target, BootEvent, BootFiles, BootProvider, BootTarget, ClientMap};
use crate::error::{Error, Result};
use crate::iface::udp_socket;
use crate::leases::LeaseStore;
use crate::pxe::{classify, Firmware, PxeClient};
use crate::MacAddr;

/// BOOTP minimum: the Linux in-kernel DHCP client and some ROMs ignore shorter replies.
pub const MIN_REPLY_LEN: usize = 300;
/// How long an offered address is held for the client it was offered to.
const OFFER_HOLD_SECS: u64 = 30;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
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
        Ok(())
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
pub enum Drop {
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
}

/// Parses and sanity-checks a client packet. Everything a hostile packet can do ends here.
pub fn parse_request(bytes: &[u8]) -> std::result::Result<Message, Drop> {
    if bytes.len() < 240 {
        return Err(Drop::Truncated(bytes.len()));
    }
    if bytes[236..240] != MAGIC {
        return Err(Drop::NoMagic);
    }
    let msg = Message::from_bytes(bytes).map_err(|e| Drop::Undecodable(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(Drop::NotRequest);
    }
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(Drop::NotEthernet);
    }
    if msg.opts().get(OptionCode::OptionOverload).is_some() {
        return Err(Drop::Overload);
    }
    match msg.opts().msg_type() {
        Some(
            MessageType::Discover
            | MessageType::Request
            | MessageType::Decline
            | MessageType::Release
            | MessageType::Inform,
        ) => Ok(msg),
        _ => Err(Drop::NoMessageType),
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

pub struct DhcpEngine {
    cfg: DhcpConfig,
    leases: Option<LeaseStore>,
    reserved_by_mac: HashMap<MacAddr, Reservation>,
    reserved_ips: HashSet<Ipv4Addr>,
    offers: HashMap<Ipv4Addr, (MacAddr, u64)>,
    cursor: u32,
    provider: Arc<dyn BootProvider>,
    clients: Arc<ClientMap>,
}

impl DhcpEngine {
    /// `leases` may be `None` only in proxy mode.
    pub fn new(
        cfg: DhcpConfig,
        leases: Option<LeaseStore>,
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
            for lease in l.all() {
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
            offers: HashMap::new(),
            cursor,
            provider,
            clients,
        })
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    pub fn leases(&self) -> Option<&LeaseStore> {
        self.leases.as_ref()
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
        let r = if self.cfg.proxy() || port == Port::Pxe {
            self.handle_proxy(&req, mac, src, port)
        } else {
            self.handle_full(&req, mac, now)
        };
        match r {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("DHCP request from {mac}: {e}");
                None
            }
        }
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.cfg
            .pool
            .is_some_and(|(f, l)| (u32::from(f)..=u32::from(l)).contains(&u32::from(ip)))
    }

    fn can_have(&self, ip: Ipv4Addr, mac: MacAddr, now: u64, prefer_unused: bool) -> bool {
        if let Some(r) = self.reserved_by_mac.get(&mac) {
            return r.ip == ip;
        }
        if !self.in_pool(ip) || self.reserved_ips.contains(&ip) {
            return false;
        }
        if let Some((m, until)) = self.offers.get(&ip) {
            if *m != mac && *until > now {
                return false;
            }
        }
        self.leases
            .as_ref()
            .is_some_and(|l| l.available(ip, mac, now, prefer_unused))
    }

    /// Address to offer: the reservation, the client's previous address, the one it asks
    /// for, then the next free one (never-used addresses first, then expired ones).
    fn choose(&mut self, mac: MacAddr, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        if let Some(r) = self.reserved_by_mac.get(&mac) {
            return Some(r.ip);
        }
        let prev = self.leases.as_ref().and_then(|l| l.ip_of(mac));
        // A client that DISCOVERs again before REQUESTing gets the same offer.
        let offered = self
            .offers
            .iter()
            .find(|(_, (m, _))| *m == mac)
            .map(|(ip, _)| *ip);
        for ip in offered.into_iter().chain(prev).chain(requested) {
            if self.can_have(ip, mac, now, false) {
                return Some(ip);
            }
        }
        let (first, last) = self.cfg.pool?;
        let (first, last) = (u32::from(first), u32::from(last));
        let size = last - first + 1;
        for prefer_unused in [true, false] {
            for i in 0..size {
                let ip = first + (self.cursor.wrapping_sub(first).wrapping_add(i)) % size;
                let ip = Ipv4Addr::from(ip);
                if self.can_have(ip, mac, now, prefer_unused) {
                    self.cursor = u32::from(ip).wrapping_add(1);
                    return Some(ip);
                }
            }
        }
        None
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
        let c = &self.cfg;
        let o = m.opts_mut();
        if with_lease {
            o.insert(DhcpOption::AddressLeaseTime(c.lease_secs));
            o.insert(DhcpOption::Renewal(c.lease_secs / 2));
            o.insert(DhcpOption::Rebinding(c.lease_secs / 8 * 7));
        }
        o.insert(DhcpOption::SubnetMask(c.subnet_mask));
        if let Some(r) = c.router {
            o.insert(DhcpOption::Router(vec![r]));
        }
        if !c.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(c.dns.clone()));
        }
        if let Some(d) = &c.domain {
            o.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Some(h) = self
            .reserved_by_mac
            .get(&mac)
            .and_then(|r| r.hostname.clone())
        {
            o.insert(DhcpOption::Hostname(h));
        }
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
        let Some(target) = boot_target(&client, mac, &self.cfg.files, &self.cfg.http_base) else {
            tracing::info!(
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
        self.offers.retain(|_, (_, until)| *until > now);
        match kind {
            Some(MessageType::Discover) => {
                let Some(ip) = self.choose(mac, requested, now) else {
                    tracing::warn!(
                        "DHCP pool exhausted: no address for {mac}; enlarge --dhcp-range"
                    );
                    return Ok(None);
                };
                self.offers.insert(ip, (mac, now + OFFER_HOLD_SECS));
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
                        self.offers.retain(|_, (m, _)| *m != mac);
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
                if !self.can_have(ip, mac, now, false) {
                    return Ok(Some(self.nak(
                        req,
                        mac,
                        &format!("{ip} is not available for this client"),
                    )));
                }
                let expires = now + u64::from(self.cfg.lease_secs);
                if let Some(l) = self.leases.as_mut() {
                    l.bind(ip, mac, expires, hostname)?;
                }
                self.offers.remove(&ip);
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
                if let Some(l) = self.leases.as_mut() {
                    if l.release(ip, mac, now)? {
                        self.clients.remove(ip);
                        tracing::info!("DHCP release of {ip} by {mac}");
                    }
                }
                Ok(None)
            }
            Some(MessageType::Decline) => {
                if let (Some(ip), Some(l)) = (requested, self.leases.as_mut()) {
                    if l.decline(ip, mac, now + u64::from(self.cfg.lease_secs))? {
                        self.clients.remove(ip);
                        tracing::warn!(
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
        tracing::info!("DHCP NAK to {mac}: {why}");
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
        if let Some(ip) = ip {
            // Lets TFTP and HTTP logs name the client even though another server leased it.
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

/// Serves until `shutdown` turns true.
pub async fn run(
    engine: DhcpEngine,
    sockets: Vec<(UdpSocket, Port)>,
    shutdown: watch::Receiver<bool>,
) {
    let engine = Arc::new(Mutex::new(engine));
    let mut tasks = Vec::new();
    for (sock, port) in sockets {
        let engine = engine.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, src) = tokio::select! {
                    r = sock.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("DHCP receive: {e}");
                            continue;
                        }
                    },
                    _ = shutdown.changed() => break,
                };
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
                let reply = match engine.lock() {
                    Ok(mut e) => e.handle(&buf[..n], src, port, unix_now()),
                    Err(_) => break,
                };
                if let Some(r) = reply {
                    let out = encode_reply(&r.msg);
                    if out.is_empty() {
                        continue;
                    }
                    if let Err(e) = sock.send_to(&out, r.to).await {
                        tracing::warn!("DHCP reply to {}: {e}", r.to);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests;
