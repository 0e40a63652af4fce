//! The media library (issue 14): ISO images and virtual tapes the server knows by name
//! (table `media`: name, kind, path, size, when added) and which guest drive holds each
//! (table `media_drives`: guest, drive, medium; one medium per drive). Guests define their
//! drives (`Definition::drives`, named cd0, cd1... and st0, st1... in order); what is in
//! them is kept here, so a guest started later gets the media it had.
//!
//! Ownership: an ISO is read-only and may sit in any number of drives at once; a tape belongs
//! to one drive at a time. Inserting a tape that another drive holds is refused, naming the
//! holder, unless `take` moves it (the caller then ejects it from the holder, whose OS sees
//! the medium go). Rows of guests that no longer exist are ignored and cleared on the way.

pub mod engine;

use crate::guests::Bus;
use crate::state::{now, State};
use anyhow::{bail, Context, Result};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A CD/DVD image (ISO 9660 or any 2048-byte-block image), shared read-only.
    Iso,
    /// A virtual tape (records and filemarks, see ignite_vmm::scsi::tape), one guest at a time.
    Tape,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Iso => "iso",
            Kind::Tape => "tape",
        }
    }
    fn parse(s: &str) -> Result<Kind> {
        match s {
            "iso" => Ok(Kind::Iso),
            "tape" => Ok(Kind::Tape),
            _ => bail!("a stored medium has kind {s:?}, which this ignite does not know"),
        }
    }
    /// The drive kind this medium goes into.
    pub fn drive(self) -> DriveKind {
        match self {
            Kind::Iso => DriveKind::Cd,
            Kind::Tape => DriveKind::Tape,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveKind {
    Cd,
    Tape,
}

/// A removable-media drive of a guest: a CD-ROM on the disk bus (VIO: ATAPI on IDE; AVIO:
/// virtio-scsi) or a tape drive (virtio-scsi).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub kind: DriveKind,
    pub bus: Bus,
}

/// The drives' names, in order: cd0, cd1... for CD-ROMs, st0, st1... for tapes.
pub fn drive_names(drives: &[Drive]) -> Vec<String> {
    let (mut cd, mut st) = (0, 0);
    drives
        .iter()
        .map(|d| match d.kind {
            DriveKind::Cd => {
                cd += 1;
                format!("cd{}", cd - 1)
            }
            DriveKind::Tape => {
                st += 1;
                format!("st{}", st - 1)
            }
        })
        .collect()
}

/// The drives `vm create` makes: `cds` CD-ROMs on the disk bus, then `tapes` tape drives,
/// checked against the IDE controller's four slots (shared with VIO disks).
pub fn drives_for(disk_bus: Bus, disks: usize, cds: usize, tapes: usize) -> Result<Vec<Drive>> {
    if disk_bus == Bus::Vio && disks + cds > crate::guests::MAX_VIO_DISKS {
        bail!(
            "{disks} disk(s) and {cds} CD-ROM drive(s) on --disk-bus vio; the IDE controller has \
             {} slots: use --disk-bus avio (virtio-scsi CD-ROMs) or fewer drives",
            crate::guests::MAX_VIO_DISKS
        );
    }
    let mut d = vec![
        Drive {
            kind: DriveKind::Cd,
            bus: disk_bus
        };
        cds
    ];
    d.extend(std::iter::repeat_n(
        Drive {
            kind: DriveKind::Tape,
            bus: Bus::Avio,
        },
        tapes,
    ));
    Ok(d)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Medium {
    pub name: String,
    pub kind: Kind,
    pub path: PathBuf,
    pub size: u64,
    pub added: i64,
}

/// A medium in a guest's drive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub guest: String,
    pub drive: String,
}

/// Media names follow the rules of guest names.
fn check_name(name: &str) -> Result<()> {
    crate::guests::check_name(name)
        .map_err(|e| anyhow::anyhow!(e.to_string().replacen("guest name", "medium name", 1)))
}

/// The kind of `file` when not given: by its extension.
fn infer_kind(file: &Path) -> Result<Kind> {
    match file.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("iso") => Ok(Kind::Iso),
        Some(e) if e.eq_ignore_ascii_case("tap") => Ok(Kind::Tape),
        _ => bail!(
            "{}: cannot tell an ISO from a tape by its name; say --kind iso or --kind tape",
            file.display()
        ),
    }
}

fn read_medium(r: &rusqlite::Row) -> rusqlite::Result<(String, String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_medium(t: (String, String, String, i64, i64)) -> Result<Medium> {
    Ok(Medium {
        name: t.0,
        kind: Kind::parse(&t.1)?,
        path: PathBuf::from(t.2),
        size: t.3 as u64,
        added: t.4,
    })
}

const MEDIUM_COLUMNS: &str = "name, kind, path, size, added";
/// Rows of guests that exist (a removed guest's drives hold nothing).
const LIVE: &str = "guest IN (SELECT name FROM guests)";

/// Adds `file` to the library as `name` (default: the file name without its extension). A
/// tape file that does not exist yet is created blank; an ISO must exist and be whole
/// 2048-byte blocks.
pub fn add(state: &State, file: &Path, name: Option<&str>, kind: Option<Kind>) -> Result<Medium> {
    let kind = match kind {
        Some(k) => k,
        None => infer_kind(file)?,
    };
    let name = match name {
        Some(n) => n.to_owned(),
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("the file has no name to use; give --name")?
            .to_owned(),
    };
    check_name(&name)?;
    if kind == Kind::Tape && !file.exists() {
        std::fs::File::create_new(file)
            .with_context(|| format!("tape {}: cannot create it", file.display()))?;
    }
    let path =
        std::fs::canonicalize(file).with_context(|| format!("{}: no such file", file.display()))?;
    let size = match kind {
        Kind::Iso => ignite_vmm::scsi::cdrom::Medium::open(&path)?.blocks * 2048,
        Kind::Tape => {
            ignite_vmm::scsi::tape::TapeMedium::open(&path, false)?;
            std::fs::metadata(&path)?.len()
        }
    };
    let mut conn = state.conn();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(other) = tx
        .query_row(
            "SELECT name FROM media WHERE name = ?1 OR path = ?2",
            params![name, path.to_string_lossy()],
            |r| r.get::<_, String>(0),
        )
        .optional()?
    {
        if other == name {
            bail!("medium {name} is already in the library; choose another --name");
        }
        bail!(
            "{} is already in the library as {other}; one file, one medium",
            path.display()
        );
    }
    let added = now();
    tx.execute(
        "INSERT INTO media (name, kind, path, size, added) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            name,
            kind.as_str(),
            path.to_string_lossy(),
            size as i64,
            added
        ],
    )?;
    tx.commit()?;
    Ok(Medium {
        name,
        kind,
        path,
        size,
        added,
    })
}

pub fn get(state: &State, name: &str) -> Result<Medium> {
    let row = state
        .conn()
        .query_row(
            &format!("SELECT {MEDIUM_COLUMNS} FROM media WHERE name = ?1"),
            [name],
            read_medium,
        )
        .optional()?;
    match row {
        Some(t) => to_medium(t),
        None => bail!("medium {name} is not in the library; `ignite media list` shows what is"),
    }
}

/// Every medium with the drives holding it, by name.
pub fn list(state: &State) -> Result<Vec<(Medium, Vec<Holder>)>> {
    let conn = state.conn();
    let mut stmt = conn.prepare(&format!("SELECT {MEDIUM_COLUMNS} FROM media ORDER BY name"))?;
    let media = stmt
        .query_map([], read_medium)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut holders = conn.prepare(&format!(
        "SELECT guest, drive FROM media_drives WHERE media = ?1 AND {LIVE} ORDER BY guest, drive"
    ))?;
    media
        .into_iter()
        .map(|t| {
            let h = holders
                .query_map([&t.0], |r| {
                    Ok(Holder {
                        guest: r.get(0)?,
                        drive: r.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((to_medium(t)?, h))
        })
        .collect()
}

fn holders(tx: &rusqlite::Transaction, medium: &str) -> Result<Vec<Holder>> {
    let mut stmt = tx.prepare(&format!(
        "SELECT guest, drive FROM media_drives WHERE media = ?1 AND {LIVE} ORDER BY guest, drive"
    ))?;
    let h = stmt
        .query_map([medium], |r| {
            Ok(Holder {
                guest: r.get(0)?,
                drive: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(h)
}

fn describe(h: &[Holder]) -> String {
    h.iter()
        .map(|h| format!("guest {}'s drive {}", h.guest, h.drive))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes `name` from the library (the file stays); refused while a drive holds it.
pub fn remove(state: &State, name: &str) -> Result<()> {
    let mut conn = state.conn();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let h = holders(&tx, name)?;
    if let Some(first) = h.first() {
        bail!(
            "medium {name} is in {}; eject it first (ignite vm media eject {} --drive {})",
            describe(&h),
            first.guest,
            first.drive
        );
    }
    if tx.execute("DELETE FROM media WHERE name = ?1", [name])? == 0 {
        bail!("medium {name} is not in the library; `ignite media list` shows what is");
    }
    tx.execute("DELETE FROM media_drives WHERE media = ?1", [name])?;
    tx.commit()?;
    Ok(())
}

/// Records `medium` in `guest`'s `drive` (replacing what was there). A tape held by another
/// drive is refused, naming the holder, unless `take`: then it moves, and the drive it was
/// taken from is returned for the caller to eject.
pub fn attach(
    state: &State,
    guest: &str,
    drive: &str,
    medium: &Medium,
    take: bool,
) -> Result<Option<Holder>> {
    let mut conn = state.conn();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(&format!("DELETE FROM media_drives WHERE NOT {LIVE}"), [])?;
    let others: Vec<Holder> = holders(&tx, &medium.name)?
        .into_iter()
        .filter(|h| !(h.guest == guest && h.drive == drive))
        .collect();
    let mut moved = None;
    if medium.kind == Kind::Tape {
        if let Some(h) = others.first() {
            if !take {
                bail!(
                    "tape {} is in {}; a tape belongs to one guest at a time: eject it there \
                     or pass --take to move it",
                    medium.name,
                    describe(&others)
                );
            }
            tx.execute(
                "DELETE FROM media_drives WHERE guest = ?1 AND drive = ?2",
                params![h.guest, h.drive],
            )?;
            moved = Some(h.clone());
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO media_drives (guest, drive, media) VALUES (?1, ?2, ?3)",
        params![guest, drive, medium.name],
    )?;
    tx.commit()?;
    Ok(moved)
}

/// Empties `guest`'s `drive` in the records: the medium that was in it.
pub fn detach(state: &State, guest: &str, drive: &str) -> Result<Option<String>> {
    let conn = state.conn();
    let was = conn
        .query_row(
            "SELECT media FROM media_drives WHERE guest = ?1 AND drive = ?2",
            params![guest, drive],
            |r| r.get::<_, String>(0),
        )
        .optional()?;
    conn.execute(
        "DELETE FROM media_drives WHERE guest = ?1 AND drive = ?2",
        params![guest, drive],
    )?;
    Ok(was)
}

/// What `guest`'s drives hold: (drive, medium).
pub fn loaded(state: &State, guest: &str) -> Result<Vec<(String, Medium)>> {
    let conn = state.conn();
    let mut stmt = conn.prepare(
        "SELECT d.drive, m.name, m.kind, m.path, m.size, m.added FROM media_drives d \
         JOIN media m ON m.name = d.media WHERE d.guest = ?1 ORDER BY d.drive",
    )?;
    let rows = stmt
        .query_map([guest], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(d, t)| Ok((d, to_medium(t)?)))
        .collect()
}

/// "`who` has no drive `drive`; its drives: ...".
pub fn no_such_drive(who: &str, drive: &str, names: &[String]) -> anyhow::Error {
    let have = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    anyhow::anyhow!("{who} has no drive {drive}; its drives: {have}")
}

/// The drive of `drives` a medium of `kind` goes into: `drive` if given (checked), else the
/// first drive of the right kind.
pub fn pick_drive(drives: &[Drive], kind: DriveKind, drive: Option<&str>) -> Result<String> {
    let names = drive_names(drives);
    let fits: Vec<&String> = names
        .iter()
        .zip(drives)
        .filter(|(_, d)| d.kind == kind)
        .map(|(n, _)| n)
        .collect();
    let what = match kind {
        DriveKind::Cd => "a CD-ROM drive (vm create --cdrom)",
        DriveKind::Tape => "a tape drive (vm create --tape)",
    };
    match drive {
        Some(d) if fits.iter().any(|n| *n == d) => Ok(d.to_owned()),
        Some(d) if names.iter().any(|n| n == d) => {
            bail!("drive {d} cannot take this medium; it needs {what}")
        }
        Some(d) => Err(no_such_drive("the guest", d, &names)),
        None => fits
            .first()
            .map(|n| (*n).clone())
            .with_context(|| format!("the guest has no drive for it; it needs {what}")),
    }
}

/// The media `vm create --cdrom NAME --tape NAME` puts in the new drives (an empty name: an
/// empty drive), checked before the guest is defined: each exists, is of the drive's kind,
/// and a tape is held by no other guest. (drive, medium) pairs.
pub fn for_new_drives(
    state: &State,
    drives: &[Drive],
    cds: &[String],
    tapes: &[String],
) -> Result<Vec<(String, Medium)>> {
    let names = drive_names(drives);
    let wanted = names
        .iter()
        .filter(|n| n.starts_with("cd"))
        .zip(cds)
        .chain(names.iter().filter(|n| n.starts_with("st")).zip(tapes));
    let mut out = Vec::new();
    for (drive, medium) in wanted {
        if medium.is_empty() {
            continue;
        }
        let m = get(state, medium)?;
        let kind = if drive.starts_with("cd") {
            DriveKind::Cd
        } else {
            DriveKind::Tape
        };
        if m.kind.drive() != kind {
            bail!(
                "medium {medium} is {} {}; give it to --{}",
                if m.kind == Kind::Iso { "an" } else { "a" },
                m.kind.as_str(),
                if m.kind == Kind::Iso { "cdrom" } else { "tape" }
            );
        }
        if m.kind == Kind::Tape {
            let mut conn = state.conn();
            let tx = conn.transaction()?;
            let h = holders(&tx, medium)?;
            if !h.is_empty() {
                bail!(
                    "tape {medium} is in {}; a tape belongs to one guest at a time: eject it                      there first (or create the guest with an empty --tape and `ignite vm media                      insert --take`)",
                    describe(&h)
                );
            }
        }
        out.push((drive.clone(), m));
    }
    Ok(out)
}

/// Records the media `for_new_drives` chose in the new guest's drives.
pub fn load_new_drives(state: &State, guest: &str, media: &[(String, Medium)]) -> Result<()> {
    for (drive, m) in media {
        attach(state, guest, drive, m, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guests::definition::Definition;

    fn state() -> (tempfile::TempDir, State) {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(d.path()).unwrap();
        (d, s)
    }

    fn guest(s: &State, name: &str) {
        let def: Definition = serde_json::from_value(serde_json::json!({
            "name": name, "mem": 64 << 20, "cpus": 1, "disks": [], "disk_bus": "avio",
            "nics": [], "net_model": "avio", "boot": {"from": "net"}, "engine": "bundled",
        }))
        .unwrap();
        s.define_guest(def, |_| Ok(())).unwrap();
    }

    #[test]
    fn add_list_remove_and_kinds() {
        let (d, s) = state();
        let iso = d.path().join("debian.iso");
        std::fs::write(&iso, vec![0u8; 4096]).unwrap();
        let m = add(&s, &iso, None, None).unwrap();
        assert_eq!(
            (m.name.as_str(), m.kind, m.size),
            ("debian", Kind::Iso, 4096)
        );
        // A tape that does not exist is created blank.
        let tap = d.path().join("backup.tap");
        let t = add(&s, &tap, Some("nightly"), None).unwrap();
        assert_eq!((t.kind, t.size), (Kind::Tape, 0));
        assert!(tap.exists());
        let e = add(&s, &iso, Some("again"), None).unwrap_err().to_string();
        assert!(e.contains("already in the library as debian"), "{e}");
        let e = add(&s, &tap, None, Some(Kind::Tape))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already in the library"), "{e}");
        let odd = d.path().join("odd.iso");
        std::fs::write(&odd, vec![0u8; 1000]).unwrap();
        assert!(add(&s, &odd, None, None)
            .unwrap_err()
            .to_string()
            .contains("2048"));
        let e = add(&s, &d.path().join("x.img"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kind"), "{e}");
        assert!(add(&s, &iso, Some("../x"), None).is_err());
        let names: Vec<String> = list(&s).unwrap().into_iter().map(|(m, _)| m.name).collect();
        assert_eq!(names, ["debian", "nightly"]);
        remove(&s, "debian").unwrap();
        assert!(remove(&s, "debian")
            .unwrap_err()
            .to_string()
            .contains("not in the library"));
        assert!(get(&s, "debian").is_err());
    }

    #[test]
    fn isos_are_shared_tapes_have_one_holder_and_take_moves_them() {
        let (d, s) = state();
        for g in ["a", "b"] {
            guest(&s, g);
        }
        let iso = d.path().join("x.iso");
        std::fs::write(&iso, vec![0u8; 2048]).unwrap();
        let iso = add(&s, &iso, None, None).unwrap();
        let tape = add(&s, &d.path().join("t.tap"), None, None).unwrap();
        assert_eq!(attach(&s, "a", "cd0", &iso, false).unwrap(), None);
        assert_eq!(
            attach(&s, "b", "cd0", &iso, false).unwrap(),
            None,
            "an ISO is shared"
        );
        assert_eq!(attach(&s, "a", "st0", &tape, false).unwrap(), None);
        assert_eq!(
            attach(&s, "a", "st0", &tape, false).unwrap(),
            None,
            "same drive again"
        );
        let e = attach(&s, "b", "st0", &tape, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("guest a's drive st0") && e.contains("--take"),
            "{e}"
        );
        let moved = attach(&s, "b", "st0", &tape, true).unwrap();
        assert_eq!(
            moved,
            Some(Holder {
                guest: "a".into(),
                drive: "st0".into()
            })
        );
        assert_eq!(loaded(&s, "a").unwrap().len(), 1, "a keeps only its CD");
        assert_eq!(loaded(&s, "b").unwrap()[1].1.name, "t");
        let e = remove(&s, "x").unwrap_err().to_string();
        assert!(
            e.contains("guest a's drive cd0, guest b's drive cd0"),
            "{e}"
        );
        assert_eq!(detach(&s, "a", "cd0").unwrap(), Some("x".into()));
        assert_eq!(detach(&s, "a", "cd0").unwrap(), None);
        // A removed guest holds nothing.
        s.conn()
            .execute("DELETE FROM guests WHERE name = 'b'", [])
            .unwrap();
        remove(&s, "x").unwrap();
        assert_eq!(attach(&s, "a", "st0", &tape, false).unwrap(), None);
    }

    #[test]
    fn drives_names_and_picking() {
        let d = drives_for(Bus::Vio, 2, 2, 1).unwrap();
        assert_eq!(drive_names(&d), ["cd0", "cd1", "st0"]);
        assert_eq!(d[2].bus, Bus::Avio, "tapes are on virtio-scsi");
        assert!(drives_for(Bus::Vio, 3, 2, 0)
            .unwrap_err()
            .to_string()
            .contains("slots"));
        assert!(drives_for(Bus::Avio, 3, 2, 0).is_ok());
        assert_eq!(pick_drive(&d, DriveKind::Tape, None).unwrap(), "st0");
        assert_eq!(pick_drive(&d, DriveKind::Cd, Some("cd1")).unwrap(), "cd1");
        assert!(pick_drive(&d, DriveKind::Cd, Some("st0"))
            .unwrap_err()
            .to_string()
            .contains("cannot take"));
        assert!(pick_drive(&d, DriveKind::Cd, Some("cd7"))
            .unwrap_err()
            .to_string()
            .contains("cd0, cd1, st0"));
        assert!(pick_drive(&[], DriveKind::Cd, None)
            .unwrap_err()
            .to_string()
            .contains("--cdrom"));
    }
}
