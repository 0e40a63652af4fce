//! Console input: prints a prompt, reads a line from the 8250 (polling the line status
//! register) and echoes it; passes if it equals `expect=`.
#![no_std]
#![no_main]

use rt::io::{inb, outb};
use rt::{boot, check, println};

rt::entry!(main);

fn main() {
    // 8N1, FIFO on, as a driver would leave it (the monitor's UART accepts input regardless).
    outb(0x3fb, 0x03);
    outb(0x3fa, 0x01);
    println!("console ready");
    let mut line = [0u8; 64];
    let mut n = 0;
    loop {
        if inb(0x3fd) & 1 == 0 {
            core::hint::spin_loop();
            continue;
        }
        let b = inb(0x3f8);
        if b == b'\n' || b == b'\r' {
            break;
        }
        if n < line.len() {
            line[n] = b;
            n += 1;
        }
    }
    let got = core::str::from_utf8(&line[..n]).unwrap_or("?");
    println!("got: {}", got);
    check!(
        Some(got) == boot::arg("expect"),
        "expected {:?}",
        boot::arg("expect")
    );
}
