//! virtio-blk driver on top of `virtio`: requests with a header and status slot each, many in
//! flight, completions by polling.

use crate::pci::Bdf;
use crate::virtio::{Device, Queue, QueueMem, F_VERSION_1};

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

pub const SLOTS: usize = 64;

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Slot {
    ty: u32,
    reserved: u32,
    sector: u64,
    status: u8,
    busy: bool,
}

/// Per-device request slots (header + status byte each); device i uses SLOT_MEM[i].
static mut SLOT_MEM: [[Slot; SLOTS]; 4] = [[Slot {
    ty: 0,
    reserved: 0,
    sector: 0,
    status: 0xff,
    busy: false,
}; SLOTS]; 4];
static mut QUEUE_MEM: [QueueMem; 4] = [
    QueueMem::new(),
    QueueMem::new(),
    QueueMem::new(),
    QueueMem::new(),
];

pub struct Blk {
    pub dev: Device,
    pub q: Queue,
    pub features: u64,
    slots: *mut [Slot; SLOTS],
    head_slot: [u8; crate::virtio::QSIZE],
}

impl Blk {
    /// Initialises the `n`th virtio-blk device (`n` < 4) found at `bdf`, negotiating `wanted`,
    /// with its queue interrupt on MSI-X entry 0 → IDT vector `irq_vector` (None: polled,
    /// interrupts suppressed).
    pub fn open(n: usize, bdf: Bdf, wanted: u64, irq_vector: Option<u8>) -> Blk {
        let mut dev = Device::probe(bdf).unwrap_or_else(|| {
            crate::println!(
                "FAIL: device {}:{} has no virtio capabilities",
                bdf.dev,
                bdf.func
            );
            crate::io::exit(1)
        });
        let features = dev.init(wanted | F_VERSION_1).unwrap_or_else(|| {
            crate::println!("FAIL: device refused features {:#x}", wanted);
            crate::io::exit(1)
        });
        let vector = match irq_vector {
            Some(v) => {
                dev.msix_route(0, v);
                0
            }
            None => 0xffff,
        };
        let qmem = unsafe { &mut *core::ptr::addr_of_mut!(QUEUE_MEM[n]) };
        let mut q = dev.setup_queue(0, qmem, vector);
        q.suppress_interrupts(irq_vector.is_none());
        dev.driver_ok();
        Blk {
            dev,
            q,
            features,
            slots: unsafe { core::ptr::addr_of_mut!(SLOT_MEM[n]) },
            head_slot: [0; crate::virtio::QSIZE],
        }
    }

    pub fn capacity(&self) -> u64 {
        self.dev.config::<u32>(0) as u64 | (self.dev.config::<u32>(4) as u64) << 32
    }

    fn free_slot(&mut self) -> usize {
        let slots = unsafe { &mut *self.slots };
        match slots.iter().position(|s| !s.busy) {
            Some(i) => i,
            None => {
                crate::println!("FAIL: more than {} requests in flight", SLOTS);
                crate::io::exit(1)
            }
        }
    }

    /// Queues a request over the data buffers `bufs` (address, length); `dev_writes` = the
    /// device fills them (reads, get-id). Does not notify. Returns the slot.
    pub fn submit(&mut self, ty: u32, sector: u64, bufs: &[(u64, u32)], dev_writes: bool) -> usize {
        let i = self.free_slot();
        let slots = unsafe { &mut *self.slots };
        slots[i] = Slot {
            ty,
            reserved: 0,
            sector,
            status: 0xff,
            busy: true,
        };
        let hdr = &slots[i] as *const Slot as u64;
        let status = hdr + 16;
        let mut chain = [(0u64, 0u32, false); 18];
        chain[0] = (hdr, 16, false);
        for (j, &(a, l)) in bufs.iter().enumerate() {
            chain[1 + j] = (a, l, dev_writes);
        }
        chain[1 + bufs.len()] = (status, 1, true);
        let head = self.q.push(&chain[..bufs.len() + 2]);
        self.head_slot[head as usize] = i as u8;
        i
    }

    /// Next completed request: (slot, status, used length).
    pub fn poll(&mut self) -> Option<(usize, u8, u32)> {
        let (head, len) = self.q.poll()?;
        let i = self.head_slot[head as usize % crate::virtio::QSIZE] as usize;
        let slots = unsafe { &mut *self.slots };
        let st = unsafe { core::ptr::read_volatile(&slots[i].status) };
        slots[i].busy = false;
        Some((i, st, len))
    }

    pub fn wait(&mut self) -> (usize, u8, u32) {
        loop {
            if let Some(c) = self.poll() {
                return c;
            }
            core::hint::spin_loop();
        }
    }

    /// One request, synchronously: status.
    pub fn run(&mut self, ty: u32, sector: u64, bufs: &[(u64, u32)], dev_writes: bool) -> u8 {
        self.submit(ty, sector, bufs, dev_writes);
        self.q.notify();
        self.wait().1
    }
}
