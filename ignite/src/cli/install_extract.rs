//! `ignite install-extract` (hidden): the agent's network side by hand. Asks the server for
//! the install plan of a scheduled client, then extracts the plan's archive into a
//! directory, reporting progress as the agent does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args as ClapArgs;
use ignite_profiles::{ClientFacts, DiskFact};

use ignite_recovery::api_client::Endpoint;
use ignite_recovery::source::Http;
use ignite_recovery::{Phase, Source};

#[derive(ClapArgs)]
pub struct Args {
    /// The server, as ignite.server= gives it: http://IP:PORT or https://IP:PORT.
    #[arg(long)]
    server: String,
    /// For an https:// server, the pin of its authority (ignite.tls=).
    #[arg(long, value_name = "SHA256")]
    tls_pin: Option<String>,
    #[arg(long)]
    mac: String,
    #[arg(long)]
    token: String,
    /// Directory to extract into.
    #[arg(long, required_unless_present = "discard")]
    to: Option<PathBuf>,
    /// Fetch and check every chunk as an extraction would, write nothing, and print the
    /// batch latencies: a simulated agent, for measuring the server (scripts/bench-fleet)
    #[arg(long, conflicts_with_all = ["to", "done"])]
    discard: bool,
    /// A disk the client reports, PATH:SIZE[:SERIAL]; repeat for more.
    #[arg(long = "disk", value_parser = super::profile::parse_disk, default_value = "/dev/vda:20G")]
    disks: Vec<DiskFact>,
    /// Give up after the server has been unreachable this long (seconds).
    #[arg(long, default_value_t = 600)]
    give_up_after: u64,
    /// Chunk requests in flight.
    #[arg(long, default_value_t = 8)]
    fetchers: usize,
    /// Report the install done afterwards (the client then boots from its disk).
    #[arg(long)]
    done: bool,
}

pub fn run(a: Args) -> Result<()> {
    let endpoint = Endpoint::new(&a.server, a.tls_pin.as_deref())?;
    let mut server = Http::new(&endpoint, &a.mac, &a.token);
    server.give_up_after(Duration::from_secs(a.give_up_after));
    server.fetchers = a.fetchers;
    let facts = ClientFacts {
        mac: a.mac.clone(),
        disks: a.disks,
        hostname: None,
    };
    let plan = server.plan(&facts)?;
    eprintln!(
        "plan: profile {} for {}, archive {}",
        plan.profile, plan.hostname, plan.archive
    );
    let t0 = Instant::now();
    let Some(to) = a.to else {
        let f = server.fetch_all(&plan.archive)?;
        let ms = |q| f.latency(q).as_secs_f64() * 1000.0;
        println!(
            "fetched {} bytes in {} chunks of archive {} in {:.2} s; batches {}, latency p50 {:.1} ms, p99 {:.1} ms",
            f.bytes,
            f.chunks,
            plan.archive,
            t0.elapsed().as_secs_f64(),
            f.latencies.len(),
            ms(0.5),
            ms(0.99)
        );
        return Ok(());
    };
    let mut last = Instant::now();
    let mut report = |done: u64, total: u64| {
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            if let Err(e) = server.report(&Phase::Extracting { done, total }) {
                tracing::warn!("progress report: {e:#}");
            }
        }
    };
    let bytes = server.extract(&plan.archive, &to, &mut report)?;
    server.report(&Phase::Extracted { bytes })?;
    server.log(&format!(
        "extracted {bytes} bytes of {} into {}",
        plan.archive,
        to.display()
    ))?;
    if a.done {
        server.report(&Phase::Done)?;
    }
    println!(
        "extracted {bytes} bytes of archive {} into {} in {:.1} s",
        plan.archive,
        to.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
