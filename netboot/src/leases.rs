//! DHCP leases: an in-memory index written through to SQLite, so leases survive a restart
//! and an address is never bound to two clients (the table's primary key is the address).
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: every lease change is committed
//! before the ACK is sent and survives a crash of the server process; a power cut may lose
//! the last few commits, which clients recover from by renewing (their lease is then
//! re-bound to the same MAC, because free addresses are never re-used while their old
//! owner's record exists unless the pool runs out).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

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

impl LeaseStore {
    /// Opens (creating if needed) the lease table in the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<LeaseStore> {
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
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS dhcp_leases (
                ip TEXT PRIMARY KEY,
                mac TEXT,
                expires INTEGER NOT NULL,
                state TEXT NOT NULL,
                hostname TEXT
            );",
        )
        .map_err(db)?;
        let mut store = LeaseStore {
            conn,
            path: path.to_path_buf(),
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&mut self) -> Result<()> {
        let db = |source| Error::Leases {
            path: self.path.clone(),
            source,
        };
        let mut stmt = self
            .conn
            .prepare("SELECT ip, mac, expires, state, hostname FROM dhcp_leases")
            .map_err(db)?;
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
                    self.path.display()
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
        for l in leases {
            if let Some(m) = l.mac {
                self.by_mac.insert(m, l.ip);
            }
            self.by_ip.insert(l.ip, l);
        }
        Ok(())
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

    fn write(&mut self, lease: Lease) -> Result<()> {
        self.conn
            .execute(
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
            .map_err(|source| Error::Leases {
                path: self.path.clone(),
                source,
            })?;
        if let Some(old) = self.by_ip.get(&lease.ip) {
            if let Some(m) = old.mac {
                if Some(m) != lease.mac {
                    self.by_mac.remove(&m);
                }
            }
        }
        if let Some(m) = lease.mac {
            // One record per MAC: forget the address this MAC held before.
            if let Some(prev) = self.by_mac.insert(m, lease.ip) {
                if prev != lease.ip {
                    self.by_ip.remove(&prev);
                    self.conn
                        .execute(
                            "DELETE FROM dhcp_leases WHERE ip = ?1",
                            params![prev.to_string()],
                        )
                        .map_err(|source| Error::Leases {
                            path: self.path.clone(),
                            source,
                        })?;
                }
            }
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
                self.by_mac.remove(&mac);
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
}
