//! The guest's tap as a smoltcp device, and the poll loop the transfers run in: one thread,
//! no async runtime; it sleeps in poll(2) on the tap until a frame or a timer is due.

use crate::virtio::tap::{Tap, VNET_HDR_LEN};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Frames from the tap carry the virtio-net header; offloads are off, so it is all zeros on
/// the way out and can be skipped on the way in.
pub struct Link {
    tap: Tap,
    buf: Vec<u8>,
}

impl Link {
    pub fn new(tap: Tap) -> Link {
        Link {
            tap,
            buf: vec![0; 65536 + VNET_HDR_LEN],
        }
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Sends one Ethernet frame.
    pub fn send(&self, frame: &[u8]) {
        send(&self.tap, frame.len(), |b| b.copy_from_slice(frame));
    }

    /// The next Ethernet frame waiting on the tap, if any.
    pub fn recv(&mut self) -> Option<&[u8]> {
        match self.tap.read(&mut self.buf) {
            Ok(n) if n > VNET_HDR_LEN => Some(&self.buf[VNET_HDR_LEN..n]),
            _ => None,
        }
    }

    /// Sleeps until a frame arrives or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut p = libc::pollfd {
            fd: self.tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}

fn send(tap: &Tap, len: usize, f: impl FnOnce(&mut [u8])) {
    let mut b = vec![0u8; VNET_HDR_LEN + len];
    f(&mut b[VNET_HDR_LEN..]);
    // A full tap queue drops the frame, as a wire would; the protocols retransmit.
    let _ = tap.write(&b);
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a Tap);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut r = None;
        send(self.0, len, |b| r = Some(f(b)));
        r.expect("send calls its closure")
    }
}

impl Device for Link {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.recv()?.to_vec();
        Some((Rx(frame), Tx(&self.tap)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&self.tap))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// An addressed interface on the link with its sockets.
pub struct Stack {
    pub link: Link,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    epoch: Instant,
}

impl Stack {
    pub fn new(
        link: Link,
        mac: [u8; 6],
        ip: Ipv4Addr,
        prefix: u8,
        router: Option<Ipv4Addr>,
    ) -> Stack {
        let mut link = link;
        let epoch = Instant::now();
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        cfg.random_seed = super::random_u64();
        let mut iface = Interface::new(cfg, &mut link, smoltcp::time::Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(ip.into(), prefix));
        });
        if let Some(gw) = router {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        Stack {
            link,
            iface,
            sockets: SocketSet::new(Vec::new()),
            epoch,
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Moves frames until `done` returns a value or `deadline` passes (then `None`).
    pub fn run_until<T>(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&mut SocketSet<'static>) -> Option<T>,
    ) -> Option<T> {
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.link, &mut self.sockets);
            if let Some(v) = done(&mut self.sockets) {
                // Let what `done` queued (an ACK, a request) leave now.
                self.iface
                    .poll(self.now(), &mut self.link, &mut self.sockets);
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let delay = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(left);
            if !delay.is_zero() {
                self.link.wait(delay.min(left));
            }
        }
    }

    pub fn remove(&mut self, h: SocketHandle) {
        self.sockets.remove(h);
    }
}
