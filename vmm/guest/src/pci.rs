//! PCI configuration mechanism #1 (0xCF8/0xCFC).

use crate::io::{inl, outl};

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    pub dev: u8,
    pub func: u8,
}

fn addr(b: Bdf, reg: u8) -> u32 {
    0x8000_0000 | ((b.dev as u32) << 11) | ((b.func as u32) << 8) | (reg as u32 & 0xfc)
}

pub fn read32(b: Bdf, reg: u8) -> u32 {
    outl(0xcf8, addr(b, reg));
    inl(0xcfc)
}

pub fn write32(b: Bdf, reg: u8, v: u32) {
    outl(0xcf8, addr(b, reg));
    outl(0xcfc, v);
}

pub fn read16(b: Bdf, reg: u8) -> u16 {
    (read32(b, reg & !3) >> ((reg & 2) * 8)) as u16
}

pub fn read8(b: Bdf, reg: u8) -> u8 {
    (read32(b, reg & !3) >> ((reg & 3) * 8)) as u8
}

pub fn write16(b: Bdf, reg: u8, v: u16) {
    outl(0xcf8, addr(b, reg));
    crate::io::outw(0xcfc + (reg as u16 & 2), v);
}

/// Vendor and device id of function 0 of each present device on bus 0, in slot order.
pub fn scan(out: &mut [(Bdf, u16, u16)]) -> usize {
    let mut n = 0;
    for dev in 0..32 {
        let b = Bdf { dev, func: 0 };
        let id = read32(b, 0);
        if id & 0xffff == 0xffff {
            continue;
        }
        if n < out.len() {
            out[n] = (b, id as u16, (id >> 16) as u16);
        }
        n += 1;
    }
    n
}

/// Every present function on bus 0 (functions 1–7 only where function 0 says multifunction),
/// with vendor and device ids, in (device, function) order. Returns how many there are.
pub fn scan_functions(out: &mut [(Bdf, u16, u16)]) -> usize {
    let mut n = 0;
    for dev in 0..32 {
        let f0 = Bdf { dev, func: 0 };
        if read32(f0, 0) & 0xffff == 0xffff {
            continue;
        }
        let funcs = if read8(f0, 0x0e) & 0x80 != 0 { 8 } else { 1 };
        for func in 0..funcs {
            let b = Bdf { dev, func };
            let id = read32(b, 0);
            if id & 0xffff == 0xffff {
                continue;
            }
            if n < out.len() {
                out[n] = (b, id as u16, (id >> 16) as u16);
            }
            n += 1;
        }
    }
    n
}

/// BAR `i`: (address, size, is_memory). Sizing writes all ones then restores the value.
pub fn bar(b: Bdf, i: u8) -> (u64, u64, bool) {
    let reg = 0x10 + 4 * i;
    let orig = read32(b, reg);
    let is_mem = orig & 1 == 0;
    let is64 = is_mem && (orig >> 1) & 3 == 2;
    write32(b, reg, 0xffff_ffff);
    let probe = read32(b, reg);
    write32(b, reg, orig);
    let mut addr = (orig & if is_mem { !0xf } else { !0x3 }) as u64;
    let mut mask = (probe & if is_mem { !0xf } else { !0x3 }) as u64;
    if is64 {
        let hi = read32(b, reg + 4);
        write32(b, reg + 4, 0xffff_ffff);
        let probe_hi = read32(b, reg + 4);
        write32(b, reg + 4, hi);
        addr |= (hi as u64) << 32;
        mask |= (probe_hi as u64) << 32;
    } else {
        mask |= 0xffff_ffff_0000_0000;
    }
    let size = if mask & !0xf == 0 {
        0
    } else {
        (!mask).wrapping_add(1)
    };
    (addr, size, is_mem)
}

/// Offsets of capabilities with id `id`, in list order (up to out.len()).
pub fn find_caps(b: Bdf, id: u8, out: &mut [u8]) -> usize {
    if read16(b, 6) & 0x10 == 0 {
        return 0;
    }
    let mut p = read8(b, 0x34) & !3;
    let mut n = 0;
    let mut guard = 0;
    while p != 0 && guard < 48 {
        if read8(b, p) == id && n < out.len() {
            out[n] = p;
            n += 1;
        }
        p = read8(b, p + 1) & !3;
        guard += 1;
    }
    n
}
