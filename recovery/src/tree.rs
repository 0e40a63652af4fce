//! Files of a target system (an installed, restored or cloned root tree), read and written
//! without ever following a symlink, through the archive's `beneath` resolution: a symlink
//! planted in an image (`/etc/hostname` → `/etc/shadow`) can neither redirect a write to the
//! host nor pull a host file into the image. Paths are relative to the tree's root
//! (`etc/hostname`).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ignite_archive::beneath::{create_file, split_parent, Beneath};
use rustix::fs::{AtFlags, Mode, OFlags};

pub struct Tree {
    b: Beneath,
}

impl Tree {
    pub fn open(root: &Path) -> Result<Tree> {
        Ok(Tree {
            b: Beneath::open(root)?,
        })
    }

    fn show(&self, rel: &str) -> String {
        self.b.path(rel.as_bytes()).display().to_string()
    }

    /// Replaces `rel` (whatever is there, a symlink included) with `data`, mode `mode`;
    /// missing parent directories are made.
    pub fn write(&self, rel: &str, data: &[u8], mode: u32) -> Result<()> {
        let (parent, name) = split_parent(rel.as_bytes());
        let dir = self.b.dir(parent, true)?;
        let mut f = create_file(dir.as_fd(), name, 0o600)
            .with_context(|| format!("cannot write {}", self.show(rel)))?;
        f.write_all(data)
            .and_then(|()| rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(Into::into))
            .with_context(|| format!("cannot write {}", self.show(rel)))
    }

    /// The contents of regular file `rel` (at most `max` bytes), `None` if it does not exist;
    /// a symlink or anything else there is an error.
    pub fn read(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let (parent, name) = split_parent(rel.as_bytes());
        let dir = match self.b.dir(parent, false) {
            Ok(d) => d,
            Err(ignite_archive::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                bail!("{} is a symlink; it is not followed", self.show(rel))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.show(rel))),
        };
        let st = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            bail!("{} is not a regular file", self.show(rel));
        }
        if st.st_size as u64 > max {
            bail!("{} is larger than {max} bytes", self.show(rel));
        }
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(max)
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read {}", self.show(rel)))?;
        Ok(Some(data))
    }

    /// Removes `rel` if it is there (a symlink itself, never its target); true if it was.
    pub fn remove(&self, rel: &str) -> Result<bool> {
        let (parent, name) = split_parent(rel.as_bytes());
        let dir = match self.b.dir(parent, false) {
            Ok(d) => d,
            // A parent that is not a directory in the tree (a symlink out of it) holds
            // nothing of the tree's to remove.
            Err(ignite_archive::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(false)
            }
            Err(ignite_archive::Error::UnsafePath { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.show(rel))),
        }
    }

    /// Names in directory `rel` (empty if it does not exist or is not a directory of the tree).
    pub fn list(&self, rel: &str) -> Result<Vec<String>> {
        let dir = match self.b.open_dir(rel.as_bytes()) {
            Ok(d) => d,
            Err(ignite_archive::Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(ignite_archive::Error::UnsafePath { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(&dir)? {
            let e = e?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_never_follow_a_symlink_out_of_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let outside = dir.path().join("secret");
        std::fs::write(&outside, "host secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/hostname")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("var")).unwrap();
        let t = Tree::open(&root).unwrap();
        // A read through the planted link is refused; the host file is not read.
        assert!(t.read("etc/hostname", 1024).is_err());
        // A write replaces the link itself; the host file is untouched.
        t.write("etc/hostname", b"web2\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host secret");
        assert_eq!(t.read("etc/hostname", 1024).unwrap().unwrap(), b"web2\n");
        // A directory on the way that is a symlink is not followed either.
        assert!(t.write("var/lib/x", b"x", 0o644).is_err());
        assert!(
            !t.remove("var/secret").unwrap(),
            "nothing of the tree's is there"
        );
        assert_eq!(t.list("var").unwrap(), Vec::<String>::new());
        assert!(outside.exists());
        assert_eq!(t.read("etc/none", 10).unwrap(), None);
        assert!(t.remove("etc/hostname").unwrap());
        assert!(!t.remove("etc/hostname").unwrap());
        assert_eq!(t.list("etc").unwrap(), Vec::<String>::new());
        assert_eq!(t.list("nope").unwrap(), Vec::<String>::new());
    }
}
