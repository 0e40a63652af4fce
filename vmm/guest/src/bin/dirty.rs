//! Change tracking: writes exactly the sector ranges in `writes=SECTOR+COUNT,...` (plus a
//! `zero=SECTOR+COUNT` write-zeroes) and flushes; the host then checks the change map.
//! `spread=N+COUNT+SEED` also writes N runs of COUNT sectors at pseudo-random COUNT-aligned
//! places over the whole disk, each with its own pseudo-random bytes: a night's scattered,
//! incompressible, never-seen-before changes for the capture benchmark (scripts/bench-capture).
//! SEED 0 seeds from the time-stamp counter, so each run changes other places.
#![no_std]
#![no_main]

use rt::blk::*;
use rt::pci::{self, Bdf};
use rt::{boot, check, println};

rt::entry!(main);

#[repr(C, align(4096))]
struct Buf([u8; 256 * 1024]);
static mut BUF: Buf = Buf([0xa5; 256 * 1024]);
static mut SEG: [u8; 16] = [0; 16];

fn range(s: &str) -> (u64, u32) {
    let (a, b) = s.split_once('+').unwrap_or(("0", "0"));
    (boot::parse_u64(a), boot::parse_u64(b) as u32)
}

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 4];
    let n = pci::scan(&mut found);
    check!(
        n == 2 && found[1].2 == 0x1042,
        "expected one virtio-blk device"
    );
    let mut d = Blk::open(0, found[1].0, F_FLUSH | F_WRITE_ZEROES, None);
    let buf = unsafe { &*core::ptr::addr_of!(BUF) };
    for w in boot::arg("writes")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (sector, count) = range(w);
        let len = count * 512;
        check!(len as usize <= buf.0.len(), "write {} too large", w);
        check!(
            d.run(T_OUT, sector, &[(buf.0.as_ptr() as u64, len)], false) == S_OK,
            "write {}",
            w
        );
        println!("wrote sectors {}", w);
    }
    if let Some(sp) = boot::arg("spread") {
        let mut it = sp.split('+').map(boot::parse_u64);
        let (n, count, seed) = (
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
            it.next().unwrap_or(1),
        );
        let len = (count * 512) as usize;
        check!(
            count > 0 && len <= buf.0.len(),
            "spread: run of {} sectors",
            count
        );
        let slots = d.capacity() / count;
        let data = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
        let seed = if seed == 0 {
            // SAFETY: RDTSC has no preconditions.
            unsafe { core::arch::x86_64::_rdtsc() }
        } else {
            seed
        };
        let mut x = seed | 1;
        let mut next = move || {
            // xorshift64: deterministic for a seed, so a benchmark run can be repeated.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..n {
            let sector = next() % slots * count;
            for word in data.0[..len].chunks_exact_mut(8) {
                word.copy_from_slice(&next().to_le_bytes());
            }
            check!(
                d.run(T_OUT, sector, &[(data.0.as_ptr() as u64, len as u32)], false) == S_OK,
                "spread write at sector {}",
                sector
            );
        }
        println!("spread {} runs of {} sectors", n, count);
    }
    if let Some(z) = boot::arg("zero") {
        let (sector, count) = range(z);
        let seg = unsafe { &mut *core::ptr::addr_of_mut!(SEG) };
        seg[..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&count.to_le_bytes());
        check!(
            d.run(T_WRITE_ZEROES, 0, &[(seg.as_ptr() as u64, 16)], false) == S_OK,
            "write-zeroes {}",
            z
        );
        println!("zeroed sectors {}", z);
    }
    // Reads must not mark anything.
    let mut rb = [0u8; 512];
    check!(
        d.run(T_IN, 2048, &[(rb.as_mut_ptr() as u64, 512)], true) == S_OK,
        "read"
    );
    check!(d.run(T_FLUSH, 0, &[], false) == S_OK, "flush");
}
