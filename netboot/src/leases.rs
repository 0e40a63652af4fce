//! DHCP leases: an in-memory index written through to SQLite, so leases survive a restart
//! and an address is never bound to two clients (the table's primary key is the address).
//!
//! The schema is [`LEASE_MIGRATIONS`], an ordered list the server's state database applies
//! with its own migrations (one `PRAGMA user_version` for the whole database); the server
//! then opens the store with [`LeaseStore::open_migrated`], which creates nothing.
//! [`LeaseStore::open`] applies the steps itself, for tests and tools on a bare file.
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: every lease change is one
//! transaction committed before the ACK is sent and survives a crash of the server process;
//! a power cut may lose the last few commits, which clients recover from by renewing (their
//! lease is then re-bound to the same MAC, because free addresses are never re-used while
//! their old owner's record exists unless the pool runs out).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

/// The lease table's schema as ordered migration steps. The server runs them in order among
/// its own, once each; [`LeaseStore::open`] replays all of them, so each step must be safe
/// to run again on a database that already has it (`IF NOT EXISTS`). Append new steps;
/// never edit a published one.
pub const LEASE_MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS dhcp_leases (
        ip TEXT PRIMARY KEY,
        mac TEXT,
        expires INTEGER NOT NULL,
        state TEXT NOT NULL,
        hostname TEXT
    )"];

use crate::error::{Error, Result};
use crate::MacAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Bound,
    Released,
    /// The client found the address in use (DECLINE); kept out of the pool until `expires`.
    Declined,
}

impl LeaseState {
    fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }

    fn parse(s: &str) -> Option<LeaseState> {
        Some(match s {
            "bound" => LeaseState::Bound,
            "released" => LeaseState::Released,
            "declined" => LeaseState::Declined,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// `None` for a declined address (it belongs to nobody).
    pub mac: Option<MacAddr>,
    /// Unix seconds.
    pub expires: u64,
    pub state: LeaseState,
    pub hostname: Option<String>,
}

impl Lease {
    pub fn active(&self, now: u64) -> bool {
        self.state != LeaseState::Released && self.expires > now
    }
}

pub struct LeaseStore {
    conn: Connection,
    path: PathBuf,
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
}

/// A connection to the database at `path` with the settings the module doc describes.
fn connect(path: &Path) -> Result<Connection> {
    let db = |source| Error::Leases {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db)?;
    Ok(conn)
}

impl LeaseStore {
    /// Opens the lease table in the SQLite database at `path`, first applying
    /// [`LEASE_MIGRATIONS`] (creating the file and table if needed). For tests and tools; the
    /// server migrates its state database itself and uses [`LeaseStore::open_migrated`].
    pub fn open(path: &Path) -> Result<LeaseStore> {
        let conn = connect(path)?;
        for step in LEASE_MIGRATIONS {
            conn.execute_batch(step).map_err(|source| Error::Leases {
                path: path.to_path_buf(),
                source,
            })?;
        }
        LeaseStore::load(conn, path)
    }

    /// Opens the lease table of a database whose owner has already applied
    /// [`LEASE_MIGRATIONS`]; creates nothing, and says so if the table is missing.
    pub fn open_migrated(path: &Path) -> Result<LeaseStore> {
        if !path.is_file() {
            return Err(Error::Config(format!(
                "lease database {}: does not exist; the server creates and migrates it at start",
                path.display()
            )));
        }
        LeaseStore::load(connect(path)?, path)
    }

    fn load(conn: Connection, path: &Path) -> Result<LeaseStore> {
        let db = |source| Error::Leases {
            path: path.to_path_buf(),
            source,
        };
        let mut stmt =
            match conn.prepare("SELECT ip, mac, expires, state, hostname FROM dhcp_leases") {
                Ok(s) => s,
                Err(e) if e.to_string().contains("no such table") => {
                    return Err(Error::Config(format!(
                        "lease database {}: has no dhcp_leases table; it was not migrated \
                     (run the server's migrations, or LeaseStore::open for a bare file)",
                        path.display()
                    )))
                }
                Err(e) => return Err(db(e)),
            };
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(db)?;
        let mut leases = Vec::new();
        for row in rows {
            let (ip, mac, expires, state, hostname) = row.map_err(db)?;
            // A row we cannot read is skipped with a warning rather than refusing to start.
            let (Ok(ip), Some(state)) = (ip.parse::<Ipv4Addr>(), LeaseState::parse(&state)) else {
                tracing::warn!(
                    "lease database {}: skipping unreadable row for {ip}",
                    path.display()
                );
                continue;
            };
            let mac = mac.and_then(|m| m.parse().ok());
            leases.push(Lease {
                ip,
                mac,
                expires: expires.max(0) as u64,
                state,
                hostname,
            });
        }
        drop(stmt);
        let mut store = LeaseStore {
            conn,
            path: path.to_path_buf(),
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
        };
        for l in leases {
            if let Some(m) = l.mac {
                store.by_mac.insert(m, l.ip);
            }
            store.by_ip.insert(l.ip, l);
        }
        Ok(store)
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// The last address this MAC held (bound, released or expired).
    pub fn ip_of(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).copied()
    }

    pub fn all(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.by_ip.values().cloned().collect();
        v.sort_by_key(|l| l.ip);
        v
    }

    /// Whether `ip` may be given to `mac` now: nobody's, already this MAC's, or another
    /// client's lease that was released or has expired. `prefer_unused` additionally refuses
    /// addresses that remember a different owner, so a returning client finds its old one.
    pub fn available(&self, ip: Ipv4Addr, mac: MacAddr, now: u64, prefer_unused: bool) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(l) if l.mac == Some(mac) && l.state != LeaseState::Declined => true,
            Some(l) if l.state == LeaseState::Declined => l.expires <= now,
            Some(l) => !prefer_unused && !l.active(now),
        }
    }

    /// Stores `lease`, replacing any record of its address, and forgets the address its MAC
    /// held before (one record per MAC). Both changes are one transaction, and the memory
    /// index changes only after it commits, so a failure leaves disk and memory as they were.
    fn write(&mut self, lease: Lease) -> Result<()> {
        let prev = lease
            .mac
            .and_then(|m| self.by_mac.get(&m).copied())
            .filter(|p| *p != lease.ip);
        let db = |source| Error::Leases {
            path: self.path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(db)?;
        if let Some(p) = prev {
            tx.execute(
                "DELETE FROM dhcp_leases WHERE ip = ?1",
                params![p.to_string()],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO dhcp_leases (ip, mac, expires, state, hostname)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                lease.ip.to_string(),
                lease.mac.map(|m| m.to_string()),
                lease.expires as i64,
                lease.state.as_str(),
                lease.hostname
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        if let Some(p) = prev {
            self.by_ip.remove(&p);
        }
        if let Some(old_mac) = self.by_ip.get(&lease.ip).and_then(|old| old.mac) {
            if Some(old_mac) != lease.mac {
                self.by_mac.remove(&old_mac);
            }
        }
        if let Some(m) = lease.mac {
            self.by_mac.insert(m, lease.ip);
        }
        self.by_ip.insert(lease.ip, lease);
        Ok(())
    }

    /// Binds (or renews) `ip` to `mac` until `expires`. The caller checked [`available`].
    pub fn bind(
        &mut self,
        ip: Ipv4Addr,
        mac: MacAddr,
        expires: u64,
        hostname: Option<String>,
    ) -> Result<()> {
        self.write(Lease {
            ip,
            mac: Some(mac),
            expires,
            state: LeaseState::Bound,
            hostname,
        })
    }

    /// RELEASE: only the holder may release. Returns whether anything changed.
    pub fn release(&mut self, ip: Ipv4Addr, mac: MacAddr, now: u64) -> Result<bool> {
        match self.by_ip.get(&ip) {
            Some(l) if l.mac == Some(mac) && l.state == LeaseState::Bound => {
                let mut l = l.clone();
                l.state = LeaseState::Released;
                l.expires = now;
                self.write(l)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// DECLINE: the address is in use by someone else on the wire; quarantine it.
    pub fn decline(&mut self, ip: Ipv4Addr, mac: MacAddr, until: u64) -> Result<bool> {
        match self.by_ip.get(&ip) {
            Some(l) if l.mac == Some(mac) => {
                let l = Lease {
                    ip,
                    mac: None,
                    expires: until,
                    state: LeaseState::Declined,
                    hostname: None,
                };
                self.write(l)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    #[test]
    fn leases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        {
            let mut s = LeaseStore::open(&db).unwrap();
            s.bind(ip(10), mac(1), 1000, Some("a".into())).unwrap();
            s.bind(ip(11), mac(2), 1000, None).unwrap();
        }
        let s = LeaseStore::open(&db).unwrap();
        assert_eq!(s.ip_of(mac(1)), Some(ip(10)));
        assert_eq!(s.get(ip(11)).unwrap().mac, Some(mac(2)));
        assert_eq!(s.get(ip(10)).unwrap().hostname.as_deref(), Some("a"));
        assert!(
            !s.available(ip(10), mac(2), 500, false),
            "bound to another client"
        );
        assert!(s.available(ip(10), mac(1), 500, true));
        assert!(s.available(ip(10), mac(2), 2000, false), "expired");
        assert!(
            !s.available(ip(10), mac(2), 2000, true),
            "remembers its owner"
        );
    }

    #[test]
    fn one_address_per_mac() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LeaseStore::open(&dir.path().join("s.db")).unwrap();
        s.bind(ip(10), mac(1), 1000, None).unwrap();
        s.bind(ip(12), mac(1), 1000, None).unwrap();
        assert!(s.get(ip(10)).is_none());
        assert_eq!(s.all().len(), 1);
        drop(s);
        let s = LeaseStore::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(s.all().len(), 1);
    }

    #[test]
    fn release_and_decline_only_by_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LeaseStore::open(&dir.path().join("s.db")).unwrap();
        s.bind(ip(10), mac(1), 1000, None).unwrap();
        assert!(!s.release(ip(10), mac(2), 10).unwrap());
        assert!(s.release(ip(10), mac(1), 10).unwrap());
        assert!(s.available(ip(10), mac(2), 10, false));
        s.bind(ip(11), mac(3), 1000, None).unwrap();
        assert!(!s.decline(ip(11), mac(4), 500).unwrap());
        assert!(s.decline(ip(11), mac(3), 500).unwrap());
        assert!(!s.available(ip(11), mac(3), 100, false), "quarantined");
        assert!(s.available(ip(11), mac(3), 600, false));
        assert_eq!(s.ip_of(mac(3)), None);
    }

    #[test]
    fn a_failed_move_changes_neither_disk_nor_memory() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let mut s = LeaseStore::open(&db).unwrap();
        s.bind(ip(10), mac(1), 1000, None).unwrap();
        // Moving mac 1 to .12 deletes its old row; make exactly that statement fail.
        s.conn
            .execute_batch(
                "CREATE TRIGGER no_delete BEFORE DELETE ON dhcp_leases
                 BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;",
            )
            .unwrap();
        let e = s.bind(ip(12), mac(1), 1000, None).unwrap_err();
        assert!(e.to_string().contains("disk trouble"), "{e}");
        assert_eq!(s.ip_of(mac(1)), Some(ip(10)), "memory unchanged");
        assert!(s.get(ip(12)).is_none());
        drop(s);
        let s = LeaseStore::open(&db).unwrap();
        let all = s.all();
        assert_eq!(all.len(), 1, "one row per MAC on disk: {all:?}");
        assert_eq!(all[0].ip, ip(10));
    }

    #[test]
    fn open_migrated_uses_the_owners_schema_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let e = LeaseStore::open_migrated(&db).err().unwrap().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!db.exists(), "no file created");
        // The owner's database, with its own tables but not yet ours.
        let owner = Connection::open(&db).unwrap();
        owner
            .execute_batch("CREATE TABLE clients (mac TEXT PRIMARY KEY)")
            .unwrap();
        let e = LeaseStore::open_migrated(&db).err().unwrap().to_string();
        assert!(e.contains("not migrated"), "{e}");
        // As the server does it: its steps and ours in one ordered list, each once.
        for step in LEASE_MIGRATIONS {
            owner.execute_batch(step).unwrap();
        }
        owner.pragma_update(None, "user_version", 2).unwrap();
        let mut s = LeaseStore::open_migrated(&db).unwrap();
        s.bind(ip(10), mac(1), 1000, None).unwrap();
        drop(s);
        assert_eq!(LeaseStore::open_migrated(&db).unwrap().all().len(), 1);
        let v: i64 = owner
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2, "the store leaves the owner's schema version alone");
        // The convenience path replays the steps over an existing table.
        assert_eq!(LeaseStore::open(&db).unwrap().all().len(), 1);
    }
}
