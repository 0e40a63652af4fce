//! Starting, running and stopping the daemon.
//!
//! Under systemd (`Type=notify`, packaging/ignite.service) the server tells the service
//! manager where it is through `$NOTIFY_SOCKET` (sd_notify(3)): `READY=1` once every socket
//! listens, `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1` on the way out,
//! with a `STATUS=` line each time. SIGHUP re-reads the configuration file: what the boot
//! plans are made from (`[boot]` kernel, cmdline, default_action; `[install]` unregistered,
//! require_lease, token_ttl_secs, max_unregistered) takes effect for the next boot; any
//! other change is logged as waiting for a restart, and a file that does not load or names
//! a missing kernel leaves the running configuration as it was. The registry, profiles,
//! boot files and the store are read on each use already and need no reload.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ignite_netboot::boot::{BootEvent, BootPlan, BootProvider, ClientMap};
use ignite_netboot::dhcp::{self, DhcpEngine};
use ignite_netboot::MacAddr;
use ignite_netboot::{http, iface, tftp};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::admin::{self, AdminToken};
use super::capture_api::CaptureApi;
use super::config::{resolve, Config, Resolved, LAB_ADDRESS, LAB_INTERFACE, LAB_MAC};
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
async fn prune_installs(
    state: Arc<State>,
    live: Arc<LiveProvider>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ttl_secs = live.current().config.install.token_ttl_secs;
        let ttl_ms = ttl_secs.saturating_mul(1000).min(i64::MAX as u64) as i64;
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
                "; for the built-in lab network create it: ip link add {i} address {LAB_MAC} type bridge && \
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
    ip(&[
        "link",
        "add",
        LAB_INTERFACE,
        "address",
        LAB_MAC,
        "type",
        "bridge",
    ])?;
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

/// The boot provider every service asks, replaced whole by a reload: a plan is made from
/// one configuration, never from half of the old and half of the new.
struct LiveProvider(RwLock<Arc<RegistryProvider>>);

impl LiveProvider {
    fn current(&self) -> Arc<RegistryProvider> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, p: RegistryProvider) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }
}

impl BootProvider for LiveProvider {
    fn plan(&self, mac: MacAddr, requester: Option<Ipv4Addr>) -> BootPlan {
        self.current().plan(mac, requester)
    }

    fn step(&self, ev: &BootEvent) {
        self.current().step(ev)
    }
}

/// What a reload makes of the configuration `new` while `running` serves: the running one
/// with the settings boot plans are made from taken from `new` (see the module doc), and
/// the names of the other settings that differ, which wait for a restart.
fn merge_reload(running: &Config, new: Config) -> (Config, Vec<&'static str>) {
    let mut next = running.clone();
    next.boot.kernel = new.boot.kernel.clone();
    next.boot.cmdline = new.boot.cmdline.clone();
    next.boot.default_action = new.boot.default_action.clone();
    let i = &new.install;
    next.install.unregistered = i.unregistered;
    next.install.require_lease = i.require_lease;
    next.install.token_ttl_secs = i.token_ttl_secs;
    next.install.max_unregistered = i.max_unregistered;
    // The config types compare by their Debug form: they are plain data.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let (o, n) = (&next, &new);
    let waiting = [
        ("state_dir", differs(&o.state_dir, &n.state_dir)),
        ("boot_dir", differs(&o.boot_dir, &n.boot_dir)),
        ("profiles_dir", differs(&o.profiles_dir, &n.profiles_dir)),
        ("store", differs(&o.store, &n.store)),
        (
            "chunk_cache_mib",
            differs(&o.chunk_cache_mib, &n.chunk_cache_mib),
        ),
        ("max_captures", differs(&o.max_captures, &n.max_captures)),
        ("[network]", differs(&o.network, &n.network)),
        ("[boot]", differs(&o.boot, &n.boot)),
        ("[install]", differs(&o.install, &n.install)),
        ("[limits]", differs(&o.limits, &n.limits)),
        ("[[reservation]]", differs(&o.reservations, &n.reservations)),
    ];
    let waiting = waiting.iter().filter(|w| w.1).map(|w| w.0).collect();
    (next, waiting)
}

/// SIGHUP: loads the configuration again and puts a provider made from it in place (see
/// the module doc); returns what the service status says about it.
fn reload_config(
    live: &LiveProvider,
    load: &dyn Fn() -> Result<Config>,
    make: &dyn Fn(Config) -> Result<RegistryProvider>,
) -> String {
    let apply = || -> Result<Vec<&'static str>> {
        let (next, waiting) = merge_reload(&live.current().config, load()?);
        let missing: Vec<String> = super::prepare::missing(&next)
            .into_iter()
            .filter(|f| !f.optional)
            .map(|f| format!("{} ({})", f.rel, f.role))
            .collect();
        if !missing.is_empty() {
            bail!(
                "boot files missing in {}: {}",
                next.boot_dir().display(),
                missing.join(", ")
            );
        }
        live.replace(make(next)?);
        Ok(waiting)
    };
    match apply() {
        Ok(waiting) if waiting.is_empty() => {
            tracing::info!("SIGHUP: configuration reloaded");
            "configuration reloaded".to_string()
        }
        Ok(waiting) => {
            let waiting = waiting.join(", ");
            tracing::warn!(
                "SIGHUP: configuration reloaded; changes to {waiting} take effect at the next restart"
            );
            format!("configuration reloaded ({waiting} wait for a restart)")
        }
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, the running one stays: {e:#}");
            "reload refused (see the log)".to_string()
        }
    }
}

/// sd_notify(3) by hand: one datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET` (a path, or
/// `@name` in the abstract namespace). Twenty lines of std beat a crate for this. Without
/// systemd (no variable) it does nothing; a failure is logged and never stops the server.
fn notify(msg: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&socket, msg) {
        tracing::warn!("cannot tell systemd {msg:?} through {socket:?}: {e}");
    }
}

fn send_notify(socket: &std::ffi::OsStr, msg: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::from_abstract_name(name)?,
        None => UnixAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in µs, which `RELOADING=1` carries (systemd matches it to the reload).
fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
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

/// Serves until SIGTERM/SIGINT; `reload` loads the configuration again (on SIGHUP).
pub fn run(cfg: Config, reload: impl Fn() -> Result<Config>) -> Result<()> {
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
        let tls_pin = tls.as_ref().map(|t| t.pin.clone());
        // One boot-log writer for the server's life: a reloaded provider shares it.
        let steps = StepWriter::start(state.clone(), caps);
        let make_provider = |config: Config| -> Result<RegistryProvider> {
            Ok(RegistryProvider {
                state: state.clone(),
                fallback: config.default_action()?,
                config,
                api_base: api_base.clone(),
                tls_pin: tls_pin.clone(),
                clients: clients.clone(),
                steps: steps.clone(),
            })
        };
        let live = Arc::new(LiveProvider(RwLock::new(Arc::new(make_provider(
            cfg.clone(),
        )?))));
        let provider: Arc<dyn BootProvider> = live.clone();
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
                if cfg.network.answer_router_solicitations {
                    // Only saves netbooting clients time: without it they still boot.
                    match ignite_netboot::ra::bind(&n.name) {
                        Ok(sock) => {
                            let own_mac = iface::mac_of(&n.name);
                            let run = ignite_netboot::ra::serve(
                                sock,
                                own_mac,
                                clients.clone(),
                                stop_rx.clone(),
                            );
                            let what = format!("router solicitations on {}", n.name);
                            tasks.spawn(async move {
                                run.await;
                                (what, Ok(()))
                            });
                        }
                        Err(e) => tracing::warn!(
                            "{e}: iPXE on {} will wait ~16 s for an IPv6 router each start",
                            n.name
                        ),
                    }
                }
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
        let api = super::api_v1::Api::new(
            state.clone(),
            cfg.state_dir.clone(),
            cfg.store_dir(),
            cfg.profiles_dir(),
            cfg.limits.api_upload_bytes,
            stop_rx.clone(),
        );
        let sock = admin::socket_path(&cfg.state_dir);
        let owner = std::fs::metadata(&cfg.state_dir)
            .with_context(|| format!("state directory {}", cfg.state_dir.display()))?
            .uid();
        let local = admin::bind_socket(&cfg.state_dir)?;
        let (rx, routes) = (
            stop_rx.clone(),
            super::api_v1::routes(api.clone()).merge(super::api_v1::public_routes()),
        );
        tasks.spawn(async move {
            let r = admin::serve_socket(local, sock, routes, owner, rx).await;
            ("local API socket".to_string(), r.map_err(|e| e.to_string()))
        });
        services.push(format!(
            "management API on {} (root and uid {owner}, no token)",
            admin::socket_path(&cfg.state_dir).display()
        ));
        let (rx, a) = (stop_rx.clone(), api.clone());
        tasks.spawn(async move {
            super::api_v1::events::watch_registry(a, rx).await;
            ("management API events".to_string(), Ok(()))
        });
        let boot = http::router(Arc::new(http::HttpState {
            root: boot_dir.clone(),
            provider: provider.clone(),
            clients: clients.clone(),
            http_base: http_base.clone(),
        }))
        .merge(admin::protect(
            admin::routes(state.clone())
                .merge(install_api.clone().admin_router())
                .merge(super::api_v1::routes(api.clone())),
            admin_token.clone(),
        ))
        .merge(super::api_v1::public_routes())
        .merge(super::web::routes());
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
        let (rx, st, lv) = (stop_rx.clone(), state.clone(), live.clone());
        tasks.spawn(async move {
            prune_installs(st, lv, rx).await;
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

        let status = format!("serving {}", on.join(", "));
        notify(&format!("READY=1\nSTATUS={status}"));

        let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
        let stopped = async {
            loop {
                tokio::select! {
                    _ = term.recv() => break tracing::info!("SIGTERM: shutting down"),
                    _ = int.recv() => break tracing::info!("SIGINT: shutting down"),
                    _ = hup.recv() => {
                        notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
                        let reloaded = reload_config(&live, &reload, &make_provider);
                        notify(&format!("READY=1\nSTATUS={status}; {reloaded}"));
                    }
                }
            }
        };
        let failure = until_stopped_or_failed(&mut tasks, stopped).await;
        let why = failure.as_deref().unwrap_or("stopping");
        notify(&format!("STOPPING=1\nSTATUS={why}"));
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
    use std::path::Path;

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

    #[test]
    fn reload_takes_what_plans_are_made_from_and_names_what_waits() {
        let running = Config::default();
        let mut new = Config::default();
        new.boot.cmdline = "console=ttyS0 quiet".into();
        new.boot.default_action = "install web".into();
        new.install.token_ttl_secs = 60;
        let (next, waiting) = merge_reload(&running, new.clone());
        assert_eq!(
            (
                next.boot.cmdline.as_str(),
                next.boot.default_action.as_str()
            ),
            ("console=ttyS0 quiet", "install web")
        );
        assert_eq!(next.install.token_ttl_secs, 60);
        assert!(waiting.is_empty(), "{waiting:?}");
        new.network.http_port = 81;
        new.boot.bios = "other.kpxe".into();
        new.limits.chunk_batches = 3;
        let (next, waiting) = merge_reload(&running, new);
        // Sockets, the DHCP engine and the API keep what they started with.
        assert_eq!(next.network.http_port, 8080);
        assert_eq!(next.boot.bios, "undionly.kpxe");
        assert_eq!(next.boot.cmdline, "console=ttyS0 quiet");
        assert_eq!(waiting, ["[network]", "[boot]", "[limits]"]);
    }

    /// packaging/server.toml shows each default as a commented `key = value` line: with
    /// every such line uncommented it must load, and be the built-in defaults exactly.
    #[test]
    fn the_packaged_configuration_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/server.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        fn setting(l: &str) -> Option<&str> {
            l.strip_prefix("# ").filter(|rest| {
                rest.split_once(" = ")
                    .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            })
        }
        let uncommented: String = text
            .lines()
            .map(|l| setting(l).unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let shown = text.lines().filter(|l| setting(l).is_some()).count();
        assert!(shown > 30, "only {shown} settings shown:\n{text}");
        let dir = tempfile::tempdir().unwrap();
        let all = dir.path().join("all.toml");
        std::fs::write(&all, &uncommented).unwrap();
        let mut loaded = Config::load(Some(&all), &Default::default()).unwrap();
        let d = Config::default();
        // The directories below the state directory are shown as the paths they default to.
        assert_eq!(
            (loaded.boot_dir(), loaded.profiles_dir(), loaded.store_dir()),
            (d.boot_dir(), d.profiles_dir(), d.store_dir())
        );
        (loaded.boot_dir, loaded.profiles_dir, loaded.store) = (None, None, None);
        assert_eq!(format!("{loaded:?}"), format!("{d:?}"));
        // As shipped (everything but state_dir commented) it is the defaults too.
        let shipped = Config::load(Some(&path), &Default::default()).unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn a_reload_that_names_a_missing_kernel_or_does_not_load_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            state_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let boot = cfg.boot_dir();
        for f in [
            "undionly.kpxe",
            "ipxe.efi",
            "debian/vmlinuz",
            "ignite/initrd.img",
        ] {
            std::fs::create_dir_all(boot.join(f).parent().unwrap()).unwrap();
            std::fs::write(boot.join(f), f).unwrap();
        }
        let state = Arc::new(State::open(dir.path()).unwrap());
        let caps = BootLogCaps {
            per_mac: 10,
            total: 100,
        };
        let steps = StepWriter::start(state.clone(), caps);
        let make = |config: Config| -> Result<RegistryProvider> {
            Ok(RegistryProvider {
                state: state.clone(),
                fallback: config.default_action()?,
                config,
                api_base: "http://10.77.0.1:8080".into(),
                tls_pin: None,
                clients: Arc::default(),
                steps: steps.clone(),
            })
        };
        let live = LiveProvider(RwLock::new(Arc::new(make(cfg.clone()).unwrap())));
        let mut next = cfg.clone();
        next.boot.kernel = "debian/vmlinuz-6.12".into();
        let refused = "reload refused (see the log)";
        assert_eq!(reload_config(&live, &|| Ok(next.clone()), &make), refused);
        assert_eq!(
            reload_config(&live, &|| bail!("line 3: nonsense"), &make),
            refused
        );
        let mut bad_action = cfg.clone();
        bad_action.boot.default_action = "reboot twice".into();
        assert_eq!(
            reload_config(&live, &|| Ok(bad_action.clone()), &make),
            refused
        );
        assert_eq!(live.current().config.boot.kernel, "debian/vmlinuz");
        // Once the kernel is there, the same file is taken.
        std::fs::write(boot.join("debian/vmlinuz-6.12"), "new").unwrap();
        let status = reload_config(&live, &|| Ok(next.clone()), &make);
        assert_eq!(status, "configuration reloaded");
        assert_eq!(live.current().config.boot.kernel, "debian/vmlinuz-6.12");
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        let name = format!("ignite-test-notify-{}", std::process::id());
        let by_name =
            UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(&name).unwrap()).unwrap();
        send_notify(path.as_os_str(), "READY=1\nSTATUS=up").unwrap();
        send_notify(format!("@{name}").as_ref(), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        let n = by_name.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        // Nobody listening is an error the caller logs, not a panic.
        assert!(send_notify(dir.path().join("gone").as_os_str(), "READY=1").is_err());
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
