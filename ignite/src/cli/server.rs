//! `ignite server`: DHCP (or proxyDHCP), TFTP and HTTP boot in one daemon.

use std::path::PathBuf;

use clap::Args;

use crate::server::config::{Config, Overrides};

#[derive(Args)]
pub struct ServerArgs {
    /// TOML configuration file (every setting has a default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the state database (clients, leases, boot log).
    #[arg(long, env = "IGNITE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Interface of the boot network (default: the lab bridge ignite0).
    #[arg(long)]
    interface: Option<String>,
    /// Address pool FIRST-LAST (default: .100-.199 of the interface's subnet).
    #[arg(long, value_name = "FIRST-LAST")]
    dhcp_range: Option<String>,
    /// Only answer boot information, next to an existing DHCP server.
    #[arg(long)]
    proxy_dhcp: bool,
    /// Directory served over TFTP and HTTP (default: <state-dir>/boot).
    #[arg(long)]
    boot_dir: Option<PathBuf>,
    /// HTTP port for boot files, iPXE scripts and the API.
    #[arg(long)]
    http_port: Option<u16>,
    /// Install profiles directory (default: <state-dir>/profiles).
    #[arg(long)]
    profiles_dir: Option<PathBuf>,
    /// Archive store installs stream from (default: <state-dir>/store).
    #[arg(long, env = "IGNITE_STORE")]
    store: Option<PathBuf>,
    /// Install clients not in the registry when the default action is install (any
    /// machine on the boot network may then install, and read the golden image).
    #[arg(long)]
    install_unregistered: bool,
    /// Validate the configuration, list the boot files (present, missing, made at start)
    /// and exit; exit status 1 when a file the server cannot make is missing.
    #[arg(long)]
    check: bool,
    /// Make the missing boot files of the built-in defaults (iPXE, install kernel, agent
    /// initramfs) and exit.
    #[arg(long, conflicts_with = "check")]
    prepare: bool,
    /// Serve the boot directory as it is: make no missing boot file at start.
    #[arg(long, conflicts_with_all = ["check", "prepare"])]
    no_prepare: bool,
    /// Where downloaded Debian packages are kept between runs.
    #[arg(long, env = "IGNITE_CACHE_DIR", default_value = "/var/cache/ignite")]
    cache_dir: PathBuf,
}

pub fn run(a: ServerArgs) -> anyhow::Result<()> {
    let o = Overrides {
        state_dir: a.state_dir,
        interface: a.interface,
        dhcp_range: a.dhcp_range,
        proxy_dhcp: a.proxy_dhcp,
        boot_dir: a.boot_dir,
        http_port: a.http_port,
        profiles_dir: a.profiles_dir,
        store: a.store,
        install_unregistered: a.install_unregistered,
    };
    let cfg = Config::load(a.config.as_deref(), &o)?;
    if a.check {
        print!("{}", crate::server::run::check(&cfg)?);
        let missing = crate::server::prepare::missing(&cfg);
        anyhow::ensure!(
            !missing.iter().any(|f| !f.optional && f.maker.is_none()),
            "boot files are missing that the server cannot make (listed above)"
        );
        return Ok(());
    }
    if !a.no_prepare {
        crate::server::prepare::prepare(&cfg, &a.cache_dir)?;
    }
    if a.prepare {
        print!("{}", crate::server::prepare::listing(&cfg));
        return Ok(());
    }
    // Everything the server writes (state, tokens, captured images) is for root's eyes.
    crate::state::private_umask();
    // SIGHUP reads the same file with the same flags on top.
    let reload = move || Config::load(a.config.as_deref(), &o);
    crate::server::run::run(cfg, reload)
}
