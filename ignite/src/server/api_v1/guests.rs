//! Guests of the bundled monitor (or QEMU): list, show, start, stop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::{blocking, Api, Ctx};
use crate::guests::control::{self, Status};
use crate::guests::{supervisor, Paths};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};
use crate::state::guests::Record;
use crate::state::State as Db;

/// Longest a stop may wait for the guest: the server answers every request within 120 s.
const MAX_STOP_WAIT: u64 = 100;

/// A guest as `ignite vm list/show` report it.
#[derive(Debug, Serialize, Deserialize)]
pub struct View {
    #[serde(flatten)]
    pub record: Record,
    /// `running`, `stopped` (it ran before) or `defined`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<Status>,
    pub console_log: PathBuf,
}

pub fn view(state_dir: &Path, record: Record) -> Result<View> {
    let paths = Paths::new(state_dir, &record.def.name);
    let running = control::status(&paths.control())?;
    let state = match (&running, &record.last_engine) {
        (Some(_), _) => "running",
        (None, Some(_)) => "stopped",
        (None, None) => "defined",
    };
    Ok(View {
        record,
        state: state.to_string(),
        running,
        console_log: paths.console_log(),
    })
}

/// Every defined guest with its state.
pub fn views(state_dir: &Path, db: &Db) -> Result<Vec<View>> {
    db.guests()?
        .into_iter()
        .map(|r| view(state_dir, r))
        .collect()
}

/// Guest `name`'s view; 404 when it is not defined.
fn find(api: &Api, name: &str) -> V1Result<View> {
    match api.state.find_guest(name)? {
        Some(r) => Ok(view(&api.state_dir, r)?),
        None => Err(V1Error::not_found(format!(
            "guest {name:?} is not defined; GET /api/v1/guests lists them"
        ))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StopQuery {
    /// End it at once instead of asking it to power off.
    pub force: Option<bool>,
    /// Seconds to wait for it to power off (default 60, at most 100).
    pub timeout: Option<u64>,
}

/// Defined guests with their state
#[utoipa::path(operation_id = "guest_list", get, path = "/api/v1/guests", tag = "guests",
    responses((status = 200, description = "as `ignite vm list --json`", body = Vec<Object>)))]
pub async fn list(State(api): Ctx) -> V1Result<Json<Vec<View>>> {
    blocking(move || Ok(Json(views(&api.state_dir, &api.state)?))).await
}

/// One guest: definition and state
#[utoipa::path(operation_id = "guest_show", get, path = "/api/v1/guests/{name}", tag = "guests",
    params(("name" = String, Path)),
    responses((status = 200, description = "as `ignite vm show --json`", body = Object), (status = 404, body = ErrorBody)))]
pub async fn show(State(api): Ctx, UrlPath(name): UrlPath<String>) -> V1Result<Json<View>> {
    blocking(move || find(&api, &name).map(Json)).await
}

/// Start a guest
#[utoipa::path(operation_id = "guest_start", post, path = "/api/v1/guests/{name}/start", tag = "guests",
    params(("name" = String, Path)),
    responses((status = 200, description = "its run: `{state, pid, engine, started, why}`", body = Object),
        (status = 404, body = ErrorBody), (status = 409, description = "it is running already", body = ErrorBody)))]
pub async fn start(State(api): Ctx, UrlPath(name): UrlPath<String>) -> V1Result<Json<Status>> {
    blocking(move || {
        if let Some(s) = find(&api, &name)?.running {
            return Err(V1Error::conflict(format!(
                "guest {name} is already running (pid {}, engine {}); stop it first",
                s.pid, s.engine
            )));
        }
        let s = supervisor::start(&api.state_dir, &name)?;
        tracing::info!("API: started guest {name} (pid {})", s.pid);
        Ok(Json(s))
    })
    .await
}

/// Stop a guest
///
/// Asks it to power off (ACPI) and waits; `force` ends it at once.
#[utoipa::path(operation_id = "guest_stop", post, path = "/api/v1/guests/{name}/stop", tag = "guests",
    params(("name" = String, Path), StopQuery),
    responses((status = 200, description = "it stopped: its view", body = Object),
        (status = 404, body = ErrorBody), (status = 409, description = "it is not running", body = ErrorBody),
        (status = 422, description = "a bad timeout", body = ErrorBody)))]
pub async fn stop(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<StopQuery>,
) -> V1Result<Json<View>> {
    let wait = q.timeout.unwrap_or(60);
    if wait > MAX_STOP_WAIT {
        return Err(V1Error::invalid(format!(
            "timeout {wait}: wait at most {MAX_STOP_WAIT} s (or stop with force=true)"
        )));
    }
    blocking(move || {
        if find(&api, &name)?.running.is_none() {
            return Err(V1Error::conflict(format!("guest {name} is not running")));
        }
        let force = q.force.unwrap_or(false);
        supervisor::stop(&api.state_dir, &name, force, Duration::from_secs(wait))?;
        tracing::info!("API: stopped guest {name}");
        find(&api, &name).map(Json)
    })
    .await
}
