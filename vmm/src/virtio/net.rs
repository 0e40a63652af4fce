//! virtio-net on a tap: receive queue 0, transmit queue 1, the MAC in config space, checksum
//! and TSO offloads offered where the tap accepts them. Frames carry the 12-byte virtio-net
//! header unchanged between tap and guest (the tap speaks the same header).

use super::tap::{self, Tap, VNET_HDR_LEN};
use super::{read_config_bytes, Activation, QueueInterrupt, VirtioDevice, Worker};
use crate::config::NetConfig;
use crate::error::{Error, Result};
use crate::memory::GuestMemory;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;

pub const QUEUE_SIZE: u16 = 256;
/// Largest frame with header: 64 KiB TSO segment + Ethernet header + virtio-net header.
pub const MAX_FRAME: usize = 65536 + 14 + VNET_HDR_LEN;

pub struct Net {
    tap: Arc<Tap>,
    mac: [u8; 6],
    offloads_ok: bool,
    worker: Option<Worker>,
    index: usize,
}

impl Net {
    pub fn new(cfg: &NetConfig, index: usize) -> Result<Net> {
        let tap = Tap::from_backend(&cfg.backend)?;
        // Offer guest-side offloads only if this tap can deliver such frames.
        let all = tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6 | tap::TUN_F_TSO_ECN;
        let offloads_ok = tap.set_offload(all).is_ok() && tap.set_offload(0).is_ok();
        tracing::debug!(
            tap = tap.name(),
            offloads = offloads_ok,
            "virtio-net attached"
        );
        Ok(Net {
            tap: Arc::new(tap),
            mac: cfg.mac,
            offloads_ok,
            worker: None,
            index,
        })
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }
}

/// Moves frames between a tap and the two queues.
pub struct NetHandler {
    pub mem: GuestMemory,
    pub rx: Queue,
    pub tx: Queue,
    pub tap: Arc<Tap>,
    pub interrupt: Arc<dyn QueueInterrupt>,
    /// A frame read from the tap that found no receive buffer yet.
    pending: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl NetHandler {
    pub fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        tap: Arc<Tap>,
        interrupt: Arc<dyn QueueInterrupt>,
    ) -> NetHandler {
        NetHandler {
            mem,
            rx,
            tx,
            tap,
            interrupt,
            pending: None,
            buf: vec![0; MAX_FRAME],
        }
    }

    /// Tap → guest until the tap is empty or the guest has no buffers.
    pub fn receive(&mut self) -> usize {
        let mut n = 0;
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => match self.tap.read(&mut self.buf) {
                    Ok(len) => self.buf[..len].to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "tap read");
                        break;
                    }
                },
            };
            let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(&self.mem) {
                Ok(mut w) if w.available_bytes() >= frame.len() => {
                    w.write_all(&frame).map(|_| frame.len() as u32).unwrap_or(0)
                }
                // Too small or invalid buffers: the frame is dropped, the buffer returned.
                _ => 0,
            };
            if self.rx.add_used(&self.mem, head, written).is_err() {
                break;
            }
            n += 1;
        }
        if n > 0 && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal(0);
        }
        n
    }

    /// Guest → tap for every available transmit chain.
    pub fn transmit(&mut self) -> usize {
        let mut n = 0;
        while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            if let Ok(mut r) = chain.reader(&self.mem) {
                let len = r.available_bytes();
                if (VNET_HDR_LEN..=MAX_FRAME).contains(&len)
                    && r.read_exact(&mut self.buf[..len]).is_ok()
                {
                    if let Err(e) = self.tap.write(&self.buf[..len]) {
                        tracing::debug!(error = %e, "tap write dropped a frame");
                    }
                }
            }
            if self.tx.add_used(&self.mem, head, 0).is_err() {
                break;
            }
            n += 1;
        }
        if n > 0 && self.tx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal(1);
        }
        n
    }
}

fn tun_offloads(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    let mut f = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        f |= tap::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            f |= tap::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            f |= tap::TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) {
            f |= tap::TUN_F_TSO_ECN;
        }
    }
    f
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        1
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00)
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_NET_F_MAC;
        // The tap accepts partially checksummed and TSO frames from us in any case.
        f |= 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_HOST_ECN;
        if self.offloads_ok {
            f |= 1 << VIRTIO_NET_F_GUEST_CSUM
                | 1 << VIRTIO_NET_F_GUEST_TSO4
                | 1 << VIRTIO_NET_F_GUEST_TSO6
                | 1 << VIRTIO_NET_F_GUEST_ECN;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        read_config_bytes(&c, offset, data)
    }
    fn activate(&mut self, a: Activation) -> Result<()> {
        let Activation {
            mem,
            mut queues,
            mut kicks,
            interrupt,
            features,
        } = a;
        if queues.len() != 2 || kicks.len() != 2 {
            return Err(Error::Memory(
                "virtio-net activated without its two queues".into(),
            ));
        }
        if let Err(e) = self.tap.set_offload(tun_offloads(features)) {
            tracing::warn!(error = %e, "tap refused offloads");
        }
        let (tx, rx) = (queues.pop().unwrap(), queues.pop().unwrap());
        let (tx_kick, rx_kick) = (kicks.pop().unwrap(), kicks.pop().unwrap());
        let mut h = NetHandler::new(mem, rx, tx, self.tap.clone(), interrupt);
        let fds = vec![
            // Edge-triggered: with no receive buffers we stop reading, and resume on the
            // driver's receive kick rather than spinning on a readable tap.
            (
                self.tap.as_raw_fd(),
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
            (rx_kick.as_raw_fd(), EventSet::IN),
            (tx_kick.as_raw_fd(), EventSet::IN),
        ];
        self.worker = Some(Worker::spawn_with(
            &format!("virtio-net{}", self.index),
            fds,
            move |token| {
                match token {
                    1 => {
                        let _ = rx_kick.read();
                    }
                    2 => {
                        let _ = tx_kick.read();
                        h.transmit();
                    }
                    _ => {}
                }
                h.receive();
                true
            },
        )?);
        Ok(())
    }
    fn reset(&mut self) {
        self.worker = None;
    }
}
