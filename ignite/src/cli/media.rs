//! `ignite media add/list/remove` (the media library) and `ignite vm media
//! insert/eject/list` (what a guest's drives hold, changed while it runs): see `crate::media`.

use super::guests::StateDir;
use crate::guests::Paths;
use crate::media::{self, engine, Kind};
use crate::state::State;
use anyhow::{bail, Context, Result};
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
    },
    /// Empty a guest's drive (default: the first one holding something).
    Eject {
        guest: String,
        #[arg(long)]
        drive: Option<String>,
        #[command(flatten)]
        state: StateDir,
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
            } => insert(&state.state_dir, &guest, &name, drive.as_deref(), take),
            VmCmd::Eject {
                guest,
                drive,
                state,
            } => eject(&state.state_dir, &guest, drive.as_deref()),
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

/// `insert`: records the medium in the drive (ownership checked there), takes it out of the
/// holder's drive if it moved, then puts it into the running guest; a failure there undoes
/// the move.
pub fn insert(
    state_dir: &Path,
    guest: &str,
    name: &str,
    drive: Option<&str>,
    take: bool,
) -> Result<()> {
    let state = State::open(state_dir)?;
    let rec = state.guest(guest)?;
    let m = media::get(&state, name)?;
    let drive = media::pick_drive(&rec.def.drives, m.kind.drive(), drive)
        .with_context(|| format!("guest {guest}"))?;
    let moved = media::attach(&state, guest, &drive, &m, take)?;
    if let Some(h) = &moved {
        let live = engine::change_live(&Paths::new(state_dir, &h.guest), &h.drive, None)
            .with_context(|| format!("ejecting tape {name} from guest {}", h.guest))?;
        println!(
            "tape {name} taken from guest {}'s drive {}{}",
            h.guest,
            h.drive,
            if live { " (ejected while it runs)" } else { "" }
        );
    }
    let read_only = m.kind == Kind::Iso;
    match engine::change_live(
        &Paths::new(state_dir, guest),
        &drive,
        Some((&m.path, read_only)),
    ) {
        Ok(live) => {
            println!(
                "{name} is in guest {guest}'s drive {drive}{}",
                if live {
                    " (running: the guest sees the medium change)"
                } else {
                    " (the guest gets it when it starts)"
                }
            );
            Ok(())
        }
        Err(e) => {
            media::detach(&state, guest, &drive)?;
            if let Some(h) = moved {
                media::attach(&state, &h.guest, &h.drive, &m, true)?;
                let _ = engine::change_live(
                    &Paths::new(state_dir, &h.guest),
                    &h.drive,
                    Some((&m.path, read_only)),
                );
            }
            Err(e.context(format!("guest {guest}: cannot insert {name} into {drive}")))
        }
    }
}

pub fn eject(state_dir: &Path, guest: &str, drive: Option<&str>) -> Result<()> {
    let state = State::open(state_dir)?;
    let rec = state.guest(guest)?;
    let names = media::drive_names(&rec.def.drives);
    let loaded = media::loaded(&state, guest)?;
    let drive = match drive {
        Some(d) if names.iter().any(|n| n == d) => d.to_owned(),
        Some(d) => return Err(media::no_such_drive(&format!("guest {guest}"), d, &names)),
        None => match loaded.first() {
            Some((d, _)) => d.clone(),
            None => bail!("guest {guest}'s drives are empty"),
        },
    };
    let live = engine::change_live(&Paths::new(state_dir, guest), &drive, None)
        .with_context(|| format!("guest {guest}: cannot eject {drive}"))?;
    match media::detach(&state, guest, &drive)? {
        Some(m) => println!(
            "{m} ejected from guest {guest}'s drive {drive}{}",
            if live { " (the guest sees it go)" } else { "" }
        ),
        None => println!("guest {guest}'s drive {drive} was empty"),
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
