//! Instant restore under QEMU, without a guest OS: the disk holds no boot loader, so SeaBIOS
//! finds nothing to boot and waits, and nothing ever writes the disk — which makes the end
//! state exact: once the background copy is done, the guest's disk equals a full restore of
//! the same capture byte for byte. On the way: the guest starts before any of its disk
//! exists, the copy goes on at the speed asked, its server killed mid-copy is taken over by
//! `--resume` (the job continues where it was), QEMU killed mid-copy loses nothing and the
//! copy starts again at the next start, a start with no server is refused by name, and the
//! finished guest runs on its own raw image with no overlay and no server.
//! (A real Debian guest reaching its login while copying is in `install_qemu`.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ignite_e2e::{have, ignite_bin, is_root, pattern, require_all, run};

fn ignite(state: &Path, args: &[&str]) -> String {
    run(Command::new(ignite_bin())
        .args(args)
        .env("IGNITE_STATE_DIR", state))
}

fn status(state: &Path) -> serde_json::Value {
    serde_json::from_str(&ignite(state, &["recovery", "instant", "inst", "--json"])).unwrap()
}

fn copied(state: &Path) -> u64 {
    status(state)["progress"]["copied"].as_u64().unwrap_or(0)
}

/// Waits (bounded) for `f` on the instant status, showing the last status on failure.
fn wait_status(state: &Path, what: &str, secs: u64, f: impl Fn(&serde_json::Value) -> bool) {
    let t = std::time::Instant::now();
    loop {
        let s = status(state);
        if f(&s) {
            return;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let log =
                std::fs::read_to_string(state.join("guests/inst/instant.log")).unwrap_or_default();
            panic!(
                "timed out after {secs} s waiting for {what}; last status {s}\nserver log:\n{log}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn instant_restore_copies_in_the_background_survives_restarts_and_equals_a_full_restore() {
    if !require_all(&[
        ("root", is_root()),
        ("qemu-system-x86_64", have("qemu-system-x86_64")),
        ("qemu-img (qemu-utils)", have("qemu-img")),
    ]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    ignite(
        state,
        &[
            "vm", "create", "src", "--disk", "256M", "--engine", "qemu", "--boot", "disk",
        ],
    );
    // 48 MiB of data in three runs, holes between (no MBR signature: nothing boots).
    let disk = state.join("guests/src/disk0.img");
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for (i, at) in [1u64 << 20, 100 << 20, 200 << 20].iter().enumerate() {
        std::os::unix::fs::FileExt::write_all_at(&f, &pattern(16 << 20, i as u64 + 7), *at)
            .unwrap();
    }
    drop(f);
    ignite(state, &["recovery", "capture", "src"]);
    ignite(state, &["vm", "remove", "src", "--keep-disks"]);

    // Held to 4 MiB/s: the copy takes seconds, long enough to interrupt it twice.
    let out = ignite(
        state,
        &[
            "recovery",
            "restore",
            "src",
            "--as-guest",
            "inst",
            "--instant",
            "--rate",
            "4M",
        ],
    );
    assert!(out.contains("0 bytes written"), "{out}");
    let own = state.join("guests/inst/disk0.img");
    let s = status(state);
    assert_eq!(s["pending"], true, "{s}");
    assert_eq!(
        s["progress"]["state"], "waiting for the guest to start",
        "{s}"
    );
    assert!(!own.exists(), "the disk exists before any copy");

    ignite(state, &["vm", "start", "inst"]);
    wait_status(state, "the copy to start", 60, |s| {
        s["progress"]["state"] == "copying" && s["progress"]["copied"].as_u64() > Some(0)
    });

    // The server killed mid-copy: --resume starts another, which takes the job over.
    let pid = status(state)["server_pid"].as_u64().unwrap();
    run(Command::new("kill").args(["-9", &pid.to_string()]));
    wait_status(state, "the killed server to be seen gone", 30, |s| {
        s["server_pid"].is_null()
    });
    let before = copied(state);
    let text = ignite(state, &["recovery", "instant", "inst"]);
    assert!(text.contains("--resume"), "{text}");
    ignite(state, &["recovery", "instant", "inst", "--resume"]);
    wait_status(state, "the resumed server to report progress", 60, |s| {
        s["server_pid"].as_u64().is_some_and(|p| p != pid)
            && s["progress"]["copied"].as_u64() > Some(before)
    });
    let taken_over = std::fs::read_to_string(state.join("guests/inst/instant.log")).unwrap();
    assert!(
        !own.exists(),
        "copy done too early to test an interruption: {taken_over}"
    );

    // QEMU killed mid-copy: the guest's disk is still its overlay; the copy restarts.
    ignite(state, &["vm", "stop", "--force", "inst"]);
    wait_status(state, "the server to wait for the guest again", 30, |s| {
        s["progress"]["state"] == "waiting for the guest to start"
    });
    assert!(!own.exists() && state.join("guests/inst/disk0.img.instant.qcow2").exists());

    // No server: the guest does not start, and says which socket it lacks.
    let pid = status(state)["server_pid"].as_u64().unwrap();
    run(Command::new("kill").args([&pid.to_string()]));
    wait_status(state, "the stopped server to be seen gone", 30, |s| {
        s["server_pid"].is_null()
    });
    let refused = Command::new(ignite_bin())
        .args(["vm", "start", "inst"])
        .env("IGNITE_STATE_DIR", state)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains("its server does not run")
            && said.contains("ignite recovery instant inst --resume"),
        "{said}"
    );
    // `vm show` says so too.
    let shown = ignite(state, &["vm", "show", "inst"]);
    assert!(
        shown.contains("instant:") && shown.contains("--resume"),
        "{shown}"
    );

    ignite(
        state,
        &["recovery", "instant", "inst", "--resume", "--rate", "0"],
    );
    ignite(state, &["vm", "start", "inst"]);
    wait_status(state, "the copy to finish", 120, |s| {
        s["pending"] == false && s["server_pid"].is_null()
    });
    let show: serde_json::Value =
        serde_json::from_str(&ignite(state, &["vm", "show", "inst", "--json"])).unwrap();
    assert_eq!(
        show["state"], "running",
        "the guest runs on through the switch: {show}"
    );
    let left: Vec<String> = std::fs::read_dir(state.join("guests/inst"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("qcow2") || n.contains("partial") || n.contains("nbd"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let full = state.join("full.img");
    ignite(
        state,
        &["recovery", "restore", "src", "--to", full.to_str().unwrap()],
    );
    run(Command::new("cmp").arg(&own).arg(&full));
    // Sparse as a restore is: the holes were not written.
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&own).unwrap()) * 512;
    assert!(used < 64 << 20, "{used} bytes allocated for 48 MiB of data");

    // Started again, it is a plain guest: its raw image, no second monitor, no server.
    ignite(state, &["vm", "stop", "--force", "inst"]);
    ignite(state, &["vm", "start", "inst"]);
    assert!(!state.join("guests/inst/instant-qmp.sock").exists());
    ignite(state, &["vm", "stop", "--force", "inst"]);
    run(Command::new("cmp").arg(&own).arg(&full));
}
