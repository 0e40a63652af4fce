//! Linux tap devices: create one or attach to an existing one (TUNSETIFF), with the 12-byte
//! virtio-net header in front of every frame, offloads, link up, and enslaving to a bridge.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// The virtio-net header the tap puts before each frame (virtio 1.x: 12 bytes).
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    /// flags (short) or ifindex (int), padded to the union's size.
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        for (d, s) in r.name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        r
    }
    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn ioctl(fd: RawFd, req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: callers pass a pointer to a live struct of the type `req` expects.
    if unsafe { libc::ioctl(fd, req as _, arg) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Interface index of `name` in the current network namespace.
pub fn ifindex(name: &str) -> io::Result<i32> {
    let s = socket()?;
    let mut r = IfReq::new(name);
    ioctl(
        s.as_raw_fd(),
        libc::SIOCGIFINDEX,
        &mut r as *mut _ as *mut _,
    )?;
    Ok(i32::from_ne_bytes(r.data[..4].try_into().unwrap()))
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens tap `name` (created if absent; a `%d` in the name lets the kernel number it),
    /// with the virtio-net header enabled, non-blocking, link up.
    pub fn open(name: &str) -> Result<Tap> {
        let err = |e: io::Error| Error::Tap {
            name: name.to_owned(),
            err: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(err)?;
        let mut r = IfReq::new(name);
        r.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        ioctl(file.as_raw_fd(), TUNSETIFF, &mut r as *mut _ as *mut _).map_err(err)?;
        let name = r.name();
        let mut hdr = VNET_HDR_LEN as libc::c_int;
        ioctl(
            file.as_raw_fd(),
            TUNSETVNETHDRSZ,
            &mut hdr as *mut _ as *mut _,
        )
        .map_err(|e| Error::Tap {
            name: name.clone(),
            err: e,
        })?;
        let tap = Tap { file, name };
        tap.set_up().map_err(|e| Error::Tap {
            name: tap.name.clone(),
            err: e,
        })?;
        Ok(tap)
    }

    /// The tap a NIC config names: an existing/new tap, or a new one added to a bridge.
    /// Shared by every NIC model (virtio-net, NE2000).
    pub fn from_backend(b: &crate::config::NetBackend) -> Result<Tap> {
        use crate::config::NetBackend;
        Ok(match b {
            NetBackend::Tap(name) => Tap::open(name)?,
            NetBackend::Bridge(br) => {
                ifindex(br).map_err(|e| crate::error::Error::Bridge {
                    name: br.clone(),
                    msg: format!("{e}; create it first (ip link add {br} type bridge)"),
                })?;
                let t = Tap::open("ignite%d")?;
                t.attach_to_bridge(br)?;
                t
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_up(&self) -> io::Result<()> {
        let s = socket()?;
        let mut r = IfReq::new(&self.name);
        ioctl(
            s.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut r as *mut _ as *mut _,
        )?;
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(
            s.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &mut r as *mut _ as *mut _,
        )
    }

    /// Which offloads the kernel may hand us in frames for the guest (TUN_F_*).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // TUNSETOFFLOAD takes the flags as the argument value itself.
        // SAFETY: ioctl with an integer argument.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Adds the tap to an existing bridge.
    pub fn attach_to_bridge(&self, bridge: &str) -> Result<()> {
        let berr = |msg: String| Error::Bridge {
            name: bridge.to_owned(),
            msg,
        };
        ifindex(bridge).map_err(|e| {
            berr(format!(
                "{e}; create it first (ip link add {bridge} type bridge)"
            ))
        })?;
        let idx = ifindex(&self.name).map_err(|e| berr(e.to_string()))?;
        let s = socket().map_err(|e| berr(e.to_string()))?;
        let mut r = IfReq::new(bridge);
        r.data[..4].copy_from_slice(&idx.to_ne_bytes());
        ioctl(s.as_raw_fd(), SIOCBRADDIF, &mut r as *mut _ as *mut _).map_err(|e| {
            berr(format!(
                "cannot add tap {}: {e}; is {bridge} a bridge?",
                self.name
            ))
        })
    }

    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable buffer.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid readable buffer.
        let n = unsafe { libc::write(self.file.as_raw_fd(), buf.as_ptr() as *const _, buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
