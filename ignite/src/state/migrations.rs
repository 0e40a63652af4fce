//! The schema, as one ordered list of steps: step `i` takes a database from version `i` to
//! `i + 1` (`PRAGMA user_version`). Append only: a step that has shipped is never edited or
//! reordered, since databases in the field have already run it.

use anyhow::{bail, Context, Result};
use ignite_netboot::leases::LEASE_MIGRATIONS;
use rusqlite::Connection;

/// Version 1 is the schema as it stood before versions were recorded, written with
/// `IF NOT EXISTS` so that such a database (version 0, tables present) upgrades in place.
const V1: &str = "
    CREATE TABLE IF NOT EXISTS clients (
        mac TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        action TEXT NOT NULL,
        arg TEXT,
        last_seen INTEGER,
        last_step TEXT
    );
    CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS boot_log (
        id INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        mac TEXT,
        ip TEXT,
        step TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS boot_log_mac ON boot_log(mac, id);
    CREATE TABLE IF NOT EXISTS installs (
        token TEXT PRIMARY KEY,
        mac TEXT NOT NULL,
        profile TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        snapshot TEXT,
        hostname TEXT,
        phase TEXT,
        updated_ms INTEGER
    );
    CREATE INDEX IF NOT EXISTS installs_mac ON installs(mac, created_ms);
    CREATE TABLE IF NOT EXISTS install_phases (
        id INTEGER PRIMARY KEY,
        token TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        phase TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS install_phases_token ON install_phases(token, id);
    CREATE TABLE IF NOT EXISTS install_log (
        id INTEGER PRIMARY KEY,
        token TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS install_log_token ON install_log(token, id);
    CREATE TABLE IF NOT EXISTS guests (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        created INTEGER NOT NULL,
        last_engine TEXT,
        last_stop TEXT,
        last_stop_time INTEGER
    );
    CREATE TABLE IF NOT EXISTS guest_macs (
        mac TEXT PRIMARY KEY,
        guest TEXT NOT NULL
    );";

/// Version 2: capture history (one row per attempt, failed ones too) and capture schedules.
const V2: &str = "
    CREATE TABLE captures (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        how TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        result TEXT NOT NULL,
        error TEXT,
        record TEXT,
        logical_bytes INTEGER NOT NULL DEFAULT 0,
        read_bytes INTEGER NOT NULL DEFAULT 0,
        new_bytes INTEGER NOT NULL DEFAULT 0,
        pause_ms INTEGER NOT NULL DEFAULT 0,
        notes TEXT NOT NULL DEFAULT '',
        boot_check TEXT
    );
    CREATE INDEX captures_name ON captures(name, id);
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        at_minute INTEGER NOT NULL,
        every_secs INTEGER NOT NULL,
        policy TEXT NOT NULL,
        options TEXT NOT NULL,
        next_run INTEGER NOT NULL,
        last_run INTEGER,
        last_result TEXT
    );";

/// Version 3 (issue 18): an install token is bound to the address it was handed to and
/// expires; the install log's size is kept to cap it.
const V3: &str = "
    ALTER TABLE installs ADD COLUMN bound_ip TEXT;
    ALTER TABLE installs ADD COLUMN expires_ms INTEGER;
    ALTER TABLE installs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS installs_status ON installs(status);";

/// Version 4: capture tokens, for captures over the network (the agent of a client booted to
/// `capture`, or `ignite recovery capture --server` on a running one).
const V4: &str = "
    CREATE TABLE capture_tokens (
        token TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        how TEXT NOT NULL,
        kind TEXT,
        rules TEXT NOT NULL DEFAULT '',
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        bound_ip TEXT,
        capture_id INTEGER,
        used INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX capture_tokens_name ON capture_tokens(name, created_ms);";

/// Version 5: an agent job recovers a capture over the client's disks (boot action
/// `recover`) instead of installing a profile.
const V5: &str = "ALTER TABLE installs ADD COLUMN recover TEXT;";

/// Version 6 (issue 14): the media library (ISO images and virtual tapes) and what each
/// guest drive holds.
const V6: &str = "
    CREATE TABLE media (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        added INTEGER NOT NULL
    );
    CREATE TABLE media_drives (
        guest TEXT NOT NULL,
        drive TEXT NOT NULL,
        media TEXT NOT NULL,
        PRIMARY KEY (guest, drive)
    );
    CREATE INDEX media_drives_media ON media_drives(media);";

/// One version step: SQL batches applied in order, in one transaction.
type Step = &'static [&'static str];

/// ignite-netboot owns the lease table's schema ([`LEASE_MIGRATIONS`]); each of its steps is
/// applied here, in order, as part of one of ours.
const MIGRATIONS: &[Step] = &[
    &[V1, LEASE_MIGRATIONS[0]],
    &[V2],
    &[V3],
    &[V4],
    &[V5],
    &[V6],
];

/// The schema version this binary writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies every step past the database's version, each in its own transaction with the new
/// version recorded in it, so a crash leaves the database at the last whole step.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let mut version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        bail!(
            "its schema version is {version}, newer than this ignite knows ({VERSION}); \
             run the ignite that wrote it (or a newer one) — this one would not keep what it stores"
        );
    }
    while version < VERSION {
        let tx = conn.transaction()?;
        for sql in MIGRATIONS[version as usize] {
            tx.execute_batch(sql)
                .with_context(|| format!("cannot upgrade its schema to version {}", version + 1))?;
        }
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        version += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lease_migration_is_applied_once_in_order() {
        let ours: Vec<&str> = MIGRATIONS
            .iter()
            .flat_map(|step| step.iter().copied())
            .filter(|sql| LEASE_MIGRATIONS.contains(sql))
            .collect();
        assert_eq!(
            ours, LEASE_MIGRATIONS,
            "add netboot's new lease steps to MIGRATIONS"
        );
    }
}
