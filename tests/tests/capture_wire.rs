//! What a nightly block capture over the network puts on the wire (issue 12): with the
//! server holding the disk's previous capture, an unchanged disk costs a few KiB (one
//! digest per 16 blocks, not every block's id asked about and committed), a few changed
//! blocks cost those blocks, and a chunk the store lost since is sent again. Host only: the
//! server in a network namespace, `ignite recovery capture --server --disk IMAGE` beside it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ignite_e2e::*;

const SERVER: &str = "http://10.77.0.1:8080";
const BLOCK: u64 = 64 << 10;
/// The image: 1024 blocks of distinct data, so the old protocol sent 1024 ids each way.
const BLOCKS: u64 = 1024;

struct Wire {
    lab: Lab,
    dir: tempfile::TempDir,
    _server: Server,
}

impl Wire {
    /// A server, and an image of [`BLOCKS`] blocks of distinct data (`pattern(.., seed)`).
    fn new(tag: &str, seed: u64) -> Option<(Wire, PathBuf)> {
        if !require_all(&[("root (network namespaces)", is_root())]) || !require_tools(&["ip"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        let lab = Lab::new(tag);
        let server = Server::start(
            &lab,
            &dir.path().join("state"),
            &dir.path().join("boot"),
            &[],
        );
        let img = dir.path().join("disk.img");
        std::fs::write(&img, pattern((BLOCKS * BLOCK) as usize, seed)).unwrap();
        let w = Wire {
            lab,
            dir,
            _server: server,
        };
        Some((w, img))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A block capture of `img` as client `name`, with a token of its own; the bytes the
    /// client says went over the wire (request and answer bodies, as the server counted).
    fn capture(&self, name: &str, img: &Path) -> u64 {
        let token = run(ignite_cmd(&["recovery", "token", name, "--kind", "block"])
            .arg("--state-dir")
            .arg(self.path("state")))
        .trim()
        .to_string();
        let out = run_output(
            Lab::cmd(&self.lab.ns, ignite_bin())
                .args(["recovery", "capture", "--server", SERVER, "--token", &token])
                .arg("--disk")
                .arg(img)
                .env("RUST_LOG", "warn"),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "... 1.2 KiB (1234 bytes) on the wire, ..." or "... 900 bytes on the wire, ..."
        let wire = text.split(" on the wire").next().and_then(|head| {
            let head = head.trim_end_matches(')').trim_end_matches(" bytes");
            head.rsplit([' ', '(']).next()?.parse::<u64>().ok()
        });
        wire.unwrap_or_else(|| panic!("no wire bytes in the capture's output:\n{text}"))
    }

    /// The latest capture of `name`'s disk, exported as an image.
    fn exported(&self, name: &str) -> Vec<u8> {
        let back = self.path("back.img");
        let _ = std::fs::remove_file(&back);
        run(ignite_cmd(&["archive", "--store"])
            .arg(self.path("state/store"))
            .args(["export", &format!("{name}:disk0"), "--image"])
            .arg(&back));
        std::fs::read(&back).unwrap()
    }
}

fn write_block(img: &Path, block: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(data, block * BLOCK).unwrap();
}

#[test]
fn a_nightly_capture_sends_what_changed_and_little_else() {
    let Some((w, img)) = Wire::new("capwire", 11) else {
        return;
    };
    let full = w.capture("wire1", &img);
    assert!(
        full > BLOCKS * BLOCK / 2,
        "the first capture sent only {full} bytes"
    );

    // Nothing changed: one digest per 16 blocks (2 KiB here), the begin, commit and finish.
    let idle = w.capture("wire1", &img);
    eprintln!("first capture {full} bytes on the wire, unchanged {idle}");
    assert!(
        idle < 16 << 10,
        "an unchanged capture of {BLOCKS} blocks sent {idle} bytes (every block's id is 32 KiB each way)"
    );
    assert_eq!(w.exported("wire1"), std::fs::read(&img).unwrap());

    // Three blocks of fresh data and one zeroed: those, and their groups' ids.
    // (pattern() seeds differ above bit 0: it sets that bit.)
    for (seed, b) in [(200, 5u64), (202, 500), (204, 1023)] {
        write_block(&img, b, &pattern(BLOCK as usize, seed));
    }
    write_block(&img, 700, &vec![0; BLOCK as usize]);
    let night = w.capture("wire1", &img);
    eprintln!("3 blocks changed, 1 zeroed: {night} bytes on the wire");
    assert!(
        night > 3 * BLOCK && night < 3 * BLOCK + (16 << 10),
        "a capture with 3 new blocks sent {night} bytes"
    );
    assert_eq!(w.exported("wire1"), std::fs::read(&img).unwrap());
}

#[test]
fn chunks_the_store_lost_since_the_last_capture_are_sent_again() {
    let Some((w, img)) = Wire::new("capwlost", 12) else {
        return;
    };
    w.capture("wire2", &img);
    // A pack lost (a damaged disk, a hand-made mess): its chunks are no longer held.
    // The largest pack holds disk blocks (a small one may hold only the record's files).
    let packs = sh(&format!(
        "find {} -name '*.pack' -printf '%s %p\\n'",
        w.path("state/store/packs").display()
    ));
    let (lost, pack) = packs
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(size, p)| (size.parse::<u64>().unwrap(), PathBuf::from(p)))
        .max()
        .expect("a pack");
    assert!(lost > 8 * BLOCK, "the largest pack has {lost} bytes");
    std::fs::remove_file(&pack).unwrap();
    let again = w.capture("wire2", &img);
    eprintln!("a pack of {lost} bytes lost: the unchanged disk sent {again} bytes");
    assert!(
        again > lost / 2,
        "the lost chunks were not sent again ({again} bytes)"
    );
    assert_eq!(w.exported("wire2"), std::fs::read(&img).unwrap());
}
