//! The NBD server serving a block snapshot of a real store: read back through Ignite's own
//! client (structured replies, holes) and through QEMU's (`qemu-img convert` of the export
//! equals the imported image byte for byte; `qemu-io` writes are refused), and a damaged
//! chunk is a read error, never wrong data. The snapshot is read in place by
//! `disk::SnapshotDisk`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ignite_archive::{import_image, ImportOptions, Progress, Store};
use ignite_e2e::{have, require_all, run, run_output};
use ignite_recovery::disk::SnapshotDisk;
use ignite_recovery::nbd::server::Server;
use ignite_recovery::nbd::Client;

/// A 5 MiB + 4 KiB image (the last block is short): patterned data, a hole, more data.
fn make_image(path: &Path) -> Vec<u8> {
    let size = (5 << 20) + 4096;
    let mut want = vec![0u8; size];
    for (i, b) in want.iter_mut().enumerate() {
        let in_hole = (1 << 20..3 << 20).contains(&i);
        if !in_hole {
            *b = (i * 7 / 3 % 251) as u8 + 1;
        }
    }
    std::fs::write(path, &want).unwrap();
    want
}

fn serve(dir: &Path) -> (Server, Vec<u8>, Arc<Store>, ignite_archive::Manifest) {
    let img = dir.join("src.img");
    let want = make_image(&img);
    let store = Arc::new(Store::open_or_init(&dir.join("store")).unwrap());
    let reader = ignite_archive::FileImage::open(&img).unwrap();
    let m = import_image(
        &store,
        ignite_archive::import_image::ImageSource {
            reader: &reader,
            changed: None,
        },
        &ImportOptions::new("disk"),
        &Progress::default(),
    )
    .unwrap();
    let image = Arc::new(SnapshotDisk::open(store.clone(), &m).unwrap());
    let server = Server::start(&dir.join("nbd.sock"), "disk0", image).unwrap();
    (server, want, store, m)
}

#[test]
fn own_client_reads_the_snapshot_with_holes_and_odd_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (server, want, _, _) = serve(dir.path());
    let mut c = Client::connect(server.socket(), "disk0", &[]).unwrap();
    assert_eq!(c.size(), want.len() as u64);
    let mut all = vec![0xAAu8; want.len()];
    c.read(&mut all, 0).unwrap();
    assert!(all == want, "whole export differs from the image");
    // Unaligned, across a block edge and into the hole, and the short last block.
    for (off, len) in [
        (65_530u64, 20usize),
        ((1 << 20) - 3, 10),
        ((5 << 20) + 4000, 96),
    ] {
        let mut b = vec![0xAAu8; len];
        c.read(&mut b, off).unwrap();
        assert_eq!(b, want[off as usize..off as usize + len], "at {off}");
    }
    let mut past = [0u8; 2];
    assert!(c.read(&mut past, want.len() as u64 - 1).is_err());
    assert!(Client::connect(server.socket(), "other", &[]).is_err());
    c.disconnect();
}

#[test]
fn qemu_reads_the_export_exactly_and_cannot_write_it() {
    if !require_all(&[
        ("qemu-img (qemu-utils)", have("qemu-img")),
        ("qemu-io", have("qemu-io")),
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, want, _, _) = serve(dir.path());
    let url = format!("nbd+unix:///disk0?socket={}", server.socket().display());
    let out = dir.path().join("out.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &url])
        .arg(&out));
    assert!(
        std::fs::read(&out).unwrap() == want,
        "qemu-img convert differs"
    );
    let info = run(Command::new("qemu-img").args(["info", "--output=json", &url]));
    assert!(
        info.contains(&format!("\"virtual-size\": {}", want.len())),
        "{info}"
    );
    // A qcow2 overlay on the export, as an instant restore makes: reads through it match.
    let top = dir.path().join("top.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &url])
        .arg(&top));
    let read = run_output(
        Command::new("qemu-io")
            .args(["-c", "read -P 0 1M 2M", "-c", "read -v 0 16"])
            .arg(&top),
    );
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(text.contains("read 2097152/2097152"), "{text}");
    assert!(text.contains("01 03 05 08 0a 0c 0f"), "first bytes: {text}");
    let write = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &url])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&write.stdout),
        String::from_utf8_lossy(&write.stderr)
    );
    assert!(
        !write.status.success()
            || said.contains("Operation not permitted")
            || said.contains("read-only"),
        "a write to the export was not refused: {said}"
    );
    assert!(!said.contains("wrote 4096"), "{said}");
}

#[test]
fn a_damaged_chunk_is_a_read_error_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let (server, want, store, _) = serve(dir.path());
    // Flip every byte of every pack past its first 40: each stored chunk then fails its
    // check, wherever the import put it (one flipped byte hit only the chunk that happened
    // to lie there, and block 0's was not always that one).
    let packs = store.root().join("packs");
    let mut flipped = 0;
    let files = ignite_e2e::sh(&format!("find {} -type f", packs.display()));
    for e in files.lines() {
        let mut b = std::fs::read(e).unwrap();
        for x in b.iter_mut().skip(40) {
            *x ^= 0xff;
        }
        std::fs::write(e, b).unwrap();
        flipped += 1;
    }
    assert!(flipped > 0, "no pack under {}", packs.display());
    let mut c = Client::connect(server.socket(), "disk0", &[]).unwrap();
    let mut b = vec![0u8; 4096];
    let e = c.read(&mut b, 0).unwrap_err();
    assert!(format!("{e:#}").contains("errno 5"), "{e:#}");
    // The hole needs no chunk, and the session survived the error.
    c.read(&mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0) && want[1 << 20] == 0);
}
