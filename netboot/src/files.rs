//! Mapping a client-supplied path to a file inside the boot directory, shared by TFTP and
//! HTTP so both refuse the same escapes.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("empty file name")]
    Empty,
    #[error("\"..\" is not allowed in file names")]
    ParentDir,
    #[error("drive letters are not allowed in file names")]
    Drive,
    #[error("file not found")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    #[error("resolves outside the boot directory")]
    Outside,
}

/// Resolves `name` under `root`. Backslashes count as separators (Windows/WDS clients send
/// `\Boot\x`); a leading `/` means the root itself, as with `tftpd -s`; `..` is refused
/// outright; symlinks are followed but must end inside `root`.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, BadPath> {
    let name = name.replace('\\', "/");
    let b = name.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Err(BadPath::Drive);
    }
    let mut rel = PathBuf::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(BadPath::ParentDir),
            c => rel.push(c),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(BadPath::Empty);
    }
    let root = root.canonicalize().map_err(|_| BadPath::NotFound)?;
    let full = root
        .join(&rel)
        .canonicalize()
        .map_err(|_| BadPath::NotFound)?;
    if !full.starts_with(&root) {
        return Err(BadPath::Outside);
    }
    if !full.is_file() {
        return Err(BadPath::NotAFile);
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.bin"), b"a").unwrap();
        std::fs::write(outer.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("evil")).unwrap();
        std::os::unix::fs::symlink("sub/a.bin", root.join("good")).unwrap();

        let ok = root.canonicalize().unwrap().join("sub/a.bin");
        assert_eq!(resolve(&root, "sub/a.bin").unwrap(), ok);
        assert_eq!(resolve(&root, "/sub/a.bin").unwrap(), ok);
        assert_eq!(resolve(&root, "\\sub\\a.bin").unwrap(), ok);
        assert_eq!(resolve(&root, "./sub//a.bin").unwrap(), ok);
        assert_eq!(resolve(&root, "good").unwrap(), ok);
        assert_eq!(resolve(&root, "../secret"), Err(BadPath::ParentDir));
        assert_eq!(resolve(&root, "sub/../../secret"), Err(BadPath::ParentDir));
        assert_eq!(resolve(&root, "..\\secret"), Err(BadPath::ParentDir));
        assert_eq!(resolve(&root, "C:\\secret"), Err(BadPath::Drive));
        assert_eq!(resolve(&root, "evil"), Err(BadPath::Outside));
        assert_eq!(resolve(&root, "sub"), Err(BadPath::NotAFile));
        assert_eq!(resolve(&root, "nope"), Err(BadPath::NotFound));
        assert_eq!(resolve(&root, "/"), Err(BadPath::Empty));
    }
}
