//! Network captures, the client's side: the agent on a netbooted client (boot action
//! `capture`), or `ignite recovery capture --server URL` on a running one. It talks to the
//! server's capture API (`ignite/src/server/capture_api.rs`):
//!
//! ```text
//! POST /api/capture/begin                    Begin (JSON) → Session (JSON)
//! POST /api/capture/{session}/missing        chunk ids (32 bytes each) → those the store lacks
//! POST /api/capture/{session}/chunks         chunks as stored (chunk_stream::encode_upload)
//! GET  /api/capture/{session}/tree/{part}    the part's previous tree (archive tree encoding)
//! POST /api/capture/{session}/commit/{part}  Draft::encode → the part's Manifest (JSON)
//! POST /api/capture/{session}/compare/{part} a disk's group digests → which groups changed
//! POST /api/capture/{session}/changes/{part} the changed groups' blocks → the Manifest
//! POST /api/capture/{session}/finish         Report (JSON) → Finished (JSON)
//! POST /api/capture/{session}/fail           why the capture failed (text)
//! GET  /ignite                               the server's own (static) ignite binary
//! ```
//!
//! Every request carries the capture token (`Authorization: Bearer TOKEN`), which names the
//! client and what to capture. Parts are `files` (file captures) and `disk0`, `disk1`, ...
//! (block captures; the client's disks in /sys/block order).
//!
//! The client reads, chunks, hashes and compresses, as a local import does (the archive's
//! `import_*_into` against an HTTP [`ChunkSink`]); the server answers which chunks it lacks
//! and stores only those, each checked against its id. Uploads run on [`UPLOADERS`] threads
//! while the import goes on. While the server is away every request is retried with backoff;
//! when it answers again without the session (it was restarted), the capture begins again:
//! reading is redone, but what the server stored is no longer missing and is not sent again.
//!
//! A disk whose previous capture has its size is not asked about block by block: the client
//! hashes it, and only the groups of blocks whose digests differ from that capture's are
//! asked about, sent and committed ([`compare`]); a first capture sends each chunk's id.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ignite_archive::chunk_stream::{self, StoredChunk};
use ignite_archive::snapshot::{decode_tree, SnapshotStats};
use ignite_archive::{
    ChunkId, ChunkSink, Draft, DraftContent, FileImage, ImageReader, ImageSource, ImportOptions,
    Manifest, Progress, StoreConfig,
};
use ignite_profiles::DiskFact;
use serde::{Deserialize, Serialize};

use super::compare;
use super::files::{self, FileSystem, Rules, Source, View};
use super::layout::{self, DiskLayout};
use super::record::{disk_snapshot_name, files_snapshot_name, CaptureKind, LABEL_CAPTURE};
use crate::api_client::{ApiClient, Endpoint, Gone};

/// Upload requests in flight while the import goes on.
pub const UPLOADERS: usize = 4;
/// Times a capture begins again after the server lost its session.
const MAX_RESTARTS: usize = 20;
/// Largest answer accepted (a tree of a large system).
const MAX_BODY: u64 = 1 << 30;

/// `POST /api/capture/begin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Begin {
    /// What the client wants; the token's kind when absent.
    pub kind: Option<CaptureKind>,
    /// Rules added to the token's (`include=X`, `exclude=X`).
    pub rules: Vec<String>,
    /// Who is asking (host name, agent or live), for the server's log.
    pub client: String,
}

/// The server's answer to [`Begin`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub session: String,
    /// The client's name at the server: its captures are `NAME`, `NAME:files`, `NAME:diskN`.
    pub name: String,
    pub kind: CaptureKind,
    /// The rules in force (the token's and the client's).
    pub rules: Vec<String>,
    /// The store's chunker, block size and compression: they decide the chunk ids.
    pub config: StoreConfig,
    /// Each part's latest snapshot: trees let unchanged files go unread.
    pub parents: BTreeMap<String, Manifest>,
}

/// One disk as the client saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskReport {
    pub index: usize,
    pub path: String,
    pub size: u64,
    pub serial: Option<String>,
    pub layout: Option<DiskLayout>,
}

/// `POST .../finish`: what the client found, for the record (its `source.facts`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub hostname: Option<String>,
    pub mac: Option<String>,
    pub disks: Vec<DiskReport>,
    /// The system's file systems as it mounts them.
    pub file_systems: Vec<FileSystem>,
    /// Mount points (file captures) or disks (block captures) captured.
    pub captured: Vec<String>,
    /// What was left out and why (`/srv (rule exclude=/srv)`).
    pub excluded: Vec<String>,
    pub notes: Vec<String>,
}

/// The server's answer to a finished capture.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    /// The record's snapshot id.
    pub record: String,
    pub name: String,
    pub kind: CaptureKind,
    pub logical_bytes: u64,
    pub read_bytes: u64,
    pub new_bytes: u64,
    /// Request and answer bodies of this capture, as the server counted them.
    pub wire_bytes: u64,
    pub seconds: f64,
}

/// The capture API client: a server, a token, retries ([`ApiClient`]).
pub struct Client {
    api: ApiClient,
    /// The server lost the capture session (a 410 answer): the capture begins again.
    lost: AtomicBool,
}

impl Client {
    pub fn new(server: &Endpoint, token: &str) -> Client {
        Client {
            api: ApiClient::new(
                server,
                token,
                Duration::from_secs(120),
                2 * UPLOADERS + 8,
                MAX_BODY,
            ),
            lost: AtomicBool::new(false),
        }
    }

    pub fn server(&self) -> &str {
        self.api.server()
    }

    /// How long requests keep retrying while the server cannot be reached.
    pub fn give_up_after(&mut self, d: Duration) {
        self.api.give_up_after = d;
    }

    fn call(&self, what: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        self.api.request(what, path, body).inspect_err(|e| {
            if e.chain().any(|c| c.is::<Gone>()) {
                self.lost.store(true, Ordering::Relaxed);
            }
        })
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &[u8],
    ) -> Result<T> {
        let data = self.call(what, path, Some(body))?;
        serde_json::from_slice(&data).with_context(|| {
            format!(
                "server {}: its answer to {what} does not parse",
                self.server()
            )
        })
    }

    pub fn begin(&self, b: &Begin) -> Result<Session> {
        self.json(
            "the capture's begin",
            "/api/capture/begin",
            &serde_json::to_vec(b)?,
        )
    }

    fn missing(&self, s: &Session, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let what = format!("which of {} chunks the store lacks", ids.len());
        let path = format!("/api/capture/{}/missing", s.session);
        let data = self.call(&what, &path, Some(&chunk_stream::encode_request(ids)))?;
        if !data.len().is_multiple_of(32) || data.len() / 32 > ids.len() {
            bail!(
                "server {}: {what}: an answer of {} bytes",
                self.server(),
                data.len()
            );
        }
        data.chunks_exact(32)
            .map(|b| {
                let id = ChunkId(b.try_into().expect("32 bytes"));
                if ids.contains(&id) {
                    Ok(id)
                } else {
                    Err(anyhow!(
                        "server {}: {what}: it names chunk {}, which was not asked about",
                        self.server(),
                        id.to_hex()
                    ))
                }
            })
            .collect()
    }

    fn upload(&self, s: &Session, chunks: &[StoredChunk]) -> Result<()> {
        let what = format!("an upload of {} chunks", chunks.len());
        let path = format!("/api/capture/{}/chunks", s.session);
        self.call(&what, &path, Some(&chunk_stream::encode_upload(chunks)))
            .map(|_| ())
    }

    /// The previous tree of part `part`, if the server named one.
    fn parent_tree(
        &self,
        s: &Session,
        part: &str,
    ) -> Result<Option<(Manifest, Vec<ignite_archive::Entry>)>> {
        let Some(m) = s.parents.get(part) else {
            return Ok(None);
        };
        let what = format!("the previous tree of {}", m.name);
        let data = self.call(
            &what,
            &format!("/api/capture/{}/tree/{part}", s.session),
            None,
        )?;
        let entries = decode_tree(&m.id, &data)
            .with_context(|| format!("server {}: {what}", self.server()))?;
        Ok(Some((m.clone(), entries)))
    }

    fn commit(&self, s: &Session, part: &str, draft: &Draft) -> Result<Manifest> {
        let path = format!("/api/capture/{}/commit/{part}", s.session);
        self.json(&format!("the commit of {part}"), &path, &draft.encode()?)
    }

    /// Which groups of `part` differ from its previous capture ([`compare`]).
    fn compare(&self, s: &Session, part: &str, digests: &[[u8; 32]]) -> Result<Vec<bool>> {
        let what = format!("a comparison of {part} with its previous capture");
        let path = format!("/api/capture/{}/compare/{part}", s.session);
        let data = self.call(&what, &path, Some(&compare::encode_digests(digests)))?;
        compare::decode_bitmap(&data, digests.len())
            .with_context(|| format!("server {}: {what}", self.server()))
    }

    /// Commits `part` as its previous capture with the differing groups' blocks replaced.
    fn commit_changes(
        &self,
        s: &Session,
        part: &str,
        stats: &SnapshotStats,
        blocks: &[Option<ChunkId>],
    ) -> Result<()> {
        let path = format!("/api/capture/{}/changes/{part}", s.session);
        let body = compare::encode_changes(stats, blocks)?;
        self.json::<Manifest>(&format!("the commit of {part}"), &path, &body)
            .map(|_| ())
    }

    fn finish(&self, s: &Session, report: &Report) -> Result<Finished> {
        let path = format!("/api/capture/{}/finish", s.session);
        self.json("the capture's end", &path, &serde_json::to_vec(report)?)
    }

    /// Tells the server why the capture failed (once, no retries: it may be why).
    fn fail(&self, s: &Session, why: &str) {
        let path = format!("/api/capture/{}/fail", s.session);
        if let Err(e) = self.api.request_once(&path, Some(why.as_bytes())) {
            tracing::warn!("could not report the failure: {e:#}");
        }
    }
}

/// The capture's chunks go to the server: `missing` asks, `put` queues an upload that one of
/// the uploader threads sends (the import goes on meanwhile). The first failure ends the
/// import with it.
struct HttpSink<'a> {
    client: &'a Client,
    session: &'a Session,
    queue: Mutex<Option<SyncSender<Vec<StoredChunk>>>>,
    failed: Mutex<Option<anyhow::Error>>,
}

fn sink_error(e: &anyhow::Error) -> ignite_archive::Error {
    ignite_archive::Error::Invalid(format!("{e:#}"))
}

impl HttpSink<'_> {
    /// Records the capture's first failure.
    fn failed(&self, e: anyhow::Error) {
        self.failed.lock().unwrap().get_or_insert(e);
    }

    /// The capture's failure so far, as the import's error.
    fn failure(&self) -> ignite_archive::Result<()> {
        match &*self.failed.lock().unwrap() {
            Some(e) => Err(sink_error(e)),
            None => Ok(()),
        }
    }
}

impl ChunkSink for HttpSink<'_> {
    fn config(&self) -> &StoreConfig {
        &self.session.config
    }

    fn missing(&self, ids: &[ChunkId]) -> ignite_archive::Result<Vec<ChunkId>> {
        self.failure()?;
        self.client.missing(self.session, ids).map_err(|e| {
            let err = sink_error(&e);
            self.failed(e);
            err
        })
    }

    fn put(&self, chunks: &[StoredChunk]) -> ignite_archive::Result<()> {
        self.failure()?;
        let tx = self.queue.lock().unwrap().clone();
        let sent = tx.is_some_and(|tx| tx.send(chunks.to_vec()).is_ok());
        if !sent {
            return Err(ignite_archive::Error::Invalid(
                "the uploads have stopped".into(),
            ));
        }
        Ok(())
    }
}

/// Runs `f` with an HTTP sink whose uploads run on [`UPLOADERS`] threads; returns once every
/// upload is done, with the first error if any.
fn with_sink<R>(
    client: &Client,
    session: &Session,
    f: impl FnOnce(&HttpSink) -> Result<R>,
) -> Result<R> {
    let (tx, rx) = sync_channel::<Vec<StoredChunk>>(UPLOADERS);
    let rx = Mutex::new(rx);
    let sink = HttpSink {
        client,
        session,
        queue: Mutex::new(Some(tx)),
        failed: Mutex::new(None),
    };
    let r = std::thread::scope(|s| {
        for _ in 0..UPLOADERS {
            let (sink, rx) = (&sink, &rx);
            s.spawn(move || loop {
                let Ok(batch) = rx.lock().unwrap().recv() else {
                    return;
                };
                // After a failure the queue is still drained, so no put blocks forever.
                if sink.failed.lock().unwrap().is_some() {
                    continue;
                }
                if let Err(e) = sink.client.upload(sink.session, &batch) {
                    sink.failed(e);
                }
            });
        }
        let r = f(&sink);
        sink.queue.lock().unwrap().take(); // uploaders finish the queue and exit
        r
    });
    if let Some(e) = sink.failed.into_inner().unwrap() {
        return Err(e);
    }
    r
}

/// The machine to capture.
pub enum Machine {
    /// The agent on a netbooted client: its disks, nothing mounted.
    Agent { mac: String, disks: Vec<DiskFact> },
    /// A running system: at file level, what is mounted under `root` (`/`: all of it); or,
    /// with `images`, those disks or image files (not in use) at block level.
    Live { root: PathBuf, images: Vec<PathBuf> },
}

/// A capture to run.
pub struct Job {
    pub machine: Machine,
    /// What to ask for (the token's kind when `None`).
    pub kind: Option<CaptureKind>,
    /// Rules added to the token's.
    pub rules: Rules,
}

impl Job {
    fn describe(&self) -> String {
        let host = hostname().unwrap_or_else(|| "?".into());
        match &self.machine {
            Machine::Agent { mac, .. } => format!("agent on {mac}"),
            Machine::Live { .. } => format!("live on {host}, ignite {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Runs a capture to its end (see the module docs); begins again when the server lost the
/// session, up to [`MAX_RESTARTS`] times. A failure is reported to the server.
pub fn capture(client: &Client, job: &Job, progress: &Progress) -> Result<Finished> {
    if matches!(job.machine, Machine::Live { .. }) {
        files::private_mounts()?;
    }
    let begin = Begin {
        kind: job.kind,
        rules: job.rules.to_args(),
        client: job.describe(),
    };
    let mut restarts = 0;
    loop {
        client.lost.store(false, Ordering::Relaxed);
        let s = client.begin(&begin)?;
        progress.store(0, Ordering::Relaxed);
        match run(client, &s, job, progress) {
            Ok(f) => return Ok(f),
            Err(e) if client.lost.load(Ordering::Relaxed) && restarts < MAX_RESTARTS => {
                restarts += 1;
                note(&format!("capture: {e:#}; beginning again ({restarts}/{MAX_RESTARTS}): what the server stored is not sent again"));
            }
            Err(e) => {
                client.fail(&s, &format!("{e:#}"));
                return Err(e);
            }
        }
    }
}

fn run(client: &Client, s: &Session, job: &Job, progress: &Progress) -> Result<Finished> {
    let rules = Rules::parse(&s.rules).context("the rules the server sent")?;
    let report = match (&job.machine, s.kind) {
        (Machine::Live { root, images }, CaptureKind::Files) => {
            if !images.is_empty() {
                bail!("disks and image files are captured at block level; leave --disk out for a file capture");
            }
            let (fss, swaps) = files::live_system(root)?;
            let mut report = Report {
                hostname: hostname(),
                disks: live_disks(),
                ..Default::default()
            };
            capture_files(
                client,
                s,
                &rules,
                fss,
                &swaps,
                Source::Live,
                &mut report,
                progress,
            )?;
            report
        }
        (Machine::Live { images, .. }, CaptureKind::Block) => {
            if images.is_empty() {
                bail!("a live system is captured at file level; for a block capture name the disks or image files to read (--disk), which must not be in use");
            }
            if !rules.include.is_empty() || !rules.exclude.is_empty() {
                bail!("include/exclude rules apply to file captures and netboot block captures; a live block capture reads the disks it is given");
            }
            let disks: Vec<(usize, PathBuf)> = images.iter().cloned().enumerate().collect();
            let mut report = Report::default();
            for (i, p) in &disks {
                let img = FileImage::open(p).with_context(|| format!("disk {}", p.display()))?;
                report.disks.push(DiskReport {
                    index: *i,
                    path: p.display().to_string(),
                    size: ImageReader::size(&img),
                    serial: None,
                    layout: layout::probe(&img).ok(),
                });
            }
            capture_block(client, s, &disks, &mut report, progress)?;
            report
        }
        (Machine::Agent { mac, disks }, kind) => {
            let found = files::device_system(disks)?;
            let mut report = Report {
                hostname: found.hostname.clone(),
                mac: Some(mac.clone()),
                disks: disks
                    .iter()
                    .enumerate()
                    .map(|(index, d)| DiskReport {
                        index,
                        path: d.path.clone(),
                        size: d.size,
                        serial: d.serial.clone(),
                        layout: found
                            .layouts
                            .iter()
                            .find(|(p, _)| *p == d.path)
                            .map(|(_, l)| l.clone()),
                    })
                    .collect(),
                notes: found.notes.clone(),
                ..Default::default()
            };
            match kind {
                CaptureKind::Files => {
                    if found.file_systems.is_empty() {
                        bail!("no file system on the disks holds /etc/fstab, so the system's mount table is unknown; capture the disks at block level instead");
                    }
                    capture_files(
                        client,
                        s,
                        &rules,
                        found.file_systems,
                        &found.swap_files,
                        Source::Devices,
                        &mut report,
                        progress,
                    )?;
                }
                CaptureKind::Block => {
                    let chosen = choose_disks(disks, &found.file_systems, &rules, &mut report)?;
                    capture_block(client, s, &chosen, &mut report, progress)?;
                }
            }
            report
        }
    };
    client.finish(s, &report)
}

/// This machine's host name (the kernel's, as `hostname` prints it).
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

/// The disks of the running system, with their layouts (read from the devices).
fn live_disks() -> Vec<DiskReport> {
    crate::facts::disks(Path::new("/sys/block"))
        .into_iter()
        .enumerate()
        .map(|(index, d)| DiskReport {
            index,
            layout: FileImage::open(Path::new(&d.path))
                .ok()
                .and_then(|img| layout::probe(&img).ok()),
            path: d.path,
            size: d.size,
            serial: d.serial,
        })
        .collect()
}

/// The disks a netboot block capture takes: those holding the system (all of them when no
/// mount table was found), plus includes, less exclusions; rules name disks only.
fn choose_disks(
    disks: &[DiskFact],
    fss: &[FileSystem],
    rules: &Rules,
    report: &mut Report,
) -> Result<Vec<(usize, PathBuf)>> {
    use files::Target;
    if let Some(t) = rules
        .include
        .iter()
        .chain(&rules.exclude)
        .find(|t| !matches!(t, Target::Disk(_)))
    {
        bail!("a block capture takes whole disks: rule {t} is not a disk (/dev/NAME); paths are for file captures");
    }
    let names: Vec<String> = disks.iter().map(|d| d.path.clone()).collect();
    files::check_disk_rules(rules, fss, &names)?;
    let system = files::essential_disks(fss);
    if system.is_empty() {
        report
            .notes
            .push("no mount table found: every disk is captured".into());
    }
    let mut chosen = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let rule = |list: &[Target]| list.iter().any(|t| *t == Target::Disk(d.path.clone()));
        if rule(&rules.exclude) {
            report
                .excluded
                .push(format!("{} (rule exclude={})", d.path, d.path));
        } else if system.is_empty() || system.contains(&d.path) || rule(&rules.include) {
            chosen.push((i, PathBuf::from(&d.path)));
        } else {
            report.notes.push(format!(
                "{} not captured: it holds no part of the system; include={} takes it",
                d.path, d.path
            ));
        }
    }
    Ok(chosen)
}

#[allow(clippy::too_many_arguments)]
fn capture_files(
    client: &Client,
    s: &Session,
    rules: &Rules,
    fss: Vec<FileSystem>,
    swaps: &[String],
    source: Source,
    report: &mut Report,
    progress: &Progress,
) -> Result<()> {
    let sel = files::select(&fss, rules, swaps)?;
    report.file_systems = fss;
    report.captured = sel.file_systems.iter().map(|f| f.mount.clone()).collect();
    report.excluded = sel
        .excluded
        .iter()
        .map(|(t, why)| format!("{t} ({why})"))
        .collect();
    report.notes.extend(sel.notes.iter().cloned());
    let view = View::build(&sel, source)?;
    report.notes.extend(view.notes.iter().cloned());
    let parent = client.parent_tree(s, "files")?;
    let mut opts = ImportOptions::new(&files_snapshot_name(&s.name));
    opts.labels.insert(LABEL_CAPTURE.into(), "files".into());
    // The view's file systems are separate mounts: the walk crosses them.
    opts.one_file_system = false;
    let mut draft = with_sink(client, s, |sink| {
        let parent = parent.as_ref().map(|(m, e)| (m, e.as_slice()));
        Ok(ignite_archive::import_dir_into(
            sink,
            view.root(),
            &opts,
            parent,
            progress,
        )?)
    })
    .context("reading the file systems")?;
    if let DraftContent::Tree(entries) = &mut draft.content {
        view.filter(entries);
    }
    drop(view);
    client.commit(s, "files", &draft)?;
    Ok(())
}

fn capture_block(
    client: &Client,
    s: &Session,
    disks: &[(usize, PathBuf)],
    report: &mut Report,
    progress: &Progress,
) -> Result<()> {
    for (index, path) in disks {
        let img = FileImage::open(path).with_context(|| format!("disk {}", path.display()))?;
        let part = format!("disk{index}");
        let mut opts = ImportOptions::new(&disk_snapshot_name(&s.name, *index));
        opts.labels.insert(LABEL_CAPTURE.into(), "disk".into());
        let size = ImageReader::size(&img);
        let parent = s
            .parents
            .get(&part)
            .filter(|m| m.image_size == Some(size) && m.block_size == Some(s.config.block_size));
        match parent {
            Some(_) => capture_compared(client, s, &part, &img, &opts, progress),
            // A first capture: every block is new to this disk's history, so it is sent in
            // one pass, asking about each chunk as it is made.
            None => {
                let draft = with_sink(client, s, |sink| {
                    let src = ImageSource {
                        reader: &img,
                        changed: None,
                    };
                    Ok(ignite_archive::import_image_into(
                        sink, src, &opts, None, progress,
                    )?)
                })?;
                client.commit(s, &part, &draft).map(|_| ())
            }
        }
        .with_context(|| format!("reading disk {}", path.display()))?;
        report.captured.push(path.display().to_string());
    }
    Ok(())
}

/// A disk with a previous capture of its size ([`compare`]): every block hashed, the group
/// digests compared at the server, and only the differing groups' chunks asked about, sent
/// where missing, and committed.
fn capture_compared(
    client: &Client,
    s: &Session,
    part: &str,
    img: &FileImage,
    opts: &ImportOptions,
    progress: &Progress,
) -> Result<()> {
    let src = ImageSource {
        reader: img,
        changed: None,
    };
    let hashed =
        ignite_archive::import_image_into(&HashOnly(&s.config), src, opts, None, progress)?;
    let DraftContent::Image { blocks, .. } = hashed.content else {
        bail!("an image import made a tree");
    };
    let differs = client.compare(s, part, &compare::group_digests(&blocks))?;
    let changed: Vec<usize> = compare::blocks_in(&differs, blocks.len()).collect();
    // Chunks of the groups that did not change: the server holds them (it checked).
    let mut in_changed = vec![false; blocks.len()];
    for &i in &changed {
        in_changed[i] = true;
    }
    let known: HashSet<ChunkId> = blocks
        .iter()
        .zip(&in_changed)
        .filter(|(_, c)| !**c)
        .filter_map(|(b, _)| *b)
        .collect();
    let mut stats = hashed.stats;
    stats.read_bytes += with_sink(client, s, |sink| {
        send_missing(sink, img, &blocks, &changed, &known)
    })?;
    let delta: Vec<Option<ChunkId>> = changed.iter().map(|&i| blocks[i]).collect();
    client.commit_changes(s, part, &stats, &delta)
}

/// Asks the server about the chunks of blocks `changed` it does not hold already (`known`),
/// then reads those blocks again and uploads them (the archive's pipeline compresses them),
/// checked against the ids they had when the disk was hashed. Returns the bytes read.
fn send_missing(
    sink: &HttpSink,
    img: &FileImage,
    blocks: &[Option<ChunkId>],
    changed: &[usize],
    known: &HashSet<ChunkId>,
) -> Result<u64> {
    // Each chunk once, at its first block.
    let mut seen = HashSet::new();
    let ask: Vec<(usize, ChunkId)> = changed
        .iter()
        .filter_map(|&i| blocks[i].map(|id| (i, id)))
        .filter(|(_, id)| !known.contains(id) && seen.insert(*id))
        .collect();
    let ids: Vec<ChunkId> = ask.iter().map(|(_, id)| *id).collect();
    let mut missing: HashSet<ChunkId> = HashSet::new();
    for batch in ids.chunks(compare::MAX_IDS) {
        missing.extend(sink.missing(batch)?);
    }
    let send: Vec<(usize, ChunkId)> = ask
        .into_iter()
        .filter(|(_, id)| missing.contains(id))
        .collect();
    let bs = u64::from(sink.config().block_size);
    let size = ImageReader::size(img);
    let asked = Asked {
        sink,
        missing: &missing,
    };
    let (read, ids) = ignite_archive::pipeline::run(&asked, |sub| {
        let mut read = 0u64;
        for (i, _) in &send {
            let off = *i as u64 * bs;
            let mut buf = vec![0u8; bs.min(size - off) as usize];
            ImageReader::read_at(img, &mut buf, off).map_err(|e| {
                ignite_archive::Error::Invalid(format!("{}: block {i}: {e}", img.name()))
            })?;
            read += buf.len() as u64;
            sub.submit(buf)?;
        }
        Ok(read)
    })?;
    if let Some(((i, _), _)) = send
        .iter()
        .zip(&ids)
        .find(|((_, want), got)| **got != Some(*want))
    {
        bail!("block {i} changed while the disk was captured; a disk captured at block level must not be in use");
    }
    Ok(read)
}

/// Uploads chunks the server was already asked about: the pipeline's own questions are
/// answered from that answer.
struct Asked<'a> {
    sink: &'a HttpSink<'a>,
    missing: &'a HashSet<ChunkId>,
}

impl ChunkSink for Asked<'_> {
    fn config(&self) -> &StoreConfig {
        self.sink.config()
    }

    fn missing(&self, ids: &[ChunkId]) -> ignite_archive::Result<Vec<ChunkId>> {
        Ok(ids
            .iter()
            .filter(|id| self.missing.contains(id))
            .copied()
            .collect())
    }

    fn put(&self, chunks: &[StoredChunk]) -> ignite_archive::Result<()> {
        self.sink.put(chunks)
    }
}

/// A sink that stores nothing: every chunk counts as held, so an import only hashes.
struct HashOnly<'a>(&'a StoreConfig);

impl ChunkSink for HashOnly<'_> {
    fn config(&self) -> &StoreConfig {
        self.0
    }

    fn missing(&self, _: &[ChunkId]) -> ignite_archive::Result<Vec<ChunkId>> {
        Ok(Vec::new())
    }

    fn put(&self, _: &[StoredChunk]) -> ignite_archive::Result<()> {
        Err(ignite_archive::Error::Invalid(
            "a hashing pass stores nothing".into(),
        ))
    }
}

/// A line on stderr (the agent's console, the live capture's terminal). A terminal that went
/// away (a getty hung up the console, a closed ssh session) must not end the capture.
fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs `f` with a progress counter, printing how far it got every `every` on stderr.
pub fn with_progress<R>(every: Duration, f: impl FnOnce(&Progress) -> R) -> R {
    /// Stops the printer however `f` ends: a panic in `f` would otherwise leave the scope
    /// waiting for the printer forever.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let progress = Progress::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let t0 = Instant::now();
            let mut last = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= every {
                    last = Instant::now();
                    note(&format!(
                        "capture: {} MiB read in {} s",
                        progress.load(Ordering::Relaxed) >> 20,
                        t0.elapsed().as_secs()
                    ));
                }
            }
        });
        let _done = Done(&done);
        f(&progress)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory import whose server went away ends with the server's error: it does
    /// not hang, and it does not claim success.
    #[test]
    fn a_file_import_whose_server_is_gone_ends_with_the_error() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            std::fs::write(
                dir.path().join(format!("f{i}")),
                format!("{i}").repeat(3000),
            )
            .unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.path().to_path_buf();
        std::thread::spawn(move || {
            // Nothing listens on port 1: every request fails until the client gives up.
            let mut client = Client::new(&Endpoint::new("http://127.0.0.1:1", None).unwrap(), "t");
            client.give_up_after(Duration::from_millis(300));
            let session = Session {
                session: "s".into(),
                name: "n".into(),
                kind: CaptureKind::Files,
                rules: Vec::new(),
                config: StoreConfig::default(),
                parents: BTreeMap::new(),
            };
            let r = with_sink(&client, &session, |sink| {
                let opts = ImportOptions::new("n:files");
                Ok(ignite_archive::import_dir_into(
                    sink,
                    &root,
                    &opts,
                    None,
                    &Progress::new(0),
                )?)
            });
            let _ = tx.send(r.map(|_| ()).map_err(|e| format!("{e:#}")));
        });
        let r = rx.recv_timeout(Duration::from_secs(120));
        match r {
            Ok(Err(e)) => assert!(e.contains("has not answered"), "{e}"),
            other => panic!("expected the server's error, got {other:?}"),
        }
    }

    #[test]
    fn a_panic_under_progress_ends_it_instead_of_hanging() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| {
                with_progress(Duration::from_millis(1), |_| -> () {
                    panic!("stderr went away")
                })
            });
            let _ = tx.send(r.is_err());
        });
        let panicked = rx.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            panicked,
            Ok(true),
            "with_progress did not return after a panic"
        );
    }
}
