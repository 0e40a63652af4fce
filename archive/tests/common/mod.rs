//! Helpers shared by the archive integration tests.
#![allow(dead_code)]

use ignite_archive::diff::{diff_trees, file_bytes, Change};
use ignite_archive::{Entry, Store, StoreConfig};
use ignite_archive::{ImportOptions, ParentChoice, Progress};
use std::path::Path;
use std::process::Command;

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn new_store(dir: &Path) -> Store {
    Store::init(&dir.join("store"), StoreConfig::default()).unwrap()
}

pub fn opts(name: &str) -> ImportOptions {
    ImportOptions {
        parent: ParentChoice::None,
        ..ImportOptions::new(name)
    }
}

pub fn progress() -> Progress {
    Progress::new(0)
}

/// The tree of a directory as our importer sees it, without source stamps.
pub fn tree_of(store: &Store, dir: &Path) -> Vec<Entry> {
    let m =
        ignite_archive::import_dir::import_dir(store, dir, &opts("scratch"), &progress()).unwrap();
    let mut t = store.load_tree(&m).unwrap();
    for e in &mut t {
        e.source = None;
    }
    t
}

/// Content, type, mode, owner, mtime, xattrs, link targets and hard-link structure agree.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    let store = new_store(scratch.path());
    let same =
        |x: &Entry, y: &Entry| file_bytes(&store, x).unwrap() == file_bytes(&store, y).unwrap();
    let changes: Vec<Change> = diff_trees(&tree_of(&store, a), &tree_of(&store, b), &same);
    assert!(changes.is_empty(), "trees differ: {changes:#?}");
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree with every kind of object the archive must keep.
pub fn build_sample_tree(root: &Path) {
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    fs::create_dir_all(root.join("etc/deep/er/still")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("etc/hostname"), b"golden\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    fs::write(root.join("usr/bin/big"), random_bytes(3 << 20, 7)).unwrap();
    fs::write(root.join("usr/bin/compressible"), b"abc".repeat(500_000)).unwrap();
    fs::write(root.join("etc/deep/er/still/file"), b"deep").unwrap();
    let long = "x".repeat(120);
    fs::write(root.join(format!("etc/{long}")), b"long name").unwrap();
    fs::write(root.join("etc/caf\u{e9}-\u{2603}"), b"utf8").unwrap();
    fs::hard_link(root.join("usr/bin/big"), root.join("usr/bin/big-link")).unwrap();
    symlink("/etc/hostname", root.join("etc/abs-link")).unwrap();
    symlink("../usr/bin/big", root.join("etc/rel-link")).unwrap();
    let su = root.join("usr/bin/setuid");
    fs::write(&su, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&su, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("etc/deep"), fs::Permissions::from_mode(0o750)).unwrap();
    // Modes the umask would cut (group/other write) and one that forbids the owner's write:
    // an export that creates files with their final mode must still get these right.
    for (name, mode) in [
        ("etc/shared", 0o666),
        ("etc/sealed", 0o400),
        ("etc/tool", 0o775),
    ] {
        fs::write(root.join(name), name.as_bytes()).unwrap();
        fs::set_permissions(root.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    // A sparse file: 64 MiB with data at 1 MiB and 40 MiB.
    let sp = fs::File::create(root.join("usr/sparse")).unwrap();
    sp.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sp.write_all_at(&random_bytes(8192, 3), 1 << 20).unwrap();
    sp.write_all_at(&random_bytes(100_000, 4), 40 << 20)
        .unwrap();
    xattr::set(root.join("etc/hostname"), "user.ignite", b"test-value").unwrap();
    sh(&format!("mkfifo {}", root.join("etc/fifo").display()));
    if is_root() {
        sh(&format!("mknod {} c 1 3", root.join("etc/null").display()));
        sh(&format!("mknod {} b 7 0", root.join("etc/loop").display()));
        sh(&format!(
            "chown 1234:5678 {}",
            root.join("etc/hostname").display()
        ));
        // File capabilities, as `ping` has them (security.capability, v2 format).
        let cap: [u8; 20] = [
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        xattr::set(root.join("usr/bin/setuid"), "security.capability", &cap).unwrap();
    }
    sh(&format!(
        "touch -h -d '2020-02-03 04:05:06.123456789' {} {}",
        root.join("etc/hostname").display(),
        root.join("etc/abs-link").display()
    ));
}
pub mod listing;
