//! Command-line surface. Each top-level command lives in its own module with an `Args` type
//! and a `run` function; this file only dispatches.

mod agent;
mod archive;
mod client;
mod docs;
mod guests;
mod install;
mod install_extract;
mod media;
mod netboot;
mod netboot_bench;
mod profile;
mod progress;
mod recovery;
mod recovery_remote;
mod remote;
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
    ///
    /// The HTTP side also serves the install, capture and admin APIs. SIGTERM or SIGINT
    /// stop it. SIGHUP re-reads --config: [boot] kernel,
    /// cmdline and default_action and [install] unregistered, require_lease, token_ttl_secs
    /// and max_unregistered apply to the next boot; other changes wait for a restart, and
    /// the log names them. Under systemd (ignite.service, which reads
    /// /etc/ignite/server.toml) it reports readiness and status with sd_notify and logs to
    /// the journal.
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
    /// Write the man pages and shell completions of this CLI under a directory tree (for
    /// packaging: scripts/package-deb).
    #[command(hide = true)]
    GenerateDocs(docs::Args),
}

impl Command {
    /// Whether the command only reads local state and prints: no socket of its own.
    pub fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Archive(_) | Command::Client(_) | Command::Profile(_)
        )
    }

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
            Command::GenerateDocs(a) => docs::run(a),
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
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        // journald stamps each line itself; the `<N>` prefix files it under its level.
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false);
        fmt.event_format(journal::Priority(format)).init();
    } else {
        fmt.init();
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM=DEV:INODE` to the
/// stream it connected, which a child's redirected stderr no longer is (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr())
        .is_ok_and(|st| journal::names_stream(&v.to_string_lossy(), st.st_dev, st.st_ino))
}

mod journal {
    use std::fmt;

    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    /// Whether `JOURNAL_STREAM`'s `DEV:INODE` is the stream with this device and inode.
    pub fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
        value.split_once(':').is_some_and(|(d, i)| {
            d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
        })
    }

    /// The inner format with sd-daemon(3)'s priority prefix (`<3>` error ... `<7>` debug).
    pub struct Priority<F>(pub F);

    impl<S, N, F> FormatEvent<S, N> for Priority<F>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            ev: &Event<'_>,
        ) -> fmt::Result {
            let p = match *ev.metadata().level() {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                _ => 7,
            };
            write!(w, "<{p}>")?;
            self.0.format_event(ctx, w, ev)
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn journal_stream_must_name_this_very_stream() {
            assert!(super::names_stream("64769:123456", 64769, 123456));
            assert!(!super::names_stream("64769:123456", 64769, 123457));
            assert!(!super::names_stream("64769", 64769, 0));
            assert!(!super::names_stream("x:y", 0, 0));
        }

        #[test]
        fn each_line_carries_its_priority_and_no_timestamp() {
            use std::io::{Read, Seek};
            let file = tempfile::tempfile().unwrap();
            let mut written = file.try_clone().unwrap();
            let format = tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false);
            let sub = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .event_format(super::Priority(format))
                .finish();
            tracing::subscriber::with_default(sub, || {
                tracing::warn!("disk low");
                tracing::info!("ready");
            });
            let mut text = String::new();
            written.rewind().unwrap();
            written.read_to_string(&mut text).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            // The priority, then the level and message with nothing before them (no time).
            let words = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            assert_eq!(words(lines[0]), "<4> WARN", "{text}");
            assert_eq!(words(lines[1]), "<6> INFO", "{text}");
            assert!(lines[0].ends_with("disk low") && lines[1].ends_with("ready"));
        }
    }
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
