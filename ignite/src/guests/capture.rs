//! Host-side captures of defined guests: which regions of each disk to read, at one
//! consistent point, and what to remember afterwards.
//!
//! The bundled monitor logs every write in a change map beside each image
//! (`IMAGE.ignite-changes`, persistent). A capture takes the map (the map starts over) under
//! a hold of the disk's writes, reads what it named, releases the hold, and once the capture's
//! record is stored *commits*: it writes `IMAGE.ignite-base`, the id of the disk snapshot the
//! map is now relative to. The next capture is incremental only if that file names the
//! disk's latest capture; anything else — no file, another id, a QEMU run since (which keeps
//! no map: its start deletes the file) — means a full read, and the capture says why. The
//! base file is deleted when the map is taken and written back on commit (new id) or abort
//! (old id, with the taken map merged back), so a crash in between leaves no base and the
//! next capture reads in full rather than trusting a map that lost marks.
//!
//! A running guest's supervisor does this on its control socket (one connection per
//! session, see [`Plan`]); a stopped guest's capture does it in-process, holding the
//! supervisor's lock so the guest cannot start meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ignite_profiles::human;
use ignite_recovery::capture::block::{BlockDisk, Changes};
use ignite_recovery::capture::record::short;
use ignite_vmm::change_tracking::{ChangeSet, ChangeTracker};
use serde::{Deserialize, Serialize};

use super::control::Pending;

/// What the supervisor (or the in-process session) tells the capture.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub engine: String,
    pub disks: Vec<DiskPlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskPlan {
    pub index: usize,
    pub path: PathBuf,
    /// The capture the change information is relative to; absent: read the whole disk
    /// (`full_reason` says why).
    pub base: Option<String>,
    /// Regions written since `base` (bundled monitor: its change log).
    pub ranges: Option<Vec<(u64, u64)>>,
    pub full_reason: Option<String>,
    /// Read from this point-in-time view instead of the image (QEMU: the written regions are
    /// the bitmap's).
    pub nbd: Option<NbdView>,
}

/// A point-in-time view of a disk exported over NBD, with its dirty bitmap.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NbdView {
    pub socket: PathBuf,
    pub export: String,
    pub bitmap: String,
}

impl DiskPlan {
    /// The disk to read and what changed: from the image and the plan's ranges, or from the
    /// NBD view and its bitmap.
    pub fn block_disk(&self) -> Result<BlockDisk> {
        let (reader, ranges): (Box<dyn ignite_archive::ImageReader + Send>, _) = match &self.nbd {
            None => (
                Box::new(ignite_archive::FileImage::open(&self.path)?),
                self.ranges.clone(),
            ),
            Some(v) => {
                let ctx = format!("qemu:dirty-bitmap:{}", v.bitmap);
                let client = ignite_recovery::nbd::Client::connect(
                    &v.socket,
                    &v.export,
                    &["base:allocation", &ctx],
                )?;
                let reader = ignite_recovery::nbd::Reader::new(
                    client,
                    &format!("{} (point-in-time view)", self.path.display()),
                );
                let ranges = match self.base {
                    Some(_) => Some(reader.dirty_ranges(&v.bitmap)?),
                    None => None,
                };
                (Box::new(reader), ranges)
            }
        };
        Ok(BlockDisk {
            index: self.index,
            reader,
            changes: match (&self.base, ranges) {
                (Some(base), Some(ranges)) => Some(Changes {
                    base: base.clone(),
                    ranges,
                }),
                _ => None,
            },
        })
    }
}

/// The change trackers of a stopped guest's disks (the caller holds its lock).
fn open_trackers(def: &super::Definition) -> Result<Vec<(PathBuf, Arc<ChangeTracker>)>> {
    def.disks
        .iter()
        .map(|d| open_tracker(&d.path).map(|t| (d.path.clone(), Arc::new(t))))
        .collect()
}

/// The changes of change-tracked images (running: the log saw every write).
pub fn pending_tracked(trackers: &[(PathBuf, Arc<ChangeTracker>)], running: bool) -> Vec<Pending> {
    trackers
        .iter()
        .enumerate()
        .map(|(index, (path, t))| {
            let base = if running {
                read_base_running(path)
            } else {
                read_base_stopped(path)
            };
            let ranges = t.peek().ranges();
            Pending {
                index,
                bytes: ranges.iter().map(|r| r.1).sum(),
                base: base.as_ref().ok().cloned(),
                why: base.err(),
                ranges: Some(ranges),
            }
        })
        .collect()
}

/// What changed on guest `name`'s disks since its last capture (`ignite recovery check`).
pub fn pending_changes(
    state_dir: &Path,
    state: &crate::state::State,
    name: &str,
) -> Result<Vec<Pending>> {
    let rec = state.guest(name)?;
    let paths = super::Paths::new(state_dir, name);
    match super::control::ask(&paths.control(), &super::control::Request::Changes)? {
        Some(super::control::Reply::Changes { changes }) => Ok(changes),
        Some(other) => bail!("guest {name}: unexpected answer {other:?}"),
        None => {
            let _lock = lock_stopped(&paths, name)?;
            let trackers = open_trackers(&rec.def)?;
            Ok(pending_tracked(&trackers, false))
        }
    }
}

/// Steps of a session after the plan, client → supervisor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum Step {
    /// The disks are read: let the guest write again.
    Release,
    /// The capture is stored: remember its disk snapshots as the new bases.
    Commit { snapshots: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StepReply {
    pub ok: bool,
    #[serde(default)]
    pub pause_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
}

impl StepReply {
    /// The reply to a commit: its outcome, and the pause it cost when it succeeded.
    pub fn committed(result: Result<()>, pause_ms: u64) -> StepReply {
        match result {
            Ok(()) => StepReply {
                ok: true,
                pause_ms,
                error: None,
            },
            Err(e) => StepReply {
                ok: false,
                pause_ms: 0,
                error: Some(format!("{e:#}")),
            },
        }
    }
}

/// `IMAGE.ignite-base`: the disk snapshot the image's change map is relative to, and the
/// image's modification time when that was last known to be true.
pub fn base_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".ignite-base");
    PathBuf::from(p)
}

fn mtime_ns(image: &Path) -> Option<i128> {
    let m = std::fs::metadata(image).ok()?;
    let t = m.modified().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128)
}

/// The base of a stopped guest's image: only if nothing wrote the image behind the change
/// log's back since (its modification time is the one recorded).
fn read_base_stopped(image: &Path) -> Result<String, String> {
    let (id, stamp) = read_base_file(image)?;
    if stamp.is_some() && stamp == mtime_ns(image) {
        Ok(id)
    } else {
        Err("the image was modified outside Ignite's change log since the last capture".into())
    }
}

/// The base of a running bundled guest's image: its change log has seen every write.
fn read_base_running(image: &Path) -> Result<String, String> {
    read_base_file(image).map(|(id, _)| id)
}

fn read_base_file(image: &Path) -> Result<(String, Option<i128>), String> {
    let text = std::fs::read_to_string(base_path(image))
        .map_err(|_| "no capture since the change log started (first capture, a QEMU run, or an interrupted capture)".to_string())?;
    let mut words = text.split_whitespace();
    let id = words.next().unwrap_or("");
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{} is damaged", base_path(image).display()));
    }
    Ok((id.to_string(), words.next().and_then(|w| w.parse().ok())))
}

fn write_base(image: &Path, id: &str) -> Result<()> {
    let p = base_path(image);
    let tmp = p.with_extension("tmp");
    let stamp = mtime_ns(image).map(|t| t.to_string()).unwrap_or_default();
    std::fs::write(&tmp, format!("{id} {stamp}\n"))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

/// After the bundled monitor ran a guest (its change log saw every write), its images'
/// modification times are its own: record them so a stopped-guest capture trusts the log.
pub fn refresh_base_stamps(images: &[PathBuf]) {
    for image in images {
        if let Ok((id, _)) = read_base_file(image) {
            let _ = write_base(image, &id);
        }
    }
}

/// Forgets the base of `image`: its change map no longer covers every write since.
pub fn forget_base(image: &Path) {
    let _ = std::fs::remove_file(base_path(image));
}

/// One disk of a bundled-monitor session: its tracker and the map taken from it.
struct TrackedDisk {
    path: PathBuf,
    tracker: Arc<ChangeTracker>,
    taken: Option<ChangeSet>,
    old_base: Option<String>,
}

/// A capture session over change-tracked images (a running bundled guest's, or a stopped
/// guest's opened in-process). Dropped without [`Session::commit`], it gives the maps back.
pub struct Session {
    disks: Vec<TrackedDisk>,
    held_since: Option<Instant>,
    pause: Duration,
    committed: bool,
}

impl Session {
    /// Takes every disk's map, writes held by `hold` (the caller keeps the guards until
    /// [`Session::release`]), and plans what to read.
    pub fn begin(
        trackers: &[(PathBuf, Arc<ChangeTracker>)],
        running: bool,
    ) -> Result<(Session, Plan)> {
        let mut session = Session {
            disks: Vec::new(),
            held_since: Some(Instant::now()),
            pause: Duration::ZERO,
            committed: false,
        };
        let mut plan = Plan {
            engine: "bundled".into(),
            disks: Vec::new(),
        };
        for (index, (path, tracker)) in trackers.iter().enumerate() {
            let base = if running {
                read_base_running(path)
            } else {
                read_base_stopped(path)
            };
            let old_base = base.as_ref().ok().cloned();
            forget_base(path);
            let taken = tracker.take()?;
            let (base, ranges, full_reason) = match base {
                Ok(b) => (Some(b), Some(taken.ranges()), None),
                Err(why) => (None, None, Some(why)),
            };
            plan.disks.push(DiskPlan {
                index,
                path: path.clone(),
                base,
                ranges,
                full_reason,
                nbd: None,
            });
            session.disks.push(TrackedDisk {
                path: path.clone(),
                tracker: tracker.clone(),
                taken: Some(taken),
                old_base,
            });
        }
        Ok((session, plan))
    }

    /// Marks the end of the hold; returns how long it lasted.
    pub fn release(&mut self) -> Duration {
        if let Some(t) = self.held_since.take() {
            self.pause = t.elapsed();
        }
        self.pause
    }

    /// The capture is stored: `snapshots[i]` is disk `i`'s new base.
    pub fn commit(mut self, snapshots: &[String]) -> Result<()> {
        if snapshots.len() != self.disks.len() {
            bail!(
                "commit names {} disk snapshots for {} disks",
                snapshots.len(),
                self.disks.len()
            );
        }
        for (d, id) in self.disks.iter_mut().zip(snapshots) {
            write_base(&d.path, id)?;
            d.taken = None;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for d in &mut self.disks {
            let Some(taken) = d.taken.take() else {
                continue;
            };
            match d.tracker.merge(&taken) {
                Ok(()) => {
                    if let Some(b) = &d.old_base {
                        let _ = write_base(&d.path, b);
                    }
                }
                Err(e) => eprintln!(
                    "capture of {}: cannot give its change map back ({e}); the next capture reads it in full",
                    d.path.display()
                ),
            }
        }
    }
}

/// A capture session on a running bundled guest's control connection: holds every disk's
/// writes, takes the maps, sends the [`Plan`], then serves `release` and `commit` until the
/// client commits or goes away (or keeps the writes held longer than `max_hold`). Returns
/// why it ended, for the supervisor's log.
pub fn serve(
    trackers: &[(PathBuf, Arc<ChangeTracker>)],
    conn: &mut super::control::LineConn,
    max_hold: Duration,
) -> String {
    let holds: Vec<_> = trackers.iter().map(|(_, t)| t.hold()).collect();
    let (mut session, plan) = match Session::begin(trackers, true) {
        Ok(x) => x,
        Err(e) => {
            let _ = conn.send(&StepReply {
                ok: false,
                pause_ms: 0,
                error: Some(format!("{e:#}")),
            });
            return format!("capture refused: {e:#}");
        }
    };
    if conn.send(&plan).is_err() {
        return "capture client went away before the plan".into();
    }
    let mut holds = Some(holds);
    loop {
        let limit = if holds.is_some() {
            Some(max_hold)
        } else {
            None
        };
        let step: Step = match conn.recv(limit) {
            Ok(Some(s)) => s,
            Ok(None) => return "capture ended without committing; change maps given back".into(),
            Err(e) => return format!("capture session: {e:#}; change maps given back"),
        };
        match step {
            Step::Release => {
                drop(holds.take());
                let pause = session.release();
                let _ = conn.send(&StepReply {
                    ok: true,
                    pause_ms: pause.as_millis() as u64,
                    error: None,
                });
            }
            Step::Commit { snapshots } => {
                drop(holds.take());
                session.release();
                let reply = StepReply::committed(session.commit(&snapshots), 0);
                let _ = conn.send(&reply);
                return "capture committed".into();
            }
        }
    }
}

/// A guest's capture as it went: the record's snapshot and the record.
pub struct Captured {
    /// Its row in the capture history.
    pub history: i64,
    pub snapshot: ignite_archive::Manifest,
    pub record: ignite_recovery::capture::record::Record,
}

impl Captured {
    /// What the capture did, as shown to people: why it read disks whole, if it did, then
    /// one line of what it read, stored and held.
    pub fn summary(&self) -> Vec<String> {
        let s = &self.record.stats;
        let name = &self.record.name;
        let mut out = s.full_reads.clone();
        out.push(format!(
            "captured {name} as {name}@{}: {} disk(s), {} read of {}, {} new in the store, writes held {} ms, {:.1} s",
            short(&self.snapshot.id),
            self.record.disks.len(),
            human(s.read_bytes),
            human(s.logical_bytes),
            human(s.new_stored_bytes),
            s.pause_ms,
            s.seconds
        ));
        out
    }
}

/// Captures every disk of guest `name` into `store` (running or not), recording the
/// attempt in the capture history.
pub fn capture_guest(
    state_dir: &Path,
    state: &crate::state::State,
    store: Arc<ignite_archive::Store>,
    name: &str,
) -> Result<Captured> {
    let rec = state.guest(name)?;
    let _lock = capture_lock(state_dir, name)?;
    let id = state.capture_started(name, "block", "host")?;
    let result = capture_disks(state_dir, &rec, store, id);
    match &result {
        Ok(c) => {
            let s = &c.record.stats;
            state.capture_succeeded(
                id,
                &crate::state::captures::CaptureDone {
                    record: c.snapshot.id.clone(),
                    logical_bytes: s.logical_bytes,
                    read_bytes: s.read_bytes,
                    new_bytes: s.new_stored_bytes,
                    pause_ms: s.pause_ms,
                    notes: s.full_reads.join("; "),
                },
            )?;
        }
        Err(e) => state.capture_failed(id, &format!("{e:#}"))?,
    }
    result
}

fn capture_disks(
    state_dir: &Path,
    rec: &crate::state::guests::Record,
    store: Arc<ignite_archive::Store>,
    history: i64,
) -> Result<Captured> {
    use ignite_recovery::capture::{self, record::CaptureStats, record::SourceInfo};
    let name = &rec.def.name;
    let paths = super::Paths::new(state_dir, name);
    let started = Instant::now();
    let progress = ignite_archive::Progress::default();
    let mut remote = None;
    let mut local = None;
    let (mut plan, engine) = match super::control::status(&paths.control())? {
        Some(status) => {
            let stream = std::os::unix::net::UnixStream::connect(paths.control())
                .with_context(|| format!("guest {name}: its control socket"))?;
            let mut conn = super::control::LineConn::new(stream)?;
            conn.send(&super::control::Request::Capture)?;
            let plan = recv_plan(&mut conn, name)?;
            remote = Some(conn);
            (plan, status.engine.to_string())
        }
        None => {
            let lock = lock_stopped(&paths, name)?;
            let trackers = open_trackers(&rec.def)?;
            let (session, plan) = Session::begin(&trackers, false)?;
            local = Some((session, lock));
            (plan, "none (stopped)".to_string())
        }
    };
    // A base pruned from the store (or a store replaced) leaves the change log nothing to be
    // relative to: read those disks in full.
    for d in &mut plan.disks {
        if let Some(base) = d.base.as_ref().filter(|b| store.resolve(b).is_err()) {
            d.full_reason = Some(format!(
                "its previous capture {base} is not in the store (pruned, or another store)"
            ));
            d.base = None;
            d.ranges = None;
        }
    }
    let disks: Vec<BlockDisk> = plan
        .disks
        .iter()
        .map(DiskPlan::block_disk)
        .collect::<Result<_>>()?;
    let full_reads: Vec<String> = plan
        .disks
        .iter()
        .filter_map(|d| {
            d.full_reason
                .as_ref()
                .map(|r| format!("disk {} read in full: {r}", d.index))
        })
        .collect();
    let manifests = capture::read_disks(&store, name, &disks, &progress)?;
    let indices: Vec<usize> = disks.iter().map(|d| d.index).collect();
    // Readers of a point-in-time view must be gone before it is taken down.
    drop(disks);
    let pause = match (&mut remote, &mut local) {
        (Some(conn), _) => step(conn, &Step::Release, name)?.pause_ms,
        (_, Some((session, _))) => session.release().as_millis() as u64,
        _ => 0,
    };
    let stats = CaptureStats {
        pause_ms: pause,
        full_reads,
        ..Default::default()
    };
    let source = SourceInfo::Guest {
        engine,
        definition: serde_json::to_value(&rec.def)?,
    };
    let indexed: Vec<(usize, ignite_archive::Manifest)> =
        indices.into_iter().zip(manifests.iter().cloned()).collect();
    let (snapshot, record) = capture::finish(store, name, source, &indexed, stats, started)?;
    let ids: Vec<String> = manifests.iter().map(|m| m.id.clone()).collect();
    match (remote, local) {
        (Some(mut conn), _) => {
            step(&mut conn, &Step::Commit { snapshots: ids }, name)?;
        }
        (_, Some((session, _lock))) => session.commit(&ids)?,
        _ => {}
    }
    Ok(Captured {
        history,
        snapshot,
        record,
    })
}

fn recv_plan(conn: &mut super::control::LineConn, name: &str) -> Result<Plan> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum PlanOrRefusal {
        Plan(Plan),
        Refusal(StepReply),
    }
    match conn.recv::<PlanOrRefusal>(Some(Duration::from_secs(600)))? {
        Some(PlanOrRefusal::Plan(p)) => Ok(p),
        Some(PlanOrRefusal::Refusal(r)) => bail!(
            "guest {name}: its supervisor refused the capture: {}",
            r.error.unwrap_or_default()
        ),
        None => bail!("guest {name}: its supervisor closed the capture session"),
    }
}

fn step(conn: &mut super::control::LineConn, s: &Step, name: &str) -> Result<StepReply> {
    conn.send(s)?;
    match conn.recv::<StepReply>(Some(Duration::from_secs(60)))? {
        Some(r) if r.ok => Ok(r),
        Some(r) => bail!("guest {name}: capture {s:?}: {}", r.error.unwrap_or_default()),
        None => bail!("guest {name}: its supervisor ended the capture session (the guest stopped, or the hold lasted too long)"),
    }
}

/// The stopped guest's supervisor lock, so that it cannot start while its disks are read.
fn lock_stopped(paths: &super::Paths, name: &str) -> Result<std::fs::File> {
    std::fs::create_dir_all(&paths.dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.pid())
        .with_context(|| format!("{}: cannot open it", paths.pid().display()))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "guest {name} is starting or being captured; try again when it is running or stopped"
        );
    }
    Ok(f)
}

/// The change tracker of a stopped guest's image (created empty if the guest never ran on
/// the bundled monitor: then there is no base and the capture reads it in full).
fn open_tracker(image: &Path) -> Result<ChangeTracker> {
    let size = std::fs::metadata(image)
        .with_context(|| format!("disk {}", image.display()))?
        .len();
    let g = ignite_vmm::config::DEFAULT_TRACK_GRANULARITY;
    match ChangeTracker::open(image, size, g, true) {
        Ok(t) => Ok(t),
        // A map of another geometry (the image was resized): start over, in full.
        Err(_) => {
            forget_base(image);
            let _ = std::fs::remove_file(ChangeTracker::map_path(image));
            Ok(ChangeTracker::open(image, size, g, true)?)
        }
    }
}

/// Captures of one name run one at a time (a scheduled one and one by hand): the change log
/// and the bitmaps are one chain. Held until dropped.
pub fn capture_lock(state_dir: &Path, name: &str) -> Result<std::fs::File> {
    let dir = state_dir.join("locks");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("capture-{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open it", path.display()))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!("a capture of {name} is already running; wait for it to end");
    }
    Ok(f)
}
