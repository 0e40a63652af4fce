//! Capture consistency: step after step until the VM is stopped, writes the step number to
//! sector 0, then to one sector of the middle (rotating through sectors 1..N-1 of the first
//! `sectors=N`, default 4096), then to sector N-1. At any moment sector 0 holds the same step
//! as sector N-1 or one more; a capture that read sector 0, let the guest go on, and read
//! sector N-1 later would show sector N-1 ahead — a point in time that never existed.
//! `steps=K` ends the program after step K (the selftest); by default it never ends.
#![no_std]
#![no_main]

use rt::blk::*;
use rt::pci::{self, Bdf};
use rt::{boot, check, println};

rt::entry!(main);

#[repr(C, align(4096))]
struct Buf([u8; 4096]);
static mut BUF: Buf = Buf([0; 4096]);

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 4];
    let n = pci::scan(&mut found);
    check!(
        n == 2 && found[1].2 == 0x1042,
        "expected one virtio-blk device"
    );
    let mut d = Blk::open(0, found[1].0, F_FLUSH, None);
    let sectors = boot::arg_u64("sectors", 4096);
    check!(sectors >= 3, "sectors={} is too few", sectors);
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let last = boot::arg_u64("steps", u64::MAX);
    let mut step: u64 = 1;
    while step <= last {
        buf.0[..8].copy_from_slice(&step.to_le_bytes());
        let middle = 1 + step % (sectors - 2);
        for sector in [0, middle, sectors - 1] {
            check!(
                d.run(T_OUT, sector, &[(buf.0.as_ptr() as u64, 512)], false) == S_OK,
                "write sector {}",
                sector
            );
        }
        if step % 10000 == 0 {
            println!("scribble step {}", step);
        }
        step += 1;
    }
    println!("scribble done after {} steps", last);
}
