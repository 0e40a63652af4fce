//! An SSC sequential-access device (a tape drive) over a file-backed virtual tape, with the
//! commands Linux's `st` driver and `mt` send: TEST UNIT READY, REQUEST SENSE, INQUIRY, READ
//! BLOCK LIMITS, MODE SENSE/SELECT (6/10: the block descriptor sets fixed or variable block
//! size), READ(6)/WRITE(6) (fixed bit, SILI), WRITE FILEMARKS(6), SPACE(6) (blocks and
//! filemarks either way, end of data), REWIND, LOAD/UNLOAD, READ POSITION (short form),
//! LOCATE(10), ERASE, PREVENT ALLOW, RESERVE/RELEASE (accepted).
//!
//! Virtual tape format (SIMH's `.tap`): a sequence of objects, all little-endian:
//! - a record: its length L as a u32 (1 ≤ L < 2^24), L data bytes, one pad byte when L is
//!   odd, L again as a u32 (so the tape can be read backwards);
//! - a filemark: a u32 0.
//!
//! The end of the file is the end of data (a blank tape is an empty file); a u32 0xffffffff
//! (SIMH's end of medium) reads as end of data too. Writing at a position discards everything
//! after it, as on a real tape. The logical position (READ POSITION, LOCATE) counts records
//! and filemarks from the beginning.

use super::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Largest record (the 24-bit transfer length of READ(6)/WRITE(6) in variable mode).
pub const MAX_RECORD: u32 = (1 << 24) - 1;
/// Bytes a virtual tape may grow to unless told otherwise: a guest writing forever meets
/// the end of the medium rather than filling the host's disk.
pub const DEFAULT_CAPACITY: u64 = 64 << 30;

const FILEMARK_DETECTED: (u8, u8) = (0x00, 0x01);
const BOP_DETECTED: (u8, u8) = (0x00, 0x04);
const EOD_DETECTED: (u8, u8) = (0x00, 0x05);

/// An open virtual tape.
#[derive(Debug)]
pub struct TapeMedium {
    file: File,
    pub path: std::path::PathBuf,
    pub read_only: bool,
    pub capacity: u64,
}

impl TapeMedium {
    pub fn open(path: &Path, read_only: bool) -> crate::Result<TapeMedium> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| crate::Error::Medium {
                path: path.to_owned(),
                msg: format!("{e}; check the path and its permissions"),
            })?;
        if !file.metadata()?.is_file() {
            return Err(crate::Error::Medium {
                path: path.to_owned(),
                msg: "is not a regular file (a virtual tape is a file)".into(),
            });
        }
        Ok(TapeMedium {
            file,
            path: path.to_owned(),
            read_only,
            capacity: DEFAULT_CAPACITY,
        })
    }

    /// A tape over an open file (tests and fuzzing).
    pub fn from_file(file: File, read_only: bool, capacity: u64) -> TapeMedium {
        TapeMedium {
            file,
            path: "<memory>".into(),
            read_only,
            capacity,
        }
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn u32_at(&self, off: u64) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.file.read_exact_at(&mut b, off)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// What lies at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Object {
    /// A record: data length and its data offset.
    Record(u32, u64),
    Filemark,
    EndOfData,
}

fn record_span(len: u32) -> u64 {
    8 + len as u64 + (len & 1) as u64
}

pub struct Tape {
    medium: Option<TapeMedium>,
    /// Byte offset of the next object.
    pos: u64,
    /// Logical objects (records and filemarks) before `pos`.
    object: u64,
    /// Fixed block length; 0 = variable.
    block_size: u32,
    loaded: bool,
    prevent: bool,
    sense: SenseState,
}

fn with_info(s: Sense, info: i64) -> Sense {
    Sense {
        info: Some(info as i32 as u32),
        ..s
    }
}

fn filemark_sense(residue: i64) -> Sense {
    Sense {
        filemark: true,
        ..with_info(
            Sense::new(NO_SENSE, FILEMARK_DETECTED.0, FILEMARK_DETECTED.1),
            residue,
        )
    }
}

fn eod_sense(residue: i64) -> Sense {
    with_info(
        Sense::new(BLANK_CHECK, EOD_DETECTED.0, EOD_DETECTED.1),
        residue,
    )
}

fn bop_sense(residue: i64) -> Sense {
    Sense {
        eom: true,
        ..with_info(
            Sense::new(NO_SENSE, BOP_DETECTED.0, BOP_DETECTED.1),
            residue,
        )
    }
}

impl Tape {
    pub fn new(medium: Option<TapeMedium>) -> Tape {
        Tape {
            loaded: medium.is_some(),
            medium,
            pos: 0,
            object: 0,
            block_size: 0,
            prevent: false,
            sense: SenseState::default(),
        }
    }

    /// The host loads a tape (replacing any): rewound, and a UNIT ATTENTION for the guest.
    pub fn insert(&mut self, m: TapeMedium) {
        self.eject();
        self.medium = Some(m);
        self.loaded = true;
        self.pos = 0;
        self.object = 0;
        self.sense.set_attention(MEDIUM_CHANGED);
    }

    /// The host takes the tape out (synced first), whatever the guest's prevent state.
    pub fn eject(&mut self) -> Option<TapeMedium> {
        let m = self.medium.take()?;
        if let Err(e) = m.file.sync_data() {
            tracing::warn!(error = %e, path = %m.path.display(), "tape sync at eject failed");
        }
        self.loaded = false;
        self.pos = 0;
        self.object = 0;
        Some(m)
    }

    pub fn medium_path(&self) -> Option<&Path> {
        self.medium.as_ref().map(|m| m.path.as_path())
    }

    pub fn locked(&self) -> bool {
        self.prevent
    }

    fn ready(&self) -> Result<&TapeMedium, Sense> {
        match &self.medium {
            Some(m) if self.loaded => Ok(m),
            _ => Err(NO_MEDIUM),
        }
    }

    fn object_at(&self, pos: u64) -> Result<Object, Sense> {
        let m = self.ready()?;
        let io = |_| READ_ERROR;
        if pos >= m.len().map_err(io)? {
            return Ok(Object::EndOfData);
        }
        match m.u32_at(pos).map_err(io)? {
            0 => Ok(Object::Filemark),
            u32::MAX => Ok(Object::EndOfData),
            l if l > MAX_RECORD => Err(READ_ERROR),
            l => {
                // The trailing length must match: a torn or foreign file is a medium error.
                if m.u32_at(pos + 4 + l as u64 + (l & 1) as u64).map_err(io)? != l {
                    return Err(READ_ERROR);
                }
                Ok(Object::Record(l, pos + 4))
            }
        }
    }

    /// The object just before `pos` and where it starts; None at the beginning.
    fn object_before(&self, pos: u64) -> Result<Option<(Object, u64)>, Sense> {
        if pos < 4 {
            return Ok(None);
        }
        let m = self.ready()?;
        match m.u32_at(pos - 4).map_err(|_| READ_ERROR)? {
            0 => Ok(Some((Object::Filemark, pos - 4))),
            l if l > MAX_RECORD => Err(READ_ERROR),
            l => {
                let start = pos.checked_sub(record_span(l)).ok_or(READ_ERROR)?;
                if m.u32_at(start).map_err(|_| READ_ERROR)? != l {
                    return Err(READ_ERROR);
                }
                Ok(Some((Object::Record(l, start + 4), start)))
            }
        }
    }

    fn step_forward(&mut self, o: Object) {
        self.pos += match o {
            Object::Record(l, _) => record_span(l),
            Object::Filemark => 4,
            Object::EndOfData => 0,
        };
        self.object += 1;
    }

    fn read(&mut self, cdb: &[u8]) -> Reply {
        let (fixed, sili) = (cdb[1] & 1 != 0, cdb[1] & 2 != 0);
        let len = be24(cdb, 2) as u64;
        if fixed && (self.block_size == 0 || sili) {
            return Reply::check(INVALID_FIELD);
        }
        let (count, want) = if fixed {
            (len, self.block_size as u64)
        } else {
            (1, len)
        };
        if count * want > MAX_TRANSFER as u64 {
            return Reply::check(INVALID_FIELD);
        }
        if let Err(s) = self.ready() {
            return Reply::check(s);
        }
        let mut data = Vec::with_capacity((count * want) as usize);
        // The residue: requested blocks (fixed) or bytes (variable) not transferred.
        let residue = |done: u64| -> i64 {
            if fixed {
                (count - done) as i64
            } else {
                len as i64
            }
        };
        for i in 0..count {
            let o = match self.object_at(self.pos) {
                Ok(o) => o,
                Err(s) => {
                    return Reply {
                        data,
                        sense: Some(s),
                    }
                }
            };
            match o {
                Object::EndOfData => {
                    return Reply {
                        data,
                        sense: Some(eod_sense(residue(i))),
                    }
                }
                Object::Filemark => {
                    self.step_forward(o);
                    return Reply {
                        data,
                        sense: Some(filemark_sense(residue(i))),
                    };
                }
                Object::Record(l, at) => {
                    let n = (l as u64).min(want) as usize;
                    let start = data.len();
                    data.resize(start + n, 0);
                    let m = self.medium.as_ref().expect("object_at checked the medium");
                    if m.file.read_exact_at(&mut data[start..], at).is_err() {
                        data.truncate(start);
                        return Reply::check(READ_ERROR);
                    }
                    self.step_forward(o);
                    if l as u64 != want && !(sili && (l as u64) < want) {
                        let info = if fixed {
                            (count - i) as i64
                        } else {
                            want as i64 - l as i64
                        };
                        let s = Sense {
                            ili: true,
                            ..with_info(Sense::new(NO_SENSE, 0, 0), info)
                        };
                        return Reply {
                            data,
                            sense: Some(s),
                        };
                    }
                }
            }
        }
        Reply::good(data)
    }

    /// Discards everything from the current position on (writes always end the data).
    fn truncate_here(&self) -> Result<(), Sense> {
        let m = self.ready()?;
        m.file.set_len(self.pos).map_err(|_| WRITE_ERROR)
    }

    fn writable(&self) -> Result<&TapeMedium, Sense> {
        let m = self.ready()?;
        if m.read_only {
            return Err(WRITE_PROTECTED);
        }
        Ok(m)
    }

    fn write(&mut self, cdb: &[u8], data_out: &[u8]) -> Reply {
        let fixed = cdb[1] & 1 != 0;
        let len = be24(cdb, 2) as u64;
        if fixed && self.block_size == 0 {
            return Reply::check(INVALID_FIELD);
        }
        let (count, each) = if fixed {
            (len, self.block_size as u64)
        } else {
            (1, len)
        };
        if count * each == 0 {
            return Reply::good(Vec::new());
        }
        let m = match self.writable() {
            Ok(m) => m,
            Err(s) => return Reply::check(s),
        };
        if (data_out.len() as u64) < count * each {
            return Reply::check(INVALID_FIELD);
        }
        let mut out = Vec::with_capacity((count * (each + 9)) as usize);
        for block in data_out[..(count * each) as usize].chunks(each as usize) {
            let l = (block.len() as u32).to_le_bytes();
            out.extend_from_slice(&l);
            out.extend_from_slice(block);
            if block.len() % 2 == 1 {
                out.push(0);
            }
            out.extend_from_slice(&l);
        }
        if self.pos + out.len() as u64 > m.capacity {
            let s = Sense {
                eom: true,
                ..with_info(Sense::new(VOLUME_OVERFLOW, 0, 2), len as i64)
            };
            return Reply::check(s);
        }
        if let Err(s) = self.truncate_here() {
            return Reply::check(s);
        }
        let m = self.medium.as_ref().expect("writable checked the medium");
        if m.file.write_all_at(&out, self.pos).is_err() {
            return Reply::check(WRITE_ERROR);
        }
        self.pos += out.len() as u64;
        self.object += count;
        Reply::good(Vec::new())
    }

    fn write_filemarks(&mut self, cdb: &[u8]) -> Reply {
        let n = be24(cdb, 2) as u64;
        let m = match self.writable() {
            Ok(m) => m,
            Err(s) => return Reply::check(s),
        };
        if n > 0 {
            if self.pos + 4 * n > m.capacity {
                return Reply::check(Sense {
                    eom: true,
                    ..Sense::new(VOLUME_OVERFLOW, 0, 2)
                });
            }
            if let Err(s) = self.truncate_here() {
                return Reply::check(s);
            }
            let m = self.medium.as_ref().expect("writable checked the medium");
            if m.file
                .write_all_at(&vec![0u8; 4 * n as usize], self.pos)
                .is_err()
            {
                return Reply::check(WRITE_ERROR);
            }
            self.pos += 4 * n;
            self.object += n;
        }
        // Filemarks flush what was written before them (count 0 only flushes).
        self.sync()
    }

    fn sync(&self) -> Reply {
        match self.medium.as_ref().map(|m| m.file.sync_data()) {
            Some(Err(_)) => Reply::check(WRITE_ERROR),
            _ => Reply::good(Vec::new()),
        }
    }

    fn rewind(&mut self) -> Reply {
        self.pos = 0;
        self.object = 0;
        self.sync()
    }

    /// SPACE forward or backward over `count` blocks (`marks` false) or filemarks.
    fn space(&mut self, marks: bool, count: i64) -> Reply {
        let r = if count >= 0 {
            self.space_forward(marks, count as u64)
        } else {
            self.space_backward(marks, count.unsigned_abs())
        };
        match r {
            Ok(()) => Reply::good(Vec::new()),
            Err(s) => Reply::check(s),
        }
    }

    fn space_forward(&mut self, marks: bool, count: u64) -> Result<(), Sense> {
        let mut done = 0;
        while done < count {
            let o = self.object_at(self.pos)?;
            match o {
                Object::EndOfData => return Err(eod_sense((count - done) as i64)),
                Object::Filemark if !marks => {
                    self.step_forward(o);
                    return Err(filemark_sense((count - done) as i64));
                }
                Object::Filemark => done += 1,
                Object::Record(..) if !marks => done += 1,
                Object::Record(..) => {}
            }
            self.step_forward(o);
        }
        Ok(())
    }

    fn space_backward(&mut self, marks: bool, count: u64) -> Result<(), Sense> {
        let mut done = 0;
        while done < count {
            let Some((o, start)) = self.object_before(self.pos)? else {
                return Err(bop_sense((count - done) as i64));
            };
            self.pos = start;
            self.object = self.object.saturating_sub(1);
            match o {
                Object::Filemark if !marks => {
                    return Err(filemark_sense(-((count - done) as i64)));
                }
                Object::Filemark => done += 1,
                _ if !marks => done += 1,
                _ => {}
            }
        }
        Ok(())
    }

    fn space_to_end(&mut self) -> Reply {
        loop {
            match self.object_at(self.pos) {
                Ok(Object::EndOfData) => return Reply::good(Vec::new()),
                Ok(o) => self.step_forward(o),
                Err(s) => return Reply::check(s),
            }
        }
    }

    fn locate(&mut self, target: u64) -> Reply {
        if let Err(s) = self.ready() {
            return Reply::check(s);
        }
        self.pos = 0;
        self.object = 0;
        match self.space_forward_objects(target) {
            Ok(()) => Reply::good(Vec::new()),
            Err(s) => Reply::check(s),
        }
    }

    fn space_forward_objects(&mut self, n: u64) -> Result<(), Sense> {
        while self.object < n {
            match self.object_at(self.pos)? {
                Object::EndOfData => return Err(eod_sense(0)),
                o => self.step_forward(o),
            }
        }
        Ok(())
    }

    fn read_position(&self, cdb: &[u8]) -> Reply {
        if cdb[1] & 0x1f > 1 {
            return Reply::check(INVALID_FIELD);
        }
        if let Err(s) = self.ready() {
            return Reply::check(s);
        }
        let mut d = vec![0u8; 20];
        if self.object == 0 {
            d[0] |= 0x80; // beginning of partition
        }
        let at = (self.object as u32).to_be_bytes();
        d[4..8].copy_from_slice(&at);
        d[8..12].copy_from_slice(&at);
        Reply::good(d)
    }

    /// Block descriptor: density (unknown), number of blocks (0: all), block length.
    fn block_descriptor(&self) -> [u8; 8] {
        let mut bd = [0u8; 8];
        bd[5..8].copy_from_slice(&self.block_size.to_be_bytes()[1..]);
        bd
    }

    fn mode_sense(&self, cdb: &[u8], ten: bool) -> Reply {
        let (pc, page) = (cdb[2] >> 6, cdb[2] & 0x3f);
        if pc == 3 {
            return Reply::check(Sense::new(ILLEGAL_REQUEST, 0x39, 0));
        }
        if page != 0 && page != 0x3f {
            return Reply::check(INVALID_FIELD);
        }
        let dbd = cdb[1] & 8 != 0;
        let wp = self.medium.as_ref().is_some_and(|m| m.read_only);
        // Device-specific byte: write protect, buffered mode 1.
        let dev = (wp as u8) << 7 | 0x10;
        let bd: &[u8] = if dbd { &[] } else { &self.block_descriptor() };
        let (d, alloc) = if ten {
            let mut d = vec![0, 0, 0, dev, 0, 0, 0, bd.len() as u8];
            d.extend_from_slice(bd);
            let l = (d.len() - 2) as u16;
            d[0..2].copy_from_slice(&l.to_be_bytes());
            (d, be16(cdb, 7))
        } else {
            let mut d = vec![0, 0, dev, bd.len() as u8];
            d.extend_from_slice(bd);
            d[0] = (d.len() - 1) as u8;
            (d, cdb[4] as usize)
        };
        Reply::good(cut(d, alloc))
    }

    /// MODE SELECT: only the block descriptor's block length means anything here; mode
    /// pages after it are accepted and ignored.
    fn mode_select(&mut self, cdb: &[u8], data: &[u8], ten: bool) -> Reply {
        let len = if ten { be16(cdb, 7) } else { cdb[4] as usize };
        let header = if ten { 8 } else { 4 };
        if len == 0 {
            return Reply::good(Vec::new());
        }
        if data.len() < len || len < header {
            return Reply::check(PARAMETER_LIST_LENGTH);
        }
        let bdl = if ten { be16(data, 6) } else { data[3] as usize };
        if bdl == 0 {
            return Reply::good(Vec::new());
        }
        if bdl != 8 || len < header + 8 {
            return Reply::check(Sense::new(ILLEGAL_REQUEST, 0x26, 0));
        }
        let bd = &data[header..header + 8];
        self.block_size = be24(bd, 5);
        Reply::good(Vec::new())
    }

    fn run(&mut self, cdb: &[u8], data_out: &[u8]) -> Reply {
        let ok = || Reply::good(Vec::new());
        let ready = |t: &Tape| t.ready().map(|_| ()).err().map(Reply::check);
        match cdb[0] {
            0x00 => ready(self).unwrap_or_else(ok),
            0x03 => self.sense.request_sense(cdb),
            0x12 => inquiry(cdb, 0x01, "AVIO TAPE"),
            0x05 => {
                let mut d = vec![0u8; 6];
                d[1..4].copy_from_slice(&MAX_RECORD.to_be_bytes()[1..]);
                d[5] = 1;
                Reply::good(d)
            }
            0x1a => self.mode_sense(cdb, false),
            0x5a => self.mode_sense(cdb, true),
            0x15 => self.mode_select(cdb, data_out, false),
            0x55 => self.mode_select(cdb, data_out, true),
            0x08 => self.read(cdb),
            0x0a => self.write(cdb, data_out),
            0x10 => self.write_filemarks(cdb),
            0x11 => {
                if let Some(r) = ready(self) {
                    return r;
                }
                let raw = be24(cdb, 2);
                // Sign-extend the 24-bit count.
                let count = ((raw << 8) as i32 >> 8) as i64;
                match cdb[1] & 7 {
                    0 => self.space(false, count),
                    1 => self.space(true, count),
                    3 => self.space_to_end(),
                    _ => Reply::check(INVALID_FIELD),
                }
            }
            0x01 => ready(self).unwrap_or_else(|| self.rewind()),
            0x1b => {
                if self.medium.is_none() {
                    return Reply::check(NO_MEDIUM);
                }
                if cdb[4] & 1 == 0 && self.prevent {
                    return Reply::check(MEDIUM_REMOVAL_PREVENTED);
                }
                self.loaded = cdb[4] & 1 != 0;
                self.rewind()
            }
            0x34 => self.read_position(cdb),
            0x2b => self.locate(be32(cdb, 3) as u64),
            0x19 => match self.writable().and_then(|_| self.truncate_here()) {
                Ok(()) => self.sync(),
                Err(s) => Reply::check(s),
            },
            0x1e => {
                self.prevent = cdb[4] & 1 != 0;
                ok()
            }
            0x16 | 0x17 => ok(),
            _ => Reply::check(INVALID_OPCODE),
        }
    }
}

impl Unit for Tape {
    fn sense_state(&mut self) -> &mut SenseState {
        &mut self.sense
    }
    fn dispatch(&mut self, cdb: &[u8], data_out: &[u8]) -> Reply {
        self.run(cdb, data_out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn blank(capacity: u64) -> (Tape, File) {
        let f = crate::fuzzing::memfd("tape");
        let check = f.try_clone().unwrap();
        (
            Tape::new(Some(TapeMedium::from_file(f, false, capacity))),
            check,
        )
    }

    fn cmd(t: &mut Tape, cdb: &[u8], out: &[u8]) -> Reply {
        let mut full = cdb.to_vec();
        full.resize(cdb_len(cdb[0]).unwrap(), 0);
        t.execute(&full, out)
    }
    fn n24(n: u32) -> [u8; 3] {
        let b = n.to_be_bytes();
        [b[1], b[2], b[3]]
    }
    fn write_var(t: &mut Tape, data: &[u8]) -> Reply {
        let l = n24(data.len() as u32);
        cmd(t, &[0x0a, 0, l[0], l[1], l[2]], data)
    }
    fn read_var(t: &mut Tape, n: u32, sili: bool) -> Reply {
        let l = n24(n);
        cmd(t, &[0x08, (sili as u8) << 1, l[0], l[1], l[2]], &[])
    }
    fn space(t: &mut Tape, code: u8, n: i32) -> Reply {
        let b = n.to_be_bytes();
        cmd(t, &[0x11, code, b[1], b[2], b[3]], &[])
    }
    fn position(t: &mut Tape) -> (u32, bool) {
        let d = cmd(t, &[0x34], &[]).data;
        (
            u32::from_be_bytes(d[4..8].try_into().unwrap()),
            d[0] & 0x80 != 0,
        )
    }

    #[test]
    fn records_filemarks_and_the_on_disk_format() {
        let (mut t, f) = blank(1 << 20);
        assert_eq!(write_var(&mut t, b"abc"), Reply::good(vec![]));
        assert_eq!(cmd(&mut t, &[0x10, 0, 0, 0, 1], &[]), Reply::good(vec![]));
        let mut file = vec![0u8; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut file, 0).unwrap();
        assert_eq!(
            file,
            [
                &3u32.to_le_bytes()[..],
                b"abc\0",
                &3u32.to_le_bytes(),
                &[0; 4]
            ]
            .concat()
        );
        write_var(&mut t, &[7u8; 1000]);
        assert_eq!(position(&mut t), (3, false));
        cmd(&mut t, &[0x01], &[]);
        assert_eq!(position(&mut t), (0, true));
        // A short record without SILI: data plus ILI with the residue.
        let r = read_var(&mut t, 10, false);
        assert_eq!(r.data, b"abc");
        let s = r.sense.unwrap();
        assert!(s.ili && s.info == Some(7), "{s:?}");
        // The filemark: no data, FILEMARK, positioned after it.
        let r = read_var(&mut t, 10, true);
        assert!(r.data.is_empty() && r.sense.unwrap().filemark);
        assert_eq!(position(&mut t).0, 2);
        // An overlength record: cut, ILI with a negative residue, even with SILI.
        let r = read_var(&mut t, 600, true);
        assert_eq!(r.data.len(), 600);
        assert_eq!(r.sense.unwrap().info, Some(-400i32 as u32));
        // End of data: BLANK CHECK, position unchanged.
        let r = read_var(&mut t, 10, false);
        assert_eq!(r.sense.unwrap().key, BLANK_CHECK);
        assert_eq!(position(&mut t).0, 3);
        // Writing in the middle discards the rest.
        cmd(&mut t, &[0x01], &[]);
        space(&mut t, 1, 1);
        write_var(&mut t, b"new");
        cmd(&mut t, &[0x11, 3], &[]);
        assert_eq!(position(&mut t).0, 3, "abc, filemark, new");
        assert_eq!(
            f.metadata().unwrap().len(),
            12 + 4 + 12,
            "odd records are padded"
        );
    }

    #[test]
    fn fixed_blocks_space_locate_and_limits() {
        let (mut t, _f) = blank(1 << 20);
        // MODE SELECT(6): block descriptor with block length 512.
        let mut ms = vec![0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 2, 0];
        assert_eq!(
            cmd(&mut t, &[0x15, 0x10, 0, 0, 12], &ms),
            Reply::good(vec![])
        );
        let sense6 = cmd(&mut t, &[0x1a, 0, 0, 0, 12], &[]).data;
        assert_eq!((sense6[3], &sense6[9..12]), (8, &[0, 2, 0][..]));
        let data: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
        assert_eq!(cmd(&mut t, &[0x0a, 1, 0, 0, 4], &data), Reply::good(vec![]));
        cmd(&mut t, &[0x10, 0, 0, 0, 2], &[]);
        cmd(&mut t, &[0x0a, 1, 0, 0, 1], &data[..512]);
        assert_eq!(position(&mut t).0, 7);
        cmd(&mut t, &[0x01], &[]);
        // Reading 6 blocks meets the filemark after 4: 4 blocks, FILEMARK, residue 2.
        let r = cmd(&mut t, &[0x08, 1, 0, 0, 6], &[]);
        assert_eq!(r.data, data);
        let s = r.sense.unwrap();
        assert!(s.filemark && s.info == Some(2));
        // Spacing: back over the filemark stops before it; forward over filemarks.
        assert!(space(&mut t, 0, -2).sense.unwrap().filemark);
        assert_eq!(position(&mut t).0, 4);
        space(&mut t, 0, -4);
        assert_eq!(position(&mut t), (0, true));
        let s = space(&mut t, 0, -1).sense.unwrap();
        assert!(
            s.eom && s.asc == 0 && s.ascq == 4,
            "beginning of partition: {s:?}"
        );
        assert_eq!(space(&mut t, 1, 2), Reply::good(vec![]));
        assert_eq!(position(&mut t).0, 6);
        assert_eq!(space(&mut t, 1, -1), Reply::good(vec![]));
        assert_eq!(position(&mut t).0, 5, "before the second filemark");
        assert_eq!(space(&mut t, 1, 5).sense.unwrap().key, BLANK_CHECK);
        // LOCATE to object 2 then read one block.
        assert_eq!(
            cmd(&mut t, &[0x2b, 0, 0, 0, 0, 0, 2, 0, 0, 0], &[]),
            Reply::good(vec![])
        );
        assert_eq!(
            cmd(&mut t, &[0x08, 1, 0, 0, 1], &[]).data,
            &data[1024..1536]
        );
        assert_eq!(
            cmd(&mut t, &[0x2b, 0, 0, 0, 0, 0, 9, 0, 0, 0], &[])
                .sense
                .unwrap()
                .key,
            BLANK_CHECK
        );
        // Short data-out, fixed without a block size, too much at once, the medium's end.
        assert_eq!(
            cmd(&mut t, &[0x0a, 1, 0, 0, 8], &data).sense,
            Some(INVALID_FIELD)
        );
        ms[10] = 0;
        cmd(&mut t, &[0x15, 0x10, 0, 0, 12], &ms);
        assert_eq!(
            cmd(&mut t, &[0x08, 1, 0, 0, 1], &[]).sense,
            Some(INVALID_FIELD)
        );
        assert_eq!(
            read_var(&mut t, MAX_RECORD, false).sense,
            Some(INVALID_FIELD)
        );
        let r = write_var(&mut t, &vec![0u8; 2 << 20]);
        assert_eq!(r.sense.unwrap().key, VOLUME_OVERFLOW);
        assert_eq!(
            cmd(&mut t, &[0x15, 0, 0, 0, 12], &ms[..4]).sense,
            Some(PARAMETER_LIST_LENGTH)
        );
        assert_eq!(
            cmd(&mut t, &[0x11, 2, 0, 0, 1], &[]).sense,
            Some(INVALID_FIELD)
        );
    }

    #[test]
    fn load_unload_eject_protect_and_damage() {
        let (mut t, f) = blank(1 << 20);
        write_var(&mut t, b"x");
        cmd(&mut t, &[0x1e, 0, 0, 0, 1], &[]);
        assert_eq!(
            cmd(&mut t, &[0x1b, 0, 0, 0, 0], &[]).sense,
            Some(MEDIUM_REMOVAL_PREVENTED)
        );
        cmd(&mut t, &[0x1e, 0, 0, 0, 0], &[]);
        assert_eq!(cmd(&mut t, &[0x1b, 0, 0, 0, 0], &[]), Reply::good(vec![]));
        assert_eq!(cmd(&mut t, &[0x00], &[]).sense, Some(NO_MEDIUM));
        cmd(&mut t, &[0x1b, 0, 0, 0, 1], &[]);
        assert_eq!(cmd(&mut t, &[0x00], &[]).sense, None);
        // The host moves the tape to another drive, read-only there.
        let m = t.eject().unwrap();
        assert_eq!(cmd(&mut t, &[0x00], &[]).sense, Some(NO_MEDIUM));
        let mut other = Tape::new(None);
        other.insert(TapeMedium::from_file(m.file, true, 1 << 20));
        assert_eq!(
            cmd(&mut other, &[0x08, 0, 0, 0, 1], &[]).sense,
            Some(MEDIUM_CHANGED)
        );
        assert_eq!(cmd(&mut other, &[0x08, 0, 0, 0, 1], &[]).data, b"x");
        assert_eq!(
            cmd(&mut other, &[0x10, 0, 0, 0, 1], &[]).sense,
            Some(WRITE_PROTECTED)
        );
        assert_eq!(
            cmd(&mut other, &[0x1a, 0, 0, 0, 4], &[]).data[2] & 0x80,
            0x80
        );
        // A damaged tape: a length word with no matching trailer is a medium error.
        f.write_all_at(&9u32.to_le_bytes(), 9).unwrap();
        cmd(&mut other, &[0x01], &[]);
        assert_eq!(
            cmd(&mut other, &[0x08, 0, 0, 0, 1], &[]).sense,
            Some(READ_ERROR)
        );
        assert!(
            space(&mut other, 0, -1).sense.unwrap().eom,
            "at the start: BOP, not a read"
        );
    }
}
