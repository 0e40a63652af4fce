//! The virtio-pci modern transport: one 32-bit memory BAR holding the common configuration,
//! ISR, device configuration, notification area and the MSI-X table and PBA, described by
//! vendor capabilities. Queue notifications are ioeventfds on the notify addresses.

use super::{Activation, MsixInterrupt, VirtioDevice, NO_VECTOR, VIRTIO_F_VERSION_1};
use crate::error::Result;
use crate::irq::MsiRouter;
use crate::memory::GuestMemory;
use crate::pci::config::{BarKind, Ids, PciConfig, BAR0};
use crate::pci::msix::{self, Msix};
use crate::pci::PciDevice;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;

const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_NEEDS_RESET: u8 = 0x40;
const S_FAILED: u8 = 0x80;

/// Registers ioeventfds for notify addresses (KVM in a VM; a recorder in unit tests).
pub trait NotifyRegistrar: Send + Sync {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<()>;
    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<()>;
}

impl NotifyRegistrar for kvm_ioctls::VmFd {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<()> {
        self.register_ioevent(
            fd,
            &kvm_ioctls::IoEventAddress::Mmio(addr),
            kvm_ioctls::NoDatamatch,
        )
        .map_err(crate::Error::kvm("KVM_IOEVENTFD"))
    }
    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<()> {
        self.unregister_ioevent(
            fd,
            &kvm_ioctls::IoEventAddress::Mmio(addr),
            kvm_ioctls::NoDatamatch,
        )
        .map_err(crate::Error::kvm("KVM_IOEVENTFD deassign"))
    }
}

#[derive(Clone, Copy)]
struct QueueConfig {
    max: u16,
    size: u16,
    enabled: bool,
    vector: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

pub struct VirtioPci {
    config: PciConfig,
    msix_cap: usize,
    msix: Arc<Mutex<Msix>>,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    notify: Arc<dyn NotifyRegistrar>,
    kicks: Vec<EventFd>,
    /// BAR0 address the ioeventfds are registered at, if any.
    registered_at: Option<u64>,
    queues: Vec<QueueConfig>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    active: bool,
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let cap_len = if extra.is_some() { 20u8 } else { 16 };
    let mut b = vec![cap_len, cfg_type, 0, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

impl VirtioPci {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        bar_addr: u64,
        mem: GuestMemory,
        router: Arc<dyn MsiRouter>,
        notify: Arc<dyn NotifyRegistrar>,
    ) -> Result<VirtioPci> {
        let sizes = device.queue_max_sizes();
        let (class, subclass) = device.pci_class();
        let dtype = device.device_type();
        let mut config = PciConfig::new(Ids {
            vendor: 0x1af4,
            device: 0x1040 + dtype,
            class,
            subclass,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.add_bar(0, BAR_SIZE, BarKind::Mem32, bar_addr);
        let nq = sizes.len() as u64;
        config.add_capability(0x09, &vendor_cap(1, COMMON, COMMON_LEN, None), &[]);
        config.add_capability(0x09, &vendor_cap(3, ISR, 1, None), &[]);
        config.add_capability(0x09, &vendor_cap(4, DEVICE, DEVICE_LEN, None), &[]);
        config.add_capability(
            0x09,
            &vendor_cap(
                2,
                NOTIFY,
                nq * NOTIFY_MULTIPLIER as u64,
                Some(NOTIFY_MULTIPLIER),
            ),
            &[],
        );
        // One vector per queue plus one for configuration changes.
        let msix = Msix::new(sizes.len() as u16 + 1, router)?;
        let (body, mask) = msix.capability(0, MSIX_TABLE as u32, MSIX_PBA as u32);
        let msix_cap = config.add_capability(msix::CAP_ID, &body, &mask);
        let kicks = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        let queues = sizes
            .iter()
            .map(|&max| QueueConfig {
                max,
                size: max,
                enabled: false,
                vector: NO_VECTOR,
                desc: 0,
                avail: 0,
                used: 0,
            })
            .collect();
        Ok(VirtioPci {
            config,
            msix_cap,
            msix: Arc::new(Mutex::new(msix)),
            device,
            mem,
            notify,
            kicks,
            registered_at: None,
            queues,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            active: false,
        })
    }

    pub fn msix(&self) -> Arc<Mutex<Msix>> {
        self.msix.clone()
    }

    /// Keeps the ioeventfds on the notify addresses of wherever BAR0 currently decodes.
    fn sync_ioeventfds(&mut self) {
        let now = self.config.mem_bar(0).map(|(a, _)| a);
        if now == self.registered_at {
            return;
        }
        if let Some(old) = self.registered_at.take() {
            for (q, fd) in self.kicks.iter().enumerate() {
                let _ = self
                    .notify
                    .unregister(fd, old + NOTIFY + q as u64 * NOTIFY_MULTIPLIER as u64);
            }
        }
        if let Some(base) = now {
            let mut ok = true;
            for (q, fd) in self.kicks.iter().enumerate() {
                if let Err(e) = self
                    .notify
                    .register(fd, base + NOTIFY + q as u64 * NOTIFY_MULTIPLIER as u64)
                {
                    // Notifications still work, through MMIO exits (see bar_write).
                    tracing::warn!(error = %e, "cannot register ioeventfd");
                    ok = false;
                }
            }
            if ok {
                self.registered_at = Some(base);
            }
        }
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.msix_config = NO_VECTOR;
        for q in &mut self.queues {
            *q = QueueConfig {
                max: q.max,
                size: q.max,
                enabled: false,
                vector: NO_VECTOR,
                desc: 0,
                avail: 0,
                used: 0,
            };
        }
    }

    fn set_status(&mut self, s: u8) {
        if s == 0 {
            self.reset();
            return;
        }
        let mut s = s;
        if s & S_FEATURES_OK != 0 && self.status & S_FEATURES_OK == 0 {
            let ok = self.driver_features & !self.offered_features() == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                tracing::debug!(
                    features = format_args!("{:#x}", self.driver_features),
                    "driver features refused"
                );
                s &= !S_FEATURES_OK;
            }
        }
        let was_ok = self.status & S_DRIVER_OK != 0;
        self.status = s;
        if s & S_DRIVER_OK != 0 && !was_ok && s & S_FAILED == 0 && !self.active {
            if let Err(e) = self.activate() {
                tracing::warn!(error = %e, "device activation failed");
                self.status |= S_NEEDS_RESET;
            }
        }
    }

    fn activate(&mut self) -> Result<()> {
        if self.status & S_FEATURES_OK == 0 {
            return Err(crate::Error::Memory(
                "driver set DRIVER_OK without FEATURES_OK".into(),
            ));
        }
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        let mut vectors = Vec::new();
        for (i, qc) in self.queues.iter().enumerate() {
            let mut q = Queue::new(qc.max)
                .map_err(|e| crate::Error::Memory(format!("queue {i}: {e:?}")))?;
            q.set_size(qc.size);
            q.set_desc_table_address(Some(qc.desc as u32), Some((qc.desc >> 32) as u32));
            q.set_avail_ring_address(Some(qc.avail as u32), Some((qc.avail >> 32) as u32));
            q.set_used_ring_address(Some(qc.used as u32), Some((qc.used >> 32) as u32));
            q.set_event_idx(self.driver_features & super::VIRTIO_F_RING_EVENT_IDX != 0);
            q.set_ready(qc.enabled);
            if qc.enabled && !q.is_valid(&self.mem) {
                return Err(crate::Error::Memory(format!(
                    "queue {i}: ring addresses outside guest memory"
                )));
            }
            queues.push(q);
            kicks.push(self.kicks[i].try_clone()?);
            vectors.push(qc.vector);
        }
        let interrupt = Arc::new(MsixInterrupt {
            msix: self.msix.clone(),
            vectors,
        });
        self.device.activate(Activation {
            mem: self.mem.clone(),
            queues,
            kicks,
            interrupt,
            features: self.driver_features,
        })?;
        self.active = true;
        Ok(())
    }

    fn common_read(&self, off: u64, data: &mut [u8]) {
        let q = self.queues.get(self.queue_select as usize);
        let v: u64 = match (off, data.len()) {
            (0x00, 4) => self.device_feature_select as u64,
            (0x04, 4) => match self.device_feature_select {
                0 => self.offered_features() & 0xffff_ffff,
                1 => self.offered_features() >> 32,
                _ => 0,
            },
            (0x08, 4) => self.driver_feature_select as u64,
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => self.msix_config as u64,
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => self.status as u64,
            (0x15, 1) => self.config_generation as u64,
            (0x16, 2) => self.queue_select as u64,
            (0x18, 2) => q.map_or(0, |q| q.size as u64),
            (0x1a, 2) => q.map_or(NO_VECTOR as u64, |q| q.vector as u64),
            (0x1c, 2) => q.map_or(0, |q| q.enabled as u64),
            (0x1e, 2) => self.queue_select as u64,
            (0x20, 4) | (0x20, 8) => q.map_or(0, |q| q.desc),
            (0x24, 4) => q.map_or(0, |q| q.desc >> 32),
            (0x28, 4) | (0x28, 8) => q.map_or(0, |q| q.avail),
            (0x2c, 4) => q.map_or(0, |q| q.avail >> 32),
            (0x30, 4) | (0x30, 8) => q.map_or(0, |q| q.used),
            (0x34, 4) => q.map_or(0, |q| q.used >> 32),
            _ => 0,
        };
        for (i, d) in data.iter_mut().enumerate() {
            *d = v.to_le_bytes().get(i).copied().unwrap_or(0);
        }
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        if data.len() > 8 {
            return;
        }
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let live = self.status & S_DRIVER_OK != 0;
        let sel = self.queue_select as usize;
        let set_lo = |x: &mut u64, v: u64| *x = (*x & !0xffff_ffff) | (v & 0xffff_ffff);
        let set_hi = |x: &mut u64, v: u64| *x = (*x & 0xffff_ffff) | (v << 32);
        match (off, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if self.status & S_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => set_lo(&mut self.driver_features, v),
                1 => set_hi(&mut self.driver_features, v),
                _ => {}
            },
            (0x10, 2) => self.msix_config = v as u16,
            (0x14, 1) => self.set_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            // Queue registers are frozen once the device is live.
            _ if live => {}
            (0x18, 2) => {
                if let Some(q) = self.queues.get_mut(sel) {
                    // Split queues: a power of two up to the maximum.
                    let s = v as u16;
                    if s.is_power_of_two() && s <= q.max {
                        q.size = s;
                    }
                }
            }
            (0x1a, 2) => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.vector = v as u16;
                }
            }
            (0x1c, 2) => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.enabled = v == 1;
                }
            }
            (0x20, 4)
            | (0x24, 4)
            | (0x28, 4)
            | (0x2c, 4)
            | (0x30, 4)
            | (0x34, 4)
            | (0x20, 8)
            | (0x28, 8)
            | (0x30, 8) => {
                if let Some(q) = self.queues.get_mut(sel) {
                    let field = match off & !7 {
                        0x20 => &mut q.desc,
                        0x28 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    match (off % 8, data.len()) {
                        (0, 8) => *field = v,
                        (0, _) => set_lo(field, v),
                        _ => set_hi(field, v),
                    }
                }
            }
            _ => {}
        }
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data);
        let start = reg * 4 + offset;
        let end = start + data.len();
        if start < self.msix_cap + 4 && end > self.msix_cap {
            let ctl = self.config.get16(self.msix_cap + 2);
            self.msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_control(ctl);
        }
        // Command register (memory decoding) or BAR0 moved.
        if start < BAR0 + 4 && end > 4 {
            self.sync_ioeventfds();
        }
    }

    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match off {
            o if o < COMMON + COMMON_LEN => self.common_read(o, data),
            ISR => {
                // MSI-X only: the ISR has nothing to report.
            }
            o if (DEVICE..DEVICE + DEVICE_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE, data)
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .table_read(o - MSIX_TABLE, data),
            o if (MSIX_PBA..BAR_SIZE).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pba_read(o - MSIX_PBA, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match off {
            o if o < COMMON + COMMON_LEN => self.common_write(o, data),
            o if (DEVICE..DEVICE + DEVICE_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE, data)
            }
            o if (NOTIFY..MSIX_TABLE).contains(&o) => {
                // Reaches us only where no ioeventfd is registered: forward to the device.
                if let Some(k) = self
                    .kicks
                    .get(((o - NOTIFY) / NOTIFY_MULTIPLIER as u64) as usize)
                {
                    let _ = k.write(1);
                }
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .table_write(o - MSIX_TABLE, data),
            _ => {}
        }
    }
}

impl Drop for VirtioPci {
    fn drop(&mut self) {
        self.device.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::msix::tests::FakeRouter;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(bool, u64)>>);
    impl NotifyRegistrar for Recorder {
        fn register(&self, _: &EventFd, addr: u64) -> Result<()> {
            self.0.lock().unwrap().push((true, addr));
            Ok(())
        }
        fn unregister(&self, _: &EventFd, addr: u64) -> Result<()> {
            self.0.lock().unwrap().push((false, addr));
            Ok(())
        }
    }

    struct Dummy(Arc<Mutex<Option<(usize, u64)>>>);
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u16 {
            2
        }
        fn pci_class(&self) -> (u8, u8) {
            (1, 0x80)
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 16]
        }
        fn features(&self) -> u64 {
            1 << 9
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn activate(&mut self, a: Activation) -> Result<()> {
            *self.0.lock().unwrap() = Some((a.queues.len(), a.features));
            Ok(())
        }
        fn reset(&mut self) {
            *self.0.lock().unwrap() = None;
        }
    }

    fn w(d: &mut VirtioPci, off: u64, v: u64, len: usize) {
        d.bar_write(0, off, &v.to_le_bytes()[..len]);
    }
    fn r(d: &mut VirtioPci, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.bar_read(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn negotiation_queue_setup_activation_and_reset() {
        let mem = crate::fuzzing::memory();
        let state = Arc::new(Mutex::new(None));
        let notify = Arc::new(Recorder::default());
        let mut d = VirtioPci::new(
            Box::new(Dummy(state.clone())),
            0xc000_0000,
            mem,
            Arc::new(FakeRouter::default()),
            notify.clone(),
        )
        .unwrap();
        assert_eq!(d.config().read(0), 0x1042_1af4);
        // Enabling memory decoding registers one ioeventfd per queue on the notify area.
        d.config_write(1, 0, &[0x06, 0]);
        assert_eq!(
            *notify.0.lock().unwrap(),
            vec![(true, 0xc000_3000), (true, 0xc000_3004)]
        );
        assert_eq!(r(&mut d, 0x12, 2), 2);
        w(&mut d, 0x00, 1, 4);
        assert_eq!(r(&mut d, 0x04, 4), 1, "VERSION_1 offered");
        w(&mut d, 0x14, 1 | 2, 1);
        // Features the device did not offer are refused at FEATURES_OK.
        w(&mut d, 0x08, 0, 4);
        w(&mut d, 0x0c, 1 << 3, 4);
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 1 | 2 | 8, 1);
        assert_eq!(r(&mut d, 0x14, 1) & 8, 0, "FEATURES_OK must not stick");
        w(&mut d, 0x14, 0, 1);
        w(&mut d, 0x14, 1 | 2, 1);
        w(&mut d, 0x08, 0, 4);
        w(&mut d, 0x0c, 1 << 9, 4);
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 1 | 2 | 8, 1);
        assert_eq!(r(&mut d, 0x14, 1), 1 | 2 | 8);
        for q in 0..2u64 {
            w(&mut d, 0x16, q, 2);
            w(&mut d, 0x18, 8, 2);
            w(&mut d, 0x18, 5, 2); // not a power of two: ignored
            assert_eq!(r(&mut d, 0x18, 2), 8);
            w(&mut d, 0x20, 0x1000 * (q + 1), 4);
            w(&mut d, 0x24, 0, 4);
            w(&mut d, 0x28, 0x8000 + 0x1000 * q, 8);
            w(&mut d, 0x30, 0xa000 + 0x1000 * q, 4);
            w(&mut d, 0x1c, 1, 2);
            w(&mut d, 0x1a, q, 2);
        }
        assert_eq!(r(&mut d, 0x28, 4), 0x9000);
        w(&mut d, 0x14, 1 | 2 | 8 | 4, 1);
        assert_eq!(
            *state.lock().unwrap(),
            Some((2, VIRTIO_F_VERSION_1 | 1 << 9))
        );
        // Live queues are frozen.
        w(&mut d, 0x18, 4, 2);
        assert_eq!(r(&mut d, 0x18, 2), 8);
        assert_eq!(r(&mut d, DEVICE + 2, 2), 0x0403);
        w(&mut d, 0x14, 0, 1);
        assert!(state.lock().unwrap().is_none(), "reset stops the device");
        assert_eq!(r(&mut d, 0x14, 1), 0);
        // Odd accesses do not panic.
        d.bar_write(0, 0x7fff, &[1; 8]);
        d.bar_read(0, 0x14, &mut [0; 16]);
        d.bar_write(0, 0x0c, &[1; 16]);
    }
}
