//! Guest RAM: anonymous mappings registered with KVM, split around the 32-bit MMIO hole.

use crate::error::{Error, Result};
use crate::layout::*;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub type GuestMemory = GuestMemoryMmap<()>;

/// RAM ranges (start, length) for `size` bytes of guest memory.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_START), (HIGH_RAM_START, size - MMIO_START)]
    }
}

pub fn create(size: u64) -> Result<GuestMemory> {
    if !(MIN_MEM..=MAX_MEM).contains(&size) {
        return Err(Error::MemorySize(size >> 20));
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| Error::Memory(format!("cannot map {} MiB: {e}", size >> 20)))
}

pub fn register(vm: &VmFd, mem: &GuestMemory) -> Result<()> {
    for (slot, r) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(r.start_addr())
            .map_err(|e| Error::Memory(format!("region at {:#x}: {e}", r.start_addr().0)))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: host as u64,
        };
        // Transparent huge pages for guest RAM where the host allows them: fewer TLB misses
        // when devices copy into guest buffers. Advisory; failure changes nothing.
        // SAFETY: madvise on a mapping we own, with its exact bounds.
        unsafe {
            libc::madvise(
                host as *mut libc::c_void,
                r.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM (the Vm owns both and
        // drops the VmFd first), and regions never overlap.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// End of RAM below 4 GiB.
pub fn low_ram_end(mem: &GuestMemory) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().0 + r.len())
        .filter(|&e| e <= MMIO_START)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_around_the_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_START), (1 << 32, (4 << 30) - MMIO_START)]
        );
        assert!(matches!(create(1 << 20), Err(Error::MemorySize(1))));
    }
}
