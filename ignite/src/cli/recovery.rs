//! `ignite recovery`: captures of guests and clients (`make_net_recovery`), their history and
//! records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ignite_archive::Store;
use ignite_profiles::human;
use ignite_recovery::capture::record::{short, Record};

use crate::guests::capture::capture_guest;
use crate::state::State;

#[derive(Args)]
pub struct RecoveryArgs {
    /// Directory of the server state (guests, clients, capture history).
    #[arg(
        long,
        env = "IGNITE_STATE_DIR",
        default_value = "/var/lib/ignite",
        global = true
    )]
    state_dir: PathBuf,
    /// The archive store captures go to (default: the server's, `<state-dir>/store`).
    #[arg(long, env = "IGNITE_STORE", global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Capture a defined guest's disks now (running or stopped), reading only what changed
    /// since its last capture when the change log allows.
    Capture { name: String },
    /// Capture history: every attempt, with what it read and stored.
    List {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A capture's record: disks, layouts, file systems, identity, source.
    Show {
        /// NAME (its latest capture), NAME@latest or NAME@ID.
        capture: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: RecoveryArgs) -> Result<()> {
    let store_dir = a.store.clone().unwrap_or_else(|| a.state_dir.join("store"));
    match a.cmd {
        Cmd::Capture { name } => capture(&a.state_dir, &store_dir, &name),
        Cmd::List { name, json } => list(&a.state_dir, name.as_deref(), json),
        Cmd::Show { capture, json } => show(&store_dir, &capture, json),
    }
}

/// The store, created with default settings on first use.
pub fn open_store(dir: &Path) -> Result<Store> {
    if dir.join("config.json").is_file() {
        Ok(Store::open(dir)?)
    } else {
        Store::init(dir, Default::default())
            .with_context(|| format!("cannot create the store {}", dir.display()))
    }
}

fn capture(state_dir: &Path, store_dir: &Path, name: &str) -> Result<()> {
    let state = State::open(state_dir)?;
    let store = Arc::new(open_store(store_dir)?);
    let c = capture_guest(state_dir, &state, store, name)?;
    let s = &c.record.stats;
    for why in &s.full_reads {
        println!("{why}");
    }
    println!(
        "captured {name} as {name}@{}: {} disk(s), {} read of {}, {} new in the store, writes held {} ms, {:.1} s",
        short(&c.snapshot.id),
        c.record.disks.len(),
        human(s.read_bytes),
        human(s.logical_bytes),
        human(s.new_stored_bytes),
        s.pause_ms,
        s.seconds
    );
    Ok(())
}

fn list(state_dir: &Path, name: Option<&str>, json: bool) -> Result<()> {
    let rows = State::open(state_dir)?.captures(name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<14} {:<6} {:<5} {:>9} {:>9} {:>9} {:>7}  RESULT",
        "TIME (UTC)", "NAME", "KIND", "HOW", "SIZE", "READ", "NEW", "SECONDS"
    );
    for r in rows {
        let time = chrono::DateTime::from_timestamp_millis(r.started_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let secs = r
            .finished_ms
            .map(|f| format!("{:.1}", (f - r.started_ms) as f64 / 1000.0))
            .unwrap_or_default();
        let result = match (&r.result[..], &r.error, &r.record) {
            ("ok", _, Some(id)) => format!("ok {}@{}", r.name, short(id)),
            ("failed", Some(e), _) => format!("failed: {}", crate::cli::escape(e)),
            (other, _, _) => other.to_string(),
        };
        println!(
            "{time:<20} {:<14} {:<6} {:<5} {:>9} {:>9} {:>9} {secs:>7}  {result}",
            crate::cli::escape(&r.name),
            r.kind,
            r.how,
            human(r.logical_bytes),
            human(r.read_bytes),
            human(r.new_bytes)
        );
    }
    Ok(())
}

fn show(store_dir: &Path, spec: &str, json: bool) -> Result<()> {
    let store = Store::open(store_dir)?;
    let (m, r) = Record::load(&store, spec)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("capture {}@{} ({} capture)", r.name, short(&m.id), r.kind);
    let time = chrono::DateTime::from_timestamp(m.time, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    println!("  time       {time}");
    let sys = &r.system;
    println!(
        "  hostname   {}",
        sys.hostname.as_deref().unwrap_or("(unknown)")
    );
    println!(
        "  machine-id {}",
        sys.machine_id.as_deref().unwrap_or("(unknown)")
    );
    println!(
        "  boot       {} on {}",
        sys.boot_loader.as_deref().unwrap_or("(no loader found)"),
        if sys.firmware.is_empty() {
            "unknown firmware".to_string()
        } else {
            sys.firmware.join(" + ")
        }
    );
    for d in &r.disks {
        println!(
            "  disk {}     {} {:?}, snapshot {}",
            d.index,
            human(d.layout.size),
            d.layout.table,
            short(&d.snapshot)
        );
        for p in &d.layout.partitions {
            let fs = p.fs.as_ref();
            let mount = sys
                .fstab
                .iter()
                .find(|e| {
                    fs.and_then(|f| f.uuid.as_ref())
                        .is_some_and(|u| e.what.eq_ignore_ascii_case(&format!("UUID={u}")))
                })
                .map(|e| e.mount.clone())
                .unwrap_or_default();
            println!(
                "    {:>2}  {:>9}  {:<9}  {:<6} {:<36} {}",
                p.number,
                human(p.size),
                p.kind.as_deref().unwrap_or("-"),
                fs.map(|f| f.fs_type.as_str()).unwrap_or("-"),
                fs.and_then(|f| f.uuid.as_deref()).unwrap_or("-"),
                mount
            );
        }
    }
    let s = &r.stats;
    println!(
        "  captured   {} read of {}, {} new in the store, writes held {} ms, {:.1} s",
        human(s.read_bytes),
        human(s.logical_bytes),
        human(s.new_stored_bytes),
        s.pause_ms,
        s.seconds
    );
    for n in s.full_reads.iter().chain(&sys.notes) {
        println!("  note       {n}");
    }
    Ok(())
}
