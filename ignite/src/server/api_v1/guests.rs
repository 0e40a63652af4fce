//! Guests of the bundled monitor (or QEMU): define ([`create`], which `ignite vm create`
//! calls too), list, show, start, stop, remove; the end of a guest's console log. Media in
//! their drives: media.rs.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{blocking, Api, Ctx, JsonBody};
use crate::guests::control::{self, Status};
use crate::guests::{
    check_name, normalize_mac, supervisor, Boot, Bus, Definition, Disk, EngineChoice, Firmware,
    Nic, Paths, MAX_VIO_DISKS,
};
use crate::server::api_error::{ErrorBody, V1Error, V1Result};
use crate::state::guests::Record;
use crate::state::State as Db;
use ignite_profiles::parse_bytes as parse_size;

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
    /// An instant restore still copying the guest's disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instant: Option<InstantCopy>,
}

/// Where an instant restore's background copy is (`ignite recovery instant NAME`).
#[derive(Debug, Serialize, Deserialize)]
pub struct InstantCopy {
    /// None before the copy's first report.
    pub progress: Option<crate::guests::instant::Progress>,
    /// Its server's pid; None when it does not run (the guest's reads of blocks not yet
    /// copied then wait).
    pub server_pid: Option<u32>,
}

pub fn view(state_dir: &Path, record: Record) -> Result<View> {
    let paths = Paths::new(state_dir, &record.def.name);
    let running = control::status(&paths.control())?;
    let instant = crate::guests::instant::pending(&paths.dir).then(|| InstantCopy {
        progress: crate::guests::instant::progress(&paths.dir),
        server_pid: crate::guests::instant::server_pid(&paths.dir),
    });
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
        instant,
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

/// A guest to define: `ignite vm create`'s options, as its flags or as the JSON body of
/// `POST /api/v1/guests` (absent fields take the flags' defaults).
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGuest {
    pub name: String,
    /// Memory, e.g. 512M or 2G.
    #[arg(long, default_value = "1G")]
    #[serde(default = "default_mem")]
    pub mem: String,
    #[arg(long, default_value_t = 1)]
    #[serde(default = "one")]
    pub cpus: u8,
    /// A size (e.g. 10G: a new sparse image in the guest's directory) or an existing image (repeatable).
    #[arg(long = "disk")]
    #[serde(default)]
    pub disks: Vec<String>,
    /// avio (virtio-blk) or vio (IDE, at most 4 disks).
    #[arg(long, value_enum, default_value = "avio")]
    #[serde(default = "avio")]
    #[schema(value_type = String)]
    pub disk_bus: Bus,
    /// NIC on a bridge: bridge=BR (repeatable).
    #[arg(long = "net")]
    #[serde(default)]
    pub nets: Vec<String>,
    /// avio (virtio-net) or vio (NE2000).
    #[arg(long, value_enum, default_value = "avio")]
    #[serde(default = "avio")]
    #[schema(value_type = String)]
    pub net_model: Bus,
    /// MAC of the NIC of the same position (repeatable); generated when left out.
    #[arg(long = "mac")]
    #[serde(default)]
    pub macs: Vec<String>,
    /// net, disk, or kernel=PATH[,initrd=PATH][,cmdline=...].
    #[arg(long, default_value = "disk")]
    #[serde(default = "default_boot")]
    pub boot: String,
    /// auto, bundled or qemu.
    #[arg(long, value_enum, default_value = "auto")]
    #[serde(default = "auto")]
    #[schema(value_type = String)]
    pub engine: EngineChoice,
    /// bios (SeaBIOS) or uefi (OVMF; QEMU engine only).
    #[arg(long, value_enum, default_value = "bios")]
    #[serde(default)]
    #[schema(value_type = String)]
    pub firmware: Firmware,
    /// A CD-ROM drive on the disk bus, with the media library's ISO NAME in it if given
    /// (repeatable; "" for an empty drive).
    #[arg(long = "cdrom", num_args = 0..=1, default_missing_value = "")]
    #[serde(default)]
    pub cdroms: Vec<String>,
    /// A tape drive (virtio-scsi, bundled engine), with the library's tape NAME in it if
    /// given (repeatable; "" for an empty drive).
    #[arg(long = "tape", num_args = 0..=1, default_missing_value = "")]
    #[serde(default)]
    pub tapes: Vec<String>,
}

impl NewGuest {
    /// Self with the relative paths of existing files (disk images, the kernel and initrd
    /// of `boot`) made absolute here: the server resolves a path in its own directory.
    pub fn with_absolute_paths(mut self) -> Result<NewGuest> {
        let abs = |p: &str| -> Result<String> {
            Ok(match Path::new(p).exists() {
                true => std::path::absolute(p)?.display().to_string(),
                false => p.to_string(),
            })
        };
        for d in &mut self.disks {
            // A size is a size even where a file of that name exists (as in disk_arg).
            if d.contains('/') || parse_size(d).is_err() {
                *d = abs(d)?;
            }
        }
        if let Some(rest) = self.boot.strip_prefix("kernel=") {
            let (files, cmdline) = match rest.split_once(",cmdline=") {
                Some((f, c)) => (f, Some(c)),
                None => (rest, None),
            };
            let files = files
                .split(',')
                .map(|f| match f.strip_prefix("initrd=") {
                    Some(i) => Ok(format!("initrd={}", abs(i)?)),
                    None => abs(f),
                })
                .collect::<Result<Vec<_>>>()?;
            let mut boot = format!("kernel={}", files.join(","));
            if let Some(c) = cmdline {
                boot += &format!(",cmdline={c}");
            }
            self.boot = boot;
        }
        Ok(self)
    }
}

fn default_mem() -> String {
    "1G".into()
}
fn one() -> u8 {
    1
}
fn avio() -> Bus {
    Bus::Avio
}
fn default_boot() -> String {
    "disk".into()
}
fn auto() -> EngineChoice {
    EngineChoice::Auto
}

/// A new image of `size` bytes, or an existing image.
enum DiskArg {
    New(u64),
    Existing(PathBuf),
}

fn disk_arg(s: &str) -> Result<DiskArg> {
    let too_small = || anyhow!("disk size {s:?} is too small; give at least 1M (e.g. --disk 10G)");
    if !s.contains('/') {
        match parse_size(s) {
            Ok(size) if size < 1 << 20 => return Err(too_small()),
            Ok(size) => return Ok(DiskArg::New(size)),
            // Zero is too small in any unit.
            Err(_) if s.bytes().all(|b| b == b'0') => return Err(too_small()),
            Err(_) => {}
        }
    }
    match std::fs::canonicalize(s) {
        Ok(p) if p.is_file() => Ok(DiskArg::Existing(p)),
        _ => bail!(
            "disk {s:?} is neither a size (e.g. 10G, for a new sparse image) nor an existing image file"
        ),
    }
}

/// The definition `a` asks for, checked, and the sizes of the images to make (None: an
/// existing image).
fn definition(state_dir: &Path, a: &NewGuest) -> Result<(Definition, Vec<Option<u64>>)> {
    check_name(&a.name)?;
    let mem = parse_size(&a.mem).map_err(anyhow::Error::msg)?;
    if !(16 << 20..=64 << 30).contains(&mem) {
        bail!(
            "memory size {} is out of range; use between 16M and 64G",
            a.mem
        );
    }
    if a.cpus == 0 || a.cpus > ignite_vmm::layout::MAX_CPUS {
        bail!(
            "{} vCPUs is out of range; use between 1 and {}",
            a.cpus,
            ignite_vmm::layout::MAX_CPUS
        );
    }
    if a.disk_bus == Bus::Vio && a.disks.len() > MAX_VIO_DISKS {
        bail!(
            "{} disks on --disk-bus vio; the emulated IDE controller takes at most {MAX_VIO_DISKS}: \
             use --disk-bus avio or fewer disks",
            a.disks.len()
        );
    }
    let dir = crate::guests::guest_dir(state_dir, &a.name);
    let mut disks = Vec::new();
    let mut sizes = Vec::new();
    for (i, s) in a.disks.iter().enumerate() {
        match disk_arg(s)? {
            DiskArg::New(size) => {
                disks.push(Disk {
                    path: dir.join(format!("disk{i}.img")),
                    owned: true,
                });
                sizes.push(Some(size));
            }
            DiskArg::Existing(path) => {
                disks.push(Disk { path, owned: false });
                sizes.push(None);
            }
        }
    }
    if a.macs.len() > a.nets.len() {
        bail!(
            "{} --mac for {} --net; give at most one MAC per NIC",
            a.macs.len(),
            a.nets.len()
        );
    }
    let mut nics = Vec::new();
    for (i, n) in a.nets.iter().enumerate() {
        let bridge = match n.strip_prefix("bridge=") {
            Some(b) if !b.is_empty() && b.len() < 16 && !b.contains(['/', ' ', ',']) => b,
            _ => bail!("net {n:?}: use bridge=BR (an existing bridge, up to 15 characters)"),
        };
        let mac = match a.macs.get(i) {
            Some(m) => normalize_mac(m)?,
            None => String::new(),
        };
        nics.push(Nic {
            bridge: bridge.to_owned(),
            mac,
        });
    }
    let boot = Boot::parse(&a.boot)?;
    if boot == Boot::Disk && disks.is_empty() {
        bail!("--boot disk needs a disk; add --disk SIZE|PATH or boot with --boot net|kernel=PATH");
    }
    if boot == Boot::Net && nics.is_empty() {
        bail!("--boot net needs a NIC; add --net bridge=BR");
    }
    if a.firmware == Firmware::Uefi && a.engine == EngineChoice::Bundled {
        bail!("--firmware uefi runs under QEMU (OVMF); the bundled monitor boots like a BIOS: use --engine qemu or auto");
    }
    Ok((
        Definition {
            name: a.name.clone(),
            mem,
            cpus: a.cpus,
            disks,
            disk_bus: a.disk_bus,
            nics,
            net_model: a.net_model,
            boot,
            engine: a.engine,
            firmware: a.firmware,
            drives: crate::media::drives_for(
                a.disk_bus,
                a.disks.len(),
                a.cdroms.len(),
                a.tapes.len(),
            )?,
        },
        sizes,
    ))
}

/// Defines guest `a` in `state_dir`, making its new disk images and loading the media
/// named for its drives; nothing is left behind when it fails. Its errors carry the API's
/// status: 422 a bad definition or medium, 409 a name or MAC taken.
pub fn create(state_dir: &Path, a: &NewGuest) -> Result<Definition> {
    let invalid = |e: anyhow::Error| V1Error::invalid(format!("{e:#}"));
    let (def, sizes) = definition(state_dir, a).map_err(invalid)?;
    let guests = Db::open(state_dir)?;
    let media =
        crate::media::for_new_drives(&guests, &def.drives, &a.cdroms, &a.tapes).map_err(invalid)?;
    let dir = crate::guests::guest_dir(state_dir, &a.name);
    let mut made = Vec::new();
    let mut files_failed = false;
    let result = guests.define_guest(def, |def| {
        files_failed = true;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("guest directory {}: cannot create it", dir.display()))?;
        for (d, size) in def.disks.iter().zip(&sizes) {
            let Some(size) = size else { continue };
            let f = std::fs::File::create_new(&d.path).with_context(|| {
                format!(
                    "disk image {}: cannot create it (an image kept from an earlier guest? \
                     move it away or pass it as --disk PATH)",
                    d.path.display()
                )
            })?;
            made.push(d.path.clone());
            f.set_len(*size)
                .with_context(|| format!("disk image {}: cannot size it", d.path.display()))?;
        }
        files_failed = false;
        Ok(())
    });
    match result {
        Ok(def) => {
            crate::media::load_new_drives(&guests, &def.name, &media)?;
            Ok(def)
        }
        Err(e) => {
            for p in &made {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_dir(&dir);
            match files_failed {
                true => Err(e),
                // The records refused it: the name or a MAC is another guest's.
                false => Err(V1Error::conflict(format!("{e:#}")).into()),
            }
        }
    }
}

/// Define a guest
///
/// As `ignite vm create`: disks given as sizes are made as sparse images in the guest's
/// directory on the server.
#[utoipa::path(operation_id = "guest_create", post, path = "/api/v1/guests", tag = "guests",
    request_body = NewGuest,
    responses((status = 201, description = "the definition, MACs filled in", body = Object),
        (status = 409, description = "the name or a MAC is another guest's", body = ErrorBody),
        (status = 422, description = "a bad definition, or media that do not fit its drives", body = ErrorBody)))]
pub async fn create_route(
    State(api): Ctx,
    JsonBody(g): JsonBody<NewGuest>,
) -> V1Result<(StatusCode, Json<Definition>)> {
    blocking(move || {
        let def = create(&api.state_dir, &g)?;
        tracing::info!("API: defined guest {}", def.name);
        Ok((StatusCode::CREATED, Json(def)))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Keep the disk images made for it (in its directory).
    pub keep_disks: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    pub name: String,
    /// The images kept (with keep_disks).
    #[schema(value_type = Vec<String>)]
    pub kept: Vec<PathBuf>,
}

/// Remove a stopped guest
///
/// Its definition and the disk images made for it, as `ignite vm remove`.
#[utoipa::path(operation_id = "guest_remove", delete, path = "/api/v1/guests/{name}", tag = "guests",
    params(("name" = String, Path), RemoveQuery),
    responses((status = 200, body = Removed), (status = 404, body = ErrorBody),
        (status = 409, description = "it is running", body = ErrorBody)))]
pub async fn remove(
    State(api): Ctx,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RemoveQuery>,
) -> V1Result<Json<Removed>> {
    blocking(move || {
        let running = find(&api, &name)?.running.is_some();
        let kept = crate::guests::remove(&api.state_dir, &name, q.keep_disks.unwrap_or(false))
            .map_err(|e| match running {
                true => V1Error::conflict(format!("{e:#}")),
                false => e.into(),
            })?;
        tracing::info!("API: removed guest {name}");
        Ok(Json(Removed { name, kept }))
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
