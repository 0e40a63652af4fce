//! `ignite media add/list/remove` (the media library) and `ignite vm media
//! insert/eject/list` (what a guest's drives hold, changed while it runs): see `crate::media`.

use super::guests::StateDir;
use super::remote::{segment, Remote, ServerOpts};
use crate::media::{self, Kind};
use crate::server::api_v1::media::{self as api_media, Ejected, Inserted};
use crate::state::State;
use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: LibraryCmd,
}

#[derive(Subcommand)]
enum LibraryCmd {
    /// Add an ISO image or a virtual tape (a tape file that does not exist is created blank).
    Add {
        file: PathBuf,
        /// The name to use (default: the file name without its extension).
        #[arg(long)]
        name: Option<String>,
        /// iso or tape (default: by the extension, .iso or .tap).
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        #[command(flatten)]
        state: StateDir,
    },
    /// The media and which guest drives hold them.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDir,
    },
    /// Forget a medium (its file stays); refused while a drive holds it.
    Remove {
        name: String,
        #[command(flatten)]
        state: StateDir,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        LibraryCmd::Add {
            file,
            name,
            kind,
            state,
        } => {
            let m = media::add(
                &State::open(&state.state_dir)?,
                &file,
                name.as_deref(),
                kind,
            )?;
            println!(
                "medium {} added: {} {} ({} bytes)",
                m.name,
                m.kind_name(),
                m.path.display(),
                m.size
            );
            Ok(())
        }
        LibraryCmd::List { json, state } => {
            let all = media::list(&State::open(&state.state_dir)?)?;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(m, h)| serde_json::json!({"medium": m, "in": h}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<5} {:>14}  {:<30} in",
                "NAME", "KIND", "BYTES", "FILE"
            );
            for (m, h) in all {
                let held: Vec<String> = h
                    .iter()
                    .map(|h| format!("{}:{}", h.guest, h.drive))
                    .collect();
                println!(
                    "{:<20} {:<5} {:>14}  {:<30} {}",
                    m.name,
                    m.kind_name(),
                    m.size,
                    m.path.display(),
                    if held.is_empty() {
                        "-".into()
                    } else {
                        held.join(" ")
                    }
                );
            }
            Ok(())
        }
        LibraryCmd::Remove { name, state } => {
            media::remove(&State::open(&state.state_dir)?, &name)?;
            println!("medium {name} removed from the library");
            Ok(())
        }
    }
}

#[derive(Subcommand)]
pub enum VmCmd {
    /// Put a medium from the library into a guest's drive, running or not. A tape another
    /// guest holds is refused unless --take moves it (ejecting it there).
    Insert {
        guest: String,
        name: String,
        /// The drive (default: the guest's first drive for this kind of medium).
        #[arg(long)]
        drive: Option<String>,
        /// Take a tape from the guest that holds it.
        #[arg(long)]
        take: bool,
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Empty a guest's drive (default: the first one holding something).
    Eject {
        guest: String,
        #[arg(long)]
        drive: Option<String>,
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// A guest's drives and what they hold.
    Drives {
        guest: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDir,
    },
}

impl VmCmd {
    pub fn run(self) -> Result<()> {
        match self {
            VmCmd::Insert {
                guest,
                name,
                drive,
                take,
                state,
                api,
            } => insert(
                api.remote(&state.state_dir)?,
                &state.state_dir,
                &guest,
                &name,
                drive.as_deref(),
                take,
            ),
            VmCmd::Eject {
                guest,
                drive,
                state,
                api,
            } => eject(
                api.remote(&state.state_dir)?,
                &state.state_dir,
                &guest,
                drive.as_deref(),
            ),
            VmCmd::Drives { guest, json, state } => drives(&state.state_dir, &guest, json),
        }
    }
}

impl media::Medium {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Iso => "iso",
            Kind::Tape => "tape",
        }
    }
}

fn insert(
    api: Option<Remote>,
    state_dir: &Path,
    guest: &str,
    name: &str,
    drive: Option<&str>,
    take: bool,
) -> Result<()> {
    let r: Inserted = match api {
        Some(r) => {
            let body = serde_json::json!({"media": name, "drive": drive, "take": take});
            r.call(
                "POST",
                &format!("/api/v1/guests/{}/media", segment(guest)),
                Some(body),
            )?
        }
        None => api_media::insert(state_dir, guest, name, drive, take)?,
    };
    if let Some(h) = &r.taken_from {
        println!(
            "tape {name} taken from guest {}'s drive {}{}",
            h.guest,
            h.drive,
            if h.live {
                " (ejected while it runs)"
            } else {
                ""
            }
        );
    }
    println!(
        "{name} is in guest {guest}'s drive {}{}",
        r.into.drive,
        if r.into.live {
            " (running: the guest sees the medium change)"
        } else {
            " (the guest gets it when it starts)"
        }
    );
    Ok(())
}

fn eject(api: Option<Remote>, state_dir: &Path, guest: &str, drive: Option<&str>) -> Result<()> {
    let r: Ejected = match (api, drive) {
        (Some(r), Some(d)) => r.call(
            "DELETE",
            &format!("/api/v1/guests/{}/media/{}", segment(guest), segment(d)),
            None,
        )?,
        (Some(_), None) => {
            bail!("with --server, name the drive to empty: --drive DRIVE (`ignite vm media drives {guest}` on the server lists them)")
        }
        (None, _) => api_media::eject(state_dir, guest, drive)?,
    };
    let d = &r.from.drive;
    match &r.media {
        Some(m) => println!(
            "{m} ejected from guest {guest}'s drive {d}{}",
            if r.from.live {
                " (the guest sees it go)"
            } else {
                ""
            }
        ),
        None => println!("guest {guest}'s drive {d} was empty"),
    }
    Ok(())
}

fn drives(state_dir: &Path, guest: &str, json: bool) -> Result<()> {
    let state = State::open(state_dir)?;
    let rec = state.guest(guest)?;
    let loaded = media::loaded(&state, guest)?;
    let rows: Vec<_> = media::drive_names(&rec.def.drives)
        .into_iter()
        .zip(&rec.def.drives)
        .map(|(n, d)| {
            let m = loaded
                .iter()
                .find(|(x, _)| *x == n)
                .map(|(_, m)| m.name.clone());
            (n, *d, m)
        })
        .collect();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, d, m)| serde_json::json!({"drive": n, "kind": d.kind, "bus": d.bus, "medium": m}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (n, d, m) in rows {
        println!(
            "{n:<5} {:<5} {:<5} {}",
            format!("{:?}", d.kind).to_lowercase(),
            format!("{:?}", d.bus).to_lowercase(),
            m.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
