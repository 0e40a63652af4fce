//! `ignite`: the one binary — CLI, server daemon, HTTP API and the in-guest install agent.

mod agent;
mod bootfiles;
mod cli;
mod clock;
mod guests;
mod initramfs;
mod media;

mod server;
mod state;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // As the initramfs /init the binary is the install agent (and never returns).
    if std::process::id() == 1 || std::env::args_os().next().is_some_and(|a| a == "/init") {
        agent::init::main();
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version on stdout and exits 0; usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    cli::init_logging(cli.verbose);
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ignite: {e:#}");
            ExitCode::from(1)
        }
    }
}
