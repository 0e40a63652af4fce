//! A damaged store stays usable: what is intact reads and exports, `verify` names what is
//! not, and maintenance goes on around it.

mod common;

use common::*;
use ignite_archive::{export_dir, import_dir, Error, Store};
use std::fs;
use std::path::{Path, PathBuf};

fn packs(store: &Store) -> Vec<PathBuf> {
    let out = sh(&format!(
        "find {} -name '*.pack' | sort",
        store.root().join("packs").display()
    ));
    out.lines().map(PathBuf::from).collect()
}

fn tree(root: &Path, seed: u64) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("data"), random_bytes(300_000, seed)).unwrap();
    fs::write(root.join("small"), format!("small {seed}\n")).unwrap();
}

#[test]
fn one_damaged_pack_is_named_and_the_rest_stays_usable() {
    let t = tempfile::tempdir().unwrap();
    let store = new_store(t.path());
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    tree(&a, 1);
    let ma = import_dir(&store, &a, &opts("a"), &progress()).unwrap();
    let before = packs(&store);
    tree(&b, 2);
    let mb = import_dir(&store, &b, &opts("b"), &progress()).unwrap();
    assert_eq!(before.len(), 1);
    let damaged = before[0].clone();
    let name = damaged.file_stem().unwrap().to_str().unwrap().to_string();
    // Damage a's pack in its trailer: its record checksum no longer matches.
    let mut bytes = fs::read(&damaged).unwrap();
    let n = bytes.len();
    bytes[n - 60] ^= 0x40;
    fs::write(&damaged, &bytes).unwrap();

    let store = Store::open(store.root()).expect("a damaged pack does not stop the store");
    let listed = store.damaged_packs();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0, name);
    assert!(listed[0].2.contains("damaged pack"), "{listed:?}");
    // b is intact and exports exactly; a's chunks are missing, said so by id.
    let out = t.path().join("out-b");
    export_dir(&store, &mb, &out, &progress()).unwrap();
    assert_same_tree(&b, &out);
    let err = export_dir(&store, &ma, &t.path().join("out-a"), &progress()).unwrap_err();
    assert!(matches!(err, Error::MissingChunk { .. }), "{err}");
    // verify names the pack and the snapshot's missing chunks.
    let r = ignite_archive::verify::verify(&store, 1.0).unwrap();
    assert!(!r.ok());
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with(&format!("pack {name}")) && p.contains("checksum")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.contains("missing")),
        "{:?}",
        r.problems
    );
    // Imports, stats and gc go on; gc keeps the damaged pack for repair.
    let c = t.path().join("c");
    tree(&c, 3);
    import_dir(&store, &c, &opts("c"), &progress()).unwrap();
    assert_eq!(
        ignite_archive::stats::stats(&store).unwrap().damaged_packs,
        1
    );
    let g = ignite_archive::gc::gc(&store).unwrap();
    assert_eq!(g.packs_damaged, 1);
    assert!(damaged.exists());
}
