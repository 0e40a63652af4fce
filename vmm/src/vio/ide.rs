//! PIIX3 IDE (PCI 8086:7010, legacy/compatibility mode) with ATA disks in PIO mode: the
//! primary channel at 0x1F0–0x1F7 + 0x3F6 (IRQ 14) and the secondary at 0x170–0x177 + 0x376
//! (IRQ 15), two drives each, so at most four disks. Commands: IDENTIFY, READ/WRITE SECTORS
//! (+EXT, MULTIPLE, MULTIPLE EXT), SET MULTIPLE MODE, FLUSH CACHE (+EXT), SET FEATURES,
//! INITIALIZE DEVICE PARAMETERS, READ NATIVE MAX (+EXT), READ VERIFY (+EXT), EXECUTE DEVICE
//! DIAGNOSTIC and the power-management no-ops; anything else is aborted (ERR, ABRT) as a
//! real drive does. Reads, writes and flushes go through `TrackedDisk`, shared with
//! virtio-blk, so change tracking is the same on both buses.
//!
//! A drive slot may instead hold an ATAPI CD-ROM (`scsi::cdrom`): its signature after reset
//! is 0x14/0xEB in LBA mid/high, IDENTIFY aborts, IDENTIFY PACKET DEVICE describes it, and
//! PACKET (PIO only) takes a 12-byte CDB through the data port (interrupt reason CoD, no
//! interrupt: "accelerated DRQ"), then moves data-in in chunks of at most the byte count the
//! host put in LBA mid/high (interrupt reason IO, one interrupt per chunk) and completes with
//! IO|CoD and an interrupt; a CHECK CONDITION sets ERR with the sense key in the error
//! register's high nibble, and the host fetches the sense with REQUEST SENSE.

use crate::config::DiskConfig;
use crate::error::{Error, Result};
use crate::pci::config::{Ids, PciConfig};
use crate::pci::ConfigOnly;
use crate::scsi::cdrom::Cdrom;
use crate::scsi::{LogicalUnit, SharedUnit};
use crate::virtio::block::TrackedDisk;
use vmm_sys_util::eventfd::EventFd;

pub const MAX_DISKS: usize = 4;
pub const PRIMARY_BASE: u16 = 0x1f0;
pub const PRIMARY_CTRL: u16 = 0x3f6;
pub const SECONDARY_BASE: u16 = 0x170;
pub const SECONDARY_CTRL: u16 = 0x376;
pub const IRQS: [u32; 2] = [14, 15];

const SECTOR: usize = 512;
/// Sectors per DRQ block the drive allows with SET MULTIPLE MODE (IDENTIFY word 47).
pub const MAX_MULTIPLE: u32 = 16;
/// Sectors read ahead / gathered per disk access within one command.
const CHUNK_SECTORS: u64 = 256;

pub const ST_BSY: u8 = 0x80;
pub const ST_DRDY: u8 = 0x40;
pub const ST_DSC: u8 = 0x10;
pub const ST_DRQ: u8 = 0x08;
pub const ST_ERR: u8 = 0x01;
pub const ER_ABRT: u8 = 0x04;
pub const ER_IDNF: u8 = 0x10;
pub const ER_UNC: u8 = 0x40;
pub const CTL_NIEN: u8 = 0x02;
pub const CTL_SRST: u8 = 0x04;
pub const CTL_HOB: u8 = 0x80;

/// One ATA drive.
struct Drive {
    disk: TrackedDisk,
    sectors: u64,
    /// Sectors per DRQ block for READ/WRITE MULTIPLE; 0 = multiple mode off.
    multiple: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

/// Where a PIO transfer's bytes come from or go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Disk sectors through `buf`.
    Disk,
    /// A device-generated block in `buf` (IDENTIFY).
    Block,
    /// An ATAPI command packet into `buf`.
    Packet,
    /// ATAPI data-in from `packet_data`.
    PacketData,
}

/// A PIO data transfer in progress.
#[derive(Debug)]
struct Transfer {
    dir: Dir,
    /// The drive the command went to. The guest may write the device register (select the
    /// other drive) while data moves: the data still belongs to this drive, whose size the
    /// LBA range was checked against.
    unit: usize,
    /// Disk LBA of `buf[0]`.
    buf_lba: u64,
    /// Sectors of the command not yet fetched into (In) or stored from (Out) `buf`.
    remaining: u64,
    /// Sectors per DRQ block.
    block: u64,
    /// Bytes left in the current DRQ block.
    block_left: usize,
    kind: Kind,
}

/// A register with its "high order byte" (the previous value, for LBA48).
#[derive(Clone, Copy, Default)]
struct Reg {
    cur: u8,
    hob: u8,
}

impl Reg {
    fn write(&mut self, v: u8) {
        self.hob = self.cur;
        self.cur = v;
    }
}

/// One channel: a task file shared by its two drives.
pub struct Channel {
    drives: [Option<Drive>; 2],
    /// ATAPI CD-ROMs, in the slots no disk holds.
    cds: [Option<SharedUnit<Cdrom>>; 2],
    /// Drives that have had no command since the last reset: the task file is shared here,
    /// so selecting such a drive loads its signature (ATA or ATAPI).
    signature_pending: [bool; 2],
    /// An ATAPI command's data-in and how much of it has been read.
    packet_data: Vec<u8>,
    packet_pos: usize,
    /// Byte count limit of the current PACKET command.
    packet_limit: usize,
    feature: Reg,
    nsect: Reg,
    lbal: Reg,
    lbam: Reg,
    lbah: Reg,
    device: u8,
    status: u8,
    error: u8,
    control: u8,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    xfer: Option<Transfer>,
    irq: Option<EventFd>,
    /// INTRQ asserted and not yet acknowledged by a status read.
    pub irq_pending: bool,
    /// Interrupts raised (for tests and benchmarks).
    pub irqs_raised: u64,
}

impl Channel {
    fn new(
        drives: [Option<Drive>; 2],
        cds: [Option<SharedUnit<Cdrom>>; 2],
        irq: Option<EventFd>,
    ) -> Channel {
        let mut c = Channel {
            drives,
            cds,
            signature_pending: [false; 2],
            packet_data: Vec::new(),
            packet_pos: 0,
            packet_limit: 0,
            feature: Reg::default(),
            nsect: Reg::default(),
            lbal: Reg::default(),
            lbam: Reg::default(),
            lbah: Reg::default(),
            device: 0,
            status: 0,
            error: 0,
            control: 0,
            buf: vec![0; CHUNK_SECTORS as usize * SECTOR],
            pos: 0,
            end: 0,
            xfer: None,
            irq,
            irq_pending: false,
            irqs_raised: 0,
        };
        c.reset();
        c
    }

    fn present(&self) -> bool {
        (0..2).any(|u| self.unit_present(u))
    }

    fn unit_present(&self, u: usize) -> bool {
        self.drives[u].is_some() || self.cds[u].is_some()
    }

    /// Loads drive `u`'s reset signature into the task file: ATAPI 0x14/0xEB, ATA 0/0.
    fn set_signature(&mut self, u: usize) {
        self.nsect.cur = 1;
        self.lbal.cur = 1;
        (self.lbam.cur, self.lbah.cur) = if self.cds[u].is_some() {
            (0x14, 0xeb)
        } else {
            (0, 0)
        };
    }

    fn unit(&self) -> usize {
        ((self.device >> 4) & 1) as usize
    }

    /// Software / power-on reset: the ATA signature in the task file, drive 0 selected.
    fn reset(&mut self) {
        self.xfer = None;
        self.pos = 0;
        self.end = 0;
        for r in [
            &mut self.nsect,
            &mut self.lbal,
            &mut self.lbam,
            &mut self.lbah,
        ] {
            *r = Reg::default();
        }
        self.device = 0;
        self.set_signature(0);
        self.signature_pending = [self.unit_present(0), self.unit_present(1)];
        self.packet_data = Vec::new();
        self.error = 1; // diagnostics passed
        self.status = ST_DRDY | ST_DSC;
        self.irq_pending = false;
        for d in self.drives.iter_mut().flatten() {
            d.multiple = 0;
        }
    }

    fn raise_irq(&mut self) {
        self.irq_pending = true;
        if self.control & CTL_NIEN == 0 {
            self.irqs_raised += 1;
            if let Some(e) = &self.irq {
                let _ = e.write(1);
            }
        }
    }

    fn done(&mut self) {
        self.xfer = None;
        self.status = ST_DRDY | ST_DSC;
        self.raise_irq();
    }

    fn abort(&mut self, err: u8) {
        self.xfer = None;
        self.error = err;
        self.status = ST_DRDY | ST_ERR;
        self.raise_irq();
    }

    fn lba28(&self) -> u64 {
        ((self.device as u64 & 0xf) << 24)
            | (self.lbah.cur as u64) << 16
            | (self.lbam.cur as u64) << 8
            | self.lbal.cur as u64
    }

    fn lba48(&self) -> u64 {
        (self.lbah.hob as u64) << 40
            | (self.lbam.hob as u64) << 32
            | (self.lbal.hob as u64) << 24
            | (self.lbah.cur as u64) << 16
            | (self.lbam.cur as u64) << 8
            | self.lbal.cur as u64
    }

    fn set_lba(&mut self, lba: u64, ext: bool) {
        self.lbal.cur = lba as u8;
        self.lbam.cur = (lba >> 8) as u8;
        self.lbah.cur = (lba >> 16) as u8;
        if ext {
            self.lbal.hob = (lba >> 24) as u8;
            self.lbam.hob = (lba >> 32) as u8;
            self.lbah.hob = (lba >> 40) as u8;
        } else {
            self.device = (self.device & 0xf0) | ((lba >> 24) as u8 & 0xf);
        }
    }

    /// Register read at `off` (0..8 command block; 8 = alternate status).
    fn reg_read(&mut self, off: u16) -> u8 {
        if !self.present() {
            return 0xff;
        }
        let hob = self.control & CTL_HOB != 0;
        let pick = |r: Reg| if hob { r.hob } else { r.cur };
        match off {
            1 => self.error,
            2 => pick(self.nsect),
            3 => pick(self.lbal),
            4 => pick(self.lbam),
            5 => pick(self.lbah),
            6 => self.device | 0xa0,
            7 | 8 => {
                if !self.unit_present(self.unit()) {
                    return 0;
                }
                if off == 7 {
                    self.irq_pending = false;
                }
                self.status
            }
            _ => 0xff,
        }
    }

    fn reg_write(&mut self, off: u16, v: u8) {
        if off != 8 {
            self.control &= !CTL_HOB;
        }
        match off {
            1 => self.feature.write(v),
            2 => self.nsect.write(v),
            3 => self.lbal.write(v),
            4 => self.lbam.write(v),
            5 => self.lbah.write(v),
            6 => {
                self.device = v & 0x5f;
                let u = self.unit();
                // Until the next command, each selection shows that drive's signature
                // (libata selects drive 1, then 0, then classifies both).
                if self.signature_pending[u] && self.xfer.is_none() {
                    self.set_signature(u);
                }
            }
            7 => {
                self.signature_pending = [false; 2];
                if self.cds[self.unit()].is_some() {
                    self.atapi_command(v)
                } else {
                    self.command(v)
                }
            }
            8 => {
                let was_reset = self.control & CTL_SRST != 0;
                self.control = v;
                if v & CTL_SRST != 0 {
                    self.status = ST_BSY;
                    self.xfer = None;
                } else if was_reset {
                    self.reset();
                }
            }
            _ => {}
        }
    }

    fn command(&mut self, cmd: u8) {
        let unit = self.unit();
        let Some(drive) = self.drives[unit].as_ref() else {
            // Commands to an absent drive are ignored (the drive that is there does not answer).
            return;
        };
        if self.status & ST_BSY != 0 {
            return;
        }
        let sectors = drive.sectors;
        let multiple = drive.multiple as u64;
        self.error = 0;
        let count28 = if self.nsect.cur == 0 {
            256
        } else {
            self.nsect.cur as u64
        };
        let count48 = match (self.nsect.hob as u64) << 8 | self.nsect.cur as u64 {
            0 => 65536,
            n => n,
        };
        let lba_mode = self.device & 0x40 != 0;
        match cmd {
            0xec => {
                let id = identify(drive);
                self.buf[..SECTOR].copy_from_slice(&id);
                self.start_in_block(SECTOR);
            }
            0x20 | 0x21 | 0x24 | 0xc4 | 0x29 | 0x30 | 0x31 | 0x34 | 0xc5 | 0x39 | 0x40 | 0x41
            | 0x42 => {
                let ext = matches!(cmd, 0x24 | 0x29 | 0x34 | 0x39 | 0x42);
                let (lba, count) = if ext {
                    (self.lba48(), count48)
                } else {
                    (self.lba28(), count28)
                };
                let is_multiple = matches!(cmd, 0xc4 | 0x29 | 0xc5 | 0x39);
                if !lba_mode || (is_multiple && multiple == 0) {
                    // CHS addressing is not supported; MULTIPLE needs SET MULTIPLE MODE.
                    return self.abort(ER_ABRT);
                }
                if lba.checked_add(count).is_none_or(|e| e > sectors) {
                    return self.abort(ER_IDNF | ER_ABRT);
                }
                let block = if is_multiple { multiple } else { 1 };
                match cmd {
                    0x40..=0x42 => {
                        // READ VERIFY: range checked, nothing transferred.
                        self.set_lba(lba + count - 1, ext);
                        self.done()
                    }
                    0x20 | 0x21 | 0x24 | 0xc4 | 0x29 => self.start_read(lba, count, block),
                    _ => self.start_write(lba, count, block),
                }
            }
            0xc6 => {
                let n = self.nsect.cur as u32;
                if n == 0 || (n.is_power_of_two() && n <= MAX_MULTIPLE) {
                    if let Some(d) = self.drives[unit].as_mut() {
                        d.multiple = n;
                    }
                    self.done()
                } else {
                    self.abort(ER_ABRT)
                }
            }
            0xe7 | 0xea => {
                let r = self.drives[unit].as_ref().map(|d| d.disk.flush());
                match r {
                    Some(Ok(())) => self.done(),
                    _ => self.abort(ER_ABRT),
                }
            }
            0xef => self.set_features(),
            0xf8 | 0x27 => {
                let ext = cmd == 0x27;
                let max = if ext {
                    sectors - 1
                } else {
                    (sectors - 1).min(0x0fff_ffff)
                };
                self.set_lba(max, ext);
                self.done()
            }
            0x91 | 0x10..=0x1f | 0xe0..=0xe3 | 0xe5 | 0x94..=0x99 => {
                if cmd == 0xe5 {
                    self.nsect.cur = 0xff; // CHECK POWER MODE: active
                }
                self.done()
            }
            0x90 => {
                self.reset();
                self.raise_irq();
            }
            _ => self.abort(ER_ABRT),
        }
    }

    /// SET FEATURES, for disks and packet devices alike.
    fn set_features(&mut self) {
        match self.feature.cur {
            // Set transfer mode: PIO default / PIO modes 0-4 only (no DMA advertised).
            0x03 => match self.nsect.cur {
                0x00 | 0x01 | 0x08..=0x0c => self.done(),
                _ => self.abort(ER_ABRT),
            },
            // Write cache, read look-ahead, reverting to defaults: accepted.
            0x02 | 0x82 | 0xaa | 0x55 | 0xcc | 0x66 => self.done(),
            _ => self.abort(ER_ABRT),
        }
    }

    /// A device-generated block (IDENTIFY) of `len` bytes in `buf` for the host to read.
    fn start_in_block(&mut self, len: usize) {
        self.pos = 0;
        self.end = len;
        self.xfer = Some(Transfer {
            dir: Dir::In,
            unit: self.unit(),
            buf_lba: 0,
            remaining: 0,
            block: 1,
            block_left: len,
            kind: Kind::Block,
        });
        self.status = ST_DRDY | ST_DSC | ST_DRQ;
        self.raise_irq();
    }

    fn start_read(&mut self, lba: u64, count: u64, block: u64) {
        self.xfer = Some(Transfer {
            dir: Dir::In,
            unit: self.unit(),
            buf_lba: lba,
            remaining: count,
            block,
            block_left: 0,
            kind: Kind::Disk,
        });
        self.pos = 0;
        self.end = 0;
        self.next_in_block();
    }

    /// Makes the next DRQ block of a read available (fetching from the disk when the
    /// buffer is used up) and interrupts; ends the command when nothing is left.
    fn next_in_block(&mut self) {
        let Some(x) = self.xfer.as_mut() else { return };
        if self.pos == self.end {
            if x.remaining == 0 {
                // The last block has been read: no interrupt at the end of a PIO read.
                self.xfer = None;
                self.status = ST_DRDY | ST_DSC;
                return;
            }
            x.buf_lba += (self.end / SECTOR) as u64;
            let n = x.remaining.min(CHUNK_SECTORS);
            let lba = x.buf_lba;
            let r = match self.drives[x.unit].as_ref() {
                Some(d) => d
                    .disk
                    .read(&mut self.buf[..n as usize * SECTOR], lba * SECTOR as u64),
                None => Err(std::io::ErrorKind::NotFound.into()),
            };
            if r.is_err() {
                self.set_lba(lba, true);
                return self.abort(ER_UNC);
            }
            let x = self.xfer.as_mut().expect("transfer in progress");
            x.remaining -= n;
            self.pos = 0;
            self.end = n as usize * SECTOR;
        }
        let x = self.xfer.as_mut().expect("transfer in progress");
        x.block_left = (x.block as usize * SECTOR).min(self.end - self.pos);
        self.status = ST_DRDY | ST_DSC | ST_DRQ;
        self.raise_irq();
    }

    fn start_write(&mut self, lba: u64, count: u64, block: u64) {
        self.pos = 0;
        self.end = count.min(CHUNK_SECTORS) as usize * SECTOR;
        self.xfer = Some(Transfer {
            dir: Dir::Out,
            unit: self.unit(),
            buf_lba: lba,
            remaining: count,
            block,
            block_left: (block.min(count) as usize) * SECTOR,
            kind: Kind::Disk,
        });
        // PIO out: the first block is requested without an interrupt.
        self.status = ST_DRDY | ST_DSC | ST_DRQ;
    }

    /// A DRQ block of a write is complete: store the buffer when it is full, then ask for
    /// the next block or finish.
    fn out_block_done(&mut self) {
        let Some(x) = self.xfer.as_mut() else { return };
        if self.pos == self.end {
            let lba = x.buf_lba;
            let n = (self.end / SECTOR) as u64;
            let r = match self.drives[x.unit].as_ref() {
                Some(d) => d.disk.write(&self.buf[..self.end], lba * SECTOR as u64),
                None => Err(std::io::ErrorKind::NotFound.into()),
            };
            if r.is_err() {
                self.set_lba(lba, true);
                return self.abort(ER_ABRT);
            }
            let x = self.xfer.as_mut().expect("transfer in progress");
            x.remaining -= n;
            x.buf_lba += n;
            if x.remaining == 0 {
                return self.done();
            }
            self.pos = 0;
            self.end = x.remaining.min(CHUNK_SECTORS) as usize * SECTOR;
        }
        let x = self.xfer.as_mut().expect("transfer in progress");
        let left_in_cmd = (x.remaining as usize * SECTOR) - self.pos;
        x.block_left = (x.block as usize * SECTOR).min(left_in_cmd);
        self.status = ST_DRDY | ST_DSC | ST_DRQ;
        self.raise_irq();
    }

    /// Data port read: a byte stream, whatever the access width and repeat count.
    fn data_read(&mut self, data: &mut [u8]) {
        let mut done = 0;
        while done < data.len() {
            let Some(x) = self.xfer.as_mut() else { break };
            if x.dir != Dir::In || x.block_left == 0 {
                break;
            }
            let n = (data.len() - done).min(x.block_left);
            let src = match x.kind {
                Kind::PacketData => {
                    self.packet_pos += n;
                    &self.packet_data[self.packet_pos - n..self.packet_pos]
                }
                _ => {
                    self.pos += n;
                    &self.buf[self.pos - n..self.pos]
                }
            };
            data[done..done + n].copy_from_slice(src);
            x.block_left -= n;
            done += n;
            if x.block_left == 0 {
                match x.kind {
                    Kind::Disk => self.next_in_block(),
                    Kind::PacketData => self.next_packet_chunk(),
                    Kind::Block | Kind::Packet => {
                        self.xfer = None;
                        self.status = ST_DRDY | ST_DSC;
                    }
                }
            }
        }
        // Past the end of the data the bus floats.
        data[done..].fill(0xff);
    }

    fn data_write(&mut self, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let Some(x) = self.xfer.as_mut() else { break };
            if x.dir != Dir::Out || x.block_left == 0 {
                break;
            }
            let n = (data.len() - done).min(x.block_left);
            self.buf[self.pos..self.pos + n].copy_from_slice(&data[done..done + n]);
            self.pos += n;
            x.block_left -= n;
            done += n;
            if x.block_left == 0 {
                if x.kind == Kind::Packet {
                    self.packet_received();
                } else {
                    self.out_block_done();
                }
            }
        }
    }

    /// A command to an ATAPI drive: the packet interface and the few ATA commands a
    /// packet device takes; anything else aborts (IDENTIFY DEVICE with the signature in the
    /// task file, so the host learns it is talking to a packet device).
    fn atapi_command(&mut self, cmd: u8) {
        if self.status & ST_BSY != 0 {
            return;
        }
        self.error = 0;
        match cmd {
            0xa0 => {
                if self.feature.cur & 1 != 0 {
                    // DMA was asked for; this controller has no bus master.
                    return self.abort(ER_ABRT);
                }
                let limit = (self.lbah.cur as usize) << 8 | self.lbam.cur as usize;
                // 0 means the largest even count; an odd limit is rounded down to even.
                self.packet_limit = match limit & !1 {
                    0 => 0xfffe,
                    l => l,
                };
                self.pos = 0;
                self.end = 12;
                self.xfer = Some(Transfer {
                    dir: Dir::Out,
                    unit: self.unit(),
                    buf_lba: 0,
                    remaining: 0,
                    block: 1,
                    block_left: 12,
                    kind: Kind::Packet,
                });
                self.nsect.cur = INT_REASON_COD;
                self.status = ST_DRDY | ST_DSC | ST_DRQ;
            }
            0xa1 => {
                self.buf[..SECTOR].copy_from_slice(&identify_packet());
                self.start_in_block(SECTOR);
            }
            0x08 => {
                // DEVICE RESET: the signature, not ready, no interrupt.
                self.xfer = None;
                self.set_signature(self.unit());
                self.error = 1;
                self.status = 0;
            }
            0xec => {
                self.set_signature(self.unit());
                self.abort(ER_ABRT)
            }
            0xef => self.set_features(),
            0xe5 => {
                self.nsect.cur = 0xff;
                self.done()
            }
            0x90 => {
                self.reset();
                self.raise_irq();
            }
            _ => self.abort(ER_ABRT),
        }
    }

    /// The 12-byte packet is in: execute it on the drive the command went to.
    fn packet_received(&mut self) {
        let Some(unit) = self.xfer.as_ref().map(|x| x.unit) else {
            return;
        };
        let Some(cd) = self.cds[unit].clone() else {
            return self.abort(ER_ABRT);
        };
        let reply = cd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .execute(&self.buf[..12], &[]);
        self.xfer = None;
        if let Some(sense) = reply.sense {
            self.error = sense.key << 4;
            self.nsect.cur = INT_REASON_IO | INT_REASON_COD;
            self.status = ST_DRDY | ST_ERR;
            return self.raise_irq();
        }
        self.packet_data = reply.data;
        self.packet_pos = 0;
        self.xfer = Some(Transfer {
            dir: Dir::In,
            unit,
            buf_lba: 0,
            remaining: 0,
            block: 1,
            block_left: 0,
            kind: Kind::PacketData,
        });
        self.next_packet_chunk();
    }

    /// Offers the next chunk of ATAPI data-in (byte count in LBA mid/high), or completes
    /// the command when all of it has been read.
    fn next_packet_chunk(&mut self) {
        let left = self.packet_data.len() - self.packet_pos;
        if left == 0 {
            self.xfer = None;
            self.packet_data = Vec::new();
            self.nsect.cur = INT_REASON_IO | INT_REASON_COD;
            self.status = ST_DRDY | ST_DSC;
            return self.raise_irq();
        }
        let n = left.min(self.packet_limit);
        if let Some(x) = self.xfer.as_mut() {
            x.block_left = n;
        }
        self.lbam.cur = n as u8;
        self.lbah.cur = (n >> 8) as u8;
        self.nsect.cur = INT_REASON_IO;
        self.status = ST_DRDY | ST_DSC | ST_DRQ;
        self.raise_irq();
    }

    /// Port access at command-block offset `off` (0..8) or 8 for the control port, with
    /// the access width `size` (1, 2 or 4) and `data.len() / size` repetitions.
    pub fn pio_read(&mut self, off: u16, size: usize, data: &mut [u8]) {
        if off == 0 {
            if !self.present() {
                return data.fill(0xff);
            }
            return self.data_read(data);
        }
        let size = size.clamp(1, 4);
        for elem in data.chunks_mut(size) {
            for (i, b) in elem.iter_mut().enumerate() {
                // A wide access to an 8-bit register reads the following ports too.
                *b = match off + i as u16 {
                    o @ 1..=7 if off <= 7 => self.reg_read(o),
                    8 if i == 0 => self.reg_read(8),
                    _ => 0xff,
                };
            }
        }
    }

    pub fn pio_write(&mut self, off: u16, size: usize, data: &[u8]) {
        if off == 0 {
            return self.data_write(data);
        }
        let size = size.clamp(1, 4);
        for elem in data.chunks(size) {
            for (i, b) in elem.iter().enumerate() {
                match off + i as u16 {
                    o @ 1..=7 if off <= 7 => self.reg_write(o, *b),
                    8 if i == 0 => self.reg_write(8, *b),
                    _ => {}
                }
            }
        }
    }
}

fn put_string(id: &mut [u16; 256], word: usize, words: usize, s: &[u8]) {
    for i in 0..words {
        let a = s.get(2 * i).copied().unwrap_or(b' ');
        let b = s.get(2 * i + 1).copied().unwrap_or(b' ');
        let clean = |c: u8| if c.is_ascii_graphic() { c } else { b' ' };
        id[word + i] = (clean(a) as u16) << 8 | clean(b) as u16;
    }
}

/// Interrupt reason (sector count register) bits of a packet device.
pub const INT_REASON_COD: u8 = 0x01;
pub const INT_REASON_IO: u8 = 0x02;

/// IDENTIFY PACKET DEVICE data: ATAPI CD-ROM, removable, 12-byte packets, DRQ within 50 µs
/// of PACKET (no interrupt for the packet), LBA, PIO 3–4 and no DMA.
fn identify_packet() -> [u8; SECTOR] {
    let mut id = [0u16; 256];
    id[0] = 0x85c0;
    put_string(&mut id, 10, 10, b"IGNITE-CD0");
    put_string(&mut id, 23, 4, b"0.1");
    put_string(&mut id, 27, 20, b"IGNITE VIO CD-ROM");
    id[49] = 0x0200;
    id[53] = 0x0003;
    id[64] = 0x0003;
    id[65] = 120;
    id[66] = 120;
    id[67] = 120;
    id[68] = 120;
    id[71] = 30;
    id[72] = 30;
    id[80] = 0x001e; // ATA/ATAPI-4..7
    words_le(&id)
}

/// IDENTIFY words as the bytes the data port returns.
fn words_le(id: &[u16; 256]) -> [u8; SECTOR] {
    let mut out = [0u8; SECTOR];
    for (i, w) in id.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// IDENTIFY DEVICE data: LBA28 + LBA48, PIO modes 3–4, no DMA, multiple up to 16, flush.
fn identify(d: &Drive) -> [u8; SECTOR] {
    let mut id = [0u16; 256];
    let lba28 = d.sectors.min(0x0fff_ffff);
    let cyls = (d.sectors / (16 * 63)).clamp(1, 16383) as u16;
    id[0] = 0x0040;
    id[1] = cyls;
    id[3] = 16;
    id[6] = 63;
    put_string(&mut id, 10, 10, d.disk.file.id());
    put_string(&mut id, 23, 4, b"0.1");
    put_string(&mut id, 27, 20, b"IGNITE VIO DISK");
    id[47] = 0x8000 | MAX_MULTIPLE as u16;
    id[49] = 0x0200; // LBA; no DMA
    id[50] = 0x4000;
    id[53] = 0x0003;
    id[54] = cyls;
    id[55] = 16;
    id[56] = 63;
    let chs = cyls as u32 * 16 * 63;
    id[57] = chs as u16;
    id[58] = (chs >> 16) as u16;
    id[59] = if d.multiple > 0 {
        0x0100 | d.multiple as u16
    } else {
        0
    };
    id[60] = lba28 as u16;
    id[61] = (lba28 >> 16) as u16;
    id[64] = 0x0003; // PIO 3 and 4
    id[65] = 120;
    id[66] = 120;
    id[67] = 120;
    id[68] = 120;
    id[80] = 0x00f0; // ATA-4..7
    id[82] = 0x4020; // write cache (bit 14: NOP... reported as a valid word)
    id[83] = 0x7400; // LBA48, FLUSH CACHE, FLUSH CACHE EXT; bit 14 = word valid
    id[84] = 0x4000;
    id[85] = 0x4020;
    id[86] = 0x3400;
    id[87] = 0x4000;
    for i in 0..4 {
        id[100 + i] = (d.sectors >> (16 * i)) as u16;
    }
    words_le(&id)
}

/// The two channels behind the legacy ports.
pub struct Ide {
    pub channels: [Channel; 2],
}

impl Ide {
    /// Disk i goes to channel i / 2, drive i % 2; the CD-ROMs take the slots after the
    /// disks. `irqs` are eventfds registered as irqfds on GSI 14 and 15 (None in unit tests).
    pub fn new(
        disks: &[DiskConfig],
        cds: Vec<SharedUnit<Cdrom>>,
        irqs: [Option<EventFd>; 2],
    ) -> Result<Ide> {
        if disks.len() + cds.len() > MAX_DISKS {
            return Err(Error::TooManyVioDisks(disks.len() + cds.len()));
        }
        let opened = disks
            .iter()
            .map(TrackedDisk::open)
            .collect::<Result<Vec<_>>>()?;
        Self::with_units(opened, cds, irqs)
    }

    /// As `new`, over disks already open (in-memory disks for fuzzing).
    pub fn with_units(
        disks: Vec<TrackedDisk>,
        cds: Vec<SharedUnit<Cdrom>>,
        irqs: [Option<EventFd>; 2],
    ) -> Result<Ide> {
        if disks.len() + cds.len() > MAX_DISKS {
            return Err(Error::TooManyVioDisks(disks.len() + cds.len()));
        }
        let mut slots: Vec<Option<SharedUnit<Cdrom>>> = vec![None; disks.len()];
        slots.extend(cds.into_iter().map(Some));
        slots.resize_with(4, || None);
        let mut cd_it = slots.into_iter();
        let mut cds2 = || [cd_it.next().flatten(), cd_it.next().flatten()];
        let (ca, cb) = (cds2(), cds2());
        let mut drives: Vec<Option<Drive>> = disks
            .into_iter()
            .map(|disk| {
                let sectors = disk.file.size / SECTOR as u64;
                Some(Drive {
                    disk,
                    sectors,
                    multiple: 0,
                })
            })
            .collect();
        drives.resize_with(4, || None);
        let mut it = drives.into_iter();
        let mut next2 = || [it.next().flatten(), it.next().flatten()];
        let [irq0, irq1] = irqs;
        let (a, b) = (next2(), next2());
        Ok(Ide {
            channels: [Channel::new(a, ca, irq0), Channel::new(b, cb, irq1)],
        })
    }

    /// Trackers of the writable disks, in disk order.
    pub fn trackers(&self) -> Vec<std::sync::Arc<crate::change_tracking::ChangeTracker>> {
        self.channels
            .iter()
            .flat_map(|c| c.drives.iter().flatten())
            .filter_map(|d| d.disk.tracker.clone())
            .collect()
    }

    /// Which channel and register a port is: (channel, offset 0..8, 8 = control).
    pub fn decode(port: u16) -> Option<(usize, u16)> {
        match port {
            PRIMARY_BASE..=0x1f7 => Some((0, port - PRIMARY_BASE)),
            PRIMARY_CTRL => Some((0, 8)),
            SECONDARY_BASE..=0x177 => Some((1, port - SECONDARY_BASE)),
            SECONDARY_CTRL => Some((1, 8)),
            _ => None,
        }
    }
}

/// The PCI function ata_piix binds: 82371SB PIIX3 IDE in compatibility mode (fixed ports,
/// ISA IRQs), both channels' decode enabled in IDETIM (config 0x41/0x43 bit 7) as firmware
/// leaves them. No bus-master BAR: the driver uses PIO.
pub fn piix_function() -> ConfigOnly {
    let mut c = PciConfig::new(Ids {
        vendor: 0x8086,
        device: 0x7010,
        class: 0x01,
        subclass: 0x01,
        prog_if: 0x80,
        revision: 0,
        subsystem_vendor: 0,
        subsystem: 0,
    });
    c.bytes_mut()[0x41] = 0x80;
    c.bytes_mut()[0x43] = 0x80;
    c.set16(0x04, 0x0001); // I/O decode on
    ConfigOnly(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change_tracking::ChangeTracker;
    use std::os::unix::fs::FileExt;

    struct Rig {
        _dir: vmm_sys_util::tempdir::TempDir,
        paths: Vec<std::path::PathBuf>,
        ide: Ide,
        irq: EventFd,
    }

    fn rig(n: usize, size: u64) -> Rig {
        rig_sized(&vec![size; n])
    }

    fn rig_sized(sizes: &[u64]) -> Rig {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-ide-test").unwrap();
        let mut disks = Vec::new();
        let mut paths = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let p = dir.as_path().join(format!("d{i}.img"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(size).unwrap();
            f.write_all_at(format!("DISK{i}").as_bytes(), 0).unwrap();
            disks.push(DiskConfig::parse(&p.display().to_string()).unwrap());
            paths.push(p);
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ide = Ide::new(&disks, Vec::new(), [Some(irq.try_clone().unwrap()), None]).unwrap();
        Rig {
            _dir: dir,
            paths,
            ide,
            irq,
        }
    }

    fn rd(c: &mut Channel, off: u16) -> u8 {
        let mut b = [0u8];
        c.pio_read(off, 1, &mut b);
        b[0]
    }
    fn wr(c: &mut Channel, off: u16, v: u8) {
        c.pio_write(off, 1, &[v]);
    }
    fn cmd28(c: &mut Channel, unit: u8, cmd: u8, lba: u64, count: u8) {
        wr(c, 6, 0xe0 | unit << 4 | ((lba >> 24) as u8 & 0xf));
        wr(c, 2, count);
        wr(c, 3, lba as u8);
        wr(c, 4, (lba >> 8) as u8);
        wr(c, 5, (lba >> 16) as u8);
        wr(c, 7, cmd);
    }
    fn cmd48(c: &mut Channel, cmd: u8, lba: u64, count: u16) {
        wr(c, 6, 0x40);
        for (off, v) in [
            (2, (count >> 8) as u8),
            (3, (lba >> 24) as u8),
            (4, (lba >> 32) as u8),
            (5, (lba >> 40) as u8),
            (2, count as u8),
            (3, lba as u8),
            (4, (lba >> 8) as u8),
            (5, (lba >> 16) as u8),
        ] {
            wr(c, off, v);
        }
        wr(c, 7, cmd);
    }
    fn irqs(r: &Rig) -> u64 {
        r.irq.read().unwrap_or(0)
    }

    #[test]
    fn reset_signature_identify_and_absent_drives() {
        let mut r = rig(1, 64 << 20);
        let c = &mut r.ide.channels[0];
        wr(c, 8, CTL_SRST | CTL_NIEN);
        assert_eq!(rd(c, 8) & ST_BSY, ST_BSY, "busy while SRST is set");
        wr(c, 8, CTL_NIEN);
        assert_eq!([rd(c, 2), rd(c, 3), rd(c, 4), rd(c, 5)], [1, 1, 0, 0]);
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC);
        // Drive 1 is absent: status 0; commands to it are ignored.
        wr(c, 6, 0xb0);
        assert_eq!(rd(c, 7), 0);
        wr(c, 7, 0xec);
        assert_eq!(rd(c, 8), 0);
        wr(c, 6, 0xa0);
        wr(c, 8, 0);
        wr(c, 7, 0xec);
        assert_eq!(rd(c, 8), ST_DRDY | ST_DSC | ST_DRQ);
        assert_eq!(irqs(&r), 1);
        let c = &mut r.ide.channels[0];
        // One string-I/O exit with 256 words (`rep insw`), then the bus floats.
        let mut id = [0u8; 514];
        c.pio_read(0, 2, &mut id);
        assert_eq!(&id[512..], &[0xff, 0xff]);
        let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
        assert_eq!(w(0), 0x40);
        assert_eq!(w(60) as u64 | (w(61) as u64) << 16, (64 << 20) / 512);
        assert_eq!(w(100) as u64 | (w(101) as u64) << 16, (64 << 20) / 512);
        assert_eq!(&id[54..60], b"GIINET", "model words are byte-swapped");
        assert_eq!(
            &id[20..26],
            b"0di.gm",
            "serial: the image name, byte-swapped"
        );
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC, "DRQ clears after the block");
        // The empty secondary channel floats.
        let s = &mut r.ide.channels[1];
        assert_eq!(rd(s, 7), 0xff);
        let mut d = [0u8; 4];
        s.pio_read(0, 2, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn read_write_sectors_multiple_ext_and_tracking() {
        let size = 300u64 << 30; // sparse; LBA above 2^28
        let mut r = rig(2, size);
        let sectors = size / 512;
        let c = &mut r.ide.channels[0];
        // WRITE SECTORS: 3 blocks of one sector; data arriving in odd-sized pieces and as
        // 32-bit accesses is still a byte stream.
        cmd28(c, 0, 0x30, 100, 3);
        assert_eq!(rd(c, 8) & ST_DRQ, ST_DRQ);
        let data: Vec<u8> = (0..1536u32).map(|i| (i * 7) as u8).collect();
        c.pio_write(0, 2, &data[..100]);
        c.pio_write(0, 4, &data[100..1000]);
        c.pio_write(0, 2, &data[1000..]);
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC);
        assert_eq!(irqs(&r), 3, "one interrupt per written block");
        let f = std::fs::File::open(&r.paths[0]).unwrap();
        let mut back = vec![0u8; 1536];
        f.read_exact_at(&mut back, 100 * 512).unwrap();
        assert_eq!(back, data);
        // READ SECTORS back: interrupt per block, none at the end.
        let c = &mut r.ide.channels[0];
        cmd28(c, 0, 0x20, 100, 3);
        let mut got = vec![0u8; 1536];
        c.pio_read(0, 2, &mut got);
        assert_eq!(got, data);
        assert_eq!(irqs(&r), 3);
        // MULTIPLE without SET MULTIPLE MODE aborts.
        let c = &mut r.ide.channels[0];
        cmd28(c, 0, 0xc4, 0, 1);
        assert_eq!((rd(c, 7), rd(c, 1)), (ST_DRDY | ST_ERR, ER_ABRT));
        cmd28(c, 0, 0xc6, 0, 5);
        assert_eq!(rd(c, 1), ER_ABRT, "multiple count must be a power of two");
        cmd28(c, 0, 0xc6, 0, 8);
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC);
        let _ = irqs(&r);
        // WRITE MULTIPLE EXT near the end of a 300 GiB disk: 20 sectors = 8 + 8 + 4.
        let lba = sectors - 20;
        let c = &mut r.ide.channels[0];
        cmd48(c, 0x39, lba, 20);
        let big: Vec<u8> = (0..20 * 512u32).map(|i| (i / 512 + i) as u8).collect();
        c.pio_write(0, 2, &big);
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC);
        assert_eq!(irqs(&r), 3);
        let c = &mut r.ide.channels[0];
        cmd48(c, 0x29, lba, 20);
        let mut got = vec![0u8; 20 * 512];
        c.pio_read(0, 2, &mut got);
        assert_eq!(got, big);
        assert_eq!(
            irqs(&r),
            3,
            "READ MULTIPLE EXT: one interrupt per block of 8"
        );
        // Past the end: IDNF before any data moves.
        let c = &mut r.ide.channels[0];
        cmd48(c, 0x24, sectors - 1, 2);
        assert_eq!(rd(c, 7), ST_DRDY | ST_ERR);
        assert_eq!(rd(c, 1) & ER_IDNF, ER_IDNF);
        // 28-bit count 0 means 256 sectors, read in one chunk of the buffer.
        cmd28(c, 0, 0x20, 0, 0);
        let mut all = vec![0u8; 256 * 512 + 2];
        c.pio_read(0, 2, &mut all);
        assert_eq!(&all[..5], b"DISK0");
        assert_eq!(&all[256 * 512..], &[0xff, 0xff]);
        // Drive 1 is its own image.
        wr(c, 6, 0xf0);
        cmd28(c, 1, 0x20, 0, 1);
        let mut s = [0u8; 512];
        c.pio_read(0, 2, &mut s);
        assert_eq!(&s[..5], b"DISK1");
        drop(r.ide);
        let set = ChangeTracker::load(&r.paths[0]).unwrap();
        let marked: Vec<u64> = (0..set.regions()).filter(|&x| set.is_marked(x)).collect();
        let last = (size - 1) / (64 << 10);
        assert_eq!(marked, vec![0, last]);
        assert_eq!(ChangeTracker::load(&r.paths[1]).unwrap().count(), 0);
    }

    #[test]
    fn hob_native_max_features_flush_and_nien() {
        let mut r = rig(1, 64 << 20);
        let sectors = (64u64 << 20) / 512;
        let c = &mut r.ide.channels[0];
        wr(c, 8, CTL_NIEN);
        cmd48(c, 0x27, 0, 0);
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC);
        let lo = rd(c, 3) as u64 | (rd(c, 4) as u64) << 8 | (rd(c, 5) as u64) << 16;
        wr(c, 8, CTL_NIEN | CTL_HOB);
        let hi = rd(c, 3) as u64 | (rd(c, 4) as u64) << 8 | (rd(c, 5) as u64) << 16;
        assert_eq!(lo | hi << 24, sectors - 1);
        assert_eq!(irqs(&r), 0, "nIEN masks the interrupt");
        let c = &mut r.ide.channels[0];
        wr(c, 8, 0);
        for (feature, count, ok) in [
            (3, 0x0c, true),
            (3, 0x45, false),
            (3, 0x22, false),
            (0x02, 0, true),
            (0x77, 0, false),
        ] {
            wr(c, 1, feature);
            cmd28(c, 0, 0xef, 0, count);
            assert_eq!(
                rd(c, 7) & ST_ERR == 0,
                ok,
                "SET FEATURES {feature:#x}/{count:#x}"
            );
        }
        for cmd in [0xe7, 0xea, 0x91, 0xe0, 0xe5] {
            cmd28(c, 0, cmd, 0, 0);
            assert_eq!(rd(c, 7), ST_DRDY | ST_DSC, "command {cmd:#x}");
        }
        cmd28(c, 0, 0x00, 0, 0);
        assert_eq!((rd(c, 7), rd(c, 1)), (ST_DRDY | ST_ERR, ER_ABRT));
        // CHS addressing (LBA bit clear) is refused.
        wr(c, 6, 0xa0);
        wr(c, 7, 0x20);
        assert_eq!(rd(c, 1), ER_ABRT);
        // A 16-bit read of the sector count register reads LBA low in its high byte.
        cmd28(c, 0, 0x40, 0x1234, 0x56);
        let mut w = [0u8; 2];
        c.pio_read(2, 2, &mut w);
        assert_eq!(w[0], 0x56);
        assert_eq!(
            irqs(&r),
            13,
            "5 SET FEATURES, 5 commands, 2 aborts, READ VERIFY"
        );
    }

    #[test]
    fn data_goes_to_the_drive_the_command_went_to() {
        // Drive 0: 1 MiB; drive 1: 64 KiB (128 sectors). The command goes to drive 0 at an
        // LBA past drive 1's end, then the guest selects drive 1 while the data moves.
        let mut r = rig_sized(&[1 << 20, 64 << 10]);
        let c = &mut r.ide.channels[0];
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
        cmd28(c, 0, 0x30, 1000, 2);
        wr(c, 6, 0xf0);
        c.pio_write(0, 2, &data[..512]);
        wr(c, 6, 0xe0);
        wr(c, 6, 0xf0);
        c.pio_write(0, 2, &data[512..]);
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC, "the write completed");
        let len = |i: usize| std::fs::metadata(&r.paths[i]).unwrap().len();
        assert_eq!(len(1), 64 << 10, "drive 1's image must not grow");
        let mut back = vec![0u8; 1024];
        let f = std::fs::File::open(&r.paths[0]).unwrap();
        f.read_exact_at(&mut back, 1000 * 512).unwrap();
        assert_eq!(back, data, "the data belongs to drive 0");
        // A read switched over the same way still returns drive 0's sectors.
        let c = &mut r.ide.channels[0];
        cmd28(c, 0, 0x20, 1000, 2);
        wr(c, 6, 0xf0);
        let mut got = vec![0u8; 1024];
        c.pio_read(0, 2, &mut got);
        assert_eq!(got, data);
        drop(r.ide);
        let marked = |i: usize| {
            let set = ChangeTracker::load(&r.paths[i]).unwrap();
            (0..set.regions())
                .filter(|&x| set.is_marked(x))
                .collect::<Vec<_>>()
        };
        assert_eq!(marked(0), vec![1000 * 512 / (64 << 10)]);
        assert_eq!(marked(1), Vec::<u64>::new());
    }

    /// Sends `cdb` to the CD on `unit` as a PACKET command with byte count limit `limit`,
    /// reading whatever data-in is offered chunk by chunk: (data, chunk sizes, final status,
    /// error register).
    fn packet(c: &mut Channel, unit: u8, cdb: &[u8], limit: u16) -> (Vec<u8>, Vec<usize>, u8, u8) {
        wr(c, 6, 0xa0 | unit << 4);
        wr(c, 1, 0);
        wr(c, 4, limit as u8);
        wr(c, 5, (limit >> 8) as u8);
        wr(c, 7, 0xa0);
        assert_eq!(rd(c, 8), ST_DRDY | ST_DSC | ST_DRQ, "DRQ for the packet");
        assert_eq!(rd(c, 2), INT_REASON_COD);
        let mut p = cdb.to_vec();
        p.resize(12, 0);
        c.pio_write(0, 2, &p);
        let (mut data, mut chunks) = (Vec::new(), Vec::new());
        while rd(c, 8) & ST_DRQ != 0 {
            assert_eq!(rd(c, 2), INT_REASON_IO, "data-in phase");
            let n = rd(c, 4) as usize | (rd(c, 5) as usize) << 8;
            let mut chunk = vec![0u8; n];
            c.pio_read(0, 2, &mut chunk);
            data.extend(chunk);
            chunks.push(n);
        }
        assert_eq!(rd(c, 2), INT_REASON_IO | INT_REASON_COD, "completion");
        (data, chunks, rd(c, 7), rd(c, 1))
    }

    #[test]
    fn atapi_signature_identify_packet_reads_and_media_change() {
        use crate::scsi::cdrom::{tests::iso, Interface};
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-atapi").unwrap();
        let p = dir.as_path().join("d.img");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let disk =
            TrackedDisk::open(&DiskConfig::parse(&p.display().to_string()).unwrap()).unwrap();
        let cd = std::sync::Arc::new(std::sync::Mutex::new(Cdrom::new(
            Some(iso(8)),
            Interface::Atapi,
        )));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ide = Ide::with_units(
            vec![disk],
            vec![cd.clone()],
            [Some(irq.try_clone().unwrap()), None],
        )
        .unwrap();
        let c = &mut ide.channels[0];
        wr(c, 8, CTL_SRST);
        wr(c, 8, 0);
        // Each drive shows its own signature when selected after the reset.
        wr(c, 6, 0xb0);
        assert_eq!([rd(c, 2), rd(c, 3), rd(c, 4), rd(c, 5)], [1, 1, 0x14, 0xeb]);
        wr(c, 6, 0xa0);
        assert_eq!([rd(c, 4), rd(c, 5)], [0, 0]);
        wr(c, 6, 0xb0);
        assert_eq!(
            [rd(c, 4), rd(c, 5)],
            [0x14, 0xeb],
            "again, as libata classifies"
        );
        // IDENTIFY DEVICE aborts on the packet device, leaving the signature.
        wr(c, 6, 0xb0);
        wr(c, 7, 0xec);
        assert_eq!(
            (rd(c, 7), rd(c, 1), rd(c, 4), rd(c, 5)),
            (ST_DRDY | ST_ERR, ER_ABRT, 0x14, 0xeb)
        );
        wr(c, 7, 0xa1);
        let mut id = [0u8; 512];
        c.pio_read(0, 2, &mut id);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x85c0);
        assert_eq!(&id[54..60], b"GIINET");
        let _ = irq.read();
        // READ(10) of 3 blocks with a 2 KiB byte count: three chunks, one interrupt each,
        // and one at completion; the data is the image's.
        let (data, chunks, st, _) = packet(c, 1, &[0x28, 0, 0, 0, 0, 5, 0, 0, 3], 2048);
        assert_eq!(chunks, vec![2048; 3]);
        assert_eq!(st, ST_DRDY | ST_DSC);
        assert_eq!(irq.read().unwrap(), 4);
        assert_eq!(
            (&data[..4], &data[4096..4100]),
            (&[5, 0, 0, 0][..], &[7, 0, 0, 0][..])
        );
        // Byte count 0 means 0xfffe; an odd limit rounds down.
        let (data, chunks, ..) = packet(c, 1, &[0x28, 0, 0, 0, 0, 0, 0, 0, 8], 0);
        assert_eq!((data.len(), chunks), (16384, vec![16384]));
        let (_, chunks, ..) = packet(c, 1, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1], 1001);
        assert_eq!(chunks, vec![1000, 1000, 48]);
        // The host ejects: NOT READY in the error register, the sense by REQUEST SENSE.
        cd.lock().unwrap().eject();
        let c = &mut ide.channels[0];
        let (data, _, st, err) = packet(c, 1, &[0x00], 0);
        assert_eq!((data.len(), st, err), (0, ST_DRDY | ST_ERR, 0x20));
        let (sense, ..) = packet(c, 1, &[0x03, 0, 0, 0, 18], 0);
        assert_eq!((sense[2], sense[12]), (2, 0x3a));
        // The host inserts: UNIT ATTENTION, then ready.
        cd.lock().unwrap().insert(iso(2));
        let c = &mut ide.channels[0];
        assert_eq!(packet(c, 1, &[0x00], 0).3, 0x60);
        assert_eq!(packet(c, 1, &[0x00], 0).2, ST_DRDY | ST_DSC);
        assert_eq!(packet(c, 1, &[0x25], 0).0, vec![0, 0, 0, 1, 0, 0, 8, 0]);
        // PACKET asking for DMA aborts; the disk on drive 0 still answers as a disk.
        wr(c, 1, 1);
        wr(c, 7, 0xa0);
        assert_eq!((rd(c, 7), rd(c, 1)), (ST_DRDY | ST_ERR, ER_ABRT));
        cmd28(c, 0, 0xa0, 0, 0);
        assert_eq!(rd(c, 1), ER_ABRT, "an ATA disk takes no packets");
        cmd28(c, 0, 0xec, 0, 0);
        assert_eq!(rd(c, 7), ST_DRDY | ST_DSC | ST_DRQ);
    }

    #[test]
    fn at_most_four_disks() {
        let d = DiskConfig::parse("/nonexistent.img").unwrap();
        let err = Ide::new(&vec![d; 5], Vec::new(), [None, None])
            .err()
            .unwrap();
        assert!(err.to_string().contains("at most 4"), "{err}");
        assert_eq!(Ide::decode(0x1f7), Some((0, 7)));
        assert_eq!(Ide::decode(0x376), Some((1, 8)));
        assert_eq!(Ide::decode(0x3f8), None);
    }
}
