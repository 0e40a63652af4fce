//! AVIO: virtio 1.x devices over PCI. The transport (`pci`) owns the register layout, queue
//! configuration and MSI-X; a device model (`block`, `net`) owns its config space and does
//! its queue work on an I/O thread, woken by ioeventfds and signalling through irqfds.

pub mod block;
pub mod net;

pub mod pci;
pub mod scsi;
pub mod tap;

mod worker;

use crate::memory::GuestMemory;
use crate::pci::msix::Msix;
use std::sync::{Arc, Mutex};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use worker::Worker;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
/// "No vector" for MSI-X queue/config vectors.
pub const NO_VECTOR: u16 = 0xffff;

/// How a device model tells the driver that a queue has used buffers.
pub trait QueueInterrupt: Send + Sync {
    fn signal(&self, queue: usize);
}

/// MSI-X backed: each queue's vector as the driver set it before DRIVER_OK.
pub struct MsixInterrupt {
    pub msix: Arc<Mutex<Msix>>,
    pub vectors: Vec<u16>,
}

impl QueueInterrupt for MsixInterrupt {
    fn signal(&self, queue: usize) {
        if let Some(&v) = self.vectors.get(queue) {
            if v != NO_VECTOR {
                self.msix
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .trigger(v);
            }
        }
    }
}

/// What a device model gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    /// One per queue: written (by KVM, via ioeventfd) when the driver notifies the queue.
    pub kicks: Vec<EventFd>,
    pub interrupt: Arc<dyn QueueInterrupt>,
    pub features: u64,
}

pub trait VirtioDevice: Send {
    /// Virtio device type (1 = net, 2 = block).
    fn device_type(&self) -> u16;
    /// PCI class, subclass.
    fn pci_class(&self) -> (u8, u8);
    fn queue_max_sizes(&self) -> Vec<u16>;
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device's I/O work.
    fn activate(&mut self, a: Activation) -> crate::Result<()>;
    /// Stops the I/O work (driver reset or VM teardown).
    fn reset(&mut self);
}

/// Reads `data.len()` bytes at `offset` from a config structure given as bytes; reads past
/// its end return zeros.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| cfg.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    /// A descriptor (not yet linked) for `mock_queue`.
    pub(crate) fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// A queue at 0x4000 holding `chains`, each linked (NEXT on all but the last, `next` =
    /// absolute table index) and made available in order.
    pub(crate) fn mock_queue<'a>(
        mem: &'a GuestMemory,
        chains: &[Vec<RawDescriptor>],
    ) -> (MockSplitQueue<'a, GuestMemory>, Queue) {
        let vq = MockSplitQueue::create(mem, GuestAddress(0x4000), 32);
        let mut offset = 0;
        for c in chains {
            let linked: Vec<RawDescriptor> = c
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let s = SplitDescriptor::from(*r);
                    let last = i + 1 == c.len();
                    let flags = if last {
                        s.flags()
                    } else {
                        s.flags() | VRING_DESC_F_NEXT as u16
                    };
                    let next = if last { 0 } else { offset + i as u16 + 1 };
                    RawDescriptor::from(SplitDescriptor::new(s.addr().0, s.len(), flags, next))
                })
                .collect();
            vq.add_desc_chains(&linked, offset).unwrap();
            offset += c.len() as u16;
        }
        let queue: Queue = vq.create_queue().unwrap();
        (vq, queue)
    }
}
