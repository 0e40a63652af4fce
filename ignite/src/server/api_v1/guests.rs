//! Guests of the bundled monitor (or QEMU): list, show, start, stop; the end of a guest's
//! console log.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, Api, Ctx};
use crate::guests::control::{self, Status};
use crate::guests::{supervisor, Paths};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};
use crate::state::guests::Record;
use crate::state::State as Db;

/// Longest a stop may wait for the guest: the server answers every request within 120 s.
const MAX_STOP_WAIT: u64 = 100;
/// Console bytes answered when none are asked for, and the most ever answered.
const CONSOLE_BYTES: u64 = 16 << 10;
const MAX_CONSOLE_BYTES: u64 = 1 << 20;

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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// The last this many bytes of the log (default 16384, at most 1048576).
    pub bytes: Option<u64>,
}

/// The end of a guest's console log.
#[derive(Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleTail {
    /// The whole log's size in bytes (0: the guest never ran).
    pub size: u64,
    /// Its end from the first whole line on, as the guest wrote it (terminal escapes
    /// included; bytes that are not UTF-8 replaced).
    pub text: String,
}

/// The last `max` bytes of the log at `path`, from the first line that starts in them.
pub fn console_tail(path: &Path, max: u64) -> std::io::Result<ConsoleTail> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleTail {
                size: 0,
                text: String::new(),
            })
        }
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    // From the byte before the window: up to its first newline is a piece of a line
    // (just that newline when the window starts at a line).
    let start = size.saturating_sub(max + 1);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if size > max {
        // A line longer than the window: its end, without the byte before the window.
        let first = buf.iter().position(|&b| b == b'\n').map_or(1, |i| i + 1);
        buf.drain(..first);
    }
    Ok(ConsoleTail {
        size,
        text: String::from_utf8_lossy(&buf).into_owned(),
    })
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

/// The end of a guest's console log
///
/// What the guest printed on its serial console, read-only: the console itself (input) is
/// `ignite vm console` on the server.
#[utoipa::path(operation_id = "guest_console", get, path = "/api/v1/guests/{name}/console", tag = "guests",
    params(("name" = String, Path), ConsoleQuery),
    responses((status = 200, body = ConsoleTail), (status = 404, body = ErrorBody),
        (status = 422, description = "a bad byte count", body = ErrorBody)))]
pub async fn console(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<ConsoleQuery>,
) -> V1Result<Json<ConsoleTail>> {
    let max = q.bytes.unwrap_or(CONSOLE_BYTES);
    if max == 0 || max > MAX_CONSOLE_BYTES {
        return Err(V1Error::invalid(format!(
            "bytes {max}: give between 1 and {MAX_CONSOLE_BYTES}"
        )));
    }
    blocking(move || {
        let v = find(&api, &name)?;
        let tail = console_tail(&v.console_log, max).map_err(|e| {
            anyhow::anyhow!("guest {name}: reading {}: {e}", v.console_log.display())
        })?;
        Ok(Json(tail))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tail_starts_at_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let none = console_tail(&log, 100).unwrap();
        assert_eq!((none.size, none.text.as_str()), (0, ""));
        std::fs::write(&log, b"first line\nsecond\nthird \xff\n").unwrap();
        let all = console_tail(&log, 100).unwrap();
        assert_eq!(all.size, 26);
        assert_eq!(all.text, "first line\nsecond\nthird \u{fffd}\n");
        // 12 bytes: "ond\nthird \xff\n" starts mid-line; the tail starts at "third".
        let end = console_tail(&log, 12).unwrap();
        assert_eq!((end.size, end.text.as_str()), (26, "third \u{fffd}\n"));
        // Exactly at a line start: kept whole.
        let exact = console_tail(&log, 8).unwrap();
        assert_eq!(exact.text, "third \u{fffd}\n");
        // One line longer than the window: its end.
        std::fs::write(&log, b"0123456789").unwrap();
        assert_eq!(console_tail(&log, 4).unwrap().text, "6789");
    }
}
