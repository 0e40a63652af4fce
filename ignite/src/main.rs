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
    if cli.command.only_prints() {
        // Such a command ends quietly when its reader goes away (`ignite client show | grep
        // -q done`), as Unix tools do, instead of panicking on the failed print. Commands
        // that talk over sockets keep Rust's ignored SIGPIPE: a peer that hangs up is an
        // error they handle, not a reason to die.
        // SAFETY: no other thread runs yet; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ignite: {e:#}");
            ExitCode::from(1)
        }
    }
}
