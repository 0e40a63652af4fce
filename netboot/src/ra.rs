//! Answers a netbooting client's IPv6 router solicitation with "no router here".
//!
//! iPXE configures IPv6 beside DHCPv4 and reports "Configuring (net0 ...) ok" only when both
//! are done; with no IPv6 router on the segment its router solicitations go unanswered until
//! its retry timer gives up (0.25 s doubling to 10 s: about 16 s). Every iPXE start pays
//! that — a UEFI machine booting from its disk after an install runs iPXE three times (its
//! NIC ROM, then PXEv4, then HTTPv4, each told to boot locally). Measured under OVMF and
//! software emulation: "Configuring" took 16 s, and 1 s with an advertisement.
//!
//! The answer is a Router Advertisement with router lifetime 0 (not a default router), no
//! flags (no DHCPv6) and no prefixes: nothing for a host to configure (RFC 4861 6.3.4).
//! It goes unicast, and only to a MAC whose boot firmware or loader asked our DHCP for a
//! boot file within [`crate::boot::NETBOOT_WINDOW`], so operating systems on the segment
//! never see it and never have flags they learnt from a real router overwritten.

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::boot::ClientMap;
use crate::error::{Error, Result};
use crate::lograte::warn_limited;
use crate::mac::MacAddr;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// NDP option: source link-layer address.
const OPT_SOURCE_LL: u8 = 1;
/// The socket option that filters ICMPv6 types (linux/icmpv6.h; not in the libc crate).
const ICMP6_FILTER: libc::c_int = 1;
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// Neighbour discovery messages are only valid with this hop limit (RFC 4861 6.1).
const NDP_HOP_LIMIT: u32 = 255;

/// Why a packet is not a router solicitation we answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAnswered {
    #[error("not a router solicitation")]
    NotSolicitation,
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    #[error("malformed option")]
    BadOption,
    #[error("no source link-layer address option")]
    NoSourceMac,
}

/// The MAC a router solicitation (an ICMPv6 message, no IPv6 header) names in its source
/// link-layer address option.
pub fn solicitation_mac(msg: &[u8]) -> std::result::Result<MacAddr, NotAnswered> {
    if msg.len() < 8 {
        return Err(NotAnswered::Truncated(msg.len()));
    }
    if msg[0] != ROUTER_SOLICITATION || msg[1] != 0 {
        return Err(NotAnswered::NotSolicitation);
    }
    // Type, code, checksum, 4 reserved bytes; then options of (type, length in 8-byte units).
    let mut opts = &msg[8..];
    let mut mac = None;
    while !opts.is_empty() {
        if opts.len() < 2 {
            return Err(NotAnswered::BadOption);
        }
        let (kind, len) = (opts[0], usize::from(opts[1]) * 8);
        if len == 0 || len > opts.len() {
            return Err(NotAnswered::BadOption);
        }
        if kind == OPT_SOURCE_LL && len == 8 {
            mac = MacAddr::from_chaddr(&opts[2..8]);
        }
        opts = &opts[len..];
    }
    mac.ok_or(NotAnswered::NoSourceMac)
}

/// A Router Advertisement that configures nothing: hop limit, flags, router lifetime,
/// reachable time and retransmit timer all 0 (unspecified), plus our link-layer address
/// when known. The kernel fills in the checksum.
pub fn advertisement(own_mac: Option<MacAddr>) -> Vec<u8> {
    let mut m = vec![ROUTER_ADVERTISEMENT, 0, 0, 0];
    m.extend_from_slice(&[0; 12]);
    if let Some(mac) = own_mac {
        m.extend_from_slice(&[OPT_SOURCE_LL, 1]);
        m.extend_from_slice(&mac.0);
    }
    m
}

/// A raw ICMPv6 socket on `iface` that receives router solicitations only (needs
/// CAP_NET_RAW, which the server has for DHCP's privileged port anyway).
pub fn bind(iface: &str) -> Result<Socket> {
    let err = |source| Error::Bind {
        what: "IPv6 router solicitation listener",
        addr: iface.to_string(),
        source,
    };
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(err)?;
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    s.set_unicast_hops_v6(NDP_HOP_LIMIT).map_err(err)?;
    // Solicitations go to all-routers, which a host that is not a router has not joined.
    let index = crate::iface::index_of(iface).map_err(err)?;
    s.join_multicast_v6(&ALL_ROUTERS, index).map_err(err)?;
    // ICMP6_FILTER: a set bit blocks that type; let router solicitations through only.
    let mut filter = [u32::MAX; 8];
    filter[usize::from(ROUTER_SOLICITATION >> 5)] &= !(1 << (ROUTER_SOLICITATION & 31));
    // SAFETY: `filter` is the 32-byte struct icmp6_filter the option takes, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(err)?;
    Ok(s)
}

/// Answers solicitations on `sock` (from [`bind`]) until `shutdown` turns true, on a
/// thread of its own (a raw socket has no tokio type; it wakes once a second to look at
/// `shutdown`). Receive errors are logged and the service goes on: it only saves clients
/// time.
pub async fn serve(
    sock: Socket,
    own_mac: Option<MacAddr>,
    clients: Arc<ClientMap>,
    shutdown: watch::Receiver<bool>,
) {
    let run = move || {
        let answer = advertisement(own_mac);
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        while !*shutdown.borrow() {
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn_limited!("router solicitation receive failed", "ICMPv6 receive: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            // SAFETY: recv_from initialised the first `n` bytes.
            let msg = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            let Some(to) = from.as_socket_ipv6() else {
                continue;
            };
            tracing::debug!("router solicitation from {to} ({n} bytes)");
            if let Some(mac) = to_answer(msg, &to, &clients) {
                match sock.send_to(&answer, &to.into()) {
                    Ok(_) => tracing::debug!("router advertisement (no router) to {mac} at {to}"),
                    Err(e) => warn_limited!(
                        "router advertisement failed",
                        "router advertisement to {to}: {e}"
                    ),
                }
            }
        }
    };
    if let Err(e) = tokio::task::spawn_blocking(run).await {
        tracing::error!("the IPv6 router solicitation service ended: {e}");
    }
}

/// The client to answer, if `msg` from `from` is a solicitation we answer: from a
/// link-local address (an unspecified source would need a multicast answer), by a MAC that
/// is netbooting now.
fn to_answer(msg: &[u8], from: &SocketAddrV6, clients: &ClientMap) -> Option<MacAddr> {
    if !is_link_local(from.ip()) {
        return None;
    }
    let mac = match solicitation_mac(msg) {
        Ok(mac) => mac,
        // The option is only a SHOULD (rdisc6 leaves it out); iPXE's address is EUI-64.
        Err(NotAnswered::NoSourceMac) => eui64_mac(from.ip())?,
        Err(_) => return None,
    };
    clients.netbooting(mac).then_some(mac)
}

/// The MAC an EUI-64 interface identifier was made from (RFC 4291 appendix A).
fn eui64_mac(ip: &Ipv6Addr) -> Option<MacAddr> {
    let o = ip.octets();
    (o[11] == 0xff && o[12] == 0xfe)
        .then(|| MacAddr([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x77, 0, 0x11]);

    fn rs(options: &[u8]) -> Vec<u8> {
        let mut m = vec![ROUTER_SOLICITATION, 0, 0x12, 0x34, 0, 0, 0, 0];
        m.extend_from_slice(options);
        m
    }

    fn sll(mac: MacAddr) -> Vec<u8> {
        let mut o = vec![OPT_SOURCE_LL, 1];
        o.extend_from_slice(&mac.0);
        o
    }

    #[test]
    fn a_solicitation_names_its_sender() {
        assert_eq!(solicitation_mac(&rs(&sll(MAC))), Ok(MAC));
        // Unknown options before it are skipped by their length.
        let mut opts = vec![14, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        opts.extend(sll(MAC));
        assert_eq!(solicitation_mac(&rs(&opts)), Ok(MAC));
    }

    #[test]
    fn anything_else_is_not_answered() {
        assert_eq!(solicitation_mac(&rs(&[])), Err(NotAnswered::NoSourceMac));
        assert_eq!(
            solicitation_mac(&[133, 0, 0]),
            Err(NotAnswered::Truncated(3))
        );
        let mut ns = rs(&sll(MAC));
        ns[0] = 135;
        assert_eq!(solicitation_mac(&ns), Err(NotAnswered::NotSolicitation));
        let mut code = rs(&sll(MAC));
        code[1] = 1;
        assert_eq!(solicitation_mac(&code), Err(NotAnswered::NotSolicitation));
        // A zero-length option would loop forever; one longer than the packet reads past it.
        assert_eq!(
            solicitation_mac(&rs(&[1, 0, 0, 0, 0, 0, 0, 0])),
            Err(NotAnswered::BadOption)
        );
        assert_eq!(
            solicitation_mac(&rs(&[1, 2, 0, 0, 0, 0, 0, 0])),
            Err(NotAnswered::BadOption)
        );
        assert_eq!(solicitation_mac(&rs(&[1])), Err(NotAnswered::BadOption));
    }

    #[test]
    fn the_advertisement_configures_nothing() {
        let a = advertisement(Some(MAC));
        assert_eq!(a.len(), 24);
        assert_eq!(a[0], ROUTER_ADVERTISEMENT);
        // Hop limit, M/O flags, router lifetime, reachable time, retransmit timer: all 0.
        assert!(a[4..16].iter().all(|&b| b == 0), "{a:?}");
        assert_eq!(&a[16..18], &[OPT_SOURCE_LL, 1]);
        assert_eq!(&a[18..], &MAC.0);
        assert_eq!(advertisement(None).len(), 16);
    }

    #[test]
    fn only_netbooting_clients_on_the_link_are_answered() {
        let clients = ClientMap::default();
        let ll = SocketAddrV6::new("fe80::5054:ff:fe77:11".parse().unwrap(), 0, 0, 2);
        let global = SocketAddrV6::new("2001:db8::11".parse().unwrap(), 0, 0, 0);
        let msg = rs(&sll(MAC));
        assert_eq!(
            to_answer(&msg, &ll, &clients),
            None,
            "an OS, not netbooting"
        );
        clients.firmware_asked(MAC);
        assert_eq!(to_answer(&msg, &ll, &clients), Some(MAC));
        assert_eq!(to_answer(&msg, &global, &clients), None);
        let unspecified = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 2);
        assert_eq!(to_answer(&msg, &unspecified, &clients), None);
        // Without the option, the MAC of an EUI-64 address; a random one names nobody.
        assert_eq!(to_answer(&rs(&[]), &ll, &clients), Some(MAC));
        let random = SocketAddrV6::new("fe80::1c2d:3e4f:5a6b:7c8d".parse().unwrap(), 0, 0, 2);
        assert_eq!(to_answer(&rs(&[]), &random, &clients), None);
        assert_eq!(to_answer(&rs(&[1, 0]), &ll, &clients), None, "malformed");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(0u8..=255, 0..64)) {
            let _ = solicitation_mac(&bytes);
        }
    }
}
