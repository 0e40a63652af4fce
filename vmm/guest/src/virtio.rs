//! Minimal modern virtio-pci driver: capability discovery, feature negotiation, split queues
//! in static memory, MSI-X vectors, polled completion.

use crate::io::{mmio_read, mmio_write};
use crate::pci::{self, Bdf};
use core::sync::atomic::{fence, Ordering};

pub const QSIZE: usize = 256;
pub const F_VERSION_1: u64 = 1 << 32;
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

#[repr(C, align(4096))]
pub struct QueueMem {
    pub desc: [Desc; QSIZE],
    pub avail_flags: u16,
    pub avail_idx: u16,
    pub avail_ring: [u16; QSIZE],
    pub used_event: u16,
    _pad: [u8; 4096 - (4 + 2 * QSIZE + 2) % 4096],
    pub used_flags: u16,
    pub used_idx: u16,
    pub used_ring: [(u32, u32); QSIZE],
    pub avail_event: u16,
}

impl QueueMem {
    pub const fn new() -> Self {
        QueueMem {
            desc: [Desc {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            }; QSIZE],
            avail_flags: 0,
            avail_idx: 0,
            avail_ring: [0; QSIZE],
            used_event: 0,
            _pad: [0; 4096 - (4 + 2 * QSIZE + 2) % 4096],
            used_flags: 0,
            used_idx: 0,
            used_ring: [(0, 0); QSIZE],
            avail_event: 0,
        }
    }
}

impl Default for QueueMem {
    fn default() -> Self {
        Self::new()
    }
}

/// A split virtqueue driven by polling its used ring.
pub struct Queue {
    mem: *mut QueueMem,
    pub index: u16,
    notify_addr: u64,
    next_desc: u16,
    last_used: u16,
    /// Chains submitted and not yet seen in the used ring.
    pub in_flight: u16,
}

impl Queue {
    /// Puts a chain of (address, length, device-writable) buffers on the ring; returns its
    /// head. Descriptors are handed out round-robin: callers keep fewer than QSIZE in flight.
    pub fn push(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let m = unsafe { &mut *self.mem };
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (self.next_desc as usize) % QSIZE;
            let last = i + 1 == bufs.len();
            let next = ((idx + 1) % QSIZE) as u16;
            let d = Desc {
                addr,
                len,
                flags: if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { next },
            };
            unsafe { core::ptr::write_volatile(&mut m.desc[idx], d) };
            self.next_desc = next;
        }
        let avail = unsafe { core::ptr::read_volatile(&m.avail_idx) };
        unsafe { core::ptr::write_volatile(&mut m.avail_ring[avail as usize % QSIZE], head) };
        fence(Ordering::SeqCst);
        unsafe { core::ptr::write_volatile(&mut m.avail_idx, avail.wrapping_add(1)) };
        fence(Ordering::SeqCst);
        self.in_flight += 1;
        head
    }

    /// Notifies the device unless it said it is polling (VRING_USED_F_NO_NOTIFY).
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        let m = unsafe { &*self.mem };
        if unsafe { core::ptr::read_volatile(&m.used_flags) } & 1 == 0 {
            mmio_write::<u16>(self.notify_addr, self.index);
        }
    }

    /// Next completion (head, bytes written by the device), if any.
    pub fn poll(&mut self) -> Option<(u16, u32)> {
        let m = unsafe { &*self.mem };
        let used = unsafe { core::ptr::read_volatile(&m.used_idx) };
        if used == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let (id, len) =
            unsafe { core::ptr::read_volatile(&m.used_ring[self.last_used as usize % QSIZE]) };
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight -= 1;
        Some((id as u16, len))
    }

    /// Whether the device has completions `poll` has not taken yet.
    pub fn has_used(&self) -> bool {
        let m = unsafe { &*self.mem };
        let used = unsafe { core::ptr::read_volatile(&m.used_idx) };
        used != self.last_used
    }

    /// Ask the device not to interrupt for this queue (we poll).
    pub fn suppress_interrupts(&mut self, on: bool) {
        let m = unsafe { &mut *self.mem };
        unsafe { core::ptr::write_volatile(&mut m.avail_flags, on as u16) };
    }
}

pub struct Device {
    pub bdf: Bdf,
    common: u64,
    notify: u64,
    notify_mul: u32,
    pub isr: u64,
    pub device_cfg: u64,
    msix_table: u64,
    msix_cap: u8,
    pub msix_size: u16,
}

fn bar_addr(b: Bdf, bar: u8) -> u64 {
    let lo = pci::read32(b, 0x10 + 4 * bar);
    let mut a = (lo & !0xf) as u64;
    if (lo >> 1) & 3 == 2 {
        a |= (pci::read32(b, 0x14 + 4 * bar) as u64) << 32;
    }
    a
}

impl Device {
    /// Finds the virtio capabilities of the device at `bdf` and enables memory decoding and
    /// bus mastering. None when a required capability is missing.
    pub fn probe(bdf: Bdf) -> Option<Device> {
        let cmd = pci::read16(bdf, 4);
        pci::write16(bdf, 4, cmd | 0x6);
        let mut caps = [0u8; 16];
        let n = pci::find_caps(bdf, 0x09, &mut caps);
        let (mut common, mut notify, mut isr, mut dev) = (0, 0, 0, 0);
        let mut notify_mul = 0;
        for &c in &caps[..n] {
            let cfg_type = pci::read8(bdf, c + 3);
            let bar = pci::read8(bdf, c + 4);
            let off = pci::read32(bdf, c + 8) as u64;
            let addr = bar_addr(bdf, bar) + off;
            match cfg_type {
                1 => common = addr,
                2 => {
                    notify = addr;
                    notify_mul = pci::read32(bdf, c + 16);
                }
                3 => isr = addr,
                4 => dev = addr,
                _ => {}
            }
        }
        let mut mcap = [0u8; 1];
        let (msix_table, msix_cap, msix_size) = if pci::find_caps(bdf, 0x11, &mut mcap) == 1 {
            let c = mcap[0];
            let ctl = pci::read16(bdf, c + 2);
            let t = pci::read32(bdf, c + 4);
            (
                bar_addr(bdf, (t & 7) as u8) + (t & !7) as u64,
                c,
                (ctl & 0x7ff) + 1,
            )
        } else {
            (0, 0, 0)
        };
        if common == 0 || notify == 0 || isr == 0 {
            return None;
        }
        Some(Device {
            bdf,
            common,
            notify,
            notify_mul,
            isr,
            device_cfg: dev,
            msix_table,
            msix_cap,
            msix_size,
        })
    }

    fn status(&self) -> u8 {
        mmio_read(self.common + 0x14)
    }
    fn set_status(&self, s: u8) {
        mmio_write(self.common + 0x14, s)
    }

    /// Reset, acknowledge, and negotiate `wanted & offered`. Returns the accepted features,
    /// or None if the device refused FEATURES_OK.
    pub fn init(&mut self, wanted: u64) -> Option<u64> {
        self.set_status(0);
        while self.status() != 0 {}
        self.set_status(S_ACK);
        self.set_status(S_ACK | S_DRIVER);
        let offered = self.device_features();
        let f = offered & wanted;
        mmio_write::<u32>(self.common + 0x08, 0);
        mmio_write::<u32>(self.common + 0x0c, f as u32);
        mmio_write::<u32>(self.common + 0x08, 1);
        mmio_write::<u32>(self.common + 0x0c, (f >> 32) as u32);
        self.set_status(S_ACK | S_DRIVER | S_FEATURES_OK);
        if self.status() & S_FEATURES_OK == 0 {
            return None;
        }
        Some(f)
    }

    /// Device reset (status 0): queues stop, their memory may be reused.
    pub fn reset(&mut self) {
        self.set_status(0);
        while self.status() != 0 {}
    }

    pub fn device_features(&self) -> u64 {
        mmio_write::<u32>(self.common, 0);
        let lo = mmio_read::<u32>(self.common + 4) as u64;
        mmio_write::<u32>(self.common, 1);
        let hi = mmio_read::<u32>(self.common + 4) as u64;
        lo | hi << 32
    }

    pub fn num_queues(&self) -> u16 {
        mmio_read(self.common + 0x12)
    }

    /// Sets up queue `index` in `mem`, with MSI-X vector `vector` (0xffff for none).
    pub fn setup_queue(&mut self, index: u16, mem: &'static mut QueueMem, vector: u16) -> Queue {
        let c = self.common;
        mmio_write::<u16>(c + 0x16, index);
        let max = mmio_read::<u16>(c + 0x18);
        crate::check!(
            max as usize >= QSIZE,
            "queue {} max size {} < {}",
            index,
            max,
            QSIZE
        );
        mmio_write::<u16>(c + 0x18, QSIZE as u16);
        mmio_write::<u16>(c + 0x1a, vector);
        // The memory may have served a queue before (a reset device's): start from zero.
        unsafe {
            core::ptr::write_bytes(
                mem as *mut QueueMem as *mut u8,
                0,
                core::mem::size_of::<QueueMem>(),
            )
        };
        let base = mem as *mut QueueMem as u64;
        let avail = base + core::mem::offset_of!(QueueMem, avail_flags) as u64;
        let used = base + core::mem::offset_of!(QueueMem, used_flags) as u64;
        for (reg, a) in [(0x20, base), (0x28, avail), (0x30, used)] {
            mmio_write::<u32>(c + reg, a as u32);
            mmio_write::<u32>(c + reg + 4, (a >> 32) as u32);
        }
        let off = mmio_read::<u16>(c + 0x1e);
        mmio_write::<u16>(c + 0x1c, 1);
        Queue {
            mem,
            index,
            notify_addr: self.notify + off as u64 * self.notify_mul as u64,
            next_desc: 0,
            last_used: 0,
            in_flight: 0,
        }
    }

    pub fn queue_vector(&self, index: u16) -> u16 {
        mmio_write::<u16>(self.common + 0x16, index);
        mmio_read(self.common + 0x1a)
    }

    pub fn driver_ok(&mut self) {
        self.set_status(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    }

    /// Enables MSI-X and points table entry `entry` at the local APIC with `vector`.
    pub fn msix_route(&mut self, entry: u16, vector: u8) {
        let c = self.msix_cap;
        let ctl = pci::read16(self.bdf, c + 2);
        pci::write16(self.bdf, c + 2, (ctl | 0x8000) & !0x4000);
        let e = self.msix_table + entry as u64 * 16;
        mmio_write::<u32>(e, 0xfee0_0000);
        mmio_write::<u32>(e + 4, 0);
        mmio_write::<u32>(e + 8, vector as u32);
        mmio_write::<u32>(e + 12, 0);
    }

    pub fn config<T: Copy>(&self, off: u64) -> T {
        mmio_read(self.device_cfg + off)
    }
}
