//! What the boot network did: the boot log, DHCP leases; and the capture schedules.

use axum::extract::{Query, State};
use axum::Json;
use ignite_netboot::MacAddr;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{blocking, Ctx};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};
use crate::state::views::LeaseView;
use crate::state::StepRecord;

/// Boot steps answered when no limit is given, and the most ever answered.
const DEFAULT_STEPS: usize = 100;
const MAX_STEPS: usize = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BootLogQuery {
    /// Only this client's steps.
    pub mac: Option<String>,
    /// The newest this many steps (default 100, at most 10000).
    pub limit: Option<usize>,
}

/// The boot log
#[utoipa::path(operation_id = "netboot_boot_log", get, path = "/api/v1/bootlog", tag = "netboot", params(BootLogQuery),
    responses((status = 200, description = "`[{time, mac, ip, step, detail}]`, oldest first", body = Vec<Object>),
        (status = 422, description = "a bad MAC or limit", body = ErrorBody)))]
pub async fn boot_log(
    State(api): Ctx,
    Query(q): Query<BootLogQuery>,
) -> V1Result<Json<Vec<StepRecord>>> {
    let mac = q
        .mac
        .as_deref()
        .map(|m| m.parse::<MacAddr>().map(|m| m.to_string()))
        .transpose()
        .map_err(|e| V1Error::invalid(format!("{e}")))?;
    let limit = q.limit.unwrap_or(DEFAULT_STEPS);
    if limit == 0 || limit > MAX_STEPS {
        return Err(V1Error::invalid(format!(
            "limit {limit}: give between 1 and {MAX_STEPS}"
        )));
    }
    blocking(move || Ok(Json(api.state.recent_steps(mac.as_deref(), limit)?))).await
}

/// DHCP leases
#[utoipa::path(operation_id = "netboot_leases", get, path = "/api/v1/leases", tag = "netboot",
    responses((status = 200, description = "`[{ip, mac, expires, state, active, hostname}]` as `ignite netboot leases --json`", body = Vec<Object>)))]
pub async fn leases(State(api): Ctx) -> V1Result<Json<Vec<LeaseView>>> {
    blocking(move || Ok(Json(api.state.lease_views()?))).await
}
