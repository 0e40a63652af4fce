//! Starting, running and stopping the daemon.

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ignite_netboot::boot::{BootProvider, ClientMap};
use ignite_netboot::dhcp::{self, DhcpEngine};
use ignite_netboot::{http, iface, tftp};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::admin::{self, AdminToken};
use super::capture_api::CaptureApi;
use super::config::{resolve, Config, Resolved, LAB_ADDRESS, LAB_INTERFACE};
use super::install_api::InstallApi;
use super::provider::{RegistryProvider, StepWriter};
use super::serve;
use crate::state::boot_log::BootLogCaps;
use crate::state::State;

/// A service of the server (DHCP, TFTP, HTTP on some interface) as it ended: its name and
/// why, if it failed.
type Service = (String, std::result::Result<(), String>);

/// Waits for `stopped` (a signal), or for a service to end first, which is a failure: the
/// server must not go on with half its services (clients would boot without DHCP, say).
/// Returns that failure.
async fn until_stopped_or_failed(
    tasks: &mut JoinSet<Service>,
    stopped: impl std::future::Future<Output = ()>,
) -> Option<String> {
    tokio::select! {
        _ = stopped => None,
        Some(done) = tasks.join_next() => Some(match done {
            Ok((what, Err(e))) => format!("{what} failed: {e}"),
            Ok((what, Ok(()))) => format!("{what} ended on its own"),
            Err(e) if e.is_panic() => "a service panicked".to_string(),
            Err(_) => "a service was cancelled".to_string(),
        }),
    }
}

/// Forgets unregistered clients' installs whose tokens expired, every minute.
async fn prune_installs(state: Arc<State>, ttl_secs: u64, mut stop: watch::Receiver<bool>) {
    let ttl_ms = ttl_secs.saturating_mul(1000).min(i64::MAX as u64) as i64;
    loop {
        let st = state.clone();
        match tokio::task::spawn_blocking(move || st.prune_unregistered_installs(ttl_ms)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("forgot {n} expired installs of unregistered clients"),
            Ok(Err(e)) => tracing::warn!("pruning installs: {e:#}"),
            Err(e) => tracing::warn!("pruning installs: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

fn interface_address(i: &str) -> Result<(Ipv4Addr, u8)> {
    iface::ipv4_of(i).map_err(|e| {
        let hint = if i == LAB_INTERFACE {
            format!(
                "; for the built-in lab network create it: ip link add {i} type bridge && \
                 ip addr add {LAB_ADDRESS} dev {i} && ip link set {i} up (or pass --interface)"
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("{e}{hint}")
    })
}

/// One boot network: an interface, its address and what the server runs on it.
struct Net {
    name: String,
    ip: Ipv4Addr,
    prefix: u8,
    r: Resolved,
}

/// The configured interfaces with their settings. `planned_lab` stands in the lab bridge's
/// address when it does not exist yet (for --check, which creates nothing).
fn networks(cfg: &Config, planned_lab: bool) -> Result<Vec<Net>> {
    let mut nets = Vec::new();
    for name in cfg.interfaces() {
        let (ip, prefix) = if planned_lab && name == LAB_INTERFACE && lab_bridge_missing(cfg) {
            let (a, p) = LAB_ADDRESS.split_once('/').unwrap_or((LAB_ADDRESS, "24"));
            (a.parse()?, p.parse()?)
        } else {
            interface_address(&name)?
        };
        let r = resolve(cfg, &name, ip, prefix)?;
        nets.push(Net {
            name,
            ip,
            prefix,
            r,
        });
    }
    if nets.is_empty() {
        bail!("no interface given; pass --interface NAME (several: NAME,NAME)");
    }
    Ok(nets)
}

/// Whether the configured interface is the built-in lab bridge and does not exist yet.
fn lab_bridge_missing(cfg: &Config) -> bool {
    cfg.network.interface == LAB_INTERFACE
        && !std::path::Path::new("/sys/class/net")
            .join(LAB_INTERFACE)
            .exists()
}

/// The built-in lab network: with no --interface, `ignite server` creates the bridge
/// `ignite0` with 10.77.0.1/24, to which guests' tap devices attach.
fn create_lab_bridge() -> Result<()> {
    let ip = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .context("cannot run `ip` (package iproute2) to create the lab bridge")?;
        if !out.status.success() {
            bail!(
                "creating the lab bridge {LAB_INTERFACE}: ip {}: {}; create it by hand or pass --interface",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    ip(&["link", "add", LAB_INTERFACE, "type", "bridge"])?;
    ip(&["addr", "add", LAB_ADDRESS, "dev", LAB_INTERFACE])?;
    ip(&["link", "set", LAB_INTERFACE, "up"])?;
    tracing::info!(
        "created the lab bridge {LAB_INTERFACE} ({LAB_ADDRESS}); attach guests' taps to it"
    );
    Ok(())
}

/// Why installs cannot get their tokens with this configuration, if they cannot.
fn token_warning(cfg: &Config) -> Option<String> {
    (cfg.install.require_lease && !cfg.network.dhcp).then(|| {
        "DHCP is off, so the server knows no client's address and hands out no install \
         tokens ([install] require_lease): installs will be refused; turn DHCP or proxyDHCP \
         on, or set require_lease = false to trust the network"
            .to_string()
    })
}

/// `ignite server --check`: validates everything that can be checked without binding.
pub fn check(cfg: &Config) -> Result<String> {
    let nets = networks(cfg, true)?;
    let boot_dir = cfg.boot_dir();
    let mut warnings = Vec::new();
    if let Some(w) = token_warning(cfg) {
        warnings.push(w);
    }
    let mut out = String::new();
    for n in &nets {
        let mode = match n.r.dhcp.pool {
            _ if !cfg.network.dhcp => "no DHCP".to_string(),
            None => "proxyDHCP".to_string(),
            Some((a, b)) => format!("DHCP {a}-{b}"),
        };
        out += &format!(
            "config OK: interface {} ({}/{}), {mode}, TFTP {}, HTTP {}, state {}, boot files {}\n",
            n.name,
            n.ip,
            n.prefix,
            if cfg.network.tftp { "on" } else { "off" },
            n.r.http_base,
            cfg.state_dir.display(),
            boot_dir.display()
        );
    }
    out += &super::prepare::listing(cfg);
    for w in warnings {
        out += &format!("warning: {w}\n");
    }
    Ok(out)
}

pub fn run(cfg: Config) -> Result<()> {
    if lab_bridge_missing(&cfg) {
        create_lab_bridge()?;
    }
    let nets = networks(&cfg, false)?;
    let boot_dir = cfg.boot_dir();
    if !boot_dir.is_dir() {
        bail!(
            "boot directory {} does not exist; run `ignite server --prepare` or pass --boot-dir",
            boot_dir.display()
        );
    }
    if let Some(w) = token_warning(&cfg) {
        tracing::warn!("{w}");
    }
    let state = Arc::new(State::open(&cfg.state_dir)?);
    let admin_token = Arc::new(AdminToken::load_or_create(&cfg.state_dir)?);
    let tls = match cfg.install.tls {
        true => {
            let ips: Vec<_> = nets.iter().map(|n| n.ip).collect();
            Some(super::tls::load_or_create(&cfg.state_dir, &ips)?)
        }
        false => None,
    };
    let fallback = cfg.default_action()?;
    let dhcp_limits = cfg.limits.dhcp()?;
    let stop_scheduler = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scheduler = super::scheduler::Scheduler {
        state_dir: cfg.state_dir.clone(),
        store_dir: cfg.store_dir(),
        max_running: cfg.max_captures.max(1),
    }
    .spawn(stop_scheduler.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let clients = Arc::new(ClientMap::default());
        // Kernel command lines name the first network's server address.
        let http_base = nets[0].r.http_base.clone();
        let api_base = match &tls {
            Some(_) => format!("https://{}:{}", nets[0].ip, cfg.install.tls_port),
            None => http_base.clone(),
        };
        let caps = BootLogCaps {
            per_mac: cfg.limits.boot_log_per_client,
            total: cfg.limits.boot_log_total,
        };
        let provider: Arc<dyn BootProvider> = Arc::new(RegistryProvider {
            state: state.clone(),
            config: cfg.clone(),
            api_base,
            tls_pin: tls.as_ref().map(|t| t.pin.clone()),
            fallback,
            clients: clients.clone(),
            steps: StepWriter::start(state.clone(), caps),
        });
        let mut tasks: JoinSet<Service> = JoinSet::new();
        let mut services = Vec::new();
        let leases = match cfg.network.dhcp && !cfg.network.proxy_dhcp {
            true => Some(dhcp::shared(state.lease_store()?)),
            false => None,
        };
        for n in &nets {
            if cfg.network.dhcp {
                let proxy = n.r.dhcp.proxy();
                let mut engine = DhcpEngine::new(
                    n.r.dhcp.clone(),
                    leases.clone(),
                    provider.clone(),
                    clients.clone(),
                )?;
                engine.set_limits(dhcp_limits.clone())?;
                let socks = dhcp::bind(&n.name, proxy)?;
                let (what, rx) = (format!("DHCP on {}", n.name), stop_rx.clone());
                tasks.spawn(async move {
                    let r = dhcp::serve(engine, socks, rx).await;
                    (what, r.map_err(|e| e.to_string()))
                });
                services.push(match n.r.dhcp.pool {
                    Some((a, b)) => format!("{}: DHCP {a}-{b}", n.name),
                    None => format!("{}: proxyDHCP on 67+4011", n.name),
                });
            }
            if cfg.network.tftp {
                let mut tc = tftp::TftpConfig::new(
                    boot_dir.clone(),
                    n.ip,
                    Some(n.name.clone()),
                    n.r.http_base.clone(),
                );
                if let Some(b) = cfg.network.tftp_max_blksize {
                    tc.max_blksize = b.clamp(512, tftp::MAX_BLKSIZE);
                }
                tc.max_transfers = cfg.limits.tftp_transfers;
                tc.max_per_client = cfg.limits.tftp_transfers_per_client;
                let sock = tftp::bind(&tc)?;
                services.push(format!(
                    "{}: TFTP {}:69 (blksize <= {})",
                    n.name, n.ip, tc.max_blksize
                ));
                let what = format!("TFTP on {}", n.name);
                let run = tftp::run(tc, sock, provider.clone(), clients.clone(), stop_rx.clone());
                tasks.spawn(async move {
                    run.await;
                    (what, Ok(()))
                });
            }
        }
        let addr = SocketAddr::from(([0, 0, 0, 0], cfg.network.http_port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot bind HTTP on {addr}; is the port in use? (--http-port)")
        })?;
        let install_api = Arc::new(InstallApi::new(
            state.clone(),
            cfg.profiles_dir(),
            cfg.store_dir(),
            cfg.chunk_cache_mib << 20,
            &cfg.limits,
        ));
        let boot = http::router(Arc::new(http::HttpState {
            root: boot_dir.clone(),
            provider: provider.clone(),
            clients: clients.clone(),
            http_base: http_base.clone(),
        }))
        .merge(admin::protect(
            admin::routes(state.clone()).merge(install_api.clone().admin_router()),
            admin_token.clone(),
        ));
        // What agents talk to: beside the boot files, or alone on the HTTPS port.
        let agents = install_api
            .clone()
            .router()
            .merge(Arc::new(CaptureApi::new(state.clone(), cfg.store_dir())).router());
        let app = match &tls {
            Some(t) => {
                let ca = t.ca_der.clone();
                let agents = agents.route(
                    ignite_recovery::tls::CA_PATH,
                    axum::routing::get(move || async move { ca }),
                );
                let addr = SocketAddr::from(([0, 0, 0, 0], cfg.install.tls_port));
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot bind HTTPS on {addr}; is the port in use? ([install] tls_port)")
                })?;
                let (rx, limits, acceptor) =
                    (stop_rx.clone(), cfg.limits.clone(), t.acceptor.clone());
                tasks.spawn(async move {
                    let r = serve::serve(listener, agents, &limits, rx, Some(acceptor)).await;
                    ("HTTPS".to_string(), r.map_err(|e| e.to_string()))
                });
                services.push(format!(
                    "HTTPS on port {} (install and capture API; agents pin the authority {}, SHA-256 {})",
                    cfg.install.tls_port,
                    t.ca_path.display(),
                    t.pin
                ));
                boot
            }
            None => boot.merge(agents),
        };
        let (rx, limits) = (stop_rx.clone(), cfg.limits.clone());
        tasks.spawn(async move {
            let r = serve::serve(listener, app, &limits, rx, None).await;
            ("HTTP".to_string(), r.map_err(|e| e.to_string()))
        });
        let (rx, st, ttl_secs) = (stop_rx.clone(), state.clone(), cfg.install.token_ttl_secs);
        tasks.spawn(async move {
            prune_installs(st, ttl_secs, rx).await;
            ("install pruning".to_string(), Ok(()))
        });
        let (rx, st) = (stop_rx.clone(), state.clone());
        let (silent, agent) = (cfg.install.agent_silent_secs, cfg.boot.initrd.clone());
        tasks.spawn(async move {
            super::install_api::watch_silent_agents(st, silent, agent, rx).await;
            ("silent agent watch".to_string(), Ok(()))
        });
        services.push(format!(
            "HTTP on port {} ({}install API: profiles {}, store {})",
            cfg.network.http_port,
            if cfg.install.tls { "boot files; HTTPS " } else { "" },
            cfg.profiles_dir().display(),
            cfg.store_dir().display()
        ));
        let on: Vec<String> = nets
            .iter()
            .map(|n| format!("{} ({}/{})", n.name, n.ip, n.prefix))
            .collect();
        tracing::info!(
            "ignite server ready on {}: {}; boot files in {}; admin API token in {}",
            on.join(", "),
            services.join(", "),
            boot_dir.display(),
            admin::token_path(&cfg.state_dir).display()
        );

        let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        let stopped = async {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        let failure = until_stopped_or_failed(&mut tasks, stopped).await;
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("some transfers did not finish within 5 s; stopping anyway");
        }
        match failure {
            Some(why) => {
                tracing::error!("ignite server stopped: {why}");
                Err(anyhow::anyhow!(
                    "{why}; the server stopped rather than run without it"
                ))
            }
            None => {
                tracing::info!("ignite server stopped");
                Ok(())
            }
        }
    });
    // A transfer thread still waiting for a vanished client must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    // Captures already running are left to end with the process: each leaves a store that
    // verifies, and its history row is marked interrupted at the next capture of its name.
    stop_scheduler.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = scheduler.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_dhcp_and_lease_bound_tokens_is_named() {
        let mut cfg = Config::default();
        assert_eq!(token_warning(&cfg), None);
        cfg.network.dhcp = false;
        assert!(token_warning(&cfg)
            .unwrap()
            .contains("require_lease = false"));
        cfg.install.require_lease = false;
        assert_eq!(token_warning(&cfg), None);
    }

    #[tokio::test]
    async fn a_service_that_ends_stops_the_server_with_its_reason() {
        let mut tasks: JoinSet<Service> = JoinSet::new();
        tasks.spawn(std::future::pending());
        tasks.spawn(async { ("DHCP on br0".into(), Err("socket task panicked".into())) });
        let why = until_stopped_or_failed(&mut tasks, std::future::pending()).await;
        assert_eq!(
            why.as_deref(),
            Some("DHCP on br0 failed: socket task panicked")
        );
        tasks.spawn(async { ("TFTP on br0".into(), Ok(())) });
        let why = until_stopped_or_failed(&mut tasks, std::future::pending()).await;
        assert_eq!(why.as_deref(), Some("TFTP on br0 ended on its own"));
        // A signal with every service running is a clean stop.
        let why = until_stopped_or_failed(&mut tasks, async {}).await;
        assert_eq!(why, None);
    }
}
