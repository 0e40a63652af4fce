//! `/api/v1`: the management API, on the server's HTTP listener beside the boot files and
//! the agents' APIs. Every route but the OpenAPI document needs the admin token (`Authorization:
//! Bearer TOKEN`, admin.rs; or the local socket, which needs none); every error is
//! `{"error": {"code", "message"}}` (api_error.rs).
//! Handlers are thin: each calls the state or library function the local CLI calls too.
//!
//! ```text
//! GET    /api/v1/health                       version, uptime, state directory
//! GET    /api/v1/openapi.json                 this API's OpenAPI 3 document (no token needed)
//! GET    /api/v1/clients                      clients with their latest install     clients.rs
//! POST   /api/v1/clients                      register one {mac, name, action}
//! GET    /api/v1/clients/{client}             one (MAC or name): steps, install, phases
//! PUT    /api/v1/clients/{client}/action      {action: "install web"}
//! DELETE /api/v1/clients/{client}
//! GET    /api/v1/clients/default              the action for unregistered clients
//! PUT    /api/v1/clients/default              {action}
//! GET    /api/v1/clients/{client}/log         its latest install's log (?after=LINE_ID)
//! GET    /api/v1/archives                     snapshots (?name=)                    archives.rs
//! GET    /api/v1/archives/stats               sizes, dedup, compression
//! GET    /api/v1/archives/diff?from=&to=      what changed between two snapshots
//! POST   /api/v1/archives/verify              a job (?sample=0.1)
//! POST   /api/v1/archives/import?name=        a job importing the tar sent as the body
//! POST   /api/v1/archives/prune               a job: retention {keep_*, dry_run}
//! GET    /api/v1/archives/{snapshot}          one snapshot's manifest
//! GET    /api/v1/profiles                     profiles, each checked                profiles.rs
//! GET    /api/v1/profiles/{name}              its text and check
//! POST   /api/v1/profiles/check               check the TOML sent (?file=; ?mac=&disk=: plan)
//! GET    /api/v1/profiles/{name}/render       its plan for ?mac=&disk=[&hostname=]
//! GET    /api/v1/bootlog                      boot steps (?mac=, ?limit=)           netboot.rs
//! GET    /api/v1/leases                       DHCP leases
//! GET    /api/v1/schedules                    capture schedules                     recovery.rs
//! PUT    /api/v1/schedules/{name}             set one {at, every, keep_*, verify_boot}
//! DELETE /api/v1/schedules/{name}
//! GET    /api/v1/guests                       guests with their state               guests.rs
//! POST   /api/v1/guests                       define one (`vm create`'s options as JSON)
//! GET    /api/v1/guests/{name}
//! DELETE /api/v1/guests/{name}                a stopped one (?keep_disks=true)
//! POST   /api/v1/guests/{name}/start
//! POST   /api/v1/guests/{name}/stop           ?force=true, ?timeout=SECS
//! GET    /api/v1/guests/{name}/console        the end of its console log (?bytes=)
//! POST   /api/v1/guests/{name}/media          {media, drive, take}                  media.rs
//! DELETE /api/v1/guests/{name}/media/{drive}
//! GET    /api/v1/recovery                     the capture history (?name=)          recovery.rs
//! GET    /api/v1/recovery/{name}              a capture's record (?snapshot=ID)
//! GET    /api/v1/recovery/{name}/diff         what changed between two captures (?a=&b=)
//! GET    /api/v1/recovery/{name}/check        what changed on a guest since its last capture
//! POST   /api/v1/recovery/{name}/capture      a job capturing guest NAME's disks
//! POST   /api/v1/recovery/{name}/restore      a job: {snapshot, as_guest | to, instant}
//! POST   /api/v1/recovery/{name}/clone        a job: {snapshot, as, hostname, mac, instant}
//! POST   /api/v1/recovery/{name}/prune        a job: retention over its captures {keep_*}
//! GET    /api/v1/jobs, /api/v1/jobs/{id}      long work: state, progress, log       jobs.rs
//! GET    /api/v1/events                       changes as Server-Sent Events         events.rs
//! ```

pub mod archives;
pub mod clients;
pub mod events;
pub mod guests;
pub mod jobs;
pub mod media;
pub mod netboot;
pub mod profiles;
pub mod recovery;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::api_error::{ErrorBody, V1Error, V1Result};
use events::{Event, Events};
use jobs::{Job, Jobs};

/// What the handlers share.
pub struct Api {
    pub state: Arc<crate::state::State>,
    pub state_dir: PathBuf,
    pub store_dir: PathBuf,
    pub profiles_dir: PathBuf,
    /// The most bytes an upload may have.
    pub upload_max: u64,
    pub started: Instant,
    pub jobs: Arc<Jobs>,
    pub events: Events,
    /// Turns true when the server stops (ends event streams).
    pub stop: watch::Receiver<bool>,
}

impl Api {
    pub fn new(
        state: Arc<crate::state::State>,
        state_dir: PathBuf,
        store_dir: PathBuf,
        profiles_dir: PathBuf,
        upload_max: u64,
        stop: watch::Receiver<bool>,
    ) -> Arc<Api> {
        let events = Events::new();
        let publish = events.clone();
        Arc::new(Api {
            state,
            state_dir,
            store_dir,
            profiles_dir,
            upload_max,
            started: Instant::now(),
            jobs: Jobs::new(Box::new(move |j: &Job| publish.publish(Event::of_job(j)))),
            events,
            stop,
        })
    }
}

type Ctx = State<Arc<Api>>;

/// The routes that need the admin token (wrap them in `admin::protect`).
pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/clients", get(clients::list).post(clients::add))
        .route(
            "/api/v1/clients/default",
            get(clients::default_action).put(clients::set_default_action),
        )
        .route(
            "/api/v1/clients/{client}",
            get(clients::show).delete(clients::remove),
        )
        .route("/api/v1/clients/{client}/action", put(clients::set_action))
        .route("/api/v1/clients/{client}/log", get(clients::log))
        .route("/api/v1/archives", get(archives::list))
        .route("/api/v1/archives/stats", get(archives::stats))
        .route("/api/v1/archives/diff", get(archives::diff))
        .route("/api/v1/archives/verify", post(archives::verify))
        .route("/api/v1/archives/import", post(archives::import))
        .route("/api/v1/archives/prune", post(archives::prune_route))
        .route("/api/v1/archives/gc", post(archives::gc_route))
        .route("/api/v1/archives/{snapshot}", get(archives::show))
        .route("/api/v1/profiles", get(profiles::list))
        .route("/api/v1/profiles/check", post(profiles::check_posted))
        .route("/api/v1/profiles/{name}", get(profiles::show))
        .route("/api/v1/profiles/{name}/render", get(profiles::render))
        .route("/api/v1/bootlog", get(netboot::boot_log))
        .route("/api/v1/leases", get(netboot::leases))
        .route("/api/v1/schedules", get(recovery::schedules))
        .route(
            "/api/v1/schedules/{name}",
            put(recovery::set_schedule).delete(recovery::remove_schedule),
        )
        .route(
            "/api/v1/guests",
            get(guests::list).post(guests::create_route),
        )
        .route(
            "/api/v1/guests/{name}",
            get(guests::show).delete(guests::remove),
        )
        .route("/api/v1/guests/{name}/media", post(media::insert_route))
        .route(
            "/api/v1/guests/{name}/media/{drive}",
            delete(media::eject_route),
        )
        .route("/api/v1/guests/{name}/start", post(guests::start))
        .route("/api/v1/guests/{name}/stop", post(guests::stop))
        .route("/api/v1/guests/{name}/console", get(guests::console))
        .route("/api/v1/recovery", get(recovery::history))
        .route("/api/v1/recovery/{name}", get(recovery::record))
        .route("/api/v1/recovery/{name}/diff", get(recovery::diff))
        .route("/api/v1/recovery/{name}/profile", get(recovery::profile))
        .route("/api/v1/recovery/{name}/check", get(recovery::check))
        .route("/api/v1/recovery/{name}/capture", post(recovery::capture))
        .route("/api/v1/recovery/{name}/restore", post(recovery::restore))
        .route("/api/v1/recovery/{name}/clone", post(recovery::clone))
        .route("/api/v1/recovery/{name}/prune", post(recovery::prune))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/events", get(events::stream))
        .with_state(api)
}

/// The routes anyone may read: the API's description.
pub fn public_routes() -> Router {
    Router::new().route(
        "/api/v1/openapi.json",
        get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                openapi_json(),
            )
        }),
    )
}

/// `f` on a blocking thread (SQLite, the store, guest control sockets).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> V1Result<T> + Send + 'static,
) -> V1Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| V1Error::from(anyhow::anyhow!("{e}")))?
}

/// A JSON request body; a body that is not the JSON expected is refused in the API's error
/// shape (422 for fields missing, unknown or of the wrong type, 400 for bad syntax).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = V1Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> V1Result<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(V1Error::new(r.status(), r.body_text())),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// The server's version.
    pub version: String,
    pub uptime_secs: u64,
    pub state_dir: String,
}

/// Server health
#[utoipa::path(operation_id = "health", get, path = "/api/v1/health", tag = "server",
    responses((status = 200, body = Health), (status = 401, body = ErrorBody)))]
async fn health(State(api): Ctx) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: api.started.elapsed().as_secs(),
        state_dir: api.state_dir.display().to_string(),
    })
}

/// Jobs kept (the newest 100)
#[utoipa::path(operation_id = "list_jobs", get, path = "/api/v1/jobs", tag = "jobs",
    responses((status = 200, body = Vec<Job>)))]
async fn list_jobs(State(api): Ctx) -> Json<Vec<Job>> {
    Json(api.jobs.list())
}

/// One job: state, progress, log and result
#[utoipa::path(operation_id = "job", get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = u64, Path, description = "the id a POST that started it answered")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn job(State(api): Ctx, Path(id): Path<String>) -> V1Result<Json<Job>> {
    id.parse::<u64>()
        .ok()
        .and_then(|id| api.jobs.get(id))
        .map(Json)
        .ok_or_else(|| {
            V1Error::not_found(format!(
                "no job {id:?}: jobs are kept in memory, the newest 100, until the server restarts"
            ))
        })
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "the token in <state-dir>/admin.token on the server (made at its first start)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Ignite management API", description = "Clients, installs, archives, guests, the boot log and long-running jobs of an `ignite server`. Every error is `{\"error\": {\"code\", \"message\"}}`."),
    modifiers(&BearerToken),
    security(("admin_token" = [])),
    paths(
        health, list_jobs, job, events::stream,
        clients::list, clients::add, clients::show, clients::set_action, clients::remove, clients::log,
        clients::default_action, clients::set_default_action,
        archives::list, archives::stats, archives::diff, archives::verify, archives::import, archives::show, archives::prune_route, archives::gc_route,
        profiles::list, profiles::show, profiles::check_posted, profiles::render,
        netboot::boot_log, netboot::leases, recovery::schedules, recovery::set_schedule, recovery::remove_schedule,
        guests::list, guests::show, guests::start, guests::stop, guests::console,
        recovery::history, recovery::record, recovery::profile, recovery::diff, recovery::check, recovery::capture, recovery::restore, recovery::clone, recovery::prune,
        guests::create_route, guests::remove, media::insert_route, media::eject_route,
    ),
    components(schemas(ErrorBody, Health, Job, jobs::JobRef, events::Event, guests::ConsoleTail, clients::DefaultAction,
        archives::PrunePolicy, recovery::RestoreRequest, recovery::CloneRequest, recovery::PruneRequest, recovery::ScheduleRequest, guests::NewGuest, guests::Removed, media::Insert, media::Inserted, media::Ejected, media::DriveChange,
        profiles::Problem, profiles::Checked, profiles::ProfileFile))
)]
struct Doc;

/// The OpenAPI document, as served and as checked in at docs/openapi.json.
pub fn openapi_json() -> String {
    let mut doc = Doc::openapi();
    // The version is the crate's, not utoipa's default (also the crate's): keep it stable.
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut s = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    /// Clients generated from the document need one name per operation.
    #[test]
    fn every_operation_has_its_own_id() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_json()).unwrap();
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let n = ids.len();
        assert!(n >= 22, "{n} operations");
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "repeated operation ids among {ids:?}");
    }

    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = super::openapi_json();
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        if checked_in != generated {
            let first = checked_in
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(checked_in.lines().count().min(generated.lines().count()));
            panic!(
                "{} differs from the API the code serves (first at line {}: checked in {:?}, generated {:?}); \
                 regenerate it with `cargo run -p ignite -- generate-docs --openapi docs/openapi.json` and commit it",
                path.display(),
                first + 1,
                checked_in.lines().nth(first).unwrap_or("<end>"),
                generated.lines().nth(first).unwrap_or("<end>")
            );
        }
    }
}
