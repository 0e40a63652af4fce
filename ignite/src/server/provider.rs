//! The boot provider: turns the client registry's action for a MAC into a boot plan, and
//! records each boot step in the state database's boot log.
//!
//! An install's kernel command line carries its token (`ignite.token=`), which opens the
//! install API for that client. It is handed only to the address that holds the client's
//! DHCP lease (`ClientMap`, filled by our DHCP service: leases we gave, or in proxy mode
//! the addresses clients request from), and bound to that address; clients not in the
//! registry get one only if the operator opted in (`[install] unregistered`).
//!
//! Boot steps go to a writer thread through a bounded queue: the boot services never wait
//! for SQLite, and a flood of forged requests costs dropped log rows, not stalled boots.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ignite_netboot::boot::{log_step, BootEvent, BootPlan, BootProvider, ClientMap};
use ignite_netboot::{lograte, MacAddr};

use super::config::Config;
use crate::state::boot_log::{BootLogCaps, NewStep};
use crate::state::installs::Job;
use crate::state::{Action, State};

/// A warning about what a client on the boot network did: a few lines per kind and ten
/// seconds (netboot's limiter), since a hostile client can cause one per packet.
pub fn warn_limited(key: &'static str, msg: impl FnOnce() -> String) {
    if let Some(n) = lograte::WARNINGS.check(key, Instant::now()) {
        match n {
            0 => tracing::warn!("{}", msg()),
            n => tracing::warn!(
                "{} ({n} more like it were not logged in the previous {} s)",
                msg(),
                lograte::WINDOW.as_secs()
            ),
        }
    }
}

pub struct RegistryProvider {
    pub state: Arc<State>,
    pub config: Config,
    /// The install and capture API agents are told of (`ignite.server=`), and with HTTPS
    /// the pin of the server's authority (`ignite.tls=`).
    pub api_base: String,
    pub tls_pin: Option<String>,
    pub fallback: Action,
    /// Who holds which address (see the module doc).
    pub clients: Arc<ClientMap>,
    pub steps: StepWriter,
}

impl RegistryProvider {
    fn kernel_plan(
        &self,
        mac: MacAddr,
        action: &Action,
        registered: bool,
        requester: Option<Ipv4Addr>,
    ) -> BootPlan {
        let b = &self.config.boot;
        let mut cmdline = format!(
            "{} ignite.server={} ignite.mac={mac}",
            b.cmdline, self.api_base
        );
        if let Some(pin) = &self.tls_pin {
            cmdline += &format!(" ignite.tls={pin}");
        }
        match action {
            Action::Install(p) => {
                cmdline += &format!(" ignite.action=install ignite.profile={p}");
                match self.release_token(mac, Job::Install(p), registered, requester) {
                    Ok(t) => cmdline += &format!(" ignite.token={t}"),
                    // The agent will be refused and say so; the boot itself still works.
                    Err(e) => warn_limited("install token withheld", || {
                        format!("install token for {mac} withheld: {e:#}")
                    }),
                }
            }
            Action::Recover(s) => {
                cmdline += &format!(" ignite.action=recover ignite.snapshot={s}");
                match self.release_token(mac, Job::Recover(s), registered, requester) {
                    Ok(t) => cmdline += &format!(" ignite.token={t}"),
                    Err(e) => warn_limited("recover token withheld", || {
                        format!("recover token for {mac} withheld: {e:#}")
                    }),
                }
            }
            Action::Capture => {
                cmdline += " ignite.action=capture";
                match self.release_capture_token(mac, requester) {
                    Ok(t) => cmdline += &format!(" ignite.token={t}"),
                    Err(e) => warn_limited("capture token withheld", || {
                        format!("capture token for {mac} withheld: {e:#}")
                    }),
                }
            }
            Action::Local => {}
        }
        BootPlan::Kernel {
            kernel: b.kernel.clone(),
            initrds: b.initrd.clone(),
            cmdline: cmdline.trim().to_string(),
        }
    }

    /// The install token for `mac`, if `requester` may have it (see the module doc).
    fn release_token(
        &self,
        mac: MacAddr,
        job: Job,
        registered: bool,
        requester: Option<Ipv4Addr>,
    ) -> Result<String> {
        let ip = self.token_address(mac, requester)?;
        let inst = &self.config.install;
        if let (false, Job::Recover(_)) = (registered, job) {
            bail!("{mac} is not a registered client: only registered clients recover captures");
        }
        if !registered {
            let open = self.state.open_unregistered_installs()?;
            if open >= inst.max_unregistered {
                bail!(
                    "{open} installs of unregistered clients are open ([install] max_unregistered); \
                     register the client with `ignite client add {mac} NAME install PROFILE`"
                );
            }
        }
        self.state
            .release_token(&mac.to_string(), job, ip, self.token_ttl_ms())
    }

    /// The capture token of registered client `mac` booting to `capture`, on the terms of
    /// an install token: only to its lease holder, bound to it, expiring.
    fn release_capture_token(&self, mac: MacAddr, requester: Option<Ipv4Addr>) -> Result<String> {
        let ip = self.token_address(mac, requester)?;
        self.state
            .release_capture_token(&mac.to_string(), ip, self.token_ttl_ms())
    }

    /// The address a token for `mac` may go to: the requester's, if it holds `mac`'s lease
    /// (or leases are not required).
    fn token_address(&self, mac: MacAddr, requester: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        let Some(ip) = requester else {
            bail!("the request came from no IPv4 address");
        };
        if self.config.install.require_lease && self.clients.mac_of(ip) != Some(mac) {
            bail!(
                "the request came from {ip}, which does not hold {mac}'s DHCP lease \
                 (a client gets its token only from its own leased address)"
            );
        }
        Ok(ip)
    }

    fn token_ttl_ms(&self) -> i64 {
        let secs = self.config.install.token_ttl_secs;
        secs.saturating_mul(1000).min(i64::MAX as u64) as i64
    }
}

impl BootProvider for RegistryProvider {
    fn plan(&self, mac: MacAddr, requester: Option<Ipv4Addr>) -> BootPlan {
        let (action, registered) = match self.state.action_for(mac, &self.fallback) {
            Ok(a) => a,
            Err(e) => {
                // A broken registry must not make machines reinstall: boot them locally.
                tracing::error!("client registry: {e:#}; booting {mac} from its local disk");
                (Action::Local, false)
            }
        };
        if matches!(action, Action::Install(_)) && !registered && !self.config.install.unregistered
        {
            warn_limited("unregistered install refused", || {
                format!(
                    "client {mac} is not registered and the default action is {action}: installing \
                     unregistered clients needs [install] unregistered = true (or \
                     --install-unregistered); booting it from its disk"
                )
            });
            return BootPlan::Local;
        }
        match action {
            Action::Local => BootPlan::Local,
            a => self.kernel_plan(mac, &a, registered, requester),
        }
    }

    fn step(&self, ev: &BootEvent) {
        // Install tokens stay out of logs and `ignite client list`.
        let mut ev = BootEvent {
            detail: redact_token(&ev.detail),
            ..ev.clone()
        };
        // Anyone may fetch any client's script (without its token). Fetched from an address
        // known to hold another MAC, it is that MAC's step: nobody writes into another
        // client's boot log or last step.
        if ev.step == "script" {
            let asker = ev.ip.and_then(|ip| self.clients.mac_of(ip));
            if let (Some(named), Some(asker)) = (ev.mac, asker) {
                if named != asker {
                    ev.detail = format!("{} (the script of {named})", ev.detail);
                    ev.mac = Some(asker);
                }
            }
        }
        let ev = &ev;
        log_step(ev);
        self.steps.send(NewStep {
            mac: ev.mac,
            ip: ev.ip,
            step: ev.step,
            detail: ev.detail.clone(),
        });
    }
}

/// Boot steps queued for the writer thread.
const STEP_QUEUE: usize = 4096;
/// Steps written in one transaction at most.
const STEP_BATCH: usize = 256;

/// The sending side of the boot log writer (see the module doc).
/// Cheap to clone: every clone feeds the one writer thread.
#[derive(Clone)]
pub struct StepWriter {
    tx: SyncSender<NewStep>,
    dropped: Arc<AtomicU64>,
}

impl StepWriter {
    /// Starts the writer thread; it ends when the last clone of the writer is dropped.
    pub fn start(state: Arc<State>, caps: BootLogCaps) -> StepWriter {
        let (tx, rx) = sync_channel(STEP_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("boot-log".into())
            .spawn(move || write_steps(&state, caps, rx, &d))
            .expect("cannot start the boot log thread");
        StepWriter { tx, dropped }
    }

    fn send(&self, s: NewStep) {
        match self.tx.try_send(s) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn write_steps(state: &State, caps: BootLogCaps, rx: Receiver<NewStep>, dropped: &AtomicU64) {
    let mut last_report = Instant::now();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < STEP_BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        if let Err(e) = state.record_steps(&batch, caps) {
            warn_limited("boot log write", || {
                format!("boot log in {}: {e:#}", state.path().display())
            });
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            let n = dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                tracing::warn!(
                    "boot log: {n} steps were not recorded (more arrived than the database took)"
                );
            }
            last_report = Instant::now();
        }
    }
}

/// `ignite.token=abc…` → `ignite.token=…`.
fn redact_token(text: &str) -> String {
    text.split(' ')
        .map(|w| match w.strip_prefix("ignite.token=") {
            Some(_) => "ignite.token=…",
            None => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            redact_token("kernel x ignite.mac=m ignite.token=0123abcd console=ttyS0"),
            "kernel x ignite.mac=m ignite.token=… console=ttyS0"
        );
    }

    fn provider(dir: &std::path::Path, unregistered: bool) -> RegistryProvider {
        let state = Arc::new(State::open(dir).unwrap());
        let mut config = Config::default();
        config.install.unregistered = unregistered;
        let caps = BootLogCaps {
            per_mac: 10,
            total: 100,
        };
        RegistryProvider {
            steps: StepWriter::start(state.clone(), caps),
            state,
            config,
            api_base: "http://10.0.0.1:8080".into(),
            tls_pin: None,
            fallback: Action::Local,
            clients: Arc::new(ClientMap::default()),
        }
    }

    fn token(plan: &BootPlan) -> Option<String> {
        match plan {
            BootPlan::Kernel { cmdline, .. } => cmdline
                .split(' ')
                .find_map(|w| w.strip_prefix("ignite.token="))
                .map(String::from),
            BootPlan::Local => None,
        }
    }

    const VICTIM: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const LEASED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);

    #[test]
    fn a_token_goes_only_to_the_address_holding_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path(), false);
        p.state
            .add(VICTIM, "web1", &"install web".parse().unwrap())
            .unwrap();
        // Nobody holds a lease yet; then the victim does.
        assert_eq!(token(&p.plan(VICTIM, Some(LEASED))), None);
        p.clients.insert(LEASED, VICTIM);
        let plan = p.plan(VICTIM, Some(OTHER));
        assert!(
            matches!(&plan, BootPlan::Kernel { cmdline, .. } if cmdline.contains("ignite.profile=web"))
        );
        assert_eq!(
            token(&plan),
            None,
            "another address gets the plan without the token"
        );
        assert_eq!(token(&p.plan(VICTIM, None)), None);
        let t = token(&p.plan(VICTIM, Some(LEASED))).expect("the lease holder gets it");
        let i = p
            .state
            .current_install(&VICTIM.to_string())
            .unwrap()
            .unwrap();
        assert_eq!((i.token, i.bound_ip.as_deref()), (t, Some("10.0.0.101")));
    }

    #[test]
    fn a_capture_token_goes_only_to_the_lease_holder_and_is_bound_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path(), false);
        p.state.add(VICTIM, "web1", &Action::Capture).unwrap();
        let capture_plan = |ip| {
            let plan = p.plan(VICTIM, ip);
            assert!(
                matches!(&plan, BootPlan::Kernel { cmdline, .. } if cmdline.contains("ignite.action=capture")),
                "a client set to capture boots the agent: {plan:?}"
            );
            token(&plan)
        };
        assert_eq!(capture_plan(Some(LEASED)), None, "nobody holds a lease yet");
        p.clients.insert(LEASED, VICTIM);
        assert_eq!(capture_plan(Some(OTHER)), None, "not the lease holder");
        assert_eq!(capture_plan(None), None);
        let t = capture_plan(Some(LEASED)).expect("the lease holder gets it");
        let row = p.state.capture_token(&t).unwrap().unwrap();
        assert_eq!(
            (row.how.as_str(), row.bound_ip.as_deref()),
            ("agent", Some("10.0.0.101"))
        );
    }

    #[test]
    fn fetching_another_clients_script_is_the_fetchers_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path(), false);
        p.state
            .add(VICTIM, "web1", &"install web".parse().unwrap())
            .unwrap();
        let attacker = MacAddr([2, 0, 0, 0, 0, 9]);
        p.clients.insert(OTHER, attacker);
        p.clients.insert(LEASED, VICTIM);
        let script = |ip| BootEvent {
            mac: Some(VICTIM),
            ip: Some(ip),
            step: "script",
            detail: "iPXE script served".into(),
        };
        p.step(&script(OTHER));
        p.step(&script(LEASED));
        let t = Instant::now();
        let steps = |m: MacAddr| p.state.steps(&m.to_string(), 10).unwrap();
        while steps(VICTIM).is_empty() || steps(attacker).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "steps not written");
            std::thread::sleep(Duration::from_millis(20));
        }
        let theirs = steps(attacker);
        assert_eq!(
            theirs[0].detail,
            "iPXE script served (the script of 52:54:00:00:00:01)"
        );
        let own = steps(VICTIM);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].ip.as_deref(), Some("10.0.0.101"));
    }

    #[test]
    fn a_default_install_mints_nothing_for_unknown_macs_unless_opted_in() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path(), false);
        p.state
            .set_default_action(&"install web".parse().unwrap())
            .unwrap();
        let stranger = MacAddr([2, 0, 0, 0, 0, 7]);
        p.clients.insert(OTHER, stranger);
        assert_eq!(p.plan(stranger, Some(OTHER)), BootPlan::Local);
        assert!(p
            .state
            .current_install(&stranger.to_string())
            .unwrap()
            .is_none());
        // Opted in: the lease holder gets a token, up to the cap of open installs.
        let mut p = provider(dir.path(), true);
        p.config.install.max_unregistered = 2;
        for n in 0..4u8 {
            let mac = MacAddr([2, 0, 0, 0, 1, n]);
            let ip = Ipv4Addr::new(10, 0, 1, n);
            p.clients.insert(ip, mac);
            assert_eq!(token(&p.plan(mac, Some(ip))).is_some(), n < 2, "{n}");
        }
        assert_eq!(p.state.open_unregistered_installs().unwrap(), 2);
    }
}
