//! The archive store the server installs from (`store` in its configuration): snapshots,
//! one snapshot, a diff of two, the store's statistics; verification, import and prune
//! (retention) as jobs.

use std::path::{Path, PathBuf};

use axum::body::{Body, BodyDataStream};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ignite_archive::diff::DiffReport;
use ignite_archive::retention::{self, Decision, Policy};
use ignite_archive::stats::StoreStats;
use ignite_archive::{Entry, ImportOptions, Manifest, SnapshotKind, Store};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::jobs::{Handle, JobRef};
use super::{blocking, Ctx, JsonBody};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};

/// A snapshot as `ignite archive show --json` prints it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ArchiveDetail {
    pub manifest: Manifest,
    /// Its entries (tree snapshots, when asked for).
    pub entries: Option<Vec<Entry>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only snapshots of this name.
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// Also list the snapshot's entries (tree snapshots).
    pub entries: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// NAME (its latest), NAME@ID or an id prefix.
    pub from: String,
    pub to: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The snapshot's name (its parent: the latest of that name).
    pub name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// Read only this fraction of the chunks: 0.1 or 10% (default: all).
    pub sample: Option<String>,
}

/// An archive error as its status: what names nothing is 404, what names too much or is
/// not valid input 422.
pub fn archive_error(e: ignite_archive::Error) -> V1Error {
    use ignite_archive::Error as E;
    match e {
        E::NoSuchSnapshot(_) | E::NotAStore(_) => V1Error::not_found(e.to_string()),
        E::AmbiguousSnapshot(_) | E::Invalid(_) => V1Error::invalid(e.to_string()),
        e => anyhow::Error::new(e).into(),
    }
}

pub fn open(dir: &Path) -> V1Result<Store> {
    if !dir.exists() {
        return Err(V1Error::not_found(format!(
            "the server has no archive store yet ({} does not exist); create it with \
             `ignite archive --store {} init`",
            dir.display(),
            dir.display()
        )));
    }
    Store::open(dir).map_err(archive_error)
}

/// The fraction of chunks `ignite archive verify --sample` reads: `0.1` or `10%`.
pub fn parse_sample(s: &str) -> anyhow::Result<f64> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| anyhow::anyhow!("sample {s:?}: use a fraction (0.1) or a percentage (10%)"))?;
    let v = if s.ends_with('%') { v / 100.0 } else { v };
    if !(0.0..=1.0).contains(&v) {
        anyhow::bail!("sample {s:?} must be between 0 and 1 (or 0% and 100%)");
    }
    Ok(v)
}

/// Snapshots in the store
#[utoipa::path(operation_id = "archive_list", get, path = "/api/v1/archives", tag = "archives", params(ListQuery),
    responses((status = 200, description = "manifests as `ignite archive list --json`", body = Vec<Object>),
        (status = 404, description = "the server has no store yet", body = ErrorBody)))]
pub async fn list(State(api): Ctx, Query(q): Query<ListQuery>) -> V1Result<Json<Vec<Manifest>>> {
    blocking(move || {
        let snaps = open(&api.store_dir)?
            .list_snapshots()
            .map_err(archive_error)?;
        Ok(Json(
            snaps
                .into_iter()
                .filter(|m| q.name.as_ref().is_none_or(|n| &m.name == n))
                .collect(),
        ))
    })
    .await
}

/// One snapshot
#[utoipa::path(operation_id = "archive_show", get, path = "/api/v1/archives/{snapshot}", tag = "archives",
    params(("snapshot" = String, Path, description = "NAME (its latest), NAME@ID or an id prefix"), ShowQuery),
    responses((status = 200, description = "`{manifest, entries}` as `ignite archive show --json`", body = Object),
        (status = 404, body = ErrorBody), (status = 422, description = "an ambiguous id prefix", body = ErrorBody)))]
pub async fn show(
    State(api): Ctx,
    UrlPath(spec): UrlPath<String>,
    Query(q): Query<ShowQuery>,
) -> V1Result<Json<ArchiveDetail>> {
    blocking(move || {
        let store = open(&api.store_dir)?;
        let m = store.resolve(&spec).map_err(archive_error)?;
        let entries = match q.entries.unwrap_or(false) && m.kind == SnapshotKind::Tree {
            true => Some(store.load_tree(&m).map_err(archive_error)?),
            false => None,
        };
        Ok(Json(ArchiveDetail {
            manifest: m,
            entries,
        }))
    })
    .await
}

/// What changed between two snapshots
#[utoipa::path(operation_id = "archive_diff", get, path = "/api/v1/archives/diff", tag = "archives", params(DiffQuery),
    responses((status = 200, description = "`{kind: tree, changes}` or `{kind: image, blocks, changed_blocks, changed_bytes}`", body = Object),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn diff(State(api): Ctx, Query(q): Query<DiffQuery>) -> V1Result<Json<DiffReport>> {
    blocking(move || {
        let store = open(&api.store_dir)?;
        let a = store.resolve(&q.from).map_err(archive_error)?;
        let b = store.resolve(&q.to).map_err(archive_error)?;
        let r = ignite_archive::diff::diff(&store, &a, &b).map_err(archive_error)?;
        Ok(Json(r))
    })
    .await
}

/// Sizes, deduplication and compression of the store
#[utoipa::path(operation_id = "archive_stats", get, path = "/api/v1/archives/stats", tag = "archives",
    responses((status = 200, description = "as `ignite archive stats --json`", body = Object), (status = 404, body = ErrorBody)))]
pub async fn stats(State(api): Ctx) -> V1Result<Json<StoreStats>> {
    blocking(move || {
        let store = open(&api.store_dir)?;
        Ok(Json(
            ignite_archive::stats::stats(&store).map_err(archive_error)?,
        ))
    })
    .await
}

/// Verify the store (a job)
///
/// Checks that every referenced chunk is present and intact. The job's result is the
/// report; it fails when the store has problems, each one a line of its log.
#[utoipa::path(operation_id = "archive_verify", post, path = "/api/v1/archives/verify", tag = "archives", params(VerifyQuery),
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 404, body = ErrorBody), (status = 422, description = "a bad sample", body = ErrorBody)))]
pub async fn verify(
    State(api): Ctx,
    Query(q): Query<VerifyQuery>,
) -> V1Result<(StatusCode, Json<JobRef>)> {
    let fraction = match &q.sample {
        Some(s) => parse_sample(s).map_err(|e| V1Error::invalid(format!("{e:#}")))?,
        None => 1.0,
    };
    // A missing store is the request's error, not the job's.
    let dir = api.store_dir.clone();
    let store = blocking(move || open(&dir)).await?;
    let job = api.jobs.spawn("archive verify", move |h| {
        h.progress(0, Some(1));
        h.log(format!(
            "verifying store {} ({}% of the chunks)",
            store.root().display(),
            fraction * 100.0
        ));
        let r = ignite_archive::verify::verify(&store, fraction)?;
        for p in &r.problems {
            h.log(format!("problem: {p}"));
        }
        h.log(format!(
            "{} snapshots, {} packs, {} of {} referenced chunks read ({} bytes)",
            r.snapshots, r.packs, r.chunks_checked, r.chunks_referenced, r.bytes_checked
        ));
        h.progress(1, Some(1));
        if !r.ok() {
            anyhow::bail!(
                "store {} has {} problems",
                store.root().display(),
                r.problems.len()
            );
        }
        Ok(serde_json::to_value(&r)?)
    });
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}

/// Import an uploaded tar (a job)
///
/// The body is a tar stream (plain, gz, zst or xz), at most `[limits] api_upload_bytes`.
/// It is kept in `<state>/uploads` until the job has imported it; the job's progress is
/// the bytes of it read, its result the new snapshot's manifest.
#[utoipa::path(operation_id = "archive_import", post, path = "/api/v1/archives/import", tag = "archives", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "the tar stream"),
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 404, body = ErrorBody), (status = 413, description = "larger than the server takes", body = ErrorBody),
        (status = 422, description = "a bad snapshot name", body = ErrorBody)))]
pub async fn import(
    State(api): Ctx,
    Query(q): Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> V1Result<(StatusCode, Json<JobRef>)> {
    let max = api.upload_max;
    let dir = api.store_dir.clone();
    let checked = async {
        ignite_archive::snapshot::validate_name(&q.name).map_err(archive_error)?;
        let store = blocking(move || open(&dir)).await?;
        let declared = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared.filter(|&n| n > max) {
            Some(n) => Err(too_large(n, max)),
            None => Ok(store),
        }
    };
    let mut data = body.into_data_stream();
    let store = match checked.await {
        Ok(s) => s,
        Err(e) => return Err(drain(&mut data, e).await),
    };
    let upload = receive(&api.state_dir.join("uploads"), data, max).await?;
    let (name, path) = (q.name, upload.clone());
    let job = api.jobs.spawn("archive import", move |h| {
        let r = import_file(h, &store, &path, &name);
        let _ = std::fs::remove_file(&path);
        r
    });
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}

fn too_large(n: u64, max: u64) -> V1Error {
    V1Error::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the upload has {n} bytes or more; this server takes at most {max} ([limits] api_upload_bytes in its configuration)"
        ),
    )
}

/// The rest of a refused upload read and dropped, then `e`: a client still sending when
/// the answer came would see its connection closed, not why (the request timeout bounds
/// the reading).
async fn drain(data: &mut BodyDataStream, e: V1Error) -> V1Error {
    use futures_util::StreamExt;
    while let Some(Ok(_)) = data.next().await {}
    e
}

/// The request body (at most `max` bytes) in a new private file under `dir`; its path.
async fn receive(dir: &Path, mut data: BodyDataStream, max: u64) -> V1Result<PathBuf> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        V1Error::from(anyhow::anyhow!("upload {}: {what}: {e}", dir.display()))
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| fail("cannot create it", &e))?;
    let name = format!("import-{}.tar", ignite_recovery::random::hex(8)?);
    let path = dir.join(name);
    let mut f = tokio::fs::File::create_new(&path)
        .await
        .map_err(|e| fail("cannot create a file in it", &e))?;
    let mut n = 0u64;
    let written: V1Result<()> = async {
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| {
                V1Error::new(StatusCode::BAD_REQUEST, format!("reading the upload: {e}"))
            })?;
            n += chunk.len() as u64;
            if n > max {
                return Err(drain(&mut data, too_large(n, max)).await);
            }
            f.write_all(&chunk)
                .await
                .map_err(|e| fail("cannot write it", &e))?;
        }
        f.flush().await.map_err(|e| fail("cannot write it", &e))
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    Ok(path)
}

/// Imports the tar at `path` as snapshot `name`, its progress the job's.
fn import_file(
    h: &Handle,
    store: &Store,
    path: &Path,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let f = std::fs::File::open(path)?;
    let total = f.metadata()?.len();
    h.log(format!("importing {total} bytes of tar as {name}"));
    let m = h.with_progress(Some(total), |read| {
        ignite_archive::import_tar::import_tar(store, f, &ImportOptions::new(name), read)
    })?;
    h.progress(total, Some(total));
    h.log(format!(
        "snapshot {} {}: {} entries, {} new chunks of {}",
        m.id, m.name, m.stats.entries, m.stats.new_chunks, m.stats.chunks
    ));
    Ok(serde_json::to_value(&m)?)
}

/// A retention policy (restic semantics: snapshots grouped by name and labels), as
/// `ignite archive prune`'s flags or the JSON body of `POST /api/v1/archives/prune`.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrunePolicy {
    #[arg(long)]
    pub keep_last: Option<u32>,
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    #[arg(long)]
    pub keep_daily: Option<u32>,
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Keep everything within this long of the newest snapshot (7d, 2w, 1y6m, 12h).
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Say what would go and why the rest stays; change nothing.
    #[arg(long)]
    #[serde(default)]
    pub dry_run: bool,
}

impl PrunePolicy {
    /// The policy, checked: a bad duration, or no rule at all (which would remove
    /// everything), is refused.
    pub fn policy(&self) -> ignite_archive::Result<Policy> {
        let policy = Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self
                .keep_within
                .as_deref()
                .map(retention::parse_duration)
                .transpose()?,
        };
        if policy.is_empty() {
            return Err(ignite_archive::Error::Invalid(
                "no --keep-* option given; refusing to remove every snapshot".into(),
            ));
        }
        Ok(policy)
    }
}

/// Applies `policy` to every snapshot of `store`: forgets those it does not keep (unless
/// `dry_run`); the decision on each.
pub fn prune(
    store: &Store,
    policy: &Policy,
    dry_run: bool,
) -> ignite_archive::Result<Vec<Decision>> {
    let decisions = retention::apply(policy, &store.list_snapshots()?)?;
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            store.forget(&d.id)?;
        }
    }
    Ok(decisions)
}

/// Forget snapshots by retention policy (a job)
///
/// As `ignite archive prune`: the job's result is the decision on every snapshot
/// (`[{id, name, time, keep, reasons}]`); `ignite archive gc` then frees their space.
#[utoipa::path(operation_id = "archive_prune", post, path = "/api/v1/archives/prune", tag = "archives",
    request_body = PrunePolicy,
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 404, body = ErrorBody),
        (status = 422, description = "no keep rule, or a bad duration", body = ErrorBody)))]
pub async fn prune_route(
    State(api): Ctx,
    JsonBody(p): JsonBody<PrunePolicy>,
) -> V1Result<(StatusCode, Json<JobRef>)> {
    let policy = p.policy().map_err(archive_error)?;
    let dir = api.store_dir.clone();
    let store = blocking(move || open(&dir)).await?;
    let job = api.jobs.spawn("archive prune", move |h| {
        h.progress(0, Some(1));
        let decisions = prune(&store, &policy, p.dry_run)?;
        let verb = if p.dry_run { "would remove" } else { "removed" };
        for d in &decisions {
            h.log(match d.keep {
                true => format!("keep {} {} ({})", d.name, d.id, d.reasons.join(", ")),
                false => format!("{verb} {} {}", d.name, d.id),
            });
        }
        h.progress(1, Some(1));
        Ok(serde_json::to_value(&decisions)?)
    });
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}

/// Free what no snapshot needs (a job)
///
/// As `ignite archive gc`: packs whose chunks no snapshot names are deleted, packs mostly
/// unneeded are repacked; the job's result is the report
/// (`{packs_before, packs_deleted, packs_repacked, packs_rescued, chunks_removed, bytes_freed}`).
#[utoipa::path(operation_id = "archive_gc", post, path = "/api/v1/archives/gc", tag = "archives",
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 404, body = ErrorBody)))]
pub async fn gc_route(State(api): Ctx) -> V1Result<(StatusCode, Json<JobRef>)> {
    let dir = api.store_dir.clone();
    let store = blocking(move || open(&dir)).await?;
    let job = api.jobs.spawn("archive gc", move |h| {
        h.progress(0, Some(1));
        let r = ignite_archive::gc::gc(&store)?;
        h.log(format!(
            "{} of {} packs deleted, {} repacked; {} chunks removed",
            r.packs_deleted, r.packs_before, r.packs_repacked, r.chunks_removed
        ));
        h.progress(1, Some(1));
        Ok(serde_json::to_value(&r)?)
    });
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}
