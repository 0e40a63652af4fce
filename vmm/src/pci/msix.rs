//! MSI-X: the vector table and pending bits a device exposes in a BAR, each vector backed by
//! a KVM irqfd on its own GSI whose MSI route follows what the guest writes in the table.

use crate::error::Result;
use crate::irq::{MsiMessage, MsiRouter};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

pub const CAP_ID: u8 = 0x11;
const CTL_ENABLE: u16 = 1 << 15;
const CTL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;

#[derive(Clone, Copy, Default, Debug)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctl: u32,
}

pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    enabled: bool,
    function_masked: bool,
    router: Arc<dyn MsiRouter>,
    /// Interrupts delivered (not counting those held pending), for tests and benchmarks.
    pub delivered: u64,
}

impl Msix {
    pub fn new(vectors: u16, router: Arc<dyn MsiRouter>) -> Result<Msix> {
        let mut gsis = Vec::new();
        let mut irqfds = Vec::new();
        for _ in 0..vectors {
            let gsi = router.allocate_gsi();
            let fd = EventFd::new(libc::EFD_NONBLOCK)?;
            router.register_irqfd(&fd, gsi)?;
            gsis.push(gsi);
            irqfds.push(fd);
        }
        Ok(Msix {
            entries: vec![
                Entry {
                    ctl: ENTRY_MASKED,
                    ..Default::default()
                };
                vectors as usize
            ],
            pending: vec![false; vectors as usize],
            gsis,
            irqfds,
            enabled: false,
            function_masked: false,
            router,
            delivered: 0,
        })
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * 16
    }

    /// Capability body (after id/next) for a table at `table_off` and PBA at `pba_off` in BAR
    /// `bar`, and its write mask (only enable and function mask are writable).
    pub fn capability(&self, bar: u8, table_off: u32, pba_off: u32) -> ([u8; 10], [u8; 10]) {
        let mut b = [0u8; 10];
        b[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        b[2..6].copy_from_slice(&(table_off | bar as u32).to_le_bytes());
        b[6..10].copy_from_slice(&(pba_off | bar as u32).to_le_bytes());
        let mut m = [0u8; 10];
        m[1] = 0xc0;
        (b, m)
    }

    /// The guest wrote the message control word.
    pub fn set_control(&mut self, ctl: u16) {
        self.enabled = ctl & CTL_ENABLE != 0;
        self.function_masked = ctl & CTL_FUNCTION_MASK != 0;
        if self.enabled {
            for v in 0..self.entries.len() {
                self.update_route(v);
            }
        }
        self.deliver_pending();
    }

    fn masked(&self, v: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[v].ctl & ENTRY_MASKED != 0
    }

    fn update_route(&mut self, v: usize) {
        let e = self.entries[v];
        let msg = MsiMessage {
            addr: (e.addr_hi as u64) << 32 | e.addr_lo as u64,
            data: e.data,
        };
        if let Err(err) = self.router.set_msi_route(self.gsis[v], Some(msg)) {
            tracing::warn!(vector = v, %err, "cannot update MSI route");
        }
    }

    fn deliver_pending(&mut self) {
        for v in 0..self.entries.len() {
            if self.pending[v] && !self.masked(v) {
                self.pending[v] = false;
                self.fire(v);
            }
        }
    }

    fn fire(&mut self, v: usize) {
        if self.irqfds[v].write(1).is_ok() {
            self.delivered += 1;
        }
    }

    /// Raises vector `v` (held pending while masked). Out-of-range vectors (a guest may
    /// program any number, 0xffff meaning none) are ignored.
    pub fn trigger(&mut self, v: u16) {
        let v = v as usize;
        if v >= self.entries.len() {
            return;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.fire(v);
        }
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let v = (offset / 16) as usize;
        let word = (offset % 16) / 4;
        let val = match self.entries.get(v) {
            Some(e) => [e.addr_lo, e.addr_hi, e.data, e.ctl][word as usize],
            None => 0,
        };
        read_part(val as u64, offset % 4, data);
        if data.len() == 8 && offset % 16 < 12 {
            // A 64-bit read covers two words.
            if let Some(e) = self.entries.get(v) {
                let next = [e.addr_lo, e.addr_hi, e.data, e.ctl][word as usize + 1];
                data.copy_from_slice(&((next as u64) << 32 | val as u64).to_le_bytes());
            }
        }
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let v = (offset / 16) as usize;
        if v >= self.entries.len()
            || !offset.is_multiple_of(4)
            || !(data.len() == 4 || data.len() == 8)
        {
            return;
        }
        for (word, chunk) in (((offset % 16) / 4) as usize..).zip(data.chunks(4)) {
            if word > 3 {
                break;
            }
            let val = u32::from_le_bytes(chunk.try_into().unwrap());
            let e = &mut self.entries[v];
            match word {
                0 => e.addr_lo = val,
                1 => e.addr_hi = val,
                2 => e.data = val,
                _ => e.ctl = val & ENTRY_MASKED,
            }
        }
        if self.enabled {
            self.update_route(v);
        }
        self.deliver_pending();
    }

    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let mut bits = 0u64;
        let base = (offset / 8) as usize * 64;
        for i in 0..64 {
            if self.pending.get(base + i).copied().unwrap_or(false) {
                bits |= 1 << i;
            }
        }
        read_part(bits, offset % 8, data);
    }
}

fn read_part(val: u64, shift: u64, data: &mut [u8]) {
    let bytes = val.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(shift as usize + i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records routes instead of programming KVM.
    #[derive(Default)]
    pub struct FakeRouter {
        pub routes: Mutex<Vec<(u32, Option<MsiMessage>)>>,
        next: Mutex<u32>,
    }
    impl MsiRouter for FakeRouter {
        fn allocate_gsi(&self) -> u32 {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            23 + *n
        }
        fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<()> {
            self.routes.lock().unwrap().push((gsi, msg));
            Ok(())
        }
        fn register_irqfd(&self, _: &EventFd, _: u32) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let router = Arc::new(FakeRouter::default());
        let mut m = Msix::new(2, router.clone()).unwrap();
        m.trigger(1);
        assert!(
            m.irqfds[1].read().is_err(),
            "disabled MSI-X must not deliver"
        );
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.set_control(CTL_ENABLE);
        m.table_write(16, &0xfee0_0000u32.to_le_bytes());
        m.table_write(24, &0x41u32.to_le_bytes());
        assert!(m.irqfds[1].read().is_err(), "entry still masked");
        m.table_write(28, &0u32.to_le_bytes());
        assert_eq!(
            m.irqfds[1].read().unwrap(),
            1,
            "pending vector fires on unmask"
        );
        let last = *router.routes.lock().unwrap().last().unwrap();
        assert_eq!(
            last,
            (
                25,
                Some(MsiMessage {
                    addr: 0xfee0_0000,
                    data: 0x41
                })
            )
        );
        m.trigger(1);
        assert_eq!(m.irqfds[1].read().unwrap(), 1);
        m.trigger(7);
        m.trigger(0xffff);
        m.table_write(0x1000, &[0; 4]);
        m.table_write(3, &[0; 4]);
        let mut d = [0u8; 4];
        m.table_read(24, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x41);
        m.table_read(0x1000, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
