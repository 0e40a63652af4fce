//! `ignite client`: the client registry (MAC → name and boot action).
//!
//! Much of what these commands print was sent by clients on the boot network (file names
//! in boot steps, install logs, failure messages): control characters are printed escaped
//! (`\u{1b}`), so no client can move the admin's cursor or retitle their terminal.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use ignite_netboot::MacAddr;

use super::remote::{segment, Remote, ServerOpts};
use crate::server::api_v1::clients::DefaultAction;
use crate::state::clients::not_registered;
use crate::state::installs::{phase_name, Install, PhaseRecord, Status};
use crate::state::views::{ClientDetail, ClientView, InstallLog, LogOf};
use crate::state::{Action, Client, State, StepRecord};
use ignite_recovery::Phase;

#[derive(Args)]
pub struct ClientArgs {
    /// Directory of the state database.
    #[arg(
        long,
        env = "IGNITE_STATE_DIR",
        default_value = "/var/lib/ignite",
        global = true
    )]
    state_dir: PathBuf,
    #[command(flatten)]
    api: ServerOpts,
    #[command(subcommand)]
    cmd: ClientCmd,
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Register a client: MAC, name and boot action (default: local).
    Add {
        mac: String,
        name: String,
        /// install <profile> | local | recover <snapshot> | capture
        action: Vec<String>,
    },
    /// List registered clients with their install phase and progress.
    List {
        #[arg(long)]
        json: bool,
        /// Refresh every second until no install is running.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Print a client's install log (its latest install).
    Log {
        client: String,
        /// Keep printing new lines until the install ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Show one client (by MAC or name) with its recent boot steps.
    Show {
        client: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a client's boot action.
    Set {
        client: String,
        /// install <profile> | local | recover <snapshot> | capture
        #[arg(required = true)]
        action: Vec<String>,
    },
    /// Remove a client from the registry.
    Remove { client: String },
    /// Show or set the action for clients not in the registry.
    Default { action: Vec<String> },
}

/// Where the registry is read and changed: the local state database, or a server's API.
enum Registry {
    Local(State),
    Api(Remote),
}

impl Registry {
    fn open(a: &ClientArgs) -> Result<Registry> {
        Ok(match a.api.remote(&a.state_dir)? {
            Some(r) => Registry::Api(r),
            None => Registry::Local(State::open(&a.state_dir)?),
        })
    }

    fn rows(&self) -> Result<Vec<ClientView>> {
        match self {
            Registry::Local(s) => s.client_views(),
            Registry::Api(r) => r.get("/api/v1/clients"),
        }
    }

    fn detail(&self, key: &str) -> Result<ClientDetail> {
        match self {
            Registry::Local(s) => match s.client_detail(key)? {
                Some(d) => Ok(d),
                None => Err(s
                    .get(key)
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("client {key:?} is not registered"))),
            },
            Registry::Api(r) => r.get(&format!("/api/v1/clients/{}", segment(key))),
        }
    }

    fn add(&self, mac: &str, name: &str, action: &[String]) -> Result<Client> {
        match self {
            Registry::Local(s) => {
                let mac: MacAddr = mac.parse()?;
                let action = match action.is_empty() {
                    true => Action::Local,
                    false => Action::from_words(action)?,
                };
                s.add(mac, name, &action)?;
                s.get(&mac.to_string())
            }
            Registry::Api(r) => {
                let action = (!action.is_empty()).then(|| action.join(" "));
                let body = serde_json::json!({ "mac": mac, "name": name, "action": action });
                r.call("POST", "/api/v1/clients", Some(body))
            }
        }
    }

    fn set(&self, key: &str, action: &[String]) -> Result<Client> {
        match self {
            Registry::Local(s) => s.set_action(key, &Action::from_words(action)?),
            Registry::Api(r) => {
                let body = serde_json::json!({ "action": action.join(" ") });
                let path = format!("/api/v1/clients/{}/action", segment(key));
                r.call("PUT", &path, Some(body))
            }
        }
    }

    fn install_log(&self, key: &str, after: i64) -> Result<InstallLog> {
        match self {
            Registry::Local(s) => match s.install_log(key, after)? {
                LogOf::Log(l) => Ok(*l),
                LogOf::NoClient => Err(not_registered(key)),
                LogOf::NoInstall => anyhow::bail!(
                    "client {key}: no install was ever scheduled; `ignite client set {key} install PROFILE`"
                ),
            },
            Registry::Api(r) => r.get(&format!(
                "/api/v1/clients/{}/log?after={after}",
                segment(key)
            )),
        }
    }

    fn default_action(&self) -> Result<Option<String>> {
        match self {
            Registry::Local(s) => Ok(s.default_action()?.map(|a| a.to_string())),
            Registry::Api(r) => Ok(r.get::<DefaultAction>("/api/v1/clients/default")?.action),
        }
    }

    /// Sets the action for unregistered clients; the action as set.
    fn set_default(&self, action: &[String]) -> Result<String> {
        match self {
            Registry::Local(s) => {
                let a = Action::from_words(action)?;
                s.set_default_action(&a)?;
                Ok(a.to_string())
            }
            Registry::Api(r) => {
                let body = serde_json::json!({ "action": action.join(" ") });
                let set: DefaultAction = r.call("PUT", "/api/v1/clients/default", Some(body))?;
                Ok(set.action.unwrap_or_default())
            }
        }
    }

    fn remove(&self, key: &str) -> Result<Client> {
        match self {
            Registry::Local(s) => s.remove(key),
            Registry::Api(r) => {
                r.call("DELETE", &format!("/api/v1/clients/{}", segment(key)), None)
            }
        }
    }
}

pub fn run(a: ClientArgs) -> Result<()> {
    let reg = Registry::open(&a)?;
    match &a.cmd {
        ClientCmd::Add { mac, name, action } => {
            let c = reg.add(mac, name, action)?;
            println!("added client {} ({}): {}", c.name, c.mac, c.action);
        }
        ClientCmd::List { json, watch } => {
            if *json {
                println!("{}", serde_json::to_string_pretty(&reg.rows()?)?);
            } else if *watch {
                loop {
                    let r = reg.rows()?;
                    // Clear the screen and home the cursor between refreshes.
                    print!("\x1b[2J\x1b[H{}", table(&r));
                    if !r.iter().any(|r| running(&r.install)) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            } else {
                print!("{}", table(&reg.rows()?));
            }
        }
        ClientCmd::Show { client, json } => {
            let d = reg.detail(client)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", show(&d));
            }
        }
        ClientCmd::Set { client, action } => {
            let c = reg.set(client, action)?;
            println!("client {} ({}): {}", c.name, c.mac, c.action);
        }
        ClientCmd::Remove { client } => {
            let c = reg.remove(client)?;
            println!("removed client {} ({})", c.name, c.mac);
        }
        ClientCmd::Log { client, follow } => log(&reg, client, *follow)?,
        ClientCmd::Default { action } => default(&reg, action)?,
    }
    Ok(())
}

/// Prints client `key`'s install log; with `follow`, until the install is no longer active.
fn log(reg: &Registry, key: &str, follow: bool) -> Result<()> {
    let mut after = 0;
    loop {
        let l = reg.install_log(key, after)?;
        for line in &l.lines {
            println!("{}", printable(line.text.trim_end_matches('\n'), true));
            after = line.id;
        }
        if !follow || !running(&Some(l.install)) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn default(reg: &Registry, action: &[String]) -> Result<()> {
    if action.is_empty() {
        match reg.default_action()? {
            Some(a) => println!("{a}"),
            None => println!("(not set; the server config's [boot] default_action applies)"),
        }
    } else {
        println!("unknown clients: {}", reg.set_default(action)?);
    }
    Ok(())
}

/// `client show`'s text: the client, its latest install's timeline, its recent boot steps.
fn show(d: &ClientDetail) -> String {
    let c = &d.client;
    let mut out = format!(
        "name:   {}\nmac:    {}\naction: {}\n",
        printable(&c.name, false),
        c.mac,
        printable(&c.action.to_string(), false)
    );
    if let Some(i) = &d.install {
        out += &printable(&timeline(i, &d.phases, &d.steps), true);
    }
    out += "recent boot steps:\n";
    for s in &d.steps {
        out += &format!(
            "  {} {} {} {}\n",
            s.time,
            s.ip.as_deref().unwrap_or("-"),
            s.step,
            printable(&s.detail, false)
        );
    }
    out
}

fn running(i: &Option<Install>) -> bool {
    i.as_ref().is_some_and(|i| i.status == Status::Active)
}

fn mb(b: u64) -> u64 {
    b.div_ceil(1_000_000)
}

/// `extracting 41% 120/290 MB`, `done`, `failed: why`, `scheduled`.
fn install_state(i: &Install) -> String {
    match (&i.phase, i.status) {
        (_, Status::Replaced) => String::new(),
        (None, _) => format!("scheduled ({})", i.profile),
        (Some(Phase::Extracting { done, total }), _) => format!(
            "extracting {}% {}/{} MB",
            (done * 100).checked_div(*total).unwrap_or(0),
            mb(*done),
            mb(*total)
        ),
        (Some(Phase::Failed { error, .. }), _) => format!("failed: {error}"),
        (Some(p), _) => phase_name(p).to_string(),
    }
}

fn table(rows: &[ClientView]) -> String {
    let mut out = format!(
        "{:<18} {:<20} {:<24} {:<28} LAST STEP\n",
        "MAC", "NAME", "ACTION", "INSTALL"
    );
    for r in rows {
        let c = &r.client;
        out += &format!(
            "{:<18} {:<20} {:<24} {:<28} {}\n",
            c.mac,
            printable(&c.name, false),
            printable(&c.action.to_string(), false),
            printable(
                &r.install.as_ref().map(install_state).unwrap_or_default(),
                false
            ),
            printable(c.last_step.as_deref().unwrap_or_default(), false)
        );
    }
    out
}

/// `s` with control characters escaped (`\u{1b}`, `\r`), keeping line breaks and tabs if
/// `lines`: what a client sent cannot drive the terminal.
fn printable(s: &str, lines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if lines => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.extend(c.escape_default()),
            // Bidirectional overrides reorder what the admin reads.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The install's phases with how long each took (from the previous one; the first from the
/// client's first network-boot step after scheduling, which makes it the boot time).
fn timeline(i: &Install, phases: &[PhaseRecord], steps: &[StepRecord]) -> String {
    let mut out = format!(
        "install: profile {}, {}{}\n",
        i.profile,
        i.status.as_str(),
        i.snapshot
            .as_ref()
            .map(|s| format!(", snapshot {s}"))
            .unwrap_or_default()
    );
    let boot_start = steps
        .iter()
        .map(|s| s.time * 1000)
        .find(|&t| t >= i.created_ms - 999);
    let start = boot_start.unwrap_or(i.created_ms);
    let mut prev = start;
    // Extraction progress is folded into `extracted`, which ends the extract phase.
    for p in phases
        .iter()
        .filter(|p| !matches!(p.phase, Phase::Extracting { .. }))
    {
        let name = phase_name(&p.phase);
        let detail = match &p.phase {
            Phase::Booted { ip } => format!(" ({ip})"),
            Phase::Extracted { bytes } => format!(" ({} MB)", mb(*bytes)),
            Phase::Failed { error, .. } => format!(": {error}"),
            _ => String::new(),
        };
        out += &format!("  {name:<12} {:>9}{detail}\n", secs(p.time_ms - prev));
        prev = p.time_ms;
    }
    if prev > start {
        out += &format!("  {:<12} {:>9}\n", "total", secs(prev - start));
    }
    if let (Status::Failed, Some(Phase::Failed { error, log_tail })) = (i.status, &i.phase) {
        out += &format!("cause: {error}\n");
        if !log_tail.trim().is_empty() {
            out += "last lines the agent (or the boot log) reported:\n";
            for l in log_tail.lines() {
                out += &format!("  | {l}\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_install_shows_its_cause_and_the_agents_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let mac: MacAddr = "52:54:00:00:02:01".parse().unwrap();
        s.add(mac, "nodisk", &"install web".parse().unwrap())
            .unwrap();
        let i = s.current_install(&mac.to_string()).unwrap().unwrap();
        s.record_phase(
            &i.token,
            &Phase::Booted {
                ip: "10.0.0.9".into(),
            },
        )
        .unwrap();
        s.record_phase(
            &i.token,
            &Phase::Failed {
                error: "no disk appeared within 20 s; storage controllers seen: none".into(),
                log_tail: "loaded virtio_net\nloaded \u{1b}[2J".into(),
            },
        )
        .unwrap();
        let i = s.current_install(&mac.to_string()).unwrap().unwrap();
        let text = printable(&timeline(&i, &s.phases(&i.token).unwrap(), &[]), true);
        assert!(text.contains("install: profile web, failed\n"), "{text}");
        assert!(
            text.contains("cause: no disk appeared within 20 s; storage controllers seen: none\n"),
            "{text}"
        );
        assert!(
            text.contains("  | loaded virtio_net\n  | loaded \\u{1b}[2J\n"),
            "{text}"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("tftp \u{1b}]0;pwned\u{7}\u{1b}[2Jx\r\u{9b}31m", false),
            "tftp \\u{1b}]0;pwned\\u{7}\\u{1b}[2Jx\\r\\u{9b}31m"
        );
        assert_eq!(printable("a\tb\nc", false), "a\\tb\\nc");
        assert_eq!(printable("a\tb\nc\u{1b}", true), "a\tb\nc\\u{1b}");
        assert_eq!(printable("\u{202e}gpj.exe", false), "\\u{202e}gpj.exe");
        assert_eq!(printable("plain é ✓", false), "plain é ✓");
    }
}
