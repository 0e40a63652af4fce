//! Runtime for guest test programs: startup to CPL3, serial output, test-port exit, boot
//! arguments, PCI configuration access, a minimal modern virtio-pci driver and the drivers
//! built on it and on the emulated devices.
#![no_std]

pub mod ata;
pub mod atapi;
pub mod blk;
pub mod boot;
pub mod bulk;
pub mod eth;
pub mod io;
pub mod ne2k;
pub mod pci;
pub mod start;
pub mod virtio;
pub mod vnet;
pub mod vscsi;

/// Port the monitor timestamps (with its exit counters and CPU time) on each write; used by
/// benchmark programs to bracket a measured phase without trusting guest clocks.
pub const MARK_PORT: u16 = 0xf5;

extern "Rust" {
    fn guest_main();
}

/// First code at CPL3 (entered by IRETQ from `_start`).
#[no_mangle]
pub extern "C" fn rt_user_entry() -> ! {
    unsafe { guest_main() };
    println!("PASS");
    io::exit(0)
}

/// Declares the program's main function: `rt::entry!(main);` with `fn main()`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub fn guest_main() {
            $main()
        }
    };
}

/// Fails the program with a message on the serial console and exit code 1 unless `cond`.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::print!("FAIL: ");
            $crate::println!($($arg)*);
            $crate::io::exit(1);
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("FAIL: panic: {}", info);
    io::exit(2)
}

/// The toolchain's linux-gnu target expects libc to provide these; freestanding, we do.
/// `rep movsb/stosb` keeps the compiler from turning a loop back into a call to itself.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    core::arch::asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack, preserves_flags));
    dst
}
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize + n) {
        return memcpy(dst, src, n);
    }
    // Overlapping with dst above src: copy backwards.
    core::arch::asm!("std", "rep movsb", "cld",
        inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _,
        options(nostack));
    dst
}
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    core::arch::asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8, options(nostack, preserves_flags));
    dst
}
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        let (x, y) = (
            core::ptr::read_volatile(a.add(i)),
            core::ptr::read_volatile(b.add(i)),
        );
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

/// Number of interrupts taken on vector `IRQ_BASE + i`.
pub fn irq_count(i: usize) -> u64 {
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(start::IRQ_COUNTS[i])) }
}

extern "C" {
    fn rt_wait_irq(seen: u64);
}

/// Sleeps (HLT at CPL0, entered through a UD2 trap) until an interrupt arrives on vector
/// IRQ_BASE, unless one arrived since `irq_count(0)` returned `seen`. Lets a polling loop
/// give its CPU back.
pub fn wait_irq(seen: u64) {
    unsafe { rt_wait_irq(seen) }
}
