//! Drives and media on each engine, and changing media in a running guest.
//!
//! - Bundled monitor: `ignite_vmm::DriveConfig`s at start; at run time the supervisor's
//!   control socket takes `media_insert` / `media_eject` and hands them to the VM's
//!   `MediaControl` (the guest sees a UNIT ATTENTION and a media event).
//! - QEMU: CD-ROMs only (QEMU has no virtual tape device): `ide-cd` in the IDE slots after
//!   the disks (VIO) or `scsi-cd` on one `virtio-scsi-pci` (AVIO), each on a `-drive`
//!   `cd<i>` with device id `cd<i>dev`; at run time QMP `blockdev-change-medium` / `eject`.

use super::{drive_names, Drive, DriveKind, Medium};
use crate::guests::control::{self, Reply, Request};
use crate::guests::{Bus, Paths};
use anyhow::{bail, Result};
use std::path::Path;

/// The bundled monitor's drives for `drives`, with what `loaded` puts in them.
pub fn vmm_drives(drives: &[Drive], loaded: &[(String, Medium)]) -> Vec<ignite_vmm::DriveConfig> {
    drive_names(drives)
        .into_iter()
        .zip(drives)
        .map(|(name, d)| ignite_vmm::DriveConfig {
            kind: match d.kind {
                DriveKind::Cd => ignite_vmm::DriveKind::Cdrom,
                DriveKind::Tape => ignite_vmm::DriveKind::Tape,
            },
            bus: match d.bus {
                Bus::Vio => ignite_vmm::MediaBus::Vio,
                Bus::Avio => ignite_vmm::MediaBus::Avio,
            },
            medium: loaded.iter().find(|(n, _)| *n == name).map(|(_, m)| {
                ignite_vmm::scsi::MediumConfig {
                    path: m.path.clone(),
                    read_only: m.kind == super::Kind::Iso,
                }
            }),
        })
        .collect()
}

/// QEMU arguments for the drives: refused for tape drives (QEMU emulates none).
pub fn qemu_args(
    drives: &[Drive],
    loaded: &[(String, Medium)],
    disks: usize,
    disk_bus: Bus,
    uefi: bool,
) -> Result<Vec<String>> {
    let mut args = Vec::new();
    let mut scsi = false;
    let (mut ide_slot, mut lun) = (if disk_bus == Bus::Vio { disks } else { 0 }, 0);
    for (name, d) in drive_names(drives).into_iter().zip(drives) {
        if d.kind == DriveKind::Tape {
            bail!(
                "drive {name}: QEMU has no virtual tape device; run this guest on the bundled \
                 engine (--engine bundled) for tape drives"
            );
        }
        let mut drive = format!("if=none,id={name},media=cdrom,readonly=on");
        if let Some((_, m)) = loaded.iter().find(|(n, _)| *n == name) {
            drive += &format!(",format=raw,file={}", qemu_path(&m.path)?);
        }
        args.extend(["-drive".to_string(), drive]);
        let device = match d.bus {
            Bus::Vio => {
                let bus = if uefi {
                    format!("ide.{ide_slot}")
                } else {
                    format!("ide.{},unit={}", ide_slot / 2, ide_slot % 2)
                };
                ide_slot += 1;
                format!("ide-cd,drive={name},id={name}dev,bus={bus}")
            }
            Bus::Avio => {
                if !scsi {
                    args.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
                    scsi = true;
                }
                lun += 1;
                format!(
                    "scsi-cd,drive={name},id={name}dev,bus=scsi0.0,channel=0,scsi-id=0,lun={}",
                    lun - 1
                )
            }
        };
        args.extend(["-device".to_string(), device]);
    }
    Ok(args)
}

/// A path QEMU's option parser takes as it is (its `,` would need doubling).
fn qemu_path(p: &Path) -> Result<String> {
    let s = p.to_string_lossy();
    if s.contains(',') {
        bail!(
            "{}: a path with a comma cannot be given to QEMU; rename the file",
            p.display()
        );
    }
    Ok(s.into_owned())
}

/// Changes a QEMU guest's CD-ROM through QMP: `path` in, or out when None.
pub fn qmp_change(
    qmp: &mut crate::guests::qemu::Qmp,
    drive: &str,
    path: Option<&Path>,
) -> Result<()> {
    let id = format!("{drive}dev");
    match path {
        Some(p) => qmp
            .call(
                "blockdev-change-medium",
                serde_json::json!({"id": id, "filename": p, "format": "raw", "read-only-mode": "read-only"}),
            )
            .map(|_| ()),
        None => qmp
            .call("eject", serde_json::json!({"id": id, "force": true}))
            .map(|_| ()),
    }
}

/// Tells a running guest (through its control socket) to put `path` into `drive`, or to empty
/// it when None. False when the guest is not running.
pub fn change_live(paths: &Paths, drive: &str, path: Option<(&Path, bool)>) -> Result<bool> {
    let req = match path {
        Some((p, read_only)) => Request::MediaInsert {
            drive: drive.to_owned(),
            path: p.to_owned(),
            read_only,
        },
        None => Request::MediaEject {
            drive: drive.to_owned(),
        },
    };
    match control::ask(&paths.control(), &req)? {
        Some(Reply::Ok { .. }) => Ok(true),
        Some(other) => bail!("the guest's supervisor answered {other:?}"),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{drives_for, Kind};

    fn iso(name: &str) -> Medium {
        Medium {
            name: name.into(),
            kind: Kind::Iso,
            path: format!("/m/{name}.iso").into(),
            size: 2048,
            added: 0,
        }
    }

    #[test]
    fn monitor_drives_carry_their_media() {
        let d = drives_for(Bus::Avio, 0, 2, 1).unwrap();
        let v = vmm_drives(&d, &[("cd1".into(), iso("x"))]);
        assert_eq!(v[0].medium, None);
        let m = v[1].medium.as_ref().unwrap();
        assert_eq!((m.path.to_str().unwrap(), m.read_only), ("/m/x.iso", true));
        assert_eq!(v[2].kind, ignite_vmm::DriveKind::Tape);
    }

    #[test]
    fn qemu_cdroms_after_the_disks_or_on_virtio_scsi() {
        let d = drives_for(Bus::Vio, 3, 1, 0).unwrap();
        let a = qemu_args(&d, &[("cd0".into(), iso("x"))], 3, Bus::Vio, false).unwrap();
        assert_eq!(
            a[1],
            "if=none,id=cd0,media=cdrom,readonly=on,format=raw,file=/m/x.iso"
        );
        assert_eq!(a[3], "ide-cd,drive=cd0,id=cd0dev,bus=ide.1,unit=1");
        let d = drives_for(Bus::Avio, 1, 2, 0).unwrap();
        let a = qemu_args(&d, &[], 1, Bus::Avio, false).unwrap();
        assert_eq!(
            a.iter()
                .filter(|x| x.starts_with("virtio-scsi-pci"))
                .count(),
            1
        );
        assert!(a.last().unwrap().ends_with("lun=1"));
        let d = drives_for(Bus::Avio, 0, 0, 1).unwrap();
        let e = qemu_args(&d, &[], 0, Bus::Avio, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--engine bundled"), "{e}");
        let mut comma = iso("y");
        comma.path = "/m/a,b.iso".into();
        let d = drives_for(Bus::Avio, 0, 1, 0).unwrap();
        assert!(qemu_args(&d, &[("cd0".into(), comma)], 0, Bus::Avio, false).is_err());
    }
}
