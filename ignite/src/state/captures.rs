//! Capture history (table `captures`): one row per attempt, started as `running` and ended
//! as `ok` (with the record's snapshot and its figures) or `failed` (with the error). The
//! store holds what was captured; this holds what happened, failures included.

use anyhow::Result;
use rusqlite::params;
use serde::Serialize;

use super::{now_ms, State};

#[derive(Debug, Clone, Serialize)]
pub struct CaptureRow {
    pub id: i64,
    pub name: String,
    /// `block` or `files`.
    pub kind: String,
    /// `host` (a guest's disks read by the server), `agent` (netbooted client), `live`.
    pub how: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// `running`, `ok` or `failed`.
    pub result: String,
    pub error: Option<String>,
    /// The capture's record snapshot id.
    pub record: Option<String>,
    pub logical_bytes: u64,
    pub read_bytes: u64,
    pub new_bytes: u64,
    pub pause_ms: u64,
    pub notes: String,
    /// `boots` / `does not boot: ...` once a test restore ran.
    pub boot_check: Option<String>,
}

/// What a finished capture reports.
#[derive(Debug, Clone, Default)]
pub struct CaptureDone {
    pub record: String,
    pub logical_bytes: u64,
    pub read_bytes: u64,
    pub new_bytes: u64,
    pub pause_ms: u64,
    pub notes: String,
}

const COLUMNS: &str = "id, name, kind, how, started_ms, finished_ms, result, error, record, \
     logical_bytes, read_bytes, new_bytes, pause_ms, notes, boot_check";

fn read_row(r: &rusqlite::Row) -> rusqlite::Result<CaptureRow> {
    Ok(CaptureRow {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        how: r.get(3)?,
        started_ms: r.get(4)?,
        finished_ms: r.get(5)?,
        result: r.get(6)?,
        error: r.get(7)?,
        record: r.get(8)?,
        logical_bytes: r.get::<_, i64>(9)? as u64,
        read_bytes: r.get::<_, i64>(10)? as u64,
        new_bytes: r.get::<_, i64>(11)? as u64,
        pause_ms: r.get::<_, i64>(12)? as u64,
        notes: r.get(13)?,
        boot_check: r.get(14)?,
    })
}

impl State {
    /// Records a capture of `name` as started. An earlier attempt of the same name still
    /// `running` was interrupted (its process is gone: captures of one name are serialized).
    pub fn capture_started(&self, name: &str, kind: &str, how: &str) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "UPDATE captures SET result = 'failed', error = 'interrupted (the capture process ended)', \
             finished_ms = ?2 WHERE name = ?1 AND result = 'running'",
            params![name, now_ms()],
        )?;
        conn.execute(
            "INSERT INTO captures (name, kind, how, started_ms, result) VALUES (?1, ?2, ?3, ?4, 'running')",
            params![name, kind, how, now_ms()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn capture_succeeded(&self, id: i64, d: &CaptureDone) -> Result<()> {
        self.conn().execute(
            "UPDATE captures SET result = 'ok', finished_ms = ?2, record = ?3, logical_bytes = ?4, \
             read_bytes = ?5, new_bytes = ?6, pause_ms = ?7, notes = ?8 WHERE id = ?1",
            params![
                id,
                now_ms(),
                d.record,
                d.logical_bytes as i64,
                d.read_bytes as i64,
                d.new_bytes as i64,
                d.pause_ms as i64,
                d.notes
            ],
        )?;
        Ok(())
    }

    pub fn capture_failed(&self, id: i64, error: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE captures SET result = 'failed', finished_ms = ?2, error = ?3 WHERE id = ?1",
            params![id, now_ms(), error],
        )?;
        Ok(())
    }

    /// Captures, oldest first; of `name` only when given.
    pub fn captures(&self, name: Option<&str>) -> Result<Vec<CaptureRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM captures WHERE ?1 IS NULL OR name = ?1 ORDER BY id"
        ))?;
        let rows = st.query_map(params![name], read_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_kept_and_an_interrupted_one_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let a = s.capture_started("web1", "block", "host").unwrap();
        // A second start while the first is still `running`: the first was interrupted.
        let b = s.capture_started("web1", "block", "host").unwrap();
        s.capture_succeeded(
            b,
            &CaptureDone {
                record: "abcd".into(),
                read_bytes: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let c = s.capture_started("db1", "files", "agent").unwrap();
        s.capture_failed(c, "disk gone").unwrap();
        let rows = s.captures(Some("web1")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, a);
        assert_eq!(rows[0].result, "failed");
        assert!(rows[0].error.as_deref().unwrap().contains("interrupted"));
        assert_eq!(rows[1].result, "ok");
        assert_eq!(rows[1].read_bytes, 10);
        assert_eq!(s.captures(None).unwrap().len(), 3);
    }
}
