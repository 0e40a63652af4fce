//! Captures of a guest running under QEMU, the way Proxmox and libvirt do incremental
//! backup: a dirty bitmap per disk from QEMU's start, and for each capture a point-in-time
//! view (image fleecing) exported over NBD with the bitmap beside it.
//!
//! At the capture's point (the VM paused for a few QMP round trips, reported as the pause):
//! a new bitmap starts on each disk and the old one stops; a copy-before-write filter goes
//! between the device and its disk, copying what the guest overwrites into a temporary qcow2
//! (the fleecing target), so a `snapshot-access` node reads the disk as it was. The capture
//! reads that node over NBD — only the regions the old bitmap marks, when the supervisor
//! knows which capture the old bitmap started at; everything after QEMU (re)started, since
//! bitmaps live in its memory. On release the filter and export go; on commit the old bitmap
//! goes (the new one now covers everything since this capture); on abort the old bitmap is
//! merged into the new one, so nothing written is forgotten.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::capture::{DiskPlan, NbdView, Plan, Step, StepReply};
use super::control::LineConn;
use super::control::Pending;
use super::qemu::Qmp;
use super::{Definition, Paths};

/// Bitmap bookkeeping for one QEMU run.
pub struct Bitmaps {
    /// The enabled bitmap on every disk is `ignite-{gen}`.
    gen: u64,
    /// Per disk: the disk snapshot the enabled bitmap started at (none before a capture).
    bases: Vec<Option<String>>,
}

fn bitmap(gen: u64) -> String {
    format!("ignite-{gen}")
}

/// Adds the first bitmap to every disk of a QEMU started paused, then lets it run.
pub fn start(qmp: &mut Qmp, disks: usize) -> Result<Bitmaps> {
    for i in 0..disks {
        qmp.call(
            "block-dirty-bitmap-add",
            json!({"node": format!("disk{i}"), "name": bitmap(1), "granularity": 65536}),
        )?;
    }
    qmp.execute("cont")?;
    Ok(Bitmaps {
        gen: 1,
        bases: vec![None; disks],
    })
}

/// The enabled bitmaps' dirty byte counts (QMP `query-block`) and their bases.
pub fn pending(qmp: &Mutex<Qmp>, bitmaps: &Mutex<Bitmaps>) -> Result<Vec<Pending>> {
    let b = bitmaps.lock().unwrap_or_else(|e| e.into_inner());
    let blocks = qmp
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .call("query-named-block-nodes", json!({"flat": true}))?;
    let mut out = Vec::new();
    for (i, base) in b.bases.iter().enumerate() {
        let node = format!("disk{i}");
        let count = blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["node-name"] == node.as_str())
            .flat_map(|n| n["dirty-bitmaps"].as_array().cloned().unwrap_or_default())
            .find(|bm| bm["name"] == bitmap(b.gen).as_str())
            .and_then(|bm| bm["count"].as_u64())
            .unwrap_or(0);
        out.push(Pending {
            index: i,
            base: base.clone(),
            ranges: None,
            bytes: count,
            why: base.is_none().then(|| {
                "no capture since QEMU started (its dirty bitmaps live in memory)".to_string()
            }),
        });
    }
    Ok(out)
}

/// Serves one capture session on `conn` (see the module docs). Returns how it ended.
pub fn serve(
    qmp: &Mutex<Qmp>,
    bitmaps: &Mutex<Bitmaps>,
    def: &Definition,
    paths: &Paths,
    conn: &mut LineConn,
    max_hold: Duration,
) -> String {
    // One capture at a time per guest: the bitmaps are one chain.
    let mut b = bitmaps.lock().unwrap_or_else(|e| e.into_inner());
    let mut view = View {
        qmp,
        disks: def.disks.len(),
        socket: paths.dir.join("capture-nbd.sock"),
        fleece: (0..def.disks.len())
            .map(|i| paths.dir.join(format!("fleece{i}.qcow2")))
            .collect(),
        stage: Stage::None,
    };
    let (plan, pause) = match view.open(&b, def) {
        Ok(p) => p,
        Err(e) => {
            let error = format!("{e:#}");
            let switched = view.stage >= Stage::Switched;
            view.close();
            if switched {
                merge_back(qmp, &mut b, def.disks.len());
            }
            let _ = conn.send(&StepReply {
                ok: false,
                pause_ms: 0,
                error: Some(error.clone()),
            });
            return format!("capture refused: {error}");
        }
    };
    if conn.send(&plan).is_err() {
        view.close();
        merge_back(qmp, &mut b, def.disks.len());
        return "capture client went away before the plan".into();
    }
    let mut released = false;
    let outcome = loop {
        let limit = (!released).then_some(max_hold);
        match conn.recv::<Step>(limit) {
            Ok(Some(Step::Release)) => {
                view.close();
                released = true;
                let _ = conn.send(&StepReply {
                    ok: true,
                    pause_ms: pause.as_millis() as u64,
                    error: None,
                });
            }
            Ok(Some(Step::Commit { snapshots })) => {
                view.close();
                let reply =
                    StepReply::committed(commit(qmp, &mut b, &snapshots), pause.as_millis() as u64);
                let _ = conn.send(&reply);
                return "capture committed".into();
            }
            Ok(None) => break "capture ended without committing; bitmaps merged back".to_string(),
            Err(e) => break format!("capture session: {e:#}; bitmaps merged back"),
        }
    };
    view.close();
    merge_back(qmp, &mut b, def.disks.len());
    outcome
}

/// How far the point-in-time view got, to undo exactly that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    None,
    Fleece,
    Switched,
    Filtered,
    Exported,
}

struct View<'a> {
    qmp: &'a Mutex<Qmp>,
    disks: usize,
    socket: PathBuf,
    fleece: Vec<PathBuf>,
    stage: Stage,
}

impl View<'_> {
    fn qmp(&self) -> std::sync::MutexGuard<'_, Qmp> {
        self.qmp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds the view; returns the plan and how long the guest was paused.
    fn open(&mut self, b: &Bitmaps, def: &Definition) -> Result<(Plan, Duration)> {
        for (i, d) in def.disks.iter().enumerate() {
            let size = std::fs::metadata(&d.path)
                .with_context(|| format!("disk {}", d.path.display()))?
                .len();
            ignite_recovery::process::output(
                std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&self.fleece[i])
                    .arg(size.to_string()),
            )
            .context("cannot create the fleecing image (qemu-img, package qemu-utils)")?;
            self.qmp().call(
                "blockdev-add",
                json!({"driver": "qcow2", "node-name": format!("fleece{i}"),
                       "file": {"driver": "file", "filename": self.fleece[i]}}),
            )?;
        }
        self.stage = Stage::Fleece;
        let paused = Instant::now();
        let switched = self.switch(b);
        let pause = paused.elapsed();
        switched?;
        for i in 0..self.disks {
            self.qmp().call(
                "blockdev-add",
                json!({"driver": "snapshot-access", "node-name": format!("snap{i}"),
                       "file": format!("cbw{i}")}),
            )?;
        }
        let _ = std::fs::remove_file(&self.socket);
        self.qmp().call(
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": self.socket}}}),
        )?;
        self.stage = Stage::Exported;
        for i in 0..self.disks {
            self.qmp().call(
                "block-export-add",
                json!({"type": "nbd", "id": format!("exp{i}"), "node-name": format!("snap{i}"),
                       "name": format!("disk{i}"),
                       "bitmaps": [{"node": format!("disk{i}"), "name": bitmap(b.gen)}]}),
            )?;
        }
        let disks = def
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskPlan {
                index: i,
                path: d.path.clone(),
                base: b.bases[i].clone(),
                ranges: None,
                full_reason: b.bases[i].is_none().then(|| {
                    "no capture since QEMU started (its dirty bitmaps live in memory)".to_string()
                }),
                nbd: Some(NbdView {
                    socket: self.socket.clone(),
                    export: format!("disk{i}"),
                    bitmap: bitmap(b.gen),
                }),
            })
            .collect();
        Ok((
            Plan {
                engine: "qemu".into(),
                disks,
            },
            pause,
        ))
    }

    /// With the VM paused: the old bitmaps stop, new ones start, and the copy-before-write
    /// filters go in — one point in time for every disk.
    fn switch(&mut self, b: &Bitmaps) -> Result<()> {
        self.qmp().execute("stop")?;
        let result = (|| -> Result<()> {
            let mut actions = Vec::new();
            for i in 0..self.disks {
                let node = format!("disk{i}");
                actions.push(json!({"type": "block-dirty-bitmap-add",
                    "data": {"node": node, "name": bitmap(b.gen + 1), "granularity": 65536}}));
                actions.push(json!({"type": "block-dirty-bitmap-disable",
                    "data": {"node": node, "name": bitmap(b.gen)}}));
            }
            self.qmp()
                .call("transaction", json!({ "actions": actions }))?;
            self.stage = Stage::Switched;
            for i in 0..self.disks {
                self.qmp().call(
                    "blockdev-add",
                    json!({"driver": "copy-before-write", "node-name": format!("cbw{i}"),
                           "file": format!("disk{i}"), "target": format!("fleece{i}")}),
                )?;
                self.qmp().call(
                    "qom-set",
                    json!({"path": format!("/machine/peripheral/vd{i}"), "property": "drive",
                           "value": format!("cbw{i}")}),
                )?;
            }
            self.stage = Stage::Filtered;
            Ok(())
        })();
        let resumed = self.qmp().execute("cont");
        result.and(resumed)
    }

    /// Takes the view down, as far as it got (errors are logged: the guest runs on).
    fn close(&mut self) {
        let stage = std::mem::replace(&mut self.stage, Stage::None);
        let mut q = self.qmp();
        let mut undo = |cmd: &str, args: serde_json::Value| {
            if let Err(e) = q.call(cmd, args) {
                eprintln!("capture view: {cmd}: {e:#}");
            }
        };
        if stage >= Stage::Exported {
            for i in 0..self.disks {
                undo(
                    "block-export-del",
                    json!({"id": format!("exp{i}"), "mode": "hard"}),
                );
            }
            undo("nbd-server-stop", serde_json::Value::Null);
            for i in 0..self.disks {
                undo("blockdev-del", json!({"node-name": format!("snap{i}")}));
            }
        }
        if stage >= Stage::Filtered {
            for i in 0..self.disks {
                undo(
                    "qom-set",
                    json!({"path": format!("/machine/peripheral/vd{i}"), "property": "drive",
                           "value": format!("disk{i}")}),
                );
                undo("blockdev-del", json!({"node-name": format!("cbw{i}")}));
            }
        }
        if stage >= Stage::Fleece {
            for i in 0..self.disks {
                undo("blockdev-del", json!({"node-name": format!("fleece{i}")}));
            }
        }
        drop(q);
        for f in &self.fleece {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The capture is stored: the old bitmaps go, the new ones are relative to its snapshots.
fn commit(qmp: &Mutex<Qmp>, b: &mut Bitmaps, snapshots: &[String]) -> Result<()> {
    let mut q = qmp.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..b.bases.len() {
        q.call(
            "block-dirty-bitmap-remove",
            json!({"node": format!("disk{i}"), "name": bitmap(b.gen)}),
        )?;
    }
    b.gen += 1;
    for (base, id) in b.bases.iter_mut().zip(snapshots) {
        *base = Some(id.clone());
    }
    Ok(())
}

/// The capture did not complete: the new bitmaps take over the old ones' marks, so the next
/// capture still reads everything written since the last one that did.
fn merge_back(qmp: &Mutex<Qmp>, b: &mut Bitmaps, disks: usize) {
    let mut q = qmp.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..disks {
        let node = format!("disk{i}");
        let merged = q
            .call(
                "block-dirty-bitmap-merge",
                json!({"node": node, "target": bitmap(b.gen + 1), "bitmaps": [bitmap(b.gen)]}),
            )
            .and_then(|_| {
                q.call(
                    "block-dirty-bitmap-remove",
                    json!({"node": node, "name": bitmap(b.gen)}),
                )
            });
        if let Err(e) = merged {
            // Without the old marks the new bitmap is not relative to the last capture.
            eprintln!("capture: disk {i}: cannot merge its bitmaps back ({e:#}); next capture reads it in full");
            b.bases[i] = None;
        }
    }
    b.gen += 1;
}
