//! Instant restore and clone (QEMU engine): the new guest boots before its disks are written.
//! Proxmox's live restore, done with Ignite's own NBD server.
//!
//! For each captured disk `diskN.img` of the new guest (the path its definition names):
//! - `diskN.img.instant.qcow2`: an empty qcow2 overlay whose backing file is the snapshot,
//!   served read-only by [`ignite_recovery::nbd::server`] on `diskN.nbd.sock` (export
//!   `diskN`; the backing names QEMU's `reconnect-delay`, so a server restarted within
//!   [`RECONNECT_SECS`] is not noticed by the guest). A clone's identity reset writes into it
//!   through `qemu-storage-daemon`'s FUSE export, mounted like any image (`MountedImage`).
//! - The QEMU engine starts a guest on the overlay while `diskN.img` does not exist
//!   ([`overlay_in_use`]) and gives it a second QMP monitor, `instant-qmp.sock`.
//! - A detached server process (`ignite recovery _instant-serve NAME`, its pid and lock in
//!   `instant.pid`, its log `instant.log`) serves the exports and, whenever the guest runs,
//!   copies each disk in the background with QMP `blockdev-mirror` (sync full) into
//!   `diskN.img.partial`, a raw image; when the mirror is in step it completes the job,
//!   QEMU moves the device onto the raw image, the server renames it to `diskN.img` and
//!   removes the overlay. The guest then runs from its own disk alone: a plain raw image,
//!   what its definition named all along; when every disk is done the server ends.
//!
//! Why `blockdev-mirror` and not `block-stream`: a stream leaves the guest on the qcow2
//! (QEMU 7.2 refuses a raw data file beside a backing file), and the rest of Ignite — the
//! bundled monitor, captures of a stopped guest, restores — reads raw images.
//!
//! Interruptions: QEMU or the supervisor ending mid-copy loses nothing (the overlay holds
//! every write; the partial image is discarded and the copy starts again at the next start).
//! The server ending mid-copy stalls the copy and the guest's reads of blocks not yet
//! copied until `ignite recovery instant NAME --resume` starts it again, which takes the
//! running job over. A guest started while no server runs does not start: QEMU names the
//! missing socket, and `ignite recovery instant NAME` says what to do. `instant.rate` holds
//! the copy's speed limit (bytes/s, 0 = none), `instant.progress` where the copy is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ignite_archive::Store;
use ignite_recovery::disk::SnapshotDisk;
use ignite_recovery::nbd::server::Server;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::instant_files::overlay_of;
use super::instant_files::qmp_socket;
use super::qemu::Qmp;
use super::Paths;

/// How long QEMU retries a lost connection to the snapshot's server before failing reads.
pub const RECONNECT_SECS: u32 = 300;
/// How often the server looks at the copy (and for a guest that started).
const POLL: Duration = Duration::from_millis(500);

/// What the server serves and copies (`instant.json`, written once by [`prepare`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub store: PathBuf,
    pub disks: Vec<PlanDisk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanDisk {
    /// The disk's image (what the definition names; exists once the copy is done).
    pub path: PathBuf,
    /// The block snapshot it is restored from (full id).
    pub snapshot: String,
    pub size: u64,
}

/// Where the background copy is (`instant.progress`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// `waiting for the guest to start`, `copying`, `done`.
    pub state: String,
    pub copied: u64,
    pub total: u64,
    /// Disks whose copy is complete.
    pub done_disks: usize,
    pub disks: usize,
    /// Unix time of this report.
    pub updated: i64,
}

fn plan_path(dir: &Path) -> PathBuf {
    dir.join("instant.json")
}
fn rate_path(dir: &Path) -> PathBuf {
    dir.join("instant.rate")
}
fn progress_path(dir: &Path) -> PathBuf {
    dir.join("instant.progress")
}
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("instant.log")
}
fn pid_path(dir: &Path) -> PathBuf {
    dir.join("instant.pid")
}
fn nbd_socket(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("disk{i}.nbd.sock"))
}
fn partial_of(disk: &Path) -> PathBuf {
    let mut p = disk.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Makes the overlays of `disks` (index in the guest, snapshot) in guest directory `dir`
/// and writes the plan; the disks are `dir/diskN.img`.
pub fn prepare(dir: &Path, store: &Store, disks: &[(usize, String, u64)]) -> Result<Plan> {
    let mut plan = Plan {
        store: store.root().to_path_buf(),
        disks: Vec::new(),
    };
    for (n, (index, snapshot, size)) in disks.iter().enumerate() {
        // The overlays are numbered like the guest's disks; QEMU's nodes follow the order.
        if *index != n {
            bail!("disk {index} recorded in position {n}: an instant restore needs disks 0, 1, ... in order");
        }
        let path = dir.join(format!("disk{index}.img"));
        let backing = json!({"file": {"driver": "nbd",
            "server": {"type": "unix", "path": nbd_socket(dir, *index)},
            "export": format!("disk{index}"), "reconnect-delay": RECONNECT_SECS}});
        // -u: the server is not up yet, and the size is known.
        ignite_recovery::process::output(
            Command::new("qemu-img")
                .args(["create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(format!("json:{backing}"))
                .arg(overlay_of(&path))
                .arg(size.to_string()),
        )
        .context("cannot make the instant restore's overlay (qemu-img, package qemu-utils)")?;
        plan.disks.push(PlanDisk {
            path,
            snapshot: snapshot.clone(),
            size: *size,
        });
    }
    write_atomic(&plan_path(dir), &serde_json::to_vec_pretty(&plan)?)?;
    Ok(plan)
}

/// Sets the background copy's speed limit (bytes/s, 0 = none); a running copy takes it
/// within a second.
pub fn set_rate(dir: &Path, rate: u64) -> Result<()> {
    write_atomic(&rate_path(dir), rate.to_string().as_bytes())
}

fn rate(dir: &Path) -> u64 {
    std::fs::read_to_string(rate_path(dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub fn progress(dir: &Path) -> Option<Progress> {
    serde_json::from_slice(&std::fs::read(progress_path(dir)).ok()?).ok()
}

/// The pid of the running server of guest directory `dir`, if one runs.
pub fn server_pid(dir: &Path) -> Option<u32> {
    let f = std::fs::File::open(pid_path(dir)).ok()?;
    // The server holds the lock for its life: a free lock is a dead server.
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
        return None;
    }
    std::fs::read_to_string(pid_path(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether an instant restore of the guest in `dir` is still copying (its plan exists).
pub fn pending(dir: &Path) -> bool {
    plan_path(dir).exists()
}

/// Starts the server of guest `name` detached and waits until its exports answer.
pub fn spawn_server(state_dir: &Path, name: &str) -> Result<()> {
    let dir = super::guest_dir(state_dir, name);
    let plan: Plan = load_plan(&dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&dir))
        .with_context(|| format!("{}: cannot open it", log_path(&dir).display()))?;
    let mut cmd = Command::new(super::ignite_exe().context("cannot find the ignite binary")?);
    cmd.args(["recovery", "--state-dir"])
        .arg(state_dir)
        .args(["_instant-serve", name])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child =
        super::spawn_detached(&mut cmd).context("cannot start the instant restore's server")?;
    let t = Instant::now();
    let ready = || {
        (0..plan.disks.len())
            .all(|i| std::os::unix::net::UnixStream::connect(nbd_socket(&dir, i)).is_ok())
    };
    while !ready() {
        if let Some(code) = child.try_wait()? {
            bail!(
                "the instant restore's server of {name} ended ({code}): {}",
                tail(&log_path(&dir))
            );
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!(
                "the instant restore's server of {name} did not open its exports within 30 s: {}",
                tail(&log_path(&dir))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A long-lived caller must not keep a zombie when the server ends.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Ends the server of guest directory `dir` (a failed restore), if it runs.
pub fn stop_server(dir: &Path) {
    if let Some(pid) = server_pid(dir).and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let t = Instant::now();
        while server_pid(dir).is_some() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

fn load_plan(dir: &Path) -> Result<Plan> {
    let p = plan_path(dir);
    serde_json::from_slice(
        &std::fs::read(&p)
            .with_context(|| format!("{}: no instant restore is in progress here", p.display()))?,
    )
    .with_context(|| format!("{}: does not parse", p.display()))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("{}: cannot write it", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write it", path.display()))
}

/// The overlays of a guest's disks exported as files by `qemu-storage-daemon` (FUSE), for
/// the identity reset to mount; the daemon flushes and ends on drop.
pub struct FuseExports {
    child: Child,
    pub files: Vec<PathBuf>,
}

impl FuseExports {
    pub fn open(plan: &Plan, scratch: &Path) -> Result<FuseExports> {
        std::fs::create_dir_all(scratch)?;
        let mut cmd = Command::new("qemu-storage-daemon");
        let mut files = Vec::new();
        for (i, d) in plan.disks.iter().enumerate() {
            let file = scratch.join(format!("disk{i}.fuse"));
            std::fs::File::create(&file)?;
            let node = json!({"driver": "qcow2", "node-name": format!("d{i}"),
                "file": {"driver": "file", "filename": overlay_of(&d.path)}});
            cmd.arg("--blockdev").arg(node.to_string());
            cmd.arg("--export").arg(format!(
                "type=fuse,id=e{i},node-name=d{i},writable=on,mountpoint={}",
                file.display()
            ));
            files.push(file);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run qemu-storage-daemon (package qemu-system-x86)")?;
        let mut fuse = FuseExports { child, files };
        let t = Instant::now();
        // A mounted export has the disk's size; the empty file under it has none.
        let mounted = |f: &PathBuf, size: u64| std::fs::metadata(f).is_ok_and(|m| m.len() == size);
        while !fuse
            .files
            .iter()
            .zip(&plan.disks)
            .all(|(f, d)| mounted(f, d.size))
        {
            if let Some(code) = fuse.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = fuse.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("qemu-storage-daemon ended ({code}): {}", err.trim());
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("qemu-storage-daemon did not export the overlays within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(fuse)
    }
}

impl Drop for FuseExports {
    fn drop(&mut self) {
        // SIGTERM: it flushes the qcow2 images and unmounts the exports.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The server (`ignite recovery _instant-serve NAME`): serves the exports and copies the
/// disks whenever the guest runs, until every disk is its own image.
pub fn serve(state_dir: &Path, name: &str) -> Result<()> {
    crate::state::private_umask();
    let paths = Paths::new(state_dir, name);
    let dir = paths.dir.clone();
    let pid_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(pid_path(&dir))
        .with_context(|| format!("{}: cannot open it", pid_path(&dir).display()))?;
    if rustix::fs::flock(
        &pid_file,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_err()
    {
        bail!(
            "the instant restore of {name} is already served (see {})",
            pid_path(&dir).display()
        );
    }
    pid_file.set_len(0)?;
    std::io::Write::write_all(
        &mut &pid_file,
        format!("{}\n", std::process::id()).as_bytes(),
    )?;
    let plan = load_plan(&dir)?;
    let store = Arc::new(Store::open(&plan.store)?);
    let mut servers = Vec::new();
    for (i, d) in plan.disks.iter().enumerate() {
        let m = store
            .resolve(&d.snapshot)
            .with_context(|| format!("disk {i}: snapshot {} is gone from the store", d.snapshot))?;
        let image = Arc::new(SnapshotDisk::open(store.clone(), &m)?);
        servers.push(Server::start(
            &nbd_socket(&dir, i),
            &format!("disk{i}"),
            image,
        )?);
    }
    eprintln!(
        "{name}: serving {} disk(s) of {}",
        plan.disks.len(),
        plan.store.display()
    );
    let mut report = Reporter::new(&dir, &plan);
    loop {
        finish_done_disks(&plan);
        if plan.disks.iter().all(|d| d.path.exists()) {
            break;
        }
        if !plan_path(&dir).exists() {
            eprintln!("{name}: the guest was removed; nothing left to serve");
            return Ok(());
        }
        match Qmp::connect_at(&qmp_socket(&dir), Duration::ZERO) {
            Ok(q) => {
                eprintln!("{name}: the guest runs; copying its disks");
                match copy(q, &dir, &plan, &mut report) {
                    Ok(()) => eprintln!("{name}: QEMU's monitor closed"),
                    Err(e) => eprintln!("{name}: copy interrupted: {e:#}"),
                }
            }
            Err(_) => report.waiting(),
        }
        std::thread::sleep(POLL);
    }
    drop(servers);
    report.done();
    for p in [plan_path(&dir), rate_path(&dir)] {
        let _ = std::fs::remove_file(p);
    }
    eprintln!("{name}: every disk is the guest's own; the instant restore is complete");
    Ok(())
}

/// Disks whose own image exists (renamed after the pivot) lose their overlay.
fn finish_done_disks(plan: &Plan) {
    for d in &plan.disks {
        if d.path.exists() {
            let _ = std::fs::remove_file(overlay_of(&d.path));
            let _ = std::fs::remove_file(partial_of(&d.path));
        }
    }
}

/// Copies every disk not yet done while QEMU runs: returns when all are, or when QEMU's
/// monitor closes (the guest ended).
fn copy(mut q: Qmp, dir: &Path, plan: &Plan, report: &mut Reporter) -> Result<()> {
    let jobs = q.call("query-jobs", serde_json::Value::Null)?;
    let mut speed = rate(dir);
    for (i, d) in plan.disks.iter().enumerate() {
        if d.path.exists() {
            continue;
        }
        let job = format!("instant{i}");
        // A server restarted while the guest ran takes its job over.
        if jobs
            .as_array()
            .is_some_and(|a| a.iter().any(|j| j["id"] == job.as_str()))
        {
            continue;
        }
        let partial = partial_of(&d.path);
        let f = std::fs::File::create(&partial)
            .with_context(|| format!("{}: cannot create it", partial.display()))?;
        f.set_len(d.size)?;
        let _ = q.call("blockdev-del", json!({"node-name": format!("own{i}")}));
        q.call(
            "blockdev-add",
            // Zeros (the snapshot's holes) become holes: the disk stays sparse.
            json!({"driver": "raw", "node-name": format!("own{i}"),
                   "discard": "unmap", "detect-zeroes": "unmap",
                   "file": {"driver": "file", "filename": partial, "discard": "unmap"}}),
        )?;
        q.call(
            "blockdev-mirror",
            json!({"job-id": job, "device": format!("disk{i}"), "target": format!("own{i}"),
                   "sync": "full", "speed": speed, "auto-dismiss": false}),
        )?;
    }
    loop {
        let jobs = q.call("query-jobs", serde_json::Value::Null)?;
        let Some(jobs) = jobs.as_array() else {
            return Ok(()); // a closed monitor answers null: QEMU ended
        };
        let want = rate(dir);
        let mut left = 0;
        let (mut copied, mut total) = (0u64, 0u64);
        for (i, d) in plan.disks.iter().enumerate() {
            if d.path.exists() {
                copied += d.size;
                total += d.size;
                continue;
            }
            let id = format!("instant{i}");
            let Some(j) = jobs.iter().find(|j| j["id"] == id.as_str()) else {
                bail!("QEMU has no job {id} for disk {i}");
            };
            left += 1;
            copied += j["current-progress"].as_u64().unwrap_or(0);
            // QEMU knows the total once the job has looked at the disk.
            total += j["total-progress"]
                .as_u64()
                .filter(|&t| t > 0)
                .unwrap_or(d.size);
            if want != speed {
                q.call("block-job-set-speed", json!({"device": id, "speed": want}))?;
            }
            match j["status"].as_str().unwrap_or("") {
                "ready" => {
                    q.call("job-complete", json!({"id": id}))?;
                }
                "concluded" if j["error"].is_string() => {
                    q.call("job-dismiss", json!({"id": id}))?;
                    let _ = q.call("blockdev-del", json!({"node-name": format!("own{i}")}));
                    bail!("disk {i}: the copy failed: {}", j["error"]);
                }
                "concluded" => {
                    // The device runs on own{i} now: its image becomes the disk's own, before
                    // the job is dismissed, so that a server restarted in between finds the
                    // job and not a device on a node it does not know.
                    std::fs::rename(partial_of(&d.path), &d.path).with_context(|| {
                        format!("disk {i}: cannot rename the copy to {}", d.path.display())
                    })?;
                    sync_dir(dir);
                    let _ = std::fs::remove_file(overlay_of(&d.path));
                    q.call("job-dismiss", json!({"id": id}))?;
                    eprintln!("disk {i}: copied; the guest runs on {}", d.path.display());
                }
                _ => {}
            }
        }
        speed = want;
        report.copying(copied, total, plan.disks.len() - left);
        if left == 0 {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `instant.progress` when it changes, and a log line now and then.
struct Reporter {
    dir: PathBuf,
    last: Progress,
    logged: Instant,
    disks: usize,
}

impl Reporter {
    fn new(dir: &Path, plan: &Plan) -> Reporter {
        Reporter {
            dir: dir.to_path_buf(),
            last: Progress::default(),
            logged: Instant::now(),
            disks: plan.disks.len(),
        }
    }

    fn put(&mut self, state: &str, copied: u64, total: u64, done: usize) {
        let p = Progress {
            state: state.into(),
            copied,
            total,
            done_disks: done,
            disks: self.disks,
            updated: 0,
        };
        if p == self.last {
            return;
        }
        if state != self.last.state || self.logged.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "{state}: {} of {}",
                ignite_profiles::human(copied),
                ignite_profiles::human(total)
            );
            self.logged = Instant::now();
        }
        self.last = p.clone();
        let stamped = Progress {
            updated: crate::state::now(),
            ..p
        };
        if let Ok(b) = serde_json::to_vec(&stamped) {
            let _ = write_atomic(&progress_path(&self.dir), &b);
        }
    }

    fn waiting(&mut self) {
        let (c, t, d) = (self.last.copied, self.last.total, self.last.done_disks);
        self.put("waiting for the guest to start", c, t, d);
    }

    fn copying(&mut self, copied: u64, total: u64, done: usize) {
        self.put("copying", copied, total, done);
    }

    fn done(&mut self) {
        let t = self.last.total.max(self.last.copied);
        self.put("done", t, t, self.disks);
    }
}

#[cfg(test)]
mod tests {
    use super::super::instant_files::overlay_in_use;
    use super::*;

    #[test]
    fn the_overlay_is_used_only_until_the_disk_is_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk0.img");
        assert_eq!(overlay_in_use(&disk), None, "a plain guest");
        std::fs::write(overlay_of(&disk), b"qcow2").unwrap();
        assert_eq!(
            overlay_in_use(&disk),
            Some(overlay_of(&disk)),
            "still copying"
        );
        // Renamed into place, the copy holds the guest's writes since the switch: an overlay
        // left behind (a crash before its removal) must never be opened again.
        std::fs::write(&disk, b"raw").unwrap();
        assert_eq!(overlay_in_use(&disk), None);
    }

    #[test]
    fn a_server_is_running_only_while_it_holds_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(server_pid(dir.path()), None);
        std::fs::write(pid_path(dir.path()), "4242\n").unwrap();
        assert_eq!(
            server_pid(dir.path()),
            None,
            "a pid file without its lock is stale"
        );
        let held = std::fs::File::open(pid_path(dir.path())).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
        assert_eq!(server_pid(dir.path()), Some(4242));
    }
}
