//! `ignite recovery`: captures of guests and clients (`make_net_recovery`), their history and
//! records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ignite_archive::Store;
use ignite_profiles::human;
use ignite_recovery::capture::diff as capture_diff;
use ignite_recovery::capture::record::{short, Record};

use crate::cli::progress::with_progress;
use crate::cli::recovery_remote;
use crate::cli::remote::{query, segment, ServerOpts};
use crate::guests::capture::capture_guest;
use crate::guests::control::Pending;
use crate::guests::instant;
use crate::guests::restore::{CloneAs, InstantOptions};
use crate::guests::verify_boot::verify_boot;
use crate::state::captures::CaptureRow;
use crate::state::schedules::{parse_at, parse_every, Keep, Options, Schedule, VerifyBoot};
use crate::state::State;
use ignite_recovery::capture::retention;
use ignite_recovery::restore;

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
    /// since its last capture when the change log allows (with --server URL: the guest of
    /// that server, as a job of its API); or, with --server and no NAME, this machine over
    /// the network (`make_net_recovery`): its running system at file level, or the disks or
    /// image files given with --disk at block level.
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
        #[command(flatten)]
        api: ServerOpts,
    },
    /// A capture's record: disks, layouts, file systems, identity, source.
    Show {
        /// NAME (its latest capture), NAME@latest or NAME@ID.
        capture: String,
        #[arg(long)]
        json: bool,
        /// Print an install profile with the recorded layout, file systems, boot loader and
        /// hostname (a files capture installs its own tree; give a block capture --archive).
        #[arg(long, conflicts_with = "json")]
        profile: bool,
        /// The archive such a profile installs (default for a files capture: its tree).
        #[arg(long, requires = "profile")]
        archive: Option<String>,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// What changed between two captures of NAME (default: the last two; A and B are capture
    /// ids or NAME@ID).
    Diff {
        name: String,
        a: Option<String>,
        b: Option<String>,
        #[arg(long)]
        json: bool,
        /// Paths listed per file system at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// What changed on guest NAME since its last capture, without capturing
    /// (`check_net_recovery`): changed bytes per disk and file system.
    Check {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Capture a guest on a schedule (run by `ignite server`), with retention after each
    /// successful capture; `schedule list` and `schedule remove NAME` manage them.
    Schedule(ScheduleArgs),
    /// Restore a capture: its disks onto image files or block devices (`--to`, one per disk in
    /// order), or as a replacement guest with the recorded definition, MACs and identity
    /// (`--as-guest NEW`). Every chunk is verified first; a disk too small is refused before
    /// anything is written.
    Restore {
        /// NAME (its latest capture), NAME@latest or NAME@ID.
        capture: String,
        #[arg(long, value_name = "DISK_OR_IMAGE", conflicts_with = "as_guest")]
        to: Vec<PathBuf>,
        #[arg(long, value_name = "NEW")]
        as_guest: Option<String>,
        #[command(flatten)]
        instant: InstantArgs,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Recovery media (`make_tape_recovery`): a bootable ISO (BIOS and UEFI) holding the
    /// install kernel, the agent initramfs and the capture; booted with no network, it
    /// restores the capture onto the machine's disks (asking on the console unless --yes),
    /// then reboots.
    Media {
        /// NAME (its latest capture), NAME@latest or NAME@ID.
        capture: String,
        #[arg(long, value_name = "OUT.iso")]
        iso: PathBuf,
        /// Where the install kernel (debian/vmlinuz) and the agent initramfs
        /// (ignite/initrd.img) are, as `ignite server --prepare` makes them
        /// (default: <state-dir>/boot).
        #[arg(long)]
        boot_dir: Option<PathBuf>,
        /// Restore without asking on the booted machine's console (`ignite.yes`).
        #[arg(long)]
        yes: bool,
    },
    /// A new guest from a capture with a new identity, written into its image before the
    /// first boot: hostname and /etc/hosts, machine-id, SSH host keys, MACs in network
    /// configuration and udev rules, DHCP leases, random seed. Nothing else differs.
    Clone {
        /// NAME (its latest capture), NAME@latest or NAME@ID.
        capture: String,
        /// The new guest's name.
        #[arg(long = "as", value_name = "NEW")]
        new: String,
        /// Its hostname (default: NEW).
        #[arg(long)]
        hostname: Option<String>,
        /// MACs for its NICs in order (default: generated).
        #[arg(long)]
        mac: Vec<String>,
        #[command(flatten)]
        instant: InstantArgs,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// An instant restore or clone still copying its disks: where the copy is, whether its
    /// server runs; `--rate` changes the copy's speed limit, `--resume` starts the server
    /// again (after a reboot of this host, or if it was killed).
    Instant {
        /// The guest made with --instant.
        name: String,
        /// Speed limit of the background copy, per second (e.g. 20M; 0: none).
        #[arg(long, value_name = "SIZE")]
        rate: Option<String>,
        #[arg(long)]
        resume: bool,
        #[arg(long)]
        json: bool,
    },
    /// The server of an instant restore (started by --instant; see `recovery instant`).
    #[command(name = "_instant-serve", hide = true)]
    InstantServe { name: String },
    /// Apply a retention policy to a guest's captures now (then `ignite archive gc`).
    Prune {
        name: String,
        #[command(flatten)]
        keep: KeepArgs,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
}

#[derive(Args)]
struct InstantArgs {
    /// Instant restore (QEMU engine): the guest can start at once, its disks served from the
    /// store on demand (reads of blocks not yet restored fetch them first; writes go to the
    /// guest's own disk) while they are copied in the background as it runs; then it runs
    /// from its own disks alone. `ignite recovery instant NEW` shows the copy.
    #[arg(long)]
    instant: bool,
    /// Speed limit of the background copy, per second (e.g. 20M; default: none).
    #[arg(long, value_name = "SIZE", requires = "instant")]
    rate: Option<String>,
}

impl InstantArgs {
    fn options(&self) -> Result<Option<InstantOptions>> {
        if !self.instant {
            return Ok(None);
        }
        Ok(Some(InstantOptions {
            rate: self
                .rate
                .as_deref()
                .map(parse_rate)
                .transpose()?
                .unwrap_or(0),
        }))
    }
}

fn parse_rate(s: &str) -> Result<u64> {
    ignite_profiles::parse_bytes(s)
        .or_else(|_| s.trim().parse::<u64>().map_err(|e| e.to_string()))
        .map_err(|e| anyhow::anyhow!("--rate {s:?}: {e}; give bytes per second, e.g. 20M"))
}

#[derive(Args)]
struct ScheduleArgs {
    /// The guest to capture; or `list`, or `remove NAME`.
    words: Vec<String>,
    /// First run of the day, HH:MM UTC.
    #[arg(long, default_value = "02:00")]
    at: String,
    /// Repeat period, e.g. 1d, 12h, 1w.
    #[arg(long, default_value = "1d")]
    every: String,
    #[command(flatten)]
    keep: KeepArgs,
    #[command(flatten)]
    verify: VerifyArgs,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ServerOpts,
}

#[derive(Args)]
struct VerifyArgs {
    /// Then prove the capture boots: clone it into a throwaway guest on an isolated bridge,
    /// boot it, wait for --verify-marker on its serial console, record "boots" or "does not
    /// boot" (with the console's tail) in the capture history, and remove the guest.
    #[arg(long)]
    verify_boot: bool,
    /// What the console shows once the system is up.
    #[arg(long, default_value = "login:", requires = "verify_boot")]
    verify_marker: String,
    /// Seconds the boot may take.
    #[arg(long, default_value_t = 600, requires = "verify_boot")]
    verify_timeout: u64,
}

impl VerifyArgs {
    fn options(&self) -> Option<VerifyBoot> {
        self.verify_boot.then(|| VerifyBoot {
            marker: self.verify_marker.clone(),
            timeout_secs: self.verify_timeout,
        })
    }
}

#[derive(Args)]
struct KeepArgs {
    #[arg(long)]
    keep_last: Option<u32>,
    #[arg(long)]
    keep_daily: Option<u32>,
    #[arg(long)]
    keep_weekly: Option<u32>,
    #[arg(long)]
    keep_monthly: Option<u32>,
}

impl KeepArgs {
    fn keep(&self) -> Keep {
        Keep {
            last: self.keep_last,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
        }
    }
}

#[derive(Args)]
struct CaptureArgs {
    /// The guest to capture (with --server: a guest of that server).
    name: Option<String>,
    /// Without NAME: capture this machine to the Ignite server at URL
    /// (`http://10.77.0.1:8080`, or `https://10.77.0.1:8443` with --tls-pin). With NAME:
    /// have that server capture its guest NAME (--token is then its admin token, default
    /// IGNITE_TOKEN or the server's own on its host).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The pin of an https:// server's authority (`ignite server` logs it at start).
    #[arg(long, value_name = "SHA256", requires = "server")]
    tls_pin: Option<String>,
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
    #[command(flatten)]
    verify: VerifyArgs,
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
    /// How long the token serves: 12h, 7d, 2w (at most 366 days).
    #[arg(long, default_value = "24h")]
    ttl: String,
}

pub fn run(a: RecoveryArgs) -> Result<()> {
    let store_dir = a.store.clone().unwrap_or_else(|| a.state_dir.join("store"));
    match a.cmd {
        Cmd::Capture(c) if c.server.is_some() && c.verify.verify_boot => {
            anyhow::bail!("--verify-boot runs where the guest is: on the server, without --server")
        }
        Cmd::Capture(c) if c.server.is_some() && c.name.is_some() => {
            if !(c.disks.is_empty() && c.rules.is_empty() && c.tls_pin.is_none()) {
                anyhow::bail!(
                    "--disk, -x and --tls-pin are for capturing this machine (--server URL without a NAME)"
                );
            }
            let api = ServerOpts {
                server: c.server.clone(),
                token: c
                    .token
                    .clone()
                    .or_else(|| std::env::var("IGNITE_TOKEN").ok()),
            };
            let name = c.name.as_deref().expect("matched");
            match api.remote_if_asked(&a.state_dir)? {
                Some(r) => recovery_remote::capture(&r, name),
                None => capture(&a.state_dir, &store_dir, name, None),
            }
        }
        Cmd::Capture(c) if c.server.is_some() => net_capture(c),
        Cmd::Capture(c) => match (&c.name, c.disks.is_empty() && c.rules.is_empty()) {
            (Some(name), true) => capture(&a.state_dir, &store_dir, name, c.verify.options()),
            (Some(_), false) => {
                anyhow::bail!("--disk and -x are for captures over the network (--server URL)")
            }
            (None, _) => anyhow::bail!(
                "name the guest to capture, or capture this machine with --server URL"
            ),
        },
        Cmd::Token(t) => token(&a.state_dir, t),
        Cmd::List { name, json, api } => {
            let rows = match api.remote_if_asked(&a.state_dir)? {
                Some(r) => r.get(&match &name {
                    Some(n) => format!("/api/v1/recovery?name={}", segment(n)),
                    None => "/api/v1/recovery".into(),
                })?,
                None => State::open(&a.state_dir)?.captures(name.as_deref())?,
            };
            print_captures(rows, json)
        }
        Cmd::Show {
            capture,
            profile: true,
            archive,
            api,
            ..
        } => {
            let text = match api.remote_if_asked(&a.state_dir)? {
                Some(remote) => {
                    let (name, id) = recovery_remote::split_capture(&capture);
                    let q = query(&[("snapshot", id), ("archive", archive.as_deref())]);
                    let p: ShownProfile =
                        remote.get(&format!("/api/v1/recovery/{}/profile{q}", segment(name)))?;
                    p.profile
                }
                None => {
                    let (m, r) = Record::load(&Store::open(&store_dir)?, &capture)?;
                    ignite_recovery::capture::as_profile::profile_for(&m, &r, archive.as_deref())?
                }
            };
            print!("{text}");
            Ok(())
        }
        Cmd::Show {
            capture, json, api, ..
        } => {
            let (m, r) = match api.remote_if_asked(&a.state_dir)? {
                Some(remote) => {
                    let (name, id) = recovery_remote::split_capture(&capture);
                    let q = query(&[("snapshot", id)]);
                    let v: ShownRecord =
                        remote.get(&format!("/api/v1/recovery/{}{q}", segment(name)))?;
                    (v.snapshot, v.record)
                }
                None => Record::load(&Store::open(&store_dir)?, &capture)?,
            };
            print_record(&m, &r, json)
        }
        Cmd::Schedule(s) => schedule(&a.state_dir, s),
        Cmd::Diff {
            name,
            a: from,
            b: to,
            json,
            limit,
            api,
        } => {
            let compared = match api.remote_if_asked(&a.state_dir)? {
                Some(r) => {
                    let q = query(&[("a", from.as_deref()), ("b", to.as_deref())]);
                    let s: ShownDiff =
                        r.get(&format!("/api/v1/recovery/{}/diff{q}", segment(&name)))?;
                    (s.from, s.to, s.diff)
                }
                None => {
                    let store = Arc::new(Store::open(&store_dir)?);
                    let ((ma, ra), (mb, rb)) =
                        capture_diff::pick_two(&store, &name, from.as_deref(), to.as_deref())?;
                    (ma, mb, capture_diff::diff(store, &ra, &rb)?)
                }
            };
            print_diff(compared, &name, json, limit)
        }
        Cmd::Check { name, json, api } => check(&a.state_dir, &store_dir, &name, json, &api),
        Cmd::Prune {
            name,
            keep,
            dry_run,
            api,
        } => match api.remote_if_asked(&a.state_dir)? {
            Some(r) => recovery_remote::prune(&r, &name, &keep.keep(), dry_run),
            None => prune(&store_dir, &name, &keep.keep(), dry_run),
        },
        Cmd::Restore {
            capture,
            to,
            as_guest,
            instant,
            api,
        } => match (api.remote_if_asked(&a.state_dir)?, as_guest) {
            (Some(r), as_guest) => recovery_remote::restore(
                &r,
                &capture,
                &to,
                as_guest.as_deref(),
                instant.options()?.map(|o| o.rate),
            ),
            (None, Some(new)) => restore_guest(
                &a.state_dir,
                &store_dir,
                &capture,
                &new,
                None,
                instant.options()?,
            ),
            (None, None) if instant.instant => {
                anyhow::bail!("--instant restores as a guest: add --as-guest NEW")
            }
            (None, None) => restore_to(&store_dir, &capture, &to),
        },
        Cmd::Instant {
            name,
            rate,
            resume,
            json,
        } => instant_status(&a.state_dir, &name, rate.as_deref(), resume, json),
        Cmd::InstantServe { name } => instant::serve(&a.state_dir, &name),
        Cmd::Media {
            capture,
            iso,
            boot_dir,
            yes,
        } => {
            let boot = boot_dir.unwrap_or_else(|| a.state_dir.join("boot"));
            media(&store_dir, &boot, &capture, &iso, yes)
        }
        Cmd::Clone {
            capture,
            new,
            hostname,
            mac,
            instant,
            api,
        } => {
            if let Some(r) = api.remote_if_asked(&a.state_dir)? {
                return recovery_remote::clone(
                    &r,
                    &capture,
                    &new,
                    hostname.as_deref(),
                    &mac,
                    instant.options()?.map(|o| o.rate),
                );
            }
            let hostname = hostname.unwrap_or_else(|| new.clone());
            if let Some(why) = ignite_profiles::hostname_problem(&hostname) {
                anyhow::bail!("hostname {hostname:?} {why}; give a valid one with --hostname");
            }
            let c = CloneAs {
                hostname,
                macs: mac,
                bridge: None,
            };
            restore_guest(
                &a.state_dir,
                &store_dir,
                &capture,
                &new,
                Some(&c),
                instant.options()?,
            )
        }
    }
}

fn schedule(state_dir: &Path, a: ScheduleArgs) -> Result<()> {
    let remote = a.api.remote_if_asked(state_dir)?;
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["list"] => {
            let all: Vec<Schedule> = match &remote {
                Some(r) => r.get("/api/v1/schedules")?,
                None => State::open(state_dir)?.schedules()?,
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            println!(
                "{:<16} {:>5} {:>8} {:<20} {:<24} LAST RESULT",
                "NAME", "AT", "EVERY", "NEXT RUN (UTC)", "KEEP"
            );
            for s in all {
                println!(
                    "{:<16} {:>5} {:>8} {:<20} {:<24} {}",
                    crate::cli::escape(&s.name),
                    s.at(),
                    period(s.every_secs),
                    utc(s.next_run),
                    keep_text(&s.keep),
                    s.last_result
                        .as_deref()
                        .map(crate::cli::escape)
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        ["remove", name] => {
            match &remote {
                Some(r) => {
                    let path = format!("/api/v1/schedules/{}", segment(name));
                    r.call::<serde_json::Value>("DELETE", &path, None)?;
                }
                None => State::open(state_dir)?.remove_schedule(name)?,
            }
            println!("schedule of {name} removed");
            Ok(())
        }
        [name] => {
            let keep = a.keep.keep();
            let verify_boot = a.verify.options();
            let s = match &remote {
                Some(r) => {
                    let body = serde_json::json!({
                        "at": a.at, "every": a.every, "keep_last": keep.last,
                        "keep_daily": keep.daily, "keep_weekly": keep.weekly,
                        "keep_monthly": keep.monthly, "verify_boot": verify_boot,
                    });
                    let path = format!("/api/v1/schedules/{}", segment(name));
                    r.call("PUT", &path, Some(body))?
                }
                None => {
                    let state = State::open(state_dir)?;
                    state.guest(name).with_context(|| {
                        format!("schedules capture defined guests; {name} is not one")
                    })?;
                    state.set_schedule(
                        name,
                        parse_at(&a.at)?,
                        parse_every(&a.every)?,
                        &keep,
                        &Options { verify_boot },
                        crate::clock::now(),
                    )?
                }
            };
            println!(
                "{name}: captured at {} UTC every {}, keeping {}{}; next run {} UTC (by `ignite server`)",
                s.at(),
                period(s.every_secs),
                keep_text(&s.keep),
                if a.verify.verify_boot { ", each capture test-booted" } else { "" },
                utc(s.next_run)
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "use `ignite recovery schedule NAME --at HH:MM [--every 1d] [--keep-...]`, \
             `schedule list` or `schedule remove NAME`"
        ),
    }
}

fn prune(store_dir: &Path, name: &str, keep: &Keep, dry_run: bool) -> Result<()> {
    let store = Store::open(store_dir)?;
    let r = retention::prune(&store, name, &keep.policy(), dry_run)?;
    for line in r.lines(name, dry_run) {
        println!("{line}");
    }
    Ok(())
}

fn keep_text(k: &Keep) -> String {
    let parts: Vec<String> = [
        ("last", k.last),
        ("daily", k.daily),
        ("weekly", k.weekly),
        ("monthly", k.monthly),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
    .collect();
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(", ")
    }
}

fn period(secs: u64) -> String {
    match secs {
        s if s % 604800 == 0 => format!("{}w", s / 604800),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{}m", s / 60),
    }
}

fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn capture(
    state_dir: &Path,
    store_dir: &Path,
    name: &str,
    verify: Option<VerifyBoot>,
) -> Result<()> {
    let state = State::open(state_dir)?;
    let store = Arc::new(Store::open_or_init(store_dir)?);
    let c = capture_guest(state_dir, &state, store.clone(), name)?;
    for line in c.summary() {
        println!("{line}");
    }
    if let Some(v) = verify {
        println!(
            "test-booting {name}@{} on the isolated bridge",
            short(&c.snapshot.id)
        );
        let verdict = verify_boot(
            state_dir,
            &state,
            store,
            c.history,
            &format!("{name}@{}", c.snapshot.id),
            &v.check(),
        )?;
        println!(
            "{name}@{}: {}",
            short(&c.snapshot.id),
            crate::cli::escape(&verdict)
        );
        anyhow::ensure!(verdict.starts_with("boots"), "the capture does not boot");
    }
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
    let endpoint = ignite_recovery::api_client::Endpoint::new(server, c.tls_pin.as_deref())?;
    let client = remote::Client::new(&endpoint, token);
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

/// A token's lifetime as `schedule --every` writes durations (12h, 7d, 2w), in ms.
fn parse_ttl(text: &str) -> Result<i64> {
    let secs = ignite_archive::retention::parse_duration(text)
        .with_context(|| format!("--ttl {text:?}"))?;
    if secs > 366 * 86400 {
        anyhow::bail!("--ttl {text:?}: a token serves at most 366 days");
    }
    Ok(secs * 1000)
}

fn restore_to(store_dir: &Path, spec: &str, to: &[PathBuf]) -> Result<()> {
    let store = Store::open(store_dir)?;
    let (from, disks) = crate::server::api_v1::recovery::plan_disk_restore(&store, spec, to)?;
    let t = std::time::Instant::now();
    for d in disks {
        let (index, dm, path) = (d.index, d.manifest, &d.path);
        let written = with_progress(dm.image_size, &format!("disk {index}"), |p| {
            restore::restore_disk(&store, &dm, path, p)
        })?;
        println!(
            "restored {from} disk {index} to {}: {} of {} written",
            path.display(),
            human(written),
            human(dm.image_size.unwrap_or(0))
        );
    }
    println!("restore done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn media(store_dir: &Path, boot: &Path, spec: &str, iso: &Path, yes: bool) -> Result<()> {
    use ignite_recovery::media::{write_iso, MediaFiles};
    let store = Store::open(store_dir)?;
    let files = MediaFiles {
        kernel: boot.join("debian/vmlinuz"),
        initrd: boot.join(crate::server::config::AGENT_INITRD),
        cmdline: "console=tty0 console=ttyS0,115200".into(),
        yes,
    };
    let t = std::time::Instant::now();
    let w = write_iso(&store, spec, &files, iso)?;
    println!(
        "recovery media for {} written to {}: {} ({} chunks, {} of them), {:.1} s",
        w.capture,
        iso.display(),
        human(w.iso_bytes),
        w.chunks,
        human(w.stored_bytes),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn restore_guest(
    state_dir: &Path,
    store_dir: &Path,
    spec: &str,
    new: &str,
    clone: Option<&CloneAs>,
    instant: Option<InstantOptions>,
) -> Result<()> {
    let state = State::open(state_dir)?;
    let store = Arc::new(Store::open(store_dir)?);
    let t = std::time::Instant::now();
    let r = with_progress(None, "restoring", |p| {
        crate::guests::restore::restore_guest(
            state_dir,
            &state,
            store,
            spec,
            new,
            clone,
            instant.as_ref(),
            p,
        )
    })?;
    let verb = if clone.is_some() {
        "cloned"
    } else {
        "restored"
    };
    println!(
        "{verb} {} as guest {new} ({} written, {:.1} s)",
        r.from,
        human(r.bytes_written),
        t.elapsed().as_secs_f64()
    );
    for n in &r.def.nics {
        println!("  nic on bridge {}: mac {}", n.bridge, n.mac);
    }
    for d in &r.def.disks {
        println!("  disk {}", d.path.display());
    }
    if !r.changed.is_empty() {
        println!("  identity changed in: {}", r.changed.join(" "));
    }
    if instant.is_some() {
        println!(
            "  its disks are copied from the store in the background while it runs; \
             `ignite recovery instant {new}` shows the copy"
        );
    }
    println!("start it with `ignite vm start {new}`");
    Ok(())
}

/// `ignite recovery instant NAME`.
fn instant_status(
    state_dir: &Path,
    name: &str,
    rate: Option<&str>,
    resume: bool,
    json: bool,
) -> Result<()> {
    State::open(state_dir)?.guest(name)?;
    let dir = crate::guests::guest_dir(state_dir, name);
    let pending = instant::pending(&dir);
    if let Some(r) = rate {
        if !pending {
            anyhow::bail!("guest {name} has no instant restore in progress");
        }
        instant::set_rate(&dir, parse_rate(r)?)?;
    }
    let mut pid = instant::server_pid(&dir);
    if resume && pending && pid.is_none() {
        instant::spawn_server(state_dir, name)?;
        pid = instant::server_pid(&dir);
    }
    let progress = instant::progress(&dir);
    if json {
        println!(
            "{}",
            serde_json::json!({"guest": name, "pending": pending, "server_pid": pid,
                               "progress": progress})
        );
        return Ok(());
    }
    let Some(p) = progress.filter(|_| pending || pid.is_some()) else {
        println!("{name}: no instant restore in progress (its disks are its own)");
        return Ok(());
    };
    println!(
        "{name}: {} ({} of {} copied, {} of {} disk(s) done)",
        p.state,
        human(p.copied),
        human(p.total),
        p.done_disks,
        p.disks
    );
    match pid {
        Some(pid) => println!(
            "  server: pid {pid}, log {}",
            instant::log_path(&dir).display()
        ),
        None if pending => println!(
            "  its server is not running: the guest cannot start (or stalls on blocks not yet \
             copied); start it again with `ignite recovery instant {name} --resume`"
        ),
        None => {}
    }
    Ok(())
}

fn print_captures(rows: Vec<CaptureRow>, json: bool) -> Result<()> {
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
            ("ok", _, Some(id)) => match &r.boot_check {
                Some(v) => format!(
                    "ok {}@{}, {}",
                    r.name,
                    short(id),
                    crate::cli::escape(v.lines().next().unwrap_or(""))
                ),
                None => format!("ok {}@{}", r.name, short(id)),
            },
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

/// A capture as an install profile, as `GET /api/v1/recovery/{name}/profile` gives it.
#[derive(serde::Deserialize)]
struct ShownProfile {
    profile: String,
}

/// A capture as `GET /api/v1/recovery/{name}` gives it.
#[derive(serde::Deserialize)]
struct ShownRecord {
    snapshot: ignite_archive::Manifest,
    record: Record,
}

fn print_record(m: &ignite_archive::Manifest, r: &Record, json: bool) -> Result<()> {
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

/// The capture records of `name`, oldest first.
/// Two captures of a source and what changed between them, as
/// `GET /api/v1/recovery/{name}/diff` gives them.
#[derive(serde::Deserialize)]
struct ShownDiff {
    from: ignite_archive::Manifest,
    to: ignite_archive::Manifest,
    diff: capture_diff::CaptureDiff,
}

fn print_diff(
    (ma, mb, d): (
        ignite_archive::Manifest,
        ignite_archive::Manifest,
        capture_diff::CaptureDiff,
    ),
    name: &str,
    json: bool,
    limit: usize,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("{name}@{} -> {name}@{}", short(&ma.id), short(&mb.id));
    for r in &d.regions {
        println!("disk {}: {} changed", r.disk, human(r.changed_bytes));
        for (n, mount, bytes) in &r.partitions {
            println!(
                "  partition {n:<2} {:>9}  {}",
                human(*bytes),
                mount
                    .as_deref()
                    .unwrap_or(if *n == 0 { "(outside partitions)" } else { "" })
            );
        }
    }
    for (disk, part, mount, changes) in &d.files {
        println!(
            "files of {} (disk {disk} partition {part}): {} change(s)",
            mount.as_deref().unwrap_or("?"),
            changes.len()
        );
        for c in changes.iter().take(limit) {
            println!("  {}", change_line(c));
        }
        if changes.len() > limit {
            println!("  ... {} more (--limit, --json)", changes.len() - limit);
        }
    }
    Ok(())
}

fn change_line(c: &ignite_archive::diff::Change) -> String {
    use ignite_archive::diff::Change;
    match c {
        Change::Added { path } => format!("+ {}", crate::cli::escape(path)),
        Change::Removed { path } => format!("- {}", crate::cli::escape(path)),
        Change::Changed { path, what } => {
            format!("~ {} ({})", crate::cli::escape(path), what.join(", "))
        }
    }
}

fn check(
    state_dir: &Path,
    store_dir: &Path,
    name: &str,
    json: bool,
    api: &ServerOpts,
) -> Result<()> {
    let (pending, last): (Vec<Pending>, Option<Record>) = match api.remote_if_asked(state_dir)? {
        Some(r) => {
            let pending = r.get(&format!("/api/v1/recovery/{}/check", segment(name)))?;
            // (No capture yet: the check says why each disk is read in full.)
            let last = r
                .get::<ShownRecord>(&format!("/api/v1/recovery/{}", segment(name)))
                .ok()
                .map(|s| s.record);
            (pending, last)
        }
        None => {
            let state = State::open(state_dir)?;
            let pending = crate::guests::capture::pending_changes(state_dir, &state, name)?;
            let last = Store::open(store_dir)
                .ok()
                .and_then(|s| Record::load(&s, name).ok().map(|(_, r)| r));
            (pending, last)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&pending)?);
        return Ok(());
    }
    for p in &pending {
        match (&p.base, &p.why) {
            (Some(base), _) => println!(
                "disk {}: {} written since capture {}",
                p.index,
                human(p.bytes),
                short(base)
            ),
            (None, Some(why)) => {
                println!("disk {}: the next capture reads it in full: {why}", p.index)
            }
            _ => {}
        }
        let (Some(ranges), Some(rec)) = (&p.ranges, &last) else {
            continue;
        };
        let Some(d) = rec.disks.iter().find(|d| d.index == p.index) else {
            continue;
        };
        let r = capture_diff::regions(p.index, ranges, &d.layout, &rec.system);
        for (n, mount, bytes) in r.partitions {
            println!(
                "  partition {n:<2} {:>9}  {}",
                human(bytes),
                mount.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}
