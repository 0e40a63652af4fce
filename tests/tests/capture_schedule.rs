//! Capture schedules run by `ignite server`, with the server's clock injected
//! (`IGNITE_TEST_CLOCK`): a schedule fires when its time comes, retention prunes only after a
//! successful capture, a run missed while the server was down runs once at start; and a
//! capture killed with SIGKILL mid-read leaves a store that verifies, after which the next
//! capture succeeds.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ignite_e2e::*;
use serde_json::Value;

// 2026-12-07 01:00 UTC.
const T0: i64 = 1_796_605_200;
const DAY: i64 = 86400;

fn ig(state: &Path, clock: &Path, args: &[&str]) -> String {
    run(Command::new(ignite_bin())
        .args(args)
        .env("IGNITE_STATE_DIR", state)
        .env("IGNITE_TEST_CLOCK", clock))
}

fn history(state: &Path, clock: &Path) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&ig(state, clock, &["recovery", "list", "g", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

fn records(state: &Path, clock: &Path) -> usize {
    let v: Value = serde_json::from_str(&ig(
        state,
        clock,
        &[
            "archive",
            "--store",
            state.join("store").to_str().unwrap(),
            "list",
            "--json",
        ],
    ))
    .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "g")
        .count()
}

fn set_clock(clock: &Path, t: i64) {
    std::fs::write(clock, t.to_string()).unwrap();
}

#[test]
fn schedules_fire_on_time_prune_after_success_and_catch_up_at_start() {
    if !require_tools(&["ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let clock = &tmp.path().join("clock");
    let boot = tmp.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    set_clock(clock, T0);
    ig(
        s,
        clock,
        &[
            "vm", "create", "g", "--disk", "16M", "--boot", "disk", "--engine", "bundled",
        ],
    );
    let image = s.join("guests/g/disk0.img");
    let write = |seed: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .write_all_at(&pattern(1 << 20, seed), 0)
            .unwrap()
    };
    write(1);
    let out = ig(
        s,
        clock,
        &[
            "recovery",
            "schedule",
            "g",
            "--at",
            "02:00",
            "--every",
            "1d",
            "--keep-last",
            "2",
        ],
    );
    assert!(out.contains("next run 2026-12-07 02:00"), "{out}");

    let lab = Lab::new("sched");
    let env = [("IGNITE_TEST_CLOCK", clock.to_str().unwrap())];
    let mut server = Server::start_env(&lab, s, &boot, &[], &env);
    let seen = |server: &Server| {
        format!(
            "--- history:\n{:#?}\n--- schedules:\n{}\n--- server log:\n{}",
            history(s, clock),
            ig(s, clock, &["recovery", "schedule", "list"]),
            tail(&server.log_text(), 30)
        )
    };
    // Not yet 02:00: nothing runs.
    std::thread::sleep(Duration::from_secs(3));
    assert!(history(s, clock).is_empty(), "{}", seen(&server));

    // Three nights: a capture each, the third prunes the first.
    for night in 0..3 {
        write(10 + night);
        set_clock(clock, T0 + night as i64 * DAY + 3600 + 30);
        wait_until(
            &format!("night {night}'s capture"),
            Duration::from_secs(60),
            || {
                let h = history(s, clock);
                h.len() == night as usize + 1 && h.last().unwrap()["result"] == "ok"
            },
            || seen(&server),
        );
    }
    // The schedule's result is written once retention and gc are done.
    wait_until(
        "retention after the third capture",
        Duration::from_secs(60),
        || {
            let list = ig(s, clock, &["recovery", "schedule", "list"]);
            records(s, clock) == 2
                && list.contains("ok: g@")
                && list.contains("1 capture(s) pruned")
        },
        || {
            format!(
                "{}\n{}",
                ig(s, clock, &["recovery", "schedule", "list"]),
                seen(&server)
            )
        },
    );

    // A failing night (the disk is gone): no retention runs.
    std::fs::rename(&image, tmp.path().join("away.img")).unwrap();
    set_clock(clock, T0 + 3 * DAY + 3600 + 30);
    wait_until(
        "the failed capture",
        Duration::from_secs(60),
        || history(s, clock).last().unwrap()["result"] == "failed",
        || seen(&server),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(records(s, clock), 2, "retention ran after a failure");
    std::fs::rename(tmp.path().join("away.img"), &image).unwrap();

    // The server is down for three nights; at start the missed run happens once.
    server.stop();
    set_clock(clock, T0 + 7 * DAY + 30);
    let server = Server::start_env(&lab, s, &boot, &[], &env);
    wait_until(
        "the missed run at start",
        Duration::from_secs(60),
        || history(s, clock).len() == 5 && history(s, clock)[4]["result"] == "ok",
        || seen(&server),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        history(s, clock).len(),
        5,
        "missed runs were repeated: {}",
        seen(&server)
    );
    let sch: Value =
        serde_json::from_str(&ig(s, clock, &["recovery", "schedule", "list", "--json"])).unwrap();
    assert_eq!(sch[0]["next_run"], T0 + 7 * DAY + 3600, "{sch}");
}

#[test]
fn a_capture_killed_mid_read_leaves_a_verifiable_store_and_the_next_one_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let clock = &tmp.path().join("clock");
    set_clock(clock, T0);
    ig(
        s,
        clock,
        &[
            "vm", "create", "g", "--disk", "1G", "--boot", "disk", "--engine", "bundled",
        ],
    );
    let image = s.join("guests/g/disk0.img");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    for i in 0..32u64 {
        f.write_all_at(&pattern(8 << 20, 100 + i), i * (8 << 20))
            .unwrap();
    }
    drop(f);
    ig(s, clock, &["recovery", "capture", "g"]);
    // Changed everywhere, so the next capture reads a lot; killed while it does.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    for i in 0..32u64 {
        f.write_all_at(&pattern(8 << 20, 500 + i), i * (8 << 20))
            .unwrap();
    }
    drop(f);
    let mut killed_mid_read = false;
    for attempt in 0..10 {
        let mut child = Command::new(ignite_bin())
            .args(["recovery", "capture", "g"])
            .env("IGNITE_STATE_DIR", s)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the capture to be running, then a little more, then SIGKILL.
        wait_for("the capture to start", Duration::from_secs(30), || {
            history(s, clock)
                .last()
                .is_some_and(|r| r["result"] == "running")
                || child.try_wait().unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid_read = true;
            break;
        }
    }
    assert!(
        killed_mid_read,
        "every capture finished before the kill landed"
    );
    let store = s.join("store");
    let verify = ig(
        s,
        clock,
        &["archive", "--store", store.to_str().unwrap(), "verify"],
    );
    assert!(!verify.contains("problem"), "{verify}");
    let out = ig(s, clock, &["recovery", "capture", "g"]);
    assert!(out.contains("captured g as g@"), "{out}");
    let h = history(s, clock);
    assert_eq!(h.last().unwrap()["result"], "ok");
    assert!(
        h.iter().any(|r| r["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted"))),
        "the killed attempt is in the history as interrupted: {h:#?}"
    );
    ig(
        s,
        clock,
        &["archive", "--store", store.to_str().unwrap(), "verify"],
    );
    // The capture equals the disk.
    let out_img = tmp.path().join("out.img");
    ig(
        s,
        clock,
        &[
            "archive",
            "--store",
            store.to_str().unwrap(),
            "export",
            "g:disk0",
            "--image",
            out_img.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&out_img).unwrap() == std::fs::read(&image).unwrap(),
        "the capture after the kill differs from the disk"
    );
}
