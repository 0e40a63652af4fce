//! Does guest kernel-mode code run at hardware speed? Runs a tiny real-mode (CPL0) loop in a
//! throw-away VM and the same loop on the host, and compares. On nested KVM without hardware
//! assistance CPL0 code is emulated instruction by instruction: thousands of times slower.
//! The same throw-away VMs answer whether KVM can run XSAVE for guest kernel code and
//! whether the guest's CPUID can be made to hide it (`guest_cpu`).

use crate::error::{Error, Result};
use kvm_ioctls::VcpuExit;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// /dev/kvm, or the error saying why not (the VM and the probes here open it alike).
pub(crate) fn open_kvm() -> Result<kvm_ioctls::Kvm> {
    kvm_ioctls::Kvm::new().map_err(|e| Error::NoKvm(std::io::Error::from_raw_os_error(e.errno())))
}

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
                 a general OS guest boots in minutes, not seconds; guest test programs still run",
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

/// How a throw-away probe VM ended.
enum ProbeEnd {
    /// The code wrote to port 0xf4, after this long.
    Done(Duration),
    /// KVM could not emulate an instruction (KVM_EXIT_INTERNAL_ERROR).
    Unemulated,
    /// Anything else (halt, shutdown, ...).
    Other(String),
}

/// Runs 16-bit real-mode `code` at 0x1000 in a VM of 64 KiB; `setup` adjusts the vCPU
/// first. Bounded to 30 s.
fn probe(code: &[u8], setup: impl FnOnce(&kvm_ioctls::VcpuFd) -> Result<()>) -> Result<ProbeEnd> {
    probe_with_output(code, &std::cell::Cell::new(None), setup)
}

/// As `probe`; the last dword the code wrote to port 0xf5 goes to `out`.
fn probe_with_output(
    code: &[u8],
    out: &std::cell::Cell<Option<u32>>,
    setup: impl FnOnce(&kvm_ioctls::VcpuFd) -> Result<()>,
) -> Result<ProbeEnd> {
    let kvm = open_kvm()?;
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
    mem.write_slice(code, GuestAddress(0x1000))
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
    setup(&vcpu)?;
    let t = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0xf4, _)) => return Ok(ProbeEnd::Done(t.elapsed())),
            Ok(VcpuExit::IoOut(0xf5, d)) => {
                out.set(d.try_into().ok().map(u32::from_le_bytes));
            }
            Ok(VcpuExit::InternalError) => return Ok(ProbeEnd::Unemulated),
            Ok(VcpuExit::Hlt) => return Ok(ProbeEnd::Other("halt".into())),
            Ok(VcpuExit::Shutdown) => return Ok(ProbeEnd::Other("shutdown".into())),
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
            return Ok(ProbeEnd::Other("no end within 30 s".into()));
        }
    }
}

fn guest_loop(n: u32) -> Result<Duration> {
    // mov ecx, n; 1: dec ecx; jnz 1b; out 0xf4, al; hlt   (16-bit real mode)
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xe6, 0xf4, 0xf4]);
    match probe(&code, |_| Ok(()))? {
        ProbeEnd::Done(t) => Ok(t),
        ProbeEnd::Unemulated => Err(Error::Memory(
            "speed check guest: KVM could not emulate its loop".into(),
        )),
        ProbeEnd::Other(why) => Err(Error::Memory(format!(
            "speed check guest stopped before its loop ended ({why})"
        ))),
    }
}

/// What guest kernel code meets on this host's CPU, beyond speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestCpu {
    /// KVM offers XSAVE and `xsave`/`xrstor` run at CPL0 (with CR4.OSXSAVE set). Where KVM
    /// emulates CPL0 code and its emulator lacks them (nested KVM without hardware
    /// assistance), a guest that uses XSAVE stops at its first `xrstor`.
    pub xsave_runs: bool,
    /// Taking XSAVE out of the CPUID table the monitor gives KVM takes it out of what the
    /// guest's CPUID instruction reports. Where it does not (this PVM-style nested KVM
    /// reports some host features, XSAVE and AES among them, whatever the table says, while
    /// it takes other bits from the table), XSAVE can only be refused by telling the guest
    /// (Linux: `noxsave`).
    pub xsave_hideable: bool,
}

/// Probes both (two throw-away VMs of 64 KiB, a few milliseconds).
pub fn guest_cpu() -> Result<GuestCpu> {
    let kvm = open_kvm()?;
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let leaf1_ecx = |c: &kvm_bindings::CpuId| {
        c.as_slice()
            .iter()
            .find(|e| e.function == 1)
            .map_or(0, |e| e.ecx)
    };
    const XSAVE: u32 = 1 << 26;
    let xsave_runs = leaf1_ecx(&supported) & XSAVE != 0 && {
        // mov bx, 0x2000; mov eax, 3; xor edx, edx; xsave [bx]; xrstor [bx]; out 0xf4, al
        let code = [
            0xbb, 0x00, 0x20, 0x66, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x66, 0x31, 0xd2, 0x0f, 0xae,
            0x27, 0x0f, 0xae, 0x2f, 0xe6, 0xf4, 0xf4,
        ];
        let end = probe(&code, |vcpu| {
            vcpu.set_cpuid2(&supported)
                .map_err(Error::kvm("KVM_SET_CPUID2"))?;
            let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
            sregs.cr4 |= 1 << 18; // OSXSAVE
            vcpu.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))
        })?;
        matches!(end, ProbeEnd::Done(_))
    };
    // A table whose XSAVE bit is the opposite of the host's: which does the guest see?
    let host = std::arch::x86_64::__cpuid(1).ecx;
    let want = !host & XSAVE;
    let mut table = supported.clone();
    for e in table.as_mut_slice() {
        if e.function == 1 {
            e.ecx = (e.ecx & !XSAVE) | want;
        }
    }
    // mov eax, 1; cpuid; mov eax, ecx; out 0xf5, eax; out 0xf4, al; hlt
    let code = [
        0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2, 0x66, 0x89, 0xc8, 0x66, 0xe7, 0xf5, 0xe6,
        0xf4, 0xf4,
    ];
    let seen = std::cell::Cell::new(None);
    let end = probe_with_output(&code, &seen, |vcpu| {
        vcpu.set_cpuid2(&table)
            .map_err(Error::kvm("KVM_SET_CPUID2"))
    })?;
    let xsave_hideable =
        matches!(end, ProbeEnd::Done(_)) && seen.get().is_some_and(|ecx| ecx & XSAVE == want);
    Ok(GuestCpu {
        xsave_runs,
        xsave_hideable,
    })
}

/// Measures: a short loop first; where it is fast, a longer one so timer noise and the VM
/// entry cost do not dominate.
pub fn measure() -> Result<Speed> {
    let mut n = 50_000u32;
    let mut g = guest_loop(n)?;
    if g < Duration::from_millis(20) {
        // Aim at ~50 ms for the second run, whatever the speed turned out to be.
        let scaled = n as f64 * 0.05 / g.as_secs_f64().max(1e-6);
        n = scaled.clamp(n as f64, 20_000_000.0) as u32;
        g = guest_loop(n)?;
    }
    let h = (0..3).map(|_| host_loop(n)).min().unwrap_or_default();
    let per_sec = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    Ok(Speed {
        guest_per_sec: per_sec(g),
        host_per_sec: per_sec(h),
    })
}
