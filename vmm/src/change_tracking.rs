//! Change tracking for a writable disk: one bit per region of `granularity` bytes written
//! since the last capture. The map lives next to the image (`IMAGE.ignite-changes`) and a
//! newly set bit reaches the file — and, by default, the disk (fdatasync) — before the write
//! it covers is performed, so no crash can lose a dirty mark. A capture takes the map and
//! resets it in one step ([`ChangeTracker::take`]); if the capture fails it gives the map
//! back ([`ChangeTracker::merge`]).
//!
//! A capture of a running guest needs one consistent point: every disk model holds
//! [`ChangeTracker::writing`] from marking a write until the write is done, and a capture
//! holds [`ChangeTracker::hold`] while it takes the map and reads what it names, so no write
//! is in flight (marked in the taken map but not yet on the image) and none starts.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

const MAGIC: &[u8; 8] = b"IGNCHG01";
const HEADER: u64 = 32;

/// The set of regions changed since some point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    pub granularity: u64,
    pub disk_size: u64,
    bits: Vec<u8>,
}

impl ChangeSet {
    fn empty(granularity: u64, disk_size: u64) -> ChangeSet {
        let regions = disk_size.div_ceil(granularity);
        ChangeSet {
            granularity,
            disk_size,
            bits: vec![0; regions.div_ceil(8) as usize],
        }
    }

    pub fn regions(&self) -> u64 {
        self.disk_size.div_ceil(self.granularity)
    }

    pub fn is_marked(&self, region: u64) -> bool {
        region < self.regions() && self.bits[(region / 8) as usize] & (1 << (region % 8)) != 0
    }

    pub fn count(&self) -> u64 {
        self.bits.iter().map(|b| b.count_ones() as u64).sum()
    }

    /// Changed byte ranges (offset, length), adjacent regions merged, clipped to the disk.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in (0..self.regions()).filter(|&r| self.is_marked(r)) {
            let start = r * self.granularity;
            let len = self.granularity.min(self.disk_size - start);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
        out
    }

    /// Marks bytes [offset, offset+len); returns the byte range of `bits` that changed.
    fn mark(&mut self, offset: u64, len: u64) -> Option<(usize, usize)> {
        if len == 0 || offset >= self.disk_size {
            return None;
        }
        let first = offset / self.granularity;
        let last = (offset.saturating_add(len).min(self.disk_size) - 1) / self.granularity;
        let mut changed: Option<(usize, usize)> = None;
        for r in first..=last {
            let (byte, bit) = ((r / 8) as usize, 1u8 << (r % 8));
            if self.bits[byte] & bit == 0 {
                self.bits[byte] |= bit;
                changed = Some(match changed {
                    None => (byte, byte + 1),
                    Some((s, _)) => (s, byte + 1),
                });
            }
        }
        changed
    }
}

pub struct ChangeTracker {
    path: PathBuf,
    sync: bool,
    inner: Mutex<(File, ChangeSet)>,
    /// Writers share it; a capture holds it alone (see the module docs).
    gate: RwLock<()>,
}

impl ChangeTracker {
    /// Where the map of `image` lives.
    pub fn map_path(image: &Path) -> PathBuf {
        let mut p = image.as_os_str().to_owned();
        p.push(".ignite-changes");
        PathBuf::from(p)
    }

    /// Opens the map of `image`, creating it (all clean) if absent. `sync` = fdatasync the map
    /// before each write that sets new bits (survives host crashes, not only monitor ones).
    pub fn open(
        image: &Path,
        disk_size: u64,
        granularity: u64,
        sync: bool,
    ) -> Result<ChangeTracker> {
        let path = Self::map_path(image);
        let err = |msg: String| Error::ChangeMap {
            path: path.clone(),
            msg,
        };
        if !granularity.is_power_of_two() || granularity < 4096 {
            return Err(err(format!(
                "granularity {granularity} is not a power of two of at least 4096"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                err(format!(
                    "{e}; the directory of the disk image must be writable"
                ))
            })?;
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        let set = if len == 0 {
            let set = ChangeSet::empty(granularity, disk_size);
            write_all(&file, &set).map_err(|e| err(e.to_string()))?;
            set
        } else {
            let set = read_set(&file, len).map_err(err)?;
            if set.granularity != granularity || set.disk_size != disk_size {
                return Err(err(format!(
                    "it tracks {} bytes at {} byte granularity but the disk is {disk_size} bytes tracked at {granularity}; \
                     capture the disk in full and delete the map",
                    set.disk_size, set.granularity
                )));
            }
            set
        };
        Ok(ChangeTracker {
            path,
            sync,
            inner: Mutex::new((file, set)),
            gate: RwLock::new(()),
        })
    }

    /// Reads a map without a running VM (e.g. to plan a capture of a stopped guest).
    pub fn load(image: &Path) -> Result<ChangeSet> {
        let path = Self::map_path(image);
        let err = |msg: String| Error::ChangeMap {
            path: path.clone(),
            msg,
        };
        let file = File::open(&path).map_err(|e| err(e.to_string()))?;
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        read_set(&file, len).map_err(err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Held by a disk model from marking writes until they are on the image.
    pub fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held by a capture: waits for writes in flight, then keeps new ones waiting until the
    /// guard is dropped.
    pub fn hold(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a region about to be written. Returns only once the mark is persisted.
    pub fn mark(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (file, set) = &mut *g;
        if let Some((s, e)) = set.mark(offset, len) {
            file.write_all_at(&set.bits[s..e], HEADER + s as u64)?;
            if self.sync {
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Marks several regions with one write and one sync of the map.
    pub fn mark_all(&self, regions: &[(u64, u64)]) -> std::io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (file, set) = &mut *g;
        let mut changed: Option<(usize, usize)> = None;
        for &(offset, len) in regions {
            if let Some((s, e)) = set.mark(offset, len) {
                changed = Some(changed.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
            }
        }
        if let Some((s, e)) = changed {
            file.write_all_at(&set.bits[s..e], HEADER + s as u64)?;
            if self.sync {
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Current marks, without resetting.
    pub fn peek(&self) -> ChangeSet {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Returns the marks and resets the map (persisted) in one step: writes that complete
    /// after this are in the next set.
    pub fn take(&self) -> Result<ChangeSet> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (file, set) = &mut *g;
        let fresh = ChangeSet::empty(set.granularity, set.disk_size);
        write_all(file, &fresh).map_err(|e| Error::ChangeMap {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        Ok(std::mem::replace(set, fresh))
    }

    /// Gives back marks taken by a capture that did not complete.
    pub fn merge(&self, taken: &ChangeSet) -> Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (file, set) = &mut *g;
        if taken.granularity != set.granularity || taken.bits.len() != set.bits.len() {
            return Err(Error::ChangeMap {
                path: self.path.clone(),
                msg: "merging a set of another geometry".into(),
            });
        }
        for (a, b) in set.bits.iter_mut().zip(&taken.bits) {
            *a |= b;
        }
        write_all(file, set).map_err(|e| Error::ChangeMap {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }

    /// Flushes the map (on guest FLUSH, before the image is flushed).
    pub fn sync(&self) -> std::io::Result<()> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .sync_data()
    }
}

fn write_all(file: &File, set: &ChangeSet) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(HEADER as usize + set.bits.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&set.granularity.to_le_bytes());
    buf.extend_from_slice(&set.disk_size.to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&set.bits);
    file.write_all_at(&buf, 0)?;
    file.set_len(buf.len() as u64)?;
    file.sync_data()
}

fn read_set(file: &File, len: u64) -> std::result::Result<ChangeSet, String> {
    let mut hdr = [0u8; HEADER as usize];
    file.read_exact_at(&mut hdr, 0)
        .map_err(|e| format!("unreadable header: {e}"))?;
    if &hdr[..8] != MAGIC {
        return Err("not an Ignite change map (bad magic)".into());
    }
    let granularity = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    let disk_size = u64::from_le_bytes(hdr[16..24].try_into().unwrap());
    if !granularity.is_power_of_two() || granularity < 4096 {
        return Err(format!("corrupt header: granularity {granularity}"));
    }
    let mut set = ChangeSet::empty(granularity, disk_size);
    if len != HEADER + set.bits.len() as u64 {
        return Err(format!(
            "size {len} does not match its header; delete it and capture the disk in full"
        ));
    }
    file.read_exact_at(&mut set.bits, HEADER)
        .map_err(|e| e.to_string())?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hold waits for a write in flight and keeps the next one waiting until released.
    #[test]
    fn a_hold_waits_for_writes_in_flight_and_blocks_new_ones() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::Duration;
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-ct").unwrap();
        let t = Arc::new(
            ChangeTracker::open(&dir.as_path().join("d.img"), 1 << 20, 4096, false).unwrap(),
        );
        let writing = t.writing();
        let held = Arc::new(AtomicBool::new(false));
        let holder = {
            let (t, held) = (t.clone(), held.clone());
            std::thread::spawn(move || {
                let _g = t.hold();
                held.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
                held.store(false, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !held.load(Ordering::SeqCst),
            "hold taken while a write was in flight"
        );
        drop(writing);
        while !held.load(Ordering::SeqCst) && !holder.is_finished() {
            std::thread::yield_now();
        }
        let _w = t.writing();
        assert!(
            !held.load(Ordering::SeqCst),
            "a write started during the hold"
        );
        holder.join().unwrap();
    }

    #[test]
    fn marks_persist_take_resets_merge_restores() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-ct").unwrap();
        let img = dir.as_path().join("d.img");
        let size = 1 << 20;
        let t = ChangeTracker::open(&img, size, 64 << 10, true).unwrap();
        t.mark(0, 1).unwrap();
        t.mark((64 << 10) - 1, 2).unwrap(); // straddles regions 0 and 1
        t.mark(5 * (64 << 10), 64 << 10).unwrap(); // exactly region 5
        t.mark(size - 512, 4096).unwrap(); // clipped at the end
        t.mark(size + 10, 10).unwrap(); // beyond: ignored
        t.mark_all(&[(0, 1), (5 * (64 << 10) + 3, 1)]).unwrap(); // already marked: no change
        let on_disk = ChangeTracker::load(&img).unwrap();
        assert_eq!(on_disk, t.peek());
        assert_eq!(
            on_disk.ranges(),
            vec![
                (0, 128 << 10),
                (5 * (64 << 10), 64 << 10),
                (15 * (64 << 10), 64 << 10)
            ]
        );
        drop(t);
        let t = ChangeTracker::open(&img, size, 64 << 10, false).unwrap();
        let taken = t.take().unwrap();
        assert_eq!(taken.count(), 4);
        assert_eq!(ChangeTracker::load(&img).unwrap().count(), 0);
        t.mark(3 << 16, 1).unwrap();
        t.merge(&taken).unwrap();
        assert_eq!(ChangeTracker::load(&img).unwrap().count(), 5);
        assert!(
            ChangeTracker::open(&img, size, 4096, false).is_err(),
            "geometry mismatch must be refused"
        );
        std::fs::write(ChangeTracker::map_path(&img), b"garbage").unwrap();
        assert!(ChangeTracker::open(&img, size, 64 << 10, false).is_err());
    }
}
