//! File trees and images through the store and back, compared with an independent walker
//! (GNU tar --compare, cmp) and with our own tree comparison.

mod common;

use common::*;
use ignite_archive::export_dir::export_dir;
use ignite_archive::export_image::export_image;
use ignite_archive::export_tar::export_tar;
use ignite_archive::import_dir::import_dir;
use ignite_archive::import_image::{import_image, ImageSource};
use ignite_archive::import_tar::import_tar;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

#[test]
fn directory_round_trip_keeps_everything() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_sample_tree(&src);
    let store = new_store(t.path());
    let m = import_dir(&store, &src, &opts("sample"), &progress()).unwrap();
    let out = t.path().join("out");
    export_dir(&store, &m, &out, &progress()).unwrap();
    assert_same_tree(&src, &out);
    // Independent checks: content by diff -r, holes kept, hard link kept.
    sh(&format!(
        "diff -r --no-dereference -x fifo -x null -x loop {} {}",
        src.display(),
        out.display()
    ));
    let sparse = fs::metadata(out.join("usr/sparse")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(sparse.blocks() * 512 < 4 << 20, "sparse file was filled in");
    let (a, b) = (
        fs::metadata(out.join("usr/bin/big")).unwrap(),
        fs::metadata(out.join("usr/bin/big-link")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        xattr::get(out.join("etc/hostname"), "user.ignite")
            .unwrap()
            .unwrap(),
        b"test-value"
    );
    if is_root() {
        assert!(
            xattr::get(out.join("usr/bin/setuid"), "security.capability")
                .unwrap()
                .is_some()
        );
        assert_eq!(fs::metadata(out.join("etc/hostname")).unwrap().uid(), 1234);
    }
    assert!(ignite_archive::verify::verify(&store, 1.0).unwrap().ok());
}

#[test]
fn gnu_tar_in_and_tar_out_agree_with_gnu_tar() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_sample_tree(&src);
    let tarball = t.path().join("sample.tar");
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -C {} -cf {} .",
        src.display(),
        tarball.display()
    ));
    let store = new_store(t.path());
    for (suffix, cmd) in [
        ("", None),
        (".gz", Some("gzip -k")),
        (".zst", Some("zstd -q -k")),
        (".xz", Some("xz -k")),
    ] {
        if let Some(cmd) = cmd {
            sh(&format!("{cmd} {}", tarball.display()));
        }
        let path = format!("{}{suffix}", tarball.display());
        let m = import_tar(
            &store,
            fs::File::open(&path).unwrap(),
            &opts("tar"),
            &progress(),
        )
        .unwrap();
        let out = t.path().join(format!("out{suffix}"));
        export_dir(&store, &m, &out, &progress()).unwrap();
        // GNU tar compares content, modes, owners, mtimes and link targets with the export.
        sh(&format!(
            "tar --numeric-owner -C {} --compare -f {}",
            out.display(),
            tarball.display()
        ));
        assert_same_tree(&src, &out);
    }
    // Our tar output extracts with GNU tar to the same tree.
    let m = store.resolve("tar").unwrap();
    let ours = t.path().join("ours.tar");
    export_tar(&store, &m, fs::File::create(&ours).unwrap()).unwrap();
    let ext = t.path().join("extracted");
    fs::create_dir(&ext).unwrap();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -C {} -xf {}",
        ext.display(),
        ours.display()
    ));
    sh(&format!(
        "diff -r --no-dereference -x fifo -x null -x loop {} {}",
        src.display(),
        ext.display()
    ));
    assert_same_tree(&src, &ext);
}

#[test]
fn image_round_trip_is_byte_identical_and_sparse() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let f = fs::File::create(&img).unwrap();
    f.set_len(256 << 20).unwrap();
    f.write_all_at(&random_bytes(5 << 20, 1), 0).unwrap();
    f.write_all_at(&random_bytes(300_000, 2), 100 << 20)
        .unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], 200 << 20).unwrap(); // written zeros: stored as nothing
    f.write_all_at(b"tail", (256 << 20) - 4).unwrap();
    let store = new_store(t.path());
    let src = ImageSource {
        reader: &ignite_archive::FileImage::open(&img).unwrap(),
        changed: None,
    };
    let m = import_image(&store, src, &opts("disk"), &progress()).unwrap();
    assert!(m.stats.new_stored_bytes < 6 << 20);
    let out = t.path().join("out.img");
    export_image(&store, &m, &out, &progress()).unwrap();
    sh(&format!("cmp {} {}", img.display(), out.display()));
    assert!(
        fs::metadata(&out).unwrap().blocks() * 512 < 8 << 20,
        "export is not sparse"
    );
    // A nightly change: one block rewritten; only that block is new.
    f.write_all_at(&random_bytes(4096, 9), 50 << 20).unwrap();
    let m2 = import_image(
        &store,
        ImageSource {
            reader: &ignite_archive::FileImage::open(&img).unwrap(),
            changed: None,
        },
        &opts("disk"),
        &progress(),
    )
    .unwrap();
    assert_eq!(m2.stats.new_chunks, 1);
    // With the ranges written since (the monitor's change log), unchanged blocks are not
    // even read.
    let bs = store.config().block_size as u64;
    f.write_all_at(&random_bytes(4096, 10), 60 << 20).unwrap();
    let changed = [(60u64 << 20, 4096u64)];
    let mut o = opts("disk");
    o.parent = ignite_archive::import::ParentChoice::Id(m2.id.clone());
    let m3 = import_image(
        &store,
        ImageSource {
            reader: &ignite_archive::FileImage::open(&img).unwrap(),
            changed: Some(&changed),
        },
        &o,
        &progress(),
    )
    .unwrap();
    assert_eq!(m3.stats.read_bytes, bs);
    let out3 = t.path().join("out3.img");
    export_image(&store, &m3, &out3, &progress()).unwrap();
    sh(&format!("cmp {} {}", img.display(), out3.display()));
}

#[test]
fn unchanged_directory_is_not_read_again() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_sample_tree(&src);
    let store = new_store(t.path());
    let o = ignite_archive::import::ImportOptions::new("series");
    let first = import_dir(&store, &src, &o, &progress()).unwrap();
    assert!(first.stats.read_bytes > 3 << 20);
    fs::write(src.join("etc/hostname"), b"changed\n").unwrap();
    let second = import_dir(&store, &src, &o, &progress()).unwrap();
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    assert_eq!(second.stats.read_bytes, 8, "only the changed file is read");
    let out = t.path().join("out");
    export_dir(&store, &second, &out, &progress()).unwrap();
    assert_same_tree(&src, &out);
}
