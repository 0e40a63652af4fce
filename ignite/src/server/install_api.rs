//! The install API the agent talks to. Every request names the client's MAC in the path and
//! carries its install's token (`Authorization: Bearer TOKEN`, from `ignite.token=` on the
//! kernel command line), and must come from the address the token was handed to (the
//! client's leased address, see `provider.rs`) before the token expires or the install ends.
//!
//! ```text
//! POST /api/install/{mac}/plan        ClientFacts (JSON) → InstallPlan (JSON)
//! POST /api/install/{mac}/phase       Phase (JSON)
//! POST /api/install/{mac}/log         text appended to the install log (capped)
//! GET  /api/install/{mac}/tree        the pinned snapshot's entries (archive tree encoding)
//! POST /api/install/{mac}/chunks      chunk ids (32 bytes each, at most MAX_BATCH, none
//!                                     twice, their reply at most MAX_REPLY_BYTES) → the
//!                                     chunks as stored (`ignite_archive::chunk_stream`),
//!                                     streamed; at most `chunk_batches` served at once
//! POST /api/install/{mac}/recover     a recovery's plan (boot action `recover`): the capture
//!                                     pinned, its disks (`ignite_recovery::recover`, JSON)
//! GET  /api/install/{mac}/image/{i}   disk i's block list (archive image encoding)
//! GET  /api/stats                     chunk cache counters (admin API)
//! ```
//!
//! A recovery is an install whose job is a capture instead of a profile: the same token
//! rules, phases and log; its chunks are those of the capture's disks.
//!
//! Errors are one line of text: what is wrong and what to do; the agent shows and reports it.
//! An agent that dies before it has an address cannot report: [`watch_silent_agents`] marks
//! its install `failed: agent silent` from the boot log ([install] agent_silent_secs).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Path, State as AxState};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ignite_archive::{chunk_stream, ChunkId, EntryKind, SnapshotKind, Store};
use ignite_netboot::MacAddr;
use ignite_profiles::{ClientFacts, Firmware, LoadError, Loader, Profile, Step};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, Semaphore};

use super::admin::{bearer, constant_time_eq};
use super::chunk_cache::{ChunkCache, StoredChunk};
use super::config::Limits;
use crate::state::installs::{Install, Status};
use crate::state::{Action, State};
use ignite_recovery::recover::{RecoverDisk, RecoverPlan};
use ignite_recovery::Phase;

/// Marks installs whose agent was fetched and never reported (see
/// `State::mark_silent_agents`), checking every few seconds until `stop`. `agent_files`
/// are the boot files that make up the agent (`[boot] initrd`); `silent_secs` 0 turns the
/// watch off.
pub async fn watch_silent_agents(
    state: Arc<State>,
    silent_secs: u64,
    agent_files: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if silent_secs == 0 {
        return;
    }
    let silent = silent_secs.min(i64::MAX as u64) as i64;
    // A tenth of the quiet time, so the mark comes at most ~10% late, and not more often
    // than every 2 s.
    let every = std::time::Duration::from_secs((silent_secs / 10).clamp(2, 60));
    let files = Arc::new(agent_files);
    loop {
        let (st, f) = (state.clone(), files.clone());
        let marked = tokio::task::spawn_blocking(move || {
            st.mark_silent_agents(crate::state::now(), silent, &f)
        })
        .await;
        match marked {
            Ok(Ok(macs)) => {
                for m in macs {
                    tracing::warn!("install of {m} failed: its agent was fetched and has been silent for {silent_secs} s (see `ignite client show {m}`)");
                }
            }
            Ok(Err(e)) => tracing::warn!("watching for silent agents: {e:#}"),
            Err(e) => tracing::warn!("watching for silent agents: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

/// Most chunks one request may ask for.
pub const MAX_BATCH: usize = 1024;
/// Most bytes one chunk request may make the server send.
pub const MAX_REPLY_BYTES: u64 = chunk_stream::MAX_REPLY_BYTES;
// The agent's export asks for at most this many at once.
const _: () = assert!(ignite_archive::BATCH_CHUNKS <= MAX_BATCH);

use super::api_error::{internal, ApiError, ApiResult};

/// A snapshot's tree as served, and the chunks it may ask for.
struct Tree {
    encoded: Bytes,
    chunks: HashSet<ChunkId>,
}

pub struct InstallApi {
    state: Arc<State>,
    profiles_dir: PathBuf,
    store_dir: PathBuf,
    /// Opened on first use: the store may be created after the server starts.
    store: Mutex<Option<Arc<Store>>>,
    trees: Mutex<HashMap<String, Arc<Tree>>>,
    cache: ChunkCache,
    /// Chunks asked for, over all requests.
    chunk_requests: AtomicU64,
    /// Chunk batch replies being produced; more requests wait for a permit.
    batches: Arc<Semaphore>,
    /// Bytes of install log kept per install.
    log_cap: usize,
    /// Test hook (`IGNITE_TEST_CHUNK_DELAY_MS`): slows chunk answers so that tests can stop
    /// the server in the middle of an extraction.
    chunk_delay: Option<std::time::Duration>,
}

/// Snapshot trees kept in memory; installs rarely use more than a few snapshots at once.
const MAX_TREES: usize = 8;

impl InstallApi {
    pub fn new(
        state: Arc<State>,
        profiles_dir: PathBuf,
        store_dir: PathBuf,
        cache_bytes: u64,
        limits: &Limits,
    ) -> InstallApi {
        InstallApi {
            state,
            profiles_dir,
            store_dir,
            store: Mutex::new(None),
            trees: Mutex::new(HashMap::new()),
            cache: ChunkCache::new(cache_bytes),
            chunk_requests: AtomicU64::new(0),
            batches: Arc::new(Semaphore::new(limits.chunk_batches)),
            log_cap: limits.install_log_bytes,
            chunk_delay: std::env::var("IGNITE_TEST_CHUNK_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis),
        }
    }

    fn store(&self) -> ApiResult<Arc<Store>> {
        let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = &*s {
            return Ok(st.clone());
        }
        let st = Arc::new(Store::open(&self.store_dir).map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("server archive store: {e}; start the server with --store DIR"),
            )
        })?);
        *s = Some(st.clone());
        Ok(st)
    }

    /// The install this request belongs to, if its token is the install's, it comes from
    /// the address the token was handed to, and the token has not expired.
    fn authorize(
        &self,
        mac: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> ApiResult<Install> {
        let mac: MacAddr = mac
            .parse()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("install API: {e}")))?;
        let mac = mac.to_string();
        let Some(token) = bearer(headers) else {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                format!("install API request for {mac} without a token; send `Authorization: Bearer TOKEN` with the ignite.token= of the client's kernel command line"),
            ));
        };
        let Some(inst) = self.state.current_install(&mac).map_err(internal)? else {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("no install is scheduled for {mac}; schedule one with `ignite client set {mac} install PROFILE` and boot the client again"),
            ));
        };
        if !constant_time_eq(token.as_bytes(), inst.token.as_bytes()) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("token refused for {mac}: it is not the token of the client's current install (rescheduled since?); boot the client again to get a fresh one"),
            ));
        }
        if !inst.status.accepts_requests() {
            let why = match inst.status {
                Status::Done => "has finished",
                _ => "was replaced (the client's action changed)",
            };
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("token refused for {mac}: its install {why}; schedule a new install with `ignite client set {mac} install PROFILE`"),
            ));
        }
        let refused = |why: String| {
            Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("token refused for {mac}: {why}"),
            ))
        };
        match inst.expires_ms {
            None => {
                return refused("it was never handed to the client; boot the client again".into())
            }
            Some(t) if t <= crate::state::now_ms() => return refused(
                "it has expired ([install] token_ttl_secs); boot the client again for a fresh one"
                    .into(),
            ),
            Some(_) => {}
        }
        let from = peer.map(|p| match p {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(p, IpAddr::V4),
            v4 => v4,
        });
        let bound = inst
            .bound_ip
            .as_deref()
            .and_then(|b| b.parse::<IpAddr>().ok());
        if bound.is_none() || from != bound {
            return refused(format!(
                "it is bound to {}, and this request came from {}; a token works only from the address it was handed to",
                inst.bound_ip.as_deref().unwrap_or("no address"),
                from.map_or("no address".to_string(), |f| f.to_string())
            ));
        }
        Ok(inst)
    }

    fn plan(
        &self,
        inst: &Install,
        mut facts: ClientFacts,
    ) -> ApiResult<ignite_profiles::InstallPlan> {
        let unprocessable = |m: String| ApiError(StatusCode::UNPROCESSABLE_ENTITY, m);
        if let Some(c) = &inst.recover {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "{} is set to recover {c}, not to install: its agent asks for .../recover",
                    inst.mac
                ),
            ));
        }
        // The MAC is the authenticated one; the client's registered name is its {name}.
        facts.mac = inst.mac.clone();
        if facts.hostname.is_none() {
            facts.hostname = self
                .state
                .find(&inst.mac)
                .map_err(internal)?
                .map(|c| c.name);
        }
        let name = &inst.profile;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(unprocessable(format!("profile name {name:?} is not usable; set the client to `install NAME` with NAME a file in {}", self.profiles_dir.display())));
        }
        let path = self.profiles_dir.join(format!("{name}.toml"));
        if !path.is_file() {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("profile {name}: {} does not exist on the server; create it or point the client at another profile", path.display()),
            ));
        }
        let profile = Profile::load(&path).map_err(|e| match e {
            LoadError::Invalid(errs) => unprocessable(format!(
                "profile {name} is broken ({} error{}): {}; run `ignite profile check {}`",
                errs.0.len(),
                if errs.0.len() == 1 { "" } else { "s" },
                errs.0
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                path.display()
            )),
            other => unprocessable(other.to_string()),
        })?;
        let mut plan = profile
            .render(&facts)
            .map_err(|e| unprocessable(e.to_string()))?;
        // Pin the snapshot on the first plan request: a re-import of the same name while
        // installs run must not change what they get.
        let store = self.store()?;
        let spec = match &inst.snapshot {
            Some(id) => format!("{}@{id}", plan.archive.name),
            None => plan.archive.to_string(),
        };
        let m = store.resolve(&spec).map_err(|e| {
            ApiError(
                StatusCode::CONFLICT,
                format!("profile {name}: archive {spec}: {e}"),
            )
        })?;
        if m.kind != SnapshotKind::Tree {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("profile {name}: archive {spec} is a block image, not a file tree; point the profile at a tree snapshot"),
            ));
        }
        check_esp_room(&store, &m, &plan, name, &spec)?;
        plan.archive.id = Some(m.id.clone());
        for s in &mut plan.steps {
            if let Step::Extract { archive } = s {
                *archive = plan.archive.clone();
            }
        }
        self.state
            .pin_install(&inst.token, &m.id, &plan.hostname)
            .map_err(internal)?;
        Ok(plan)
    }

    fn tree(&self, inst: &Install) -> ApiResult<Arc<Tree>> {
        let Some(id) = &inst.snapshot else {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "install of {}: no plan yet; ask for the plan first (POST .../plan)",
                    inst.mac
                ),
            ));
        };
        if let Some(t) = self.trees.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(t.clone());
        }
        let store = self.store()?;
        let gone = |e: ignite_archive::Error| {
            ApiError(
                StatusCode::GONE,
                format!(
                    "snapshot {id} pinned by the install of {}: {e}; schedule the install again",
                    inst.mac
                ),
            )
        };
        let m = store.resolve(id).map_err(gone)?;
        let entries = store.load_tree(&m).map_err(gone)?;
        let tree = Arc::new(Tree {
            chunks: ignite_archive::snapshot::tree_chunks(&entries).collect(),
            encoded: Bytes::from(
                ignite_archive::snapshot::encode_tree(&entries).map_err(internal)?,
            ),
        });
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if trees.len() >= MAX_TREES {
            trees.clear();
        }
        trees.insert(id.clone(), tree.clone());
        Ok(tree)
    }

    /// The chunks `body` names (32-byte ids back to back), as a chunk stream produced on a
    /// blocking thread while it is sent: memory per request stays a few chunks.
    async fn chunks(self: &Arc<Self>, inst: &Install, body: &[u8]) -> ApiResult<Response> {
        let ids = chunk_stream::parse_request(body, MAX_BATCH)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        self.chunk_requests
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        let cached = inst.snapshot.as_ref().and_then(|id| {
            let trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
            trees.get(id).cloned()
        });
        let tree = match cached {
            Some(t) => t,
            None if inst.recover.is_some() => {
                blocking(self, inst, |api, inst| {
                    api.recovery(inst).map(|(_, _, t)| t)
                })
                .await?
            }
            None => blocking(self, inst, |api, inst| api.tree(inst)).await?,
        };
        if let Some(id) = ids.iter().find(|id| !tree.chunks.contains(id)) {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "chunk {} is not part of the snapshot this install extracts",
                    id.to_hex()
                ),
            ));
        }
        let store = self.store()?;
        let (st, asked) = (store.clone(), ids.clone());
        let len = tokio::task::spawn_blocking(move || st.reply_len(&asked))
            .await
            .map_err(internal)?
            .map_err(chunk_error)?;
        if len > MAX_REPLY_BYTES {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "these {} chunks are {len} bytes, more than one request may get ({MAX_REPLY_BYTES}); ask for fewer at once",
                    ids.len()
                ),
            ));
        }
        let permit = self
            .batches
            .clone()
            .acquire_owned()
            .await
            .map_err(internal)?;
        let (tx, rx) = mpsc::channel(4);
        let (api, rt) = (self.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut out = chunk_stream::Encoder::new(PieceWriter::new(&tx));
            for cid in ids {
                if let Some(d) = api.chunk_delay {
                    std::thread::sleep(d);
                }
                let store = store.clone();
                let read = move || {
                    store
                        .read_chunk_stored(&cid)
                        .map(|(entry, data)| StoredChunk {
                            entry,
                            data: Bytes::from(data),
                        })
                };
                let sent = match rt.block_on(api.cache.get(cid, read)) {
                    Ok(c) => out.push(&c.entry, &c.data),
                    Err(e) => {
                        tracing::error!("chunk {}: {e}", cid.to_hex());
                        // Cuts the reply short: the agent retries the batch.
                        Err(io::Error::other(e.to_string()))
                    }
                };
                if let Err(e) = sent {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            if let Err(e) = out.finish() {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let body = Body::new(ChannelBody { rx, remaining: len });
        Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
    }

    /// A recovery's capture (pinned on first use, so that a new capture while the client
    /// recovers changes nothing), its record, and the chunks its disks may ask for.
    fn recovery(
        &self,
        inst: &Install,
    ) -> ApiResult<(
        ignite_archive::Manifest,
        ignite_recovery::capture::record::Record,
        Arc<Tree>,
    )> {
        use ignite_recovery::capture::record::{CaptureKind, Record};
        let Some(spec) = &inst.recover else {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("{} is set to install, not to recover", inst.mac),
            ));
        };
        let store = self.store()?;
        let pinned = match &inst.snapshot {
            Some(id) => format!("{}@{id}", spec.split('@').next().unwrap_or(spec)),
            None => spec.clone(),
        };
        let (m, rec) = Record::load(&store, &pinned).map_err(|e| {
            ApiError(
                StatusCode::CONFLICT,
                format!("recover {spec}: {e:#}; `ignite recovery list` shows the captures"),
            )
        })?;
        if rec.kind != CaptureKind::Block {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("recover {spec}: a {} capture; the agent writes back block captures (restore file captures with `ignite recovery restore`)", rec.kind),
            ));
        }
        if inst.snapshot.is_none() {
            self.state
                .pin_install(
                    &inst.token,
                    &m.id,
                    &rec.system.hostname.clone().unwrap_or_default(),
                )
                .map_err(internal)?;
        }
        if let Some(t) = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&m.id)
        {
            return Ok((m, rec, t.clone()));
        }
        let mut chunks = HashSet::new();
        for d in &rec.disks {
            let dm = store.resolve(&d.snapshot).map_err(chunk_error)?;
            chunks.extend(
                store
                    .load_image(&dm)
                    .map_err(chunk_error)?
                    .into_iter()
                    .flatten(),
            );
        }
        let t = Arc::new(Tree {
            encoded: Bytes::new(),
            chunks,
        });
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if trees.len() >= MAX_TREES {
            trees.clear();
        }
        trees.insert(m.id.clone(), t.clone());
        Ok((m, rec, t))
    }

    fn recover_plan(&self, inst: &Install) -> ApiResult<RecoverPlan> {
        let (m, rec, _) = self.recovery(inst)?;
        let store = self.store()?;
        let mut disks = Vec::new();
        for d in &rec.disks {
            let dm = store.resolve(&d.snapshot).map_err(chunk_error)?;
            disks.push(RecoverDisk {
                index: d.index,
                snapshot: dm.id.clone(),
                size: dm.image_size.unwrap_or(0),
                block_size: u64::from(dm.block_size.unwrap_or(0)),
            });
        }
        Ok(RecoverPlan {
            capture: format!("{}@{}", rec.name, m.id),
            disks,
        })
    }

    fn image(&self, inst: &Install, index: usize) -> ApiResult<Bytes> {
        let (_, rec, _) = self.recovery(inst)?;
        let Some(d) = rec.disks.iter().find(|d| d.index == index) else {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("the capture has no disk {index}"),
            ));
        };
        let store = self.store()?;
        let dm = store.resolve(&d.snapshot).map_err(chunk_error)?;
        let blocks = store.load_image(&dm).map_err(chunk_error)?;
        Ok(Bytes::from(
            ignite_archive::snapshot::encode_image(&blocks).map_err(internal)?,
        ))
    }

    fn phase(&self, inst: &Install, phase: &Phase) -> ApiResult<()> {
        self.state
            .record_phase(&inst.token, phase)
            .map_err(internal)?;
        let who = self.client_label(inst);
        match phase {
            Phase::Done => {
                let mac: MacAddr = inst.mac.parse().map_err(internal)?;
                match self.state.find(&inst.mac).map_err(internal)? {
                    Some(_) => {
                        self.state.install_finished(mac).map_err(internal)?;
                    }
                    // A client installed under the default action: register it so that it
                    // boots its disk from now on instead of installing again.
                    None => {
                        let name = self.free_name(inst).map_err(internal)?;
                        self.state
                            .add(mac, &name, &Action::Local)
                            .map_err(internal)?;
                    }
                }
                let job = if inst.recover.is_some() {
                    "recovery"
                } else {
                    "install"
                };
                tracing::info!("{job} of {who} done; next boot: local disk");
            }
            Phase::Failed { error, .. } => tracing::warn!("install of {who} failed: {error}"),
            Phase::Extracting { .. } => tracing::debug!("install of {who}: {phase:?}"),
            p => tracing::info!(
                "install of {who}: {}",
                crate::state::installs::phase_name(p)
            ),
        }
        Ok(())
    }

    fn client_label(&self, inst: &Install) -> String {
        match self.state.find(&inst.mac) {
            Ok(Some(c)) => format!("{} ({})", c.name, c.mac),
            _ => inst.mac.clone(),
        }
    }

    /// A registry name for a client registered after its install: its hostname if free.
    fn free_name(&self, inst: &Install) -> anyhow::Result<String> {
        if let Some(h) = &inst.hostname {
            if self.state.find(h)?.is_none() {
                return Ok(h.clone());
            }
        }
        Ok(format!("client-{}", inst.mac.replace(':', "")))
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/api/install/{mac}/plan", post(plan_handler))
            .route("/api/install/{mac}/phase", post(phase_handler))
            .route("/api/install/{mac}/log", post(log_handler))
            .route("/api/install/{mac}/tree", get(tree_handler))
            .route("/api/install/{mac}/recover", post(recover_handler))
            .route("/api/install/{mac}/image/{index}", get(image_handler))
            .route("/api/install/{mac}/chunks", post(chunks_handler))
            .with_state(self)
    }

    /// The routes for the admin (behind its token, see `admin.rs`).
    pub fn admin_router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/api/stats", get(stats_handler))
            .with_state(self)
    }
}

/// For extlinux on UEFI, which boots copies of the kernel and initrd from the ESP: why the
/// plan's ESP cannot hold them, judged from the archive's /boot before the disk is touched.
fn check_esp_room(
    store: &Store,
    m: &ignite_archive::Manifest,
    plan: &ignite_profiles::InstallPlan,
    name: &str,
    spec: &str,
) -> ApiResult<()> {
    let extlinux_uefi = plan.steps.iter().any(|s| {
        matches!(
            s,
            Step::BootLoader {
                loader: Loader::Extlinux,
                firmware: Firmware::Uefi | Firmware::Both,
                ..
            }
        )
    });
    if !extlinux_uefi {
        return Ok(());
    }
    let entries = store.load_tree(m).map_err(|e| {
        ApiError(
            StatusCode::CONFLICT,
            format!("profile {name}: archive {spec}: {e}"),
        )
    })?;
    let boot: Vec<(String, u64)> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { size, .. } => e
                .path
                .strip_prefix(b"boot/".as_slice())
                .filter(|n| !n.contains(&b'/'))
                .map(|n| (String::from_utf8_lossy(n).into_owned(), *size)),
            _ => None,
        })
        .collect();
    match ignite_recovery::steps::bootloader::esp_too_small(&plan.disk, &boot) {
        Some(why) => Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("profile {name} with archive {spec}: {why}"),
        )),
        None => Ok(()),
    }
}

fn chunk_error(e: ignite_archive::Error) -> ApiError {
    match e {
        ignite_archive::Error::MissingChunk { .. } => {
            ApiError(StatusCode::NOT_FOUND, e.to_string())
        }
        e => internal(e),
    }
}

/// Writes a reply into the channel its HTTP body reads from.
/// How much of a chunk batch's reply is handed to the connection at a time.
const REPLY_PIECE: usize = 256 << 10;

/// Hands a reply to its connection a piece at a time, each piece moved, not copied. A send
/// per chunk (two, with its header) woke the connection's task each time, and with many
/// agents at once those wakeups were most of the server's CPU (scripts/bench-fleet).
struct PieceWriter<'a> {
    tx: &'a mpsc::Sender<io::Result<Bytes>>,
    piece: Vec<u8>,
}

impl<'a> PieceWriter<'a> {
    fn new(tx: &'a mpsc::Sender<io::Result<Bytes>>) -> Self {
        PieceWriter {
            tx,
            piece: Vec::with_capacity(REPLY_PIECE),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(REPLY_PIECE));
        self.tx
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for PieceWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.piece.extend_from_slice(buf);
        if self.piece.len() >= REPLY_PIECE {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// A reply body of known length fed by a [`PieceWriter`]; ends in an error if the
/// writer stops short.
struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.remaining = self.remaining.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.remaining > 0 => Poll::Ready(Some(Err(io::Error::other(
                format!("chunk reply ended {} bytes short", self.remaining),
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn parse_json<T: DeserializeOwned>(what: &str, body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{what}: the request body is not valid JSON for it: {e}"),
        )
    })
}

/// Runs `f` on a blocking thread (SQLite, profile files and the store are blocking I/O).
async fn blocking<T: Send + 'static>(
    api: &Arc<InstallApi>,
    inst: &Install,
    f: impl FnOnce(&InstallApi, &Install) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let (api, inst) = (api.clone(), inst.clone());
    tokio::task::spawn_blocking(move || f(&api, &inst))
        .await
        .map_err(internal)?
}

type Api = AxState<Arc<InstallApi>>;

/// The install a request belongs to, checked against its token (see `authorize`).
struct Authed(Install);

impl FromRequestParts<Arc<InstallApi>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<InstallApi>,
    ) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        let mac = params.get("mac").cloned().unwrap_or_default();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let (a, headers) = (api.clone(), parts.headers.clone());
        tokio::task::spawn_blocking(move || a.authorize(&mac, &headers, peer))
            .await
            .map_err(internal)?
            .map(Authed)
    }
}

async fn plan_handler(AxState(api): Api, Authed(inst): Authed, body: Bytes) -> ApiResult<Response> {
    let facts: ClientFacts = parse_json("install plan request (ClientFacts)", &body)?;
    let plan = blocking(&api, &inst, move |api, inst| api.plan(inst, facts)).await?;
    Ok(Json(plan).into_response())
}

async fn phase_handler(
    AxState(api): Api,
    Authed(inst): Authed,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let phase: Phase = parse_json("phase report", &body)?;
    blocking(&api, &inst, move |api, inst| api.phase(inst, &phase)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn log_handler(
    AxState(api): Api,
    Authed(inst): Authed,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let text = String::from_utf8_lossy(&body).into_owned();
    blocking(&api, &inst, move |api, inst| {
        api.state
            .append_log(&inst.token, &text, api.log_cap)
            .map_err(internal)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tree_handler(AxState(api): Api, Authed(inst): Authed) -> ApiResult<Response> {
    let tree = blocking(&api, &inst, |api, inst| api.tree(inst)).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        tree.encoded.clone(),
    )
        .into_response())
}

async fn recover_handler(AxState(api): Api, Authed(inst): Authed) -> ApiResult<Response> {
    let plan = blocking(&api, &inst, |api, inst| api.recover_plan(inst)).await?;
    Ok(Json(plan).into_response())
}

async fn image_handler(
    AxState(api): Api,
    Authed(inst): Authed,
    Path((_, index)): Path<(String, usize)>,
) -> ApiResult<Response> {
    let image = blocking(&api, &inst, move |api, inst| api.image(inst, index)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], image).into_response())
}

async fn chunks_handler(
    AxState(api): Api,
    Authed(inst): Authed,
    body: Bytes,
) -> ApiResult<Response> {
    api.chunks(&inst, &body).await
}

async fn stats_handler(AxState(api): Api) -> Response {
    Json(serde_json::json!({
        "chunk_requests": api.chunk_requests.load(Ordering::Relaxed),
        "chunk_cache": api.cache.stats(),
    }))
    .into_response()
}
