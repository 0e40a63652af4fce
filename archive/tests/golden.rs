//! The golden fixture store (`tests/golden/store`, made once by `examples/make_golden.rs` with
//! format 1, see FORMAT.md) must stay readable by every future version: it verifies, and each
//! snapshot exports, as a directory, as a tar stream or as an image, to exactly what was
//! recorded from the source when the store was made (`tests/golden/expected`).

mod common;

use common::listing::{list_dir, list_tar};
use common::*;
use ignite_archive::{SnapshotKind, Store};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A private copy of the fixture store: tests must not touch the committed one.
fn fixture() -> (tempfile::TempDir, Store) {
    let t = tempfile::tempdir().unwrap();
    sh(&format!(
        "cp -a {} {}",
        golden().join("store").display(),
        t.path().join("store").display()
    ));
    let store = Store::open(&t.path().join("store")).unwrap();
    (t, store)
}

fn expected(name: &str) -> String {
    let p = golden().join("expected").join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn golden_store_verifies_in_full() {
    let (_t, store) = fixture();
    let r = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    let counts = format!(
        "snapshots={} packs={} chunks_referenced={} bytes_checked={}\n",
        r.snapshots, r.packs, r.chunks_referenced, r.bytes_checked
    );
    assert_eq!(counts, expected("verify"));
}

#[test]
fn every_golden_snapshot_has_its_expected_output() {
    let (_t, store) = fixture();
    let mut have: Vec<String> = store
        .list_snapshots()
        .unwrap()
        .iter()
        .map(|m| match m.kind {
            SnapshotKind::Tree => format!("{}.tree", m.id),
            SnapshotKind::Image => format!("{}.image", m.id),
        })
        .collect();
    have.push("verify".into());
    have.sort();
    let mut want: Vec<String> = fs::read_dir(golden().join("expected"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    want.sort();
    assert_eq!(have, want);
    let trees = store.list_snapshots().unwrap();
    let second = trees.iter().rfind(|m| m.name == "golden-tree").unwrap();
    assert!(second.parent.is_some(), "the second tree keeps its parent");
    assert_eq!(
        second.labels.get("role").map(String::as_str),
        Some("golden")
    );
}

#[test]
fn golden_trees_export_as_tar_to_their_listings() {
    let (_t, store) = fixture();
    for m in store.list_snapshots().unwrap() {
        if m.kind != SnapshotKind::Tree {
            continue;
        }
        let mut tar = Vec::new();
        ignite_archive::export_tar::export_tar(&store, &m, &mut tar).unwrap();
        let got = list_tar(&tar[..]);
        assert_eq!(
            got,
            expected(&format!("{}.tree", m.id)),
            "snapshot {}",
            m.id
        );
    }
}

#[test]
fn golden_trees_export_as_directories_to_their_listings() {
    if !is_root() {
        // Owners, device nodes and security.capability need root.
        assert!(
            std::env::var_os("IGNITE_CI").is_none(),
            "IGNITE_CI needs root"
        );
        eprintln!("skipped: exporting the golden trees exactly needs root");
        return;
    }
    let (t, store) = fixture();
    for m in store.list_snapshots().unwrap() {
        if m.kind != SnapshotKind::Tree {
            continue;
        }
        let out = t.path().join(&m.id);
        ignite_archive::export_dir::export_dir(&store, &m, &out, &progress()).unwrap();
        assert_eq!(
            list_dir(&out),
            expected(&format!("{}.tree", m.id)),
            "snapshot {}",
            m.id
        );
        let sparse = fs::metadata(out.join("var/sparse.img")).unwrap();
        assert!(sparse.blocks() * 512 < 1 << 20, "holes were filled in");
    }
}

#[test]
fn golden_image_exports_byte_identical_and_sparse() {
    let (t, store) = fixture();
    let images: Vec<_> = store
        .list_snapshots()
        .unwrap()
        .into_iter()
        .filter(|m| m.kind == SnapshotKind::Image)
        .collect();
    assert_eq!(images.len(), 1);
    let m = &images[0];
    let out = t.path().join("disk.img");
    ignite_archive::export_image::export_image(&store, m, &out, &progress()).unwrap();
    let bytes = fs::read(&out).unwrap();
    let got = format!(
        "size={} sha256={}\n",
        bytes.len(),
        hex::encode(Sha256::digest(&bytes))
    );
    assert_eq!(got, expected(&format!("{}.image", m.id)));
    assert!(fs::metadata(&out).unwrap().blocks() * 512 < bytes.len() as u64);
}
