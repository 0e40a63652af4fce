//! Serial output and the test port: prints a greeting with its command line and the RAM the
//! e820 map reports, checks that RAM matches `mem=` and exits with pass.
#![no_std]
#![no_main]

use rt::{boot, check, println};

rt::entry!(main);

fn main() {
    println!("hello from a guest program at CPL3");
    println!("cmdline: {}", boot::cmdline());
    let ram = boot::e820_ram();
    let want = boot::arg_u64("mem", 0);
    println!("e820 RAM: {} KiB", ram >> 10);
    // The map leaves out the legacy hole 0x9fc00..1MiB, so allow up to 1 MiB less.
    check!(
        want == 0 || (ram <= want && ram + (1 << 20) >= want),
        "e820 RAM {} != mem={}",
        ram,
        want
    );
    // A loop at CPL3 long enough to be noticed if user code were emulated.
    let mut x: u64 = 1;
    for i in 0..50_000_000u64 {
        x = core::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    println!("loop done {:x}", x & 0xff);
}
