//! Install records (tables `installs`, `install_phases`, `install_log`): one per scheduled install of a client, with the
//! token that authenticates its agent, the snapshot its plan pinned, every phase it reported
//! (with the time, for the per-phase split) and its log.
//!
//! An install is scheduled when a client's action becomes `install <profile>` (or, for
//! clients not in the registry, when they boot and the default action is install). A client
//! has at most one `active` install: scheduling again replaces the old one, whose token then
//! stops working, and so does changing the action away from install.

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now_ms, Action, State};
use ignite_recovery::Phase;

/// Where an install stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Scheduled or running; its token is accepted.
    Active,
    /// The agent reported `Failed`; its token is still accepted (the agent may retry).
    Failed,
    Done,
    /// Rescheduled, or the client's action changed: its token is refused.
    Replaced,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Failed => "failed",
            Status::Done => "done",
            Status::Replaced => "replaced",
        }
    }

    fn parse(s: &str) -> Result<Status> {
        Ok(match s {
            "active" => Status::Active,
            "failed" => Status::Failed,
            "done" => Status::Done,
            "replaced" => Status::Replaced,
            _ => {
                return Err(anyhow!(
                    "install status {s:?} in the state database is unknown"
                ))
            }
        })
    }

    /// Whether requests with this install's token are accepted.
    pub fn accepts_requests(self) -> bool {
        matches!(self, Status::Active | Status::Failed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Install {
    #[serde(skip)]
    pub token: String,
    pub mac: String,
    pub profile: String,
    pub created_ms: i64,
    pub status: Status,
    /// The snapshot id the plan pinned (set when the agent first asked for its plan).
    pub snapshot: Option<String>,
    pub hostname: Option<String>,
    /// The last phase reported.
    pub phase: Option<Phase>,
    pub updated_ms: Option<i64>,
}

/// A phase as recorded: when it was reported.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub time_ms: i64,
    #[serde(flatten)]
    pub phase: Phase,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub id: i64,
    pub time_ms: i64,
    pub text: String,
}

/// 128 random bits as 32 hex digits.
fn new_token() -> Result<String> {
    ignite_recovery::random::hex(16)
}

/// The phase's name, as the timeline and `client list` show it.
pub fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Booted { .. } => "booted",
        Phase::Partitioned => "partitioned",
        Phase::Formatted => "formatted",
        Phase::Extracting { .. } => "extracting",
        Phase::Extracted { .. } => "extracted",
        Phase::Configured => "configured",
        Phase::BootLoader => "boot-loader",
        Phase::Done => "done",
        Phase::Failed { .. } => "failed",
    }
}

const COLUMNS: &str =
    "token, mac, profile, created_ms, status, snapshot, hostname, phase, updated_ms";

fn read_install(r: &rusqlite::Row) -> rusqlite::Result<(Install, String, Option<String>)> {
    Ok((
        Install {
            token: r.get(0)?,
            mac: r.get(1)?,
            profile: r.get(2)?,
            created_ms: r.get(3)?,
            status: Status::Active,
            snapshot: r.get(5)?,
            hostname: r.get(6)?,
            phase: None,
            updated_ms: r.get(8)?,
        },
        r.get(4)?,
        r.get(7)?,
    ))
}

fn finish_install((mut i, status, phase): (Install, String, Option<String>)) -> Result<Install> {
    i.status = Status::parse(&status)?;
    i.phase = phase
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .with_context(|| format!("install of {}: stored phase does not parse", i.mac))?;
    Ok(i)
}

impl State {
    /// Called whenever a client's action is set: install schedules a fresh install (new
    /// token), anything else retires the client's open install.
    pub(crate) fn action_changed(&self, mac: &str, action: &Action) -> Result<()> {
        self.retire_installs(mac)?;
        if let Action::Install(profile) = action {
            self.schedule_install(mac, profile)?;
        }
        Ok(())
    }

    fn retire_installs(&self, mac: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE installs SET status = 'replaced' WHERE mac = ?1 AND status IN ('active', 'failed')",
            params![mac],
        )?;
        Ok(())
    }

    fn schedule_install(&self, mac: &str, profile: &str) -> Result<String> {
        let token = new_token()?;
        self.conn().execute(
            "INSERT INTO installs (token, mac, profile, created_ms, status) VALUES (?1, ?2, ?3, ?4, 'active')",
            params![token, mac, profile, now_ms()],
        )?;
        Ok(token)
    }

    /// The token for a client that boots to install `profile`: its active install's, or a
    /// freshly scheduled one (unknown clients under a default install action, or a client
    /// booting again after a failed install).
    pub fn boot_install_token(&self, mac: &str, profile: &str) -> Result<String> {
        if let Some(i) = self.current_install(mac)? {
            if i.status == Status::Active && i.profile == profile {
                return Ok(i.token);
            }
        }
        self.retire_installs(mac)?;
        self.schedule_install(mac, profile)
    }

    /// The client's latest install, whatever its status.
    pub fn current_install(&self, mac: &str) -> Result<Option<Install>> {
        let t = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM installs WHERE mac = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT 1"
                ),
                params![mac],
                read_install,
            )
            .optional()?;
        t.map(finish_install).transpose()
    }

    /// Installs still running (active), of registered clients or not.
    pub fn active_installs(&self) -> Result<Vec<Install>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM installs WHERE status = 'active' ORDER BY mac"
        ))?;
        let rows: Vec<_> = stmt
            .query_map([], read_install)?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter().map(finish_install).collect()
    }

    /// Pins the snapshot and hostname the plan resolved to.
    pub fn pin_install(&self, token: &str, snapshot: &str, hostname: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE installs SET snapshot = ?2, hostname = ?3 WHERE token = ?1",
            params![token, snapshot, hostname],
        )?;
        Ok(())
    }

    /// Records a reported phase. Progress reports of an ongoing extraction only update the
    /// install's current phase; every other phase is kept with its time for the timeline.
    pub fn record_phase(&self, token: &str, phase: &Phase) -> Result<()> {
        let t = now_ms();
        let json = serde_json::to_string(phase)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let last: Option<String> = tx
            .query_row(
                "SELECT phase FROM install_phases WHERE token = ?1 ORDER BY id DESC LIMIT 1",
                params![token],
                |r| r.get(0),
            )
            .optional()?;
        let last: Option<Phase> = last.and_then(|p| serde_json::from_str(&p).ok());
        let progress_only = matches!(
            (&last, phase),
            (Some(Phase::Extracting { .. }), Phase::Extracting { .. })
        );
        if !progress_only {
            tx.execute(
                "INSERT INTO install_phases (token, time_ms, phase) VALUES (?1, ?2, ?3)",
                params![token, t, json],
            )?;
        }
        let status = match phase {
            Phase::Done => Status::Done,
            Phase::Failed { .. } => Status::Failed,
            _ => Status::Active,
        };
        tx.execute(
            "UPDATE installs SET phase = ?2, updated_ms = ?3, status = ?4 WHERE token = ?1",
            params![token, json, t, status.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn phases(&self, token: &str) -> Result<Vec<PhaseRecord>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT time_ms, phase FROM install_phases WHERE token = ?1 ORDER BY id")?;
        let rows: Vec<(i64, String)> = stmt
            .query_map(params![token], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(time_ms, p)| {
                Ok(PhaseRecord {
                    time_ms,
                    phase: serde_json::from_str(&p)
                        .with_context(|| format!("stored phase {p:?} does not parse"))?,
                })
            })
            .collect()
    }

    pub fn append_log(&self, token: &str, text: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO install_log (token, time_ms, text) VALUES (?1, ?2, ?3)",
            params![token, now_ms(), text],
        )?;
        Ok(())
    }

    /// Log appends after `after_id` (0: all), oldest first.
    pub fn log_since(&self, token: &str, after_id: i64) -> Result<Vec<LogLine>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, time_ms, text FROM install_log WHERE token = ?1 AND id > ?2 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![token, after_id], |r| {
                Ok(LogLine {
                    id: r.get(0)?,
                    time_ms: r.get(1)?,
                    text: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_netboot::MacAddr;

    #[test]
    fn tokens_follow_the_action() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let m = mac.to_string();
        s.add(mac, "web1", &"install web".parse().unwrap()).unwrap();
        let first = s.current_install(&m).unwrap().unwrap();
        assert_eq!(first.token.len(), 32);
        assert_eq!(first.status, Status::Active);
        // Booting reuses the scheduled token; scheduling again replaces it.
        assert_eq!(s.boot_install_token(&m, "web").unwrap(), first.token);
        s.set_action("web1", &"install db".parse().unwrap())
            .unwrap();
        let second = s.current_install(&m).unwrap().unwrap();
        assert_ne!(second.token, first.token);
        assert_eq!(second.profile, "db");
        s.set_action("web1", &Action::Local).unwrap();
        assert_eq!(
            s.current_install(&m).unwrap().unwrap().status,
            Status::Replaced
        );
        // An unknown client under a default install action gets one on boot.
        let t = s.boot_install_token("52:54:00:00:00:09", "web").unwrap();
        assert_eq!(s.boot_install_token("52:54:00:00:00:09", "web").unwrap(), t);
    }

    #[test]
    fn phases_keep_times_and_fold_progress() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let t = s.boot_install_token("52:54:00:00:00:02", "web").unwrap();
        s.record_phase(
            &t,
            &Phase::Booted {
                ip: "10.0.0.5".into(),
            },
        )
        .unwrap();
        for done in [1, 2, 3] {
            s.record_phase(&t, &Phase::Extracting { done, total: 3 })
                .unwrap();
        }
        s.record_phase(&t, &Phase::Done).unwrap();
        let names: Vec<_> = s
            .phases(&t)
            .unwrap()
            .iter()
            .map(|p| phase_name(&p.phase))
            .collect();
        assert_eq!(names, ["booted", "extracting", "done"]);
        let i = s.current_install("52:54:00:00:00:02").unwrap().unwrap();
        assert_eq!(i.status, Status::Done);
        s.append_log(&t, "mkfs.ext4 /dev/vda2").unwrap();
        s.append_log(&t, "ok").unwrap();
        let all = s.log_since(&t, 0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(s.log_since(&t, all[0].id).unwrap()[0].text, "ok");
    }
}
