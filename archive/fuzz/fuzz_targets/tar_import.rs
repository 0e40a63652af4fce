//! Arbitrary bytes as a tar stream: import must return Ok or a clear error, never panic, and
//! whatever it accepts must export again.
#![no_main]

use ignite_archive::{ImportOptions, ParentChoice, Progress};
use ignite_archive::{Store, StoreConfig};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn store() -> &'static Store {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        Store::init(&dir.path().join("s"), StoreConfig::default()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let store = store();
    let mut opts = ImportOptions::new("fuzz");
    opts.parent = ParentChoice::None;
    let progress = Progress::new(0);
    if let Ok(m) = ignite_archive::import_tar::import_tar(store, data, &opts, &progress) {
        ignite_archive::export_tar::export_tar(store, &m, std::io::sink()).unwrap();
        store.forget(&m.id).unwrap();
    }
});
