//! Install records (tables `installs`, `install_phases`, `install_log`): one per scheduled install of a client, with the
//! token that authenticates its agent, the snapshot its plan pinned, every phase it reported
//! (with the time, for the per-phase split) and its log.
//!
//! An install is scheduled when a client's action becomes `install <profile>` (or, for
//! clients not in the registry, when they boot and the default action is install). A client
//! has at most one `active` install: scheduling again replaces the old one, whose token then
//! stops working, and so does changing the action away from install.
//!
//! A token works only once it has been handed to its client (`release_token`, when the
//! client fetches its boot script), only from the address it was handed to, until
//! `expires_ms`, and only while the install is not over. The install log is capped in bytes
//! and the phase timeline in entries; installs of unregistered clients that never finished
//! are forgotten once their token expired (`prune_unregistered_installs`). An install whose
//! client fetched the agent but whose agent never reported is marked failed (`agent
//! silent`) from the boot log (`mark_silent_agents`); a later report takes it back.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ms, Action, State};
use ignite_recovery::Phase;

/// Where an install stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub fn as_str(self) -> &'static str {
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

/// What a client's agent does with its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job<'a> {
    /// Install this profile.
    Install(&'a str),
    /// Write this capture (`NAME@ID`, `NAME@latest`) back over the client's disks.
    Recover(&'a str),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Install {
    #[serde(skip)]
    pub token: String,
    pub mac: String,
    /// The profile installed (empty for a recovery).
    pub profile: String,
    /// The capture a recovery writes back (boot action `recover`), None for an install.
    pub recover: Option<String>,
    pub created_ms: i64,
    pub status: Status,
    /// The snapshot id the plan pinned (set when the agent first asked for its plan).
    pub snapshot: Option<String>,
    pub hostname: Option<String>,
    /// The last phase reported.
    pub phase: Option<Phase>,
    pub updated_ms: Option<i64>,
    /// The address the token was handed to; requests from elsewhere are refused.
    pub bound_ip: Option<String>,
    /// When the token stops working (`None`: never handed out yet).
    pub expires_ms: Option<i64>,
}

/// Phases kept in one install's timeline; later ones only update its current phase.
pub const MAX_PHASES: i64 = 256;

/// A phase as recorded: when it was reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub time_ms: i64,
    #[serde(flatten)]
    pub phase: Phase,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

const COLUMNS: &str = "token, mac, profile, created_ms, status, snapshot, hostname, phase, \
     updated_ms, bound_ip, expires_ms, recover";

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
            bound_ip: r.get(9)?,
            expires_ms: r.get(10)?,
            recover: r.get(11)?,
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

fn retire_installs(conn: &Connection, mac: &str) -> Result<()> {
    conn.execute(
        "UPDATE installs SET status = 'replaced' WHERE mac = ?1 AND status IN ('active', 'failed')",
        params![mac],
    )?;
    Ok(())
}

fn schedule_install(conn: &Connection, mac: &str, job: Job) -> Result<String> {
    let token = new_token()?;
    let (profile, recover) = match job {
        Job::Install(p) => (p, None),
        Job::Recover(c) => ("", Some(c)),
    };
    conn.execute(
        "INSERT INTO installs (token, mac, profile, recover, created_ms, status) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'active')",
        params![token, mac, profile, recover, now_ms()],
    )?;
    Ok(token)
}

/// Installs of clients not in the registry that are not over and whose token still works.
const OPEN_UNREGISTERED: &str = "status IN ('active', 'failed') \
     AND mac NOT IN (SELECT mac FROM clients) AND (expires_ms IS NULL OR expires_ms > ?1)";

impl State {
    /// Called whenever a client's action is set: install schedules a fresh install (new
    /// token), anything else retires the client's open install.
    pub(crate) fn action_changed(&self, mac: &str, action: &Action) -> Result<()> {
        let conn = self.conn();
        retire_installs(&conn, mac)?;
        match action {
            Action::Install(profile) => drop(schedule_install(&conn, mac, Job::Install(profile))?),
            Action::Recover(capture) => drop(schedule_install(&conn, mac, Job::Recover(capture))?),
            Action::Local | Action::Capture => {}
        }
        Ok(())
    }

    /// Hands out the token of a client that boots to install `profile`, from address `to`:
    /// its active install's if that is for this profile and has not expired, else a freshly
    /// scheduled one (unknown clients under a default install action, a client booting
    /// again after a failed install or after its token expired). The token is bound to `to`
    /// and works until `ttl_ms` from now.
    pub fn release_token(&self, mac: &str, job: Job, to: Ipv4Addr, ttl_ms: i64) -> Result<String> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        type Row = (String, String, Option<String>, String, Option<i64>);
        let current: Option<Row> = tx
            .query_row(
                "SELECT token, profile, recover, status, expires_ms FROM installs WHERE mac = ?1 \
                 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                params![mac],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let same_job = |p: &str, r: &Option<String>| match job {
            Job::Install(profile) => r.is_none() && p == profile,
            Job::Recover(capture) => r.as_deref() == Some(capture),
        };
        let token = match current {
            Some((t, p, r, st, exp))
                if st == Status::Active.as_str()
                    && same_job(&p, &r)
                    && exp.is_none_or(|e| e > now) =>
            {
                t
            }
            _ => {
                retire_installs(&tx, mac)?;
                schedule_install(&tx, mac, job)?
            }
        };
        tx.execute(
            "UPDATE installs SET bound_ip = ?2, expires_ms = ?3 WHERE token = ?1",
            params![token, to.to_string(), now + ttl_ms],
        )?;
        tx.commit()?;
        Ok(token)
    }

    /// How many installs of unregistered clients are open (see `release_token`).
    pub fn open_unregistered_installs(&self) -> Result<usize> {
        let n: i64 = self.conn().query_row(
            &format!("SELECT count(*) FROM installs WHERE {OPEN_UNREGISTERED}"),
            params![now_ms()],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    /// Forgets installs (with their phases and logs) of clients not in the registry that
    /// did not finish and whose token expired, or was never handed out and is older than
    /// `ttl_ms`. Returns how many.
    pub fn prune_unregistered_installs(&self, ttl_ms: i64) -> Result<usize> {
        let now = now_ms();
        let stale = "SELECT token FROM installs WHERE status != 'done' \
             AND mac NOT IN (SELECT mac FROM clients) \
             AND COALESCE(expires_ms, created_ms + ?2) <= ?1";
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for table in ["install_phases", "install_log"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE token IN ({stale})"),
                params![now, ttl_ms],
            )?;
        }
        let n = tx.execute(
            &format!("DELETE FROM installs WHERE token IN ({stale})"),
            params![now, ttl_ms],
        )?;
        tx.commit()?;
        Ok(n)
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
        let kept: i64 = tx.query_row(
            "SELECT count(*) FROM install_phases WHERE token = ?1",
            params![token],
            |r| r.get(0),
        )?;
        if !progress_only && kept < MAX_PHASES {
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

    /// Appends to the install's log, keeping at most `cap` bytes of it: what does not fit
    /// is dropped, once with a line saying so.
    pub fn append_log(&self, token: &str, text: &str, cap: usize) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let used: i64 = tx
            .query_row(
                "SELECT log_bytes FROM installs WHERE token = ?1",
                params![token],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| anyhow!("no install has this token"))?;
        let used = used.max(0) as usize;
        if used >= cap {
            return Ok(());
        }
        let mut keep = text.len().min(cap - used);
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        let t = now_ms();
        if keep > 0 {
            tx.execute(
                "INSERT INTO install_log (token, time_ms, text) VALUES (?1, ?2, ?3)",
                params![token, t, &text[..keep]],
            )?;
        }
        let used = if keep < text.len() {
            tx.execute(
                "INSERT INTO install_log (token, time_ms, text) VALUES (?1, ?2, ?3)",
                params![
                    token,
                    t,
                    format!("\n[ignite: this install's log reached {cap} bytes; the rest is not kept]\n")
                ],
            )?;
            cap
        } else {
            used + keep
        };
        tx.execute(
            "UPDATE installs SET log_bytes = ?2 WHERE token = ?1",
            params![token, used as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks `failed: agent silent` every install whose client fetched the agent (a boot
    /// step serving one of `agent_files` since the install was scheduled, its token handed
    /// out) but whose agent never reported a phase, and whose last boot step is more than
    /// `silent_secs` before `now` (seconds). Such an agent died before it had an address:
    /// no driver for its NIC, no DHCP answer, a kernel that did not boot. Returns the
    /// MACs marked.
    pub fn mark_silent_agents(
        &self,
        now: i64,
        silent_secs: i64,
        agent_files: &[String],
    ) -> Result<Vec<String>> {
        let waiting: Vec<(String, String, i64)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare(
                "SELECT token, mac, created_ms FROM installs \
                 WHERE status = 'active' AND phase IS NULL AND expires_ms IS NOT NULL",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows
        };
        let mut marked = Vec::new();
        for (token, mac, created_ms) in waiting {
            let steps = self.steps(&mac, 500)?;
            let since = created_ms / 1000;
            let fetched = steps.iter().rev().find(|s| {
                s.time >= since
                    && matches!(s.step.as_str(), "http" | "tftp")
                    && agent_files.iter().any(|f| s.detail.contains(f.as_str()))
            });
            let (Some(fetched), Some(last)) = (fetched, steps.last()) else {
                continue;
            };
            if now - last.time <= silent_secs {
                continue;
            }
            let error = format!(
                "agent silent: the client fetched the agent ({}) {} s ago and it never \
                 reported; last boot step seen {} s ago: {} {}. The agent fails this way \
                 before it has an address (no driver for the boot NIC, no DHCP answer, a \
                 kernel that does not start): look at the machine's console",
                fetched.detail,
                now - fetched.time,
                now - last.time,
                last.step,
                last.detail
            );
            let tail: Vec<String> = steps
                .iter()
                .rev()
                .take(10)
                .rev()
                .map(|s| format!("{} {} {}", s.time, s.step, s.detail))
                .collect();
            let phase = serde_json::to_string(&Phase::Failed {
                error,
                log_tail: tail.join("\n"),
            })?;
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            // Only if the agent has still not reported (it may have, since the query).
            let t = now_ms();
            let n = tx.execute(
                "UPDATE installs SET phase = ?2, updated_ms = ?3, status = 'failed' \
                 WHERE token = ?1 AND status = 'active' AND phase IS NULL",
                params![token, phase, t],
            )?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO install_phases (token, time_ms, phase) VALUES (?1, ?2, ?3)",
                    params![token, t, phase],
                )?;
                marked.push(mac);
            }
            tx.commit()?;
        }
        Ok(marked)
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

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const HOUR: i64 = 3_600_000;

    #[test]
    fn tokens_follow_the_action_and_bind_to_where_they_were_handed() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let m = mac.to_string();
        s.add(mac, "web1", &"install web".parse().unwrap()).unwrap();
        let first = s.current_install(&m).unwrap().unwrap();
        assert_eq!(first.token.len(), 32);
        assert_eq!(first.status, Status::Active);
        assert_eq!(
            (first.bound_ip, first.expires_ms),
            (None, None),
            "not handed out yet"
        );
        // Booting hands out the scheduled token, bound to the address and expiring.
        assert_eq!(
            s.release_token(&m, Job::Install("web"), IP, HOUR).unwrap(),
            first.token
        );
        let i = s.current_install(&m).unwrap().unwrap();
        assert_eq!(i.bound_ip.as_deref(), Some("10.0.0.5"));
        assert!(i.expires_ms.unwrap() > now_ms() + HOUR - 60_000);
        // Booting again (another lease address): same token, bound anew.
        let other = Ipv4Addr::new(10, 0, 0, 6);
        assert_eq!(
            s.release_token(&m, Job::Install("web"), other, HOUR)
                .unwrap(),
            first.token
        );
        let i = s.current_install(&m).unwrap().unwrap();
        assert_eq!(i.bound_ip.as_deref(), Some("10.0.0.6"));
        // Scheduling again replaces it.
        s.set_action("web1", &"install db".parse().unwrap())
            .unwrap();
        let second = s.current_install(&m).unwrap().unwrap();
        assert_ne!(second.token, first.token);
        assert_eq!(second.profile, "db");
        // An expired token is not handed out again: the client gets a fresh install.
        let t = s.release_token(&m, Job::Install("db"), IP, -1).unwrap();
        assert_eq!(t, second.token);
        let third = s.release_token(&m, Job::Install("db"), IP, HOUR).unwrap();
        assert_ne!(third, second.token);
        s.set_action("web1", &Action::Local).unwrap();
        assert_eq!(
            s.current_install(&m).unwrap().unwrap().status,
            Status::Replaced
        );
    }

    #[test]
    fn unregistered_installs_are_counted_and_forgotten_once_expired() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let t1 = s
            .release_token("52:54:00:00:00:09", Job::Install("web"), IP, HOUR)
            .unwrap();
        assert_eq!(
            s.release_token("52:54:00:00:00:09", Job::Install("web"), IP, HOUR)
                .unwrap(),
            t1
        );
        s.append_log(&t1, "hello", 100).unwrap();
        // Expired at once: no longer open, and pruned.
        let t2 = s
            .release_token("52:54:00:00:00:0a", Job::Install("web"), IP, -1)
            .unwrap();
        s.record_phase(&t2, &Phase::Partitioned).unwrap();
        // A registered client's install is never pruned, expired or not.
        s.add(
            MacAddr([0x52, 0x54, 0, 0, 0, 0x0b]),
            "reg",
            &"install web".parse().unwrap(),
        )
        .unwrap();
        s.release_token("52:54:00:00:00:0b", Job::Install("web"), IP, -1)
            .unwrap();
        assert_eq!(s.open_unregistered_installs().unwrap(), 1);
        assert_eq!(s.prune_unregistered_installs(HOUR).unwrap(), 1);
        assert!(s.current_install("52:54:00:00:00:0a").unwrap().is_none());
        assert!(s.phases(&t2).unwrap().is_empty());
        assert!(s.current_install("52:54:00:00:00:09").unwrap().is_some());
        assert!(s.current_install("52:54:00:00:00:0b").unwrap().is_some());
        assert_eq!(s.log_since(&t1, 0).unwrap().len(), 1);
        assert_eq!(s.prune_unregistered_installs(HOUR).unwrap(), 0);
        // A finished one stays (the client was registered when it finished).
        s.record_phase(&t1, &Phase::Done).unwrap();
        assert_eq!(s.open_unregistered_installs().unwrap(), 0);
    }

    #[test]
    fn an_agent_fetched_but_never_heard_from_is_marked_silent() {
        use crate::state::boot_log::{BootLogCaps, NewStep};
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let caps = BootLogCaps {
            per_mac: 100,
            total: 1000,
        };
        let files = vec!["ignite/initrd.img".to_string()];
        let step = |mac: &str, step: &'static str, detail: &str| NewStep {
            mac: Some(mac.parse().unwrap()),
            ip: Some(IP),
            step,
            detail: detail.into(),
        };
        let (silent, quiet, talked, script_only) = (
            "52:54:00:00:01:01",
            "52:54:00:00:01:02",
            "52:54:00:00:01:03",
            "52:54:00:00:01:04",
        );
        for m in [silent, quiet, talked, script_only] {
            s.release_token(m, Job::Install("web"), IP, HOUR).unwrap();
            s.record_steps(&[step(m, "script", "iPXE script served")], caps)
                .unwrap();
        }
        for m in [silent, quiet, talked] {
            s.record_steps(&[step(m, "http", "GET /files/debian/vmlinuz -> 200")], caps)
                .unwrap();
        }
        // `quiet` fetched the kernel and not the agent: it never ran the agent.
        for m in [silent, talked] {
            s.record_steps(
                &[step(m, "http", "GET /files/ignite/initrd.img -> 200")],
                caps,
            )
            .unwrap();
        }
        let talked_token = s.current_install(talked).unwrap().unwrap().token;
        s.record_phase(
            &talked_token,
            &Phase::Booted {
                ip: "10.0.0.5".into(),
            },
        )
        .unwrap();
        let now = crate::state::now();
        // Within the quiet time nothing is marked.
        assert!(s.mark_silent_agents(now, 60, &files).unwrap().is_empty());
        // Later: the one that fetched the agent and never reported, only it, only once.
        let later = now + 61;
        let marked = s.mark_silent_agents(later, 60, &files).unwrap();
        assert_eq!(marked, [silent]);
        assert!(s.mark_silent_agents(later, 60, &files).unwrap().is_empty());
        let i = s.current_install(silent).unwrap().unwrap();
        assert_eq!(i.status, Status::Failed);
        let Some(Phase::Failed { error, log_tail }) = i.phase else {
            panic!("not failed: {:?}", i.phase);
        };
        assert!(error.starts_with("agent silent: the client fetched the agent (GET /files/ignite/initrd.img -> 200) 61 s ago"), "{error}");
        assert!(
            error.contains("last boot step seen 61 s ago: http GET /files/ignite/initrd.img"),
            "{error}"
        );
        assert!(log_tail.contains("iPXE script served"), "{log_tail}");
        assert_eq!(s.phases(&i.token).unwrap().len(), 1);
        for m in [quiet, talked, script_only] {
            assert_eq!(
                s.current_install(m).unwrap().unwrap().status,
                Status::Active,
                "{m}"
            );
        }
        // An agent that reports after all takes its install back.
        s.record_phase(
            &i.token,
            &Phase::Booted {
                ip: "10.0.0.5".into(),
            },
        )
        .unwrap();
        assert_eq!(
            s.current_install(silent).unwrap().unwrap().status,
            Status::Active
        );
    }

    #[test]
    fn phases_keep_times_and_fold_progress() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let t = s
            .release_token("52:54:00:00:00:02", Job::Install("web"), IP, HOUR)
            .unwrap();
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
        s.append_log(&t, "mkfs.ext4 /dev/vda2", 1000).unwrap();
        s.append_log(&t, "ok", 1000).unwrap();
        let all = s.log_since(&t, 0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(s.log_since(&t, all[0].id).unwrap()[0].text, "ok");
    }

    #[test]
    fn an_agent_cannot_grow_its_log_or_timeline_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let t = s
            .release_token("52:54:00:00:00:03", Job::Install("web"), IP, HOUR)
            .unwrap();
        for _ in 0..100 {
            s.append_log(&t, "0123456789", 95).unwrap();
        }
        let text: String = s
            .log_since(&t, 0)
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert!(text.starts_with("0123456789"));
        assert_eq!(text.matches("log reached 95 bytes").count(), 1, "{text}");
        assert_eq!(text.find("\n[ignite"), Some(95), "{text}");
        // Cut on a character boundary.
        let t2 = s
            .release_token("52:54:00:00:00:04", Job::Install("web"), IP, HOUR)
            .unwrap();
        s.append_log(&t2, "ééé", 3).unwrap();
        assert!(s.log_since(&t2, 0).unwrap()[0].text == "é");
        for _ in 0..(MAX_PHASES + 50) {
            s.record_phase(&t, &Phase::Partitioned).unwrap();
        }
        s.record_phase(&t, &Phase::Formatted).unwrap();
        assert_eq!(s.phases(&t).unwrap().len() as i64, MAX_PHASES);
        let i = s.current_install("52:54:00:00:00:03").unwrap().unwrap();
        assert!(
            matches!(i.phase, Some(Phase::Formatted)),
            "the current phase still moves"
        );
    }

    #[test]
    fn a_recover_action_schedules_a_recovery_with_its_own_token() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let m = "52:54:00:00:00:0c";
        s.add(
            m.parse().unwrap(),
            "db1",
            &"recover db1@latest".parse().unwrap(),
        )
        .unwrap();
        let t = s
            .release_token(m, Job::Recover("db1@latest"), IP, HOUR)
            .unwrap();
        let inst = s.current_install(m).unwrap().unwrap();
        assert_eq!(
            (
                inst.token.as_str(),
                inst.recover.as_deref(),
                inst.profile.as_str()
            ),
            (t.as_str(), Some("db1@latest"), "")
        );
        // The same job keeps its token; another capture, or an install, gets a new one.
        assert_eq!(
            s.release_token(m, Job::Recover("db1@latest"), IP, HOUR)
                .unwrap(),
            t
        );
        let t2 = s
            .release_token(m, Job::Recover("db1@abc"), IP, HOUR)
            .unwrap();
        assert_ne!(t2, t);
        let t3 = s
            .release_token(m, Job::Install("db1@abc"), IP, HOUR)
            .unwrap();
        assert_ne!(t3, t2);
        assert_eq!(s.current_install(m).unwrap().unwrap().recover, None);
    }
}
