//! Server state: one SQLite database, `ignite.db` in the state directory, and this module tree
//! owns every table in it — the client registry (`clients`), the boot log (`boot_log`),
//! installs (`installs`), guest definitions (`guests`) — plus the DHCP leases, whose table
//! ignite-netboot reads and writes but whose schema is created here with the rest.
//!
//! The schema's version is `PRAGMA user_version`: [`migrations`] is one ordered list, and
//! opening a database applies every step past its version, each in its own transaction. A
//! database from before versions existed (version 0, today's tables) upgrades in place; a
//! database newer than this binary is refused, since writing it could lose what it holds.

pub mod boot_log;
pub mod captures;
pub mod clients;
pub mod guests;
pub mod installs;
mod migrations;
pub mod schedules;
pub mod views;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::Connection;

pub use boot_log::StepRecord;
pub use clients::{Action, Client};

pub const DB_NAME: &str = "ignite.db";

pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_NAME)
}

pub struct State {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Files created from now on are private to the owner (0600 files, 0700 directories):
/// for the commands that write state, secrets and images (`server`, `archive`, `recovery`,
/// guests).
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Takes group and other permissions away from `path` (no-op when already so).
fn restrict(path: &Path, mode: u32) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(
            || {
                format!(
                    "{}: cannot make it private (mode {mode:o}); it holds install tokens",
                    path.display()
                )
            },
        )?;
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl State {
    /// Opens the state database in `state_dir` (creating both), bringing its schema up to
    /// this binary's version. The directory is made 0700 and the database 0600: they hold
    /// install tokens, and the directory the guests' disks, consoles and sockets.
    pub fn open(state_dir: &Path) -> Result<State> {
        std::fs::create_dir_all(state_dir).with_context(|| {
            format!("state directory {}: cannot create it", state_dir.display())
        })?;
        let path = db_path(state_dir);
        restrict(state_dir, 0o700)?;
        // Created 0600 before SQLite opens it; SQLite gives -wal and -shm the same mode.
        // Never opened here when it exists: closing any descriptor of the file drops this
        // process's POSIX locks on it, those of open connections included.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("state database {}: cannot create it", path.display())
                })
            }
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            if p.exists() {
                restrict(&p, 0o600)?;
            }
        }
        let mut conn = Connection::open(&path)
            .with_context(|| format!("state database {}: cannot open it", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrations::migrate(&mut conn)
            .with_context(|| format!("state database {}", path.display()))?;
        Ok(State {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The DHCP lease store on this database (its own connection; the schema is ours).
    pub fn lease_store(&self) -> Result<ignite_netboot::leases::LeaseStore> {
        Ok(ignite_netboot::leases::LeaseStore::open_migrated(
            &self.path,
        )?)
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each statement
        // is atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by the ignite before schema versions (session 3's tables, dumped
    /// with rows from `client add`, `client default`, `vm create` and a booting install).
    const VERSION_0: &str = include_str!("../../tests/fixtures/state-v0.sql");

    #[test]
    fn a_database_from_before_versions_upgrades_in_place_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(db_path(dir.path()))
            .unwrap()
            .execute_batch(VERSION_0)
            .unwrap();
        let s = State::open(dir.path()).unwrap();
        let version: i64 = s
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, migrations::VERSION);
        assert_eq!(s.get("web1").unwrap().action, Action::Install("web".into()));
        assert_eq!(s.default_action().unwrap(), Some(Action::Local));
        assert_eq!(s.guest("g1").unwrap().def.mem, 256 << 20);
        assert_eq!(s.steps("52:54:00:aa:00:01", 10).unwrap().len(), 1);
        let install = s.current_install("52:54:00:aa:00:01").unwrap().unwrap();
        assert_eq!(install.profile, "web");
        assert_eq!(s.phases(&install.token).unwrap().len(), 1);
        assert_eq!(s.log_since(&install.token, 0).unwrap().len(), 1);
        let leases: i64 = s
            .conn()
            .query_row("SELECT count(*) FROM dhcp_leases", [], |r| r.get(0))
            .unwrap();
        assert_eq!(leases, 1);
        // Opening again is a no-op.
        drop(s);
        State::open(dir.path()).unwrap();
    }

    #[test]
    fn a_database_newer_than_the_binary_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(db_path(dir.path())).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 999;")
            .unwrap();
        drop(conn);
        let err = format!("{:#}", State::open(dir.path()).err().unwrap());
        assert!(err.contains("schema version is 999"), "{err}");
        assert!(err.contains("ignite.db"), "{err}");
        let conn = Connection::open(db_path(dir.path())).unwrap();
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1, "nothing was created in a newer database");
    }

    #[test]
    fn the_state_directory_and_database_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("state");
        // As left by an older ignite under umask 022.
        std::fs::create_dir(&st).unwrap();
        std::fs::set_permissions(&st, std::fs::Permissions::from_mode(0o755)).unwrap();
        State::open(&st)
            .unwrap()
            .set_default_action(&Action::Local)
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&st), 0o700);
        assert_eq!(mode(&db_path(&st)), 0o600);
        std::fs::set_permissions(db_path(&st), std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = State::open(&st).unwrap();
        assert_eq!(mode(&db_path(&st)), 0o600);
        let wal = PathBuf::from(format!("{}-wal", db_path(&st).display()));
        assert_eq!(mode(&wal), 0o600, "SQLite copies the database's mode");
        drop(s);
    }

    /// POSIX locks this process holds on `path` (from /proc/locks).
    fn locks_on(path: &Path) -> usize {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(path).unwrap().ino();
        let pid = std::process::id().to_string();
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // "1: POSIX ADVISORY READ <pid> <maj>:<min>:<inode> <start> <end>"
                f.get(1) == Some(&"POSIX")
                    && f.get(4) == Some(&pid.as_str())
                    && f.get(5).and_then(|d| d.rsplit(':').next()) == Some(&ino.to_string())
            })
            .count()
    }

    #[test]
    fn opening_again_keeps_the_open_connections_locks() {
        // POSIX locks belong to the process: closing any descriptor of the database file
        // drops every connection's locks on it. Another process closing the database then
        // takes itself for the last user, checkpoints and removes the WAL under this one
        // (the server saw "disk I/O error" once its capture scheduler opened the state
        // every second while `ignite recovery list` ran beside it).
        let dir = tempfile::tempdir().unwrap();
        let a = State::open(dir.path()).unwrap();
        a.set_default_action(&Action::Local).unwrap();
        let held = locks_on(&db_path(dir.path()));
        assert!(held > 0, "an open WAL connection holds a shared lock");
        drop(State::open(dir.path()).unwrap());
        assert_eq!(locks_on(&db_path(dir.path())), held);
        assert_eq!(a.default_action().unwrap(), Some(Action::Local));
    }

    #[test]
    fn a_fresh_database_gets_every_table_at_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        for table in ["clients", "boot_log", "installs", "guests", "dhcp_leases"] {
            let n: i64 = s
                .conn()
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table}");
        }
    }
}
