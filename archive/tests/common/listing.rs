//! A tree listed line by line with everything an export must restore (type, mode, owner,
//! mtime with nanoseconds, content hash, link target, device numbers, xattrs, hard-link
//! groups), from a directory or from a tar stream, by code independent of the archive's own.
//! The golden fixture's expected outputs are such listings.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One listed object, before it becomes a line.
#[derive(Clone)]
struct Item {
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    mtime_nsec: u32,
    /// Size and SHA-256 of a regular file's content.
    content: Option<(u64, String)>,
    target: Option<Vec<u8>>,
    dev: Option<(u32, u32)>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        path.escape_ascii().to_string()
    }
}

fn render(items: &BTreeMap<Vec<u8>, Item>, links: &BTreeMap<Vec<u8>, Vec<Vec<u8>>>) -> String {
    let mut out = String::new();
    for (path, it) in items {
        out += &format!(
            "{} {} mode={:04o} owner={}:{} mtime={}.{:09}",
            show(path),
            it.kind,
            it.mode,
            it.uid,
            it.gid,
            it.mtime,
            it.mtime_nsec
        );
        if let Some((size, sha)) = &it.content {
            out += &format!(" size={size} sha256={sha}");
        }
        if let Some(t) = &it.target {
            out += &format!(" -> {}", t.escape_ascii());
        }
        if let Some((major, minor)) = it.dev {
            out += &format!(" dev={major},{minor}");
        }
        for (k, v) in &it.xattrs {
            out += &format!(" xattr:{}={}", k.escape_ascii(), hex::encode(v));
        }
        out.push('\n');
    }
    for group in links.values().filter(|g| g.len() > 1) {
        let mut g: Vec<String> = group.iter().map(|p| show(p)).collect();
        g.sort();
        out += &format!("hardlinks {}\n", g.join(" "));
    }
    out
}

fn sha256_of(mut r: impl Read) -> (u64, String) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (n, hex::encode(h.finalize()))
}

/// Extended attributes a test machine may add on its own (SELinux labels) are left out.
fn dir_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    for name in xattr::list(p).unwrap() {
        if name.as_bytes() == b"security.selinux" {
            continue;
        }
        if let Some(v) = xattr::get(p, &name).unwrap() {
            out.insert(name.as_bytes().to_vec(), v);
        }
    }
    out
}

/// Lists the directory `root` (itself as `.`), not following symlinks.
pub fn list_dir(root: &Path) -> String {
    let mut items = BTreeMap::new();
    let mut inodes: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(&rel))
        };
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let mut it = Item {
            kind: "dir",
            mode: md.mode() & 0o7777,
            uid: md.uid().into(),
            gid: md.gid().into(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            content: None,
            target: None,
            dev: None,
            xattrs: dir_xattrs(&p),
        };
        if ft.is_dir() {
            for child in fs::read_dir(&p).unwrap() {
                let name = child.unwrap().file_name();
                let mut c = rel.clone();
                if !c.is_empty() {
                    c.push(b'/');
                }
                c.extend_from_slice(name.as_bytes());
                stack.push(c);
            }
        } else if ft.is_file() {
            it.kind = "file";
            it.content = Some(sha256_of(fs::File::open(&p).unwrap()));
            inodes
                .entry(format!("{}:{}", md.dev(), md.ino()).into_bytes())
                .or_default()
                .push(rel.clone());
        } else if ft.is_symlink() {
            it.kind = "symlink";
            it.target = Some(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec());
        } else if ft.is_fifo() {
            it.kind = "fifo";
        } else if ft.is_char_device() || ft.is_block_device() {
            it.kind = if ft.is_char_device() { "char" } else { "block" };
            it.dev = Some((libc::major(md.rdev()), libc::minor(md.rdev())));
        } else {
            it.kind = "other";
        }
        items.insert(rel, it);
    }
    render(&items, &inodes)
}

/// Lists a tar stream the way `list_dir` lists the directory it extracts to.
pub fn list_tar(input: impl Read) -> String {
    let mut items: BTreeMap<Vec<u8>, Item> = BTreeMap::new();
    let mut groups: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    let norm = |raw: &[u8]| -> Vec<u8> {
        let s = raw.strip_prefix(b"./").unwrap_or(raw);
        let s = s.strip_suffix(b"/").unwrap_or(s);
        if s == b"." {
            Vec::new()
        } else {
            s.to_vec()
        }
    };
    let mut ar = tar::Archive::new(input);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path_bytes());
        let h = e.header().clone();
        let mut it = Item {
            kind: "dir",
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap() as i64,
            mtime_nsec: 0,
            content: None,
            target: None,
            dev: None,
            xattrs: BTreeMap::new(),
        };
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                let (k, v) = (x.key_bytes(), x.value_bytes());
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    it.xattrs.insert(name.to_vec(), v.to_vec());
                } else if k == b"mtime" {
                    let t = std::str::from_utf8(v).unwrap();
                    let (s, frac) = t.split_once('.').unwrap_or((t, ""));
                    it.mtime = s.parse().unwrap();
                    it.mtime_nsec = format!("{frac:0<9}")[..9].parse().unwrap();
                } else if k == b"uid" {
                    it.uid = std::str::from_utf8(v).unwrap().parse().unwrap();
                } else if k == b"gid" {
                    it.gid = std::str::from_utf8(v).unwrap().parse().unwrap();
                }
            }
        }
        match h.entry_type() {
            tar::EntryType::Directory => {}
            tar::EntryType::Regular => {
                it.kind = "file";
                it.content = Some(sha256_of(&mut e));
                groups.entry(path.clone()).or_default().push(path.clone());
            }
            tar::EntryType::Link => {
                let target = norm(&e.link_name_bytes().unwrap());
                // A hard link lists as the file it names.
                it = items[&target].clone();
                groups.get_mut(&target).unwrap().push(path.clone());
            }
            tar::EntryType::Symlink => {
                it.kind = "symlink";
                it.target = Some(e.link_name_bytes().unwrap().into_owned());
            }
            tar::EntryType::Fifo => it.kind = "fifo",
            t @ (tar::EntryType::Char | tar::EntryType::Block) => {
                it.kind = if t == tar::EntryType::Char {
                    "char"
                } else {
                    "block"
                };
                it.dev = Some((
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                ));
            }
            other => panic!("unexpected tar entry type {other:?}"),
        }
        items.insert(path, it);
    }
    render(&items, &groups)
}
