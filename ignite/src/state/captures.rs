//! Capture history (table `captures`): one row per attempt, started as `running` and ended
//! as `ok` (with the record's snapshot and its figures) or `failed` (with the error). The
//! store holds what was captured; this holds what happened, failures included.
//!
//! Capture tokens (table `capture_tokens`) authorize captures over the network: each names
//! a client (its captures' name), how it captures (`agent`: handed to a client that boots to
//! `capture`, like an install token only at its leased address, and bound to it; `live`:
//! made by the admin for `ignite recovery capture --server`, bound to the address that first
//! uses it), optionally the kind and rules, and an expiry. An agent token is spent once its
//! capture finishes.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ms, Action, State};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptureToken {
    pub token: String,
    pub name: String,
    /// `agent` or `live`.
    pub how: String,
    /// `block`, `files`, or None: the client's choice (agent default block, live files).
    pub kind: Option<String>,
    /// `include=X` / `exclude=X` items, comma-separated.
    pub rules: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub bound_ip: Option<String>,
    /// The capture history row of its current (or last) attempt.
    pub capture_id: Option<i64>,
    pub used: bool,
}

const TOKEN_COLUMNS: &str =
    "token, name, how, kind, rules, created_ms, expires_ms, bound_ip, capture_id, used";

fn read_token(r: &rusqlite::Row) -> rusqlite::Result<CaptureToken> {
    Ok(CaptureToken {
        token: r.get(0)?,
        name: r.get(1)?,
        how: r.get(2)?,
        kind: r.get(3)?,
        rules: r.get(4)?,
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        bound_ip: r.get(7)?,
        capture_id: r.get(8)?,
        used: r.get::<_, i64>(9)? != 0,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureRow {
    pub id: i64,
    pub name: String,
    /// `block` or `files`.
    pub kind: String,
    /// `host` (a guest's disks read by the server), `agent` (netbooted client), `live`.
    pub how: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// `running`, `ok` or `failed`.
    pub result: String,
    pub error: Option<String>,
    /// The capture's record snapshot id.
    pub record: Option<String>,
    pub logical_bytes: u64,
    pub read_bytes: u64,
    pub new_bytes: u64,
    pub pause_ms: u64,
    pub notes: String,
    /// `boots` / `does not boot: ...` once a test restore ran.
    pub boot_check: Option<String>,
}

/// What a finished capture reports.
#[derive(Debug, Clone, Default)]
pub struct CaptureDone {
    pub record: String,
    pub logical_bytes: u64,
    pub read_bytes: u64,
    pub new_bytes: u64,
    pub pause_ms: u64,
    pub notes: String,
}

const COLUMNS: &str = "id, name, kind, how, started_ms, finished_ms, result, error, record, \
     logical_bytes, read_bytes, new_bytes, pause_ms, notes, boot_check";

fn read_row(r: &rusqlite::Row) -> rusqlite::Result<CaptureRow> {
    Ok(CaptureRow {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        how: r.get(3)?,
        started_ms: r.get(4)?,
        finished_ms: r.get(5)?,
        result: r.get(6)?,
        error: r.get(7)?,
        record: r.get(8)?,
        logical_bytes: r.get::<_, i64>(9)? as u64,
        read_bytes: r.get::<_, i64>(10)? as u64,
        new_bytes: r.get::<_, i64>(11)? as u64,
        pause_ms: r.get::<_, i64>(12)? as u64,
        notes: r.get(13)?,
        boot_check: r.get(14)?,
    })
}

impl State {
    /// Records a capture of `name` as started. An earlier attempt of the same name still
    /// `running` was interrupted (its process is gone: captures of one name are serialized).
    pub fn capture_started(&self, name: &str, kind: &str, how: &str) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "UPDATE captures SET result = 'failed', error = 'interrupted (the capture process ended)', \
             finished_ms = ?2 WHERE name = ?1 AND result = 'running'",
            params![name, now_ms()],
        )?;
        conn.execute(
            "INSERT INTO captures (name, kind, how, started_ms, result) VALUES (?1, ?2, ?3, ?4, 'running')",
            params![name, kind, how, now_ms()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn capture_succeeded(&self, id: i64, d: &CaptureDone) -> Result<()> {
        self.conn().execute(
            "UPDATE captures SET result = 'ok', finished_ms = ?2, record = ?3, logical_bytes = ?4, \
             read_bytes = ?5, new_bytes = ?6, pause_ms = ?7, notes = ?8 WHERE id = ?1",
            params![
                id,
                now_ms(),
                d.record,
                d.logical_bytes as i64,
                d.read_bytes as i64,
                d.new_bytes as i64,
                d.pause_ms as i64,
                d.notes
            ],
        )?;
        Ok(())
    }

    /// Records how capture `id`'s test restore went (`ignite recovery capture --verify-boot`).
    pub fn capture_boot_checked(&self, id: i64, verdict: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE captures SET boot_check = ?2 WHERE id = ?1",
            params![id, verdict],
        )?;
        Ok(())
    }

    pub fn capture_failed(&self, id: i64, error: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE captures SET result = 'failed', finished_ms = ?2, error = ?3 WHERE id = ?1",
            params![id, now_ms(), error],
        )?;
        Ok(())
    }

    /// Captures, oldest first; of `name` only when given.
    pub fn captures(&self, name: Option<&str>) -> Result<Vec<CaptureRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM captures WHERE ?1 IS NULL OR name = ?1 ORDER BY id"
        ))?;
        let rows = st.query_map(params![name], read_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl State {
    /// A new capture token for `name`, valid for `ttl_ms`.
    pub fn create_capture_token(
        &self,
        name: &str,
        how: &str,
        kind: Option<&str>,
        rules: &str,
        ttl_ms: i64,
    ) -> Result<String> {
        // Snapshot names are NAME, NAME:files and NAME:diskN.
        let ok = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
        if !ok {
            bail!("capture name {name:?} is not usable; use 1-100 letters, digits and - _ . +");
        }
        let token = ignite_recovery::random::hex(16)?;
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO capture_tokens (token, name, how, kind, rules, created_ms, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                token,
                name,
                how,
                kind,
                rules,
                now,
                now.saturating_add(ttl_ms)
            ],
        )?;
        Ok(token)
    }

    pub fn capture_token(&self, token: &str) -> Result<Option<CaptureToken>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM capture_tokens WHERE token = ?1"),
                params![token],
                read_token,
            )
            .optional()?)
    }

    /// Hands out the token of a registered client that boots to `capture`, from address
    /// `to` (the provider checked that it holds the client's lease): its newest agent token
    /// still usable (one the admin prepared with options, or that of an interrupted
    /// capture), or a fresh one. Like an install token it is bound to `to` and works until
    /// `ttl_ms` from now.
    pub fn release_capture_token(&self, mac: &str, to: Ipv4Addr, ttl_ms: i64) -> Result<String> {
        let Some(c) = self.find(mac)? else {
            bail!(
                "{mac} is not a registered client; register it (`ignite client add`) to capture it"
            );
        };
        let now = now_ms();
        let t: Option<String> = self
            .conn()
            .query_row(
                "SELECT token FROM capture_tokens WHERE name = ?1 AND how = 'agent' AND used = 0 \
                 AND expires_ms > ?2 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                params![c.name, now],
                |r| r.get(0),
            )
            .optional()?;
        let token = match t {
            Some(t) => t,
            None => self.create_capture_token(&c.name, "agent", None, "", ttl_ms)?,
        };
        self.conn().execute(
            "UPDATE capture_tokens SET bound_ip = ?2, expires_ms = ?3 WHERE token = ?1",
            params![token, to.to_string(), now.saturating_add(ttl_ms)],
        )?;
        Ok(token)
    }

    /// Binds a token to the address that first used it; false if it is bound to another.
    pub fn bind_capture_token(&self, token: &str, ip: &str) -> Result<bool> {
        let conn = self.conn();
        conn.execute(
            "UPDATE capture_tokens SET bound_ip = ?2 WHERE token = ?1 AND bound_ip IS NULL",
            params![token, ip],
        )?;
        let bound: Option<String> = conn.query_row(
            "SELECT bound_ip FROM capture_tokens WHERE token = ?1",
            params![token],
            |r| r.get(0),
        )?;
        Ok(bound.as_deref() == Some(ip))
    }

    /// The history row a token's capture writes to.
    pub fn set_token_capture(&self, token: &str, capture_id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE capture_tokens SET capture_id = ?2 WHERE token = ?1",
            params![token, capture_id],
        )?;
        Ok(())
    }

    /// A capture finished: an agent's token is spent, and a client booted to `capture`
    /// boots its own disk again.
    pub fn capture_token_done(&self, token: &str) -> Result<()> {
        let Some(t) = self.capture_token(token)? else {
            return Ok(());
        };
        if t.how == "agent" {
            self.conn().execute(
                "UPDATE capture_tokens SET used = 1 WHERE token = ?1",
                params![token],
            )?;
            if let Some(c) = self.find(&t.name)? {
                if c.action == Action::Capture {
                    self.set_action(&c.mac, &Action::Local)?;
                }
            }
        }
        Ok(())
    }

    /// Whether history row `id` is still `running`.
    pub fn capture_running(&self, id: i64) -> Result<bool> {
        let r: Option<String> = self
            .conn()
            .query_row(
                "SELECT result FROM captures WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(r.as_deref() == Some("running"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_tokens_bind_once_and_agent_tokens_are_spent_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let mac: ignite_netboot::MacAddr = "52:54:00:00:00:09".parse().unwrap();
        let (ip, other): (Ipv4Addr, Ipv4Addr) =
            ("10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap());
        let release = |to| s.release_capture_token("52:54:00:00:00:09", to, 60_000);
        assert!(release(ip).is_err(), "unregistered");
        s.add(mac, "web1", &Action::Capture).unwrap();
        let t = release(ip).unwrap();
        // Handed to the lease holder, bound to it.
        assert!(s.bind_capture_token(&t, "10.0.0.5").unwrap());
        assert!(!s.bind_capture_token(&t, "10.0.0.6").unwrap());
        // Booting again before the capture finished gives the same token, bound anew.
        assert_eq!(release(other).unwrap(), t);
        assert!(s.bind_capture_token(&t, "10.0.0.6").unwrap());
        assert!(!s.bind_capture_token(&t, "10.0.0.5").unwrap());
        s.capture_token_done(&t).unwrap();
        assert!(s.capture_token(&t).unwrap().unwrap().used);
        assert_eq!(s.get("web1").unwrap().action, Action::Local);
        assert_ne!(release(ip).unwrap(), t);
        // Prepared tokens carry their options; expired ones are passed over.
        let old = s
            .create_capture_token("web1", "agent", Some("files"), "exclude=/srv", -1)
            .unwrap();
        assert_ne!(release(ip).unwrap(), old);
        let prepared = s
            .create_capture_token("web1", "agent", Some("files"), "exclude=/srv", 60_000)
            .unwrap();
        assert_eq!(release(ip).unwrap(), prepared);
        let live = s
            .create_capture_token("web1", "live", Some("files"), "", 60_000)
            .unwrap();
        let row = s.capture_token(&live).unwrap().unwrap();
        assert_eq!(
            (
                row.how.as_str(),
                row.kind.as_deref(),
                row.bound_ip.as_deref()
            ),
            ("live", Some("files"), None)
        );
        assert!(
            s.bind_capture_token(&live, "10.0.0.7").unwrap(),
            "bound on first use"
        );
        s.capture_token_done(&live).unwrap();
        assert!(
            !s.capture_token(&live).unwrap().unwrap().used,
            "live tokens serve until they expire"
        );
        assert!(s.create_capture_token("a/b", "live", None, "", 1).is_err());
    }

    #[test]
    fn attempts_are_kept_and_an_interrupted_one_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let a = s.capture_started("web1", "block", "host").unwrap();
        // A second start while the first is still `running`: the first was interrupted.
        let b = s.capture_started("web1", "block", "host").unwrap();
        s.capture_succeeded(
            b,
            &CaptureDone {
                record: "abcd".into(),
                read_bytes: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let c = s.capture_started("db1", "files", "agent").unwrap();
        s.capture_failed(c, "disk gone").unwrap();
        let rows = s.captures(Some("web1")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, a);
        assert_eq!(rows[0].result, "failed");
        assert!(rows[0].error.as_deref().unwrap().contains("interrupted"));
        assert_eq!(rows[1].result, "ok");
        assert_eq!(rows[1].read_bytes, 10);
        assert_eq!(s.captures(None).unwrap().len(), 3);
    }
}
