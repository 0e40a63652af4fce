//! virtio-blk on a raw image file: read, write, flush, get-id, discard, write-zeroes;
//! read-only disks; change tracking of written regions. Requests are parsed from descriptor
//! chains with every guest address checked against guest memory, and executed with
//! pread/pwrite straight into guest memory on the device's I/O thread.

use super::{read_config_bytes, Activation, QueueInterrupt, VirtioDevice, Worker};
use crate::change_tracking::ChangeTracker;
use crate::config::DiskConfig;
use crate::error::{Error, Result};
use crate::memory::GuestMemory;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use virtio_bindings::virtio_blk::*;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub const SECTOR: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
/// Most data descriptors per request (config seg_max).
pub const SEG_MAX: u32 = 126;
/// Most discard / write-zeroes segments per request.
const MAX_SEGMENTS: u32 = 16;
/// Alignment O_DIRECT requests need (the largest logical block size in common use).
const DIRECT_ALIGN: u64 = 4096;
/// How long the I/O thread keeps polling the ring after the last request.
const POLL_BUDGET: std::time::Duration = std::time::Duration::from_micros(50);
/// Longest chain we accept (header + segments + status).
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;

pub struct DiskFile {
    file: File,
    /// With O_DIRECT: `file` is the direct fd and this one goes through the page cache, for
    /// requests that do not meet O_DIRECT's alignment.
    buffered: Option<File>,
    pub size: u64,
    pub read_only: bool,
    id: [u8; 20],
}

impl DiskFile {
    /// A disk over an already open file (tests, fuzzing).
    pub fn from_file(file: File, read_only: bool) -> std::io::Result<DiskFile> {
        let size = file_size(&file)?;
        Ok(DiskFile {
            file,
            buffered: None,
            size,
            read_only,
            id: *b"ignite-test-disk\0\0\0\0",
        })
    }

    pub fn open(cfg: &DiskConfig) -> Result<DiskFile> {
        let open = |direct: bool| {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(!cfg.read_only)
                .custom_flags(if direct { libc::O_DIRECT } else { 0 })
                .open(&cfg.path)
                .map_err(|err| Error::DiskUnreadable {
                    path: cfg.path.clone(),
                    err,
                })
        };
        let file = open(cfg.direct)?;
        let buffered = if cfg.direct { Some(open(false)?) } else { None };
        let md = file.metadata().map_err(|err| Error::DiskUnreadable {
            path: cfg.path.clone(),
            err,
        })?;
        if !md.is_file() && !md.file_type().is_block_device_like() {
            return Err(Error::Disk {
                path: cfg.path.clone(),
                msg: "is not a regular file or block device".into(),
            });
        }
        let size = file_size(&file).map_err(|err| Error::DiskUnreadable {
            path: cfg.path.clone(),
            err,
        })?;
        if size == 0 || size % SECTOR != 0 {
            return Err(Error::Disk {
                path: cfg.path.clone(),
                msg: format!(
                    "size {size} is not a positive multiple of 512 bytes; resize it (truncate -s)"
                ),
            });
        }
        let mut id = [0u8; 20];
        let name = cfg
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (d, s) in id.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        Ok(DiskFile {
            file,
            buffered,
            size,
            read_only: cfg.read_only,
            id,
        })
    }
}

impl DiskFile {
    /// Identification bytes (the image's file name, NUL padded): virtio GET_ID, ATA serial.
    pub fn id(&self) -> &[u8; 20] {
        &self.id
    }

    fn fd_for(&self, ptr: u64, off: u64, len: u64) -> i32 {
        let aligned = (ptr | off | len).is_multiple_of(DIRECT_ALIGN);
        match (&self.buffered, aligned) {
            (Some(b), false) => b.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    /// Fills `buf` from byte offset `off` (short reads retried; past the end is an error).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let fd = self.fd_for(buf.as_ptr() as u64, off, buf.len() as u64);
        let mut done = 0usize;
        while done < buf.len() {
            // SAFETY: the pointer range is inside `buf`.
            let r = unsafe {
                libc::pread64(
                    fd,
                    buf.as_mut_ptr().add(done) as *mut libc::c_void,
                    buf.len() - done,
                    (off + done as u64) as i64,
                )
            };
            match r {
                r if r > 0 => done += r as usize,
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at byte offset `off`.
    pub fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        if self.read_only {
            return Err(std::io::ErrorKind::PermissionDenied.into());
        }
        let fd = self.fd_for(buf.as_ptr() as u64, off, buf.len() as u64);
        let mut done = 0usize;
        while done < buf.len() {
            // SAFETY: the pointer range is inside `buf`.
            let r = unsafe {
                libc::pwrite64(
                    fd,
                    buf.as_ptr().add(done) as *const libc::c_void,
                    buf.len() - done,
                    (off + done as u64) as i64,
                )
            };
            match r {
                r if r > 0 => done += r as usize,
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

/// An image with its change tracker: what every disk model (virtio-blk, IDE) executes reads,
/// writes and flushes against, so that change tracking behaves the same on every bus.
#[derive(Clone)]
pub struct TrackedDisk {
    pub file: Arc<DiskFile>,
    pub tracker: Option<Arc<ChangeTracker>>,
}

impl TrackedDisk {
    /// Opens the image and, for writable disks with tracking configured, its change map.
    pub fn open(cfg: &DiskConfig) -> Result<TrackedDisk> {
        let disk = DiskFile::open(cfg)?;
        let tracker = match cfg.track_changes {
            Some(g) if !cfg.read_only => Some(Arc::new(ChangeTracker::open(
                &cfg.path, disk.size, g, true,
            )?)),
            _ => None,
        };
        Ok(TrackedDisk {
            file: Arc::new(disk),
            tracker,
        })
    }

    /// Is `len` bytes at `off` inside the disk?
    pub fn contains(&self, off: u64, len: u64) -> bool {
        off.checked_add(len).is_some_and(|e| e <= self.file.size)
    }

    /// Refuses ranges past the end of the disk: a write there would grow the image file
    /// behind the change map's back (the map covers the disk's size only).
    fn check(&self, off: u64, len: usize) -> std::io::Result<()> {
        if self.contains(off, len as u64) {
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{len} bytes at offset {off} reach past the end of the {}-byte disk",
                self.file.size
            ),
        ))
    }

    pub fn read(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.check(off, buf.len())?;
        self.file.read_at(buf, off)
    }

    /// Marks the range in the change map (persisted first), then writes.
    pub fn write(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        if self.file.read_only {
            return Err(std::io::ErrorKind::PermissionDenied.into());
        }
        self.check(off, buf.len())?;
        let _writing = self.tracker.as_ref().map(|t| t.writing());
        if let Some(t) = &self.tracker {
            t.mark(off, buf.len() as u64)?;
        }
        self.file.write_at(buf, off)
    }

    /// Change map and data to stable storage.
    pub fn flush(&self) -> std::io::Result<()> {
        if let Some(t) = &self.tracker {
            t.sync()?;
        }
        if self.file.read_only {
            return Ok(());
        }
        self.file.file.sync_data()
    }
}

trait BlockDeviceLike {
    fn is_block_device_like(&self) -> bool;
}
impl BlockDeviceLike for std::fs::FileType {
    fn is_block_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_block_device()
    }
}

fn file_size(f: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut f = f;
    f.seek(std::io::SeekFrom::End(0))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

/// A parsed request: every address in it lies inside guest memory.
#[derive(Debug)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    pub data: Vec<(GuestAddress, u32)>,
    pub data_len: u64,
    pub status: GuestAddress,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer than two descriptors (header + status).
    TooShort,
    TooManyDescriptors,
    HeaderNotReadable,
    /// A descriptor points outside guest memory or wraps.
    OutsideMemory,
    StatusNotWritable,
    /// Data buffers of the wrong direction for the request type.
    WrongDirection,
}

/// Parses a chain. `mem` is used only to bounds-check and read the header.
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
) -> std::result::Result<Request, ParseError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut descs = Vec::new();
    for d in chain {
        if descs.len() == MAX_DESCRIPTORS {
            return Err(ParseError::TooManyDescriptors);
        }
        let addr = d.addr();
        let len = d.len();
        let end = addr
            .0
            .checked_add(len as u64)
            .ok_or(ParseError::OutsideMemory)?;
        if len == 0
            || end == 0
            || !mem.address_in_range(addr)
            || !mem.address_in_range(GuestAddress(end - 1))
        {
            return Err(ParseError::OutsideMemory);
        }
        // Both ends in range is not enough across the MMIO hole: require one region.
        if mem.get_slice(addr, len as usize).is_err() {
            return Err(ParseError::OutsideMemory);
        }
        descs.push((addr, len, d.is_write_only()));
    }
    if descs.len() < 2 {
        return Err(ParseError::TooShort);
    }
    let (haddr, hlen, hwrite) = descs[0];
    if hwrite || hlen < 16 {
        return Err(ParseError::HeaderNotReadable);
    }
    let ty: u32 = mem.read_obj(haddr).map_err(|_| ParseError::OutsideMemory)?;
    let sector: u64 = mem
        .read_obj(GuestAddress(haddr.0 + 8))
        .map_err(|_| ParseError::OutsideMemory)?;
    let (saddr, slen, swrite) = descs[descs.len() - 1];
    if !swrite {
        return Err(ParseError::StatusNotWritable);
    }
    let kind = match ty {
        VIRTIO_BLK_T_IN => RequestType::In,
        VIRTIO_BLK_T_OUT => RequestType::Out,
        VIRTIO_BLK_T_FLUSH => RequestType::Flush,
        VIRTIO_BLK_T_GET_ID => RequestType::GetId,
        VIRTIO_BLK_T_DISCARD => RequestType::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
        t => RequestType::Unsupported(t),
    };
    let data: Vec<(GuestAddress, u32)> = descs[1..descs.len() - 1]
        .iter()
        .map(|&(a, l, _)| (a, l))
        .collect();
    let device_writes = matches!(kind, RequestType::In | RequestType::GetId);
    if descs[1..descs.len() - 1]
        .iter()
        .any(|&(_, _, w)| w != device_writes)
    {
        return Err(ParseError::WrongDirection);
    }
    let data_len = data.iter().map(|&(_, l)| l as u64).sum();
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status: GuestAddress(saddr.0 + slen as u64 - 1),
    })
}

/// Executes requests of one queue against a disk.
pub struct BlockHandler {
    pub mem: GuestMemory,
    pub queue: Queue,
    pub disk: Arc<DiskFile>,
    pub tracker: Option<Arc<ChangeTracker>>,
    pub interrupt: Arc<dyn QueueInterrupt>,
}

fn io_ptr(mem: &GuestMemory, addr: GuestAddress, len: u32) -> Option<*mut u8> {
    // Parse checked the range lies in one region; the pointer stays valid while `mem` lives.
    mem.get_slice(addr, len as usize)
        .ok()
        .map(|s| s.ptr_guard_mut().as_ptr())
}

impl BlockHandler {
    /// Drains the available ring; returns how many requests completed.
    pub fn process(&mut self) -> usize {
        // Parse everything available first, so the change map is updated (and synced) once
        // for the whole batch rather than once per request.
        let mut batch = Vec::new();
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let req = parse(chain, &self.mem);
            if let Err(e) = &req {
                tracing::debug!(error = ?e, head, "malformed virtio-blk request");
            }
            batch.push((head, req));
        }
        // Writes of the batch are marked and performed under one `writing` guard: a capture's
        // hold waits for the batch and keeps the next one waiting.
        let tracker = self.tracker.clone();
        let _writing = tracker.as_ref().map(|t| t.writing());
        if let Some(t) = &self.tracker {
            let writes: Vec<(u64, u64)> = batch
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .filter(|r| r.kind == RequestType::Out && !self.disk.read_only)
                .filter_map(|r| Some((self.in_range(r.sector, r.data_len)?, r.data_len)))
                .collect();
            // On failure each write retries its own mark (and fails with IOERR if it must).
            let _ = t.mark_all(&writes);
        }
        let mut done = 0;
        for (head, req) in batch {
            let used = match req {
                Ok(req) => {
                    let (status, written) = self.execute(&req);
                    // The status address was checked by parse.
                    let _ = self.mem.write_obj(status, req.status);
                    written + 1
                }
                Err(_) => 0,
            };
            if let Err(e) = self.queue.add_used(&self.mem, head, used) {
                tracing::warn!(error = ?e, "cannot complete virtio-blk request");
                break;
            }
            done += 1;
        }
        if done > 0 && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal(0);
        }
        done
    }

    /// Processes the ring, then keeps polling it for `budget` after the last request seen,
    /// with driver notifications suppressed (VRING_USED_F_NO_NOTIFY) meanwhile: a driver
    /// that submits again right after a completion then costs neither an exit nor a wakeup.
    ///
    /// A ring whose available index promises requests that cannot be taken (an index more
    /// than the queue size ahead) ends the polling: spinning on it would hold this thread,
    /// and with it a device reset or the VM's teardown, forever.
    pub fn process_polling(&mut self, budget: std::time::Duration) -> usize {
        let mut total = 0;
        loop {
            let _ = self.queue.disable_notification(&self.mem);
            total += self.process();
            let mut idle = std::time::Instant::now();
            while idle.elapsed() < budget {
                let pending = self
                    .queue
                    .avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
                    .map(|i| i.0 != self.queue.next_avail())
                    .unwrap_or(false);
                if pending {
                    let n = self.process();
                    if n == 0 {
                        break;
                    }
                    total += n;
                    idle = std::time::Instant::now();
                } else {
                    std::hint::spin_loop();
                }
            }
            // Re-enable notifications; entries that raced in are processed now, and polling
            // goes on only if they were real.
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => match self.process() {
                    0 => return total,
                    n => total += n,
                },
                _ => return total,
            }
        }
    }

    fn in_range(&self, sector: u64, len: u64) -> Option<u64> {
        let off = sector.checked_mul(SECTOR)?;
        (off.checked_add(len)? <= self.disk.size).then_some(off)
    }

    /// (status, bytes written into guest buffers).
    pub fn execute(&self, req: &Request) -> (u8, u32) {
        const OK: u8 = VIRTIO_BLK_S_OK as u8;
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
        let ro = self.disk.read_only;
        match req.kind {
            RequestType::In | RequestType::Out => {
                if req.kind == RequestType::Out && ro {
                    return (IOERR, 0);
                }
                if !req.data_len.is_multiple_of(SECTOR) {
                    return (IOERR, 0);
                }
                let Some(mut off) = self.in_range(req.sector, req.data_len) else {
                    return (IOERR, 0);
                };
                if req.kind == RequestType::Out {
                    if let Some(t) = &self.tracker {
                        if t.mark(off, req.data_len).is_err() {
                            return (IOERR, 0);
                        }
                    }
                }
                for &(addr, len) in &req.data {
                    let Some(ptr) = io_ptr(&self.mem, addr, len) else {
                        return (IOERR, 0);
                    };
                    // O_DIRECT wants aligned buffers, offsets and lengths.
                    let aligned = (ptr as u64 | off | len as u64).is_multiple_of(DIRECT_ALIGN);
                    let fd = match (&self.disk.buffered, aligned) {
                        (Some(b), false) => b.as_raw_fd(),
                        _ => self.disk.file.as_raw_fd(),
                    };
                    let mut done = 0usize;
                    while done < len as usize {
                        // SAFETY: ptr..ptr+len is inside a guest memory mapping (checked).
                        let r = unsafe {
                            let p = ptr.add(done) as *mut libc::c_void;
                            let n = len as usize - done;
                            if req.kind == RequestType::In {
                                libc::pread64(fd, p, n, (off + done as u64) as i64)
                            } else {
                                libc::pwrite64(fd, p, n, (off + done as u64) as i64)
                            }
                        };
                        if r < 0
                            && std::io::Error::last_os_error().kind()
                                == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        if r <= 0 {
                            return (IOERR, 0);
                        }
                        done += r as usize;
                    }
                    off += len as u64;
                }
                (
                    OK,
                    if req.kind == RequestType::In {
                        req.data_len as u32
                    } else {
                        0
                    },
                )
            }
            RequestType::Flush => {
                let d = TrackedDisk {
                    file: self.disk.clone(),
                    tracker: self.tracker.clone(),
                };
                match d.flush() {
                    Ok(()) => (OK, 0),
                    Err(_) => (IOERR, 0),
                }
            }
            RequestType::GetId => {
                let Some(&(addr, len)) = req.data.first() else {
                    return (IOERR, 0);
                };
                let n = (len as usize).min(20);
                match self.mem.write_slice(&self.disk.id[..n], addr) {
                    Ok(()) => (OK, n as u32),
                    Err(_) => (IOERR, 0),
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                if ro {
                    return (IOERR, 0);
                }
                if !req.data_len.is_multiple_of(16) || req.data_len / 16 > MAX_SEGMENTS as u64 {
                    return (UNSUPP, 0);
                }
                let mut segs = Vec::new();
                for &(addr, len) in &req.data {
                    let mut buf = vec![0u8; len as usize];
                    if self.mem.read_slice(&mut buf, addr).is_err() {
                        return (IOERR, 0);
                    }
                    segs.extend(buf.chunks_exact(16).map(|c| {
                        let sector = u64::from_le_bytes(c[0..8].try_into().unwrap());
                        let n = u32::from_le_bytes(c[8..12].try_into().unwrap());
                        let flags = u32::from_le_bytes(c[12..16].try_into().unwrap());
                        (sector, n, flags)
                    }));
                }
                for (sector, n, flags) in segs {
                    // Only the unmap flag is defined (and only for write-zeroes).
                    if flags & !1 != 0 || (req.kind == RequestType::Discard && flags != 0) {
                        return (UNSUPP, 0);
                    }
                    let len = n as u64 * SECTOR;
                    let Some(off) = self.in_range(sector, len) else {
                        return (IOERR, 0);
                    };
                    if let Some(t) = &self.tracker {
                        if t.mark(off, len).is_err() {
                            return (IOERR, 0);
                        }
                    }
                    if !self.zero_range(
                        off,
                        len,
                        req.kind == RequestType::Discard || flags & 1 != 0,
                    ) {
                        return (IOERR, 0);
                    }
                }
                (OK, 0)
            }
            RequestType::Unsupported(_) => (UNSUPP, 0),
        }
    }

    /// Zeroes (and, with `unmap`, deallocates) a range; falls back to writing zeros.
    fn zero_range(&self, off: u64, len: u64, unmap: bool) -> bool {
        if len == 0 {
            return true;
        }
        let fd = self.disk.file.as_raw_fd();
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        // SAFETY: plain syscall on our fd.
        if unsafe { libc::fallocate64(fd, mode, off as i64, len as i64) } == 0 {
            return true;
        }
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            if self
                .disk
                .file
                .write_all_at(&zeros[..n], off + done)
                .is_err()
            {
                return false;
            }
            done += n as u64;
        }
        true
    }
}

pub struct Block {
    disk: Arc<DiskFile>,
    tracker: Option<Arc<ChangeTracker>>,
    worker: Option<Worker>,
    index: usize,
}

impl Block {
    pub fn new(cfg: &DiskConfig, index: usize) -> Result<Block> {
        Ok(Self::with_disk(TrackedDisk::open(cfg)?, index))
    }

    /// As `new`, over a disk already open (in-memory disks for fuzzing).
    pub fn with_disk(disk: TrackedDisk, index: usize) -> Block {
        Block {
            disk: disk.file,
            tracker: disk.tracker,
            worker: None,
            index,
        }
    }

    pub fn tracker(&self) -> Option<Arc<ChangeTracker>> {
        self.tracker.clone()
    }

    fn config_bytes(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        c[0..8].copy_from_slice(&(self.disk.size / SECTOR).to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        let max_sectors = (u32::MAX / SECTOR as u32).to_le_bytes();
        c[36..40].copy_from_slice(&max_sectors);
        c[40..44].copy_from_slice(&1u32.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
        c[48..52].copy_from_slice(&max_sectors);
        c[52..56].copy_from_slice(&1u32.to_le_bytes());
        c[56] = 1;
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        2
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x01, 0x80)
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f =
            1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE | 1 << VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data)
    }
    fn activate(&mut self, a: Activation) -> Result<()> {
        let Activation {
            mem,
            mut queues,
            mut kicks,
            interrupt,
            ..
        } = a;
        let (Some(queue), Some(kick)) = (queues.pop(), kicks.pop()) else {
            return Err(Error::Memory(
                "virtio-blk activated without its queue".into(),
            ));
        };
        let mut h = BlockHandler {
            mem,
            queue,
            disk: self.disk.clone(),
            tracker: self.tracker.clone(),
            interrupt,
        };
        let fd = kick.as_raw_fd();
        self.worker = Some(Worker::spawn(
            &format!("virtio-blk{}", self.index),
            vec![fd],
            move |_| {
                let _ = kick.read();
                h.process_polling(POLL_BUDGET);
                true
            },
        )?);
        Ok(())
    }
    fn reset(&mut self) {
        self.worker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{memfd_disk, memory, CountingInterrupt, DISK_SIZE};
    use std::sync::atomic::Ordering;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;

    const W: u16 = VRING_DESC_F_WRITE as u16;

    use crate::virtio::tests::desc as d;

    struct Rig {
        mem: GuestMemory,
        irq: Arc<CountingInterrupt>,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                mem: memory(),
                irq: Arc::default(),
            }
        }
        fn header(&self, addr: u64, ty: u32, sector: u64) {
            self.mem.write_obj(ty, GuestAddress(addr)).unwrap();
            self.mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
            self.mem.write_obj(sector, GuestAddress(addr + 8)).unwrap();
        }
        /// Runs the chains through a handler over `disk`; returns used (head, len) entries.
        fn run(
            &self,
            chains: &[Vec<RawDescriptor>],
            disk: Arc<DiskFile>,
            tracker: Option<Arc<ChangeTracker>>,
        ) -> Vec<(u32, u32)> {
            let (vq, queue) = super::super::tests::mock_queue(&self.mem, chains);
            let mut h = BlockHandler {
                mem: self.mem.clone(),
                queue,
                disk,
                tracker,
                interrupt: self.irq.clone(),
            };
            let n = h.process();
            assert_eq!(vq.used().idx().load() as usize, n);
            (0..n as u16)
                .map(|i| {
                    let e = vq.used().ring().ref_at(i as usize).unwrap().load();
                    (e.id(), e.len())
                })
                .collect()
        }
        fn status(&self, addr: u64) -> u8 {
            self.mem.read_obj(GuestAddress(addr)).unwrap()
        }
    }

    #[test]
    fn tracked_disk_refuses_ranges_past_its_end() {
        let d = TrackedDisk {
            file: Arc::new(memfd_disk(false)),
            tracker: None,
        };
        let mut buf = [7u8; 512];
        assert!(d.write(&buf, DISK_SIZE - 512).is_ok());
        for off in [DISK_SIZE - 511, DISK_SIZE, u64::MAX - 100] {
            let e = d.write(&buf, off).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
            assert!(d.read(&mut buf, off).is_err());
        }
        assert_eq!(
            file_size(&d.file.file).unwrap(),
            DISK_SIZE,
            "the image did not grow"
        );
    }

    #[test]
    fn write_then_read_several_in_flight() {
        let rig = Rig::new();
        let disk = Arc::new(memfd_disk(false));
        let mut chains = Vec::new();
        for i in 0..4u64 {
            let hdr = 0x1_0000 + i * 0x100;
            rig.header(hdr, VIRTIO_BLK_T_OUT, i * 8);
            rig.mem
                .write_slice(&[i as u8 + 1; 4096], GuestAddress(0x2_0000 + i * 0x1000))
                .unwrap();
            chains.push(vec![
                d(hdr, 16, 0),
                d(0x2_0000 + i * 0x1000, 4096, 0),
                d(hdr + 0x80, 1, W),
            ]);
        }
        let used = rig.run(&chains, disk.clone(), None);
        assert_eq!(used.len(), 4);
        assert!(used.iter().all(|&(_, len)| len == 1));
        for i in 0..4u64 {
            assert_eq!(rig.status(0x1_0000 + i * 0x100 + 0x80), 0);
        }
        assert_eq!(
            rig.irq.0.load(Ordering::Relaxed),
            1,
            "one interrupt for the batch"
        );
        let mut buf = vec![0u8; 4096];
        disk.file.read_exact_at(&mut buf, 2 * 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 3));

        // Read back sector 8..16 into a 2-descriptor scatter list.
        rig.header(0x1_0000, VIRTIO_BLK_T_IN, 8);
        let chain = vec![
            d(0x1_0000, 16, 0),
            d(0x3_0000, 512, W),
            d(0x3_1000, 3584, W),
            d(0x1_0080, 1, W),
        ];
        let used = rig.run(&[chain], disk, None);
        assert_eq!(used, vec![(0, 4097)]);
        let mut out = vec![0u8; 512];
        rig.mem
            .read_slice(&mut out, GuestAddress(0x3_0000))
            .unwrap();
        assert!(out.iter().all(|&b| b == 2));
    }

    #[test]
    fn read_only_flush_get_id_bounds_and_unsupported() {
        let rig = Rig::new();
        let ro = Arc::new(memfd_disk(true));
        rig.header(0x1_0000, VIRTIO_BLK_T_OUT, 0);
        let w = vec![d(0x1_0000, 16, 0), d(0x2_0000, 512, 0), d(0x1_0080, 1, W)];
        rig.run(std::slice::from_ref(&w), ro.clone(), None);
        assert_eq!(
            rig.status(0x1_0080),
            VIRTIO_BLK_S_IOERR as u8,
            "write to a read-only disk"
        );

        let rw = Arc::new(memfd_disk(false));
        rig.header(0x1_0000, VIRTIO_BLK_T_FLUSH, 0);
        rig.run(
            &[vec![d(0x1_0000, 16, 0), d(0x1_0080, 1, W)]],
            rw.clone(),
            None,
        );
        assert_eq!(rig.status(0x1_0080), VIRTIO_BLK_S_OK as u8);

        rig.header(0x1_0000, VIRTIO_BLK_T_GET_ID, 0);
        let used = rig.run(
            &[vec![
                d(0x1_0000, 16, 0),
                d(0x2_0000, 20, W),
                d(0x1_0080, 1, W),
            ]],
            rw.clone(),
            None,
        );
        assert_eq!(used[0].1, 21);
        let mut id = [0u8; 16];
        rig.mem.read_slice(&mut id, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(&id, b"ignite-test-disk");

        rig.header(0x1_0000, VIRTIO_BLK_T_IN, DISK_SIZE / 512);
        rig.run(
            &[vec![
                d(0x1_0000, 16, 0),
                d(0x2_0000, 512, W),
                d(0x1_0080, 1, W),
            ]],
            rw.clone(),
            None,
        );
        assert_eq!(
            rig.status(0x1_0080),
            VIRTIO_BLK_S_IOERR as u8,
            "read past the end"
        );

        rig.header(0x1_0000, u64::MAX as u32, u64::MAX);
        rig.run(
            &[vec![d(0x1_0000, 16, 0), d(0x1_0080, 1, W)]],
            rw.clone(),
            None,
        );
        assert_eq!(rig.status(0x1_0080), VIRTIO_BLK_S_UNSUPP as u8);

        // Sector number whose byte offset overflows u64.
        rig.header(0x1_0000, VIRTIO_BLK_T_OUT, u64::MAX / 2);
        rig.run(&[w], rw, None);
        assert_eq!(rig.status(0x1_0080), VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn malformed_chains_are_returned_unprocessed() {
        let rig = Rig::new();
        let disk = Arc::new(memfd_disk(false));
        rig.header(0x1_0000, VIRTIO_BLK_T_IN, 0);
        rig.mem.write_obj(0x77u8, GuestAddress(0x1_0080)).unwrap();
        let bad = [
            vec![d(0x1_0000, 16, 0)],                    // no status
            vec![d(0x1_0000, 16, W), d(0x1_0080, 1, W)], // header writable
            vec![d(0x1_0000, 8, 0), d(0x1_0080, 1, W)],  // header short
            vec![d(0x1_0000, 16, 0), d(0x2_0000, 512, W), d(0x1_0080, 1, 0)], // status read-only
            vec![d(0x1_0000, 16, 0), d(0x2_0000, 512, 0), d(0x1_0080, 1, W)], // IN into read-only buffer
            vec![
                d(0x1_0000, 16, 0),
                d(0xf_f000, 0x2000, W),
                d(0x1_0080, 1, W),
            ], // across the hole
            vec![
                d(0x1_0000, 16, 0),
                d(u64::MAX - 10, 512, W),
                d(0x1_0080, 1, W),
            ], // wraps
            vec![
                d(0x1_0000, 16, 0),
                d(0x10_0000_0000, 512, W),
                d(0x1_0080, 1, W),
            ], // outside RAM
        ];
        let used = rig.run(&bad, disk, None);
        assert_eq!(used.len(), bad.len());
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
        assert_eq!(
            rig.status(0x1_0080),
            0x77,
            "no status written for malformed requests"
        );
    }

    #[test]
    fn writes_are_tracked_before_completion() {
        let rig = Rig::new();
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-blk").unwrap();
        let img = dir.as_path().join("t.img");
        let t = Arc::new(ChangeTracker::open(&img, DISK_SIZE, 4096, false).unwrap());
        let disk = Arc::new(memfd_disk(false));
        rig.header(0x1_0000, VIRTIO_BLK_T_OUT, 9);
        rig.header(0x1_0100, VIRTIO_BLK_T_IN, 40);
        let chains = [
            vec![d(0x1_0000, 16, 0), d(0x2_0000, 1024, 0), d(0x1_0080, 1, W)],
            vec![d(0x1_0100, 16, 0), d(0x2_0000, 4096, W), d(0x1_0180, 1, W)],
        ];
        rig.run(&chains, disk, Some(t.clone()));
        // Sectors 9..11 = bytes 4608..5632: region 1 only; the read marks nothing.
        let set = ChangeTracker::load(&img).unwrap();
        assert_eq!(
            (0..set.regions())
                .filter(|&r| set.is_marked(r))
                .collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn polling_ends_on_an_available_index_that_promises_too_much() {
        // The driver claims 100 new requests on a queue of 16: none can be taken. The I/O
        // thread used to spin on this forever (and a device reset waiting for it, too).
        let mem = memory();
        mem.write_obj(100u16, GuestAddress(0x1000 + 2)).unwrap();
        let mut h = BlockHandler {
            mem,
            queue: crate::fuzzing::queue(),
            disk: Arc::new(memfd_disk(false)),
            tracker: None,
            interrupt: Arc::new(CountingInterrupt::default()),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let n = h.process_polling(std::time::Duration::from_micros(50));
            let _ = tx.send(n);
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(done, Ok(0), "process_polling did not return within 30 s");
    }

    /// Randomized hostile descriptors (the cargo-fuzz target's input space, without nightly).
    #[test]
    fn hostile_descriptor_tables_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut input = vec![0u8; 291 + 64];
            for b in input.iter_mut() {
                *b = next() as u8;
            }
            // Bias toward plausible descriptors so parsing gets deep, not just rejected.
            for i in 0..16 {
                let r = next();
                let addr = match r % 6 {
                    0 => 0x1_0000 + (r >> 8) % 0x100,
                    1 => 0x10_0000 - (r >> 8) % 64,
                    2 => 0x20_0000 + (r >> 8) % 64,
                    3 => u64::MAX - (r >> 8) % 64,
                    _ => (r >> 8) % 0x30_0000,
                };
                let len = match (r >> 40) % 4 {
                    0 => 16,
                    1 => 1,
                    2 => 512,
                    _ => (r >> 44) as u32,
                };
                let flags = ((r >> 52) % 8) as u16; // NEXT | WRITE | INDIRECT
                let nxt = ((r >> 56) % 20) as u16;
                input[i * 16..i * 16 + 8].copy_from_slice(&addr.to_le_bytes());
                input[i * 16 + 8..i * 16 + 12].copy_from_slice(&len.to_le_bytes());
                input[i * 16 + 12..i * 16 + 14].copy_from_slice(&flags.to_le_bytes());
                input[i * 16 + 14..i * 16 + 16].copy_from_slice(&nxt.to_le_bytes());
            }
            input[256..258].copy_from_slice(&((next() % 40) as u16).to_le_bytes());
            crate::fuzzing::run_block_queue(&input);
        }
    }
}
