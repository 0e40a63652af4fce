//! A capture becomes a guest again: restored as a replacement (its recorded definition, its
//! MACs, its identity) or cloned (new MACs, and a new identity written into the image before
//! its first boot by `ignite_recovery::clone`).
//!
//! The disks are written first, into the new guest's directory, and the definition is stored
//! last, so a failure leaves no guest behind and a guest never names a half-written disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ignite_archive::{Progress, Store};
use ignite_recovery::capture::record::{short, CaptureKind, Record, SourceInfo};
use ignite_recovery::clone::{MountedImage, NewIdentity};

use super::definition::{check_name, Definition, Disk, EngineChoice};
use crate::state::State;

/// What makes a clone a new machine.
pub struct CloneAs {
    pub hostname: String,
    /// MACs for the NICs in order; NICs without one get a generated MAC.
    pub macs: Vec<String>,
    /// Every NIC on this bridge instead of the recorded ones.
    pub bridge: Option<String>,
}

/// What was made.
pub struct Restored {
    pub def: Definition,
    /// The capture it came from (`NAME@ID`).
    pub from: String,
    pub bytes_written: u64,
    /// Files the clone's identity reset changed (empty for a restore).
    pub changed: Vec<String>,
}

/// An instant restore (`super::instant`): the guest's disks are copied in the background
/// while it runs, at most `rate` bytes/s (0: no limit).
pub struct InstantOptions {
    pub rate: u64,
}

/// Restores capture `spec` as guest `new` (see the module docs); `clone` gives it a new
/// identity. With `instant`, an instant restore: no disk is written here; the guest (QEMU
/// engine) starts at once on overlays of the snapshots.
#[allow(clippy::too_many_arguments)]
pub fn restore_guest(
    state_dir: &Path,
    state: &State,
    store: Arc<Store>,
    spec: &str,
    new: &str,
    clone: Option<&CloneAs>,
    instant: Option<&InstantOptions>,
    progress: &Progress,
) -> Result<Restored> {
    check_name(new)?;
    if state.guest(new).is_ok() {
        bail!(
            "guest {new} is already defined; choose another name or `ignite vm remove {new}` first"
        );
    }
    let (m, rec) = Record::load(&store, spec)?;
    let from = format!("{}@{}", rec.name, short(&m.id));
    let mut def = recorded_definition(&rec, &from)?;
    if instant.is_some() {
        // The overlay, its NBD backing and the copy are QEMU's.
        def.engine = EngineChoice::Qemu;
    }
    let dir = super::guest_dir(state_dir, new);
    std::fs::create_dir_all(dir.parent().unwrap_or(state_dir))?;
    std::fs::create_dir(&dir).with_context(|| {
        format!(
            "guest directory {} exists (kept from an earlier guest?); move it away first",
            dir.display()
        )
    })?;
    let made = Made { dir: dir.clone() };
    let mut disks = Vec::new();
    let mut bytes_written = 0;
    let mut plan = None;
    if let Some(o) = instant {
        let mut snaps = Vec::new();
        for d in &rec.disks {
            let dm = store.resolve(&d.snapshot)?;
            let size = ignite_recovery::restore::disk_size(&dm)?;
            snaps.push((d.index, dm.id.clone(), size));
            disks.push((dir.join(format!("disk{}.img", d.index)), d.layout.clone()));
        }
        plan = Some(super::instant::prepare(&dir, &store, &snaps)?);
        super::instant::set_rate(&dir, o.rate)?;
        super::instant::spawn_server(state_dir, new)
            .with_context(|| format!("{from}: instant restore as {new}"))?;
    } else {
        for d in &rec.disks {
            let path = dir.join(format!("disk{}.img", d.index));
            let dm = store.resolve(&d.snapshot)?;
            bytes_written += ignite_recovery::restore::restore_disk(&store, &dm, &path, progress)
                .with_context(|| format!("{from}: disk {}", d.index))?;
            disks.push((path, d.layout.clone()));
        }
    }
    let mut new_def = Definition {
        name: new.to_string(),
        disks: disks
            .iter()
            .map(|(path, _)| Disk {
                path: path.clone(),
                owned: true,
            })
            .collect(),
        ..def.clone()
    };
    if let Some(c) = clone {
        if c.macs.len() > new_def.nics.len() {
            bail!(
                "{} --mac for {} NIC(s) in {from}; give at most one MAC per NIC",
                c.macs.len(),
                new_def.nics.len()
            );
        }
        for (i, nic) in new_def.nics.iter_mut().enumerate() {
            if let Some(b) = &c.bridge {
                nic.bridge = b.clone();
            }
            nic.mac = match c.macs.get(i) {
                Some(m) => super::definition::normalize_mac(m)?,
                None => String::new(),
            };
        }
    }
    let stored = state.define_guest(new_def, |_| Ok(())).map_err(|e| {
        if clone.is_none() {
            e.context(format!(
                "a restore keeps {from}'s MACs; to run it beside the original use \
                 `ignite recovery clone` (new identity), or remove the original guest first"
            ))
        } else {
            e
        }
    })?;
    let mut changed = Vec::new();
    if let Some(c) = clone {
        let macs = def
            .nics
            .iter()
            .zip(&stored.nics)
            .map(|(o, n)| (o.mac.clone(), n.mac.clone()))
            .collect();
        let id = NewIdentity {
            hostname: c.hostname.clone(),
            macs,
        };
        let reset = (|| -> Result<Vec<String>> {
            let scratch = dir.join("identity-reset");
            // An instant clone's identity goes into its overlays, seen as files through FUSE.
            let fuse = match &plan {
                Some(p) => Some(super::instant::FuseExports::open(p, &dir.join("fuse"))?),
                None => None,
            };
            let images: Vec<&Path> = match &fuse {
                Some(f) => f.files.iter().map(PathBuf::as_path).collect(),
                None => disks.iter().map(|(p, _)| p.as_path()).collect(),
            };
            let views: Vec<(&Path, _)> = images
                .into_iter()
                .zip(disks.iter().map(|(_, l)| l))
                .collect();
            let image = MountedImage::open(&views, &rec.system, &scratch)?;
            let changed = ignite_recovery::clone::reset(&image, &id, &rec.system);
            drop(image);
            drop(fuse);
            let _ = std::fs::remove_dir(&scratch);
            let _ = std::fs::remove_dir(dir.join("fuse"));
            changed
        })();
        match reset {
            Ok(c) => changed = c,
            Err(e) => {
                let _ = state.remove_guest(new);
                return Err(e.context(format!("clone {new}: identity reset failed")));
            }
        }
    }
    std::mem::forget(made);
    Ok(Restored {
        def: stored,
        from,
        bytes_written,
        changed,
    })
}

/// The definition a guest capture recorded (its disks are replaced by the restored ones).
fn recorded_definition(rec: &Record, from: &str) -> Result<Definition> {
    if rec.kind != CaptureKind::Block {
        bail!(
            "{from} is a {} capture; a guest is restored from a block capture",
            rec.kind
        );
    }
    match &rec.source {
        SourceInfo::Guest { definition, .. } => serde_json::from_value(definition.clone())
            .with_context(|| format!("{from}: the recorded guest definition does not parse")),
        SourceInfo::Client { .. } => bail!(
            "{from} was captured from a client, not a guest: restore its disks with \
             `ignite recovery restore {from} --to IMAGE` and define a guest over them"
        ),
    }
}

/// The new guest's directory until the restore is complete: removed on failure (after an
/// instant restore's server is stopped).
struct Made {
    dir: PathBuf,
}

impl Drop for Made {
    fn drop(&mut self) {
        super::instant::stop_server(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
