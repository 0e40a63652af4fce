//! Command-line surface. Each top-level command lives in its own module with an `Args` type
//! and a `run` function; this file only dispatches.

mod agent;
mod archive;
mod client;
mod guests;
mod install;
mod install_extract;
mod media;
mod netboot;
mod netboot_bench;
mod profile;
mod progress;
mod recovery;
mod server;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ignite",
    version,
    about = "Network install and image backup server"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The archive store: import, export, verify, prune, gc.
    Archive(archive::Args),
    /// Run the boot server: DHCP (or proxyDHCP), TFTP and HTTP.
    Server(server::ServerArgs),
    /// Manage the client registry (MAC → boot action).
    Client(client::ClientArgs),
    /// Network boot tools: fetch boot files, list leases.
    Netboot(netboot::NetbootArgs),
    /// The bundled virtual machine monitor.
    Vm(vm::Args),
    /// Install profiles: check them, render a client's install plan.
    Profile(profile::Args),
    /// Captures of guests and clients (make_net_recovery): capture, history, records.
    Recovery(recovery::RecoveryArgs),
    /// Install a profile onto a disk of this machine from a local store.
    Install(install::Args),
    /// The install agent's parts by hand (DHCP, a whole network install).
    Agent(agent::Args),
    /// The media library: ISO images and virtual tapes for guests' drives.
    Media(media::Args),
    /// The agent's network side by hand: fetch a plan and extract its archive into a
    /// directory, as an install would (for tests and debugging).
    #[command(hide = true)]
    InstallExtract(install_extract::Args),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Archive(a) => archive::run(a),
            Command::Server(a) => server::run(a),
            Command::Client(a) => client::run(a),
            Command::Netboot(a) => netboot::run(a),
            Command::Vm(a) => a.run(),
            Command::Profile(a) => profile::run(a),
            Command::Recovery(a) => {
                // Captures write store packs and snapshots of whole systems: private.
                crate::state::private_umask();
                recovery::run(a)
            }
            Command::Install(a) => install::run(a),
            Command::Agent(a) => agent::run(a),
            Command::Media(a) => media::run(a),
            Command::InstallExtract(a) => install_extract::run(a),
        }
    }
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `s` with control characters shown as escapes: names and messages that came from the
/// network or a guest must not drive the admin's terminal.
pub fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
