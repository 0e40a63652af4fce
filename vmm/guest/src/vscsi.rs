//! virtio-scsi driver on top of `virtio`: control, event and request queues; commands with
//! a request header (flat LUN, 32-byte CDB) and a response (96 bytes of sense) per slot,
//! several in flight, completions by polling or the request queue's MSI-X interrupt.

use crate::pci::Bdf;
use crate::virtio::{Device, Queue, QueueMem, F_VERSION_1};

pub const SLOTS: usize = 16;
pub const CDB: usize = 32;
pub const SENSE: usize = 96;
pub const GOOD: u8 = 0;
pub const CHECK_CONDITION: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Req {
    pub lun: [u8; 8],
    /// Bytes, not a u64: the header is 51 bytes with no padding.
    pub tag: [u8; 8],
    pub attr: [u8; 3],
    pub cdb: [u8; CDB],
}

const _: () = assert!(core::mem::size_of::<Req>() == 19 + CDB);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Resp {
    pub sense_len: u32,
    pub resid: u32,
    pub qualifier: u16,
    pub status: u8,
    pub response: u8,
    pub sense: [u8; SENSE],
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Slot {
    req: Req,
    resp: Resp,
    busy: bool,
}

const EMPTY: Slot = Slot {
    req: Req {
        lun: [0; 8],
        tag: [0; 8],
        attr: [0; 3],
        cdb: [0; CDB],
    },
    resp: Resp {
        sense_len: 0,
        resid: 0,
        qualifier: 0,
        status: 0xff,
        response: 0xff,
        sense: [0; SENSE],
    },
    busy: false,
};

static mut SLOT_MEM: [Slot; SLOTS] = [EMPTY; SLOTS];
static mut QUEUE_MEM: [QueueMem; 3] = [QueueMem::new(), QueueMem::new(), QueueMem::new()];
static mut EVENTS: [[u8; 16]; 4] = [[0; 16]; 4];
static mut CTRL: ([u8; 24], [u8; 8]) = ([0; 24], [0; 8]);

/// A completed command.
#[derive(Clone, Copy)]
pub struct Done {
    pub slot: usize,
    /// Bytes the device wrote (response + data-in).
    pub used: u32,
    pub resp: Resp,
}

impl Done {
    pub fn data_in(&self) -> usize {
        self.used as usize - core::mem::size_of::<Resp>()
    }
    /// (sense key, ASC, ASCQ) of a CHECK CONDITION.
    pub fn sense(&self) -> (u8, u8, u8) {
        (
            self.resp.sense[2] & 0xf,
            self.resp.sense[12],
            self.resp.sense[13],
        )
    }
    pub fn sense_info(&self) -> i32 {
        i32::from_be_bytes([
            self.resp.sense[3],
            self.resp.sense[4],
            self.resp.sense[5],
            self.resp.sense[6],
        ])
    }
}

pub struct Scsi {
    pub dev: Device,
    pub ctrl: Queue,
    pub events: Queue,
    pub req: Queue,
    head_slot: [u8; crate::virtio::QSIZE],
}

pub fn lun_bytes(lun: u16) -> [u8; 8] {
    [1, 0, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}

impl Scsi {
    /// Initialises the controller at `bdf`; the request queue interrupts on MSI-X entry 0 →
    /// IDT vector `irq_vector` (None: polled, interrupts suppressed). Event buffers are
    /// posted as Linux does.
    pub fn open(bdf: Bdf, irq_vector: Option<u8>) -> Scsi {
        let mut dev = Device::probe(bdf).unwrap_or_else(|| {
            crate::println!(
                "FAIL: virtio-scsi at {}:{} has no virtio capabilities",
                bdf.dev,
                bdf.func
            );
            crate::io::exit(1)
        });
        dev.init(F_VERSION_1).unwrap_or_else(|| {
            crate::println!("FAIL: virtio-scsi refused VERSION_1");
            crate::io::exit(1)
        });
        // As Linux does: state the CDB and sense sizes this driver uses.
        crate::io::mmio_write::<u32>(dev.device_cfg + 24, CDB as u32);
        crate::io::mmio_write::<u32>(dev.device_cfg + 20, SENSE as u32);
        let vector = match irq_vector {
            Some(v) => {
                dev.msix_route(0, v);
                0
            }
            None => 0xffff,
        };
        let qm = |i: usize| unsafe { &mut *core::ptr::addr_of_mut!(QUEUE_MEM[i]) };
        let ctrl = dev.setup_queue(0, qm(0), 0xffff);
        let events = dev.setup_queue(1, qm(1), 0xffff);
        let mut req = dev.setup_queue(2, qm(2), vector);
        req.suppress_interrupts(irq_vector.is_none());
        dev.driver_ok();
        let mut s = Scsi {
            dev,
            ctrl,
            events,
            req,
            head_slot: [0; crate::virtio::QSIZE],
        };
        let events = unsafe { &*core::ptr::addr_of!(EVENTS) };
        for e in events {
            s.events.push(&[(e.as_ptr() as u64, 16, true)]);
        }
        s.events.notify();
        s
    }

    pub fn config_u32(&self, off: u64) -> u32 {
        self.dev.config::<u32>(off)
    }

    fn slots() -> &'static mut [Slot; SLOTS] {
        unsafe { &mut *core::ptr::addr_of_mut!(SLOT_MEM) }
    }

    /// Queues `cdb` for `lun` with data-out `out` and data-in buffers `into`; does not
    /// notify. Returns the slot.
    pub fn submit(
        &mut self,
        lun: u16,
        cdb: &[u8],
        out: &[(u64, u32)],
        into: &[(u64, u32)],
    ) -> usize {
        let slots = Self::slots();
        let Some(i) = slots.iter().position(|s| !s.busy) else {
            crate::println!("FAIL: more than {} commands in flight", SLOTS);
            crate::io::exit(1)
        };
        slots[i] = EMPTY;
        slots[i].busy = true;
        slots[i].req.lun = lun_bytes(lun);
        slots[i].req.tag = (i as u64).to_le_bytes();
        slots[i].req.cdb[..cdb.len()].copy_from_slice(cdb);
        let req = &slots[i].req as *const Req as u64;
        let resp = &slots[i].resp as *const Resp as u64;
        let mut chain = [(0u64, 0u32, false); 20];
        let mut n = 0;
        chain[n] = (req, core::mem::size_of::<Req>() as u32, false);
        n += 1;
        for &(a, l) in out {
            chain[n] = (a, l, false);
            n += 1;
        }
        chain[n] = (resp, core::mem::size_of::<Resp>() as u32, true);
        n += 1;
        for &(a, l) in into {
            chain[n] = (a, l, true);
            n += 1;
        }
        let head = self.req.push(&chain[..n]);
        self.head_slot[head as usize] = i as u8;
        i
    }

    pub fn poll(&mut self) -> Option<Done> {
        let (head, used) = self.req.poll()?;
        let i = self.head_slot[head as usize % crate::virtio::QSIZE] as usize;
        let slots = Self::slots();
        let resp = unsafe { core::ptr::read_volatile(&slots[i].resp) };
        slots[i].busy = false;
        Some(Done {
            slot: i,
            used,
            resp,
        })
    }

    /// Next completion: spinning, or sleeping until the request queue's interrupt.
    pub fn next(&mut self, irq: bool) -> Done {
        loop {
            let seen = crate::irq_count(0);
            if let Some(d) = self.poll() {
                return d;
            }
            if irq {
                crate::wait_irq(seen);
            } else {
                core::hint::spin_loop();
            }
        }
    }

    /// One command, synchronously, data-in into `buf` (if any).
    pub fn cmd(&mut self, lun: u16, cdb: &[u8], out: &[u8], buf: &mut [u8]) -> Done {
        let o = [(out.as_ptr() as u64, out.len() as u32)];
        let d = [(buf.as_mut_ptr() as u64, buf.len() as u32)];
        self.submit(
            lun,
            cdb,
            if out.is_empty() { &[] } else { &o },
            if buf.is_empty() { &[] } else { &d },
        );
        self.req.notify();
        self.next(false)
    }

    /// A task management function (LOGICAL UNIT RESET) on the control queue: its response.
    pub fn lun_reset(&mut self, lun: u16) -> u8 {
        let c = unsafe { &mut *core::ptr::addr_of_mut!(CTRL) };
        c.0 = [0; 24];
        c.0[4] = 5; // VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET
        c.0[8..16].copy_from_slice(&lun_bytes(lun));
        c.1 = [0xff; 8];
        self.ctrl.push(&[
            (c.0.as_ptr() as u64, 24, false),
            (c.1.as_ptr() as u64, 1, true),
        ]);
        self.ctrl.notify();
        loop {
            if self.ctrl.poll().is_some() {
                return unsafe { core::ptr::read_volatile(&c.1[0]) };
            }
            core::hint::spin_loop();
        }
    }
}
