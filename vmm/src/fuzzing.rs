//! Hostile-guest harnesses shared by the cargo-fuzz targets (vmm/fuzz) and the randomized
//! tests that run in `cargo test`:
//! - `run_block_queue`: the input becomes a virtqueue's descriptor table and available ring
//!   in guest memory, and the virtio-blk device processes it;
//! - `ide_registers`, `ne2k_registers`, `virtio_pci_registers`: the input is a script of
//!   register accesses (`Script`) a guest makes to the IDE channels, the NE2000, or PCI
//!   configuration space (conf1) plus the BAR of a virtio-blk function (common config,
//!   notify, device config, MSI-X table and PBA);
//! - `netboot_parsers`: what servers send to the network boot firmware;
//! - `atapi_packets`: PACKET commands with arbitrary CDBs and byte counts to ATAPI CD-ROMs
//!   on the IDE channels (read back in odd pieces), media inserted and ejected in between,
//!   and raw register accesses;
//! - `scsi_requests`: a hostile virtqueue to the virtio-scsi device (CD-ROM and tape LUNs),
//!   or arbitrary CDBs with data-out straight to the CD-ROM and tape units.
//!
//! None may panic or touch memory outside the guest or the disk: vm-memory bounds every
//! guest access, and the harnesses check that no disk image grew.

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
    memfd_disk_sized(DISK_SIZE, read_only).0
}

/// An in-memory disk of `size` bytes, and a second handle on the same file to check its
/// size afterwards.
pub fn memfd_disk_sized(size: u64, read_only: bool) -> (DiskFile, File) {
    let f = memfd("disk");
    f.set_len(size).expect("memfd size");
    let check = f.try_clone().expect("memfd dup");
    (
        DiskFile::from_file(f, read_only).expect("memfd disk"),
        check,
    )
}

/// An empty in-memory file.
pub fn memfd(what: &str) -> File {
    let name = std::ffi::CString::new(format!("ignite-fuzz-{what}")).expect("no NUL");
    // SAFETY: memfd_create with a C string we own; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    unsafe { File::from_raw_fd(fd) }
}

fn assert_size(f: &File, size: u64, what: &str) {
    let now = f.metadata().expect("memfd metadata").len();
    assert_eq!(
        now, size,
        "{what}: a guest access reached past the end of the disk"
    );
}

/// A guest's register accesses, read from fuzz input: each step takes a few bytes; input
/// that runs out ends the script.
pub struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    pub fn new(input: &'a [u8]) -> Script<'a> {
        Script(input)
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// `n` bytes to write: what input is left, repeated (a guest's data is arbitrary anyway).
    fn data(&mut self, n: usize) -> Vec<u8> {
        let take = n.min(self.0.len());
        let (d, rest) = self.0.split_at(take);
        self.0 = rest;
        if d.is_empty() {
            return vec![0; n];
        }
        d.iter().copied().cycle().take(n).collect()
    }
}

/// Access widths a port or MMIO access may have.
const WIDTHS: [usize; 4] = [1, 2, 4, 8];

/// The IDE channels with three in-memory disks of different sizes (drive 1 smaller than
/// drive 0, so a transfer switched between them would run past its end). Step:
/// `[op, offset, count]` + data: op bit 0 channel, bits 1–2 width (1/2/4), bit 3 write;
/// offset % 9 (8 = control); count elements (data port: 1 + 2·count, a string-I/O exit).
pub fn ide_registers(input: &[u8]) {
    use crate::vio::ide::Ide;
    use crate::virtio::block::TrackedDisk;
    const SIZES: [u64; 3] = [256 << 10, 64 << 10, 128 << 10];
    let (mut disks, mut checks) = (Vec::new(), Vec::new());
    for size in SIZES {
        let (file, check) = memfd_disk_sized(size, false);
        disks.push(TrackedDisk {
            file: Arc::new(file),
            tracker: None,
        });
        checks.push(check);
    }
    let mut ide = Ide::with_units(disks, Vec::new(), [None, None]).expect("three disks");
    let mut s = Script::new(input);
    while let (Some(op), Some(off), Some(count)) = (s.byte(), s.byte(), s.byte()) {
        ide_step(&mut ide, op, off, count, &mut s);
    }
    drop(ide);
    for (f, size) in checks.iter().zip(SIZES) {
        assert_size(f, size, "IDE disk");
    }
}

/// One register access of an `ide_registers` script step.
fn ide_step(ide: &mut crate::vio::ide::Ide, op: u8, off: u8, count: u8, s: &mut Script) {
    let ch = &mut ide.channels[(op & 1) as usize];
    let width = WIDTHS[((op >> 1) & 3) as usize].min(4);
    let off = (off % 9) as u16;
    let len = width * if off == 0 { 1 + 2 * count as usize } else { 1 };
    if op & 8 != 0 {
        ch.pio_write(off, width, &s.data(len));
    } else {
        ch.pio_read(off, width, &mut vec![0; len]);
    }
}

/// Records what the NE2000 sends (frame lengths) and its line level.
#[derive(Default)]
struct NicRecorder {
    sent: std::sync::Mutex<Vec<usize>>,
}

impl crate::vio::ne2k::NicBackend for NicRecorder {
    fn send(&self, frame: &[u8]) {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame.len());
    }
    fn set_irq(&self, _: bool) {}
}

/// The NE2000 core. Step: `[op, offset, count]` + data: op % 3 = 0 read, 1 write (I/O BAR
/// offset % 32, width 1/2/4 by op bits 2–3, 1 + 2·count bytes: string I/O of any length),
/// 2 a frame from the network (count · 8 bytes, up to 2 KiB: longer than Ethernet allows).
pub fn ne2k_registers(input: &[u8]) {
    use crate::vio::ne2k::{Ne2k, MEM_SIZE};
    let rec = Arc::new(NicRecorder::default());
    let mut nic = Ne2k::new([0x52, 0x54, 0, 0, 0, 1], rec.clone());
    let mut s = Script::new(input);
    while let (Some(op), Some(off), Some(count)) = (s.byte(), s.byte(), s.byte()) {
        let off = (off % 32) as u64;
        let len = 1 + 2 * count as usize;
        let width = WIDTHS[((op >> 2) & 3) as usize].min(4);
        match op % 3 {
            0 => nic.io_read(off, width, &mut vec![0; len]),
            1 => nic.io_write(off, width, &s.data(len)),
            _ => {
                let _ = nic.can_receive();
                nic.receive(&s.data(count as usize * 8));
            }
        }
    }
    assert_eq!(nic.mem.len(), MEM_SIZE, "NIC memory changed size");
    for &n in rec.sent.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        assert!((14..=1514).contains(&n), "sent a {n}-byte frame");
    }
}

/// MSI routes and ioeventfds go nowhere: the harness drives the device models only.
pub struct NullRouter(AtomicUsize);

impl crate::irq::MsiRouter for NullRouter {
    fn allocate_gsi(&self) -> u32 {
        24 + self.0.fetch_add(1, Ordering::Relaxed) as u32
    }
    fn set_msi_route(&self, _: u32, _: Option<crate::irq::MsiMessage>) -> crate::Result<()> {
        Ok(())
    }
    fn register_irqfd(&self, _: &vmm_sys_util::eventfd::EventFd, _: u32) -> crate::Result<()> {
        Ok(())
    }
}

impl crate::virtio::pci::NotifyRegistrar for NullRouter {
    fn register(&self, _: &vmm_sys_util::eventfd::EventFd, _: u64) -> crate::Result<()> {
        Ok(())
    }
    fn unregister(&self, _: &vmm_sys_util::eventfd::EventFd, _: u64) -> crate::Result<()> {
        Ok(())
    }
}

/// Where the harness's virtio function decodes BAR0 until the guest moves it.
pub const FUZZ_BAR: u64 = 0xc000_0000;

/// PCI bus 0 (host bridge, a virtio-blk function on an in-memory disk) and guest RAM at 0
/// that starts as input (its first byte · 64 bytes of it), so queues the script points
/// there hold something. Step: `[op, a, b, c]` + data: op % 4 = 0/1 configuration read/write
/// (device a % 3, register b, byte c % 4; 1/2/4 bytes by op bits 2–3), 2/3 BAR read/write
/// (offset u16(b, c) % 36 KiB: the 32 KiB BAR and past it; 1/2/4/8 bytes; `a` unused).
pub fn virtio_pci_registers(input: &[u8]) {
    use crate::pci::PciBus;
    use crate::virtio::block::{Block, TrackedDisk};
    use crate::virtio::pci::VirtioPci;
    let Some((&k, rest)) = input.split_first() else {
        return;
    };
    let (ram, script) = rest.split_at(rest.len().min(k as usize * 64));
    let mem = memory();
    let _ = mem.write_slice(ram, GuestAddress(0));
    let (file, check) = memfd_disk_sized(DISK_SIZE, false);
    let block = Block::with_disk(
        TrackedDisk {
            file: Arc::new(file),
            tracker: None,
        },
        0,
    );
    let router = Arc::new(NullRouter(AtomicUsize::new(0)));
    let dev = VirtioPci::new(Box::new(block), FUZZ_BAR, mem, router.clone(), router)
        .expect("virtio-pci function");
    let mut bus = PciBus::new();
    bus.add(Box::new(dev));
    let mut s = Script::new(script);
    while let (Some(op), Some(a), Some(b), Some(c)) = (s.byte(), s.byte(), s.byte(), s.byte()) {
        let width = WIDTHS[((op >> 2) & 3) as usize];
        match op % 4 {
            0 | 1 => {
                let addr = 0x8000_0000u32 | ((a % 3) as u32) << 11 | (b as u32 & 0xfc);
                bus.pio_write(0, &addr.to_le_bytes());
                let off = (c % 4) as u16;
                let width = width.min(4);
                if op % 4 == 0 {
                    bus.pio_read(4 + off, &mut vec![0; width]);
                } else {
                    bus.pio_write(4 + off, &s.data(width));
                }
            }
            2 => {
                let off = u16::from_le_bytes([b, c]) as u64 % 0x9000;
                bus.mmio_read(FUZZ_BAR + off, &mut vec![0; width]);
            }
            _ => {
                let off = u16::from_le_bytes([b, c]) as u64 % 0x9000;
                bus.mmio_write(FUZZ_BAR + off, &s.data(width));
            }
        }
    }
    // Dropping the bus resets the device and joins its I/O thread.
    drop(bus);
    assert_size(&check, DISK_SIZE, "virtio-blk disk");
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

/// Guest memory holding a hostile queue. Input layout: [0..256) descriptor table (16 x 16
/// bytes), [256..258) avail idx, [258..290) avail ring, [290] a flag for the caller, then
/// bytes copied to 0x10_0000 - n and 0x20_0000 (request headers and payloads near the hole).
fn hostile_queue_memory(input: &[u8]) -> GuestMemory {
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
    if let Some(rest) = input.get(291..) {
        let n = rest.len().min(0x1000);
        let _ = mem.write_slice(&rest[..n], GuestAddress(0x10_0000 - n as u64));
        let _ = mem.write_slice(&rest[..n], GuestAddress(0x20_0000));
    }
    mem
}

/// virtio-blk over a hostile queue (`hostile_queue_memory`; the flag: a read-only disk).
pub fn run_block_queue(input: &[u8]) {
    let mem = hostile_queue_memory(input);
    let ro = input.get(290).is_some_and(|b| b & 1 == 1);
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

/// An ISO of `blocks` blocks in memory.
fn memfd_iso(blocks: u64) -> crate::scsi::cdrom::Medium {
    let f = memfd("iso");
    f.set_len(blocks * crate::scsi::cdrom::BLOCK)
        .expect("memfd size");
    crate::scsi::cdrom::Medium::from_file(f, blocks)
}

const TAPE_CAPACITY: u64 = 256 << 10;

/// A blank in-memory tape of TAPE_CAPACITY, and a handle to check its size afterwards.
fn memfd_tape() -> (crate::scsi::tape::TapeMedium, File) {
    let f = memfd("tape");
    let check = f.try_clone().expect("memfd dup");
    (
        crate::scsi::tape::TapeMedium::from_file(f, false, TAPE_CAPACITY),
        check,
    )
}

/// ATAPI CD-ROMs on the IDE channels: a disk on the primary master, a CD-ROM with a medium
/// on the primary slave, an empty one on the secondary master. Step `[op, a, b]` + data:
/// op % 4 = 0: PACKET to drive op>>2 & 1 of channel op>>3 & 1 with byte count a | b << 8,
/// the next 12 input bytes as the packet, then whatever data-in is offered read in pieces of
/// 1 + (op >> 4) words (at most 64 pieces); 1: the host ejects CD op>>2 & 1; 2: the host
/// inserts a medium of a + 1 blocks; 3: a raw register access as in `ide_registers` (op >> 2
/// as its op, a as offset, b as count).
pub fn atapi_packets(input: &[u8]) {
    use crate::scsi::cdrom::{Cdrom, Interface};
    use crate::vio::ide::Ide;
    use crate::virtio::block::TrackedDisk;
    use std::sync::Mutex;
    let (disk, check) = memfd_disk_sized(64 << 10, false);
    let cds =
        [Some(memfd_iso(40)), None].map(|m| Arc::new(Mutex::new(Cdrom::new(m, Interface::Atapi))));
    let disk = TrackedDisk {
        file: Arc::new(disk),
        tracker: None,
    };
    let mut ide = Ide::with_units(vec![disk], cds.to_vec(), [None, None]).expect("three drives");
    let mut s = Script::new(input);
    while let (Some(op), Some(a), Some(b)) = (s.byte(), s.byte(), s.byte()) {
        match op % 4 {
            0 => {
                let ch = &mut ide.channels[((op >> 3) & 1) as usize];
                ch.pio_write(6, 1, &[0xa0 | ((op >> 2) & 1) << 4]);
                ch.pio_write(4, 1, &[a]);
                ch.pio_write(5, 1, &[b]);
                ch.pio_write(7, 1, &[0xa0]);
                ch.pio_write(0, 2, &s.data(12));
                let piece = 2 * (1 + (op >> 4) as usize);
                for _ in 0..64 {
                    let mut st = [0u8];
                    ch.pio_read(8, 1, &mut st);
                    if st[0] & crate::vio::ide::ST_DRQ == 0 {
                        break;
                    }
                    ch.pio_read(0, 2, &mut vec![0; piece]);
                }
            }
            1 => {
                cds[((op >> 2) & 1) as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .eject();
            }
            2 => cds[((op >> 2) & 1) as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(memfd_iso(a as u64 + 1)),
            _ => ide_step(&mut ide, op >> 2, a, b, &mut s),
        }
    }
    drop(ide);
    assert_size(&check, 64 << 10, "IDE disk beside the CD-ROMs");
}

/// The virtio-scsi device with a CD-ROM (LUN 0) and a tape (LUN 1). Input byte 0 even: a
/// hostile request queue (`hostile_queue_memory` of the rest). Odd: a script of commands
/// straight to the units, each `[unit, cdb length, data-out length / 64]` + CDB + data-out,
/// unit bit 1 asking the host to swap the medium first. Either way the tape never grows
/// past its capacity.
pub fn scsi_requests(input: &[u8]) {
    use crate::scsi::cdrom::{Cdrom, Interface};
    use crate::scsi::tape::Tape;
    use crate::scsi::LogicalUnit;
    use std::sync::Mutex;
    let (tape_medium, check) = memfd_tape();
    let cd = Arc::new(Mutex::new(Cdrom::new(Some(memfd_iso(64)), Interface::Scsi)));
    let tape = Arc::new(Mutex::new(Tape::new(Some(tape_medium))));
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let luns: Vec<crate::virtio::scsi::Lun> = vec![cd, tape];
        let dev = crate::virtio::scsi::Scsi::new(luns).expect("two LUNs");
        let h = dev.handler(hostile_queue_memory(rest));
        let mut q = queue();
        let irq = CountingInterrupt::default();
        for _ in 0..2 {
            h.process(&mut q, &irq, 2, crate::virtio::scsi::ScsiHandler::request);
        }
    } else {
        let mut s = Script::new(rest);
        while let (Some(unit), Some(len), Some(out)) = (s.byte(), s.byte(), s.byte()) {
            let cdb = s.data(len as usize % 20);
            let data = s.data(out as usize * 64);
            let lu: &Mutex<dyn LogicalUnit> = if unit & 1 == 0 { &*cd } else { &*tape };
            if unit & 2 != 0 {
                if unit & 1 == 0 {
                    let mut c = cd.lock().unwrap_or_else(|e| e.into_inner());
                    c.eject();
                    c.insert(memfd_iso((unit as u64 >> 2) + 1));
                } else {
                    let mut t = tape.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(m) = t.eject() {
                        t.insert(m);
                    }
                }
            }
            let r = lu
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .execute(&cdb, &data);
            assert!(
                r.data.len() <= crate::scsi::MAX_TRANSFER,
                "reply of {} bytes",
                r.data.len()
            );
        }
    }
    let len = check.metadata().expect("memfd metadata").len();
    assert!(
        len <= TAPE_CAPACITY,
        "the tape grew to {len} bytes, past its capacity"
    );
}

/// Reads an HTTP response from `p` in pieces of `step` bytes, as segments arrive, and
/// compares with reading it whole: both fail or both give the same head and body.
pub fn http_split_vs_whole(p: &[u8], step: usize, eof: bool) -> Result<(), String> {
    use crate::netboot::http::{body, Reader};
    let whole = body(p, eof);
    let mut r = Reader::new(crate::netboot::MAX_TOTAL);
    let split = p
        .chunks(step.max(1))
        .try_for_each(|c| r.feed(c))
        .and_then(|()| r.complete(eof));
    match (whole, split) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (Err(_), Err(_)) => Ok(()),
        (a, b) => Err(format!("whole: {a:?}; in pieces of {step}: {b:?}")),
    }
}

/// The network boot firmware's parsers of what servers send: the first byte picks DHCP reply
/// (UDP payload), TFTP packet, HTTP response (head and body, read whole and in pieces of
/// ((byte >> 2) & 31) + 1 bytes; bit 7: the server closed) or iPXE script.
pub fn netboot_parsers(input: &[u8]) {
    use crate::netboot::{parse_dhcp, script, tftp, DhcpClient};
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
            let step = ((which >> 2) & 0x1f) as usize + 1;
            if let Err(e) = http_split_vs_whole(rest, step, which & 0x80 != 0) {
                panic!("{e}");
            }
        }
        _ => {
            let vars = [("net0/mac".to_string(), "52:54:00:00:00:01".to_string())].into();
            let _ = script::interpret(&String::from_utf8_lossy(rest), &vars, &mut |_| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netboot::tests::Rng;

    /// Register writes of one byte: `[op, off, 0, value]` with op = write, width 1.
    fn reg(out: &mut Vec<u8>, op: u8, off: u8, v: u8) {
        out.extend_from_slice(&[op, off, 0, v]);
    }

    /// Scripts that mostly make sense (a task file, a command, data in odd-sized pieces,
    /// the other drive selected mid-transfer, resets), so the device gets deep.
    fn ide_script(rng: &mut Rng) -> Vec<u8> {
        const CMDS: [u8; 16] = [
            0xec, 0x20, 0x30, 0xc4, 0xc5, 0x24, 0x34, 0x29, 0x39, 0xc6, 0xe7, 0xea, 0x40, 0x27,
            0xef, 0x91,
        ];
        let mut out = Vec::new();
        // Mostly channel 0, whose drive 1 (128 sectors) is smaller than drive 0 (512).
        let mut ch = 0;
        for _ in 0..rng.below(80) {
            if rng.below(8) == 0 {
                ch ^= 1;
            }
            match rng.below(6) {
                0..=2 => {
                    reg(&mut out, 8 | ch, 6, 0xe0 | (rng.below(2) as u8) << 4);
                    reg(&mut out, 8 | ch, 2, [1, 2, 3, 8, 16, 0][rng.below(6)]);
                    reg(&mut out, 8 | ch, 3, rng.next() as u8);
                    reg(&mut out, 8 | ch, 4, rng.below(3) as u8);
                    reg(&mut out, 8 | ch, 5, 0);
                    reg(&mut out, 8 | ch, 7, CMDS[rng.below(CMDS.len())]);
                }
                3 => {
                    let (width_bits, count) = (1 + rng.below(2) as u8, rng.below(256) as u8);
                    let write = rng.below(2) as u8 * 8;
                    out.extend_from_slice(&[write | width_bits << 1 | ch, 0, count]);
                    if write != 0 {
                        let width = [1, 2, 4][width_bits as usize];
                        out.extend((0..width * (1 + 2 * count as usize)).map(|_| rng.next() as u8));
                    }
                }
                4 => reg(&mut out, 8 | ch, 6, rng.next() as u8),
                _ => reg(&mut out, 8 | ch, 8, [0, 4, 2, 0x80][rng.below(4)]),
            }
        }
        out
    }

    fn ne2k_script(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.below(60) {
            match rng.below(5) {
                0 | 1 => reg(&mut out, 1, rng.below(16) as u8, rng.next() as u8),
                2 => out.extend_from_slice(&[0, rng.below(32) as u8, rng.next() as u8]),
                3 => {
                    let count = rng.next() as u8;
                    out.extend_from_slice(&[1, 0x10, count]);
                    out.extend((0..1 + 2 * count as usize).map(|_| rng.next() as u8));
                }
                _ => {
                    let count = rng.next() as u8;
                    out.extend_from_slice(&[2, 0, count]);
                    // Broadcast frames get past the address filter.
                    out.extend(std::iter::repeat_n(0xff, 6));
                    out.extend((6..count as usize * 8).map(|_| rng.next() as u8));
                }
            }
        }
        out
    }

    /// Memory decoding on, then queue setup, status steps, MSI-X entries and notifications
    /// with plausible values, and some of anything.
    fn virtio_script(rng: &mut Rng) -> Vec<u8> {
        let mut out = vec![rng.next() as u8];
        out.extend((0..out[0] as usize * 64).map(|_| rng.next() as u8));
        // Configuration write, 4 bytes (op bits 2-3 = 2), device 1, command register.
        out.extend_from_slice(&[1 | 2 << 2, 1, 0x04, 0, 0x06, 0, 0, 0]);
        let mmio = |out: &mut Vec<u8>, off: u16, width_bits: u8, v: u64| {
            let [b, c] = off.to_le_bytes();
            out.extend_from_slice(&[3 | width_bits << 2, 0, b, c]);
            out.extend_from_slice(&v.to_le_bytes()[..[1, 2, 4, 8][width_bits as usize]]);
        };
        if rng.below(2) == 0 {
            // A driver's bring-up, with queue addresses anywhere: the device goes live.
            for st in [1, 3] {
                mmio(&mut out, 0x14, 0, st);
            }
            for (off, v) in [(0x08, 1), (0x0c, 1), (0x08, 0), (0x0c, 0x244)] {
                mmio(&mut out, off, 2, v);
            }
            mmio(&mut out, 0x14, 0, 0xb);
            for off in [0x20u16, 0x28, 0x30] {
                mmio(&mut out, off, 3, rng.below(0x30_0000) as u64 & !0xf);
            }
            mmio(&mut out, 0x1c, 1, 1);
            mmio(&mut out, 0x14, 0, 0xf);
        }
        for _ in 0..rng.below(60) {
            match rng.below(9) {
                0 => mmio(&mut out, 0x14, 0, [0, 1, 3, 0xb, 0xf, 0x80][rng.below(6)]),
                8 => {
                    // Driver features: VERSION_1 and some of the low ones.
                    mmio(&mut out, 0x08, 2, 1);
                    mmio(&mut out, 0x0c, 2, 1);
                    mmio(&mut out, 0x08, 2, 0);
                    mmio(&mut out, 0x0c, 2, rng.next() & 0x6244);
                }
                1 => mmio(&mut out, 0x16, 1, rng.below(3) as u64),
                2 => {
                    let off = [0x20u16, 0x28, 0x30][rng.below(3)];
                    mmio(&mut out, off, 3, rng.below(0x30_0000) as u64 & !0xf);
                }
                3 => mmio(
                    &mut out,
                    [0x18u16, 0x1a, 0x1c][rng.below(3)],
                    1,
                    rng.below(20) as u64,
                ),
                4 => mmio(&mut out, 0x3000 + 4 * rng.below(3) as u16, 1, 0),
                5 => {
                    let off = 0x4000 + rng.below(64) as u16;
                    mmio(&mut out, off, 2, rng.next());
                }
                6 => {
                    // MSI-X control in configuration space (capability at 0x40 + …).
                    let reg = 0x40 + 4 * rng.below(24) as u8;
                    out.extend_from_slice(&[1 | 2 << 2, 1, reg, 0]);
                    out.extend_from_slice(&(rng.next() as u32).to_le_bytes());
                }
                _ => out.extend((0..8).map(|_| rng.next() as u8)),
            }
        }
        out
    }

    /// PACKET steps with CDBs of the commands sr sends (and some of anything), media
    /// changes, resets.
    fn atapi_script(rng: &mut Rng) -> Vec<u8> {
        const OPS: [u8; 14] = [
            0x00, 0x03, 0x12, 0x25, 0x28, 0xa8, 0x43, 0x46, 0x4a, 0x5a, 0x1b, 0x1e, 0xbb, 0xff,
        ];
        let mut out = Vec::new();
        for _ in 0..rng.below(40) {
            match rng.below(8) {
                0..=4 => {
                    let drive = rng.below(2) as u8;
                    out.extend_from_slice(&[
                        (rng.below(16) as u8) << 4 | drive << 2,
                        rng.next() as u8,
                        rng.below(3) as u8,
                    ]);
                    let mut cdb = [0u8; 12];
                    cdb[0] = OPS[rng.below(OPS.len())];
                    for b in &mut cdb[1..] {
                        *b = if rng.below(3) == 0 {
                            rng.next() as u8
                        } else {
                            rng.below(4) as u8
                        };
                    }
                    out.extend_from_slice(&cdb);
                }
                5 => out.extend_from_slice(&[1 | (rng.below(2) as u8) << 2, 0, 0]),
                6 => {
                    out.extend_from_slice(&[2 | (rng.below(2) as u8) << 2, rng.below(50) as u8, 0])
                }
                _ => {
                    // SRST on a channel.
                    let ch = rng.below(2) as u8;
                    out.extend_from_slice(&[
                        3 | (8 | ch) << 2,
                        8,
                        0,
                        4,
                        3 | (8 | ch) << 2,
                        8,
                        0,
                        0,
                    ]);
                }
            }
        }
        out
    }

    /// Commands to the CD-ROM and the tape with plausible CDBs and data-out.
    fn scsi_script(rng: &mut Rng) -> Vec<u8> {
        const OPS: [u8; 20] = [
            0x00, 0x03, 0x12, 0x05, 0x1a, 0x5a, 0x15, 0x55, 0x08, 0x0a, 0x10, 0x11, 0x01, 0x1b,
            0x34, 0x2b, 0x19, 0x28, 0x25, 0x4a,
        ];
        let mut out = vec![1];
        for _ in 0..rng.below(60) {
            let unit = if rng.below(10) == 0 {
                2 | (rng.below(8) as u8) << 2
            } else {
                0
            } | rng.below(2) as u8;
            let op = OPS[rng.below(OPS.len())];
            let len = crate::scsi::cdb_len(op).unwrap_or(6);
            let outlen = rng.below(40) as u8;
            out.extend_from_slice(&[unit, len as u8, outlen]);
            out.push(op);
            for _ in 1..len {
                out.push(if rng.below(3) == 0 {
                    rng.next() as u8
                } else {
                    rng.below(8) as u8
                });
            }
            out.extend((0..outlen as usize * 64).map(|_| rng.next() as u8));
        }
        out
    }

    #[test]
    fn random_packets_and_scsi_commands_never_panic() {
        let mut rng = Rng(0x5eed_f0a7_a911);
        for _ in 0..1500 {
            atapi_packets(&atapi_script(&mut rng));
            scsi_requests(&scsi_script(&mut rng));
        }
        for _ in 0..300 {
            let junk: Vec<u8> = (0..rng.below(2000)).map(|_| rng.next() as u8).collect();
            atapi_packets(&junk);
            scsi_requests(&junk);
            let mut odd = junk.clone();
            odd.insert(0, 1);
            scsi_requests(&odd);
        }
    }

    #[test]
    fn random_register_scripts_never_panic() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..3000 {
            ide_registers(&ide_script(&mut rng));
            ne2k_registers(&ne2k_script(&mut rng));
        }
        for _ in 0..300 {
            virtio_pci_registers(&virtio_script(&mut rng));
        }
        // And bytes with no structure at all.
        for _ in 0..300 {
            let junk: Vec<u8> = (0..rng.below(2000)).map(|_| rng.next() as u8).collect();
            ide_registers(&junk);
            ne2k_registers(&junk);
            virtio_pci_registers(&junk);
        }
    }
}
