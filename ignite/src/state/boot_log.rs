//! Each client's boot steps as the boot services saw them (table `boot_log`): DHCP, TFTP and
//! HTTP requests, with the client's last step kept on its registry row.

use anyhow::Result;
use ignite_netboot::MacAddr;
use rusqlite::params;
use serde::Serialize;

use super::{now, State};

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub time: i64,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub step: String,
    pub detail: String,
}

impl State {
    pub fn record_step(
        &self,
        mac: Option<MacAddr>,
        ip: Option<std::net::Ipv4Addr>,
        step: &str,
        detail: &str,
    ) -> Result<()> {
        let conn = self.conn();
        let t = now();
        let mac = mac.map(|m| m.to_string());
        conn.execute(
            "INSERT INTO boot_log (time, mac, ip, step, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t, mac, ip.map(|i| i.to_string()), step, detail],
        )?;
        if let Some(m) = mac {
            conn.execute(
                "UPDATE clients SET last_seen = ?2, last_step = ?3 WHERE mac = ?1",
                params![m, t, format!("{step} {detail}")],
            )?;
        }
        Ok(())
    }

    /// The last `limit` boot steps of a MAC, oldest first.
    pub fn steps(&self, mac: &str, limit: usize) -> Result<Vec<StepRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT time, mac, ip, step, detail FROM boot_log WHERE mac = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let mut v: Vec<StepRecord> = stmt
            .query_map(params![mac, limit as i64], |r| {
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
