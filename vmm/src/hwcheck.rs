//! Does guest kernel-mode code run at hardware speed? Runs a tiny real-mode (CPL0) loop in a
//! throw-away VM and the same loop on the host, and compares. On nested KVM without hardware
//! assistance CPL0 code is emulated instruction by instruction: thousands of times slower.

use crate::error::{Error, Result};
use kvm_ioctls::VcpuExit;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Slowdown above which a general OS guest is considered impractical.
pub const SLOWDOWN_LIMIT: f64 = 20.0;

#[derive(Clone, Copy, Debug)]
pub struct Speed {
    /// Guest CPL0 loop iterations per second.
    pub guest_per_sec: f64,
    /// The same loop on the host.
    pub host_per_sec: f64,
}

impl Speed {
    pub fn slowdown(&self) -> f64 {
        self.host_per_sec / self.guest_per_sec
    }
    pub fn hardware_assisted(&self) -> bool {
        self.slowdown() < SLOWDOWN_LIMIT
    }
    /// One line for users: what was measured and what follows.
    pub fn describe(&self) -> String {
        if self.hardware_assisted() {
            format!(
                "guest kernel code runs at hardware speed ({:.1}x the host's time)",
                self.slowdown()
            )
        } else {
            format!(
                "guest kernel code runs {:.0}x slower than the host ({:.2} M loop iterations/s vs {:.0} M): \
                 this KVM emulates guest CPL0 code (nested, no VT-x/AMD-V for the guest); \
                 a general OS guest would take hours to boot, guest test programs still run",
                self.slowdown(),
                self.guest_per_sec / 1e6,
                self.host_per_sec / 1e6
            )
        }
    }
}

fn host_loop(n: u32) -> Duration {
    let t = Instant::now();
    // SAFETY: register-only loop.
    unsafe {
        std::arch::asm!("2:", "dec {0:e}", "jnz 2b", inout(reg) n => _, options(nomem, nostack))
    };
    t.elapsed()
}

fn guest_loop(n: u32) -> Result<Duration> {
    let kvm = crate::vm::open_kvm()?;
    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)])
        .map_err(|e| Error::Memory(e.to_string()))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| Error::Memory(e.to_string()))?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0x10000,
        userspace_addr: host as u64,
    };
    // SAFETY: `mem` outlives the VM (dropped after it at the end of this function).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    // mov ecx, n; 1: dec ecx; jnz 1b; out 0xf4, al; hlt   (16-bit real mode)
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xe6, 0xf4, 0xf4]);
    mem.write_slice(&code, GuestAddress(0x1000))
        .map_err(|e| Error::Memory(e.to_string()))?;
    let mut vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
    let t = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0xf4, _)) => return Ok(t.elapsed()),
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Shutdown) => {
                return Err(Error::Memory(
                    "speed check guest stopped before its loop ended".into(),
                ))
            }
            Ok(_) => {}
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                return Err(Error::Kvm {
                    what: "KVM_RUN",
                    err: e,
                })
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(Error::Memory(
                "speed check guest did not finish in 30 s".into(),
            ));
        }
    }
}

/// Measures: a short loop first; where it is fast, a longer one so timer noise and the VM
/// entry cost do not dominate.
pub fn measure() -> Result<Speed> {
    let mut n = 50_000u32;
    let mut g = guest_loop(n)?;
    if g < Duration::from_millis(20) {
        n = 20_000_000;
        g = guest_loop(n)?;
    }
    let h = (0..3).map(|_| host_loop(n)).min().unwrap_or_default();
    let per_sec = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    Ok(Speed {
        guest_per_sec: per_sec(g),
        host_per_sec: per_sec(h),
    })
}
