//! Starting, running and stopping the daemon.

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ignite_netboot::boot::{BootProvider, ClientMap};
use ignite_netboot::dhcp::{self, DhcpEngine};
use ignite_netboot::{http, iface, tftp, MacAddr};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::config::{resolve, Config, Resolved, LAB_ADDRESS, LAB_INTERFACE};
use super::install_api::InstallApi;
use super::provider::RegistryProvider;
use crate::state::State;

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

/// `ignite server --check`: validates everything that can be checked without binding.
pub fn check(cfg: &Config) -> Result<String> {
    let nets = networks(cfg, true)?;
    let boot_dir = cfg.boot_dir();
    let mut warnings = Vec::new();
    if !boot_dir.is_dir() {
        warnings.push(format!(
            "boot directory {} does not exist; run `ignite netboot fetch-boot-files --boot-dir {}`",
            boot_dir.display(),
            boot_dir.display()
        ));
    } else {
        for f in [&cfg.boot.bios, &cfg.boot.efi_x64, &cfg.boot.kernel] {
            if !boot_dir.join(f).is_file() {
                warnings.push(format!(
                    "boot file {} is missing in {}",
                    f,
                    boot_dir.display()
                ));
            }
        }
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
    for w in warnings {
        out += &format!("warning: {w}\n");
    }
    Ok(out)
}

fn api(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/api/clients",
            get(|AxState(s): AxState<Arc<State>>| async move {
                s.list()
                    .map(Json)
                    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")))
            }),
        )
        .route(
            "/api/clients/{mac}/installed",
            post(
                |AxState(s): AxState<Arc<State>>, Path(mac): Path<String>| async move {
                    let mac: MacAddr = mac
                        .parse()
                        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
                    let c = s
                        .install_finished(mac)
                        .map_err(|e| (StatusCode::CONFLICT, format!("{e:#}\n")))?;
                    tracing::info!(
                        "client {} ({}) installed; next boot: local disk",
                        c.name,
                        c.mac
                    );
                    Ok::<_, (StatusCode, String)>(Json(c))
                },
            ),
        )
        .with_state(state)
}

pub fn run(cfg: Config) -> Result<()> {
    if lab_bridge_missing(&cfg) {
        create_lab_bridge()?;
    }
    let nets = networks(&cfg, false)?;
    let boot_dir = cfg.boot_dir();
    if !boot_dir.is_dir() {
        bail!(
            "boot directory {} does not exist; run `ignite netboot fetch-boot-files --boot-dir {}` or pass --boot-dir",
            boot_dir.display(),
            boot_dir.display()
        );
    }
    let state = Arc::new(State::open(&cfg.state_dir)?);
    let fallback = cfg.default_action()?;
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
        let provider: Arc<dyn BootProvider> = Arc::new(RegistryProvider {
            state: state.clone(),
            config: cfg.clone(),
            http_base: http_base.clone(),
            fallback,
        });
        let mut tasks = tokio::task::JoinSet::new();
        let mut services = Vec::new();
        let leases = match cfg.network.dhcp && !cfg.network.proxy_dhcp {
            true => Some(dhcp::shared(state.lease_store()?)),
            false => None,
        };
        for n in &nets {
            if cfg.network.dhcp {
                let proxy = n.r.dhcp.proxy();
                let engine = DhcpEngine::new(
                    n.r.dhcp.clone(),
                    leases.clone(),
                    provider.clone(),
                    clients.clone(),
                )?;
                let socks = dhcp::bind(&n.name, proxy)?;
                tasks.spawn(dhcp::run(engine, socks, stop_rx.clone()));
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
                let sock = tftp::bind(&tc)?;
                services.push(format!(
                    "{}: TFTP {}:69 (blksize <= {})",
                    n.name, n.ip, tc.max_blksize
                ));
                tasks.spawn(tftp::run(
                    tc,
                    sock,
                    provider.clone(),
                    clients.clone(),
                    stop_rx.clone(),
                ));
            }
        }
        let addr = SocketAddr::from(([0, 0, 0, 0], cfg.network.http_port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot bind HTTP on {addr}; is the port in use? (--http-port)")
        })?;
        let app = http::router(Arc::new(http::HttpState {
            root: boot_dir.clone(),
            provider: provider.clone(),
            clients: clients.clone(),
            http_base: http_base.clone(),
        }))
        .merge(api(state.clone()))
        .merge(
            Arc::new(InstallApi::new(
                state.clone(),
                cfg.profiles_dir(),
                cfg.store_dir(),
                cfg.chunk_cache_mib << 20,
            ))
            .router(),
        )
        .merge(
            Arc::new(super::capture_api::CaptureApi::new(
                state.clone(),
                cfg.store_dir(),
            ))
            .router(),
        );
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            if let Err(e) = http::serve(listener, app, rx).await {
                tracing::error!("HTTP server: {e}");
            }
        });
        services.push(format!(
            "HTTP on port {} (install API: profiles {}, store {})",
            cfg.network.http_port,
            cfg.profiles_dir().display(),
            cfg.store_dir().display()
        ));
        let on: Vec<String> = nets
            .iter()
            .map(|n| format!("{} ({}/{})", n.name, n.ip, n.prefix))
            .collect();
        tracing::info!(
            "ignite server ready on {}: {}; boot files in {}",
            on.join(", "),
            services.join(", "),
            boot_dir.display()
        );

        let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("some transfers did not finish within 5 s; stopping anyway");
        }
        tracing::info!("ignite server stopped");
        Ok(())
    });
    // A transfer thread still waiting for a vanished client must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}
