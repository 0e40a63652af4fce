//! Guest definitions: table `guests` (the definition as JSON, the engine it last ran on and
//! how it last stopped) and `guest_macs`, whose primary key keeps every NIC's MAC unique
//! across all guests.

use super::{now, State};
use crate::guests::definition::{Definition, Engine};
use anyhow::{bail, Context, Result};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// A definition as stored, with what is known of its last run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub def: Definition,
    pub created: i64,
    pub last_engine: Option<String>,
    pub last_stop: Option<String>,
    pub last_stop_time: Option<i64>,
}

/// A `guests` row as read: definition, created, last_engine, last_stop, last_stop_time.
type GuestRow = (String, i64, Option<String>, Option<String>, Option<i64>);

/// A locally administered MAC in QEMU's customary 52:54:00 range, random in its last three bytes.
fn random_mac() -> Result<String> {
    let mut b = [0u8; 3];
    ignite_recovery::random::fill(&mut b).context("cannot generate a MAC")?;
    Ok(format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]))
}

const GUEST_COLUMNS: &str = "definition, created, last_engine, last_stop, last_stop_time";

fn read_guest(r: &rusqlite::Row) -> rusqlite::Result<GuestRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_record(t: GuestRow) -> Result<Record> {
    Ok(Record {
        def: serde_json::from_str(&t.0).context("a stored guest definition is unreadable")?,
        created: t.1,
        last_engine: t.2,
        last_stop: t.3,
        last_stop_time: t.4,
    })
}

impl State {
    /// Stores `def`, filling in MACs left empty with unique generated ones, then runs
    /// `make_files` (disk images); if it fails nothing is stored.
    pub fn define_guest(
        &self,
        mut def: Definition,
        make_files: impl FnOnce(&Definition) -> Result<()>,
    ) -> Result<Definition> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT name FROM guests WHERE name = ?1",
                [&def.name],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            bail!(
                "guest {} is already defined; choose another name or `ignite vm remove {}` first",
                def.name,
                def.name
            );
        }
        let owner = |mac: &str| -> rusqlite::Result<Option<String>> {
            tx.query_row("SELECT guest FROM guest_macs WHERE mac = ?1", [mac], |r| {
                r.get(0)
            })
            .optional()
        };
        for nic in def.nics.iter_mut() {
            if nic.mac.is_empty() {
                nic.mac = loop {
                    let m = random_mac()?;
                    if owner(&m)?.is_none() {
                        break m;
                    }
                };
            } else if let Some(g) = owner(&nic.mac)? {
                if g == def.name {
                    bail!("MAC {} is given twice; give each NIC its own", nic.mac);
                }
                bail!(
                    "MAC {} is already used by guest {g}; give another --mac or leave it out to generate one",
                    nic.mac
                );
            }
            tx.execute(
                "INSERT INTO guest_macs (mac, guest) VALUES (?1, ?2)",
                params![nic.mac, def.name],
            )?;
        }
        tx.execute(
            "INSERT INTO guests (name, definition, created) VALUES (?1, ?2, ?3)",
            params![def.name, serde_json::to_string(&def)?, now()],
        )?;
        make_files(&def)?;
        tx.commit()?;
        Ok(def)
    }

    pub fn guest(&self, name: &str) -> Result<Record> {
        match self.find_guest(name)? {
            Some(r) => Ok(r),
            None => bail!("guest {name} is not defined; `ignite vm list` shows the defined guests"),
        }
    }

    /// Guest `name`, None when it is not defined.
    pub fn find_guest(&self, name: &str) -> Result<Option<Record>> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {} FROM guests WHERE name = ?1", GUEST_COLUMNS),
                [name],
                read_guest,
            )
            .optional()?;
        row.map(to_record).transpose()
    }

    pub fn guests(&self) -> Result<Vec<Record>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {} FROM guests ORDER BY name",
            GUEST_COLUMNS
        ))?;
        let rows = st.query_map([], read_guest)?;
        rows.map(|r| to_record(r?)).collect()
    }

    pub fn remove_guest(&self, name: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM guest_macs WHERE guest = ?1", [name])?;
        if tx.execute("DELETE FROM guests WHERE name = ?1", [name])? == 0 {
            bail!("guest {name} is not defined; `ignite vm list` shows the defined guests");
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks the guest as having run on `engine` (before its supervisor serves it), so a
    /// supervisor killed outright still leaves it "stopped", not "defined".
    pub fn guest_started(&self, name: &str, engine: Engine) -> Result<()> {
        self.conn().execute(
            "UPDATE guests SET last_engine = ?2 WHERE name = ?1",
            params![name, engine.to_string()],
        )?;
        Ok(())
    }

    pub fn guest_stopped(&self, name: &str, engine: Engine, reason: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE guests SET last_engine = ?2, last_stop = ?3, last_stop_time = ?4 WHERE name = ?1",
            params![name, engine.to_string(), reason, now()],
        )?;
        Ok(())
    }
}
