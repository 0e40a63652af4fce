//! Captures of guests (`make_net_recovery`), restores, clones and prunes of their captures,
//! each a job (jobs.rs): the request is checked at once (404 no such guest or capture, 409 a
//! guest name taken, 422 a bad request), the work runs as a job calling what
//! `ignite recovery capture/restore/clone/prune` call, its progress the bytes written.
//!
//! `{name}` is the captured guest's name; `snapshot` picks one of its captures (an id or id
//! prefix; default: the latest). The capture history and a capture's record are read here
//! too, as `ignite recovery list` and `show` read them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use ignite_archive::{Manifest, Store};
use ignite_recovery::capture::record::{short, Record};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::jobs::{Handle, JobRef};
use super::{blocking, Api, Ctx, JsonBody};
use crate::guests::restore::{restore_guest, CloneAs, InstantOptions};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};
use crate::state::schedules::{parse_at, parse_every, Keep, Options, Schedule, VerifyBoot};

/// One disk of a capture and where it is restored.
pub struct DiskRestore {
    pub index: u32,
    pub manifest: Manifest,
    pub path: PathBuf,
}

/// The disks of capture `spec` paired with `to` (one target per disk, in order), every
/// target checked to fit before any is written; and the capture as `NAME@ID`.
pub fn plan_disk_restore(
    store: &Store,
    spec: &str,
    to: &[PathBuf],
) -> Result<(String, Vec<DiskRestore>)> {
    use ignite_recovery::restore;
    let (m, r) = Record::load(store, spec)?;
    let from = format!("{}@{}", r.name, short(&m.id));
    if to.len() != r.disks.len() {
        bail!(
            "{from} holds {} disk(s); give one --to DISK_OR_IMAGE per disk, in order (or --as-guest NEW)",
            r.disks.len()
        );
    }
    let mut disks = Vec::new();
    for (d, path) in r.disks.iter().zip(to) {
        let dm = store.resolve(&d.snapshot)?;
        let target = restore::Target::of(path)?;
        restore::check_fits(&dm, path, target)?;
        disks.push(DiskRestore {
            index: d.index as u32,
            manifest: dm,
            path: path.clone(),
        });
    }
    Ok((from, disks))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The capture: an id (prefix) of the guest's captures (default: the latest).
    pub snapshot: Option<String>,
    /// Restore as a new guest of this name, with the recorded definition and identity.
    pub as_guest: Option<String>,
    /// Or onto these image files or block devices of the server (absolute paths), one per
    /// disk in order.
    pub to: Option<Vec<String>>,
    /// An instant restore (QEMU engine): the new guest can start at once, its disks served
    /// from the store on demand while they are copied in the background.
    #[serde(default)]
    pub instant: bool,
    /// With `instant`: the background copy's speed limit, bytes per second (default: none).
    pub rate: Option<u64>,
}

/// The options of an instant restore or clone (`instant`, `rate`), checked.
fn instant_options(instant: bool, rate: Option<u64>) -> V1Result<Option<InstantOptions>> {
    match (instant, rate) {
        (false, Some(_)) => Err(V1Error::invalid(
            "rate is for an instant restore: add instant: true",
        )),
        (false, None) => Ok(None),
        (true, rate) => Ok(Some(InstantOptions {
            rate: rate.unwrap_or(0),
        })),
    }
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// The capture: an id (prefix) of the guest's captures (default: the latest).
    pub snapshot: Option<String>,
    /// The new guest's name.
    #[serde(rename = "as")]
    pub new: String,
    /// Its hostname (default: its name).
    pub hostname: Option<String>,
    /// MACs for its NICs in order (default: generated).
    #[serde(default)]
    pub mac: Vec<String>,
    /// An instant restore (QEMU engine): the new guest can start at once, its disks served
    /// from the store on demand while they are copied in the background.
    #[serde(default)]
    pub instant: bool,
    /// With `instant`: the background copy's speed limit, bytes per second (default: none).
    pub rate: Option<u64>,
}

/// A retention policy over one guest's captures (restic's semantics); at least one rule.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    /// Say what would go and why the rest stays; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The capture `snapshot` of `name` names, checked to exist.
fn capture_spec(api: &Api, name: &str, snapshot: Option<&str>) -> V1Result<(String, Store)> {
    let spec = match snapshot {
        Some(id) => format!("{name}@{id}"),
        None => name.to_string(),
    };
    let store = super::archives::open(&api.store_dir)?;
    store
        .resolve(&spec)
        .map_err(super::archives::archive_error)?;
    Ok((spec, store))
}

/// A new guest's name: valid, and not taken.
fn new_guest(api: &Api, new: &str) -> V1Result<()> {
    crate::guests::check_name(new).map_err(|e| V1Error::invalid(format!("{e:#}")))?;
    if api.state.find_guest(new)?.is_some() {
        return Err(V1Error::conflict(format!(
            "guest {new} is already defined; choose another name or remove it first"
        )));
    }
    Ok(())
}

/// Capture a guest's disks now (a job)
///
/// Running or stopped, reading only what changed since its last capture when the change
/// log allows; as `ignite recovery capture NAME`. The job's result is the capture record.
#[utoipa::path(operation_id = "recovery_capture", post, path = "/api/v1/recovery/{name}/capture", tag = "recovery",
    params(("name" = String, Path, description = "the guest")),
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 404, description = "no such guest", body = ErrorBody)))]
pub async fn capture(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
) -> V1Result<(StatusCode, Json<JobRef>)> {
    let a = api.clone();
    let n = name.clone();
    let store = blocking(move || {
        if a.state.find_guest(&n)?.is_none() {
            return Err(V1Error::not_found(format!(
                "guest {n} is not defined; GET /api/v1/guests lists them"
            )));
        }
        Ok(Arc::new(Store::open_or_init(&a.store_dir).map_err(
            |e| anyhow::anyhow!("store {}: {e}", a.store_dir.display()),
        )?))
    })
    .await?;
    let (state_dir, db) = (api.state_dir.clone(), api.state.clone());
    let job = api.jobs.spawn("recovery capture", move |h| {
        h.progress(0, Some(1));
        h.log(format!("capturing guest {name}"));
        let c = crate::guests::capture::capture_guest(&state_dir, &db, store, &name)?;
        for line in c.summary() {
            h.log(line);
        }
        h.progress(1, Some(1));
        Ok(serde_json::json!({"snapshot": c.snapshot.id, "record": c.record}))
    });
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}

/// A guest from a capture, as `ignite recovery restore --as-guest` or `clone` make it.
fn guest_job(
    api: &Arc<Api>,
    kind: &str,
    spec: String,
    new: String,
    clone: Option<CloneAs>,
    instant: Option<InstantOptions>,
    store: Store,
) -> u64 {
    let (state_dir, db) = (api.state_dir.clone(), api.state.clone());
    api.jobs.spawn(kind, move |h| {
        h.log(format!(
            "{spec} as guest {new}{}",
            if instant.is_some() { " (instant)" } else { "" }
        ));
        let r = h.with_progress(None, |p| {
            restore_guest(
                &state_dir,
                &db,
                Arc::new(store),
                &spec,
                &new,
                clone.as_ref(),
                instant.as_ref(),
                p,
            )
        })?;
        h.log(format!(
            "guest {new} from {}: {} bytes written",
            r.from, r.bytes_written
        ));
        if !r.changed.is_empty() {
            h.log(format!("identity changed in: {}", r.changed.join(" ")));
        }
        Ok(serde_json::json!({
            "from": r.from, "definition": r.def, "bytes_written": r.bytes_written,
            "changed": r.changed,
        }))
    })
}

/// Restore a capture (a job)
///
/// As a new guest with the recorded definition, MACs and identity (`as_guest`), or onto
/// image files or block devices of the server (`to`, one per disk; each checked to fit
/// before any is written). As `ignite recovery restore`.
#[utoipa::path(operation_id = "recovery_restore", post, path = "/api/v1/recovery/{name}/restore", tag = "recovery",
    params(("name" = String, Path, description = "the captured guest")), request_body = RestoreRequest,
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 404, description = "no such capture", body = ErrorBody),
        (status = 409, description = "the new guest's name is taken", body = ErrorBody),
        (status = 422, description = "neither or both of as_guest and to, a bad name, targets that do not fit", body = ErrorBody)))]
pub async fn restore(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    JsonBody(b): JsonBody<RestoreRequest>,
) -> V1Result<(StatusCode, Json<JobRef>)> {
    let a = api.clone();
    let job = blocking(move || {
        let (spec, store) = capture_spec(&a, &name, b.snapshot.as_deref())?;
        let instant = instant_options(b.instant, b.rate)?;
        match (b.as_guest, b.to) {
            (Some(new), None) => {
                new_guest(&a, &new)?;
                Ok(guest_job(
                    &a,
                    "recovery restore",
                    spec,
                    new,
                    None,
                    instant,
                    store,
                ))
            }
            (None, Some(_)) if instant.is_some() => Err(V1Error::invalid(
                "an instant restore makes a guest: give as_guest, not to",
            )),
            (None, Some(to)) => {
                let to: Vec<PathBuf> = to.into_iter().map(PathBuf::from).collect();
                if let Some(p) = to.iter().find(|p| p.is_relative()) {
                    return Err(V1Error::invalid(format!(
                        "to {}: give absolute paths (the server's directory is no one's to guess)",
                        p.display()
                    )));
                }
                let (from, disks) = plan_disk_restore(&store, &spec, &to)
                    .map_err(|e| V1Error::invalid(format!("{e:#}")))?;
                Ok(a.jobs.spawn("recovery restore", move |h| {
                    restore_disks(h, &store, &from, &disks)
                }))
            }
            _ => Err(V1Error::invalid(
                "give either as_guest (a new guest) or to (image files or disks, one per disk)",
            )),
        }
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}

/// The job restoring `disks` of capture `from`, one after the other; its progress is the
/// current disk's bytes.
fn restore_disks(
    h: &Handle,
    store: &Store,
    from: &str,
    disks: &[DiskRestore],
) -> Result<serde_json::Value> {
    let mut written = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        h.log(format!(
            "disk {} ({} of {}) to {}",
            d.index,
            i + 1,
            disks.len(),
            d.path.display()
        ));
        let n = h.with_progress(d.manifest.image_size, |p| {
            ignite_recovery::restore::restore_disk(store, &d.manifest, &d.path, p)
        })?;
        h.log(format!(
            "restored {from} disk {} to {}: {n} bytes written",
            d.index,
            d.path.display()
        ));
        written.push(serde_json::json!({"disk": d.index, "to": d.path, "bytes_written": n}));
    }
    Ok(serde_json::json!({"from": from, "disks": written}))
}

/// A new guest from a capture, with a new identity (a job)
///
/// Hostname, machine-id, SSH host keys, MACs written into its image before the first boot;
/// as `ignite recovery clone`.
#[utoipa::path(operation_id = "recovery_clone", post, path = "/api/v1/recovery/{name}/clone", tag = "recovery",
    params(("name" = String, Path, description = "the captured guest")), request_body = CloneRequest,
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 404, description = "no such capture", body = ErrorBody),
        (status = 409, description = "the new guest's name is taken", body = ErrorBody),
        (status = 422, description = "a bad name, hostname or MAC", body = ErrorBody)))]
pub async fn clone(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    JsonBody(b): JsonBody<CloneRequest>,
) -> V1Result<(StatusCode, Json<JobRef>)> {
    let hostname = b.hostname.clone().unwrap_or_else(|| b.new.clone());
    if let Some(why) = ignite_profiles::hostname_problem(&hostname) {
        return Err(V1Error::invalid(format!(
            "hostname {hostname:?} {why}; give a valid one"
        )));
    }
    for m in &b.mac {
        crate::guests::normalize_mac(m).map_err(|e| V1Error::invalid(format!("{e:#}")))?;
    }
    let a = api.clone();
    let job = blocking(move || {
        let (spec, store) = capture_spec(&a, &name, b.snapshot.as_deref())?;
        new_guest(&a, &b.new)?;
        let instant = instant_options(b.instant, b.rate)?;
        let c = CloneAs {
            hostname,
            macs: b.mac,
            bridge: None,
        };
        Ok(guest_job(
            &a,
            "recovery clone",
            spec,
            b.new,
            Some(c),
            instant,
            store,
        ))
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}

/// Apply a retention policy to a guest's captures (a job)
///
/// The records the policy does not keep go, with their disk and file snapshots; as
/// `ignite recovery prune`. `ignite archive gc` (or the server's nightly gc) frees the space.
/// The job's result says what was kept (and why) and what was removed.
#[utoipa::path(operation_id = "recovery_prune", post, path = "/api/v1/recovery/{name}/prune", tag = "recovery",
    params(("name" = String, Path, description = "the captured guest or client")), request_body = PruneRequest,
    responses((status = 202, description = "started; follow GET /api/v1/jobs/{job}", body = JobRef),
        (status = 422, description = "no rule given", body = ErrorBody)))]
pub async fn prune(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    JsonBody(b): JsonBody<PruneRequest>,
) -> V1Result<(StatusCode, Json<JobRef>)> {
    let keep = Keep {
        last: b.keep_last,
        daily: b.keep_daily,
        weekly: b.keep_weekly,
        monthly: b.keep_monthly,
    };
    if keep.is_empty() {
        return Err(V1Error::invalid(
            "no keep_* rule given; refusing to remove every capture",
        ));
    }
    let dir = api.store_dir.clone();
    let store = blocking(move || super::archives::open(&dir)).await?;
    let job = api.jobs.spawn("recovery prune", move |h| {
        h.progress(0, Some(1));
        let r =
            ignite_recovery::capture::retention::prune(&store, &name, &keep.policy(), b.dry_run)?;
        for line in r.lines(&name, b.dry_run) {
            h.log(line);
        }
        h.progress(1, Some(1));
        Ok(serde_json::to_value(&r)?)
    });
    Ok((StatusCode::ACCEPTED, Json(JobRef { job })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only the captures of this guest or client.
    pub name: Option<String>,
}

/// The capture history
///
/// Every capture attempt, oldest first: kind, how, sizes read and stored, duration, result
/// (and its test boot); as `ignite recovery list --json`.
#[utoipa::path(operation_id = "recovery_history", get, path = "/api/v1/recovery", tag = "recovery",
    params(HistoryQuery),
    responses((status = 200, description = "`[{id, name, kind, how, started_ms, finished_ms, result, error, record, logical_bytes, read_bytes, new_bytes, pause_ms, notes, boot_check}]`", body = Vec<Object>)))]
pub async fn history(
    State(api): Ctx,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> V1Result<Json<Vec<crate::state::captures::CaptureRow>>> {
    blocking(move || Ok(Json(api.state.captures(q.name.as_deref())?))).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordQuery {
    /// A capture id (prefix) of the guest's (default: the latest).
    pub snapshot: Option<String>,
}

/// A capture and what it recorded
///
/// The record's snapshot (id, time) and the record: disks and their layouts, file systems,
/// identity, source; as `ignite recovery show --json`.
#[utoipa::path(operation_id = "recovery_record", get, path = "/api/v1/recovery/{name}", tag = "recovery",
    params(("name" = String, Path, description = "the captured guest or client"), RecordQuery),
    responses((status = 200, description = "`{snapshot: manifest, record}`", body = Object),
        (status = 404, description = "no such capture", body = ErrorBody)))]
pub async fn record(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<RecordQuery>,
) -> V1Result<Json<serde_json::Value>> {
    blocking(move || {
        let (spec, store) = capture_spec(&api, &name, q.snapshot.as_deref())?;
        let (m, r) =
            Record::load(&store, &spec).map_err(|e| V1Error::not_found(format!("{e:#}")))?;
        Ok(Json(serde_json::json!({"snapshot": m, "record": r})))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    /// A capture id (prefix) of the guest's (default: the latest).
    pub snapshot: Option<String>,
    /// The archive the profile installs (default for a files capture: its own tree; a block
    /// capture needs one).
    pub archive: Option<String>,
}

/// A capture as an install profile
///
/// The recorded disk layout, file systems, boot loader, firmware and hostname as profile
/// text (TOML), installing `archive`; as `ignite recovery show NAME --profile`.
#[utoipa::path(operation_id = "recovery_profile", get, path = "/api/v1/recovery/{name}/profile", tag = "recovery",
    params(("name" = String, Path, description = "the captured guest or client"), ProfileQuery),
    responses((status = 200, description = "`{profile: TOML text}`", body = Object),
        (status = 404, description = "no such capture", body = ErrorBody),
        (status = 422, description = "a block capture and no archive named, or a layout profiles cannot write", body = ErrorBody)))]
pub async fn profile(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<ProfileQuery>,
) -> V1Result<Json<serde_json::Value>> {
    blocking(move || {
        let (spec, store) = capture_spec(&api, &name, q.snapshot.as_deref())?;
        let (m, r) =
            Record::load(&store, &spec).map_err(|e| V1Error::not_found(format!("{e:#}")))?;
        let text = ignite_recovery::capture::as_profile::profile_for(&m, &r, q.archive.as_deref())
            .map_err(|e| V1Error::invalid(format!("{e:#}")))?;
        Ok(Json(serde_json::json!({ "profile": text })))
    })
    .await
}

/// Capture schedules
#[utoipa::path(operation_id = "recovery_schedules", get, path = "/api/v1/schedules", tag = "recovery",
    responses((status = 200, description = "`[{name, at_minute, every_secs, keep, next_run, last_run, last_result, options}]`", body = Vec<Object>)))]
pub async fn schedules(State(api): Ctx) -> V1Result<Json<Vec<Schedule>>> {
    blocking(move || Ok(Json(api.state.schedules()?))).await
}

/// When and how a guest is captured, as `ignite recovery schedule NAME`'s flags.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// First run of the day, HH:MM UTC (default 02:00).
    pub at: Option<String>,
    /// Repeat period, e.g. 1d, 12h, 1w (default 1d).
    pub every: Option<String>,
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    /// Prove each capture boots: the console marker and the seconds the boot may take.
    #[schema(value_type = Option<Object>)]
    pub verify_boot: Option<VerifyBoot>,
}

/// Capture a guest on a schedule
///
/// Creates or replaces guest NAME's schedule (run by the server), with retention after each
/// successful capture; as `ignite recovery schedule NAME`. Answers the schedule, its next run
/// computed.
#[utoipa::path(operation_id = "recovery_schedule_set", put, path = "/api/v1/schedules/{name}", tag = "recovery",
    params(("name" = String, Path, description = "the guest")), request_body = ScheduleRequest,
    responses((status = 200, description = "the schedule", body = Object),
        (status = 404, description = "no such guest", body = ErrorBody),
        (status = 422, description = "a bad time or period", body = ErrorBody)))]
pub async fn set_schedule(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    JsonBody(b): JsonBody<ScheduleRequest>,
) -> V1Result<Json<Schedule>> {
    let invalid = |e: anyhow::Error| V1Error::invalid(format!("{e:#}"));
    let at = parse_at(b.at.as_deref().unwrap_or("02:00")).map_err(invalid)?;
    let every = parse_every(b.every.as_deref().unwrap_or("1d")).map_err(invalid)?;
    let keep = Keep {
        last: b.keep_last,
        daily: b.keep_daily,
        weekly: b.keep_weekly,
        monthly: b.keep_monthly,
    };
    let options = Options {
        verify_boot: b.verify_boot,
    };
    blocking(move || {
        if api.state.find_guest(&name)?.is_none() {
            return Err(V1Error::not_found(format!(
                "schedules capture defined guests; {name} is not one"
            )));
        }
        let now = crate::clock::now();
        Ok(Json(
            api.state
                .set_schedule(&name, at, every, &keep, &options, now)?,
        ))
    })
    .await
}

/// Stop capturing a guest on a schedule
#[utoipa::path(operation_id = "recovery_schedule_remove", delete, path = "/api/v1/schedules/{name}", tag = "recovery",
    params(("name" = String, Path, description = "the guest")),
    responses((status = 200, description = "`{removed: NAME}`", body = Object),
        (status = 404, description = "it has no schedule", body = ErrorBody)))]
pub async fn remove_schedule(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
) -> V1Result<Json<serde_json::Value>> {
    blocking(move || {
        if api.state.schedule(&name)?.is_none() {
            return Err(V1Error::not_found(format!(
                "{name} has no capture schedule; GET /api/v1/schedules lists them"
            )));
        }
        api.state.remove_schedule(&name)?;
        Ok(Json(serde_json::json!({ "removed": name })))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The older capture: an id (prefix) or NAME@ID (default: the one before the latest).
    pub a: Option<String>,
    /// The newer capture (default: the latest).
    pub b: Option<String>,
}

/// What changed between two captures
///
/// Changed bytes per disk and partition (named by mount point), then per file system the
/// paths added, removed and changed; as `ignite recovery diff --json`.
#[utoipa::path(operation_id = "recovery_diff", get, path = "/api/v1/recovery/{name}/diff", tag = "recovery",
    params(("name" = String, Path, description = "the captured guest or client"), DiffQuery),
    responses((status = 200, description = "`{from: manifest, to: manifest, diff: {regions, files}}`", body = Object),
        (status = 404, description = "fewer than two captures, or no such capture", body = ErrorBody)))]
pub async fn diff(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<DiffQuery>,
) -> V1Result<Json<serde_json::Value>> {
    blocking(move || {
        use ignite_recovery::capture::diff::{diff, pick_two};
        let store = Arc::new(super::archives::open(&api.store_dir)?);
        let ((ma, ra), (mb, rb)) = pick_two(&store, &name, q.a.as_deref(), q.b.as_deref())
            .map_err(|e| V1Error::not_found(format!("{e:#}")))?;
        let d = diff(store, &ra, &rb)?;
        Ok(Json(serde_json::json!({"from": ma, "to": mb, "diff": d})))
    })
    .await
}

/// What changed on a guest since its last capture
///
/// Per disk: the bytes written since its last capture (and where, when the change log
/// knows), or why the next capture reads it in full; without capturing
/// (`check_net_recovery`), as `ignite recovery check --json`.
#[utoipa::path(operation_id = "recovery_check", get, path = "/api/v1/recovery/{name}/check", tag = "recovery",
    params(("name" = String, Path, description = "the guest")),
    responses((status = 200, description = "`[{index, base, ranges, bytes, why}]`", body = Vec<Object>),
        (status = 404, description = "no such guest", body = ErrorBody)))]
pub async fn check(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
) -> V1Result<Json<Vec<crate::guests::control::Pending>>> {
    blocking(move || {
        if api.state.find_guest(&name)?.is_none() {
            return Err(V1Error::not_found(format!(
                "guest {name} is not defined; GET /api/v1/guests lists them"
            )));
        }
        let p = crate::guests::capture::pending_changes(&api.state_dir, &api.state, &name)?;
        Ok(Json(p))
    })
    .await
}
