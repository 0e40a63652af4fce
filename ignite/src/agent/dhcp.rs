//! A small DHCPv4 client for the boot NIC: DISCOVER, OFFER, REQUEST, ACK on a UDP socket
//! bound to the interface, replies asked to be broadcast (the interface has no address yet).

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};

/// What the server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
}

pub fn request_msg(xid: u32, mac: &[u8; 6], kind: MessageType, offer: Option<&Lease>) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, z, z, z, z, mac);
    m.set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    if let Some(l) = offer {
        o.insert(DhcpOption::RequestedIpAddress(l.ip));
        o.insert(DhcpOption::ServerIdentifier(l.server));
    }
    m
}

/// The lease in a reply of type `want` to our `xid`, or None for anything else.
pub fn parse_reply(bytes: &[u8], xid: u32, want: MessageType) -> Option<Lease> {
    let m = std::panic::catch_unwind(|| Message::from_bytes(bytes))
        .ok()?
        .ok()?;
    if m.xid() != xid || m.opts().msg_type() != Some(want) {
        return None;
    }
    let mask = match m.opts().get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(a)) => *a,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let router = match m.opts().get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let server = match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => m.siaddr(),
    };
    Some(Lease {
        ip: m.yiaddr(),
        mask,
        router,
        server,
    })
}

fn exchange(
    sock: &UdpSocket,
    msg: &Message,
    want: MessageType,
    deadline: Instant,
) -> Result<Option<Lease>> {
    let bytes = msg.to_vec().context("cannot encode a DHCP message")?;
    let mut retry = Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send_to(&bytes, (Ipv4Addr::BROADCAST, 67))
            .context("cannot send a DHCP request")?;
        let until = Instant::now() + retry;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Some(l) = parse_reply(&buf[..n], msg.xid(), want) {
                        return Ok(Some(l));
                    }
                    if parse_reply(&buf[..n], msg.xid(), MessageType::Nak).is_some() {
                        return Ok(None);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e).context("DHCP receive"),
            }
        }
        retry = (retry * 2).min(Duration::from_secs(8));
    }
    bail!("no DHCP {want:?} within the time allowed")
}

/// Gets a lease for interface `iface` (already up) within `timeout`.
pub fn lease(iface: &str, mac: &[u8; 6], timeout: Duration) -> Result<Lease> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 68)).context("cannot bind UDP port 68")?;
    sock.set_broadcast(true)?;
    // SAFETY: setsockopt with the interface name bytes and their length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            iface.as_ptr().cast(),
            iface.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!(
            "cannot bind the DHCP socket to {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut xid = [0u8; 4];
        ignite_recovery::random::fill(&mut xid)?;
        let xid = u32::from_ne_bytes(xid);
        let Some(offer) = exchange(
            &sock,
            &request_msg(xid, mac, MessageType::Discover, None),
            MessageType::Offer,
            deadline,
        )?
        else {
            continue;
        };
        let req = request_msg(xid, mac, MessageType::Request, Some(&offer));
        if let Some(ack) = exchange(&sock, &req, MessageType::Ack, deadline)? {
            return Ok(ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_is_read_and_others_ignored() {
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let mut reply = request_msg(7, &mac, MessageType::Ack, None);
        reply.set_opcode(dhcproto::v4::Opcode::BootReply);
        reply.set_yiaddr(Ipv4Addr::new(10, 0, 0, 9));
        reply
            .opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)));
        reply
            .opts_mut()
            .insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]));
        reply
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
        let bytes = reply.to_vec().unwrap();
        let l = parse_reply(&bytes, 7, MessageType::Ack).unwrap();
        assert_eq!(l.ip, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(l.mask, Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(l.server, Ipv4Addr::new(10, 0, 0, 2));
        assert!(parse_reply(&bytes, 8, MessageType::Ack).is_none());
        assert!(parse_reply(&bytes, 7, MessageType::Offer).is_none());
        assert!(parse_reply(&bytes[..100], 7, MessageType::Ack).is_none());
    }
}
