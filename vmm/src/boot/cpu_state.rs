//! Boot CPU state for the 64-bit entry: flat GDT, identity paging of the first 4 GiB in
//! 2 MiB user-accessible pages (so guest test programs may run at CPL3 without their own
//! tables; Linux replaces them), long mode, SSE enabled, FPU/MSR/LAPIC defaults.

use crate::error::{Error, Result};
use crate::layout::*;
use crate::memory::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff, // 0x08: 64-bit code
    0x00cf_9300_0000_ffff, // 0x10: data
    0x008f_8b00_0000_ffff, // 0x18: TSS (busy), KVM requires a valid TR
];

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_US: u64 = 4;
const PTE_PS: u64 = 0x80;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 2;
const CR0_ET: u64 = 0x10;
const CR0_NE: u64 = 0x20;
const CR0_WP: u64 = 0x1_0000;
const CR0_PG: u64 = 0x8000_0000;
const CR4_PAE: u64 = 0x20;
const CR4_OSFXSR: u64 = 0x200;
const CR4_OSXMMEXCPT: u64 = 0x400;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

pub fn write_tables(mem: &GuestMemory) -> Result<()> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| Error::Memory(format!("boot tables: {e}")))
    };
    for (i, d) in GDT.iter().enumerate() {
        w(*d, GDT_ADDR + 8 * i as u64)?;
    }
    w(0, IDT_ADDR)?;
    w(PDPT_ADDR | PTE_P | PTE_RW | PTE_US, PML4_ADDR)?;
    for gib in 0..4u64 {
        let pd = PD_ADDR + gib * 0x1000;
        w(pd | PTE_P | PTE_RW | PTE_US, PDPT_ADDR + gib * 8)?;
        for j in 0..512u64 {
            let phys = (gib << 30) | (j << 21);
            w(phys | PTE_P | PTE_RW | PTE_US | PTE_PS, pd + j * 8)?;
        }
    }
    Ok(())
}

fn segment(selector: u16, descriptor: u64) -> kvm_segment {
    let flags = (descriptor >> 40) as u16;
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: ((flags >> 15) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

pub fn setup_vcpu(vcpu: &VcpuFd, id: u8, cpus: u8, entry: u64, supported: &CpuId) -> Result<()> {
    vcpu.set_cpuid2(&cpuid_for(id, cpus, supported))
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let code = segment(0x08, GDT[1]);
    let data = segment(0x10, GDT[2]);
    let mut tss = segment(0x18, GDT[3]);
    tss.limit = 0xfffff;
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = tss;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    // Reset CR0 has CD/NW set; start from a clean value rather than OR-ing into it.
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: entry,
        rsi: ZERO_PAGE,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;

    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        msr(0x174, 0),             // SYSENTER_CS
        msr(0x175, 0),             // SYSENTER_ESP
        msr(0x176, 0),             // SYSENTER_EIP
        msr(0xc000_0081, 0),       // STAR
        msr(0xc000_0082, 0),       // LSTAR
        msr(0xc000_0083, 0),       // CSTAR
        msr(0xc000_0084, 0),       // SYSCALL_MASK
        msr(0xc000_0102, 0),       // KERNEL_GS_BASE
        msr(0x10, 0),              // TSC
        msr(0x1a0, 1),             // MISC_ENABLE: fast strings
        msr(0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| Error::Memory(format!("MSR list: {e:?}")))?;
    let n = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if n != entries.len() {
        tracing::debug!(
            set = n,
            wanted = entries.len(),
            "KVM accepted only some boot MSRs"
        );
    }

    // LINT0 = ExtINT (the PIC), LINT1 = NMI, as a BIOS would leave them.
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(0x350usize, 7u32), (0x360, 4)] {
        let mut v = [0u8; 4];
        for (i, b) in v.iter_mut().enumerate() {
            *b = lapic.regs[reg + i] as u8;
        }
        let val = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(Error::kvm("KVM_SET_LAPIC"))?;
    Ok(())
}

/// CPUID feature bits that need XSAVE (leaf, subleaf, register index eax..edx, bit):
/// AVX, FMA, F16C; AVX2 and the AVX-512 family; AVX-VNNI, AVX512_BF16.
const NEEDS_XSAVE: &[(u32, u32, usize, u32)] = &[
    (1, 0, 2, 12),
    (1, 0, 2, 27),
    (1, 0, 2, 28),
    (1, 0, 2, 29),
    (7, 0, 1, 5),
    (7, 0, 1, 16),
    (7, 0, 1, 17),
    (7, 0, 1, 21),
    (7, 0, 1, 26),
    (7, 0, 1, 27),
    (7, 0, 1, 28),
    (7, 0, 1, 30),
    (7, 0, 1, 31),
    (7, 0, 2, 1),
    (7, 0, 2, 6),
    (7, 0, 2, 11),
    (7, 0, 2, 12),
    (7, 0, 2, 14),
    (7, 0, 3, 2),
    (7, 0, 3, 3),
    (7, 0, 3, 8),
    (7, 0, 3, 23),
    (7, 1, 0, 4),
    (7, 1, 0, 5),
];

/// Takes XSAVE and everything that depends on it out of `c`, as Firecracker's and Cloud
/// Hypervisor's CPUID templates do for features a host cannot give the guest: for when KVM
/// cannot run `xsave`/`xrstor` for guest kernel code (`hwcheck::xsave_runs`).
pub fn hide_xsave(c: &mut CpuId) {
    for e in c.as_mut_slice() {
        if e.function == 0xd {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            continue;
        }
        if e.function == 1 {
            e.ecx &= !(1 << 26); // XSAVE
        }
        for &(leaf, sub, reg, bit) in NEEDS_XSAVE {
            if e.function == leaf && e.index == sub {
                let r = [&mut e.eax, &mut e.ebx, &mut e.ecx, &mut e.edx];
                *r[reg] &= !(1 << bit);
            }
        }
    }
}

/// Supported CPUID with this vCPU's APIC id and the vCPU count patched in.
fn cpuid_for(id: u8, cpus: u8, supported: &CpuId) -> CpuId {
    let mut c = supported.clone();
    for e in c.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | ((id as u32) << 24) | ((cpus as u32) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if cpus > 1 {
                    e.edx |= 1 << 28; // HTT: ebx[23:16] is valid
                }
            }
            0xb | 0x1f => e.edx = id as u32,
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn hiding_xsave_takes_its_dependents_and_leaf_d() {
        let entry = |function, index, v: u32| kvm_cpuid_entry2 {
            function,
            index,
            eax: v,
            ebx: v,
            ecx: v,
            edx: v,
            ..Default::default()
        };
        let mut c = CpuId::from_entries(&[
            entry(1, 0, !0),
            entry(7, 0, !0),
            entry(7, 1, !0),
            entry(0xd, 0, 0x2e7),
            entry(0xd, 1, 0xf),
        ])
        .unwrap();
        hide_xsave(&mut c);
        let e = c.as_slice();
        assert_eq!(
            e[0].ecx & (1 << 26 | 1 << 28 | 1 << 12),
            0,
            "XSAVE, AVX, FMA"
        );
        assert_ne!(e[0].ecx & (1 << 25), 0, "AES stays");
        assert_eq!(e[0].edx, !0, "leaf 1 edx untouched (FXSR, SSE)");
        assert_eq!(e[1].ebx & (1 << 5 | 1 << 16), 0, "AVX2, AVX512F");
        assert_ne!(e[1].ebx & (1 << 3), 0, "BMI1 stays");
        assert_eq!(e[2].eax & (1 << 4 | 1 << 5), 0, "AVX-VNNI, AVX512_BF16");
        assert!(e[3..]
            .iter()
            .all(|x| (x.eax, x.ebx, x.ecx, x.edx) == (0, 0, 0, 0)));
    }
}
