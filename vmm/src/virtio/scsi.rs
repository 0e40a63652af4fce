//! virtio-scsi (device type 8): one target with up to `MAX_LUNS` logical units (CD-ROMs and
//! tapes from `scsi`), three queues: control (task management answered "complete": requests
//! run to completion before the next is taken, so there is never anything to abort; AN
//! queries get no events), event (buffers are held; media changes reach the guest as UNIT
//! ATTENTION and GESN events instead) and one request queue.
//!
//! A request chain is the device-readable request header (LUN, tag, attributes, a CDB of the
//! configured `cdb_size`) followed by data-out, then the device-writable response (sense
//! length, residual, status, response, sense of `sense_size`) followed by data-in; buffers
//! may split anywhere (VIRTIO_F_ANY_LAYOUT is part of 1.0). LUNs use the flat format
//! `[1, target, 0x40 | lun >> 8, lun & 0xff, 0...]`; REPORT LUNS is answered for the target.

use super::{read_config_bytes, Activation, QueueInterrupt, VirtioDevice, Worker};
use crate::error::{Error, Result};
use crate::memory::GuestMemory;
use crate::scsi::{self, LogicalUnit, Reply};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// The seed's "128 LUNs on one controller".
pub const MAX_LUNS: usize = 128;
pub const QUEUE_SIZE: u16 = 256;
const SEG_MAX: u32 = 126;
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 4;
const DEFAULT_SENSE: u32 = 96;
const DEFAULT_CDB: u32 = 32;
/// Largest sense / CDB size a driver may configure.
const MAX_CONFIGURED: u32 = 256;

// Response codes (virtio 1.x, 5.6.6.1).
const S_OK: u8 = 0;
const S_OVERRUN: u8 = 1;
const S_BAD_TARGET: u8 = 3;
const S_FUNCTION_COMPLETE: u8 = 0;
const S_FAILURE: u8 = 9;
const GOOD: u8 = 0;
const CHECK_CONDITION: u8 = 2;

pub type Lun = Arc<Mutex<dyn LogicalUnit>>;

/// The parts of a descriptor chain, each address checked to lie in one memory region.
#[derive(Debug, Default)]
pub struct Chain {
    pub readable: Vec<(GuestAddress, u32)>,
    pub writable: Vec<(GuestAddress, u32)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    TooManyDescriptors,
    OutsideMemory,
    /// A device-readable buffer after a device-writable one.
    ReadableAfterWritable,
}

impl Chain {
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
    ) -> std::result::Result<Chain, ParseError>
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut c = Chain::default();
        for (i, d) in chain.enumerate() {
            if i == MAX_DESCRIPTORS {
                return Err(ParseError::TooManyDescriptors);
            }
            if d.len() == 0 {
                continue;
            }
            if mem.get_slice(d.addr(), d.len() as usize).is_err() {
                return Err(ParseError::OutsideMemory);
            }
            if d.is_write_only() {
                c.writable.push((d.addr(), d.len()));
            } else if !c.writable.is_empty() {
                return Err(ParseError::ReadableAfterWritable);
            } else {
                c.readable.push((d.addr(), d.len()));
            }
        }
        Ok(c)
    }
}

fn total(segs: &[(GuestAddress, u32)]) -> usize {
    segs.iter().map(|&(_, l)| l as usize).sum()
}

/// Walks `total` bytes of the segments' byte stream from `skip` on, calling `f(address,
/// range of the caller's buffer)` per piece; stops where `f` fails or the stream ends. How
/// many bytes were walked.
fn walk(
    segs: &[(GuestAddress, u32)],
    skip: usize,
    total: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> usize {
    let (mut at, mut done) = (0usize, 0usize);
    for &(addr, len) in segs {
        let len = len as usize;
        if done == total {
            break;
        }
        if at + len > skip {
            let from = skip.saturating_sub(at);
            let n = (len - from).min(total - done);
            if !f(GuestAddress(addr.0 + from as u64), done..done + n) {
                return done;
            }
            done += n;
        }
        at += len;
    }
    done
}

/// Reads `out.len()` bytes of the segments' byte stream from `skip` on (short if the
/// stream ends): how many were read.
fn gather(mem: &GuestMemory, segs: &[(GuestAddress, u32)], skip: usize, out: &mut [u8]) -> usize {
    walk(segs, skip, out.len(), |a, r| {
        mem.read_slice(&mut out[r], a).is_ok()
    })
}

/// Writes `data` into the segments' byte stream from `skip` on: how many bytes fit.
fn scatter(mem: &GuestMemory, segs: &[(GuestAddress, u32)], skip: usize, data: &[u8]) -> usize {
    walk(segs, skip, data.len(), |a, r| {
        mem.write_slice(&data[r], a).is_ok()
    })
}

/// Sizes the driver may change in the config space.
#[derive(Clone, Copy)]
struct Sizes {
    sense: u32,
    cdb: u32,
}

/// Runs the requests of a queue against the LUNs.
pub struct ScsiHandler {
    pub mem: GuestMemory,
    luns: Arc<Vec<Lun>>,
    sizes: Arc<Mutex<Sizes>>,
}

/// REPORT LUNS for the target: every LUN, peripheral addressing.
fn report_luns(n: usize, cdb: &[u8]) -> Reply {
    if cdb.len() < 12 {
        return Reply::check(scsi::INVALID_FIELD);
    }
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&((8 * n) as u32).to_be_bytes());
    for lun in 0..n {
        d.extend_from_slice(&[0, lun as u8, 0, 0, 0, 0, 0, 0]);
    }
    Reply::good(scsi::cut(d, scsi::be32(cdb, 6) as usize))
}

/// What a LUN that does not exist answers (SPC: peripheral qualifier 3 to INQUIRY).
fn absent_lun(cdb: &[u8]) -> Reply {
    match cdb[0] {
        0x12 => {
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            Reply::good(scsi::cut(d, scsi::be16(cdb, 3)))
        }
        0x03 => Reply::good(scsi::cut(
            scsi::LUN_NOT_SUPPORTED.bytes().to_vec(),
            cdb[4] as usize,
        )),
        _ => Reply::check(scsi::LUN_NOT_SUPPORTED),
    }
}

impl ScsiHandler {
    /// Executes one request chain; returns the bytes written into its writable buffers.
    pub fn request(&self, c: &Chain) -> u32 {
        let sizes = *self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let hdr_len = 19 + sizes.cdb as usize;
        let resp_len = 12 + sizes.sense as usize;
        if total(&c.writable) < resp_len {
            return 0;
        }
        let mut hdr = vec![0u8; hdr_len];
        let mut resp = vec![0u8; resp_len];
        let data_out_len = total(&c.readable).saturating_sub(hdr_len);
        let data_in_cap = total(&c.writable) - resp_len;
        let respond = |resp: &mut Vec<u8>, data: &[u8]| -> u32 {
            let moved = scatter(&self.mem, &c.writable, resp_len, data);
            let resid = (data_in_cap - moved) as u32;
            resp[4..8].copy_from_slice(&resid.to_le_bytes());
            scatter(&self.mem, &c.writable, 0, resp);
            (resp_len + moved) as u32
        };
        if gather(&self.mem, &c.readable, 0, &mut hdr) < hdr_len {
            resp[11] = S_FAILURE;
            return respond(&mut resp, &[]);
        }
        if data_out_len > scsi::MAX_TRANSFER || data_in_cap > scsi::MAX_TRANSFER {
            resp[11] = S_OVERRUN;
            return respond(&mut resp, &[]);
        }
        let (lun_bytes, cdb) = (&hdr[0..8], &hdr[19..]);
        if lun_bytes[0] != 1 || lun_bytes[1] != 0 {
            resp[11] = S_BAD_TARGET;
            return respond(&mut resp, &[]);
        }
        let lun = ((lun_bytes[2] as usize & 0x3f) << 8) | lun_bytes[3] as usize;
        let mut data_out = vec![0u8; data_out_len];
        gather(&self.mem, &c.readable, hdr_len, &mut data_out);
        let reply = if cdb[0] == 0xa0 {
            report_luns(self.luns.len(), cdb)
        } else {
            match self.luns.get(lun) {
                Some(u) => u
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .execute(cdb, &data_out),
                None => absent_lun(cdb),
            }
        };
        if let Some(s) = reply.sense {
            let b = s.bytes();
            let n = b.len().min(sizes.sense as usize);
            resp[12..12 + n].copy_from_slice(&b[..n]);
            resp[0..4].copy_from_slice(&(n as u32).to_le_bytes());
            resp[10] = CHECK_CONDITION;
        } else {
            resp[10] = GOOD;
        }
        resp[11] = S_OK;
        respond(&mut resp, &reply.data)
    }

    /// A control queue request: task management or asynchronous notification.
    pub fn control(&self, c: &Chain) -> u32 {
        let mut ty = [0u8; 4];
        if gather(&self.mem, &c.readable, 0, &mut ty) < 4 {
            return 0;
        }
        match u32::from_le_bytes(ty) {
            // TMF: requests complete before the next is read, so nothing is outstanding.
            0 => scatter(&self.mem, &c.writable, 0, &[S_FUNCTION_COMPLETE]) as u32,
            // AN query / subscribe: no events supported (event_actual 0), OK.
            1 | 2 => scatter(&self.mem, &c.writable, 0, &[0, 0, 0, 0, S_OK]) as u32,
            _ => scatter(&self.mem, &c.writable, 0, &[S_FAILURE]) as u32,
        }
    }

    /// Drains a queue with `f` per chain; returns how many completed.
    pub fn process(
        &self,
        queue: &mut Queue,
        interrupt: &dyn QueueInterrupt,
        index: usize,
        f: impl Fn(&Self, &Chain) -> u32,
    ) -> usize {
        let mut done = 0;
        while let Some(chain) = queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let used = match Chain::parse(chain, &self.mem) {
                Ok(c) => f(self, &c),
                Err(e) => {
                    tracing::debug!(error = ?e, head, "malformed virtio-scsi request");
                    0
                }
            };
            if let Err(e) = queue.add_used(&self.mem, head, used) {
                tracing::warn!(error = ?e, "cannot complete virtio-scsi request");
                break;
            }
            done += 1;
        }
        if done > 0 && queue.needs_notification(&self.mem).unwrap_or(true) {
            interrupt.signal(index);
        }
        done
    }
}

pub struct Scsi {
    luns: Arc<Vec<Lun>>,
    sizes: Arc<Mutex<Sizes>>,
    worker: Option<Worker>,
}

impl Scsi {
    pub fn new(luns: Vec<Lun>) -> Result<Scsi> {
        if luns.is_empty() || luns.len() > MAX_LUNS {
            return Err(Error::Media(format!(
                "{} removable drives on AVIO (virtio-scsi); one controller takes 1 to {MAX_LUNS}",
                luns.len()
            )));
        }
        Ok(Scsi {
            luns: Arc::new(luns),
            sizes: Arc::new(Mutex::new(Sizes {
                sense: DEFAULT_SENSE,
                cdb: DEFAULT_CDB,
            })),
            worker: None,
        })
    }

    fn config_bytes(&self) -> [u8; 36] {
        let s = *self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = [0u8; 36];
        for (off, v) in [
            (0, 1u32), // request queues
            (4, SEG_MAX),
            (8, (scsi::MAX_TRANSFER / 512) as u32),
            (12, QUEUE_SIZE as u32),
            (16, 16), // event_info_size
            (20, s.sense),
            (24, s.cdb),
            (32, MAX_LUNS as u32 - 1),
        ] {
            c[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        c
    }

    /// A handler over these LUNs (tests and fuzzing drive queues with it directly).
    pub fn handler(&self, mem: GuestMemory) -> ScsiHandler {
        ScsiHandler {
            mem,
            luns: self.luns.clone(),
            sizes: self.sizes.clone(),
        }
    }
}

impl VirtioDevice for Scsi {
    fn device_type(&self) -> u16 {
        8
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x01, 0x00)
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let mut s = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        // Only sense_size and cdb_size are writable; values past our bound are ignored.
        match offset {
            20 if v <= MAX_CONFIGURED => s.sense = v,
            24 if (6..=MAX_CONFIGURED).contains(&v) => s.cdb = v,
            _ => {}
        }
    }
    fn activate(&mut self, a: Activation) -> Result<()> {
        let Activation {
            mem,
            queues,
            kicks,
            interrupt,
            ..
        } = a;
        if queues.len() != 3 || kicks.len() != 3 {
            return Err(Error::Memory(
                "virtio-scsi activated without its queues".into(),
            ));
        }
        let h = self.handler(mem);
        let mut queues = queues;
        let fds = kicks.iter().map(|k| k.as_raw_fd()).collect();
        self.worker = Some(Worker::spawn("virtio-scsi", fds, move |i| {
            let _ = kicks[i].read();
            let q = &mut queues[i];
            match i {
                0 => h.process(q, interrupt.as_ref(), 0, ScsiHandler::control),
                2 => h.process(q, interrupt.as_ref(), 2, ScsiHandler::request),
                // Event buffers stay with the device.
                _ => 0,
            };
            true
        })?);
        Ok(())
    }
    fn reset(&mut self) {
        self.worker = None;
        *self.sizes.lock().unwrap_or_else(|e| e.into_inner()) = Sizes {
            sense: DEFAULT_SENSE,
            cdb: DEFAULT_CDB,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{memory, CountingInterrupt};
    use crate::scsi::cdrom::{tests::iso, Cdrom, Interface};
    use crate::scsi::tape::tests::blank;
    use crate::virtio::tests::{desc, mock_queue};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const RESP: u64 = 0x3_0000;
    const DATA: u64 = 0x4_0000;

    fn header(lun: u16, cdb: &[u8]) -> Vec<u8> {
        let mut h = vec![1, 0, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0];
        h.resize(19, 0);
        h.extend_from_slice(cdb);
        h.resize(19 + 32, 0);
        h
    }

    struct Rig {
        mem: GuestMemory,
        scsi: Scsi,
    }

    impl Rig {
        /// Runs the chains through the request queue: used lengths.
        fn run(&self, chains: &[Vec<virtio_queue::desc::RawDescriptor>]) -> Vec<u32> {
            let (vq, mut q) = mock_queue(&self.mem, chains);
            let irq = CountingInterrupt::default();
            let n =
                self.scsi
                    .handler(self.mem.clone())
                    .process(&mut q, &irq, 2, ScsiHandler::request);
            (0..n)
                .map(|i| vq.used().ring().ref_at(i).unwrap().load().len())
                .collect()
        }
        /// One command: (response bytes 0..12 + sense, data-in).
        fn cmd(&self, lun: u16, cdb: &[u8], out: &[u8], data_in: u32) -> (Vec<u8>, Vec<u8>) {
            self.mem
                .write_slice(&header(lun, cdb), GuestAddress(0x1_0000))
                .unwrap();
            self.mem.write_slice(out, GuestAddress(0x2_0000)).unwrap();
            // The header split in two descriptors, data-out, the response, data-in in two.
            let mut c = vec![desc(0x1_0000, 10, 0), desc(0x1_000a, 41, 0)];
            if !out.is_empty() {
                c.push(desc(0x2_0000, out.len() as u32, 0));
            }
            c.push(desc(RESP, 108, W));
            if data_in > 0 {
                c.push(desc(DATA, data_in / 2, W));
                c.push(desc(DATA + 0x10_000, data_in - data_in / 2, W));
            }
            let used = self.run(&[c]);
            let mut resp = vec![0u8; 108];
            self.mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
            let got = used[0] as usize - 108;
            let mut d = vec![0u8; got];
            let half = (data_in / 2) as usize;
            for (i, b) in d.iter_mut().enumerate() {
                let a = if i < half {
                    DATA + i as u64
                } else {
                    DATA + 0x10_000 + (i - half) as u64
                };
                *b = self.mem.read_obj(GuestAddress(a)).unwrap();
            }
            (resp, d)
        }
    }

    fn rig() -> (Rig, std::fs::File) {
        let (tape, f) = blank(1 << 20);
        let cd: Lun = Arc::new(Mutex::new(Cdrom::new(Some(iso(16)), Interface::Scsi)));
        let tape: Lun = Arc::new(Mutex::new(tape));
        (
            Rig {
                mem: memory(),
                scsi: Scsi::new(vec![cd, tape]).unwrap(),
            },
            f,
        )
    }

    #[test]
    fn report_luns_inquiry_reads_and_sense() {
        let (r, _f) = rig();
        let (resp, d) = r.cmd(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
        assert_eq!((resp[10], resp[11]), (GOOD, S_OK));
        assert_eq!(&d[..4], &[0, 0, 0, 16]);
        assert_eq!(&d[8..10], &[0, 0]);
        assert_eq!(&d[16..18], &[0, 1]);
        assert_eq!(
            u32::from_le_bytes(resp[4..8].try_into().unwrap()),
            256 - 24,
            "residual"
        );
        let (_, d) = r.cmd(1, &[0x12, 0, 0, 0, 36, 0], &[], 36);
        assert_eq!((d[0], &d[16..25]), (1, &b"AVIO TAPE"[..]));
        let (_, d) = r.cmd(5, &[0x12, 0, 0, 0, 36, 0], &[], 36);
        assert_eq!(d[0], 0x7f, "no LUN 5");
        let (resp, _) = r.cmd(5, &[0x00], &[], 0);
        assert_eq!((resp[10], resp[12 + 12]), (CHECK_CONDITION, 0x25));
        // A 16-block read split over two data-in buffers.
        let (resp, d) = r.cmd(0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0], &[], 32768);
        assert_eq!((resp[10], d.len()), (GOOD, 32768));
        assert_eq!(
            (&d[2048..2052], &d[30720..30724]),
            (&[1, 0, 0, 0][..], &[15, 0, 0, 0][..])
        );
        // CHECK CONDITION: autosense in the response.
        let (resp, _) = r.cmd(0, &[0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0], &[], 2048);
        assert_eq!(u32::from_le_bytes(resp[0..4].try_into().unwrap()), 18);
        assert_eq!(
            (resp[10], resp[12 + 2], resp[12 + 12]),
            (CHECK_CONDITION, 5, 0x21)
        );
        // Another target is refused at the transport level.
        r.mem.write_slice(&[1, 3], GuestAddress(0x1_0000)).unwrap();
        let used = r.run(&[vec![desc(0x1_0000, 51, 0), desc(RESP, 108, W)]]);
        assert_eq!(used, vec![108]);
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(RESP + 11)).unwrap(),
            S_BAD_TARGET
        );
    }

    #[test]
    fn tape_write_and_read_back_through_the_queue() {
        let (r, f) = rig();
        let rec: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
        let (resp, _) = r.cmd(1, &[0x0a, 0, 0, 0x0b, 0xb8], &rec, 0);
        assert_eq!(resp[10], GOOD);
        r.cmd(1, &[0x10, 0, 0, 0, 1], &[], 0);
        assert_eq!(f.metadata().unwrap().len(), 3008 + 4);
        r.cmd(1, &[0x01], &[], 0);
        let (resp, d) = r.cmd(1, &[0x08, 0, 0, 0x10, 0], &[], 4096);
        assert_eq!(d, rec);
        assert_eq!(resp[10], CHECK_CONDITION, "short record: ILI");
        assert_eq!(resp[12 + 2] & 0x20, 0x20);
        // Malformed chains complete with nothing written; oversized transfers are refused.
        let used = r.run(&[
            vec![desc(RESP, 108, W), desc(0x1_0000, 51, 0)],
            vec![desc(0x1_0000, 51, 0), desc(RESP, 50, W)],
            vec![desc(0x1_0000, 51, 0), desc(0xff_0000, 4096, W)],
        ]);
        assert_eq!(used, vec![0, 0, 0]);
        r.mem
            .write_slice(
                &header(1, &[0x0a, 0, 0xff, 0xff, 0xff]),
                GuestAddress(0x1_0000),
            )
            .unwrap();
        // Nine times the same MiB of guest memory: more data-out than one command may carry.
        let mut c = vec![desc(0x1_0000, 51, 0)];
        c.extend((0..9).map(|_| desc(0x20_0000, 1 << 20, 0)));
        c.push(desc(RESP, 108, W));
        let used = r.run(&[c]);
        assert_eq!(used, vec![108]);
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(RESP + 11)).unwrap(),
            S_OVERRUN
        );
        assert_eq!(f.metadata().unwrap().len(), 3012, "nothing written");
    }

    #[test]
    fn config_and_control_queue() {
        let (mut r, _f) = rig();
        let mut c = [0u8; 36];
        r.scsi.read_config(0, &mut c);
        assert_eq!(u32::from_le_bytes(c[24..28].try_into().unwrap()), 32);
        assert_eq!(u32::from_le_bytes(c[32..36].try_into().unwrap()), 127);
        r.scsi.write_config(24, &16u32.to_le_bytes());
        r.scsi.write_config(20, &100_000u32.to_le_bytes());
        r.scsi.read_config(0, &mut c);
        assert_eq!(u32::from_le_bytes(c[24..28].try_into().unwrap()), 16);
        assert_eq!(
            u32::from_le_bytes(c[20..24].try_into().unwrap()),
            96,
            "too large: ignored"
        );
        // With a 16-byte CDB the header is 35 bytes.
        let mut h = header(0, &[0x25]);
        h.truncate(35);
        r.mem.write_slice(&h, GuestAddress(0x1_0000)).unwrap();
        let used = r.run(&[vec![
            desc(0x1_0000, 35, 0),
            desc(RESP, 108, W),
            desc(DATA, 8, W),
        ]]);
        assert_eq!(used, vec![116]);
        assert_eq!(
            r.mem.read_obj::<u32>(GuestAddress(DATA)).unwrap(),
            15u32.to_be()
        );
        // Control: a TMF and an AN query.
        r.mem
            .write_slice(&[0u8; 24], GuestAddress(0x1_0000))
            .unwrap();
        r.mem
            .write_slice(&[1u8, 0, 0, 0], GuestAddress(0x1_1000))
            .unwrap();
        let (vq, mut q) = mock_queue(
            &r.mem,
            &[
                vec![desc(0x1_0000, 24, 0), desc(RESP, 1, W)],
                vec![desc(0x1_1000, 16, 0), desc(RESP + 8, 5, W)],
            ],
        );
        let irq = CountingInterrupt::default();
        let n = r
            .scsi
            .handler(r.mem.clone())
            .process(&mut q, &irq, 0, ScsiHandler::control);
        assert_eq!(n, 2);
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().len(), 5);
        assert_eq!(irq.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(Scsi::new(Vec::new()).is_err());
    }
}
