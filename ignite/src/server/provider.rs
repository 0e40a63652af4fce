//! The boot provider: turns the client registry's action for a MAC into a boot plan, and
//! records each boot step in the state database's boot log.

use std::sync::Arc;

use ignite_netboot::boot::{log_step, BootEvent, BootPlan, BootProvider};
use ignite_netboot::MacAddr;

use super::config::Config;
use crate::state::{Action, State};

pub struct RegistryProvider {
    pub state: Arc<State>,
    pub config: Config,
    pub http_base: String,
    pub fallback: Action,
}

impl RegistryProvider {
    fn kernel_plan(&self, mac: MacAddr, action: &Action) -> BootPlan {
        let b = &self.config.boot;
        let mut cmdline = format!(
            "{} ignite.server={} ignite.mac={mac}",
            b.cmdline, self.http_base
        );
        match action {
            Action::Install(p) => {
                cmdline += &format!(" ignite.action=install ignite.profile={p}");
                match self.state.boot_install_token(&mac.to_string(), p) {
                    Ok(t) => cmdline += &format!(" ignite.token={t}"),
                    // The agent will be refused and say so; the boot itself still works.
                    Err(e) => tracing::error!("install token for {mac}: {e:#}"),
                }
            }
            Action::Recover(s) => cmdline += &format!(" ignite.action=recover ignite.snapshot={s}"),
            Action::Capture => {
                cmdline += " ignite.action=capture";
                match self.state.boot_capture_token(&mac.to_string()) {
                    Ok(t) => cmdline += &format!(" ignite.token={t}"),
                    // The agent will be refused and say so; the boot itself still works.
                    Err(e) => tracing::error!("capture token for {mac}: {e:#}"),
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
}

impl BootProvider for RegistryProvider {
    fn plan(&self, mac: MacAddr) -> BootPlan {
        let action = match self.state.action_for(mac, &self.fallback) {
            Ok(a) => a,
            Err(e) => {
                // A broken registry must not make machines reinstall: boot them locally.
                tracing::error!("client registry: {e:#}; booting {mac} from its local disk");
                Action::Local
            }
        };
        match action {
            Action::Local => BootPlan::Local,
            a => self.kernel_plan(mac, &a),
        }
    }

    fn step(&self, ev: &BootEvent) {
        // Install tokens stay out of logs and `ignite client list`.
        let ev = &BootEvent {
            detail: redact_token(&ev.detail),
            ..ev.clone()
        };
        log_step(ev);
        if let Err(e) = self.state.record_step(ev.mac, ev.ip, ev.step, &ev.detail) {
            tracing::warn!("boot log in {}: {e:#}", self.state.path().display());
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
    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            super::redact_token("kernel x ignite.mac=m ignite.token=0123abcd console=ttyS0"),
            "kernel x ignite.mac=m ignite.token=… console=ttyS0"
        );
    }
}
