//! File system helpers. Durable writes: temporary name, fsync, rename, fsync the directory;
//! readers never see half a file and a crash leaves either the old state or the new one.
//! Also locks (`flock`), and the data ranges and size of sparse files and block devices.

use crate::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

pub fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    journal::note("fsync", dir);
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Makes `dir` (a fan-out directory) if it is missing, and makes its entry in the parent
/// durable: a file later renamed into `dir` must not vanish with it after a crash.
pub fn make_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e).at(dir),
        _ => {}
    }
    #[cfg(test)]
    journal::note("mkdir", dir);
    fsync_dir(dir.parent().unwrap_or(Path::new(".")))
}

/// Removes a file; the caller fsyncs its directory before relying on it being gone.
pub fn remove_file(path: &Path) -> Result<()> {
    #[cfg(test)]
    journal::note("remove", path);
    fs::remove_file(path).at(path)
}

/// What this thread did to directories, in order, so that tests can check that every change
/// a crash must not undo is followed by an fsync of its directory.
#[cfg(test)]
pub(crate) mod journal {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static LOG: RefCell<Vec<(&'static str, PathBuf)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn note(what: &'static str, path: &Path) {
        LOG.with(|l| l.borrow_mut().push((what, path.to_path_buf())));
    }

    pub fn take() -> Vec<(&'static str, PathBuf)> {
        LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    /// Every `mkdir` and `remove` is followed by an fsync of the directory holding it.
    pub fn assert_durable(log: &[(&'static str, PathBuf)]) {
        for (i, (what, p)) in log.iter().enumerate() {
            if *what == "fsync" {
                continue;
            }
            let parent = p.parent().unwrap();
            assert!(
                log[i + 1..]
                    .iter()
                    .any(|(w, q)| *w == "fsync" && q == parent),
                "{what} {} is never made durable (no fsync of {} after it): {log:#?}",
                p.display(),
                parent.display()
            );
        }
    }
}

/// Writes `data` to `dest` atomically; `tmp_dir` must be on the same file system.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(format!(
        "{}.{}.tmp",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        rand::random::<u64>()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .at(&tmp)?;
    let res = f.write_all(data).and_then(|_| f.sync_all());
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e).at(&tmp);
    }
    drop(f);
    fs::rename(&tmp, dest).at(dest)?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// Takes an exclusive `flock` on `file`; with `nonblocking`, false if another holder has it.
pub fn flock(file: &File, nonblocking: bool) -> std::io::Result<bool> {
    let op = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    // SAFETY: flock on a valid descriptor owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The data ranges of a (possibly sparse) file, found with SEEK_DATA/SEEK_HOLE, as
/// `(start, end)` pairs. Where the file system cannot say, the whole file is data.
pub fn data_ranges(file: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return vec![(0, size)];
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return vec![(0, size)];
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if end > start {
            out.push((start, end));
        }
        pos = end.max(start + 1);
    }
    out
}

/// The size of a regular file or a block device.
pub fn source_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn finds_data_in_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        let r = data_ranges(&f, 64 << 20);
        let data: u64 = r.iter().map(|(a, b)| b - a).sum();
        assert!(r
            .iter()
            .any(|&(a, b)| a <= 8 << 20 && b >= (8 << 20) + 4096));
        // ext4/xfs/tmpfs report the hole; a file system that cannot says "all data".
        assert!(data < 64 << 20 || r == vec![(0, 64 << 20)]);
    }
}
