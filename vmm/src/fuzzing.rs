//! Hostile-guest harness shared by the cargo-fuzz target (vmm/fuzz) and the randomized test
//! that runs in `cargo test`: the input becomes a virtqueue's descriptor table and available
//! ring in guest memory, and the virtio-blk device processes it. It must neither panic nor
//! touch memory outside the guest (vm-memory bounds every access; parse rejects the rest).

use crate::memory::GuestMemory;
use crate::virtio::block::{BlockHandler, DiskFile};
use crate::virtio::QueueInterrupt;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Guest RAM: two regions with a hole, so chains can straddle it.
const REGIONS: [(u64, usize); 2] = [(0, 0x10_0000), (0x20_0000, 0x10_0000)];
pub const DISK_SIZE: u64 = 64 * 1024;

#[derive(Default)]
pub struct CountingInterrupt(pub AtomicUsize);

impl QueueInterrupt for CountingInterrupt {
    fn signal(&self, _: usize) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn memory() -> GuestMemory {
    let r: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&r).expect("fuzz guest memory")
}

/// An in-memory disk file of DISK_SIZE bytes.
pub fn memfd_disk(read_only: bool) -> DiskFile {
    // SAFETY: memfd_create with a static C string; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"ignite-fuzz-disk".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(DISK_SIZE).expect("memfd size");
    DiskFile::from_file(f, read_only).expect("memfd disk")
}

/// A queue whose rings are at fixed addresses in `mem`.
pub fn queue() -> Queue {
    let mut q = Queue::new(QSIZE).expect("queue");
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

/// Input layout: [0..256) descriptor table (16 x 16 bytes), [256..258) avail idx,
/// [258..290) avail ring, [290] read-only flag, then bytes copied to 0x10_0000 - n and
/// 0x20_0000 (request headers and payloads near the hole).
pub fn run_block_queue(input: &[u8]) {
    let mem = memory();
    let get = |r: std::ops::Range<usize>| {
        input
            .get(r.clone())
            .map(|s| s.to_vec())
            .unwrap_or_else(|| vec![0; r.len()])
    };
    let _ = mem.write_slice(&get(0..256), GuestAddress(DESC));
    let _ = mem.write_slice(&get(256..258), GuestAddress(AVAIL + 2));
    let _ = mem.write_slice(&get(258..290), GuestAddress(AVAIL + 4));
    let ro = input.get(290).is_some_and(|b| b & 1 == 1);
    if let Some(rest) = input.get(291..) {
        let n = rest.len().min(0x1000);
        let _ = mem.write_slice(&rest[..n], GuestAddress(0x10_0000 - n as u64));
        let _ = mem.write_slice(&rest[..n], GuestAddress(0x20_0000));
    }
    let interrupt = Arc::new(CountingInterrupt::default());
    let mut h = BlockHandler {
        mem,
        queue: queue(),
        disk: Arc::new(memfd_disk(ro)),
        tracker: None,
        interrupt,
    };
    // Twice: the second pass sees whatever state the first left.
    h.process();
    h.process();
}

/// The network boot firmware's parsers of what servers send: the first byte picks DHCP reply
/// (UDP payload), TFTP packet, HTTP response (head and body) or iPXE script.
pub fn netboot_parsers(input: &[u8]) {
    use crate::netboot::{http, parse_dhcp, script, tftp, DhcpClient};
    let Some((&which, rest)) = input.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let _ = parse_dhcp(
                rest,
                &DhcpClient::new([0x52, 0x54, 0, 0, 0, 1], 0x0102_0304),
            );
        }
        1 => {
            let _ = tftp::parse(rest);
        }
        2 => {
            let _ = http::body(rest, which & 0x80 != 0);
        }
        _ => {
            let vars = [("net0/mac".to_string(), "52:54:00:00:00:01".to_string())].into();
            let _ = script::interpret(&String::from_utf8_lossy(rest), &vars, &mut |_| {});
        }
    }
}
