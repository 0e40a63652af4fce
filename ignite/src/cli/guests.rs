//! `ignite vm create/start/stop/list/show/console/remove`: defined guests (see `crate::guests`).

use super::remote::{segment, ServerOpts};
use crate::guests::control::{self, Status};
use crate::guests::supervisor;
use crate::guests::{Definition, Engine, Paths};
use crate::server::api_v1::guests::{view, views, NewGuest, Removed, View};
use crate::state::State;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct StateDir {
    /// Directory of the state database (guest files go in its guests/ folder).
    #[arg(long, env = "IGNITE_STATE_DIR", default_value = "/var/lib/ignite")]
    pub(super) state_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Define a guest (stored in the state database; disks given as sizes are created).
    Create(CreateArgs),
    /// Start a defined guest detached (under a supervisor process).
    Start {
        name: String,
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Ask a running guest to power off and wait; --force ends it at once.
    Stop {
        name: String,
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the guest to power off.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// List defined guests with their state.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Show one guest's definition and state.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Attach to a running guest's serial console (Ctrl-] detaches).
    Console {
        name: String,
        #[command(flatten)]
        state: StateDir,
    },
    /// Remove a stopped guest's definition and the disk images created for it.
    Remove {
        name: String,
        /// Keep the disk images created for the guest (in its directory).
        #[arg(long)]
        keep_disks: bool,
        #[command(flatten)]
        state: StateDir,
        #[command(flatten)]
        api: ServerOpts,
    },
    #[command(name = "_supervise", hide = true)]
    Supervise {
        name: String,
        #[arg(long, value_enum)]
        engine: Engine,
        #[arg(long)]
        kvm: bool,
        #[arg(long)]
        why: String,
        #[command(flatten)]
        state: StateDir,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    guest: NewGuest,
    #[command(flatten)]
    state: StateDir,
    #[command(flatten)]
    api: ServerOpts,
}

impl Cmd {
    pub fn run(self) -> Result<()> {
        match self {
            Cmd::Create(a) => create(a),
            Cmd::Start { name, state, api } => {
                let s: Status = match api.remote(&state.state_dir)? {
                    Some(r) => r.call(
                        "POST",
                        &format!("/api/v1/guests/{}/start", segment(&name)),
                        None,
                    )?,
                    None => supervisor::start(&state.state_dir, &name)?,
                };
                println!(
                    "guest {name} started: engine {} ({}), pid {}; console: ignite vm console {name}",
                    s.engine, s.why, s.pid
                );
                Ok(())
            }
            Cmd::Stop {
                name,
                force,
                timeout,
                state,
                api,
            } => {
                match api.remote(&state.state_dir)? {
                    Some(r) => {
                        let path = format!(
                            "/api/v1/guests/{}/stop?force={force}&timeout={timeout}",
                            segment(&name)
                        );
                        r.call::<serde_json::Value>("POST", &path, None)?;
                    }
                    None => supervisor::stop(
                        &state.state_dir,
                        &name,
                        force,
                        Duration::from_secs(timeout),
                    )?,
                }
                println!("guest {name} stopped");
                Ok(())
            }
            Cmd::List { json, state, api } => {
                let views: Vec<View> = match api.remote(&state.state_dir)? {
                    Some(r) => r.get("/api/v1/guests")?,
                    None => views(&state.state_dir, &State::open(&state.state_dir)?)?,
                };
                match json {
                    true => println!("{}", serde_json::to_string_pretty(&views)?),
                    false => print!("{}", list_text(&views)),
                }
                Ok(())
            }
            Cmd::Show {
                name,
                json,
                state,
                api,
            } => {
                let v: View = match api.remote(&state.state_dir)? {
                    Some(r) => r.get(&format!("/api/v1/guests/{}", segment(&name)))?,
                    None => view(
                        &state.state_dir,
                        State::open(&state.state_dir)?.guest(&name)?,
                    )?,
                };
                match json {
                    true => println!("{}", serde_json::to_string_pretty(&v)?),
                    false => print!("{}", show_text(&v)),
                }
                Ok(())
            }
            Cmd::Console { name, state } => console(&state.state_dir, &name),
            Cmd::Remove {
                name,
                keep_disks,
                state,
                api,
            } => {
                let kept = match api.remote(&state.state_dir)? {
                    Some(r) => {
                        let path =
                            format!("/api/v1/guests/{}?keep_disks={keep_disks}", segment(&name));
                        r.call::<Removed>("DELETE", &path, None)?.kept
                    }
                    None => crate::guests::remove(&state.state_dir, &name, keep_disks)?,
                };
                removed(&name, keep_disks, &kept);
                Ok(())
            }
            Cmd::Supervise {
                name,
                engine,
                kvm,
                why,
                state,
            } => supervisor::supervise(&state.state_dir, &name, engine, kvm, why),
        }
    }
}

fn create(a: CreateArgs) -> Result<()> {
    let def: Definition = match a.api.remote(&a.state.state_dir)? {
        Some(r) => r.call(
            "POST",
            "/api/v1/guests",
            Some(serde_json::to_value(
                a.guest.clone().with_absolute_paths()?,
            )?),
        )?,
        None => crate::server::api_v1::guests::create(&a.state.state_dir, &a.guest)?,
    };
    println!("guest {} defined", def.name);
    for n in &def.nics {
        println!("  nic on bridge {}: mac {}", n.bridge, n.mac);
    }
    for d in &def.disks {
        println!("  disk {}", d.path.display());
    }
    Ok(())
}

fn uptime(s: &Status) -> String {
    let secs = (crate::state::now() - s.started).max(0);
    format!("{}h{:02}m{:02}s", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `vm list`'s table.
fn list_text(views: &[View]) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<8} {:>8} {:>5} {:>10}\n",
        "NAME", "STATE", "ENGINE", "PID", "CPUS", "UPTIME"
    );
    for v in views {
        let (engine, pid, up) = match &v.running {
            Some(s) => (s.engine.to_string(), s.pid.to_string(), uptime(s)),
            None => (v.record.def.engine.to_string(), "-".into(), "-".into()),
        };
        out += &format!(
            "{:<20} {:<8} {:<8} {:>8} {:>5} {:>10}\n",
            v.record.def.name, v.state, engine, pid, v.record.def.cpus, up
        );
    }
    out
}

/// `vm show`'s text.
fn show_text(v: &View) -> String {
    let d = &v.record.def;
    let mut out = format!("name:      {}\n", d.name);
    out += &format!("state:     {}\n", v.state);
    if let Some(s) = &v.running {
        out += &format!("engine:    {} ({})\n", s.engine, s.why);
        out += &format!("pid:       {}\n", s.pid);
        out += &format!("uptime:    {}\n", uptime(s));
    } else {
        out += &format!("engine:    {}\n", d.engine);
    }
    if let Some(r) = &v.record.last_stop {
        out += &format!("last stop: {r}\n");
    }
    out += &format!("memory:    {} MiB, {} vCPU(s)\n", d.mem >> 20, d.cpus);
    out += &format!("boot:      {}\n", d.boot);
    for x in &d.disks {
        out += &format!("disk:      {} ({:?})\n", x.path.display(), d.disk_bus);
    }
    for n in &d.nics {
        out += &format!(
            "nic:       {} on bridge {} ({:?})\n",
            n.mac, n.bridge, d.net_model
        );
    }
    out += &format!("console:   {}\n", v.console_log.display());
    if let Some(i) = &v.instant {
        let copied = match &i.progress {
            Some(p) => format!(
                "{}: {} of {} MiB, {} of {} disks done",
                p.state,
                p.copied >> 20,
                p.total >> 20,
                p.done_disks,
                p.disks
            ),
            None => "not started".to_string(),
        };
        let server = match i.server_pid {
            Some(pid) => format!("server pid {pid}"),
            None => format!(
                "its server does not run: `ignite recovery instant {} --resume`",
                d.name
            ),
        };
        out += &format!("instant:   {copied}; {server}\n");
    }
    out
}

fn removed(name: &str, keep_disks: bool, kept: &[PathBuf]) {
    if keep_disks {
        println!("guest {name} removed; kept its disk images:");
        for d in kept {
            println!("  {}", d.display());
        }
    } else {
        println!("guest {name} removed");
    }
}

/// Restores the terminal settings saved when the console attached.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use rustix::termios::{isatty, tcgetattr, tcsetattr, OptionalActions};
        let stdin = std::io::stdin();
        if !isatty(&stdin) {
            return RawMode(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = tcsetattr(&stdin, OptionalActions::Now, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

/// Ctrl-]: detaches from the console, as telnet's escape.
const DETACH: u8 = 0x1d;

fn console(state_dir: &Path, name: &str) -> Result<()> {
    State::open(state_dir)?.guest(name)?;
    let paths = Paths::new(state_dir, name);
    if control::status(&paths.control())?.is_none() {
        bail!(
            "guest {name} is not running; start it with `ignite vm start {name}` (its last console output is in {})",
            paths.console_log().display()
        );
    }
    let sock = std::os::unix::net::UnixStream::connect(paths.console()).with_context(|| {
        format!(
            "console socket {}: cannot connect",
            paths.console().display()
        )
    })?;
    eprintln!("ignite: attached to {name}'s console; Ctrl-] detaches\r");
    let raw = RawMode::enter();
    let mut from_guest = sock.try_clone()?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let output = done_tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from_guest.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
        let _ = output.send("the guest stopped");
    });
    let mut to_guest = sock;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut input = std::io::stdin();
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 {
                // End of input: keep showing output until the guest stops.
                return;
            }
            let data = &buf[..n];
            let (data, detach) = match data.iter().position(|&b| b == DETACH) {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            if to_guest.write_all(data).is_err() {
                break;
            }
            if detach {
                let _ = done_tx.send("detached");
                return;
            }
        }
        let _ = done_tx.send("the console closed");
    });
    let why = done_rx.recv().unwrap_or("the console closed");
    drop(raw);
    eprintln!("\r\nignite: {why}");
    Ok(())
}
