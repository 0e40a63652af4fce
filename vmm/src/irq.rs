//! KVM GSI routing. `KVM_SET_GSI_ROUTING` replaces the whole table, including the default
//! PIC/IOAPIC routes for the legacy lines, so this keeps the full table (legacy routes plus
//! one MSI route per MSI-X vector in use) and pushes all of it on every change.

use crate::error::{Error, Result};
use crate::layout::IOAPIC_PINS;
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Where an MSI goes: the address/data pair the guest wrote into an MSI-X table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// Something that can update MSI routes: KVM in a VM, a recorder in unit tests.
pub trait MsiRouter: Send + Sync {
    fn allocate_gsi(&self) -> u32;
    /// Routes `gsi` to `msg`, or removes its route with None.
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<()>;
    /// Makes writes to `fd` inject `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
}

pub struct KvmRouter {
    vm: Arc<VmFd>,
    next_gsi: AtomicU32,
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl KvmRouter {
    pub fn new(vm: Arc<VmFd>) -> KvmRouter {
        KvmRouter {
            vm,
            next_gsi: AtomicU32::new(IOAPIC_PINS),
            msi: Mutex::new(BTreeMap::new()),
        }
    }

    /// The table KVM starts with (irq_comm.c default routing) plus our MSI routes.
    fn table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
        let mut t = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            if gsi < 8 {
                t.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if gsi < 16 {
                t.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            t.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, m) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.addr as u32;
            e.u.msi.address_hi = (m.addr >> 32) as u32;
            e.u.msi.data = m.data;
            t.push(e);
        }
        t
    }

    fn push(&self, msi: &BTreeMap<u32, MsiMessage>) -> Result<()> {
        let table = Self::table(msi);
        let mut routing =
            KvmIrqRouting::new(0).map_err(|e| Error::Memory(format!("routing table: {e:?}")))?;
        for e in table {
            routing
                .push(e)
                .map_err(|e| Error::Memory(format!("routing table: {e:?}")))?;
        }
        self.vm
            .set_gsi_routing(&routing)
            .map_err(Error::kvm("KVM_SET_GSI_ROUTING"))
    }

    /// Installs the legacy routes explicitly (same as KVM's defaults).
    pub fn init(&self) -> Result<()> {
        self.push(&self.msi.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl MsiRouter for KvmRouter {
    fn allocate_gsi(&self) -> u32 {
        self.next_gsi.fetch_add(1, Ordering::Relaxed)
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<()> {
        let mut msi = self.msi.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match msg {
            Some(m) => msi.insert(gsi, m) != Some(m),
            None => msi.remove(&gsi).is_some(),
        };
        if changed {
            self.push(&msi)?;
        }
        Ok(())
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_legacy_routes_next_to_msi() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                addr: 0xfee0_0000,
                data: 0x41,
            },
        );
        let t = KvmRouter::table(&msi);
        // 16 PIC + 24 IOAPIC + 1 MSI
        assert_eq!(t.len(), 16 + 24 + 1);
        let ioapic4 = t.iter().find(|e| {
            e.gsi == 4
                && e.type_ == KVM_IRQ_ROUTING_IRQCHIP
                && unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC
        });
        assert!(ioapic4.is_some());
        let m = t.last().unwrap();
        assert_eq!(
            (m.gsi, m.type_, unsafe { m.u.msi.data }),
            (24, KVM_IRQ_ROUTING_MSI, 0x41)
        );
    }
}
