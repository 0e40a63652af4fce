//! `ignite agent`: the install agent's parts by hand (as /init it starts by itself).

use std::time::Duration;

use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};

use crate::agent::init;

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install as the initramfs agent would, on this machine, from the kernel command line
    /// (or --cmdline): DHCP on the ignite.mac= NIC, plan from ignite.server=, every step.
    Run {
        /// Use this instead of /proc/cmdline.
        #[arg(long)]
        cmdline: Option<String>,
    },
    /// Bring an interface up by DHCP with the agent's client; prints the lease.
    Dhcp {
        #[arg(long)]
        iface: String,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Run { cmdline } => {
            let text = match cmdline {
                Some(t) => t,
                None => std::fs::read_to_string("/proc/cmdline")?,
            };
            init::install(
                &init::parse_cmdline(&text),
                &mut crate::agent::modules::Modules::none(),
            )
        }
        Cmd::Dhcp {
            iface,
            timeout_secs,
        } => {
            let lease = init::bring_up(&iface, Duration::from_secs(timeout_secs))?;
            println!(
                "{iface}: {} netmask {} router {} server {}",
                lease.ip,
                lease.mask,
                lease
                    .router
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                lease.server
            );
            Ok(())
        }
    }
}
