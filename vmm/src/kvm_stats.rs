//! KVM's binary statistics (KVM_GET_STATS_FD, Linux 5.14+): the per-vCPU `exits` counter,
//! which also counts exits KVM handles itself (ioeventfd notifications, interrupt windows),
//! unlike the monitor's own count of exits that reach userspace; and `insn_emulation`, the
//! instructions KVM's emulator ran (on a host that emulates guest CPL0 code: nearly all of
//! the guest kernel's).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;

/// Reads one named u64 counter from a vCPU's stats fd.
pub struct VcpuCounter {
    file: File,
    offset: u64,
}

impl VcpuCounter {
    /// None if this KVM has no binary stats or no counter called `name`.
    pub fn open(vcpu: &kvm_ioctls::VcpuFd, name: &str) -> Option<VcpuCounter> {
        // SAFETY: ioctl without argument on a vCPU fd; returns a new fd we own.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
        if fd < 0 {
            return None;
        }
        let file = unsafe { File::from_raw_fd(fd) };
        let mut hdr = [0u8; 24];
        file.read_exact_at(&mut hdr, 0).ok()?;
        let u = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap()) as u64;
        let (name_size, num_desc, desc_off, data_off) = (u(1), u(2), u(4), u(5));
        let desc_size = 16 + name_size;
        for i in 0..num_desc.min(4096) {
            let mut d = vec![0u8; desc_size as usize];
            file.read_exact_at(&mut d, desc_off + i * desc_size).ok()?;
            let end = d[16..].iter().position(|&b| b == 0).unwrap_or(d.len() - 16);
            if &d[16..16 + end] == name.as_bytes() {
                let off = u32::from_le_bytes(d[8..12].try_into().unwrap()) as u64;
                return Some(VcpuCounter {
                    file,
                    offset: data_off + off,
                });
            }
        }
        None
    }

    pub fn read(&self) -> Option<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, self.offset).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// The counters the monitor reports for one vCPU.
pub struct VcpuStats {
    pub exits: Option<VcpuCounter>,
    pub emulated: Option<VcpuCounter>,
}

impl VcpuStats {
    pub fn open(vcpu: &kvm_ioctls::VcpuFd) -> VcpuStats {
        VcpuStats {
            exits: VcpuCounter::open(vcpu, "exits"),
            emulated: VcpuCounter::open(vcpu, "insn_emulation"),
        }
    }
}
