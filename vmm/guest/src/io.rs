//! Port I/O, MMIO and the two ways out of a guest program: the serial console and the test
//! port (0xf4: value 0 = pass, anything else = failure code).

use core::arch::asm;
use core::fmt;

pub const TEST_PORT: u16 = 0xf4;
const COM1: u16 = 0x3f8;

pub fn outb(port: u16, v: u8) {
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nostack, preserves_flags)) }
}
pub fn outw(port: u16, v: u16) {
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nostack, preserves_flags)) }
}
pub fn outl(port: u16, v: u32) {
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags)) }
}
pub fn inb(port: u16) -> u8 {
    let v: u8;
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nostack, preserves_flags)) }
    v
}
pub fn inw(port: u16) -> u16 {
    let v: u16;
    unsafe { asm!("in ax, dx", out("ax") v, in("dx") port, options(nostack, preserves_flags)) }
    v
}
pub fn inl(port: u16) -> u32 {
    let v: u32;
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nostack, preserves_flags)) }
    v
}

pub fn mmio_read<T: Copy>(addr: u64) -> T {
    unsafe { core::ptr::read_volatile(addr as *const T) }
}
pub fn mmio_write<T: Copy>(addr: u64, v: T) {
    unsafe { core::ptr::write_volatile(addr as *mut T, v) }
}

/// Time stamp counter, for guest-side timing.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) }
    ((hi as u64) << 32) | lo as u64
}

pub fn exit(code: u32) -> ! {
    outl(TEST_PORT, code);
    loop {
        core::hint::spin_loop();
    }
}

pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                outb(COM1, b'\r');
            }
            outb(COM1, b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{ let _ = core::fmt::Write::write_fmt(&mut $crate::io::Serial, format_args!($($arg)*)); }};
}
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{ $crate::print!($($arg)*); $crate::print!("\n"); }};
}

/// `rep insw`: `buf.len() / 2` words from `port` (one string-I/O exit per page or less).
pub fn insw(port: u16, buf: &mut [u8]) {
    unsafe {
        asm!("rep insw", in("dx") port, inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") buf.len() / 2 => _, options(nostack, preserves_flags))
    }
}

/// `rep outsw`: `buf.len() / 2` words to `port`.
pub fn outsw(port: u16, buf: &[u8]) {
    unsafe {
        asm!("rep outsw", in("dx") port, inout("rsi") buf.as_ptr() => _,
            inout("rcx") buf.len() / 2 => _, options(nostack, preserves_flags))
    }
}

/// `rep insd`: `buf.len() / 4` doublewords from `port`.
pub fn insl(port: u16, buf: &mut [u8]) {
    unsafe {
        asm!("rep insd", in("dx") port, inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") buf.len() / 4 => _, options(nostack, preserves_flags))
    }
}

/// `rep outsd`: `buf.len() / 4` doublewords to `port`.
pub fn outsl(port: u16, buf: &[u8]) {
    unsafe {
        asm!("rep outsd", in("dx") port, inout("rsi") buf.as_ptr() => _,
            inout("rcx") buf.len() / 4 => _, options(nostack, preserves_flags))
    }
}
