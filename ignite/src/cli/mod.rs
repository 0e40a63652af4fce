//! Command-line surface. Each top-level command lives in its own module with an `Args` type
//! and a `run` function; this file only dispatches.

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
    /// The bundled virtual machine monitor.
    Vm(vm::Args),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Vm(a) => a.run(),
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
