//! Network interfaces by ioctl: find the NIC by MAC, bring it up, give it an address and a
//! default route. (The agent has no `ip` tool; these few calls are all it needs.)

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Result};

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= r.ifr_name.len() {
        bail!("interface name {name:?} is too long");
    }
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<()> {
    // SAFETY: `arg` points to the struct `req` expects.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) } != 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The interface whose MAC is `mac` (12 hex digits or colon form), from /sys/class/net.
pub fn by_mac(mac: &str) -> Option<String> {
    let want: String = mac
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|e| {
            let addr = std::fs::read_to_string(e.path().join("address")).ok()?;
            let have: String = addr.trim().to_lowercase().replace(':', "");
            (have == want).then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// The MAC of `name` as 6 bytes.
pub fn mac_of(name: &str) -> Result<[u8; 6]> {
    let text = std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("interface {name}: odd MAC address {text:?}");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)?;
    }
    Ok(mac)
}

pub fn up(name: &str) -> Result<()> {
    let fd = socket()?;
    let mut r = ifreq(name)?;
    ioctl(
        &fd,
        libc::SIOCGIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        name,
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(
        &fd,
        libc::SIOCSIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        name,
    )
}

/// Sets `ip/prefix` on `name` and, with a gateway, the default route through it.
pub fn configure(
    name: &str,
    ip: Ipv4Addr,
    mask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    let fd = socket()?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(
        &fd,
        libc::SIOCSIFADDR,
        (&mut r as *mut libc::ifreq).cast(),
        &format!("{name}: set address {ip}"),
    )?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(
        &fd,
        libc::SIOCSIFNETMASK,
        (&mut r as *mut libc::ifreq).cast(),
        &format!("{name}: set netmask {mask}"),
    )?;
    if let Some(gw) = gateway {
        // SAFETY: rtentry is plain data; all-zero is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        ioctl(
            &fd,
            libc::SIOCADDRT,
            (&mut rt as *mut libc::rtentry).cast(),
            &format!("default route via {gw}"),
        )?;
    }
    Ok(())
}
