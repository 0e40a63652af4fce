//! The client registry: list, register, show, set the boot action, remove; an install's log.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ignite_netboot::MacAddr;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, Ctx, JsonBody};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};
use crate::state::views::{ClientDetail, ClientView, InstallLog, LogOf};
use crate::state::{Action, Client};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewClient {
    /// Any usual spelling: 52:54:00:aa:00:01, 52-54-00-AA-00-01.
    pub mac: String,
    pub name: String,
    /// `install <profile>`, `local` (the default), `recover <snapshot>` or `capture`.
    pub action: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SetAction {
    /// `install <profile>`, `local`, `recover <snapshot>` or `capture`.
    pub action: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines after this line id (the last `id` read), to follow a log.
    pub after: Option<i64>,
}

/// A boot action from its words; 422 naming the valid ones.
fn action(words: &str) -> V1Result<Action> {
    words
        .parse::<Action>()
        .map_err(|e| V1Error::invalid(format!("{e:#}")))
}

fn unknown(key: &str) -> V1Error {
    V1Error::not_found(format!(
        "client {key:?} is not registered; GET /api/v1/clients lists them"
    ))
}

/// Clients with their latest install
///
/// Registered clients by name, then clients not in the registry that are installing.
#[utoipa::path(operation_id = "client_list", get, path = "/api/v1/clients", tag = "clients",
    responses((status = 200, description = "`[{mac, name, action, arg, last_seen, last_step, install}]` as `ignite client list --json`", body = Vec<Object>)))]
pub async fn list(State(api): Ctx) -> V1Result<Json<Vec<ClientView>>> {
    blocking(move || Ok(api.state.client_views()?))
        .await
        .map(Json)
}

/// Register a client
#[utoipa::path(operation_id = "client_add", post, path = "/api/v1/clients", tag = "clients", request_body = NewClient,
    responses((status = 201, description = "the client as registered", body = Object),
        (status = 409, description = "the MAC or name is taken", body = ErrorBody),
        (status = 422, description = "a bad MAC, name or action", body = ErrorBody)))]
pub async fn add(
    State(api): Ctx,
    JsonBody(n): JsonBody<NewClient>,
) -> V1Result<(StatusCode, Json<Client>)> {
    let mac: MacAddr = n
        .mac
        .parse()
        .map_err(|e| V1Error::invalid(format!("{e}")))?;
    let act = match &n.action {
        Some(a) => action(a)?,
        None => Action::Local,
    };
    crate::state::clients::check_name(&n.name).map_err(|e| V1Error::invalid(format!("{e:#}")))?;
    blocking(move || {
        for key in [mac.to_string(), n.name.clone()] {
            if let Some(c) = api.state.find(&key)? {
                return Err(V1Error::conflict(format!(
                    "{key:?} is already registered as client {} ({}); PUT its action to change it",
                    c.name, c.mac
                )));
            }
        }
        api.state.add(mac, &n.name, &act)?;
        tracing::info!("API: added client {} ({mac}): {act}", n.name);
        Ok((StatusCode::CREATED, Json(api.state.get(&mac.to_string())?)))
    })
    .await
}

/// One client: recent boot steps, latest install and its phases
#[utoipa::path(operation_id = "client_show", get, path = "/api/v1/clients/{client}", tag = "clients",
    params(("client" = String, Path, description = "MAC or name")),
    responses((status = 200, description = "`{client, steps, install, phases}` as `ignite client show --json`", body = Object),
        (status = 404, body = ErrorBody)))]
pub async fn show(State(api): Ctx, Path(key): Path<String>) -> V1Result<Json<ClientDetail>> {
    blocking(move || api.state.client_detail(&key)?.ok_or_else(|| unknown(&key)))
        .await
        .map(Json)
}

/// Set a client's boot action
#[utoipa::path(operation_id = "client_set_action", put, path = "/api/v1/clients/{client}/action", tag = "clients",
    params(("client" = String, Path, description = "MAC or name")), request_body = SetAction,
    responses((status = 200, description = "the client with its new action", body = Object),
        (status = 404, body = ErrorBody), (status = 422, description = "not a boot action", body = ErrorBody)))]
pub async fn set_action(
    State(api): Ctx,
    Path(key): Path<String>,
    JsonBody(b): JsonBody<SetAction>,
) -> V1Result<Json<Client>> {
    let act = action(&b.action)?;
    blocking(move || {
        if api.state.find(&key)?.is_none() {
            return Err(unknown(&key));
        }
        let c = api.state.set_action(&key, &act)?;
        tracing::info!("API: client {} ({}): {}", c.name, c.mac, c.action);
        Ok(Json(c))
    })
    .await
}

/// Remove a client from the registry
#[utoipa::path(operation_id = "client_remove", delete, path = "/api/v1/clients/{client}", tag = "clients",
    params(("client" = String, Path, description = "MAC or name")),
    responses((status = 200, description = "the client removed", body = Object), (status = 404, body = ErrorBody)))]
pub async fn remove(State(api): Ctx, Path(key): Path<String>) -> V1Result<Json<Client>> {
    blocking(move || {
        if api.state.find(&key)?.is_none() {
            return Err(unknown(&key));
        }
        let c = api.state.remove(&key)?;
        tracing::info!("API: removed client {} ({})", c.name, c.mac);
        Ok(Json(c))
    })
    .await
}

/// A client's latest install and its log
#[utoipa::path(operation_id = "client_install_log", get, path = "/api/v1/clients/{client}/log", tag = "installs",
    params(("client" = String, Path, description = "MAC or name (a MAC also for a client not in the registry)"), LogQuery),
    responses((status = 200, description = "`{install, lines: [{id, time_ms, text}]}`, lines oldest first", body = Object),
        (status = 404, description = "no such client, or it never had an install", body = ErrorBody)))]
pub async fn log(
    State(api): Ctx,
    Path(key): Path<String>,
    Query(q): Query<LogQuery>,
) -> V1Result<Json<InstallLog>> {
    blocking(
        move || match api.state.install_log(&key, q.after.unwrap_or(0))? {
            LogOf::Log(l) => Ok(Json(*l)),
            LogOf::NoClient => Err(unknown(&key)),
            LogOf::NoInstall => Err(V1Error::not_found(format!(
                "client {key}: no install was ever scheduled"
            ))),
        },
    )
    .await
}

/// The boot action of clients not in the registry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DefaultAction {
    /// `install <profile>`, `local`, `recover <snapshot>` or `capture`; null when never set
    /// (the server configuration's `[boot] default_action` applies).
    pub action: Option<String>,
}

/// The action for unregistered clients
///
/// (A client named `default` is reached by its MAC.)
#[utoipa::path(operation_id = "client_default", get, path = "/api/v1/clients/default", tag = "clients",
    responses((status = 200, body = DefaultAction)))]
pub async fn default_action(State(api): Ctx) -> V1Result<Json<DefaultAction>> {
    blocking(move || {
        let action = api.state.default_action()?.map(|a| a.to_string());
        Ok(Json(DefaultAction { action }))
    })
    .await
}

/// Set the action for unregistered clients
///
/// As `ignite client default ACTION`: applies at their next boot.
#[utoipa::path(operation_id = "client_set_default", put, path = "/api/v1/clients/default", tag = "clients",
    request_body = SetAction,
    responses((status = 200, body = DefaultAction),
        (status = 422, description = "not a boot action", body = ErrorBody)))]
pub async fn set_default_action(
    State(api): Ctx,
    JsonBody(b): JsonBody<SetAction>,
) -> V1Result<Json<DefaultAction>> {
    let act = action(&b.action)?;
    blocking(move || {
        api.state.set_default_action(&act)?;
        tracing::info!("API: unregistered clients: {act}");
        Ok(Json(DefaultAction {
            action: Some(act.to_string()),
        }))
    })
    .await
}
