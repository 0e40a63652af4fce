//! Sequential virtio-blk throughput from CPL3, polled (no interrupts). For each phase the
//! monitor timestamps a mark before and after: 11/12 write 1 MiB, 21/22 write 4 KiB,
//! 31/32 read 1 MiB, 41/42 read 4 KiB. Args: `total1m=BYTES total4k=BYTES`.
#![no_std]
#![no_main]

use rt::blk::*;
use rt::pci::{self, Bdf};
use rt::{boot, check, io, println, MARK_PORT};

rt::entry!(main);

const BIG: usize = 1 << 20;
const BIG_DEPTH: usize = 8;
const SMALL_DEPTH: usize = 64;

#[repr(C, align(4096))]
struct Buf([u8; BIG * BIG_DEPTH]);
static mut BUF: Buf = Buf([0; BIG * BIG_DEPTH]);

fn phase(d: &mut Blk, write: bool, bs: usize, depth: usize, total: u64, mark: u32) {
    let buf = unsafe { &*core::ptr::addr_of!(BUF) };
    let count = total / bs as u64;
    let (mut submitted, mut completed) = (0u64, 0u64);
    io::outl(MARK_PORT, mark);
    while completed < count {
        let mut queued = false;
        while submitted < count && (submitted - completed) < depth as u64 {
            let slot_buf = buf.0.as_ptr() as u64 + (submitted % depth as u64) * bs as u64;
            let sector = submitted * (bs as u64 / 512);
            d.submit(
                if write { T_OUT } else { T_IN },
                sector,
                &[(slot_buf, bs as u32)],
                !write,
            );
            submitted += 1;
            queued = true;
        }
        if queued {
            d.q.notify();
        }
        // Reap everything that is done before queueing more.
        let (_, st, _) = d.wait();
        check!(st == S_OK, "request failed with status {}", st);
        completed += 1;
        while let Some((_, st, _)) = d.poll() {
            check!(st == S_OK, "request failed with status {}", st);
            completed += 1;
        }
    }
    io::outl(MARK_PORT, mark + 1);
}

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 4];
    let n = pci::scan(&mut found);
    check!(
        n == 2 && found[1].2 == 0x1042,
        "expected one virtio-blk device"
    );
    let mut d = Blk::open(0, found[1].0, F_FLUSH, None);
    let total1m = boot::arg_u64("total1m", 64 << 20);
    let total4k = boot::arg_u64("total4k", 16 << 20);
    check!(
        d.capacity() * 512 >= total1m.max(total4k),
        "disk smaller than the transfer"
    );
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    for (i, b) in buf.0.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    phase(&mut d, true, BIG, BIG_DEPTH, total1m, 11);
    phase(&mut d, true, 4096, SMALL_DEPTH, total4k, 21);
    phase(&mut d, false, BIG, BIG_DEPTH, total1m, 31);
    phase(&mut d, false, 4096, SMALL_DEPTH, total4k, 41);
    check!(d.run(T_FLUSH, 0, &[], false) == S_OK, "flush");
    println!("bench done");
}
