//! virtio-blk end to end: feature negotiation, capacity, a pattern written by 16 requests in
//! flight, flush, read back (16 in flight), get-id, write-zeroes and discard, out-of-range
//! and read-only rejections, and MSI-X interrupts delivered.
//! Args: `sectors=N` (capacity of disk 0), `id=NAME` (its file name), `ro=1` when a second,
//! read-only disk follows.
#![no_std]
#![no_main]

use rt::blk::*;
use rt::pci::{self, Bdf};
use rt::start::IRQ_BASE;
use rt::{boot, check, println};

rt::entry!(main);

const N: usize = 16;
const CHUNK: usize = 4096;

#[repr(C, align(4096))]
struct Bufs([[u8; CHUNK]; N]);
static mut WBUF: Bufs = Bufs([[0; CHUNK]; N]);
static mut RBUF: Bufs = Bufs([[0; CHUNK]; N]);
static mut SMALL: [u8; 512] = [0; 512];

fn pattern(i: usize, j: usize) -> u8 {
    (i * 131 + j * 7 + (j >> 8)) as u8
}

fn virtio_blk_slots() -> [Bdf; 2] {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan(&mut found);
    let mut out = [Bdf { dev: 0, func: 0 }; 2];
    let mut k = 0;
    for &(b, v, d) in &found[..n] {
        if (v, d) == (0x1af4, 0x1042) && k < 2 {
            out[k] = b;
            k += 1;
        }
    }
    check!(k >= 1, "no virtio-blk device");
    out
}

fn main() {
    let slots = virtio_blk_slots();
    let wanted = F_FLUSH | F_DISCARD | F_WRITE_ZEROES | F_SEG_MAX | F_BLK_SIZE;
    let mut d = Blk::open(0, slots[0], wanted, Some(IRQ_BASE));
    println!("features {:#x}", d.features);
    check!(
        d.features & F_FLUSH != 0
            && d.features & F_DISCARD != 0
            && d.features & F_WRITE_ZEROES != 0,
        "features missing"
    );
    check!(
        d.dev.device_features() & F_RO == 0,
        "writable disk offers RO"
    );
    check!(
        d.dev.queue_vector(0) == 0,
        "queue MSI-X vector not accepted"
    );
    let sectors = boot::arg_u64("sectors", 0);
    check!(
        d.capacity() == sectors,
        "capacity {} != {}",
        d.capacity(),
        sectors
    );

    let w = unsafe { &mut *core::ptr::addr_of_mut!(WBUF) };
    let r = unsafe { &mut *core::ptr::addr_of_mut!(RBUF) };
    for i in 0..N {
        for j in 0..CHUNK {
            w.0[i][j] = pattern(i, j);
        }
    }
    // N writes in flight, one notification; request i goes to sector 64*i + 8.
    for i in 0..N {
        d.submit(
            T_OUT,
            64 * i as u64 + 8,
            &[(w.0[i].as_ptr() as u64, CHUNK as u32)],
            false,
        );
    }
    check!(d.q.in_flight as usize == N, "in flight {}", d.q.in_flight);
    d.q.notify();
    for _ in 0..N {
        let (slot, st, _) = d.wait();
        check!(st == S_OK, "write slot {} status {}", slot, st);
    }
    check!(d.run(T_FLUSH, 0, &[], false) == S_OK, "flush failed");
    for i in 0..N {
        d.submit(
            T_IN,
            64 * i as u64 + 8,
            &[(r.0[i].as_ptr() as u64, CHUNK as u32)],
            true,
        );
    }
    d.q.notify();
    for _ in 0..N {
        let (slot, st, len) = d.wait();
        check!(
            st == S_OK && len == CHUNK as u32 + 1,
            "read slot {} status {} len {}",
            slot,
            st,
            len
        );
    }
    for i in 0..N {
        check!(r.0[i] == w.0[i], "read back differs in chunk {}", i);
    }
    println!("{} writes and {} reads in flight: pattern verified", N, N);

    // Scatter-gather: one request over 4 buffers.
    let sg = [0, 1, 2, 3].map(|i| (r.0[i].as_ptr() as u64, CHUNK as u32));
    check!(d.run(T_IN, 8, &sg, true) == S_OK, "scatter-gather read");
    check!(r.0[0] == w.0[0], "scatter-gather chunk 0");

    let small = unsafe { &mut *core::ptr::addr_of_mut!(SMALL) };
    check!(
        d.run(T_GET_ID, 0, &[(small.as_ptr() as u64, 20)], true) == S_OK,
        "get-id"
    );
    let id = boot::arg("id").unwrap_or("");
    let n = id.len().min(20);
    check!(
        &small[..n] == id.as_bytes(),
        "device id differs from {}",
        id
    );

    // Write-zeroes over request 1's sectors and discard request 2's: both read back zero.
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        s
    };
    small[..16].copy_from_slice(&seg(64 + 8, 8, 0));
    check!(
        d.run(T_WRITE_ZEROES, 0, &[(small.as_ptr() as u64, 16)], false) == S_OK,
        "write-zeroes"
    );
    small[..16].copy_from_slice(&seg(128 + 8, 8, 0));
    check!(
        d.run(T_DISCARD, 0, &[(small.as_ptr() as u64, 16)], false) == S_OK,
        "discard"
    );
    for i in [1usize, 2] {
        check!(
            d.run(
                T_IN,
                64 * i as u64 + 8,
                &[(r.0[i].as_ptr() as u64, CHUNK as u32)],
                true
            ) == S_OK,
            "read"
        );
        check!(
            r.0[i].iter().all(|&b| b == 0),
            "chunk {} not zero after write-zeroes/discard",
            i
        );
    }
    check!(
        d.run(T_IN, 3, &[(r.0[3].as_ptr() as u64, CHUNK as u32)], true) == S_OK,
        "unaligned-sector read"
    );
    // Past the end, and a request kind the device does not know.
    check!(
        d.run(T_IN, sectors - 1, &[(r.0[0].as_ptr() as u64, 1024)], true) == S_IOERR,
        "read past end accepted"
    );
    check!(
        d.run(99, 0, &[], false) == S_UNSUPP,
        "unknown request type not UNSUPP"
    );
    // A data length that is not whole sectors.
    check!(
        d.run(T_OUT, 0, &[(w.0[0].as_ptr() as u64, 100)], false) == S_IOERR,
        "partial-sector write accepted"
    );

    let irqs = rt::irq_count(0);
    println!("MSI-X interrupts on vector {:#x}: {}", IRQ_BASE, irqs);
    check!(irqs > 0, "no MSI-X interrupt delivered");

    if boot::arg("ro") == Some("1") {
        let mut ro = Blk::open(1, slots[1], wanted, None);
        check!(
            ro.dev.device_features() & F_RO != 0,
            "read-only disk does not offer RO"
        );
        check!(
            ro.run(T_IN, 0, &[(r.0[0].as_ptr() as u64, CHUNK as u32)], true) == S_OK,
            "read-only read"
        );
        check!(r.0[0].iter().all(|&b| b == 0x5a), "read-only disk content");
        check!(
            ro.run(T_OUT, 0, &[(w.0[0].as_ptr() as u64, CHUNK as u32)], false) == S_IOERR,
            "read-only disk accepted a write"
        );
        check!(
            ro.run(T_WRITE_ZEROES, 0, &[(small.as_ptr() as u64, 16)], false) == S_IOERR,
            "read-only disk accepted write-zeroes"
        );
        println!("read-only disk rejects writes");
    }
}
