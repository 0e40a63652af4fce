//! The client registry (MAC → name and boot action) and the default action for clients not
//! in it (tables `clients`, `settings`).

use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use ignite_netboot::MacAddr;
use rusqlite::{params, OptionalExtension};

use super::State;
use serde::{Deserialize, Serialize};

/// What a client does when it network-boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "arg", rename_all = "lowercase")]
pub enum Action {
    /// Install the named profile, then flip to `local`.
    Install(String),
    /// Boot the local disk.
    Local,
    /// Restore the named snapshot.
    Recover(String),
    /// Capture the client's disk into the archive.
    Capture,
}

impl Action {
    /// From CLI words: `install web`, `local`, `recover web@latest`, `capture`.
    pub fn from_words(words: &[String]) -> Result<Action> {
        let w: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
        Ok(match w.as_slice() {
            ["install", p] => Action::Install(p.to_string()),
            ["local"] => Action::Local,
            ["recover", s] => Action::Recover(s.to_string()),
            ["capture"] => Action::Capture,
            ["install"] => bail!("action \"install\" needs a profile name: install <profile>"),
            ["recover"] => bail!("action \"recover\" needs a snapshot: recover <snapshot>"),
            _ => bail!(
                "{:?} is not a boot action; use one of: install <profile>, local, recover <snapshot>, capture",
                w.join(" ")
            ),
        })
    }

    fn to_db(&self) -> (&'static str, Option<&str>) {
        match self {
            Action::Install(p) => ("install", Some(p)),
            Action::Local => ("local", None),
            Action::Recover(s) => ("recover", Some(s)),
            Action::Capture => ("capture", None),
        }
    }

    fn from_db(kind: &str, arg: Option<String>) -> Result<Action> {
        let mut words = vec![kind.to_string()];
        words.extend(arg);
        Action::from_words(&words)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_db() {
            (k, Some(a)) => write!(f, "{k} {a}"),
            (k, None) => write!(f, "{k}"),
        }
    }
}

impl FromStr for Action {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Action> {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        Action::from_words(&words)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    pub mac: String,
    pub name: String,
    #[serde(flatten)]
    pub action: Action,
    pub last_seen: Option<i64>,
    pub last_step: Option<String>,
}

/// The error for a key that names no registered client.
pub fn not_registered(key: &str) -> anyhow::Error {
    anyhow!("client {key:?} is not registered; see `ignite client list`")
}

/// Whether `name` can name a client.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
        bail!("client name {name:?} is not usable; use letters, digits, '-' or '.'");
    }
    if name == "default" {
        // /api/v1/clients/default is the default boot action.
        bail!("client name \"default\" is reserved (the default boot action); choose another");
    }
    Ok(())
}

/// A `clients` row as read: mac, name, action, arg, last_seen, last_step.
type ClientRow = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
);

impl State {
    pub fn add(&self, mac: MacAddr, name: &str, action: &Action) -> Result<()> {
        check_name(name)?;
        if let Some(c) = self.find(&mac.to_string())? {
            bail!(
                "client {mac} already exists as {:?}; use `ignite client set` to change it",
                c.name
            );
        }
        if let Some(c) = self.find(name)? {
            bail!(
                "client name {name:?} is already used by {}; pick another name",
                c.mac
            );
        }
        let (kind, arg) = action.to_db();
        self.conn().execute(
            "INSERT INTO clients (mac, name, action, arg) VALUES (?1, ?2, ?3, ?4)",
            params![mac.to_string(), name, kind, arg],
        )?;
        self.action_changed(&mac.to_string(), action)
    }

    fn row(r: &rusqlite::Row) -> rusqlite::Result<ClientRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    }

    fn to_client(t: ClientRow) -> Result<Client> {
        let action = Action::from_db(&t.2, t.3)
            .map_err(|e| anyhow!("client {} in the state database has a bad action: {e}", t.0))?;
        Ok(Client {
            mac: t.0,
            name: t.1,
            action,
            last_seen: t.4,
            last_step: t.5,
        })
    }

    /// A client by MAC (any separator) or by name.
    pub fn find(&self, key: &str) -> Result<Option<Client>> {
        let key = match key.parse::<MacAddr>() {
            Ok(m) => m.to_string(),
            Err(_) => key.to_string(),
        };
        let t = self
            .conn()
            .query_row(
                "SELECT mac, name, action, arg, last_seen, last_step FROM clients WHERE mac = ?1 OR name = ?1",
                params![key],
                Self::row,
            )
            .optional()?;
        t.map(Self::to_client).transpose()
    }

    pub fn get(&self, key: &str) -> Result<Client> {
        self.find(key)?.ok_or_else(|| not_registered(key))
    }

    pub fn list(&self) -> Result<Vec<Client>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT mac, name, action, arg, last_seen, last_step FROM clients ORDER BY name",
        )?;
        let rows: Vec<_> = stmt
            .query_map([], Self::row)?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter().map(Self::to_client).collect()
    }

    pub fn set_action(&self, key: &str, action: &Action) -> Result<Client> {
        let c = self.get(key)?;
        let (kind, arg) = action.to_db();
        self.conn().execute(
            "UPDATE clients SET action = ?2, arg = ?3 WHERE mac = ?1",
            params![c.mac, kind, arg],
        )?;
        self.action_changed(&c.mac, action)?;
        self.get(&c.mac)
    }

    pub fn remove(&self, key: &str) -> Result<Client> {
        let c = self.get(key)?;
        self.conn()
            .execute("DELETE FROM clients WHERE mac = ?1", params![c.mac])?;
        Ok(c)
    }

    /// The action for clients not in the registry; `None` if never set.
    pub fn default_action(&self) -> Result<Option<Action>> {
        let v: Option<String> = self
            .conn()
            .query_row(
                "SELECT value FROM settings WHERE key = 'default_action'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        v.map(|s| s.parse()).transpose()
    }

    pub fn set_default_action(&self, action: &Action) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES ('default_action', ?1)",
            params![action.to_string()],
        )?;
        Ok(())
    }

    /// The action for `mac`: its own, else the registry default, else `fallback`; and
    /// whether `mac` is registered.
    pub fn action_for(&self, mac: MacAddr, fallback: &Action) -> Result<(Action, bool)> {
        if let Some(c) = self.find(&mac.to_string())? {
            return Ok((c.action, true));
        }
        let default = self.default_action()?.unwrap_or_else(|| fallback.clone());
        Ok((default, false))
    }

    /// After a successful install or recovery, boot from disk next time instead of doing it
    /// again.
    pub fn install_finished(&self, mac: MacAddr) -> Result<Client> {
        let c = self.get(&mac.to_string())?;
        if !matches!(c.action, Action::Install(_) | Action::Recover(_)) {
            bail!(
                "client {} is set to {:?}, not to install or recover; nothing to finish",
                c.name,
                c.action.to_string()
            );
        }
        self.set_action(&c.mac, &Action::Local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn registry_round_trip_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        s.add(mac(1), "web1", &"install web".parse().unwrap())
            .unwrap();
        assert!(s
            .add(mac(1), "other", &Action::Local)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        assert!(s
            .add(mac(2), "web1", &Action::Local)
            .unwrap_err()
            .to_string()
            .contains("already used"));
        assert!(s
            .add(mac(3), "default", &Action::Local)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        assert_eq!(s.get("web1").unwrap().mac, "52:54:00:00:00:01");
        assert_eq!(s.get("52-54-00-00-00-01").unwrap().name, "web1");
        assert_eq!(
            s.action_for(mac(9), &Action::Local).unwrap(),
            (Action::Local, false)
        );
        s.set_default_action(&Action::Capture).unwrap();
        assert_eq!(
            s.action_for(mac(9), &Action::Local).unwrap(),
            (Action::Capture, false)
        );
        assert_eq!(
            s.action_for(mac(1), &Action::Local).unwrap(),
            ("install web".parse().unwrap(), true)
        );
        // Install flips to local.
        assert_eq!(s.install_finished(mac(1)).unwrap().action, Action::Local);
        assert!(s.install_finished(mac(1)).is_err());
        s.set_action("web1", &"recover web1@latest".parse().unwrap())
            .unwrap();
        drop(s);
        let s = State::open(dir.path()).unwrap();
        assert_eq!(
            s.get("web1").unwrap().action,
            Action::Recover("web1@latest".into())
        );
        let caps = super::super::boot_log::BootLogCaps {
            per_mac: 10,
            total: 10,
        };
        let step = super::super::boot_log::NewStep {
            mac: Some(mac(1)),
            ip: None,
            step: "dhcp-ack",
            detail: "x".into(),
        };
        s.record_steps(&[step], caps).unwrap();
        assert_eq!(s.steps("52:54:00:00:00:01", 10).unwrap().len(), 1);
        assert!(s
            .get("web1")
            .unwrap()
            .last_step
            .unwrap()
            .starts_with("dhcp-ack"));
        s.remove("web1").unwrap();
        assert!(s
            .get("web1")
            .unwrap_err()
            .to_string()
            .contains("not registered"));
    }

    #[test]
    fn bad_actions_say_what_is_allowed() {
        assert!("install"
            .parse::<Action>()
            .unwrap_err()
            .to_string()
            .contains("profile"));
        assert!("reboot now"
            .parse::<Action>()
            .unwrap_err()
            .to_string()
            .contains("not a boot action"));
    }
}
