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
use ignite_netboot::leases::LeaseStore;
use ignite_netboot::{http, iface, tftp, MacAddr};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::config::{resolve, Config, LAB_ADDRESS, LAB_INTERFACE};
use super::provider::RegistryProvider;
use crate::state::{db_path, State};

fn interface_address(cfg: &Config) -> Result<(Ipv4Addr, u8)> {
    let i = &cfg.network.interface;
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

/// `ignite server --check`: validates everything that can be checked without binding.
pub fn check(cfg: &Config) -> Result<String> {
    let (ip, prefix) = interface_address(cfg)?;
    let r = resolve(cfg, ip, prefix)?;
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
    let mode = match r.dhcp.pool {
        _ if !cfg.network.dhcp => "no DHCP".to_string(),
        None => "proxyDHCP".to_string(),
        Some((a, b)) => format!("DHCP {a}-{b}"),
    };
    let mut out = format!(
        "config OK: interface {} ({ip}/{prefix}), {mode}, TFTP {}, HTTP {}, state {}, boot files {}\n",
        cfg.network.interface,
        if cfg.network.tftp { "on" } else { "off" },
        r.http_base,
        cfg.state_dir.display(),
        boot_dir.display()
    );
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
    let (ip, prefix) = interface_address(&cfg)?;
    let r = resolve(&cfg, ip, prefix)?;
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
    rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let clients = Arc::new(ClientMap::default());
        let provider: Arc<dyn BootProvider> = Arc::new(RegistryProvider {
            state: state.clone(),
            config: cfg.clone(),
            http_base: r.http_base.clone(),
            fallback,
        });
        let iface_name = cfg.network.interface.clone();
        let mut tasks = tokio::task::JoinSet::new();
        let mut services = Vec::new();

        if cfg.network.dhcp {
            let proxy = r.dhcp.proxy();
            let leases = if proxy {
                None
            } else {
                Some(LeaseStore::open(&db_path(&cfg.state_dir))?)
            };
            let engine =
                DhcpEngine::new(r.dhcp.clone(), leases, provider.clone(), clients.clone())?;
            let socks = dhcp::bind(&iface_name, proxy)?;
            tasks.spawn(dhcp::run(engine, socks, stop_rx.clone()));
            services.push(match r.dhcp.pool {
                Some((a, b)) => format!("DHCP {a}-{b}"),
                None => "proxyDHCP on 67+4011".into(),
            });
        }
        if cfg.network.tftp {
            let mut tc = tftp::TftpConfig::new(
                boot_dir.clone(),
                ip,
                Some(iface_name.clone()),
                r.http_base.clone(),
            );
            if let Some(b) = cfg.network.tftp_max_blksize {
                tc.max_blksize = b.clamp(512, tftp::MAX_BLKSIZE);
            }
            let sock = tftp::bind(&tc)?;
            services.push(format!("TFTP {ip}:69 (blksize <= {})", tc.max_blksize));
            tasks.spawn(tftp::run(
                tc,
                sock,
                provider.clone(),
                clients.clone(),
                stop_rx.clone(),
            ));
        }
        let addr = SocketAddr::from(([0, 0, 0, 0], cfg.network.http_port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot bind HTTP on {addr}; is the port in use? (--http-port)")
        })?;
        let app = http::router(Arc::new(http::HttpState {
            root: boot_dir.clone(),
            provider: provider.clone(),
            clients: clients.clone(),
            http_base: r.http_base.clone(),
        }))
        .merge(api(state.clone()));
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            if let Err(e) = http::serve(listener, app, rx).await {
                tracing::error!("HTTP server: {e}");
            }
        });
        services.push(format!("HTTP {}", r.http_base));
        tracing::info!(
            "ignite server ready on {iface_name} ({ip}/{}): {}; boot files in {}",
            r.prefix,
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
    })
}
