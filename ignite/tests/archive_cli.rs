//! `ignite archive` as a process: exit codes, and `kill -9` at random moments of import, prune
//! and gc never leaves a store that fails verify or breaks the next import.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn ignite(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ignite"))
        .arg("archive")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = ignite(store, args);
    assert!(
        out.status.success(),
        "ignite archive {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_data(dir: &Path, files: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed | 1;
    for i in 0..files {
        let data: Vec<u8> = (0..(512 << 10))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        std::fs::write(dir.join(format!("file{i:03}")), data).unwrap();
    }
}

fn pseudo_random(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    x ^= x >> 29;
    x.wrapping_mul(0xbf58476d1ce4e5b9) >> 40
}

/// Starts `args`, kills it with SIGKILL after `ms` (if still running).
fn kill_after(store: &Path, args: &[&str], ms: u64) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ignite"))
        .arg("archive")
        .arg("--store")
        .arg(store)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();
    !finished
}

#[test]
fn exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("s");
    let usage = ignite(&store, &["import"]);
    assert_eq!(usage.status.code(), Some(2));
    let missing = ignite(&store, &["list"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ignite archive init"));
    ok(&store, &["init"]);
    let nosnap = ignite(&store, &["export", "nothing", "--dir", "/tmp/x-never"]);
    assert_eq!(nosnap.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nosnap.stderr).contains("no snapshot matches"));
    let badsize = Command::new(env!("CARGO_BIN_EXE_ignite"))
        .args(["archive", "--store"])
        .arg(t.path().join("s2"))
        .args(["init", "--block-size", "10X"])
        .output()
        .unwrap();
    assert_eq!(badsize.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&badsize.stderr).contains("not a size"));
}

#[test]
fn kill_9_anywhere_leaves_a_verifiable_store() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let data = t.path().join("data");
    write_data(&data, 48, 1); // 24 MiB
    ok(&store, &["init"]);
    let src = data.to_str().unwrap();
    // How long a whole import takes here, so kills land inside one.
    let scratch = t.path().join("scratch");
    ok(&scratch, &["init"]);
    let started = std::time::Instant::now();
    ok(&scratch, &["import", "--name", "timing", src]);
    let full_ms = started.elapsed().as_millis() as u64;
    // Later imports dedup against earlier ones and finish sooner than the timed one, so keep
    // killing (at shorter delays) until enough landed mid-import.
    let mut killed = 0;
    for i in 0..40u64 {
        if killed >= 6 {
            break;
        }
        // Vary the data a little so each import has new chunks to write.
        std::fs::write(
            data.join("changing"),
            format!("generation {i}").repeat(10_000),
        )
        .unwrap();
        let ms = 1 + pseudo_random(i) % (full_ms / 2 + 1);
        if kill_after(
            &store,
            &["import", "--name", "crash", "--no-parent", src],
            ms,
        ) {
            killed += 1;
        }
        ok(&store, &["verify"]);
    }
    assert!(
        killed >= 3,
        "only {killed} imports were killed mid-way; the test proves little"
    );
    // The next import works and dedups against whatever the killed ones sealed.
    ok(&store, &["import", "--name", "crash", src]);
    let out = ok(&store, &["import", "--name", "crash", "--no-parent", src]);
    assert!(out.contains("0 B new"), "{out}");
    // Now prune and gc, killed at random moments, then finished.
    for i in 0..6u64 {
        write_data(&data, 8, 100 + i);
        ok(&store, &["import", "--name", "crash", src]);
    }
    for i in 0..8u64 {
        let ms = 5 + pseudo_random(100 + i) % 150;
        if i % 2 == 0 {
            kill_after(&store, &["prune", "--keep-last", &(8 - i).to_string()], ms);
        } else {
            kill_after(&store, &["gc"], ms);
        }
        ok(&store, &["verify"]);
    }
    ok(&store, &["prune", "--keep-last", "1"]);
    ok(&store, &["gc"]);
    // 24 MiB of live data remain, plus at most a little dead space in mostly-live packs.
    let stats: serde_json::Value = serde_json::from_str(&ok(&store, &["stats", "--json"])).unwrap();
    let stored = stats["stored_bytes"].as_u64().unwrap();
    assert!(
        stored < 30 << 20,
        "gc left {stored} bytes for 24 MiB of live data"
    );
    ok(&store, &["verify"]);
    let out = t.path().join("restored");
    ok(&store, &["export", "crash", "--dir", out.to_str().unwrap()]);
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&data)
        .arg(&out)
        .status()
        .unwrap();
    assert!(diff.success());
}
