//! The NBD client against a real server, qemu-nbd: the export's size, reads, holes and data
//! from `base:allocation`, and the regions a dirty bitmap marked (written with qemu-io while
//! the bitmap was enabled) from `qemu:dirty-bitmap:NAME`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ignite_archive::ImageReader;
use ignite_e2e::{have, require_all, run, wait_for};
use ignite_recovery::nbd::{Client, Reader};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(image: &Path, socket: &Path, bitmap: &str) -> Server {
    let child = Command::new("qemu-nbd")
        .args([
            "--persistent",
            "--shared=4",
            "--read-only",
            "--format",
            "qcow2",
            "--export-name",
            "disk",
        ])
        .args(["--bitmap", bitmap, "--socket"])
        .arg(socket)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    wait_for("qemu-nbd's socket", Duration::from_secs(20), || {
        socket.exists()
    });
    Server(child)
}

#[test]
fn reads_allocation_and_dirty_bitmap_from_qemu_nbd() {
    if !require_all(&[
        ("qemu-img (qemu-utils)", have("qemu-img")),
        ("qemu-io", have("qemu-io")),
        ("qemu-nbd", have("qemu-nbd")),
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    let i = img.to_str().unwrap();
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", i, "8M"]));
    // Data written before the bitmap exists: allocated, not dirty.
    run(Command::new("qemu-io").args(["-c", "write -P 0x11 0 64k", i]));
    run(Command::new("qemu-img").args(["bitmap", "--add", "-g", "64k", i, "b0"]));
    run(Command::new("qemu-io").args([
        "-c",
        "write -P 0x55 1M 64k",
        "-c",
        "write -P 0x66 5M 4k",
        i,
    ]));
    let sock = dir.path().join("nbd.sock");
    let _server = serve(&img, &sock, "b0");

    let mut c =
        Client::connect(&sock, "disk", &["base:allocation", "qemu:dirty-bitmap:b0"]).unwrap();
    assert_eq!(c.size(), 8 << 20);
    assert_eq!(
        c.ranges_with("qemu:dirty-bitmap:b0", ignite_recovery::nbd::STATE_DIRTY)
            .unwrap(),
        vec![(1 << 20, 64 << 10), (5 << 20, 64 << 10)]
    );
    let data = c.data_ranges().unwrap();
    for (off, _) in [(0u64, 1), (1 << 20, 1), (5 << 20, 1)] {
        assert!(
            data.iter().any(|&(o, l)| o <= off && off < o + l),
            "{off} not in data ranges {data:?}"
        );
    }
    assert!(
        !data.iter().any(|&(o, l)| o <= 3 << 20 && 3 << 20 < o + l),
        "{data:?}"
    );
    // A read across data and a hole, larger than one request's limit.
    let mut buf = vec![0xffu8; 6 << 20];
    c.read(&mut buf, 0).unwrap();
    assert!(buf[..64 << 10].iter().all(|&b| b == 0x11));
    assert!(buf[64 << 10..1 << 20].iter().all(|&b| b == 0));
    assert!(buf[1 << 20..(1 << 20) + (64 << 10)]
        .iter()
        .all(|&b| b == 0x55));
    assert!(buf[5 << 20..(5 << 20) + 4096].iter().all(|&b| b == 0x66));
    assert!(c.read(&mut [0u8; 2], (8 << 20) - 1).is_err());
    c.disconnect();

    // The same export as the archive reads it.
    let r = Reader::new(
        Client::connect(&sock, "disk", &["base:allocation", "qemu:dirty-bitmap:b0"]).unwrap(),
        "disk",
    );
    assert_eq!(r.dirty_ranges("b0").unwrap().len(), 2);
    let mut b = [0u8; 4];
    r.read_at(&mut b, (5 << 20) + 100).unwrap();
    assert_eq!(b, [0x66; 4]);
    // A context that was not negotiated, and an export that does not exist.
    assert!(r.dirty_ranges("nope").is_err());
    assert!(Client::connect(&sock, "other", &[]).is_err());
}
