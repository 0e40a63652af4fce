//! `ignite client`: the client registry (MAC → name and boot action).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use ignite_netboot::MacAddr;

use crate::state::{Action, State};

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
    /// List registered clients.
    List {
        #[arg(long)]
        json: bool,
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

pub fn run(a: ClientArgs) -> Result<()> {
    let state = State::open(&a.state_dir)?;
    match a.cmd {
        ClientCmd::Add { mac, name, action } => {
            let mac: MacAddr = mac.parse()?;
            let action = if action.is_empty() {
                Action::Local
            } else {
                Action::from_words(&action)?
            };
            state.add(mac, &name, &action)?;
            println!("added client {name} ({mac}): {action}");
        }
        ClientCmd::List { json } => {
            let list = state.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<18} {:<20} {:<28} LAST STEP", "MAC", "NAME", "ACTION");
                for c in list {
                    println!(
                        "{:<18} {:<20} {:<28} {}",
                        c.mac,
                        c.name,
                        c.action.to_string(),
                        c.last_step.unwrap_or_default()
                    );
                }
            }
        }
        ClientCmd::Show { client, json } => {
            let c = state.get(&client)?;
            let steps = state.steps(&c.mac, 20)?;
            if json {
                let v = serde_json::json!({ "client": c, "steps": steps });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "name:   {}\nmac:    {}\naction: {}",
                    c.name, c.mac, c.action
                );
                println!("recent boot steps:");
                for s in steps {
                    println!(
                        "  {} {} {} {}",
                        s.time,
                        s.ip.unwrap_or_else(|| "-".into()),
                        s.step,
                        s.detail
                    );
                }
            }
        }
        ClientCmd::Set { client, action } => {
            let c = state.set_action(&client, &Action::from_words(&action)?)?;
            println!("client {} ({}): {}", c.name, c.mac, c.action);
        }
        ClientCmd::Remove { client } => {
            let c = state.remove(&client)?;
            println!("removed client {} ({})", c.name, c.mac);
        }
        ClientCmd::Default { action } => {
            if action.is_empty() {
                match state.default_action()? {
                    Some(a) => println!("{a}"),
                    None => {
                        println!("(not set; the server config's [boot] default_action applies)")
                    }
                }
            } else {
                let a = Action::from_words(&action)?;
                state.set_default_action(&a)?;
                println!("unknown clients: {a}");
            }
        }
    }
    Ok(())
}
