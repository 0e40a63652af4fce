//! Capture schedules (table `schedules`): when each guest is captured (a time of day in UTC,
//! repeated every period), what retention applies after a successful capture, when it runs
//! next and how it last went. The server's scheduler (`server::scheduler`) runs them.

use anyhow::{bail, Result};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::State;

/// Retention after each successful capture (the archive's restic-style rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    pub last: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
}

impl Keep {
    pub fn is_empty(&self) -> bool {
        self == &Keep::default()
    }

    pub fn policy(&self) -> ignite_archive::retention::Policy {
        ignite_archive::retention::Policy {
            last: self.last,
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
            ..Default::default()
        }
    }
}

/// A schedule's options (column `options`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Prove each new capture boots (`--verify-boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_boot: Option<VerifyBoot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyBoot {
    pub marker: String,
    pub timeout_secs: u64,
}

impl VerifyBoot {
    pub fn check(&self) -> crate::guests::verify_boot::BootCheck {
        crate::guests::verify_boot::BootCheck {
            marker: self.marker.clone(),
            timeout: std::time::Duration::from_secs(self.timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    /// Minutes after midnight UTC of the first run of a day.
    pub at_minute: u32,
    pub every_secs: u64,
    pub keep: Keep,
    /// Unix seconds.
    pub next_run: i64,
    pub last_run: Option<i64>,
    pub last_result: Option<String>,
    pub options: Options,
}

impl Schedule {
    /// `HH:MM` of `at_minute`.
    pub fn at(&self) -> String {
        format!("{:02}:{:02}", self.at_minute / 60, self.at_minute % 60)
    }
}

/// The first run at or after `now`: the day's `at_minute`, then every `every` seconds.
pub fn next_run(at_minute: u32, every_secs: u64, now: i64) -> i64 {
    let day = now - now.rem_euclid(86400);
    let mut t = day + i64::from(at_minute) * 60;
    let step = every_secs.max(60) as i64;
    // Runs before `now` on the same grid: jump forward in one step.
    if t < now {
        t += (now - t).div_euclid(step) * step;
        if t < now {
            t += step;
        }
    } else {
        // The grid may also have points earlier today than `at` (every < 1 day).
        t -= (t - now).div_euclid(step) * step;
    }
    t
}

/// `HH:MM` into minutes after midnight.
/// A repeat period (`1d`, `12h`, `1w`) in seconds.
pub fn parse_every(s: &str) -> Result<u64> {
    Ok(ignite_archive::retention::parse_duration(s)? as u64)
}

pub fn parse_at(s: &str) -> Result<u32> {
    let bad = || anyhow::anyhow!("time {s:?} is not HH:MM (24-hour, UTC), e.g. 02:00");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn read(r: &rusqlite::Row) -> rusqlite::Result<Schedule> {
    let policy: String = r.get(3)?;
    Ok(Schedule {
        name: r.get(0)?,
        at_minute: r.get(1)?,
        every_secs: r.get::<_, i64>(2)? as u64,
        keep: serde_json::from_str(&policy).unwrap_or_default(),
        next_run: r.get(4)?,
        last_run: r.get(5)?,
        last_result: r.get(6)?,
        options: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
    })
}

const COLUMNS: &str =
    "name, at_minute, every_secs, policy, next_run, last_run, last_result, options";

impl State {
    /// Creates or replaces `name`'s schedule; its next run is computed from `now`.
    pub fn set_schedule(
        &self,
        name: &str,
        at_minute: u32,
        every_secs: u64,
        keep: &Keep,
        options: &Options,
        now: i64,
    ) -> Result<Schedule> {
        if every_secs < 60 {
            bail!("a capture cannot repeat more often than every minute");
        }
        self.conn().execute(
            "INSERT INTO schedules (name, at_minute, every_secs, policy, options, next_run) \
             VALUES (?1, ?2, ?3, ?4, ?6, ?5) \
             ON CONFLICT(name) DO UPDATE SET at_minute = ?2, every_secs = ?3, policy = ?4, \
             next_run = ?5, options = ?6",
            params![
                name,
                at_minute,
                every_secs as i64,
                serde_json::to_string(keep)?,
                next_run(at_minute, every_secs, now),
                serde_json::to_string(options)?
            ],
        )?;
        self.schedule(name)?
            .ok_or_else(|| anyhow::anyhow!("schedule {name} vanished"))
    }

    pub fn schedule(&self, name: &str) -> Result<Option<Schedule>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM schedules WHERE name = ?1"),
                [name],
                read,
            )
            .optional()?)
    }

    pub fn schedules(&self) -> Result<Vec<Schedule>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM schedules ORDER BY name"))?;
        let rows = st.query_map([], read)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn remove_schedule(&self, name: &str) -> Result<()> {
        if self
            .conn()
            .execute("DELETE FROM schedules WHERE name = ?1", [name])?
            == 0
        {
            bail!("{name} has no capture schedule; `ignite recovery schedule list` shows them");
        }
        Ok(())
    }

    /// Marks `name`'s due run as started at `now`: the next run moves past `now` (runs missed
    /// while the server was down are not repeated: one run catches up for all of them).
    pub fn schedule_started(&self, s: &Schedule, now: i64) -> Result<()> {
        let next = next_run(s.at_minute, s.every_secs, now + 1);
        self.conn().execute(
            "UPDATE schedules SET next_run = ?2, last_run = ?3, last_result = 'running' WHERE name = ?1",
            params![s.name, next, now],
        )?;
        Ok(())
    }

    pub fn schedule_finished(&self, name: &str, result: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE schedules SET last_result = ?2 WHERE name = ?1",
            params![name, result],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86400;
    // 2026-12-06 00:00 UTC.
    const MIDNIGHT: i64 = 1_796_515_200;

    #[test]
    fn next_run_follows_the_grid_from_the_time_of_day() {
        let at2 = parse_at("02:00").unwrap();
        assert_eq!(next_run(at2, DAY as u64, MIDNIGHT), MIDNIGHT + 2 * 3600);
        assert_eq!(
            next_run(at2, DAY as u64, MIDNIGHT + 2 * 3600),
            MIDNIGHT + 2 * 3600
        );
        assert_eq!(
            next_run(at2, DAY as u64, MIDNIGHT + 3 * 3600),
            MIDNIGHT + DAY + 2 * 3600
        );
        // Every 6 h from 02:00: 02, 08, 14, 20 — and at 01:00 the 20:00 grid point of the
        // day before has passed, the next is 02:00.
        let six = 6 * 3600;
        assert_eq!(
            next_run(at2, six, MIDNIGHT + 9 * 3600),
            MIDNIGHT + 14 * 3600
        );
        assert_eq!(next_run(at2, six, MIDNIGHT + 3600), MIDNIGHT + 2 * 3600);
        assert_eq!(next_run(at2, six, MIDNIGHT), MIDNIGHT + 2 * 3600);
        assert!(parse_at("24:00").is_err() && parse_at("2").is_err());
    }

    #[test]
    fn a_started_run_moves_the_next_one_past_now_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let keep = Keep {
            last: Some(3),
            ..Default::default()
        };
        let sch = s
            .set_schedule(
                "web1",
                parse_at("02:00").unwrap(),
                DAY as u64,
                &keep,
                &Options {
                    verify_boot: Some(VerifyBoot {
                        marker: "login:".into(),
                        timeout_secs: 300,
                    }),
                },
                MIDNIGHT,
            )
            .unwrap();
        assert_eq!(sch.next_run, MIDNIGHT + 2 * 3600);
        // The server was down for three days: one run now, the next tomorrow.
        let now = MIDNIGHT + 3 * DAY + 5 * 3600;
        s.schedule_started(&sch, now).unwrap();
        let sch = s.schedule("web1").unwrap().unwrap();
        assert_eq!(sch.next_run, MIDNIGHT + 4 * DAY + 2 * 3600);
        assert_eq!(sch.last_result.as_deref(), Some("running"));
        assert_eq!(sch.keep, keep);
        assert_eq!(sch.options.verify_boot.unwrap().timeout_secs, 300);
        s.remove_schedule("web1").unwrap();
        assert!(s.remove_schedule("web1").is_err());
    }
}
