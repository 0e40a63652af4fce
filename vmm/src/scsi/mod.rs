//! SCSI logical units shared by both removable-media buses: the ATAPI CD-ROM on the IDE
//! channels (VIO, `vio::ide`) and the LUs of the virtio-scsi controller (AVIO,
//! `virtio::scsi`). A transport hands a unit a CDB and the data-out bytes and gets back the
//! data-in bytes and, on CHECK CONDITION, fixed-format sense; the unit keeps that sense for a
//! following REQUEST SENSE (ATAPI has no autosense) and its pending UNIT ATTENTION.
//!
//! - `cdrom`: an MMC CD/DVD-ROM over a read-only image (2048-byte blocks), tray and medium
//!   change at run time, media events for GET EVENT STATUS NOTIFICATION.
//! - `tape`: an SSC sequential-access device over a file-backed virtual tape.

pub mod cdrom;
pub mod tape;

use std::path::Path;
use std::sync::{Arc, Mutex};

/// Most bytes one command moves either way: commands asking for more are refused (a
/// hostile guest must not make the monitor allocate without bound).
pub const MAX_TRANSFER: usize = 8 << 20;

pub const NO_SENSE: u8 = 0x0;
pub const NOT_READY: u8 = 0x2;
pub const MEDIUM_ERROR: u8 = 0x3;
pub const ILLEGAL_REQUEST: u8 = 0x5;
pub const UNIT_ATTENTION: u8 = 0x6;
pub const DATA_PROTECT: u8 = 0x7;
pub const BLANK_CHECK: u8 = 0x8;
pub const VOLUME_OVERFLOW: u8 = 0xd;

/// Fixed-format sense data (SPC 4.5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (a residue for tapes), with VALID set.
    pub info: Option<u32>,
    pub filemark: bool,
    pub eom: bool,
    pub ili: bool,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            filemark: false,
            eom: false,
            ili: false,
        }
    }

    pub fn bytes(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70 | if self.info.is_some() { 0x80 } else { 0 };
        s[2] = self.key
            | if self.filemark { 0x80 } else { 0 }
            | if self.eom { 0x40 } else { 0 }
            | if self.ili { 0x20 } else { 0 };
        s[3..7].copy_from_slice(&self.info.unwrap_or(0).to_be_bytes());
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

pub const INVALID_OPCODE: Sense = Sense::new(ILLEGAL_REQUEST, 0x20, 0);
pub const INVALID_FIELD: Sense = Sense::new(ILLEGAL_REQUEST, 0x24, 0);
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0);
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x25, 0);
pub const PARAMETER_LIST_LENGTH: Sense = Sense::new(ILLEGAL_REQUEST, 0x1a, 0);
pub const MEDIUM_REMOVAL_PREVENTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x53, 0x02);
pub const NO_MEDIUM: Sense = Sense::new(NOT_READY, 0x3a, 0);
pub const NO_MEDIUM_TRAY_OPEN: Sense = Sense::new(NOT_READY, 0x3a, 0x02);
pub const MEDIUM_CHANGED: Sense = Sense::new(UNIT_ATTENTION, 0x28, 0);
pub const READ_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x11, 0);
pub const WRITE_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x0c, 0);
pub const WRITE_PROTECTED: Sense = Sense::new(DATA_PROTECT, 0x27, 0);

/// What a command produced: data-in (already cut to the allocation length) and, for CHECK
/// CONDITION, the sense.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub data: Vec<u8>,
    pub sense: Option<Sense>,
}

impl Reply {
    pub fn good(data: Vec<u8>) -> Reply {
        Reply { data, sense: None }
    }
    pub fn check(sense: Sense) -> Reply {
        Reply {
            data: Vec::new(),
            sense: Some(sense),
        }
    }
}

/// A logical unit as a transport sees it.
pub trait LogicalUnit: Send {
    /// Executes `cdb` with the data-out bytes the initiator sent.
    fn execute(&mut self, cdb: &[u8], data_out: &[u8]) -> Reply;
}

/// What a unit model provides; `execute` around it is the same for all: the CDB's length
/// checked, a pending UNIT ATTENTION reported first, the sense kept for REQUEST SENSE.
pub trait Unit: Send {
    fn sense_state(&mut self) -> &mut SenseState;
    /// Runs a CDB of at least its group's length.
    fn dispatch(&mut self, cdb: &[u8], data_out: &[u8]) -> Reply;
}

impl<T: Unit> LogicalUnit for T {
    fn execute(&mut self, cdb: &[u8], data_out: &[u8]) -> Reply {
        let Some(len) = cdb.first().and_then(|&op| cdb_len(op)) else {
            return self.sense_state().finish(Reply::check(INVALID_OPCODE));
        };
        if cdb.len() < len {
            return self.sense_state().finish(Reply::check(INVALID_FIELD));
        }
        if let Some(r) = self.sense_state().gate(cdb[0]) {
            return r;
        }
        let r = self.dispatch(cdb, data_out);
        if cdb[0] == 0x03 {
            // REQUEST SENSE consumed the sense; its own outcome is not kept.
            return r;
        }
        self.sense_state().finish(r)
    }
}

/// A unit shared between its transport (a vCPU or I/O thread) and whoever changes its
/// medium at run time.
pub type SharedUnit<T> = Arc<Mutex<T>>;

/// What a removable-media drive is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    Cdrom,
    Tape,
}

/// A medium a removable drive can take: an ISO image (read-only) or a virtual tape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediumConfig {
    pub path: std::path::PathBuf,
    pub read_only: bool,
}

/// A drive's unit, by kind.
#[derive(Clone)]
pub enum DriveUnit {
    Cdrom(SharedUnit<cdrom::Cdrom>),
    Tape(SharedUnit<tape::Tape>),
}

/// What a drive holds, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveStatus {
    pub name: String,
    pub kind: DriveKind,
    pub medium: Option<std::path::PathBuf>,
    /// The guest locked the medium in (PREVENT MEDIUM REMOVAL); the host may still eject.
    pub locked: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The removable-media drives of a running VM, by name (cd0.., st0..): media go in and out
/// while the guest runs, and the guest sees each change.
#[derive(Clone, Default)]
pub struct MediaControl {
    drives: Vec<(String, DriveUnit)>,
}

impl MediaControl {
    /// Adds a drive, named by its kind and how many of that kind came before.
    pub fn add(&mut self, unit: DriveUnit) -> String {
        let (prefix, n) = match &unit {
            DriveUnit::Cdrom(_) => ("cd", self.count(|u| matches!(u, DriveUnit::Cdrom(_)))),
            DriveUnit::Tape(_) => ("st", self.count(|u| matches!(u, DriveUnit::Tape(_)))),
        };
        let name = format!("{prefix}{n}");
        self.drives.push((name.clone(), unit));
        name
    }

    fn count(&self, f: impl Fn(&DriveUnit) -> bool) -> usize {
        self.drives.iter().filter(|(_, u)| f(u)).count()
    }

    fn find(&self, drive: &str) -> crate::Result<&DriveUnit> {
        self.drives
            .iter()
            .find(|(n, _)| n == drive)
            .map(|(_, u)| u)
            .ok_or_else(|| {
                let names: Vec<&str> = self.drives.iter().map(|(n, _)| n.as_str()).collect();
                crate::Error::Media(format!(
                    "no drive {drive:?} in this guest; its drives: {}",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ))
            })
    }

    /// Puts a medium into a drive (replacing what is there): an ISO into a CD-ROM, a virtual
    /// tape into a tape drive.
    pub fn insert(&self, drive: &str, m: &MediumConfig) -> crate::Result<()> {
        match self.find(drive)? {
            DriveUnit::Cdrom(u) => {
                let medium = cdrom::Medium::open(&m.path)?;
                lock(u).insert(medium);
            }
            DriveUnit::Tape(u) => {
                let medium = tape::TapeMedium::open(&m.path, m.read_only)?;
                lock(u).insert(medium);
            }
        }
        Ok(())
    }

    /// Takes the medium out of a drive: the path of what was in it.
    pub fn eject(&self, drive: &str) -> crate::Result<Option<std::path::PathBuf>> {
        Ok(match self.find(drive)? {
            DriveUnit::Cdrom(u) => lock(u).eject().map(|m| m.path),
            DriveUnit::Tape(u) => lock(u).eject().map(|m| m.path),
        })
    }

    pub fn status(&self) -> Vec<DriveStatus> {
        self.drives
            .iter()
            .map(|(name, u)| {
                let (kind, medium, locked) = match u {
                    DriveUnit::Cdrom(u) => {
                        let u = lock(u);
                        (
                            DriveKind::Cdrom,
                            u.medium_path().map(Path::to_owned),
                            u.locked(),
                        )
                    }
                    DriveUnit::Tape(u) => {
                        let u = lock(u);
                        (
                            DriveKind::Tape,
                            u.medium_path().map(Path::to_owned),
                            u.locked(),
                        )
                    }
                };
                DriveStatus {
                    name: name.clone(),
                    kind,
                    medium,
                    locked,
                }
            })
            .collect()
    }
}

/// State every unit keeps between commands: the sense of the last CHECK CONDITION (for
/// REQUEST SENSE) and a pending UNIT ATTENTION.
#[derive(Debug, Default)]
pub struct SenseState {
    last: Option<Sense>,
    attention: Option<Sense>,
}

impl SenseState {
    pub fn set_attention(&mut self, s: Sense) {
        self.attention = Some(s);
    }

    /// Before a command: a pending UNIT ATTENTION is reported (and cleared) instead of
    /// executing anything but INQUIRY, REQUEST SENSE, REPORT LUNS and GET EVENT STATUS
    /// NOTIFICATION (SPC 5.8.7; MMC lets GESN through).
    pub fn gate(&mut self, opcode: u8) -> Option<Reply> {
        if matches!(opcode, 0x12 | 0x03 | 0xa0 | 0x4a) {
            return None;
        }
        let ua = self.attention.take()?;
        self.last = Some(ua);
        Some(Reply::check(ua))
    }

    /// After a command: remembers its sense for REQUEST SENSE.
    pub fn finish(&mut self, r: Reply) -> Reply {
        self.last = r.sense;
        r
    }

    /// REQUEST SENSE: the last sense (or a pending UNIT ATTENTION, which it clears), else NO
    /// SENSE.
    pub fn request_sense(&mut self, cdb: &[u8]) -> Reply {
        let s = self
            .attention
            .take()
            .or(self.last.take())
            .unwrap_or_default();
        self.last = None;
        Reply::good(cut(
            s.bytes().to_vec(),
            cdb.get(4).copied().unwrap_or(0) as usize,
        ))
    }
}

/// `data` cut to the allocation length.
pub fn cut(mut data: Vec<u8>, alloc: usize) -> Vec<u8> {
    data.truncate(alloc);
    data
}

pub fn be16(cdb: &[u8], at: usize) -> usize {
    u16::from_be_bytes([cdb[at], cdb[at + 1]]) as usize
}

pub fn be24(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, cdb[at], cdb[at + 1], cdb[at + 2]])
}

pub fn be32(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([cdb[at], cdb[at + 1], cdb[at + 2], cdb[at + 3]])
}

/// Bytes of the CDB for its operation code's group (SPC 4.3.2); None for groups with
/// vendor-specific lengths we do not use.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Standard INQUIRY data: peripheral device type, removable, SPC-3, vendor/product/revision
/// (padded with spaces), cut to the allocation length. EVPD requests get the supported-pages
/// page (page 0) only.
pub fn inquiry(cdb: &[u8], device_type: u8, product: &str) -> Reply {
    let alloc = be16(cdb, 3);
    if cdb[1] & 1 != 0 {
        if cdb[2] != 0 {
            return Reply::check(INVALID_FIELD);
        }
        return Reply::good(cut(vec![device_type, 0, 0, 1, 0], alloc));
    }
    if cdb[2] != 0 {
        return Reply::check(INVALID_FIELD);
    }
    let mut d = vec![0u8; 36];
    d[0] = device_type;
    d[1] = 0x80; // removable medium
    d[2] = 0x05; // SPC-3
    d[3] = 0x02; // response data format 2
    d[4] = 31;
    let pad = |s: &str, n: usize| {
        let mut v: Vec<u8> = s.bytes().take(n).collect();
        v.resize(n, b' ');
        v
    };
    d[8..16].copy_from_slice(&pad("IGNITE", 8));
    d[16..32].copy_from_slice(&pad(product, 16));
    d[32..36].copy_from_slice(&pad("0.1", 4));
    Reply::good(cut(d, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_bytes_and_unit_attention_gate() {
        let mut s = Sense::new(BLANK_CHECK, 0, 5);
        s.info = Some(0x0102_0304);
        s.filemark = true;
        s.ili = true;
        let b = s.bytes();
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], 0x80 | 0x20 | 8);
        assert_eq!(&b[3..7], &[1, 2, 3, 4]);
        assert_eq!((b[7], b[12], b[13]), (10, 0, 5));

        let mut st = SenseState::default();
        st.set_attention(MEDIUM_CHANGED);
        assert_eq!(st.gate(0x12), None, "INQUIRY passes a UNIT ATTENTION");
        assert_eq!(st.gate(0x00), Some(Reply::check(MEDIUM_CHANGED)));
        assert_eq!(st.gate(0x00), None, "reported once");
        let r = st.request_sense(&[3, 0, 0, 0, 252, 0]);
        assert_eq!(
            (r.data[2], r.data[12]),
            (UNIT_ATTENTION, 0x28),
            "then sensed"
        );
        let r = st.request_sense(&[3, 0, 0, 0, 252, 0]);
        assert_eq!(r.data[2], NO_SENSE, "and cleared");
        st.set_attention(MEDIUM_CHANGED);
        let r = st.request_sense(&[3, 0, 0, 0, 8, 0]);
        assert_eq!(r.data.len(), 8, "cut to the allocation length");
        assert_eq!(st.gate(0x00), None, "REQUEST SENSE cleared the attention");
    }

    #[test]
    fn media_control_names_inserts_ejects_and_refuses() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-media").unwrap();
        let iso = dir.as_path().join("a.iso");
        std::fs::write(&iso, vec![0u8; 4096]).unwrap();
        let tap = dir.as_path().join("t.tap");
        std::fs::write(&tap, b"").unwrap();
        let mut mc = MediaControl::default();
        let cd = Arc::new(Mutex::new(cdrom::Cdrom::new(None, cdrom::Interface::Atapi)));
        assert_eq!(mc.add(DriveUnit::Cdrom(cd.clone())), "cd0");
        assert_eq!(
            mc.add(DriveUnit::Tape(Arc::new(Mutex::new(tape::Tape::new(None))))),
            "st0"
        );
        assert_eq!(mc.add(DriveUnit::Cdrom(cd.clone())), "cd1");
        let m = |p: &Path| MediumConfig {
            path: p.to_owned(),
            read_only: false,
        };
        mc.insert("cd0", &m(&iso)).unwrap();
        mc.insert("st0", &m(&tap)).unwrap();
        let st = mc.status();
        assert_eq!(st[0].medium.as_deref(), Some(iso.as_path()));
        assert_eq!(
            (st[1].kind, st[1].medium.as_deref()),
            (DriveKind::Tape, Some(tap.as_path()))
        );
        // A tape is not a CD image; unknown drives are named with the ones there are.
        let e = mc.insert("cd0", &m(&tap)).unwrap_err().to_string();
        assert!(e.contains("not a positive multiple of 2048"), "{e}");
        let e = mc.eject("cd9").unwrap_err().to_string();
        assert!(e.contains("cd0, st0, cd1"), "{e}");
        assert_eq!(mc.eject("cd0").unwrap(), Some(iso.clone()));
        assert_eq!(mc.eject("cd0").unwrap(), None);
        assert_eq!(mc.eject("st0").unwrap(), Some(tap));
    }

    #[test]
    fn inquiry_pads_and_cuts() {
        let r = inquiry(&[0x12, 0, 0, 0, 36, 0], 5, "VIO CD-ROM");
        assert_eq!(r.data.len(), 36);
        assert_eq!(&r.data[8..32], b"IGNITE  VIO CD-ROM      ");
        assert_eq!(
            inquiry(&[0x12, 0, 0, 0, 5, 0], 1, "x").data,
            vec![1, 0x80, 5, 2, 31]
        );
        assert_eq!(
            inquiry(&[0x12, 1, 0x80, 0, 5, 0], 1, "x").sense,
            Some(INVALID_FIELD)
        );
        assert_eq!(
            inquiry(&[0x12, 1, 0, 0, 64, 0], 1, "x").data,
            vec![1, 0, 0, 1, 0]
        );
        assert_eq!(cdb_len(0x28), Some(10));
        assert_eq!(cdb_len(0xa8), Some(12));
        assert_eq!(cdb_len(0x88), Some(16));
        assert_eq!(cdb_len(0xe0), None);
    }
}
