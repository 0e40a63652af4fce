//! What the management commands and `/api/v1` show of the state, read in one place so the
//! local CLI and the API give the same answer: clients with their install, one client in
//! detail, the DHCP leases.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::installs::{Install, LogLine, PhaseRecord};
use super::{Action, Client, State, StepRecord};

/// Boot steps `client show` lists.
pub const SHOWN_STEPS: usize = 20;

/// A client with its latest install (clients not in the registry appear while installing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientView {
    #[serde(flatten)]
    pub client: Client,
    pub install: Option<Install>,
}

/// One client: its registry entry, recent boot steps, latest install and that install's
/// phases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientDetail {
    pub client: Client,
    pub steps: Vec<StepRecord>,
    pub install: Option<Install>,
    pub phases: Vec<PhaseRecord>,
}

/// A client's latest install with its log lines after some line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallLog {
    pub install: Install,
    pub lines: Vec<LogLine>,
}

/// What [`State::install_log`] found.
pub enum LogOf {
    /// The key is neither a registered client nor a MAC.
    NoClient,
    /// The client never had an install.
    NoInstall,
    Log(Box<InstallLog>),
}

/// A DHCP lease as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseView {
    pub ip: String,
    pub mac: Option<String>,
    /// Unix seconds.
    pub expires: u64,
    pub state: String,
    pub active: bool,
    pub hostname: Option<String>,
}

impl State {
    /// Registered clients, then unregistered ones with an install running.
    pub fn client_views(&self) -> Result<Vec<ClientView>> {
        let mut rows = Vec::new();
        for c in self.list()? {
            let install = self.current_install(&c.mac)?;
            rows.push(ClientView { client: c, install });
        }
        for i in self.active_installs()? {
            if !rows.iter().any(|r| r.client.mac == i.mac) {
                rows.push(ClientView {
                    client: Client {
                        mac: i.mac.clone(),
                        name: "-".into(),
                        action: Action::Install(i.profile.clone()),
                        last_seen: None,
                        last_step: None,
                    },
                    install: Some(i),
                });
            }
        }
        Ok(rows)
    }

    /// Client `key` (MAC or name) in detail; None when it is not registered.
    pub fn client_detail(&self, key: &str) -> Result<Option<ClientDetail>> {
        let Some(client) = self.find(key)? else {
            return Ok(None);
        };
        let steps = self.steps(&client.mac, SHOWN_STEPS)?;
        let install = self.current_install(&client.mac)?;
        let phases = match &install {
            Some(i) => self.phases(&i.token)?,
            None => Vec::new(),
        };
        Ok(Some(ClientDetail {
            client,
            steps,
            install,
            phases,
        }))
    }

    /// The latest install of client `key` (MAC or name; any MAC, registered or not) and
    /// its log lines after line id `after`.
    pub fn install_log(&self, key: &str, after: i64) -> Result<LogOf> {
        let mac = match self.find(key)? {
            Some(c) => c.mac,
            None => match key.parse::<ignite_netboot::MacAddr>() {
                Ok(m) => m.to_string(),
                Err(_) => return Ok(LogOf::NoClient),
            },
        };
        let Some(install) = self.current_install(&mac)? else {
            return Ok(LogOf::NoInstall);
        };
        let lines = self.log_since(&install.token, after)?;
        Ok(LogOf::Log(Box::new(InstallLog { install, lines })))
    }

    /// Every DHCP lease, as of now.
    pub fn lease_views(&self) -> Result<Vec<LeaseView>> {
        let now = ignite_netboot::dhcp::unix_now();
        Ok(self
            .lease_store()?
            .all()
            .into_iter()
            .map(|l| LeaseView {
                ip: l.ip.to_string(),
                mac: l.mac.map(|m| m.to_string()),
                expires: l.expires,
                state: format!("{:?}", l.state).to_lowercase(),
                active: l.active(now),
                hostname: l.hostname,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_netboot::MacAddr;
    use ignite_recovery::Phase;

    #[test]
    fn views_read_back_from_their_json() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let mac: MacAddr = "52:54:00:00:09:01".parse().unwrap();
        s.add(mac, "web1", &"install web".parse().unwrap()).unwrap();
        s.add("52:54:00:00:09:02".parse().unwrap(), "db1", &Action::Local)
            .unwrap();
        let i = s.current_install(&mac.to_string()).unwrap().unwrap();
        s.record_phase(
            &i.token,
            &Phase::Booted {
                ip: "10.0.0.9".into(),
            },
        )
        .unwrap();
        let views = s.client_views().unwrap();
        let text = serde_json::to_string(&views).unwrap();
        let back: Vec<ClientView> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.len(), 2, "{text}");
        assert_eq!(back[1].client.action, Action::Install("web".into()));
        assert_eq!(back[0].client.action, Action::Local);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        let d = s.client_detail("web1").unwrap().unwrap();
        assert_eq!(d.phases.len(), 1);
        let text = serde_json::to_string(&d).unwrap();
        let back: ClientDetail = serde_json::from_str(&text).unwrap();
        assert_eq!(back.phases[0].phase, d.phases[0].phase);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert!(s.client_detail("nobody").unwrap().is_none());
    }

    #[test]
    fn the_boot_log_reads_for_one_client_or_all() {
        use super::super::boot_log::{BootLogCaps, NewStep};
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let caps = BootLogCaps {
            per_mac: 10,
            total: 100,
        };
        let a: MacAddr = "52:54:00:00:09:0a".parse().unwrap();
        let b: MacAddr = "52:54:00:00:09:0b".parse().unwrap();
        for (mac, d) in [(a, "a1"), (b, "b1"), (a, "a2"), (b, "b2")] {
            let step = NewStep {
                mac: Some(mac),
                ip: None,
                step: "dhcp-offer",
                detail: d.into(),
            };
            s.record_steps(&[step], caps).unwrap();
        }
        let details = |v: Vec<StepRecord>| v.into_iter().map(|r| r.detail).collect::<Vec<_>>();
        assert_eq!(
            details(s.recent_steps(None, 3).unwrap()),
            ["b1", "a2", "b2"]
        );
        assert_eq!(
            details(s.recent_steps(Some(&a.to_string()), 10).unwrap()),
            ["a1", "a2"]
        );
    }
}
