//! Path rules that keep a hostile archive inside its target: relative paths only, no `..`,
//! no NUL, and no entry below a symlink of the same tree (`link -> /etc`, then `link/passwd`).

use crate::error::{Error, Result};
use std::collections::HashSet;

fn unsafe_path(path: &[u8], what: &str) -> Error {
    Error::UnsafePath {
        path: String::from_utf8_lossy(path).into_owned(),
        what: what.into(),
    }
}

/// Normalizes an archive path (`./a//b/` → `a/b`, `.` → the root ``) or refuses it.
pub fn normalize(path: &[u8]) -> Result<Vec<u8>> {
    if path.contains(&0) {
        return Err(unsafe_path(path, "contains a NUL byte"));
    }
    if path.first() == Some(&b'/') {
        return Err(unsafe_path(path, "is absolute"));
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(unsafe_path(path, "contains `..`")),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Every proper ancestor of a normalized path, shortest first (`a`, `a/b` for `a/b/c`).
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(move |(i, _)| &path[..i])
}

/// Tracks the tree's symlinks so that nothing is placed beneath one.
#[derive(Default)]
pub struct SymlinkGuard {
    symlinks: HashSet<Vec<u8>>,
}

impl SymlinkGuard {
    pub fn check(&self, path: &[u8]) -> Result<()> {
        if self.symlinks.is_empty() {
            return Ok(());
        }
        for a in ancestors(path) {
            if self.symlinks.contains(a) {
                return Err(unsafe_path(
                    path,
                    &format!(
                        "lies beneath the symlink {:?} of the same archive",
                        String::from_utf8_lossy(a)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Records a symlink of the tree.
    pub fn add(&mut self, path: &[u8]) {
        self.symlinks.insert(path.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize(b"./a//b/").unwrap(), b"a/b");
        assert_eq!(normalize(b".").unwrap(), b"");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../x").is_err());
        assert!(normalize(b"..").is_err());
        assert!(normalize(b"a\0b").is_err());
        assert_eq!(normalize(b"a/..b").unwrap(), b"a/..b");
    }

    #[test]
    fn refuses_paths_under_symlinks() {
        let mut g = SymlinkGuard::default();
        g.add(b"link");
        assert!(g.check(b"link/passwd").is_err());
        assert!(g.check(b"link/deeper/x").is_err());
        assert!(g.check(b"linkx/ok").is_ok());
        assert_eq!(
            ancestors(b"a/b/c").collect::<Vec<_>>(),
            vec![&b"a"[..], b"a/b"]
        );
    }
}
