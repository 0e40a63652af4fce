//! Writing beneath a target directory without ever following a symlink.
//!
//! The target is opened once; every path below it is resolved one component at a time with
//! `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)`, so a symlink on the way is an error, never a
//! detour. Objects are made with `*at` calls relative to an opened directory (`O_CREAT |
//! O_EXCL`, `mkdirat`, `symlinkat`, `mknodat`, `linkat`), none of which follows a symlink in
//! the last component; metadata is then set on the opened file itself, or with the
//! no-follow form of the `*at` call. Whatever a hostile archive holds, or a hostile tree
//! already in the target, nothing outside the target is written or changed.

use crate::error::{Error, IoContext, Result};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Missing directories on the way to an entry are made with this mode (as `mkdir -p`).
const IMPLIED_DIR_MODE: u32 = 0o755;

/// An opened target directory.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
pub fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn path_dir_at(dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

impl Beneath {
    /// Opens `target`, which must be a directory. The target itself may be reached through
    /// symlinks: it is the caller's choice, not the archive's.
    pub fn open(target: &Path) -> Result<Beneath> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(target, flags, Mode::empty())
            .map_err(io::Error::from)
            .at(target)?;
        Ok(Beneath {
            root,
            path: target.to_path_buf(),
        })
    }

    /// The opened target.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Where `rel` is, for messages.
    pub fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(OsStr::from_bytes(rel))
        }
    }

    fn refuse(&self, rel: &[u8], what: String) -> Error {
        Error::UnsafePath {
            path: String::from_utf8_lossy(rel).into_owned(),
            what,
        }
    }

    /// The directory `rel` (normalized, relative; empty is the target) as an `O_PATH`
    /// descriptor, for `*at` calls. With `create`, missing directories are made.
    pub fn dir(&self, rel: &[u8], create: bool) -> Result<OwnedFd> {
        if rel.is_empty() {
            return self.root.try_clone().at(&self.path);
        }
        self.dir_below(self.root.as_fd(), b"", rel, create)
    }

    /// The same, walking from the opened directory `base` at `base_rel`, an ancestor of `rel`
    /// (or the target, with `base_rel` empty).
    pub fn dir_below(
        &self,
        base: BorrowedFd,
        base_rel: &[u8],
        rel: &[u8],
        create: bool,
    ) -> Result<OwnedFd> {
        let rest = if base_rel.is_empty() {
            rel
        } else {
            &rel[base_rel.len() + 1..]
        };
        let mut at = rel.len() - rest.len();
        let mut fd: Option<OwnedFd> = None;
        for comp in rest.split(|&b| b == b'/') {
            let end = at + comp.len();
            let sofar = &rel[..end];
            let parent = fd.as_ref().map_or(base, |f| f.as_fd());
            let next = match path_dir_at(parent, comp) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    let mode = Mode::from_raw_mode(IMPLIED_DIR_MODE);
                    match rustix::fs::mkdirat(parent, comp, mode) {
                        Err(e) if e != rustix::io::Errno::EXIST => {
                            return Err(io::Error::from(e)).at(self.path(sofar))
                        }
                        _ => path_dir_at(parent, comp),
                    }
                }
                r => r,
            };
            fd = Some(match next {
                Ok(fd) => fd,
                // A symlink (or a file) where a directory must be: never followed.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(self.refuse(
                        sofar,
                        format!(
                            "{} in the target is not a directory (a symlink is never followed)",
                            self.path(sofar).display()
                        ),
                    ))
                }
                Err(e) => return Err(e).at(self.path(sofar)),
            });
            at = end + 1;
        }
        Ok(fd.expect("rel has at least one component"))
    }

    /// Opens the directory `rel` itself for reading, to set its metadata on the descriptor.
    pub fn open_dir(&self, rel: &[u8]) -> Result<File> {
        if rel.is_empty() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&self.root, ".", flags, Mode::empty())
                .map_err(io::Error::from)
                .at(&self.path)?;
            return Ok(File::from(fd));
        }
        let (parent, name) = split_parent(rel);
        let dir = self.dir(parent, false)?;
        open_dir_at(dir.as_fd(), name).at(self.path(rel))
    }
}

/// Opens the directory `name` in `dir` for reading (to set its metadata on the descriptor);
/// a symlink there is an error.
pub fn open_dir_at(dir: BorrowedFd, name: &[u8]) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::empty(),
    )?))
}

/// Makes something at `name` in `dir` with `make`. What is already there is replaced,
/// except a directory: kept when `want_dir` (the result is then false), an error otherwise.
fn replacing(
    dir: BorrowedFd,
    name: &[u8],
    want_dir: bool,
    mut make: impl FnMut() -> rustix::io::Result<()>,
) -> io::Result<bool> {
    match make() {
        Err(rustix::io::Errno::EXIST) => {}
        r => return r.map(|()| true).map_err(Into::into),
    }
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
        if want_dir {
            return Ok(false);
        }
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists in the target as a directory",
        ));
    }
    rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    make().map(|()| true).map_err(Into::into)
}

/// A new, empty regular file with permission bits `mode` (less the umask); an existing one,
/// or a symlink, is replaced, never opened.
pub fn create_file(dir: BorrowedFd, name: &[u8], mode: u32) -> io::Result<File> {
    let mut file = None;
    replacing(dir, name, false, || {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        file = Some(rustix::fs::openat(
            dir,
            name,
            flags,
            Mode::from_raw_mode(mode & 0o777),
        )?);
        Ok(())
    })?;
    Ok(File::from(file.expect("made above")))
}

/// A directory, owner-only while it is being filled; an existing directory is kept (false).
pub fn make_dir(dir: BorrowedFd, name: &[u8]) -> io::Result<bool> {
    replacing(dir, name, true, || {
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
    })
}

pub fn make_symlink(dir: BorrowedFd, name: &[u8], target: &[u8]) -> io::Result<()> {
    replacing(dir, name, false, || {
        rustix::fs::symlinkat(target, dir, name)
    })
    .map(drop)
}

/// A fifo or device node (`kind` is `S_IFIFO`, `S_IFCHR` or `S_IFBLK`), owner-only until its
/// metadata is set.
pub fn make_node(dir: BorrowedFd, name: &[u8], kind: u32, dev: u64) -> io::Result<()> {
    let ft = rustix::fs::FileType::from_raw_mode(kind);
    replacing(dir, name, false, || {
        rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), dev)
    })
    .map(drop)
}

/// A hard link `dir/name` to `old_dir/old_name` (which is not followed if a symlink).
pub fn make_link(
    old_dir: BorrowedFd,
    old_name: &[u8],
    dir: BorrowedFd,
    name: &[u8],
) -> io::Result<()> {
    replacing(dir, name, false, || {
        rustix::fs::linkat(old_dir, old_name, dir, name, AtFlags::empty())
    })
    .map(drop)
}

/// This process's umask, from /proc (reading it with umask(2) would change it for a moment
/// under other threads); None if /proc does not say.
pub fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Mode of `name` in `dir`, refusing to follow a symlink (the C library resolves it through
/// an `O_PATH` descriptor).
pub fn chmod_nofollow(dir: BorrowedFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a valid descriptor and C string; fchmodat reads nothing else.
    let r = unsafe {
        libc::fchmodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An extended attribute of `name` in `dir` (a symlink or special file, which cannot be
/// opened for it), not following `name` if it is a symlink. `/proc/self/fd/N` names the
/// opened directory itself, so the path is not looked up again from the root.
pub fn lsetxattr_at(dir: BorrowedFd, name: &[u8], attr: &[u8], value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    rustix::fs::lsetxattr(
        path.as_slice(),
        attr,
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;

    fn sentinel() -> (tempfile::TempDir, PathBuf, Beneath) {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("victim"), b"precious").unwrap();
        let target = t.path().join("target");
        fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink("../victim", target.join("to-victim")).unwrap();
        std::os::unix::fs::symlink("..", target.join("to-parent")).unwrap();
        let b = Beneath::open(&target).unwrap();
        (t, target, b)
    }

    #[test]
    fn symlinks_in_the_way_are_refused_not_followed() {
        let (t, _target, b) = sentinel();
        let e = b.dir(b"to-parent", false).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(b.dir(b"to-parent/new", true).is_err());
        assert!(!t.path().join("new").exists());
        assert!(b.open_dir(b"to-parent").is_err());
    }

    #[test]
    fn making_over_a_symlink_replaces_it() {
        let (t, target, b) = sentinel();
        let root = b.dir(b"", false).unwrap();
        let mut f = create_file(root.as_fd(), b"to-victim", 0o600).unwrap();
        f.write_all(b"mine").unwrap();
        assert_eq!(fs::read(t.path().join("victim")).unwrap(), b"precious");
        assert_eq!(fs::read(target.join("to-victim")).unwrap(), b"mine");
        make_node(root.as_fd(), b"to-parent", libc::S_IFIFO, 0).unwrap();
        assert!(fs::symlink_metadata(target.join("to-parent"))
            .unwrap()
            .file_type()
            .is_fifo());
        // A directory stays a directory, and is not replaced by a file.
        let d = b.dir(b"a/b", true).unwrap();
        assert!(make_dir(d.as_fd(), b"c").unwrap(), "made");
        assert!(!make_dir(d.as_fd(), b"c").unwrap(), "kept");
        assert!(create_file(d.as_fd(), b"c", 0o600).is_err());
        chmod_nofollow(root.as_fd(), b"to-parent", 0o640).unwrap();
        make_symlink(root.as_fd(), b"link", b"/etc/shadow").unwrap();
        assert!(chmod_nofollow(root.as_fd(), b"link", 0o4777).is_err());
    }

    #[test]
    fn parents_split() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }
}
