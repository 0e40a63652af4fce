//! The capture API: captures over the network, from the agent of a client booted to
//! `capture` or from `ignite recovery capture --server` on a running one. The protocol and
//! the client are in `ignite_recovery::capture::remote`; this is the server's side.
//!
//! A request is authorized by a capture token (`Authorization: Bearer TOKEN`): it names the
//! client (the captures' name), how it captures, the kind and rules the admin chose, and an
//! expiry; it is bound to the address that first uses it. `begin` opens a session: a write
//! session on the store ([`Writer::shared`]) kept between requests, and a row in the capture
//! history. Uploaded chunks are checked against their ids before they are stored; each part
//! (`files`, `diskN`) is committed with the name, labels and parent the server chooses; the
//! record is written by `capture::finish_capture` (the one place for record logic) once the
//! client reports what it found. A session lost to a restart answers 410: the client begins
//! again, and what was stored is no longer missing. Sessions idle for [`SESSION_IDLE`] end.
//!
//! `GET /ignite` serves this very binary (static), for `curl -o ignite URL/ignite` on a client.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use ignite_archive::chunk_stream::{self, Limits};
use ignite_archive::{
    chunk_source::BATCH_BYTES, ChunkId, Draft, DraftContent, Manifest, SnapshotKind, Store, Writer,
};
use ignite_recovery::capture::compare;
use ignite_recovery::capture::files::{self, Rules};
use ignite_recovery::capture::record::{
    disk_snapshot_name, files_snapshot_name, CaptureKind, CaptureStats, SourceInfo, LABEL_CAPTURE,
};
use ignite_recovery::capture::remote::{Begin, Finished, Report, Session as Reply};
use ignite_recovery::capture::{finish_capture, Content};

use super::admin::{bearer, constant_time_eq};
use crate::state::captures::{CaptureDone, CaptureToken};
use crate::state::State;

/// A session nobody used for this long ends (its client is gone).
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Ids in one `missing` request.
const MAX_IDS: usize = compare::MAX_IDS;
/// An upload: a batch, plus one chunk of the largest size, plus ids and headers.
const MAX_UPLOAD: usize = (BATCH_BYTES as usize)
    + chunk_stream::MAX_CHUNK_BYTES as usize
    + MAX_IDS * (32 + chunk_stream::HEADER_LEN);
/// Uploads read and stored at once (bounds the memory they hold).
const UPLOADS_AT_ONCE: usize = 8;
/// A draft: a tree of a large system, or the chunk list of a disk of a few TiB.
const MAX_DRAFT: usize = 256 << 20;
/// A client's report (layouts, mount table).
const MAX_REPORT: usize = 16 << 20;
/// Uploads are refused when the store's file system has less free space than this.
const MIN_FREE: u64 = 1 << 30;
/// Parts of a block capture: disk0 .. disk255.
const MAX_DISKS: usize = 256;

use super::api_error::{internal, ApiError, ApiResult};

/// One capture in progress.
struct Session {
    id: String,
    token: String,
    name: String,
    how: String,
    kind: CaptureKind,
    peer: IpAddr,
    capture_id: i64,
    started: Instant,
    parents: BTreeMap<String, Manifest>,
    /// Taken out to commit a part, then replaced by a fresh one for the next part.
    writer: RwLock<Option<Writer<'static>>>,
    parts: Mutex<BTreeMap<String, Manifest>>,
    /// Disk parts compared with their previous capture, waiting for their changes.
    compared: Mutex<BTreeMap<String, Compared>>,
    /// Request and answer bodies, in bytes.
    wire: AtomicU64,
    last_used: Mutex<Instant>,
    finished: Mutex<Option<Finished>>,
}

/// A disk compared with its previous capture ([`compare`]): that capture's blocks, and
/// which groups of them the client's disk changed.
struct Compared {
    size: u64,
    block_size: u32,
    blocks: Vec<Option<ChunkId>>,
    differs: Vec<bool>,
}

impl Session {
    fn touch(&self, bytes: usize) {
        self.wire.fetch_add(bytes as u64, Ordering::Relaxed);
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

pub struct CaptureApi {
    state: Arc<State>,
    store_dir: PathBuf,
    /// Opened (or created) on first use.
    store: Mutex<Option<Arc<Store>>>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    uploads: tokio::sync::Semaphore,
    binary: OnceLock<Bytes>,
    /// Test hook (`IGNITE_TEST_UPLOAD_DELAY_MS`): slows uploads so that tests can stop the
    /// server in the middle of a capture.
    upload_delay: Option<Duration>,
}

impl CaptureApi {
    pub fn new(state: Arc<State>, store_dir: PathBuf) -> CaptureApi {
        CaptureApi {
            state,
            store_dir,
            store: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            uploads: tokio::sync::Semaphore::new(UPLOADS_AT_ONCE),
            binary: OnceLock::new(),
            upload_delay: std::env::var("IGNITE_TEST_UPLOAD_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/api/capture/begin", post(begin_handler))
            .route("/api/capture/{session}/missing", post(missing_handler))
            .route("/api/capture/{session}/chunks", post(chunks_handler))
            .route("/api/capture/{session}/tree/{part}", get(tree_handler))
            .route(
                "/api/capture/{session}/commit/{part}",
                part_post("snapshot draft", CaptureApi::commit, manifest_reply),
            )
            .route(
                "/api/capture/{session}/compare/{part}",
                part_post("group digests", CaptureApi::compare, bitmap_reply),
            )
            .route(
                "/api/capture/{session}/changes/{part}",
                part_post("changed blocks", CaptureApi::changes, manifest_reply),
            )
            .route("/api/capture/{session}/finish", post(finish_handler))
            .route("/api/capture/{session}/fail", post(fail_handler))
            .route("/ignite", get(binary_handler))
            // Bodies are read by the handlers, each with its own limit.
            .layer(DefaultBodyLimit::disable())
            .with_state(self)
    }

    fn store(&self) -> ApiResult<Arc<Store>> {
        let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = &*s {
            return Ok(st.clone());
        }
        let st = Arc::new(Store::open_or_init(&self.store_dir).map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("server archive store {}: {e}", self.store_dir.display()),
            )
        })?);
        *s = Some(st.clone());
        Ok(st)
    }

    /// The token of a request, checked: known, bound to this address (binding it on first
    /// use), and for a new capture unexpired and unspent.
    fn token(&self, headers: &HeaderMap, peer: IpAddr, new: bool) -> ApiResult<CaptureToken> {
        let refused = |m: String| ApiError(StatusCode::FORBIDDEN, m);
        let token = bearer(headers).ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "capture request without a token; send `Authorization: Bearer TOKEN` with a capture token (`ignite recovery token NAME` on the server)".into(),
            )
        })?;
        let Some(t) = self.state.capture_token(token).map_err(internal)? else {
            return Err(refused("capture token refused: the server does not know it; ask for one with `ignite recovery token NAME` on the server".into()));
        };
        if new && t.expires_ms <= crate::state::now_ms() {
            return Err(refused(format!(
                "capture token for {} refused: it expired; make a new one with `ignite recovery token {}`",
                t.name, t.name
            )));
        }
        if new && t.used {
            return Err(refused(format!(
                "capture token for {} refused: its capture finished; boot the client to `capture` again for a new one",
                t.name
            )));
        }
        if t.how == "agent" && t.bound_ip.is_none() {
            return Err(refused(format!(
                "capture token for {} refused: an agent's token works only once the server handed it to the client booting to `capture`",
                t.name
            )));
        }
        if !self
            .state
            .bind_capture_token(&t.token, &peer.to_string())
            .map_err(internal)?
        {
            return Err(refused(format!(
                "capture token for {} refused: it is bound to another address",
                t.name
            )));
        }
        Ok(t)
    }

    /// The session a request names, if its token is the session's.
    fn session(&self, id: &str, headers: &HeaderMap, peer: IpAddr) -> ApiResult<Arc<Session>> {
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let given = bearer(headers).unwrap_or("");
        match s {
            Some(s) if constant_time_eq(given.as_bytes(), s.token.as_bytes()) && s.peer == peer => {
                Ok(s)
            }
            Some(_) => Err(ApiError(
                StatusCode::FORBIDDEN,
                "capture session refused: not this token's or this address's".into(),
            )),
            None => {
                // Only a client with a valid token learns that its session is gone.
                self.token(headers, peer, false)?;
                Err(ApiError(
                    StatusCode::GONE,
                    format!("no capture session {id} (the server restarted, or it was idle for {} min); begin again", SESSION_IDLE.as_secs() / 60),
                ))
            }
        }
    }

    /// Ends sessions whose client went away.
    fn sweep(&self) {
        let idle: Vec<Arc<Session>> = {
            let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, s)| {
                    s.last_used
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .elapsed()
                        > SESSION_IDLE
                })
                .map(|(k, _)| k.clone())
                .collect();
            gone.iter().filter_map(|k| map.remove(k)).collect()
        };
        for s in idle {
            if s.finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
            {
                tracing::warn!(
                    "capture of {}: the client stopped sending; session ended",
                    s.name
                );
                let _ = self.state.capture_failed(
                    s.capture_id,
                    "the client stopped sending (idle session ended)",
                );
            }
        }
    }

    fn begin(&self, t: CaptureToken, peer: IpAddr, req: Begin) -> ApiResult<Reply> {
        self.sweep();
        let unprocessable = |m: String| ApiError(StatusCode::UNPROCESSABLE_ENTITY, m);
        let kind = match (t.kind.as_deref(), req.kind) {
            (Some(k), Some(asked)) if k != asked.to_string() => {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    format!(
                        "capture token for {} is for a {k} capture, not {asked}",
                        t.name
                    ),
                ))
            }
            (Some("files"), _) => CaptureKind::Files,
            (Some(_), _) => CaptureKind::Block,
            (None, Some(k)) => k,
            (None, None) if t.how == "agent" => CaptureKind::Block,
            (None, None) => CaptureKind::Files,
        };
        let token_rules: Vec<&str> = t.rules.split(',').filter(|r| !r.is_empty()).collect();
        let rules = Rules::parse(&token_rules)
            .and_then(|r| Ok(r.merged(&Rules::parse(&req.rules)?)))
            .map_err(|e| unprocessable(format!("capture of {}: {e:#}", t.name)))?;
        // Resuming: the token's attempt is still running (the server restarted under it).
        let resumed = match t.capture_id {
            Some(id) if self.state.capture_running(id).map_err(internal)? => Some(id),
            _ => None,
        };
        let capture_id = match resumed {
            Some(id) => id,
            None => {
                let id = self
                    .state
                    .capture_started(&t.name, &kind.to_string(), &t.how)
                    .map_err(internal)?;
                self.state
                    .set_token_capture(&t.token, id)
                    .map_err(internal)?;
                id
            }
        };
        if let Err(e) = rules.check_essentials() {
            let msg = format!("capture of {}: {e:#}", t.name);
            let _ = self.state.capture_failed(capture_id, &msg);
            return Err(unprocessable(msg));
        }
        let store = self.store()?;
        let writer = Writer::shared(store.clone()).map_err(internal)?;
        let parents = latest_parts(&store, &t.name, kind).map_err(internal)?;
        let id = ignite_recovery::random::hex(16).map_err(internal)?;
        let session = Arc::new(Session {
            id: id.clone(),
            token: t.token.clone(),
            name: t.name.clone(),
            how: t.how.clone(),
            kind,
            peer,
            capture_id,
            started: Instant::now(),
            parents: parents.clone(),
            writer: RwLock::new(Some(writer)),
            parts: Mutex::new(BTreeMap::new()),
            compared: Mutex::new(BTreeMap::new()),
            wire: AtomicU64::new(0),
            last_used: Mutex::new(Instant::now()),
            finished: Mutex::new(None),
        });
        {
            let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            // A client beginning again replaces its earlier session (whose writer seals
            // what it stored when dropped).
            map.retain(|_, s| s.token != t.token);
            map.insert(id.clone(), session);
        }
        tracing::info!(
            "capture of {} ({kind}, {}) {}: {:?}; rules {}",
            t.name,
            t.how,
            if resumed.is_some() {
                "resumed"
            } else {
                "begun"
            },
            req.client,
            if rules.to_args().is_empty() {
                "none".to_string()
            } else {
                rules.to_args().join(",")
            }
        );
        Ok(Reply {
            session: id,
            name: t.name,
            kind,
            rules: rules.to_args(),
            config: store.config().clone(),
            parents,
        })
    }

    fn missing(&self, s: &Session, body: &[u8]) -> ApiResult<Vec<u8>> {
        let ids = chunk_stream::parse_request(body, MAX_IDS)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        let w = s.writer.read().unwrap_or_else(|p| p.into_inner());
        let w = w.as_ref().ok_or_else(|| internal("no write session"))?;
        let missing = w.missing(&ids).map_err(internal)?;
        Ok(chunk_stream::encode_request(&missing))
    }

    fn upload(&self, s: &Session, body: &[u8]) -> ApiResult<()> {
        let store = self.store()?;
        let free = rustix::fs::statvfs(store.root())
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
            .map_err(internal)?;
        if free < MIN_FREE {
            return Err(ApiError(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("the store {} has {} MiB free; make room (`ignite archive prune`, `gc`) and capture again", store.root().display(), free >> 20),
            ));
        }
        let chunks = chunk_stream::decode_upload(body, MAX_IDS, Limits::default())
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        let w = s.writer.read().unwrap_or_else(|p| p.into_inner());
        let w = w.as_ref().ok_or_else(|| internal("no write session"))?;
        w.upload(&chunks).map_err(|e| match e {
            ignite_archive::Error::CorruptChunk { .. } => {
                ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            e => internal(e),
        })
    }

    fn tree(&self, s: &Session, part: &str) -> ApiResult<Vec<u8>> {
        let Some(m) = s.parents.get(part).filter(|m| m.kind == SnapshotKind::Tree) else {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("capture of {}: no previous tree for {part}", s.name),
            ));
        };
        let store = self.store()?;
        let entries = store.load_tree(m).map_err(internal)?;
        ignite_archive::encode_tree(&entries).map_err(internal)
    }

    fn commit(&self, s: &Session, part: &str, body: &[u8]) -> ApiResult<Manifest> {
        let draft = Draft::decode(body)
            .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        self.commit_draft(s, part, draft)
    }

    /// Which groups of disk `part` differ from its previous capture: the client's group
    /// digests against that capture's. The unchanged groups' chunks become this session's
    /// (gc keeps them); a group holding a chunk the store lost since counts as changed.
    fn compare(&self, s: &Session, part: &str, body: &[u8]) -> ApiResult<Vec<u8>> {
        if s.kind != CaptureKind::Block || part_disk(part).is_none() {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "capture of {} ({}): {part:?} is not a disk part (disk0, disk1, ...)",
                    s.name, s.kind
                ),
            ));
        }
        let Some(m) = s
            .parents
            .get(part)
            .filter(|m| m.kind == SnapshotKind::Image)
        else {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("capture of {}: no previous capture of {part} to compare with; commit it in full", s.name),
            ));
        };
        let store = self.store()?;
        let blocks = store.load_image(m).map_err(internal)?;
        let theirs = compare::decode_digests(body, blocks.len()).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("capture of {}: {part}: {e:#}", s.name),
            )
        })?;
        let mut differs: Vec<bool> = compare::group_digests(&blocks)
            .iter()
            .zip(&theirs)
            .map(|(ours, theirs)| ours != theirs)
            .collect();
        let mut seen = std::collections::HashSet::new();
        let kept: Vec<ChunkId> = blocks
            .iter()
            .enumerate()
            .filter(|(i, _)| !differs[i / compare::GROUP_BLOCKS])
            .filter_map(|(_, b)| *b)
            .filter(|id| seen.insert(*id))
            .collect();
        let gone: std::collections::HashSet<ChunkId> = {
            let w = s.writer.read().unwrap_or_else(|p| p.into_inner());
            let w = w.as_ref().ok_or_else(|| internal("no write session"))?;
            w.missing(&kept).map_err(internal)?.into_iter().collect()
        };
        for (i, b) in blocks.iter().enumerate() {
            if b.is_some_and(|id| gone.contains(&id)) {
                differs[i / compare::GROUP_BLOCKS] = true;
            }
        }
        let answer = compare::encode_bitmap(&differs);
        s.compared.lock().unwrap_or_else(|p| p.into_inner()).insert(
            part.to_string(),
            Compared {
                size: m.image_size.unwrap_or(0),
                block_size: m.block_size.unwrap_or(0),
                blocks,
                differs,
            },
        );
        Ok(answer)
    }

    /// Commits disk `part` as its previous capture with the blocks of the groups that
    /// [`Self::compare`] found changed replaced by the client's.
    fn changes(&self, s: &Session, part: &str, body: &[u8]) -> ApiResult<Manifest> {
        let (size, block_size, mut blocks, differs) = {
            let map = s.compared.lock().unwrap_or_else(|p| p.into_inner());
            let Some(c) = map.get(part) else {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("capture of {}: {part} was not compared with its previous capture; compare it first", s.name),
                ));
            };
            (c.size, c.block_size, c.blocks.clone(), c.differs.clone())
        };
        let changed: Vec<usize> = compare::blocks_in(&differs, blocks.len()).collect();
        let (stats, new) = compare::decode_changes(body, changed.len()).map_err(|e| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("capture of {}: the changes of {part}: {e:#}", s.name),
            )
        })?;
        for (i, b) in changed.into_iter().zip(new) {
            blocks[i] = b;
        }
        let draft = Draft {
            name: String::new(),
            labels: BTreeMap::new(),
            parent: None,
            content: DraftContent::Image {
                size,
                block_size,
                blocks,
            },
            stats,
        };
        self.commit_draft(s, part, draft)
    }

    /// Commits a part: the server names it, labels it and chains it to the part's latest.
    fn commit_draft(&self, s: &Session, part: &str, mut draft: Draft) -> ApiResult<Manifest> {
        let bad = |m: String| ApiError(StatusCode::UNPROCESSABLE_ENTITY, m);
        let (name, label, kind) = match (s.kind, part_disk(part)) {
            (CaptureKind::Files, _) if part == "files" => {
                (files_snapshot_name(&s.name), "files", SnapshotKind::Tree)
            }
            (CaptureKind::Block, Some(i)) => {
                (disk_snapshot_name(&s.name, i), "disk", SnapshotKind::Image)
            }
            _ => {
                return Err(bad(format!(
                "capture of {} ({}): {part:?} is not one of its parts (files; disk0, disk1, ...)",
                s.name, s.kind
            )))
            }
        };
        let draft_kind = match &draft.content {
            DraftContent::Tree(_) => SnapshotKind::Tree,
            DraftContent::Image { .. } => SnapshotKind::Image,
        };
        if draft_kind != kind {
            return Err(bad(format!(
                "capture of {}: part {part} must be a {kind:?} snapshot",
                s.name
            )));
        }
        let store = self.store()?;
        draft.name = name.clone();
        draft.labels = BTreeMap::from([(LABEL_CAPTURE.to_string(), label.to_string())]);
        draft.parent = latest(&store, &name, label)
            .map_err(internal)?
            .map(|m| m.id);
        let mut guard = s.writer.write().unwrap_or_else(|p| p.into_inner());
        let writer = guard.take().ok_or_else(|| internal("no write session"))?;
        let result = writer.commit_uploaded(draft);
        // The next part gets a session of its own, whatever became of this one.
        *guard = Some(Writer::shared(store).map_err(internal)?);
        drop(guard);
        let m = result.map_err(|e| bad(format!("capture of {}: part {part}: {e}", s.name)))?;
        tracing::info!(
            "capture of {}: {part} committed as {}@{} ({} new)",
            s.name,
            m.name,
            &m.id[..12.min(m.id.len())],
            m.stats.new_stored_bytes
        );
        s.parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(part.to_string(), m.clone());
        Ok(m)
    }

    fn finish(&self, s: &Session, report: Report) -> ApiResult<Finished> {
        if let Some(f) = &*s.finished.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(f.clone()); // asked again: the answer was lost on the way
        }
        let parts = s.parts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let store = self.store()?;
        let mac = self
            .state
            .find(&s.name)
            .map_err(internal)?
            .map(|c| c.mac)
            .or(report.mac.clone());
        let facts = serde_json::to_value(&report).map_err(internal)?;
        let source = SourceInfo::Client { mac, facts };
        let stats = CaptureStats::default();
        let store2 = store.clone();
        let result = match s.kind {
            CaptureKind::Files => {
                let Some(tree) = parts.get("files") else {
                    return Err(ApiError(
                        StatusCode::CONFLICT,
                        format!(
                            "capture of {}: nothing committed yet (commit part files first)",
                            s.name
                        ),
                    ));
                };
                let layouts: Vec<_> = report
                    .disks
                    .iter()
                    .filter_map(|d| d.layout.clone())
                    .collect();
                let mut system = files::system_info(&store, tree, &layouts);
                system.notes.extend(report.notes.iter().cloned());
                let content = Content::Files {
                    tree,
                    excluded: report.excluded.clone(),
                    system,
                };
                finish_capture(store2, &s.name, source, content, stats, s.started)
            }
            CaptureKind::Block => {
                let mut disks: Vec<(usize, Manifest)> = parts
                    .iter()
                    .filter_map(|(p, m)| part_disk(p).map(|i| (i, m.clone())))
                    .collect();
                disks.sort_by_key(|(i, _)| *i);
                if disks.is_empty() {
                    return Err(ApiError(
                        StatusCode::CONFLICT,
                        format!("capture of {}: no disk committed yet", s.name),
                    ));
                }
                finish_capture(
                    store2,
                    &s.name,
                    source,
                    Content::Disks(&disks),
                    stats,
                    s.started,
                )
            }
        };
        let (m, record) = result.map_err(internal)?;
        let st = &record.stats;
        let wire = s.wire.load(Ordering::Relaxed);
        let mut notes = vec![format!("{wire} bytes on the wire")];
        notes.extend(report.excluded.iter().map(|e| format!("left out {e}")));
        self.state
            .capture_succeeded(
                s.capture_id,
                &CaptureDone {
                    record: m.id.clone(),
                    logical_bytes: st.logical_bytes,
                    read_bytes: st.read_bytes,
                    new_bytes: st.new_stored_bytes,
                    pause_ms: 0,
                    notes: notes.join("; "),
                },
            )
            .map_err(internal)?;
        self.state.capture_token_done(&s.token).map_err(internal)?;
        let f = Finished {
            record: m.id.clone(),
            name: s.name.clone(),
            kind: s.kind,
            logical_bytes: st.logical_bytes,
            read_bytes: st.read_bytes,
            new_bytes: st.new_stored_bytes,
            wire_bytes: wire,
            seconds: s.started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "capture of {} ({}, {}) done as {}@{}: {} bytes, {} new, {} on the wire",
            s.name,
            s.kind,
            s.how,
            s.name,
            &m.id[..12.min(m.id.len())],
            f.logical_bytes,
            f.new_bytes,
            f.wire_bytes
        );
        *s.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.clone());
        // The write session is done; the session stays to answer a repeated finish.
        s.writer.write().unwrap_or_else(|p| p.into_inner()).take();
        Ok(f)
    }

    fn fail(&self, s: &Session, why: &str) -> ApiResult<()> {
        let why: String = why.chars().take(4096).collect();
        tracing::warn!("capture of {} failed on the client: {why:?}", s.name);
        self.state
            .capture_failed(s.capture_id, &format!("client: {why}"))
            .map_err(internal)?;
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.id);
        Ok(())
    }
}

/// `diskN` → N.
fn part_disk(part: &str) -> Option<usize> {
    let n = part.strip_prefix("disk")?;
    if n.is_empty()
        || n.len() > 3
        || !n.bytes().all(|b| b.is_ascii_digit())
        || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok().filter(|n| *n < MAX_DISKS)
}

/// The latest snapshot named `name` with capture label `label`.
fn latest(store: &Store, name: &str, label: &str) -> ignite_archive::Result<Option<Manifest>> {
    Ok(store
        .list_snapshots()?
        .into_iter()
        .rev()
        .find(|m| m.name == name && m.labels.get(LABEL_CAPTURE).map(String::as_str) == Some(label)))
}

/// Each part's latest snapshot (a file capture's tree, or every disk of earlier block
/// captures).
fn latest_parts(
    store: &Store,
    name: &str,
    kind: CaptureKind,
) -> ignite_archive::Result<BTreeMap<String, Manifest>> {
    let mut out = BTreeMap::new();
    match kind {
        CaptureKind::Files => {
            if let Some(m) = latest(store, &files_snapshot_name(name), "files")? {
                out.insert("files".to_string(), m);
            }
        }
        CaptureKind::Block => {
            for m in store.list_snapshots()? {
                let disk = m
                    .name
                    .strip_prefix(name)
                    .and_then(|r| r.strip_prefix(":"))
                    .and_then(part_disk);
                if disk.is_some() && m.labels.get(LABEL_CAPTURE).map(String::as_str) == Some("disk")
                {
                    let part = m.name[name.len() + 1..].to_string();
                    out.insert(part, m); // snapshots are listed oldest first
                }
            }
        }
    }
    Ok(out)
}

/// The request body, refused beyond `limit` bytes.
async fn read_body(body: Body, limit: usize, what: &str) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what}: the body could not be read within {limit} bytes: {e}"),
        )
    })
}

/// Runs `f` on a blocking thread (SQLite and the store are blocking I/O).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

type Api = AxState<Arc<CaptureApi>>;
type Peer = ConnectInfo<SocketAddr>;

async fn begin_handler(
    AxState(api): Api,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Nothing of the body is read for a request without a valid token.
    let api2 = api.clone();
    let t = blocking(move || api2.token(&headers, peer.ip(), true)).await?;
    let body = read_body(body, 1 << 20, "capture begin").await?;
    let req: Begin = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("capture begin: the body is not a Begin (JSON): {e}"),
        )
    })?;
    let reply = blocking(move || api.begin(t, peer.ip(), req)).await?;
    Ok(Json(reply).into_response())
}

/// The session a request names, checked; the request's body comes back to be read. When the
/// session is gone (the client holds a valid token) the body is read and dropped before the
/// 410: a client still sending it would otherwise see its connection cut, not the answer,
/// and retry in vain.
async fn session_of(
    api: &Arc<CaptureApi>,
    id: String,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<(Arc<Session>, Body)> {
    let api = api.clone();
    match blocking(move || api.session(&id, &headers, peer.ip())).await {
        Ok(s) => Ok((s, body)),
        Err(e) => {
            if e.0 == StatusCode::GONE {
                let _ = axum::body::to_bytes(body, limit).await;
            }
            Err(e)
        }
    }
}

async fn missing_handler(
    AxState(api): Api,
    ConnectInfo(peer): Peer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (s, body) = session_of(&api, id, peer, headers, body, MAX_IDS * 32).await?;
    let body = read_body(body, MAX_IDS * 32, "missing chunks request").await?;
    let s2 = s.clone();
    let out = blocking(move || api.missing(&s2, &body).map(|o| (o, body.len()))).await?;
    s.touch(out.1 + out.0.len());
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out.0).into_response())
}

async fn chunks_handler(
    AxState(api): Api,
    ConnectInfo(peer): Peer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let (s, body) = session_of(&api, id, peer, headers, body, MAX_UPLOAD).await?;
    let _permit = api.uploads.acquire().await.map_err(internal)?;
    let body = read_body(body, MAX_UPLOAD, "chunk upload").await?;
    if let Some(d) = api.upload_delay {
        tokio::time::sleep(d).await;
    }
    s.touch(body.len());
    let (api2, s2) = (api.clone(), s.clone());
    blocking(move || api2.upload(&s2, &body)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tree_handler(
    AxState(api): Api,
    ConnectInfo(peer): Peer,
    Path((id, part)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (s, _) = session_of(&api, id, peer, headers, Body::empty(), 0).await?;
    let s2 = s.clone();
    let data = blocking(move || api.tree(&s2, &part)).await?;
    s.touch(data.len());
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// `POST /api/capture/{session}/WHAT/{part}`: the body (at most [`MAX_DRAFT`] bytes, `what`
/// in errors) goes to `f`; `reply` makes the answer and says how many bytes of it count on
/// the wire.
fn part_post<T: Send + 'static>(
    what: &'static str,
    f: fn(&CaptureApi, &Session, &str, &[u8]) -> ApiResult<T>,
    reply: fn(T) -> (Response, usize),
) -> MethodRouter<Arc<CaptureApi>> {
    post(
        move |AxState(api): Api,
              ConnectInfo(peer): Peer,
              Path((id, part)): Path<(String, String)>,
              headers: HeaderMap,
              body: Body| async move {
            let (s, body) = session_of(&api, id, peer, headers, body, MAX_DRAFT).await?;
            let body = read_body(body, MAX_DRAFT, what).await?;
            s.touch(body.len());
            let s2 = s.clone();
            let (answer, len) = reply(blocking(move || f(&api, &s2, &part, &body)).await?);
            s.touch(len);
            ApiResult::Ok(answer)
        },
    )
}

fn manifest_reply(m: Manifest) -> (Response, usize) {
    (Json(m).into_response(), 0)
}

fn bitmap_reply(bitmap: Vec<u8>) -> (Response, usize) {
    let len = bitmap.len();
    let r = ([(header::CONTENT_TYPE, "application/octet-stream")], bitmap).into_response();
    (r, len)
}

async fn finish_handler(
    AxState(api): Api,
    ConnectInfo(peer): Peer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (s, body) = session_of(&api, id, peer, headers, body, MAX_REPORT).await?;
    let body = read_body(body, MAX_REPORT, "capture report").await?;
    s.touch(body.len());
    let report: Report = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("capture report: the body is not a Report (JSON): {e}"),
        )
    })?;
    let f = blocking(move || api.finish(&s, report)).await?;
    Ok(Json(f).into_response())
}

async fn fail_handler(
    AxState(api): Api,
    ConnectInfo(peer): Peer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let (s, body) = session_of(&api, id, peer, headers, body, 64 << 10).await?;
    let body = read_body(body, 64 << 10, "capture failure report").await?;
    let why = String::from_utf8_lossy(&body).into_owned();
    blocking(move || api.fail(&s, &why)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn binary_handler(AxState(api): Api) -> ApiResult<Response> {
    let bytes = match api.binary.get() {
        Some(b) => b.clone(),
        None => {
            let data = tokio::fs::read("/proc/self/exe").await.map_err(internal)?;
            api.binary.get_or_init(|| Bytes::from(data)).clone()
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ignite\"",
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names() {
        assert_eq!(part_disk("disk0"), Some(0));
        assert_eq!(part_disk("disk12"), Some(12));
        for bad in [
            "disk", "disk01", "disk256", "disk-1", "diskx", "files", "disk1000",
        ] {
            assert_eq!(part_disk(bad), None, "{bad}");
        }
    }
}
