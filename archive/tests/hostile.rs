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
    use ignite_archive::writer::{Draft, DraftContent, Writer};
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
