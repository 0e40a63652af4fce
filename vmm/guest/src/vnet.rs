//! virtio-net driver on top of `virtio`: receive queue 0 with RX_BUFS posted buffers,
//! transmit queue 1 with TX_BUFS frame slots. Frames are batched: one doorbell per `flush`,
//! receive buffers given back in place and announced only when the device may be starved;
//! the receive interrupt is on only while the driver sleeps (`idle`), as NAPI does.

use crate::eth::Nic;
use crate::pci::Bdf;
use crate::virtio::{Device, Queue, QueueMem, F_VERSION_1, QSIZE};
use crate::{check, start};

pub const F_MAC: u64 = 1 << 5;
/// The virtio-net header in front of every frame (virtio 1.x).
const HDR: usize = 12;
const BUFSZ: usize = 2048;
const RX_BUFS: usize = 128;
const TX_BUFS: usize = 128;

#[repr(C, align(4096))]
struct Bufs<const N: usize>([[u8; BUFSZ]; N]);
static mut RX: Bufs<RX_BUFS> = Bufs([[0; BUFSZ]; RX_BUFS]);
static mut TX: Bufs<TX_BUFS> = Bufs([[0; BUFSZ]; TX_BUFS]);
static mut QRX: QueueMem = QueueMem::new();
static mut QTX: QueueMem = QueueMem::new();

pub struct VirtioNet {
    mac: [u8; 6],
    rx: Queue,
    tx: Queue,
    head_buf: [u8; QSIZE],
    /// Transmit chains queued since the last doorbell.
    tx_unsent: usize,
    tx_next: usize,
    /// Receive buffers given back since the last receive doorbell.
    rx_returned: usize,
}

impl VirtioNet {
    /// Initialises the virtio-net function at `bdf` with the receive interrupt on MSI-X entry
    /// 0 → IDT vector IRQ_BASE (suppressed until `idle`), all receive buffers posted.
    pub fn open(bdf: Bdf) -> VirtioNet {
        let mut dev = Device::probe(bdf).unwrap_or_else(|| {
            crate::println!("FAIL: virtio-net has no virtio capabilities");
            crate::io::exit(1)
        });
        let f = dev.init(F_VERSION_1 | F_MAC);
        check!(f == Some(F_VERSION_1 | F_MAC), "feature negotiation failed");
        let mut mac = [0u8; 6];
        for (i, m) in mac.iter_mut().enumerate() {
            *m = dev.config::<u8>(i as u64);
        }
        dev.msix_route(0, start::IRQ_BASE);
        let rx = dev.setup_queue(0, unsafe { &mut *core::ptr::addr_of_mut!(QRX) }, 0);
        let tx = dev.setup_queue(1, unsafe { &mut *core::ptr::addr_of_mut!(QTX) }, 0xffff);
        dev.driver_ok();
        let mut n = VirtioNet {
            mac,
            rx,
            tx,
            head_buf: [0; QSIZE],
            tx_unsent: 0,
            tx_next: 0,
            rx_returned: 0,
        };
        n.rx.suppress_interrupts(true);
        n.tx.suppress_interrupts(true);
        for i in 0..RX_BUFS {
            n.post(i);
        }
        n.rx.notify();
        n.rx_returned = 0;
        n
    }

    fn post(&mut self, i: usize) {
        let rx = unsafe { &*core::ptr::addr_of!(RX) };
        let head = self
            .rx
            .push(&[(rx.0[i].as_ptr() as u64, BUFSZ as u32, true)]);
        self.head_buf[head as usize] = i as u8;
        self.rx_returned += 1;
    }

    fn reap_tx(&mut self) {
        while self.tx.poll().is_some() {}
    }
}

impl Nic for VirtioNet {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        self.reap_tx();
        if self.tx.in_flight as usize >= TX_BUFS {
            // Every slot is on the ring: ring the doorbell and wait for the oldest.
            self.flush();
            while self.tx.in_flight as usize >= TX_BUFS {
                self.reap_tx();
                core::hint::spin_loop();
            }
        }
        // Completions come in order, so the slot after the newest in flight is free.
        let tx = unsafe { &mut *core::ptr::addr_of_mut!(TX) };
        let buf = &mut tx.0[self.tx_next];
        self.tx_next = (self.tx_next + 1) % TX_BUFS;
        buf[..HDR].fill(0);
        fill(&mut buf[HDR..HDR + len]);
        self.tx
            .push(&[(buf.as_ptr() as u64, (HDR + len) as u32, false)]);
        self.tx_unsent += 1;
    }

    fn flush(&mut self) {
        if self.tx_unsent > 0 {
            self.tx.notify();
            self.tx_unsent = 0;
        }
    }

    fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let (head, len) = self.rx.poll()?;
        let i = self.head_buf[head as usize] as usize;
        let rx = unsafe { &*core::ptr::addr_of!(RX) };
        let n = (len as usize).clamp(HDR, BUFSZ);
        let r = f(&rx.0[i][HDR..n]);
        self.post(i);
        // With half the buffers back, tell the device in case it ran out.
        if self.rx_returned >= RX_BUFS / 2 {
            self.rx.notify();
            self.rx_returned = 0;
        }
        Some(r)
    }

    fn idle(&mut self, seen: u64) {
        self.flush();
        if self.rx_returned > 0 {
            self.rx.notify();
            self.rx_returned = 0;
        }
        self.rx.suppress_interrupts(false);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if !self.rx.has_used() {
            crate::wait_irq(seen);
        }
        self.rx.suppress_interrupts(true);
    }
}
