//! Network interface facts (address, MTU) and interface-bound UDP sockets.

use std::ffi::CStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::error::{Error, Result};

/// The first IPv4 address and prefix length of `iface`.
pub fn ipv4_of(iface: &str) -> Result<(Ipv4Addr, u8)> {
    let err = |msg: &str| Error::Interface {
        iface: iface.to_string(),
        msg: msg.to_string(),
    };
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(err("cannot list interface addresses (getifaddrs failed)"));
    }
    let mut found = None;
    let mut seen = false;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur walks the list returned by getifaddrs, which stays valid until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        seen = true;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr pointers from getifaddrs; family checked before the cast.
        unsafe {
            if (*ifa.ifa_addr).sa_family as i32 != libc::AF_INET {
                continue;
            }
            let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            let prefix = u32::from_be(m.sin_addr.s_addr).count_ones() as u8;
            found = Some((ip, prefix));
            break;
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    match found {
        Some(f) => Ok(f),
        None if seen => Err(err(
            "has no IPv4 address; assign one (ip addr add ... dev IFACE)",
        )),
        None => Err(err("does not exist; check the name with `ip link`")),
    }
}

/// The interface MTU, from sysfs.
pub fn mtu_of(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The interface's index, from sysfs.
pub fn index_of(iface: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("{iface}: ifindex {text:?}")))
}

/// The interface's hardware address, from sysfs.
pub fn mac_of(iface: &str) -> Option<crate::MacAddr> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A blocking UDP socket on `addr`, restricted to `iface` when given (SO_BINDTODEVICE),
/// allowed to broadcast, with large buffers.
pub fn std_udp_socket(
    iface: Option<&str>,
    addr: SocketAddrV4,
    what: &'static str,
) -> Result<std::net::UdpSocket> {
    let bind_err = |source| Error::Bind {
        what,
        addr: format!(
            "{addr}{}",
            iface.map(|i| format!(" (dev {i})")).unwrap_or_default()
        ),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    s.set_reuse_address(true).map_err(bind_err)?;
    s.set_broadcast(true).map_err(bind_err)?;
    if let Some(i) = iface {
        s.bind_device(Some(i.as_bytes())).map_err(bind_err)?;
    }
    // Big buffers: a windowed TFTP transfer or a DHCP burst must not drop on a busy host.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::V4(addr).into()).map_err(bind_err)?;
    Ok(s.into())
}

/// [`std_udp_socket`] for tokio. Must be called inside a tokio runtime.
pub fn udp_socket(
    iface: Option<&str>,
    addr: SocketAddrV4,
    what: &'static str,
) -> Result<UdpSocket> {
    let s = std_udp_socket(iface, addr, what)?;
    let err = |source| Error::Bind {
        what,
        addr: addr.to_string(),
        source,
    };
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_127_0_0_1() {
        let (ip, prefix) = ipv4_of("lo").unwrap();
        assert_eq!(ip, Ipv4Addr::LOCALHOST);
        assert_eq!(prefix, 8);
        assert!(mtu_of("lo").unwrap() >= 1500);
        assert_eq!(mac_of("lo"), Some(crate::MacAddr([0; 6])));
        assert_eq!(index_of("lo").unwrap(), 1);
    }

    #[test]
    fn missing_interface_is_named_in_the_error() {
        let e = ipv4_of("nosuchif0").unwrap_err().to_string();
        assert!(
            e.contains("nosuchif0") && e.contains("does not exist"),
            "{e}"
        );
    }
}
