//! Builds the golden fixture store (`archive/tests/golden/`): a small tree with every kind of
//! entry the archive keeps, imported twice (the second time with a parent), and a small block
//! image, plus the expected listings every future version must export them to. Run as root
//! (device nodes, owners, `security.capability`), once; the store it made is committed and is
//! never regenerated: it pins the on-disk format (archive/FORMAT.md).
//!
//!     cargo run -p ignite-archive --example make_golden -- archive/tests/golden

#[allow(dead_code)] // list_tar is for the tests
#[path = "../tests/common/listing.rs"]
mod listing;

use ignite_archive::import_dir::import_dir;
use ignite_archive::import_image::{import_image, ImageSource};
use ignite_archive::{ImportOptions, ParentChoice, Progress};
use ignite_archive::{Store, StoreConfig};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::Path;

fn run(cmd: &str) {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd}");
}

fn set_time(p: &Path, secs: i64, nsec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "{}", p.display());
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Text that compresses well, so the committed store stays small, but is not all zeros.
fn text(lines: usize, seed: usize) -> Vec<u8> {
    let words = [
        "archive", "golden", "ignite", "chunk", "pack", "tree", "zstd", "ext4",
    ];
    let mut out = Vec::new();
    for i in 0..lines {
        let w = words[(i * 7 + seed) % words.len()];
        out.extend_from_slice(format!("{w} line {} of {lines}\n", i % 64).as_bytes());
    }
    out
}

fn build_tree(r: &Path) {
    for d in [
        "bin",
        "dev",
        "etc",
        "run",
        "srv",
        "tmp",
        "usr/lib",
        "usr/share",
        "var",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("etc/hostname"), b"golden\n").unwrap();
    xattr::set(
        r.join("etc/hostname"),
        "user.comment",
        b"pinned\0binary\xff",
    )
    .unwrap();
    fs::write(r.join("etc/empty"), b"").unwrap();
    fs::write(r.join("etc/no-access"), b"").unwrap();
    chmod(&r.join("etc/no-access"), 0o000);
    let latin1 = std::ffi::OsStr::from_bytes(b"etc/caf\xe9-latin1");
    fs::write(r.join(latin1), b"not utf-8\n").unwrap();
    let long = format!("usr/share/{}", "long-name-".repeat(12));
    fs::write(r.join(&long), b"a name longer than 100 bytes\n").unwrap();
    // Several content-defined chunks (the file is over the 1 MiB maximum chunk).
    fs::write(r.join("usr/share/words.txt"), text(60_000, 1)).unwrap();
    // Sparse: 4 MiB with data at 0 and at 2 MiB + 12345, holes elsewhere.
    let sp = fs::File::create(r.join("var/sparse.img")).unwrap();
    sp.set_len(4 << 20).unwrap();
    sp.write_all_at(&text(300, 2), 0).unwrap();
    sp.write_all_at(&text(4000, 3), (2 << 20) + 12345).unwrap();
    drop(sp);
    // A setuid binary with file capabilities (as ping), and a hard link to it.
    fs::write(r.join("bin/ping"), text(100, 4)).unwrap();
    chown(&r.join("bin/ping"), 0, 0);
    chmod(&r.join("bin/ping"), 0o4755);
    let cap: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    xattr::set(r.join("bin/ping"), "security.capability", &cap).unwrap();
    fs::hard_link(r.join("bin/ping"), r.join("bin/ping-link")).unwrap();
    fs::write(r.join("bin/all-bits"), b"#!/bin/sh\n").unwrap();
    chmod(&r.join("bin/all-bits"), 0o7777);
    symlink("/usr/share/zoneinfo/UTC", r.join("etc/localtime")).unwrap();
    symlink("../share", r.join("usr/lib/share-link")).unwrap();
    run(&format!(
        "mkfifo -m 0600 {}",
        r.join("run/initctl").display()
    ));
    run(&format!(
        "mknod -m 0666 {} c 1 3",
        r.join("dev/null").display()
    ));
    run(&format!(
        "mknod -m 0660 {} b 7 0",
        r.join("dev/loop0").display()
    ));
    chown(&r.join("dev/loop0"), 0, 6);
    chown(&r.join("srv"), 1234, 5678);
    chmod(&r.join("srv"), 0o2750);
    fs::write(r.join("srv/owned"), b"owned by nobody\n").unwrap();
    chown(&r.join("srv/owned"), 65534, 65534);
    chmod(&r.join("tmp"), 0o1777);
    times(r);
}

/// Odd times everywhere, directories last (writing into one changes its mtime).
fn times(r: &Path) {
    let long = format!("usr/share/{}", "long-name-".repeat(12));
    let files: [(&[u8], i64, i64); 15] = [
        (b"bin/all-bits", 1_234_567_890, 0),
        (b"bin/ping", 1_650_000_000, 100),
        (b"dev/loop0", 1_650_000_004, 9),
        (b"dev/null", 1_650_000_002, 7),
        (b"etc/caf\xe9-latin1", 1_111_111_111, 1),
        (b"etc/empty", 0, 0),
        (b"etc/hostname", 1_580_702_706, 123_456_789),
        (b"etc/localtime", 1_700_000_000, 999_999_999),
        (b"etc/no-access", 1, 1),
        (b"run/initctl", 1_650_000_001, 0),
        (b"srv/owned", 1_650_000_003, 8),
        (b"usr/lib/share-link", 1_700_000_001, 5),
        (long.as_bytes(), 999_999_999, 999_999_999),
        (b"usr/share/words.txt", 4_102_444_800, 500_000_000),
        (b"var/sparse.img", 1_600_000_000, 42),
    ];
    for (p, s, n) in files {
        set_time(&r.join(std::ffi::OsStr::from_bytes(p)), s, n);
    }
    let dirs = [
        "usr/lib",
        "usr/share",
        "usr",
        "bin",
        "dev",
        "etc",
        "run",
        "srv",
        "tmp",
        "var",
        "",
    ];
    for (i, d) in dirs.iter().enumerate() {
        set_time(&r.join(d), 1_690_000_000 + i as i64, 1000 * i as i64);
    }
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: make_golden OUT_DIR");
    let out = Path::new(&out);
    assert!(unsafe { libc::geteuid() } == 0, "run as root");
    assert!(
        !out.join("store").exists(),
        "{} exists; the fixture is never regenerated",
        out.display()
    );
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("root");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let store = Store::init(&out.join("store"), StoreConfig::default()).unwrap();
    let expected = out.join("expected");
    fs::create_dir_all(&expected).unwrap();
    let progress = Progress::new(0);
    let mut opts = ImportOptions::new("golden-tree");
    opts.labels.insert("role".into(), "golden".into());
    let first = import_dir(&store, &src, &opts, &progress).unwrap();
    fs::write(
        expected.join(format!("{}.tree", first.id)),
        listing::list_dir(&src),
    )
    .unwrap();
    // A second generation: one file changed, the rest taken from the parent unread.
    fs::write(src.join("etc/hostname"), b"golden-2\n").unwrap();
    times(&src);
    let second = import_dir(&store, &src, &opts, &progress).unwrap();
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    fs::write(
        expected.join(format!("{}.tree", second.id)),
        listing::list_dir(&src),
    )
    .unwrap();
    // An image of 17 blocks of 64 KiB, the last one partial: data, written zeros, holes.
    let img = work.path().join("disk.img");
    let f = fs::File::create(&img).unwrap();
    f.set_len((16 << 16) + 3000).unwrap();
    f.write_all_at(&text(2000, 5), 0).unwrap();
    f.write_all_at(&vec![0u8; 1 << 16], 8 << 16).unwrap();
    f.write_all_at(&text(500, 6), (5 << 16) + 100).unwrap();
    f.write_all_at(b"tail of the disk", (16 << 16) + 3000 - 16)
        .unwrap();
    drop(f);
    let mut iopts = ImportOptions::new("golden-image");
    iopts.parent = ParentChoice::None;
    let image = import_image(
        &store,
        ImageSource {
            reader: &ignite_archive::FileImage::open(&img).unwrap(),
            changed: None,
        },
        &iopts,
        &progress,
    )
    .unwrap();
    let bytes = fs::read(&img).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    fs::write(
        expected.join(format!("{}.image", image.id)),
        format!("size={} sha256={sha}\n", bytes.len()),
    )
    .unwrap();
    let v = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    let counts = format!(
        "snapshots={} packs={} chunks_referenced={} bytes_checked={}\n",
        v.snapshots, v.packs, v.chunks_referenced, v.bytes_checked
    );
    fs::write(expected.join("verify"), counts).unwrap();
    // Git keeps no empty directories: mark the store's working directories.
    for d in ["trash", "locks", "tmp"] {
        fs::write(out.join("store").join(d).join(".keep"), b"").unwrap();
    }
    println!("{} {} {}", first.id, second.id, image.id);
}
