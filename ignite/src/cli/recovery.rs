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
    /// since its last capture when the change log allows; or, with --server, this machine
    /// over the network (`make_net_recovery`): its running system at file level, or the
    /// disks or image files given with --disk at block level.
    Capture(CaptureArgs),
    /// Make a capture token for client NAME: for `ignite recovery capture --server` on it
    /// (printed), or with --agent the options of its next netboot capture (boot action
    /// `capture`).
    Token(TokenArgs),
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

#[derive(Args)]
struct CaptureArgs {
    /// The guest to capture (without --server).
    name: Option<String>,
    /// Capture this machine to the Ignite server at URL (`http://10.77.0.1:8080`).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The capture token (`ignite recovery token NAME` on the server).
    #[arg(long, env = "IGNITE_CAPTURE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Block level: read these disks or image files, which must not be in use (repeat).
    #[arg(long = "disk", value_name = "PATH")]
    disks: Vec<PathBuf>,
    /// File level: capture what is mounted under DIR as if it were / (default /).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Rules, as Ignite-UX: include=X,exclude=X (X a disk /dev/vdb, a file system or path,
    /// or DIR/* for a directory's contents); exclusions win; /, /bin, /boot, /etc, /lib,
    /// /lib64, /sbin, /usr cannot be excluded.
    #[arg(short = 'x', value_name = "RULES")]
    rules: Vec<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// The client's name: its captures are NAME, NAME:files, NAME:diskN.
    name: String,
    /// For the client's next netboot capture (boot action `capture`) instead of a live one.
    #[arg(long)]
    agent: bool,
    /// What to capture: `files` or `block` (default: the client's choice; a netboot
    /// capture takes block, a live one files).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Rules (see `capture -x`), checked now.
    #[arg(short = 'x', value_name = "RULES")]
    rules: Vec<String>,
    /// How long the token serves: 30m, 12h, 7d (at most 366d).
    #[arg(long, default_value = "24h")]
    ttl: String,
}

pub fn run(a: RecoveryArgs) -> Result<()> {
    let store_dir = a.store.clone().unwrap_or_else(|| a.state_dir.join("store"));
    match a.cmd {
        Cmd::Capture(c) if c.server.is_some() => net_capture(c),
        Cmd::Capture(c) => match (&c.name, c.disks.is_empty() && c.rules.is_empty()) {
            (Some(name), true) => capture(&a.state_dir, &store_dir, name),
            (Some(_), false) => {
                anyhow::bail!("--disk and -x are for captures over the network (--server URL)")
            }
            (None, _) => anyhow::bail!(
                "name the guest to capture, or capture this machine with --server URL"
            ),
        },
        Cmd::Token(t) => token(&a.state_dir, t),
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

/// `capture --server`: this machine, over the network.
fn net_capture(c: CaptureArgs) -> Result<()> {
    use ignite_recovery::capture::{files::Rules, record::CaptureKind, remote};
    let server = c.server.as_deref().unwrap_or_default();
    if c.name.is_some() {
        anyhow::bail!("with --server the token names what is captured; leave the name out");
    }
    let token = c.token.as_deref().context(
        "a capture needs a token: --token TOKEN or IGNITE_CAPTURE_TOKEN (on the server: ignite recovery token NAME)",
    )?;
    let job = remote::Job {
        kind: Some(if c.disks.is_empty() {
            CaptureKind::Files
        } else {
            CaptureKind::Block
        }),
        rules: Rules::parse(&c.rules)?,
        machine: remote::Machine::Live {
            root: c.root,
            images: c.disks,
        },
    };
    let client = remote::Client::new(server, token);
    let f = remote::with_progress(std::time::Duration::from_secs(10), |p| {
        remote::capture(&client, &job, p)
    })?;
    println!(
        "captured {} as {}@{} ({} capture): {} read of {}, {} new in the store, {} on the wire, {:.1} s",
        f.name,
        f.name,
        short(&f.record),
        f.kind,
        human(f.read_bytes),
        human(f.logical_bytes),
        human(f.new_bytes),
        human(f.wire_bytes),
        f.seconds
    );
    Ok(())
}

/// `token NAME`: a capture token, printed.
fn token(state_dir: &Path, t: TokenArgs) -> Result<()> {
    use ignite_recovery::capture::files::Rules;
    let kind = match t.kind.as_deref() {
        None => None,
        Some(k @ ("files" | "block")) => Some(k),
        Some(other) => anyhow::bail!("--kind {other:?}: use files or block"),
    };
    let rules = Rules::parse(&t.rules)?;
    rules.check_essentials()?;
    let ttl = parse_ttl(&t.ttl)?;
    let state = State::open(state_dir)?;
    let how = if t.agent { "agent" } else { "live" };
    if t.agent && state.find(&t.name)?.is_none() {
        anyhow::bail!(
            "{} is not a registered client; register it with `ignite client add MAC {}` first",
            t.name,
            t.name
        );
    }
    let token = state.create_capture_token(&t.name, how, kind, &rules.to_args().join(","), ttl)?;
    println!("{token}");
    if t.agent {
        eprintln!(
            "the next netboot capture of {} (ignite client set {} capture) uses these options",
            t.name, t.name
        );
    } else {
        eprintln!("on {}: curl -o ignite http://SERVER:PORT/ignite && chmod +x ignite && ./ignite recovery capture --server http://SERVER:PORT --token {token}", t.name);
    }
    Ok(())
}

/// `30m`, `12h`, `7d`, or seconds → milliseconds.
fn parse_ttl(text: &str) -> Result<i64> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = num
        .parse()
        .with_context(|| format!("--ttl {text:?}: write e.g. 30m, 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("--ttl {text:?}: the unit is s, m, h or d"),
    };
    if !(1..=366 * 86400).contains(&secs) {
        anyhow::bail!("--ttl {text:?}: between 1 s and 366 days");
    }
    Ok(secs * 1000)
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
