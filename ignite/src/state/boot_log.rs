//! Each client's boot steps as the boot services saw them (table `boot_log`): DHCP, TFTP and
//! HTTP requests, with the client's last step kept on its registry row.
//!
//! Anyone on the boot network can make steps (a made-up MAC per packet, any file name), so
//! the log is bounded: a detail is cut at [`MAX_DETAIL`] bytes, and each write keeps at most
//! `per_mac` rows for every MAC it wrote and `total` rows in all, the oldest going first.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::Result;
use ignite_netboot::MacAddr;
use rusqlite::params;
use serde::Serialize;

use super::{now, State};

/// Longest detail kept: a TFTP file name or an HTTP path is the client's choice.
pub const MAX_DETAIL: usize = 300;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub time: i64,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub step: String,
    pub detail: String,
}

/// A boot step to record.
#[derive(Debug, Clone)]
pub struct NewStep {
    pub mac: Option<MacAddr>,
    pub ip: Option<Ipv4Addr>,
    pub step: &'static str,
    pub detail: String,
}

/// How many boot log rows are kept.
#[derive(Debug, Clone, Copy)]
pub struct BootLogCaps {
    pub per_mac: usize,
    pub total: usize,
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl State {
    /// Records `steps` in one transaction and trims the log to `caps`.
    pub fn record_steps(&self, steps: &[NewStep], caps: BootLogCaps) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let t = now();
        let mut macs = HashSet::new();
        for s in steps {
            let mac = s.mac.map(|m| m.to_string());
            let detail = cut(&s.detail, MAX_DETAIL);
            tx.execute(
                "INSERT INTO boot_log (time, mac, ip, step, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t, mac, s.ip.map(|i| i.to_string()), s.step, detail],
            )?;
            if let Some(m) = mac {
                tx.execute(
                    "UPDATE clients SET last_seen = ?2, last_step = ?3 WHERE mac = ?1",
                    params![m, t, format!("{} {detail}", s.step)],
                )?;
                macs.insert(m);
            }
        }
        for m in macs {
            tx.execute(
                "DELETE FROM boot_log WHERE mac = ?1 AND id <= \
                 (SELECT id FROM boot_log WHERE mac = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![m, caps.per_mac as i64],
            )?;
        }
        tx.execute(
            "DELETE FROM boot_log WHERE id <= \
             (SELECT id FROM boot_log ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![caps.total as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The last `limit` boot steps of a MAC, oldest first.
    pub fn steps(&self, mac: &str, limit: usize) -> Result<Vec<StepRecord>> {
        self.recent_steps(Some(mac), limit)
    }

    /// The last `limit` boot steps, of one MAC or of every client, oldest first.
    pub fn recent_steps(&self, mac: Option<&str>, limit: usize) -> Result<Vec<StepRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT time, mac, ip, step, detail FROM boot_log WHERE ?1 IS NULL OR mac = ?1 \
             ORDER BY id DESC LIMIT ?2",
        )?;
        let mut v: Vec<StepRecord> = stmt
            .query_map(params![mac, limit.min(i64::MAX as usize) as i64], |r| {
                Ok(StepRecord {
                    time: r.get(0)?,
                    mac: r.get(1)?,
                    ip: r.get(2)?,
                    step: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        v.reverse();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(s: &State) -> i64 {
        s.conn()
            .query_row("SELECT count(*) FROM boot_log", [], |r| r.get(0))
            .unwrap()
    }

    fn step(mac: Option<MacAddr>, detail: String) -> NewStep {
        NewStep {
            mac,
            ip: Some(Ipv4Addr::new(10, 0, 0, 9)),
            step: "tftp-missing",
            detail,
        }
    }

    #[test]
    fn the_boot_log_keeps_the_newest_rows_per_mac_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let caps = BootLogCaps {
            per_mac: 5,
            total: 50,
        };
        let victim = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        s.add(victim, "web1", &super::super::Action::Local).unwrap();
        for n in 0..20 {
            s.record_steps(&[step(Some(victim), format!("own {n}"))], caps)
                .unwrap();
        }
        let own = s.steps(&victim.to_string(), 100).unwrap();
        assert_eq!(own.len(), 5);
        assert_eq!(own.last().unwrap().detail, "own 19");
        assert_eq!(
            s.get("web1").unwrap().last_step.unwrap(),
            "tftp-missing own 19"
        );
        // A flood of made-up MACs and long names, in batches as the writer sends them.
        for b in 0..40u32 {
            let batch: Vec<NewStep> = (0..25u32)
                .map(|i| {
                    let n = b * 25 + i;
                    let mac = MacAddr([2, 0, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    step(Some(mac), "\u{1b}[2J".repeat(1000))
                })
                .collect();
            s.record_steps(&batch, caps).unwrap();
        }
        assert_eq!(rows(&s), 50);
        let row = &s.steps("02:00:00:00:03:e7", 1).unwrap()[0];
        assert!(
            row.detail.len() <= MAX_DETAIL + '…'.len_utf8(),
            "{}",
            row.detail.len()
        );
        // Steps without a MAC count toward the total too.
        s.record_steps(
            &(0..80)
                .map(|n| step(None, n.to_string()))
                .collect::<Vec<_>>(),
            caps,
        )
        .unwrap();
        assert_eq!(rows(&s), 50);
    }
}
