//! Hostile and broken tar input: each is refused with a clear error, and the store is left
//! exactly as it was (no snapshot, verify passes, the next import works).

mod common;

use common::*;
use ignite_archive::import_tar::import_tar;
use ignite_archive::Error;

/// A raw ustar header + data, so that we can write what well-behaved builders refuse to.
fn raw_entry(name: &[u8], typeflag: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"14000000000");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn assert_refused(tar: Vec<u8>, expect: &str) {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let err = import_tar(&store, &tar[..], &opts("evil"), &progress()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(expect),
        "error {msg:?} should mention {expect:?}"
    );
    assert!(store.list_snapshots().unwrap().is_empty());
    assert!(ignite_archive::verify::verify(&store, 1.0).unwrap().ok());
    // Nothing left behind but what gc removes; the next import works.
    let good = tar_of(&[raw_entry(b"ok", b'0', b"", b"fine")]);
    import_tar(&store, &good[..], &opts("good"), &progress()).unwrap();
    assert!(ignite_archive::verify::verify(&store, 1.0).unwrap().ok());
    assert!(std::fs::read_dir(store.root().join("locks"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn dot_dot_is_refused() {
    assert_refused(
        tar_of(&[raw_entry(b"../../etc/evil", b'0', b"", b"x")]),
        "`..`",
    );
}

#[test]
fn absolute_path_is_refused() {
    assert_refused(
        tar_of(&[raw_entry(b"/etc/evil", b'0', b"", b"x")]),
        "absolute",
    );
}

#[test]
fn write_through_symlink_is_refused() {
    let tar = tar_of(&[
        raw_entry(b"link", b'2', b"/etc", b""),
        raw_entry(b"link/passwd", b'0', b"", b"root::0:0::/:/bin/sh\n"),
    ]);
    assert_refused(tar, "beneath the symlink");
}

#[test]
fn hard_link_outside_is_refused() {
    assert_refused(
        tar_of(&[raw_entry(b"shadow", b'1', b"/etc/shadow", b"")]),
        "absolute",
    );
    assert_refused(
        tar_of(&[raw_entry(b"x", b'1', b"nothing-before", b"")]),
        "not an earlier regular file",
    );
}

#[test]
fn broken_streams_are_refused() {
    // Bad checksum.
    let mut bad = tar_of(&[raw_entry(b"file", b'0', b"", b"data")]);
    bad[0] = b'g';
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    assert!(import_tar(&store, &bad[..], &opts("x"), &progress()).is_err());
    // Truncated in the middle of a file's data.
    let whole = tar_of(&[raw_entry(b"file", b'0', b"", &random_bytes(100_000, 1))]);
    let err = import_tar(&store, &whole[..30_000], &opts("x"), &progress()).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. } | Error::TarStream(_)),
        "{err}"
    );
    // Not a tar at all, and bzip2.
    assert!(import_tar(&store, &random_bytes(4096, 5)[..], &opts("x"), &progress()).is_err());
    assert!(
        import_tar(&store, &b"BZh91AY&SY"[..], &opts("x"), &progress())
            .unwrap_err()
            .to_string()
            .contains("bzip2")
    );
    assert!(store.list_snapshots().unwrap().is_empty());
    assert!(ignite_archive::verify::verify(&store, 1.0).unwrap().ok());
}

#[test]
fn hostile_store_tree_is_refused_on_export() {
    // A snapshot committed by a (hostile) remote client that bypassed import's checks.
    use ignite_archive::snapshot::{Entry, EntryKind};
    use ignite_archive::{Draft, DraftContent, Writer};
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let entry = |path: &[u8], kind| Entry {
        path: path.to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: vec![],
        source: None,
    };
    for bad in [
        vec![entry(b"../x", EntryKind::Fifo)],
        vec![
            entry(
                b"l",
                EntryKind::Symlink {
                    target: b"/tmp".to_vec(),
                },
            ),
            entry(b"l/x", EntryKind::Fifo),
        ],
        vec![entry(
            b"h",
            EntryKind::HardLink {
                target: b"/etc/passwd".to_vec(),
            },
        )],
    ] {
        let w = Writer::new(&store).unwrap();
        let m = w
            .commit(Draft {
                name: "bad".into(),
                labels: Default::default(),
                parent: None,
                content: DraftContent::Tree(bad),
                stats: Default::default(),
            })
            .unwrap();
        let out = t.path().join("out");
        let err =
            ignite_archive::export_dir::export_dir(&store, &m, &out, &progress()).unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
        assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
    }
}

/// The fuzz target's property in every `cargo test`: mutated real tars (bit flips, byte
/// runs, truncation) never panic the importer and never damage the store.
#[test]
fn mutated_tars_never_panic() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_sample_tree(&src);
    std::fs::remove_file(src.join("usr/sparse")).unwrap();
    std::fs::remove_file(src.join("usr/bin/big")).unwrap();
    std::fs::remove_file(src.join("usr/bin/big-link")).unwrap();
    let tarball = t.path().join("s.tar");
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --format=pax -C {} -cf {} .",
        src.display(),
        tarball.display()
    ));
    let good = std::fs::read(&tarball).unwrap();
    let store = new_store(t.path());
    let mut x = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut accepted = 0;
    for _ in 0..300 {
        let mut m = good.clone();
        match next() % 4 {
            0 => {
                for _ in 0..1 + next() % 8 {
                    let i = (next() % m.len() as u64) as usize;
                    m[i] ^= 1 << (next() % 8);
                }
            }
            1 => {
                let i = (next() % m.len() as u64) as usize;
                let n = (next() % 64) as usize;
                let v = next() as u8;
                for b in m.iter_mut().skip(i).take(n) {
                    *b = v;
                }
            }
            2 => m.truncate((next() % m.len() as u64) as usize),
            _ => {
                // Header fields with digits or NULs in odd places.
                let header = (next() % (m.len() as u64 / 512)) as usize * 512;
                let i = header + (next() % 512) as usize;
                m[i] = [b'7', 0, b' ', 0xff][(next() % 4) as usize];
            }
        }
        if import_tar(&store, &m[..], &opts("fuzz"), &progress()).is_ok() {
            accepted += 1;
        }
    }
    assert!(
        accepted > 0 && accepted < 300,
        "accepted {accepted} of 300 mutations"
    );
    let r = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

#[test]
fn duplicate_path_in_a_tar_is_refused() {
    // A file `x`, then a symlink `x` -> /etc/shadow: exporting would write x's content and
    // mode through the symlink.
    let tar = tar_of(&[
        raw_entry(b"x", b'0', b"", b"root::0:0::/:/bin/sh\n"),
        raw_entry(b"x", b'2', b"/etc/shadow", b""),
    ]);
    assert_refused(tar, "appears twice");
    assert_refused(
        tar_of(&[
            raw_entry(b"d/", b'5', b"", b""),
            raw_entry(b"./d", b'5', b"", b""),
        ]),
        "appears twice",
    );
}

/// A sentinel directory with a victim file beside the export target.
struct Sentinel {
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn new() -> Sentinel {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("victim"), b"precious\n").unwrap();
        let p = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(dir.path().join("victim"), p).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        Sentinel { dir }
    }

    fn victim(&self) -> std::path::PathBuf {
        self.dir.path().join("victim")
    }

    fn target(&self) -> std::path::PathBuf {
        self.dir.path().join("target")
    }

    /// Nothing outside the target changed.
    fn assert_untouched(&self) {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::read(self.victim()).unwrap(), b"precious\n");
        let md = std::fs::symlink_metadata(self.victim()).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(md.mode() & 0o7777, 0o644, "victim's mode changed");
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names.retain(|n| n != "target");
        assert_eq!(names, ["outside", "victim"]);
        let outside: Vec<_> = std::fs::read_dir(self.dir.path().join("outside"))
            .unwrap()
            .collect();
        assert!(
            outside.is_empty(),
            "written outside the target: {outside:?}"
        );
    }
}

fn entry(path: &[u8], kind: ignite_archive::EntryKind, mode: u32) -> ignite_archive::Entry {
    ignite_archive::Entry {
        path: path.to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: vec![],
        source: None,
    }
}

/// A file entry whose content is stored by `w`.
fn stored_file(
    w: &ignite_archive::Writer,
    path: &[u8],
    data: &[u8],
    mode: u32,
) -> ignite_archive::Entry {
    let mut zc = zstd::bulk::Compressor::new(3).unwrap();
    let id = w.put(data, &mut zc).unwrap();
    let kind = ignite_archive::EntryKind::File {
        size: data.len() as u64,
        extents: vec![ignite_archive::Extent {
            offset: 0,
            len: data.len() as u32,
            id,
        }],
    };
    entry(path, kind, mode)
}

fn commit_tree(
    store: &ignite_archive::Store,
    build: impl FnOnce(&ignite_archive::Writer) -> Vec<ignite_archive::Entry>,
) -> ignite_archive::Manifest {
    use ignite_archive::{Draft, DraftContent, Writer};
    let w = Writer::new(store).unwrap();
    let entries = build(&w);
    w.commit(Draft {
        name: "tree".into(),
        labels: Default::default(),
        parent: None,
        content: DraftContent::Tree(entries),
        stats: Default::default(),
    })
    .unwrap()
}

#[test]
fn a_tree_with_a_path_twice_cannot_write_outside_the_target() {
    // The reported attack, committed directly (as a hostile remote client or an older
    // importer could): a setuid file `x`, then `x` as a symlink to a host file.
    use ignite_archive::EntryKind;
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let s = Sentinel::new();
    let victim = s.victim().as_os_str().as_encoded_bytes().to_vec();
    let m = commit_tree(&store, |w| {
        vec![
            entry(b"", EntryKind::Dir, 0o755),
            stored_file(w, b"x", b"pwned\n", 0o4777),
            entry(b"x", EntryKind::Symlink { target: victim }, 0o777),
        ]
    });
    let err = ignite_archive::export_dir(&store, &m, &s.target(), &progress()).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    s.assert_untouched();
    let mut tar = Vec::new();
    assert!(ignite_archive::export_tar(&store, &m, &mut tar).is_err());
}

#[test]
fn symlinks_already_in_the_target_are_replaced_never_followed() {
    use ignite_archive::EntryKind;
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let s = Sentinel::new();
    std::fs::create_dir(s.target()).unwrap();
    std::os::unix::fs::symlink("../victim", s.target().join("x")).unwrap();
    std::os::unix::fs::symlink("../outside", s.target().join("d")).unwrap();
    std::os::unix::fs::symlink("../outside", s.target().join("e")).unwrap();
    let m = commit_tree(&store, |w| {
        vec![
            stored_file(w, b"x", b"mine\n", 0o4755),
            entry(b"d", EntryKind::Dir, 0o755),
            stored_file(w, b"d/inside", b"in d\n", 0o644),
            entry(b"fifo", EntryKind::Fifo, 0o600),
        ]
    });
    ignite_archive::export_dir(&store, &m, &s.target(), &progress()).unwrap();
    s.assert_untouched();
    assert_eq!(std::fs::read(s.target().join("x")).unwrap(), b"mine\n");
    assert!(std::fs::symlink_metadata(s.target().join("d"))
        .unwrap()
        .is_dir());
    // A tree entry beneath an existing symlink (here `e`) is refused, not followed.
    let m = commit_tree(&store, |w| {
        vec![stored_file(w, b"e/through", b"no\n", 0o644)]
    });
    let err = ignite_archive::export_dir(&store, &m, &s.target(), &progress()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    s.assert_untouched();
}
