//! Media of the library (`crate::media`) in a guest's drives, changed while it runs:
//! [`insert`] and [`eject`], which `ignite vm media insert/eject` call too. Their errors
//! carry the API's status (404 no such guest or medium, 422 no such drive, 409 a tape held
//! elsewhere or an empty drive).

use std::path::Path;

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{blocking, Ctx, JsonBody};
use crate::guests::Paths;
use crate::media::{self, engine, Kind, Medium};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};
use crate::state::guests::Record;
use crate::state::State as Db;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Insert {
    /// The medium's name in the library.
    pub media: String,
    /// The drive (default: the guest's first drive for this kind of medium).
    pub drive: Option<String>,
    /// Take a tape from the guest that holds it (ejecting it there).
    #[serde(default)]
    pub take: bool,
}

/// A drive whose medium changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DriveChange {
    pub guest: String,
    pub drive: String,
    /// The guest runs and saw the change at once (else: it gets it when it starts).
    pub live: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Inserted {
    pub media: String,
    #[serde(flatten)]
    pub into: DriveChange,
    /// The drive a taken tape left.
    pub taken_from: Option<DriveChange>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ejected {
    #[serde(flatten)]
    pub from: DriveChange,
    /// What was in the drive (null: it was empty).
    pub media: Option<String>,
}

fn guest(state: &Db, name: &str) -> anyhow::Result<Record> {
    state.find_guest(name)?.ok_or_else(|| {
        V1Error::not_found(format!(
            "guest {name} is not defined; `ignite vm list` shows the defined guests"
        ))
        .into()
    })
}

fn medium(state: &Db, name: &str) -> anyhow::Result<Medium> {
    if !media::list(state)?.iter().any(|(m, _)| m.name == name) {
        return Err(V1Error::not_found(format!(
            "medium {name} is not in the library; `ignite media list` shows what is"
        ))
        .into());
    }
    media::get(state, name)
}

/// Puts medium `name` into `guest`'s `drive`: records it (a tape held elsewhere moves only
/// with `take`), ejects it from the drive it was taken from, then changes the running
/// guest's drive; a failure there undoes the move.
pub fn insert(
    state_dir: &Path,
    guest_name: &str,
    name: &str,
    drive: Option<&str>,
    take: bool,
) -> anyhow::Result<Inserted> {
    let state = Db::open(state_dir)?;
    let rec = guest(&state, guest_name)?;
    let m = medium(&state, name)?;
    let drive = media::pick_drive(&rec.def.drives, m.kind.drive(), drive)
        .map_err(|e| V1Error::invalid(format!("guest {guest_name}: {e:#}")))?;
    let moved = media::attach(&state, guest_name, &drive, &m, take).map_err(|e| {
        match m.kind == Kind::Tape && !take {
            // The records' one refusal: a tape another guest holds.
            true => V1Error::conflict(format!("{e:#}")),
            false => V1Error::from(e),
        }
    })?;
    let mut taken_from = None;
    if let Some(h) = &moved {
        let live = engine::change_live(&Paths::new(state_dir, &h.guest), &h.drive, None)
            .with_context(|| format!("ejecting tape {name} from guest {}", h.guest))?;
        taken_from = Some(DriveChange {
            guest: h.guest.clone(),
            drive: h.drive.clone(),
            live,
        });
    }
    let read_only = m.kind == Kind::Iso;
    match engine::change_live(
        &Paths::new(state_dir, guest_name),
        &drive,
        Some((&m.path, read_only)),
    ) {
        Ok(live) => Ok(Inserted {
            media: name.to_string(),
            into: DriveChange {
                guest: guest_name.to_string(),
                drive,
                live,
            },
            taken_from,
        }),
        Err(e) => {
            media::detach(&state, guest_name, &drive)?;
            if let Some(h) = moved {
                media::attach(&state, &h.guest, &h.drive, &m, true)?;
                let _ = engine::change_live(
                    &Paths::new(state_dir, &h.guest),
                    &h.drive,
                    Some((&m.path, read_only)),
                );
            }
            Err(e.context(format!(
                "guest {guest_name}: cannot insert {name} into {drive}"
            )))
        }
    }
}

/// Empties `guest`'s `drive` (default: the first one holding something).
pub fn eject(state_dir: &Path, guest_name: &str, drive: Option<&str>) -> anyhow::Result<Ejected> {
    let state = Db::open(state_dir)?;
    let rec = guest(&state, guest_name)?;
    let names = media::drive_names(&rec.def.drives);
    let loaded = media::loaded(&state, guest_name)?;
    let drive = match drive {
        Some(d) if names.iter().any(|n| n == d) => d.to_owned(),
        Some(d) => {
            let e = media::no_such_drive(&format!("guest {guest_name}"), d, &names);
            return Err(V1Error::invalid(e.to_string()).into());
        }
        None => match loaded.first() {
            Some((d, _)) => d.clone(),
            None => {
                return Err(
                    V1Error::conflict(format!("guest {guest_name}'s drives are empty")).into(),
                )
            }
        },
    };
    let live = engine::change_live(&Paths::new(state_dir, guest_name), &drive, None)
        .with_context(|| format!("guest {guest_name}: cannot eject {drive}"))?;
    let media = media::detach(&state, guest_name, &drive)?;
    Ok(Ejected {
        from: DriveChange {
            guest: guest_name.to_string(),
            drive,
            live,
        },
        media,
    })
}

/// Put a medium into a guest's drive
///
/// Running or not; a running guest sees the medium change. As `ignite vm media insert`.
#[utoipa::path(operation_id = "guest_media_insert", post, path = "/api/v1/guests/{name}/media", tag = "guests",
    params(("name" = String, Path)), request_body = Insert,
    responses((status = 200, body = Inserted),
        (status = 404, description = "no such guest or medium", body = ErrorBody),
        (status = 409, description = "a tape another guest holds (send take: true to move it)", body = ErrorBody),
        (status = 422, description = "no such drive, or one that cannot take this medium", body = ErrorBody)))]
pub async fn insert_route(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    JsonBody(b): JsonBody<Insert>,
) -> V1Result<Json<Inserted>> {
    blocking(move || {
        let r = insert(&api.state_dir, &name, &b.media, b.drive.as_deref(), b.take)?;
        tracing::info!("API: {} in guest {name}'s drive {}", r.media, r.into.drive);
        Ok(Json(r))
    })
    .await
}

/// Empty a guest's drive
///
/// As `ignite vm media eject --drive DRIVE`.
#[utoipa::path(operation_id = "guest_media_eject", delete, path = "/api/v1/guests/{name}/media/{drive}", tag = "guests",
    params(("name" = String, Path), ("drive" = String, Path, description = "e.g. cd0, tape0")),
    responses((status = 200, body = Ejected),
        (status = 404, description = "no such guest", body = ErrorBody),
        (status = 422, description = "no such drive", body = ErrorBody)))]
pub async fn eject_route(
    State(api): Ctx,
    UrlPath((name, drive)): UrlPath<(String, String)>,
) -> V1Result<Json<Ejected>> {
    blocking(move || {
        let r = eject(&api.state_dir, &name, Some(&drive))?;
        tracing::info!("API: emptied guest {name}'s drive {drive}");
        Ok(Json(r))
    })
    .await
}
