//! The archive store the server installs from (`store` in its configuration): snapshots,
//! one snapshot, a diff of two, the store's statistics, and verification as a job.

use std::path::Path;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ignite_archive::diff::DiffReport;
use ignite_archive::stats::StoreStats;
use ignite_archive::{Entry, Manifest, SnapshotKind, Store};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::jobs::JobRef;
use super::{blocking, Ctx};
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
pub struct VerifyQuery {
    /// Read only this fraction of the chunks: 0.1 or 10% (default: all).
    pub sample: Option<String>,
}

/// An archive error as its status: what names nothing is 404, what names too much 422.
fn archive_error(e: ignite_archive::Error) -> V1Error {
    use ignite_archive::Error as E;
    match e {
        E::NoSuchSnapshot(_) | E::NotAStore(_) => V1Error::not_found(e.to_string()),
        E::AmbiguousSnapshot(_) => V1Error::invalid(e.to_string()),
        e => anyhow::Error::new(e).into(),
    }
}

fn open(dir: &Path) -> V1Result<Store> {
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
