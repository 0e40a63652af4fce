//! Instructions KVM hands back unemulated (KVM_EXIT_INTERNAL_ERROR, suberror EMULATION).
//!
//! On a host without hardware virtualization for the guest, KVM runs guest CPL0 code through
//! its instruction emulator, which does not know every instruction a kernel uses. The
//! monitor reads the instruction at RIP (through the guest's page tables), handles a small,
//! named set itself and counts each; anything else stops the VM with the instruction's
//! bytes and address. The set:
//! - `int3` (CC): injects #BP with RIP past the instruction, as the CPU would (Linux's
//!   alternatives self-test and kprobes rely on it);
//! - `clac` / `stac` (0F 01 CA / CB): clear / set RFLAGS.AC (SMAP; Linux uses them on every
//!   kernel entry and user access when the CPU it sees has SMAP);
//! - `popcnt` between registers (F3 [REX] 0F B8 /r, mod = 11): Linux's hweight when the
//!   CPU it sees has POPCNT;
//! - `fwait` (9B): nothing to do unless an unmasked x87 exception is pending (FSW.ES), which
//!   stops the VM instead (Linux clears them before it waits).
//!
//! And one thing that is not an instruction: a SYSCALL from guest user mode that KVM
//! delivers without leaving user mode (PVM-style nested KVM, for a guest kernel that is not
//! PVM-aware: RCX, R11 and RFLAGS are as SYSCALL leaves them, RIP is MSR_LSTAR, but CS is
//! still the user's). Fetching the kernel's entry code then page-faults, and the guest's #PF
//! entry starts with `clac`, which comes here: when the fault frame on the stack is exactly
//! that fault (user CS, RIP = CR2 = MSR_LSTAR, at the IDT's #PF handler), the monitor
//! completes the SYSCALL in kernel mode instead (RIP = MSR_LSTAR, RSP = the user's, RFLAGS
//! as SYSCALL masked them), counted as `syscall`.

use crate::memory::GuestMemory;
use kvm_bindings::kvm_sregs;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

/// Longest x86 instruction.
const MAX_INSN: usize = 15;

const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1;
const PTE_PS: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const RFLAGS_AC: u64 = 1 << 18;

/// The instructions the monitor handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// `int3`: #BP injected, RIP advanced by one.
    Int3,
    /// `clac`: RFLAGS.AC cleared.
    Clac,
    /// `stac`: RFLAGS.AC set.
    Stac,
    /// `popcnt dst, src` on registers of `size` bytes; `len` bytes long.
    Popcnt {
        dst: usize,
        src: usize,
        size: u8,
        len: u8,
    },
    /// `fwait`.
    Fwait,
}

impl Insn {
    pub fn name(self) -> &'static str {
        match self {
            Insn::Int3 => "int3",
            Insn::Clac => "clac",
            Insn::Stac => "stac",
            Insn::Popcnt { .. } => "popcnt",
            Insn::Fwait => "fwait",
        }
    }
}

/// What `handle` counts for a user-mode SYSCALL it completed (see the module docs).
pub const SYSCALL: &str = "syscall";

/// The physical address of linear address `la` under the guest's paging (long mode with 4 or
/// 5 levels, or paging off); None if it is not mapped or the mode is not one Linux x86_64
/// runs its kernel in.
pub fn translate(mem: &GuestMemory, sregs: &kvm_sregs, la: u64) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        return Some(la);
    }
    if sregs.efer & EFER_LMA == 0 {
        return None;
    }
    let levels = if sregs.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    let mut table = sregs.cr3 & PTE_ADDR;
    for level in (0..levels).rev() {
        let shift = 12 + 9 * level;
        let index = (la >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        // A 1 GiB (level 2) or 2 MiB (level 1) page ends the walk.
        if (level == 1 || level == 2) && entry & PTE_PS != 0 {
            let size = 1u64 << shift;
            return Some((entry & PTE_ADDR & !(size - 1)) | (la & (size - 1)));
        }
        table = entry & PTE_ADDR;
    }
    Some(table | (la & 0xfff))
}

/// Up to 15 bytes of code at linear address `la`, page by page; stops at the first byte
/// that is not mapped.
pub fn read_code(mem: &GuestMemory, sregs: &kvm_sregs, la: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_INSN);
    while out.len() < MAX_INSN {
        let at = la.wrapping_add(out.len() as u64);
        let Some(pa) = translate(mem, sregs, at) else {
            break;
        };
        let in_page = (0x1000 - (at & 0xfff)) as usize;
        let n = in_page.min(MAX_INSN - out.len());
        let mut buf = vec![0u8; n];
        if mem.read_slice(&mut buf, GuestAddress(pa)).is_err() {
            break;
        }
        out.extend_from_slice(&buf);
    }
    out
}

/// Which of the named instructions `code` starts with, if any.
pub fn decode(code: &[u8]) -> Option<Insn> {
    match code {
        [0xcc, ..] => return Some(Insn::Int3),
        [0x9b, ..] => return Some(Insn::Fwait),
        [0x0f, 0x01, 0xca, ..] => return Some(Insn::Clac),
        [0x0f, 0x01, 0xcb, ..] => return Some(Insn::Stac),
        _ => {}
    }
    // Prefixes: operand size (66), F3 (part of popcnt's opcode), then REX.
    let mut i = 0;
    let (mut size16, mut f3) = (false, false);
    while let Some(&p) = code.get(i) {
        match p {
            0x66 => size16 = true,
            0xf3 => f3 = true,
            _ => break,
        }
        i += 1;
    }
    let rex = code
        .get(i)
        .copied()
        .filter(|b| b & 0xf0 == 0x40)
        .unwrap_or(0);
    if rex != 0 {
        i += 1;
    }
    match code.get(i..i + 3)? {
        [0x0f, 0xb8, modrm] if f3 && modrm >> 6 == 3 => Some(Insn::Popcnt {
            dst: ((modrm >> 3) & 7 | (rex & 4) << 1) as usize,
            src: (modrm & 7 | (rex & 1) << 3) as usize,
            size: if rex & 8 != 0 {
                8
            } else if size16 {
                2
            } else {
                4
            },
            len: (i + 3) as u8,
        }),
        _ => None,
    }
}

/// General-purpose register `n` (x86 encoding order: rax, rcx, rdx, rbx, rsp, rbp, rsi,
/// rdi, r8..r15).
fn gpr(r: &mut kvm_bindings::kvm_regs, n: usize) -> &mut u64 {
    match n {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    }
}

/// `popcnt` on `regs`: the count into `dst` (32-bit results zero-extend, 16-bit ones keep
/// the upper bits), ZF if the source was zero, CF OF SF AF PF cleared.
fn popcnt(regs: &mut kvm_bindings::kvm_regs, dst: usize, src: usize, size: u8) {
    let mask = match size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let v = *gpr(regs, src) & mask;
    let d = gpr(regs, dst);
    *d = match size {
        2 => (*d & !0xffff) | v.count_ones() as u64,
        _ => v.count_ones() as u64,
    };
    const ARITH: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800; // CF PF AF ZF SF OF
    regs.rflags &= !ARITH;
    if v == 0 {
        regs.rflags |= 0x40;
    }
}

const MSR_LSTAR: u32 = 0xc000_0082;
const PF_VECTOR: u64 = 14;
const PF_USER: u64 = 1 << 2;
const RFLAGS_RF: u64 = 1 << 16;

/// Where a SYSCALL left in user mode should continue in kernel mode.
#[derive(Debug, PartialEq, Eq)]
struct SyscallEntry {
    lstar: u64,
    rsp: u64,
    rflags: u64,
}

/// Reads a u64 at guest linear address `la`.
fn read_u64(mem: &GuestMemory, sregs: &kvm_sregs, la: u64) -> Option<u64> {
    let b: [u8; 8] = read_code(mem, sregs, la).get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The handler address of IDT vector `v` (64-bit gates).
fn idt_handler(mem: &GuestMemory, sregs: &kvm_sregs, v: u64) -> Option<u64> {
    if (v * 16 + 15) > sregs.idt.limit as u64 {
        return None;
    }
    let lo = read_u64(mem, sregs, sregs.idt.base + v * 16)?;
    let hi = read_u64(mem, sregs, sregs.idt.base + v * 16 + 8)?;
    Some((lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi & 0xffff_ffff) << 32)
}

/// At a `clac` at the start of the #PF handler: is the fault on the stack a SYSCALL that
/// reached MSR_LSTAR still in user mode?
fn syscall_left_in_user_mode(
    vcpu: &VcpuFd,
    mem: &GuestMemory,
    regs: &kvm_bindings::kvm_regs,
    sregs: &kvm_sregs,
) -> Option<SyscallEntry> {
    if idt_handler(mem, sregs, PF_VECTOR)? != regs.rip {
        return None;
    }
    let mut frame = [0u64; 5];
    for (i, f) in frame.iter_mut().enumerate() {
        *f = read_u64(mem, sregs, regs.rsp + 8 * i as u64)?;
    }
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: MSR_LSTAR,
        ..Default::default()
    }])
    .ok()?;
    vcpu.get_msrs(&mut msrs).ok()?;
    syscall_fault(&frame, msrs.as_slice()[0].data, sregs.cr2)
}

/// The decision on the #PF frame (error code, RIP, CS, RFLAGS, RSP): a user-mode fault at
/// MSR_LSTAR on fetching MSR_LSTAR itself.
fn syscall_fault(frame: &[u64; 5], lstar: u64, cr2: u64) -> Option<SyscallEntry> {
    let [err, rip, cs, rflags, rsp] = *frame;
    (err & PF_USER != 0 && cs & 3 == 3 && rip == lstar && cr2 == lstar).then_some(SyscallEntry {
        lstar,
        rsp,
        rflags: rflags & !RFLAGS_RF,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Handles an emulation failure on `vcpu`: does what the instruction would have done and
/// returns its name (what is counted), or says why the VM cannot go on.
pub fn handle(vcpu: &VcpuFd, mem: &GuestMemory) -> Result<&'static str, String> {
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let la = sregs.cs.base.wrapping_add(regs.rip);
    let code = read_code(mem, &sregs, la);
    let Some(insn) = decode(&code) else {
        return Err(if code.is_empty() {
            format!(
                "KVM could not emulate the instruction at rip {:#x}, and its address is not mapped (cr3 {:#x})",
                regs.rip, sregs.cr3
            )
        } else {
            format!(
                "KVM could not emulate the instruction at rip {:#x} (bytes {}) and the monitor does not handle it",
                regs.rip,
                hex(&code)
            )
        });
    };
    match insn {
        Insn::Popcnt {
            dst,
            src,
            size,
            len,
        } => {
            popcnt(&mut regs, dst, src, size);
            regs.rip = regs.rip.wrapping_add(len as u64);
            vcpu.set_regs(&regs)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        }
        Insn::Fwait => {
            const FSW_ES: u16 = 0x80;
            let fpu = vcpu.get_fpu().map_err(|e| format!("KVM_GET_FPU: {e}"))?;
            if fpu.fsw & FSW_ES != 0 {
                return Err(format!(
                    "fwait at rip {:#x} with an x87 exception pending (FSW {:#x}); the monitor does not raise #MF",
                    regs.rip, fpu.fsw
                ));
            }
            regs.rip = regs.rip.wrapping_add(1);
            vcpu.set_regs(&regs)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        }
        Insn::Clac => {
            if let Some(user) = syscall_left_in_user_mode(vcpu, mem, &regs, &sregs) {
                regs.rip = user.lstar;
                regs.rsp = user.rsp;
                regs.rflags = user.rflags;
                vcpu.set_regs(&regs)
                    .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
                return Ok(SYSCALL);
            }
            regs.rip = regs.rip.wrapping_add(3);
            regs.rflags &= !RFLAGS_AC;
            vcpu.set_regs(&regs)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        }
        Insn::Stac => {
            regs.rip = regs.rip.wrapping_add(3);
            regs.rflags |= RFLAGS_AC;
            vcpu.set_regs(&regs)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        }
        Insn::Int3 => {
            // A trap: the handler sees RIP past the int3.
            regs.rip = regs.rip.wrapping_add(1);
            vcpu.set_regs(&regs)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
            let mut ev = vcpu
                .get_vcpu_events()
                .map_err(|e| format!("KVM_GET_VCPU_EVENTS: {e}"))?;
            ev.exception.injected = 1;
            ev.exception.pending = 0;
            ev.exception.nr = 3;
            ev.exception.has_error_code = 0;
            ev.exception.error_code = 0;
            vcpu.set_vcpu_events(&ev)
                .map_err(|e| format!("KVM_SET_VCPU_EVENTS: {e}"))?;
        }
    }
    Ok(insn.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popcnt_counts_sizes_and_sets_only_zf() {
        let mut r = kvm_bindings::kvm_regs {
            rdi: 0xf0f0_0000_0000_0007,
            rax: 0xdead_beef_dead_beef,
            rflags: 0x2 | 0x1 | 0x800 | 0x200,
            ..Default::default()
        };
        popcnt(&mut r, 0, 7, 8);
        assert_eq!((r.rax, r.rflags), (11, 0x202));
        r.rax = 0xdead_beef_dead_beef;
        popcnt(&mut r, 0, 7, 4);
        assert_eq!(r.rax, 3, "32-bit result zero-extends");
        r.rax = 0xdead_beef_dead_beef;
        popcnt(&mut r, 0, 7, 2);
        assert_eq!(r.rax, 0xdead_beef_dead_0003, "16-bit result keeps the rest");
        r.r9 = 0;
        popcnt(&mut r, 1, 9, 8);
        assert_eq!((r.rcx, r.rflags & 0x40), (0, 0x40), "ZF for a zero source");
    }

    /// Guest RAM with 4-level tables at 0x1000.. mapping `la` → 0x40_0000 through a 4 KiB
    /// page, and the 2 MiB page at 0x20_0000 identity-mapped with PS set.
    fn tables(la: u64) -> (GuestMemory, kvm_sregs) {
        let mem = crate::memory::create(16 << 20).unwrap();
        let w = |a: u64, v: u64| mem.write_obj(v, GuestAddress(a)).unwrap();
        let idx = |l: u32| (la >> (12 + 9 * l)) & 0x1ff;
        w(0x1000 + idx(3) * 8, 0x2000 | 3);
        w(0x2000 + idx(2) * 8, 0x3000 | 3);
        w(0x3000 + idx(1) * 8, 0x4000 | 3);
        w(0x4000 + idx(0) * 8, 0x40_0000 | 3);
        // Identity: PML4[0] → 0x5000, PDPT[0] → 0x6000, PD[1] = 2 MiB page at 2 MiB.
        w(0x1000, 0x5000 | 3);
        w(0x5000, 0x6000 | 3);
        w(0x6000 + 8, 0x20_0000 | PTE_PS | 3);
        let sregs = kvm_sregs {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: 0x20,
            efer: EFER_LMA | (1 << 8),
            ..Default::default()
        };
        (mem, sregs)
    }

    #[test]
    fn walks_4k_and_2m_pages_and_reads_across_a_page_end() {
        let la = 0xffff_ffff_8100_0ffc;
        let (mem, sregs) = tables(la);
        assert_eq!(translate(&mem, &sregs, la), Some(0x40_0ffc));
        assert_eq!(translate(&mem, &sregs, 0x20_1234), Some(0x20_1234));
        assert_eq!(translate(&mem, &sregs, 0x60_0000), None, "not mapped");
        // Four bytes in the mapped page, then the next page is not mapped.
        mem.write_slice(&[0xcc, 0x90, 0x90, 0x90], GuestAddress(0x40_0ffc))
            .unwrap();
        assert_eq!(read_code(&mem, &sregs, la), vec![0xcc, 0x90, 0x90, 0x90]);
        assert_eq!(decode(&read_code(&mem, &sregs, la)), Some(Insn::Int3));
        // Paging off: linear is physical.
        let off = kvm_sregs::default();
        assert_eq!(translate(&mem, &off, 0x1234), Some(0x1234));
    }

    #[test]
    fn a_user_fault_at_lstar_is_a_syscall_and_nothing_else_is() {
        const LSTAR: u64 = 0xffff_ffff_8140_0040;
        // What this host leaves: error code 15, user CS 0x33, RFLAGS as SYSCALL masked them
        // (plus RF), the user's stack.
        let frame = [15, LSTAR, 0x33, 0x10002, 0x7ffe_7171_9db0];
        assert_eq!(
            syscall_fault(&frame, LSTAR, LSTAR),
            Some(SyscallEntry {
                lstar: LSTAR,
                rsp: 0x7ffe_7171_9db0,
                rflags: 0x2
            })
        );
        let kernel_cs = [15, LSTAR, 0x10, 0x2, 0x1000];
        let supervisor_fault = [11, LSTAR, 0x33, 0x2, 0x1000];
        let elsewhere = [15, LSTAR + 3, 0x33, 0x2, 0x1000];
        for f in [kernel_cs, supervisor_fault, elsewhere] {
            assert_eq!(syscall_fault(&f, LSTAR, LSTAR), None, "{f:x?}");
        }
        assert_eq!(
            syscall_fault(&frame, LSTAR, 0x1234),
            None,
            "a fault on other data"
        );
    }

    #[test]
    fn idt_gates_give_their_handler() {
        let (mem, mut sregs) = tables(0xffff_ffff_8100_0000);
        // IDT at 2 MiB (identity-mapped): vector 14 → 0xffffffff81400af0.
        let h: u64 = 0xffff_ffff_8140_0af0;
        let lo = (h & 0xffff) | (0x10 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
        mem.write_obj(lo, GuestAddress(0x20_0000 + 14 * 16))
            .unwrap();
        mem.write_obj(h >> 32, GuestAddress(0x20_0000 + 14 * 16 + 8))
            .unwrap();
        sregs.idt.base = 0x20_0000;
        sregs.idt.limit = 255;
        assert_eq!(idt_handler(&mem, &sregs, 14), Some(h));
        assert_eq!(idt_handler(&mem, &sregs, 16), None, "past the limit");
    }

    #[test]
    fn only_named_instructions_are_handled() {
        assert_eq!(decode(&[0xcc]), Some(Insn::Int3));
        assert_eq!(decode(&[0x9b, 0x48]), Some(Insn::Fwait));
        assert_eq!(decode(&[0x0f, 0x01, 0xca, 0xfc]), Some(Insn::Clac));
        assert_eq!(decode(&[0x0f, 0x01, 0xcb]), Some(Insn::Stac));
        assert_eq!(decode(&[0x0f, 0x01]), None, "cut short");
        // popcnt rax, rdi; popcnt r9d, eax; popcnt cx, r10w; not with a memory operand.
        assert_eq!(
            decode(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7, 0x41]),
            Some(Insn::Popcnt {
                dst: 0,
                src: 7,
                size: 8,
                len: 5
            })
        );
        assert_eq!(
            decode(&[0xf3, 0x44, 0x0f, 0xb8, 0xc8]),
            Some(Insn::Popcnt {
                dst: 9,
                src: 0,
                size: 4,
                len: 5
            })
        );
        assert_eq!(
            decode(&[0x66, 0xf3, 0x41, 0x0f, 0xb8, 0xca]),
            Some(Insn::Popcnt {
                dst: 1,
                src: 10,
                size: 2,
                len: 6
            })
        );
        assert_eq!(decode(&[0xf3, 0x48, 0x0f, 0xb8, 0x07]), None);
        assert_eq!(decode(&[0x48, 0x0f, 0xb8, 0xc7]), None, "no F3: jmpe");
        assert_eq!(decode(&[0x0f, 0x01, 0xd0]), None, "xgetbv");
        // xrstor64 (48 0f ae 2d ...) is not ours to fake.
        assert_eq!(decode(&[0x48, 0x0f, 0xae, 0x2d, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[]), None);
    }
}
