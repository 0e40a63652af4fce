//! The DHCP half of the boot firmware: DISCOVER and REQUEST as an x64 PXE ROM running iPXE
//! sends them, and reading OFFER/ACK/NAK frames off the wire (untrusted input: every field
//! is checked, nothing is assumed about lengths or encodings).
//!
//! Frames are built and parsed with smoltcp's wire types. The exchange happens before the
//! interface has an address, so it runs on raw Ethernet frames rather than through a socket.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
    UdpRepr,
};
use std::net::Ipv4Addr;

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

/// Vendor class of a BIOS PXE ROM (architecture 0, UNDI 2.1). The monitor boots kernels the
/// way a BIOS-era loader does (Linux boot protocol, zero page, e820 map, no EFI system
/// table), so a server that picks files by architecture must pick BIOS-style ones: a UEFI
/// boot file (shim, grubx64.efi, an EFI-stub-only kernel setup) could not run here.
pub const VENDOR_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
/// Option 93 (RFC 4578): 0 = x86 BIOS.
const CLIENT_ARCH: [u8; 2] = [0, 0];
/// Option 94 (RFC 4578): UNDI, version 2.1.
const CLIENT_NII: [u8; 3] = [1, 2, 1];
/// Option 77 as iPXE sends it (raw, not RFC 3004 framed): servers that break the iPXE
/// chain-load loop answer with the script URL, which the monitor follows itself.
pub const USER_CLASS: &[u8] = b"iPXE";
/// What a PXE ROM asks for (its list, with 66/67 for the boot file).
const PARAMETERS: &[u8] = &[
    1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66,
    67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
];

const OPT_SUBNET_MASK: u8 = 1;
const OPT_VENDOR_SPECIFIC: u8 = 43;
const OPT_VENDOR_CLASS: u8 = 60;
const OPT_TFTP_SERVER: u8 = 66;
const OPT_BOOT_FILE: u8 = 67;
const OPT_USER_CLASS: u8 = 77;
const OPT_CLIENT_ARCH: u8 = 93;
const OPT_CLIENT_NII: u8 = 94;
const OPT_CLIENT_UUID: u8 = 97;

/// Who we are on the wire.
#[derive(Clone, Copy)]
pub struct Client {
    pub mac: EthernetAddress,
    pub xid: u32,
    /// Option 97 body: type 0 and the 16-byte UUID.
    pub uuid: [u8; 17],
}

impl Client {
    pub fn new(mac: [u8; 6], xid: u32) -> Client {
        Client {
            mac: EthernetAddress(mac),
            xid,
            uuid: uuid_option(mac),
        }
    }
}

/// The VM has no SMBIOS UUID; derive a stable one from its MAC (RFC 9562 version 8, "custom":
/// the MAC in the last six bytes), so the server sees the same GUID on every boot.
fn uuid_option(mac: [u8; 6]) -> [u8; 17] {
    let mut u = [0u8; 17];
    u[1..5].copy_from_slice(b"IGNT");
    u[7] = 0x80; // version 8
    u[9] = 0x80; // RFC 9562 variant
    u[11..17].copy_from_slice(&mac);
    u
}

/// What an OFFER or ACK said that the boot needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub kind: Kind,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    /// Option 54: where REQUEST goes.
    pub server_id: Ipv4Addr,
    /// siaddr, the "next server".
    pub next_server: Ipv4Addr,
    /// Option 66 (the TFTP server, by name or address).
    pub tftp_server: Option<String>,
    /// Option 67, else the `file` field.
    pub boot_file: Option<String>,
    /// Option 43 was present (PXE boot menus/discovery control; logged, not followed).
    pub vendor_options: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Ack,
    Nak,
}

fn request_options(c: &Client) -> [DhcpOption<'_>; 5] {
    [
        DhcpOption {
            kind: OPT_VENDOR_CLASS,
            data: VENDOR_CLASS,
        },
        DhcpOption {
            kind: OPT_CLIENT_ARCH,
            data: &CLIENT_ARCH,
        },
        DhcpOption {
            kind: OPT_CLIENT_NII,
            data: &CLIENT_NII,
        },
        DhcpOption {
            kind: OPT_CLIENT_UUID,
            data: &c.uuid,
        },
        DhcpOption {
            kind: OPT_USER_CLASS,
            data: USER_CLASS,
        },
    ]
}

fn message<'a>(c: &Client, extra: &'a [DhcpOption<'a>], secs: u16) -> DhcpRepr<'a> {
    DhcpRepr {
        message_type: DhcpMessageType::Discover,
        transaction_id: c.xid,
        secs,
        client_hardware_address: c.mac,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        // We cannot receive unicast to an address we do not have yet.
        broadcast: true,
        requested_ip: None,
        client_identifier: None,
        server_identifier: None,
        parameter_request_list: Some(PARAMETERS),
        dns_servers: None,
        max_size: Some(1472),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: extra,
    }
}

/// A broadcast DHCPDISCOVER frame.
pub fn discover(c: &Client, secs: u16) -> Vec<u8> {
    let opts = request_options(c);
    frame(c.mac, &message(c, &opts, secs))
}

/// A broadcast DHCPREQUEST frame for `offer`.
pub fn request(c: &Client, offer: &Lease, secs: u16) -> Vec<u8> {
    let opts = request_options(c);
    let mut m = message(c, &opts, secs);
    m.message_type = DhcpMessageType::Request;
    m.requested_ip = Some(offer.ip);
    m.server_identifier = Some(offer.server_id);
    frame(c.mac, &m)
}

fn frame(mac: EthernetAddress, dhcp: &DhcpRepr) -> Vec<u8> {
    let dlen = dhcp.buffer_len();
    let udp = UdpRepr {
        src_port: CLIENT_PORT,
        dst_port: SERVER_PORT,
    };
    let (src, dst) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST);
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + dlen,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + udp.header_len() + dlen];
    let caps = ChecksumCapabilities::default();
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    udp.emit(
        &mut u,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        dlen,
        |b| {
            // The buffer is exactly buffer_len() long, which is all emit needs.
            let _ = dhcp.emit(&mut DhcpPacket::new_unchecked(b));
        },
        &caps,
    );
    buf
}

/// The DHCP reply in an Ethernet frame, if it is one for `c` (our transaction and MAC).
pub fn parse_reply(frame: &[u8], c: &Client) -> Option<Lease> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Udp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.dst_port() != CLIENT_PORT || udp.src_port() != SERVER_PORT {
        return None;
    }
    parse_dhcp(udp.payload(), c)
}

/// The DHCP message itself (UDP payload).
pub fn parse_dhcp(payload: &[u8], c: &Client) -> Option<Lease> {
    let pkt = DhcpPacket::new_checked(payload).ok()?;
    let repr = DhcpRepr::parse(&pkt).ok()?;
    if repr.transaction_id != c.xid || repr.client_hardware_address != c.mac {
        return None;
    }
    let kind = match repr.message_type {
        DhcpMessageType::Offer => Kind::Offer,
        DhcpMessageType::Ack => Kind::Ack,
        DhcpMessageType::Nak => Kind::Nak,
        _ => return None,
    };
    let mut lease = Lease {
        kind,
        ip: repr.your_ip,
        prefix: 24,
        router: repr.router,
        server_id: repr.server_identifier.unwrap_or(Ipv4Addr::UNSPECIFIED),
        next_server: repr.server_ip,
        tftp_server: None,
        boot_file: pkt.get_boot_file().ok().and_then(text),
        vendor_options: false,
    };
    for o in pkt.options() {
        match o.kind {
            OPT_SUBNET_MASK if o.data.len() == 4 => {
                let m = u32::from_be_bytes([o.data[0], o.data[1], o.data[2], o.data[3]]);
                // A mask is contiguous ones; anything else is not one.
                if m.leading_ones() + m.trailing_zeros() == 32 {
                    lease.prefix = m.leading_ones() as u8;
                }
            }
            OPT_TFTP_SERVER => lease.tftp_server = std::str::from_utf8(o.data).ok().and_then(text),
            OPT_BOOT_FILE => {
                if let Some(f) = std::str::from_utf8(o.data).ok().and_then(text) {
                    lease.boot_file = Some(f);
                }
            }
            OPT_VENDOR_SPECIFIC => lease.vendor_options = true,
            _ => {}
        }
    }
    if kind != Kind::Nak && (lease.ip.is_unspecified() || lease.ip.is_broadcast()) {
        return None;
    }
    Some(lease)
}

/// A printable, non-empty string (servers pad with NULs; some send them in options too).
fn text(s: &str) -> Option<String> {
    let s = s.trim_end_matches('\0').trim();
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then(|| s.to_owned())
}

impl Lease {
    /// Where TFTP goes: siaddr (as iPXE and PXE ROMs use it), else option 66 if it is an
    /// address, else the DHCP server. dnsmasq, for one, puts a host name in 66 beside siaddr.
    pub fn tftp_server(&self) -> Result<Ipv4Addr, String> {
        if !self.next_server.is_unspecified() {
            return Ok(self.next_server);
        }
        if let Some(name) = &self.tftp_server {
            return name.parse().map_err(|_| {
                format!("TFTP server name {name:?} (option 66) is not an IPv4 address, the answer has no siaddr, and the boot firmware does no DNS; have the server send an address")
            });
        }
        Ok(self.server_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], 0xdead_beef)
    }

    /// A server reply built from the client's own frame (flipped to BOOTREPLY).
    fn reply(kind: DhcpMessageType, extra: &[DhcpOption]) -> Vec<u8> {
        let c = client();
        let mut m = message(&c, extra, 0);
        m.message_type = kind;
        m.your_ip = Ipv4Addr::new(10, 0, 0, 50);
        m.server_ip = Ipv4Addr::new(10, 0, 0, 2);
        m.server_identifier = Some(Ipv4Addr::new(10, 0, 0, 1));
        m.subnet_mask = Some(Ipv4Addr::new(255, 255, 0, 0));
        m.parameter_request_list = None;
        let mut f = frame(c.mac, &m);
        // Swap the ports: the reply goes server → client.
        let udp = 14 + 20;
        f[udp..udp + 2].copy_from_slice(&SERVER_PORT.to_be_bytes());
        f[udp + 2..udp + 4].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        f
    }

    #[test]
    fn discover_carries_the_pxe_options() {
        let c = client();
        let f = discover(&c, 3);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (68, 67));
        let pkt = DhcpPacket::new_checked(udp.payload()).unwrap();
        let opts: Vec<(u8, Vec<u8>)> = pkt.options().map(|o| (o.kind, o.data.to_vec())).collect();
        let get = |k: u8| {
            opts.iter()
                .find(|(kind, _)| *kind == k)
                .map(|(_, d)| d.clone())
        };
        assert_eq!(get(53).unwrap(), [1]);
        assert_eq!(get(60).unwrap(), VENDOR_CLASS);
        assert_eq!(get(93).unwrap(), [0, 0]);
        assert_eq!(get(94).unwrap(), [1, 2, 1]);
        assert_eq!(get(77).unwrap(), b"iPXE");
        let uuid = get(97).unwrap();
        assert_eq!((uuid.len(), uuid[0]), (17, 0));
        assert_eq!(&uuid[11..], &c.mac.0);
        let prl = get(55).unwrap();
        for k in [1, 3, 43, 60, 66, 67] {
            assert!(prl.contains(&k), "{k}");
        }
        assert!(pkt.flags().contains(smoltcp::wire::DhcpFlags::BROADCAST));
    }

    #[test]
    fn offer_with_boot_file_and_tftp_server() {
        let f = reply(
            DhcpMessageType::Offer,
            &[
                DhcpOption {
                    kind: 66,
                    data: b"10.0.0.9",
                },
                DhcpOption {
                    kind: 67,
                    data: b"boot/hello.elf\0",
                },
            ],
        );
        let l = parse_reply(&f, &client()).unwrap();
        assert_eq!(l.kind, Kind::Offer);
        assert_eq!(l.ip, Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(l.prefix, 16);
        assert_eq!(l.server_id, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(l.boot_file.as_deref(), Some("boot/hello.elf"));
        assert_eq!(l.tftp_server(), Ok(Ipv4Addr::new(10, 0, 0, 2)));
        let no_siaddr = Lease {
            next_server: Ipv4Addr::UNSPECIFIED,
            ..l.clone()
        };
        assert_eq!(no_siaddr.tftp_server(), Ok(Ipv4Addr::new(10, 0, 0, 9)));
        // Other transactions and other clients are not ours.
        let mut other = client();
        other.xid ^= 1;
        assert!(parse_reply(&f, &other).is_none());
    }

    #[test]
    fn tftp_server_falls_back_to_siaddr_and_rejects_names() {
        let l = parse_reply(&reply(DhcpMessageType::Ack, &[]), &client()).unwrap();
        assert_eq!(l.kind, Kind::Ack);
        assert_eq!(l.boot_file, None);
        assert_eq!(l.tftp_server(), Ok(Ipv4Addr::new(10, 0, 0, 2)));
        let named = Lease {
            next_server: Ipv4Addr::UNSPECIFIED,
            tftp_server: Some("boot.example".into()),
            ..l
        };
        let e = named.tftp_server().unwrap_err();
        assert!(e.contains("no DNS"), "{e}");
    }

    #[test]
    fn random_frames_never_panic() {
        let c = client();
        let good = reply(DhcpMessageType::Offer, &[]);
        let mut rng = crate::netboot::tests::Rng(0x1234_5678);
        for _ in 0..20_000 {
            let f = rng.mutate(&good, None);
            let _ = parse_reply(&f, &c);
            let _ = parse_dhcp(&f[(42.min(f.len()))..], &c);
        }
    }
}
