//! Install profiles in the server's profiles directory (`<name>.toml`): list, show, check a
//! posted profile, render one for a client. `ignite profile check/render` call the same
//! functions ([`check`], [`facts`], [`parse_disk`]), locally or through these routes.
//!
//! A posted profile's `extends = "base"` reads `base.toml` from the profiles directory.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use ignite_profiles::{parse_bytes, ClientFacts, DiskFact, InstallPlan, LoadError, Profile};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, Ctx};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};

/// One problem of a profile, where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole (it cannot be read).
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// The line `ignite profile check` prints for it.
    pub text: String,
}

/// A profile checked, and rendered for a client when one was given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Checked {
    /// The file as named in the problems (`web.toml`, or the name a check was posted as).
    pub file: String,
    pub ok: bool,
    /// Every problem, in file order (empty when ok).
    pub errors: Vec<Problem>,
    /// The golden archive it installs (when ok).
    pub archive: Option<String>,
    /// Its partition count (when ok).
    pub partitions: Option<usize>,
    /// The install plan for the client given (when ok and a client was given).
    #[schema(value_type = Option<Object>)]
    pub plan: Option<InstallPlan>,
}

/// A profile file of the server, with its text.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileFile {
    pub name: String,
    pub text: String,
    #[serde(flatten)]
    pub check: Checked,
}

/// A client disk, `PATH:SIZE[:SERIAL]` (`/dev/vda:20G`), as `--disk` and `?disk=` take it.
pub fn parse_disk(s: &str) -> Result<DiskFact, String> {
    let mut it = s.splitn(3, ':');
    let path = it.next().unwrap_or_default();
    let (Some(size), true) = (it.next(), path.starts_with('/')) else {
        return Err(format!(
            "{s:?}: write PATH:SIZE[:SERIAL], e.g. /dev/vda:20G"
        ));
    };
    let size = parse_bytes(size)?;
    Ok(DiskFact {
        path: path.to_string(),
        size,
        serial: it.next().map(str::to_string),
        sector_size: ignite_profiles::SECTOR,
        ..Default::default()
    })
}

/// What a plan is rendered for.
pub fn facts(mac: &str, disks: Vec<DiskFact>, hostname: Option<String>) -> ClientFacts {
    ClientFacts {
        mac: mac.to_string(),
        disks,
        hostname,
    }
}

/// The outcome of loading profile `file` (and rendering it for `client`, when given and it
/// loaded). A render error is the client's mismatch with a valid profile: returned as Err.
pub fn check(
    file: &str,
    loaded: Result<Profile, LoadError>,
    client: Option<&ClientFacts>,
) -> anyhow::Result<Checked> {
    let p = match loaded {
        Ok(p) => p,
        Err(e) => {
            let errors = match &e {
                LoadError::Invalid(errs) => errs
                    .0
                    .iter()
                    .map(|d| Problem {
                        file: d.file.clone(),
                        line: d.line,
                        col: d.col,
                        message: d.message.clone(),
                        text: d.to_string(),
                    })
                    .collect(),
                LoadError::Read { .. } => vec![Problem {
                    file: file.to_string(),
                    line: 0,
                    col: 0,
                    message: e.to_string(),
                    text: e.to_string(),
                }],
            };
            return Ok(Checked {
                file: file.to_string(),
                ok: false,
                errors,
                archive: None,
                partitions: None,
                plan: None,
            });
        }
    };
    let plan = client.map(|c| p.render(c)).transpose()?;
    Ok(Checked {
        file: file.to_string(),
        ok: true,
        errors: Vec::new(),
        archive: Some(p.archive.to_string()),
        partitions: Some(p.disk.partitions.len()),
        plan,
    })
}

/// Profile `text` named `file`, its `extends` read from `dir`.
pub fn load_text(dir: &Path, file: &str, text: &str) -> Result<Profile, LoadError> {
    let mut resolve = |base: &str| -> Result<(String, String), String> {
        let p = dir.join(format!("{base}.toml"));
        std::fs::read_to_string(&p)
            .map(|t| (format!("{base}.toml"), t))
            .map_err(|e| format!("{base}.toml in the server's profiles: {e}"))
    };
    Profile::from_str_with(file, text, &mut resolve).map_err(LoadError::Invalid)
}

/// The file of profile `name` in `dir`; 422 for a name that is no file name, 404 when it
/// does not exist.
fn path_of(dir: &Path, name: &str) -> V1Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(V1Error::invalid(format!(
            "profile name {name:?}: give the name of a file in the profiles directory, without .toml"
        )));
    }
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        return Err(V1Error::not_found(format!(
            "profile {name}: {} does not exist on the server; GET /api/v1/profiles lists them",
            path.display()
        )));
    }
    Ok(path)
}

/// Profile `name` of `dir`, its text and its check (rendered for `client` when given).
fn load_named(dir: &Path, name: &str, client: Option<&ClientFacts>) -> V1Result<ProfileFile> {
    let path = path_of(dir, name)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("profile {}: {e}", path.display()))?;
    let file = format!("{name}.toml");
    let check = check(&file, load_text(dir, &file, &text), client)
        .map_err(|e| V1Error::invalid(format!("{e:#}")))?;
    Ok(ProfileFile {
        name: name.to_string(),
        text,
        check,
    })
}

/// The profile names in `dir`, sorted (none when it does not exist).
fn names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("profiles directory {}: {e}", dir.display()),
    };
    let mut names = Vec::new();
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".toml") {
            if !stem.is_empty() && !stem.starts_with('.') {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// The client's boot NIC MAC address.
    pub mac: Option<String>,
    /// Its disks, `PATH:SIZE[:SERIAL]`, comma-separated in order (`/dev/vda:20G`).
    pub disk: Option<String>,
    /// Its own hostname (the template's `{name}`).
    pub hostname: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// The file name its problems name (default `posted.toml`).
    pub file: Option<String>,
}

impl ClientQuery {
    /// The client asked for: None without `mac` and `disk`; 422 for half of one or bad
    /// values.
    fn facts(self) -> V1Result<Option<ClientFacts>> {
        let (mac, disk) = match (self.mac, self.disk) {
            (None, None) => return Ok(None),
            (Some(m), Some(d)) => (m, d),
            _ => {
                return Err(V1Error::invalid(
                    "give both mac and disk (e.g. ?mac=52:54:00:12:34:56&disk=/dev/vda:20G) to render a plan",
                ))
            }
        };
        let disks = disk
            .split(',')
            .map(parse_disk)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| V1Error::invalid(format!("disk {e}")))?;
        Ok(Some(facts(&mac, disks, self.hostname)))
    }
}

/// Profiles on the server, each checked
#[utoipa::path(operation_id = "profile_list", get, path = "/api/v1/profiles", tag = "profiles",
    responses((status = 200, body = Vec<ProfileFile>)))]
pub async fn list(State(api): Ctx) -> V1Result<Json<Vec<ProfileFile>>> {
    blocking(move || {
        names(&api.profiles_dir)?
            .iter()
            .map(|n| load_named(&api.profiles_dir, n, None))
            .collect::<V1Result<Vec<_>>>()
            .map(Json)
    })
    .await
}

/// One profile: its text and its check
#[utoipa::path(operation_id = "profile_show", get, path = "/api/v1/profiles/{name}", tag = "profiles",
    params(("name" = String, Path, description = "the file name without .toml")),
    responses((status = 200, body = ProfileFile), (status = 404, body = ErrorBody),
        (status = 422, description = "not a profile name", body = ErrorBody)))]
pub async fn show(State(api): Ctx, UrlPath(name): UrlPath<String>) -> V1Result<Json<ProfileFile>> {
    blocking(move || load_named(&api.profiles_dir, &name, None).map(Json)).await
}

/// Check a profile sent as the body
///
/// Answers its problems with line and column (`ok: false`), or `ok: true` and, given a
/// client (`mac` and `disk`), the install plan rendered for it. As `ignite profile check`.
#[utoipa::path(operation_id = "profile_check", post, path = "/api/v1/profiles/check", tag = "profiles",
    params(FileQuery, ClientQuery),
    request_body(content = String, content_type = "application/toml", description = "the profile"),
    responses((status = 200, body = Checked),
        (status = 422, description = "a bad client, or a valid profile that does not fit it", body = ErrorBody)))]
pub async fn check_posted(
    State(api): Ctx,
    Query(q): Query<FileQuery>,
    Query(c): Query<ClientQuery>,
    text: String,
) -> V1Result<Json<Checked>> {
    let client = c.facts()?;
    let file = q.file.unwrap_or_else(|| "posted.toml".to_string());
    blocking(move || {
        let loaded = load_text(&api.profiles_dir, &file, &text);
        check(&file, loaded, client.as_ref())
            .map(Json)
            .map_err(|e| V1Error::invalid(format!("{e:#}")))
    })
    .await
}

/// A profile's install plan for a client
///
/// As `ignite profile render`.
#[utoipa::path(operation_id = "profile_render", get, path = "/api/v1/profiles/{name}/render", tag = "profiles",
    params(("name" = String, Path, description = "the file name without .toml"), ClientQuery),
    responses((status = 200, description = "the install plan, as `ignite profile render --json`", body = Object),
        (status = 404, body = ErrorBody),
        (status = 422, description = "no client given, a broken profile, or one that does not fit the client", body = ErrorBody)))]
pub async fn render(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<ClientQuery>,
) -> V1Result<Json<InstallPlan>> {
    let Some(client) = q.facts()? else {
        return Err(V1Error::invalid(
            "give the client: ?mac=52:54:00:12:34:56&disk=/dev/vda:20G",
        ));
    };
    blocking(move || {
        let p = load_named(&api.profiles_dir, &name, Some(&client))?;
        match p.check.plan {
            Some(plan) => Ok(Json(plan)),
            None => Err(V1Error::invalid(format!(
                "profile {name} is broken: {}",
                p.check
                    .errors
                    .iter()
                    .map(|e| e.text.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_arguments() {
        let d = parse_disk("/dev/vda:20G").unwrap();
        assert_eq!(
            (d.path.as_str(), d.size, d.serial),
            ("/dev/vda", 20 << 30, None)
        );
        let d = parse_disk("/dev/sdb:1T:WD-123").unwrap();
        assert_eq!(d.serial.as_deref(), Some("WD-123"));
        assert!(parse_disk("/dev/vda").is_err());
        assert!(parse_disk("vda:20G").is_err());
        assert!(parse_disk("/dev/vda:20X").is_err());
    }

    #[test]
    fn a_posted_profile_extends_one_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/examples");
        std::fs::copy(examples.join("base.toml"), dir.path().join("base.toml")).unwrap();
        let p = load_text(dir.path(), "web.toml", "extends = \"base\"\n").unwrap();
        assert_eq!(p.archive.to_string(), "debian-12");
        let e = load_text(dir.path(), "web.toml", "extends = \"nothing\"\n").unwrap_err();
        let c = check("web.toml", Err(e), None).unwrap();
        assert!(!c.ok);
        assert_eq!(
            (c.errors[0].file.as_str(), c.errors[0].line),
            ("web.toml", 1)
        );
        assert!(c.errors[0].text.contains("line 1"), "{:?}", c.errors);
    }
}
