//! Boot arguments: the monitor passes the Linux zero page; the command line carries the
//! test's parameters as `key=value` words.

fn zero_page() -> u64 {
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::start::BOOT_PARAMS)) }
}

pub fn cmdline() -> &'static str {
    let ptr = unsafe { core::ptr::read_volatile((zero_page() + 0x228) as *const u32) } as u64;
    if ptr == 0 {
        return "";
    }
    let mut len = 0;
    while len < 4096 && unsafe { core::ptr::read_volatile((ptr + len) as *const u8) } != 0 {
        len += 1;
    }
    let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// Value of `key=value` on the command line (the last one wins, as in Linux).
pub fn arg(key: &str) -> Option<&'static str> {
    cmdline()
        .split(' ')
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then_some(v)
        })
        .last()
}

pub fn arg_u64(key: &str, default: u64) -> u64 {
    arg(key).map_or(default, parse_u64)
}

/// Decimal or 0x-prefixed hexadecimal; with an optional K/M/G suffix. 0 for garbage.
pub fn parse_u64(s: &str) -> u64 {
    let (s, mul) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.unwrap_or(0) * mul
}

/// RAM the e820 map reports (bytes), for sanity checks.
pub fn e820_ram() -> u64 {
    let zp = zero_page();
    let n = unsafe { core::ptr::read_volatile((zp + 0x1e8) as *const u8) } as u64;
    (0..n.min(128))
        .map(|i| {
            let e = zp + 0x2d0 + i * 20;
            let size = unsafe { core::ptr::read_unaligned((e + 8) as *const u64) };
            let ty = unsafe { core::ptr::read_unaligned((e + 16) as *const u32) };
            if ty == 1 {
                size
            } else {
                0
            }
        })
        .sum()
}

/// Address and size of the initrd the loader placed (0 size if none).
pub fn initrd() -> (u64, u64) {
    let zp = zero_page();
    let addr = unsafe { core::ptr::read_volatile((zp + 0x218) as *const u32) } as u64;
    let size = unsafe { core::ptr::read_volatile((zp + 0x21c) as *const u32) } as u64;
    (addr, size)
}
