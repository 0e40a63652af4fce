//! What a boot loader handed over: prints the kernel command line and the initrd's size and
//! FNV-1a hash (from the zero page), for the network boot tests to compare with what the
//! server served.
#![no_std]
#![no_main]

use rt::{boot, println};

rt::entry!(main);

fn main() {
    println!("cmdline: {}", boot::cmdline());
    let (addr, size) = boot::initrd();
    if size == 0 {
        println!("initrd: none");
        return;
    }
    let mut h: u32 = 0x811c_9dc5;
    for i in 0..size {
        let b = unsafe { core::ptr::read_volatile((addr + i) as *const u8) };
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    println!("initrd: {} bytes fnv1a {:08x}", size, h);
}
