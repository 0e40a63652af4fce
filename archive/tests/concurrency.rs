//! Several processes on one store: concurrent imports deduplicate against each other, and gc
//! runs while imports run without losing a chunk any snapshot needs.

mod common;

use common::*;
use ignite_archive::import::ImportOptions;
use ignite_archive::import_dir::import_dir;
use ignite_archive::retention::Policy;
use ignite_archive::{Store, StoreConfig};
use std::fs;
use std::path::Path;

fn small_packs(dir: &Path) -> Store {
    let cfg = StoreConfig {
        pack_size: 1 << 20,
        ..Default::default()
    };
    Store::init(&dir.join("store"), cfg).unwrap()
}

fn data_dir(root: &Path, seed: u64, files: usize) {
    fs::create_dir_all(root).unwrap();
    for i in 0..files {
        fs::write(
            root.join(format!("f{i:03}")),
            random_bytes(256 << 10, seed * 1000 + i as u64),
        )
        .unwrap();
    }
}

#[test]
fn two_imports_at_once_both_succeed_and_dedup() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    data_dir(&src, 1, 64); // 16 MiB of incompressible data
    let root = small_packs(t.path()).root().to_path_buf();
    let run = |name: &'static str| {
        let root = root.clone();
        let src = src.clone();
        std::thread::spawn(move || {
            let store = Store::open(&root).unwrap(); // its own handle, as another process
            import_dir(&store, &src, &ImportOptions::new(name), &progress()).unwrap()
        })
    };
    let (a, b) = (run("a"), run("b"));
    let (ma, mb) = (a.join().unwrap(), b.join().unwrap());
    let store = Store::open(&root).unwrap();
    let stored = ignite_archive::stats::stats(&store).unwrap().stored_bytes;
    let single = 16u64 << 20;
    // Each sees the other's sealed packs as it goes: far less than two full copies...
    assert!(
        ma.stats.new_stored_bytes + mb.stats.new_stored_bytes < single * 3 / 2 + (4 << 20),
        "a added {}, b added {}",
        ma.stats.new_stored_bytes,
        mb.stats.new_stored_bytes
    );
    // ...and gc removes what both wrote.
    ignite_archive::gc::gc(&store).unwrap();
    let after = ignite_archive::stats::stats(&store).unwrap().stored_bytes;
    assert!(
        after <= stored && after < single + (2 << 20),
        "after gc {after}"
    );
    assert!(ignite_archive::verify::verify(&store, 1.0).unwrap().ok());
}

#[test]
fn gc_while_importing_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = small_packs(t.path()).root().to_path_buf();
    let dirs: Vec<_> = (0..6)
        .map(|g| {
            let d = t.path().join(format!("gen{g}"));
            // Each generation shares most files with the previous one.
            data_dir(&d, 1, 24);
            for i in 0..4 {
                fs::write(
                    d.join(format!("f{:03}", i * 5)),
                    random_bytes(200 << 10, 100 + g * 10 + i),
                )
                .unwrap();
            }
            d
        })
        .collect();
    let importer = {
        let root = root.clone();
        let dirs = dirs.clone();
        std::thread::spawn(move || {
            let store = Store::open(&root).unwrap();
            for d in &dirs {
                let mut o = ImportOptions::new("series");
                o.parent = ignite_archive::import::ParentChoice::None;
                import_dir(&store, d, &o, &progress()).unwrap();
            }
        })
    };
    let store = Store::open(&root).unwrap();
    let policy = Policy {
        last: Some(2),
        ..Default::default()
    };
    let mut gcs = 0;
    while !importer.is_finished() || gcs < 3 {
        for d in
            ignite_archive::retention::apply(&policy, &store.list_snapshots().unwrap()).unwrap()
        {
            if !d.keep {
                store.forget(&d.id).unwrap();
            }
        }
        ignite_archive::gc::gc(&store).unwrap();
        gcs += 1;
    }
    importer.join().unwrap();
    let report = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // The newest snapshot restores exactly.
    let newest = store.resolve("series").unwrap();
    let out = t.path().join("out");
    ignite_archive::export_dir::export_dir(&store, &newest, &out, &progress()).unwrap();
    sh(&format!("diff -r {} {}", dirs[5].display(), out.display()));
}
