//! An MMC CD/DVD-ROM drive over an ISO image (2048-byte blocks, read-only), with the
//! commands Linux's `sr` and `cdrom` drivers send: TEST UNIT READY, REQUEST SENSE, INQUIRY,
//! READ CAPACITY, READ(10/12), READ TOC (formats 0 and 1), GET CONFIGURATION (profile list,
//! core, removable medium), GET EVENT STATUS NOTIFICATION (media class, polled), MODE SENSE
//! (6/10: error recovery and capabilities pages), START STOP UNIT (tray open/close),
//! PREVENT ALLOW MEDIUM REMOVAL and SET CD SPEED (accepted, no effect).
//!
//! A medium changed from outside (`insert`, `eject`: the host) raises a UNIT ATTENTION
//! (28/00) on the next command and a media event for GESN. The guest opening the tray keeps
//! the medium in it, as a real drive does; closing it reloads it.

use super::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const BLOCK: u64 = 2048;
/// Largest image reported as a CD (80 minutes); anything larger is a DVD.
const CD_MAX_BLOCKS: u64 = 80 * 60 * 75;

/// Physical interface a drive reports in its Core feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Scsi = 1,
    Atapi = 2,
}

/// An open ISO image.
#[derive(Debug)]
pub struct Medium {
    file: File,
    pub path: std::path::PathBuf,
    pub blocks: u64,
}

impl Medium {
    pub fn open(path: &Path) -> crate::Result<Medium> {
        let err = |msg: String| crate::Error::Medium {
            path: path.to_owned(),
            msg,
        };
        let file = File::open(path).map_err(|e| err(format!("{e}; check the path")))?;
        let md = file.metadata().map_err(|e| err(e.to_string()))?;
        if !md.is_file() {
            return Err(err("is not a regular file".into()));
        }
        if md.len() == 0 || md.len() % BLOCK != 0 {
            return Err(err(format!(
                "size {} is not a positive multiple of 2048 bytes: not a CD/DVD image",
                md.len()
            )));
        }
        Ok(Medium {
            file,
            path: path.to_owned(),
            blocks: md.len() / BLOCK,
        })
    }

    /// A medium over an open file (tests and fuzzing).
    pub fn from_file(file: File, blocks: u64) -> Medium {
        Medium {
            file,
            path: "<memory>".into(),
            blocks,
        }
    }
}

/// GESN media event codes (MMC-5 table 124).
const EV_NEW_MEDIA: u8 = 2;
const EV_MEDIA_REMOVAL: u8 = 3;

pub struct Cdrom {
    medium: Option<Medium>,
    tray_open: bool,
    prevent: bool,
    /// Media event not yet reported through GESN.
    event: Option<u8>,
    sense: SenseState,
    interface: Interface,
    product: &'static str,
}

impl Cdrom {
    pub fn new(medium: Option<Medium>, interface: Interface) -> Cdrom {
        Cdrom {
            medium,
            tray_open: false,
            prevent: false,
            event: None,
            sense: SenseState::default(),
            interface,
            product: match interface {
                Interface::Atapi => "VIO CD-ROM",
                Interface::Scsi => "AVIO CD-ROM",
            },
        }
    }

    /// The host puts a medium in (replacing any): the guest sees a medium change.
    pub fn insert(&mut self, m: Medium) {
        self.medium = Some(m);
        self.tray_open = false;
        self.event = Some(EV_NEW_MEDIA);
        self.sense.set_attention(MEDIUM_CHANGED);
    }

    /// The host takes the medium out, whatever the guest's prevent state: the guest sees it
    /// gone (NOT READY, a media-removal event).
    pub fn eject(&mut self) -> Option<Medium> {
        let m = self.medium.take();
        if m.is_some() {
            self.event = Some(EV_MEDIA_REMOVAL);
        }
        self.tray_open = false;
        m
    }

    pub fn medium_path(&self) -> Option<&Path> {
        self.medium.as_ref().map(|m| m.path.as_path())
    }

    /// Whether the guest locked the tray (PREVENT MEDIUM REMOVAL).
    pub fn locked(&self) -> bool {
        self.prevent
    }

    /// The loaded medium's size in blocks, unless there is none or the tray is open.
    fn ready(&self) -> Result<u64, Sense> {
        match (&self.medium, self.tray_open) {
            (_, true) => Err(NO_MEDIUM_TRAY_OPEN),
            (None, false) => Err(NO_MEDIUM),
            (Some(m), false) => Ok(m.blocks),
        }
    }

    fn read(&self, lba: u64, count: u64) -> Reply {
        let blocks = match self.ready() {
            Ok(b) => b,
            Err(s) => return Reply::check(s),
        };
        if lba.checked_add(count).is_none_or(|e| e > blocks) {
            return Reply::check(LBA_OUT_OF_RANGE);
        }
        let len = count * BLOCK;
        if len > MAX_TRANSFER as u64 {
            return Reply::check(INVALID_FIELD);
        }
        let mut data = vec![0u8; len as usize];
        let m = self.medium.as_ref().expect("ready checked the medium");
        match m.file.read_exact_at(&mut data, lba * BLOCK) {
            Ok(()) => Reply::good(data),
            Err(e) => {
                tracing::warn!(error = %e, path = %m.path.display(), lba, "CD-ROM read failed");
                Reply::check(READ_ERROR)
            }
        }
    }

    fn profile(&self) -> u16 {
        match self.ready() {
            Ok(b) if b > CD_MAX_BLOCKS => 0x0010,
            Ok(_) => 0x0008,
            Err(_) => 0,
        }
    }

    fn get_configuration(&self, cdb: &[u8]) -> Reply {
        let rt = cdb[1] & 3;
        let start = be16(cdb, 2) as u16;
        if rt == 3 {
            return Reply::check(INVALID_FIELD);
        }
        let current = self.profile();
        let mut features: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut list = Vec::new();
        for p in [0x0010u16, 0x0008] {
            list.extend_from_slice(&p.to_be_bytes());
            list.extend_from_slice(&[(p == current) as u8, 0]);
        }
        features.push((0x0000, list));
        let mut core = (self.interface as u32).to_be_bytes().to_vec();
        core.extend_from_slice(&[0, 0, 0, 0]);
        features.push((0x0001, core));
        // Tray loading mechanism, eject, lock (and whether it is locked).
        features.push((0x0003, vec![0x29 | (self.prevent as u8) << 2, 0, 0, 0]));
        let mut d = vec![0u8; 8];
        d[6..8].copy_from_slice(&current.to_be_bytes());
        for (code, body) in features {
            let wanted = match rt {
                2 => code == start,
                _ => code >= start,
            };
            if wanted {
                d.extend_from_slice(&code.to_be_bytes());
                // Version in bits 5..2 (Core: 2), persistent, current.
                d.push(if code == 1 { 0x0b } else { 0x03 });
                d.push(body.len() as u8);
                d.extend_from_slice(&body);
            }
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        Reply::good(cut(d, be16(cdb, 7)))
    }

    fn event_status(&mut self, cdb: &[u8]) -> Reply {
        if cdb[1] & 1 == 0 {
            // Asynchronous notification is not supported.
            return Reply::check(INVALID_FIELD);
        }
        let alloc = be16(cdb, 7);
        if cdb[4] & 0x10 == 0 {
            // No class we support was asked for: "no event available".
            return Reply::good(cut(vec![0, 2, 0x80, 0x10], alloc));
        }
        let code = self.event.take().unwrap_or(0);
        let status = (self.tray_open as u8) | (self.medium.is_some() as u8) << 1;
        Reply::good(cut(vec![0, 6, 0x04, 0x10, code, status, 0, 0], alloc))
    }

    fn start_stop(&mut self, cdb: &[u8]) -> Reply {
        let (loej, start) = (cdb[4] & 2 != 0, cdb[4] & 1 != 0);
        if !loej {
            return Reply::good(Vec::new());
        }
        if start {
            if self.tray_open {
                self.tray_open = false;
                if self.medium.is_some() {
                    self.event = Some(EV_NEW_MEDIA);
                    self.sense.set_attention(MEDIUM_CHANGED);
                }
            }
        } else {
            if self.prevent {
                return Reply::check(MEDIUM_REMOVAL_PREVENTED);
            }
            if !self.tray_open && self.medium.is_some() {
                self.event = Some(EV_MEDIA_REMOVAL);
            }
            self.tray_open = true;
        }
        Reply::good(Vec::new())
    }

    fn read_toc(&self, cdb: &[u8]) -> Reply {
        let blocks = match self.ready() {
            Ok(b) => b,
            Err(s) => return Reply::check(s),
        };
        let msf = cdb[1] & 2 != 0;
        let format = match cdb[2] & 0xf {
            0 => cdb[9] >> 6, // SFF-8020 placed the format in the control byte
            f => f,
        };
        let addr = |lba: u64| -> [u8; 4] {
            if msf {
                let f = lba + 150;
                [
                    0,
                    (f / 4500).min(255) as u8,
                    (f / 75 % 60) as u8,
                    (f % 75) as u8,
                ]
            } else {
                (lba as u32).to_be_bytes()
            }
        };
        let track = cdb[6];
        let mut d = vec![0, 0, 1, 1];
        match format {
            0 => {
                if track > 1 && track != 0xaa {
                    return Reply::check(INVALID_FIELD);
                }
                if track <= 1 {
                    d.extend_from_slice(&[0, 0x14, 1, 0]);
                    d.extend_from_slice(&addr(0));
                }
                d.extend_from_slice(&[0, 0x16, 0xaa, 0]);
                d.extend_from_slice(&addr(blocks));
            }
            1 => {
                d.extend_from_slice(&[0, 0x14, 1, 0]);
                d.extend_from_slice(&addr(0));
            }
            _ => return Reply::check(INVALID_FIELD),
        }
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        Reply::good(cut(d, be16(cdb, 7)))
    }

    /// Mode pages for MODE SENSE: page control `pc` (0 current, 1 changeable, 2 default),
    /// `code` one page or 0x3f for all.
    fn mode_pages(&self, pc: u8, code: u8) -> Result<Vec<u8>, Sense> {
        if pc == 3 {
            return Err(Sense::new(ILLEGAL_REQUEST, 0x39, 0)); // saving not supported
        }
        let changeable = pc == 1;
        let recovery = {
            let mut p = vec![0u8; 12];
            p[0] = 0x01;
            p[1] = 10;
            p
        };
        let caps = {
            let mut p = vec![0u8; 20];
            p[0] = 0x2a;
            p[1] = 18;
            if !changeable {
                p[2] = 0x0b; // reads CD-R, CD-RW, DVD-ROM
                p[4] = 0x70; // mode 2 form 1 and 2, multisession
                p[6] = 0x29 | (self.prevent as u8) << 1; // tray, eject, lock (+ locked)
                p[8..10].copy_from_slice(&706u16.to_be_bytes()); // 4x, kB/s
                p[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer KiB
                p[14..16].copy_from_slice(&706u16.to_be_bytes());
            }
            p
        };
        match code {
            0x01 => Ok(recovery),
            0x2a => Ok(caps),
            0x3f => Ok([recovery, caps].concat()),
            _ => Err(INVALID_FIELD),
        }
    }

    fn mode_sense(&self, cdb: &[u8], ten: bool) -> Reply {
        let pages = match self.mode_pages(cdb[2] >> 6, cdb[2] & 0x3f) {
            Ok(p) => p,
            Err(s) => return Reply::check(s),
        };
        let (mut d, alloc) = if ten {
            (vec![0u8; 8], be16(cdb, 7))
        } else {
            (vec![0u8; 4], cdb[4] as usize)
        };
        d.extend_from_slice(&pages);
        if ten {
            let len = (d.len() - 2) as u16;
            d[0..2].copy_from_slice(&len.to_be_bytes());
        } else {
            d[0] = (d.len() - 1) as u8;
        }
        Reply::good(cut(d, alloc))
    }

    fn run(&mut self, cdb: &[u8]) -> Reply {
        let ok = || Reply::good(Vec::new());
        match cdb[0] {
            0x00 => match self.ready() {
                Ok(_) => ok(),
                Err(s) => Reply::check(s),
            },
            0x03 => self.sense.request_sense(cdb),
            0x12 => inquiry(cdb, 0x05, self.product),
            0x25 => match self.ready() {
                Ok(b) => {
                    let mut d = (b.saturating_sub(1) as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                    Reply::good(d)
                }
                Err(s) => Reply::check(s),
            },
            0x28 => self.read(be32(cdb, 2) as u64, be16(cdb, 7) as u64),
            0xa8 => self.read(be32(cdb, 2) as u64, be32(cdb, 6) as u64),
            0x43 => self.read_toc(cdb),
            0x46 => self.get_configuration(cdb),
            0x4a => self.event_status(cdb),
            0x5a => self.mode_sense(cdb, true),
            0x1a => self.mode_sense(cdb, false),
            0x1b => self.start_stop(cdb),
            0x1e => {
                self.prevent = cdb[4] & 1 != 0;
                ok()
            }
            0xbb => ok(),
            _ => Reply::check(INVALID_OPCODE),
        }
    }
}

impl Unit for Cdrom {
    fn sense_state(&mut self) -> &mut SenseState {
        &mut self.sense
    }
    fn dispatch(&mut self, cdb: &[u8], _data_out: &[u8]) -> Reply {
        self.run(cdb)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A medium of `blocks` blocks, each starting with its LBA (u32 LE).
    pub(crate) fn iso(blocks: u64) -> Medium {
        let f = crate::fuzzing::memfd("iso");
        for b in 0..blocks {
            f.write_all_at(&(b as u32).to_le_bytes(), b * BLOCK)
                .unwrap();
        }
        f.set_len(blocks * BLOCK).unwrap();
        Medium::from_file(f, blocks)
    }

    fn cmd(c: &mut Cdrom, cdb: &[u8]) -> Reply {
        let mut full = cdb.to_vec();
        full.resize(cdb_len(cdb[0]).unwrap_or(12), 0);
        c.execute(&full, &[])
    }

    #[test]
    fn capacity_reads_and_range() {
        let mut c = Cdrom::new(Some(iso(100)), Interface::Atapi);
        assert_eq!(cmd(&mut c, &[0x00]), Reply::good(vec![]));
        assert_eq!(cmd(&mut c, &[0x25]).data, vec![0, 0, 0, 99, 0, 0, 8, 0]);
        let r = cmd(&mut c, &[0x28, 0, 0, 0, 0, 98, 0, 0, 2, 0]);
        assert_eq!(r.data.len(), 4096);
        assert_eq!(
            (&r.data[..4], &r.data[2048..2052]),
            (&[98, 0, 0, 0][..], &[99, 0, 0, 0][..])
        );
        let r = cmd(&mut c, &[0xa8, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&r.data[..4], &[7, 0, 0, 0]);
        assert_eq!(
            cmd(&mut c, &[0x28, 0, 0, 0, 0, 99, 0, 0, 2, 0]).sense,
            Some(LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            cmd(
                &mut c,
                &[0xa8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]
            )
            .sense,
            Some(LBA_OUT_OF_RANGE),
            "no overflow"
        );
        let r = cmd(&mut c, &[0x03, 0, 0, 0, 18, 0]);
        assert_eq!(
            (r.data[2], r.data[12]),
            (ILLEGAL_REQUEST, 0x21),
            "sense kept for REQUEST SENSE"
        );
        assert_eq!(cmd(&mut c, &[0x03, 0, 0, 0, 18, 0]).data[2], NO_SENSE);
        // Longer than MAX_TRANSFER in one command: refused, nothing allocated.
        let mut big = Cdrom::new(Some(iso(5000)), Interface::Scsi);
        assert_eq!(
            cmd(&mut big, &[0x28, 0, 0, 0, 0, 0, 0, 0x13, 0x88, 0]).sense,
            Some(INVALID_FIELD)
        );
        assert_eq!(cmd(&mut c, &[0xff]).sense, Some(INVALID_OPCODE));
        assert_eq!(
            c.execute(&[0x28, 0], &[]).sense,
            Some(INVALID_FIELD),
            "short CDB"
        );
        assert_eq!(c.execute(&[], &[]).sense, Some(INVALID_OPCODE));
    }

    #[test]
    fn host_eject_and_insert_are_seen_by_the_guest() {
        let mut c = Cdrom::new(None, Interface::Atapi);
        assert_eq!(cmd(&mut c, &[0x00]).sense, Some(NO_MEDIUM));
        let gesn = [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];
        assert_eq!(cmd(&mut c, &gesn).data, vec![0, 6, 4, 0x10, 0, 0, 0, 0]);
        c.insert(iso(10));
        // GESN passes the unit attention and reports new media once.
        assert_eq!(
            cmd(&mut c, &gesn).data,
            vec![0, 6, 4, 0x10, EV_NEW_MEDIA, 2, 0, 0]
        );
        assert_eq!(cmd(&mut c, &gesn).data[4], 0);
        assert_eq!(cmd(&mut c, &[0x00]).sense, Some(MEDIUM_CHANGED));
        assert_eq!(cmd(&mut c, &[0x00]).sense, None);
        assert!(c.eject().is_some());
        assert_eq!(cmd(&mut c, &gesn).data[4..6], [EV_MEDIA_REMOVAL, 0]);
        assert_eq!(cmd(&mut c, &[0x25]).sense, Some(NO_MEDIUM));
        // Not the media class: "no event available".
        assert_eq!(
            cmd(&mut c, &[0x4a, 1, 0, 0, 0x02, 0, 0, 0, 8, 0]).data,
            vec![0, 2, 0x80, 0x10]
        );
        assert_eq!(
            cmd(&mut c, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0]).sense,
            Some(INVALID_FIELD)
        );
    }

    #[test]
    fn guest_tray_lock_toc_configuration_and_mode_pages() {
        let mut c = Cdrom::new(Some(iso(400_000)), Interface::Scsi);
        cmd(&mut c, &[0x1e, 0, 0, 0, 1]);
        assert_eq!(
            cmd(&mut c, &[0x1b, 0, 0, 0, 2]).sense,
            Some(MEDIUM_REMOVAL_PREVENTED)
        );
        assert!(c.locked());
        cmd(&mut c, &[0x1e, 0, 0, 0, 0]);
        assert_eq!(cmd(&mut c, &[0x1b, 0, 0, 0, 2]).sense, None, "tray opens");
        assert_eq!(cmd(&mut c, &[0x00]).sense, Some(NO_MEDIUM_TRAY_OPEN));
        cmd(&mut c, &[0x1b, 0, 0, 0, 3]);
        assert_eq!(
            cmd(&mut c, &[0x00]).sense,
            Some(MEDIUM_CHANGED),
            "closing reloads the medium"
        );
        assert_eq!(cmd(&mut c, &[0x00]).sense, None);
        // READ TOC: track 1 at 0 and the lead-out at the capacity, in LBA and MSF form.
        let toc = cmd(&mut c, &[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0]).data;
        assert_eq!(toc.len(), 20);
        assert_eq!(&toc[..4], &[0, 18, 1, 1]);
        assert_eq!(&toc[12..20], &[0, 0x16, 0xaa, 0, 0, 0x06, 0x1a, 0x80]);
        let msf = cmd(&mut c, &[0x43, 2, 0, 0, 0, 0, 0, 0, 100, 0]).data;
        assert_eq!(&msf[8..12], &[0, 0, 2, 0], "LBA 0 is 00:02:00");
        assert_eq!(
            cmd(&mut c, &[0x43, 0, 1, 0, 0, 0, 0, 0, 100, 0]).data.len(),
            12
        );
        assert_eq!(
            cmd(&mut c, &[0x43, 0, 0, 0, 0, 0, 5, 0, 100, 0]).sense,
            Some(INVALID_FIELD)
        );
        // GET CONFIGURATION: a DVD-sized image is a DVD-ROM; RT=2 returns one feature.
        let all = cmd(&mut c, &[0x46, 0, 0, 0, 0, 0, 0, 1, 0, 0]).data;
        assert_eq!(&all[6..8], &[0, 0x10]);
        assert_eq!(
            u32::from_be_bytes(all[..4].try_into().unwrap()) as usize,
            all.len() - 4
        );
        let core = cmd(&mut c, &[0x46, 2, 0, 1, 0, 0, 0, 0, 64, 0]).data;
        assert_eq!(&core[8..16], &[0, 1, 0x0b, 8, 0, 0, 0, 1], "SCSI interface");
        // MODE SENSE(10) capabilities page and (6) all pages.
        let caps = cmd(&mut c, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 64, 0]).data;
        assert_eq!((caps.len(), caps[1], caps[8], caps[9]), (28, 26, 0x2a, 18));
        let six = cmd(&mut c, &[0x1a, 0, 0x3f, 0, 255, 0]).data;
        assert_eq!((six.len(), six[0] as usize), (36, 35));
        assert_eq!(
            cmd(&mut c, &[0x5a, 0, 0xc1, 0, 0, 0, 0, 0, 64, 0])
                .sense
                .unwrap()
                .asc,
            0x39
        );
        assert_eq!(
            cmd(&mut c, &[0x5a, 0, 0x05, 0, 0, 0, 0, 0, 64, 0]).sense,
            Some(INVALID_FIELD)
        );
    }
}
