//! Host-side captures of guests (`ignite recovery capture NAME`), both engines, with their
//! disks being written while they are captured:
//! - bundled monitor, guest test programs: a stopped guest's capture reads only what the
//!   monitor's change log says was written since the last one, and reads in full (saying why)
//!   when the log cannot be trusted; a running guest's capture holds its writes for one
//!   consistent point while it keeps writing, and reports the pause;
//! - QEMU (software emulation), Debian's kernel with the agent initramfs and a shell loop
//!   writing the disk: the capture reads a point-in-time view over NBD (copy-before-write),
//!   in full after QEMU started, then only the regions its dirty bitmap marks.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ignite_e2e::*;
use serde_json::Value;

fn guest_program(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.elf"));
    std::fs::write(&p, ignite_vmm::guest::program(name).expect("guest program")).unwrap();
    p
}

fn ig(state: &Path, args: &[&str]) -> String {
    run(Command::new(ignite_bin())
        .args(args)
        .env("IGNITE_STATE_DIR", state))
}

fn capture(state: &Path, name: &str) -> (String, Value) {
    let out = ig(state, &["recovery", "capture", name]);
    let list: Value =
        serde_json::from_str(&ig(state, &["recovery", "list", name, "--json"])).unwrap();
    let last = list.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "ok", "{out}\n{last}");
    (out, last)
}

fn wait_stopped(state: &Path, name: &str) {
    wait_until(
        &format!("guest {name} to stop"),
        Duration::from_secs(120),
        || {
            let v: Value =
                serde_json::from_str(&ig(state, &["vm", "show", name, "--json"])).unwrap();
            v["state"] == "stopped"
        },
        || {
            std::fs::read_to_string(state.join(format!("guests/{name}/console.log")))
                .unwrap_or_default()
        },
    );
}

/// The disk as captured, exported from the store.
fn exported(state: &Path, spec: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("export.img");
    let _ = std::fs::remove_file(&out);
    ig(
        state,
        &[
            "archive",
            "--store",
            state.join("store").to_str().unwrap(),
            "export",
            spec,
            "--image",
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(&out).unwrap()
}

#[test]
fn a_stopped_guest_capture_reads_only_what_the_monitor_wrote() {
    if !require_all(&[("/dev/kvm (read-write)", have_kvm())]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let prog = guest_program(tmp.path(), "dirty");
    // Sector 2048 (1 MiB) and sector 100000 (~49 MiB): two 64 KiB blocks.
    let boot = format!("kernel={},cmdline=writes=2048+8,100000+16", prog.display());
    ig(
        s,
        &[
            "vm", "create", "g1", "--mem", "64M", "--disk", "64M", "--boot", &boot, "--engine",
            "bundled",
        ],
    );
    let image = s.join("guests/g1/disk0.img");
    // Data the first capture must hold: 8 MiB of a pattern.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(&pattern(8 << 20, 7), 4 << 20)
        .unwrap();

    let (out, first) = capture(s, "g1");
    assert!(out.contains("read in full"), "first capture: {out}");
    assert_eq!(first["read_bytes"], 8 << 20, "holes are not read: {first}");
    assert_eq!(
        exported(s, "g1:disk0", tmp.path()),
        std::fs::read(&image).unwrap()
    );

    // The guest writes its two ranges and powers off; the next capture reads those blocks.
    ig(s, &["vm", "start", "g1"]);
    let _running = GuestGuard::new(s, "g1");
    wait_stopped(s, "g1");
    // check_net_recovery: what the next capture will read, without capturing.
    let pending: Value =
        serde_json::from_str(&ig(s, &["recovery", "check", "g1", "--json"])).unwrap();
    assert_eq!(pending[0]["bytes"], 2 * 65536, "{pending}");
    assert!(pending[0]["base"].is_string(), "{pending}");
    let (out, second) = capture(s, "g1");
    let d: Value = serde_json::from_str(&ig(s, &["recovery", "diff", "g1", "--json"])).unwrap();
    assert_eq!(d["regions"][0]["changed_bytes"], 2 * 65536, "{d}");
    assert!(!out.contains("read in full"), "second capture: {out}");
    assert_eq!(second["read_bytes"], 2 * 65536, "{second}");
    assert_eq!(
        exported(s, "g1:disk0", tmp.path()),
        std::fs::read(&image).unwrap()
    );

    // Written behind the change log's back: the capture cannot trust it and says so.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(b"written outside", 30 << 20)
        .unwrap();
    let (out, third) = capture(s, "g1");
    assert!(out.contains("modified outside"), "third capture: {out}");
    assert!(third["read_bytes"].as_u64().unwrap() > 8 << 20, "{third}");
    assert_eq!(
        exported(s, "g1:disk0", tmp.path()),
        std::fs::read(&image).unwrap()
    );

    // The record names the disk's snapshot and the capture's figures.
    let rec: Value = serde_json::from_str(&ig(s, &["recovery", "show", "g1", "--json"])).unwrap();
    assert_eq!(rec["kind"], "block");
    assert_eq!(rec["source"]["type"], "guest");
    assert_eq!(rec["source"]["definition"]["name"], "g1");
    assert_eq!(rec["disks"][0]["layout"]["size"], 64 << 20);
    let list: Value = serde_json::from_str(&ig(s, &["recovery", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);

    // The store is replaced (the old one lost): the change log's base is gone, and the next
    // capture reads the disk in full instead of failing.
    std::fs::remove_dir_all(s.join("store")).unwrap();
    let (out, fourth) = capture(s, "g1");
    assert!(out.contains("is not in the store"), "fourth capture: {out}");
    assert!(fourth["read_bytes"].as_u64().unwrap() > 8 << 20, "{fourth}");
    assert_eq!(
        exported(s, "g1:disk0", tmp.path()),
        std::fs::read(&image).unwrap()
    );
}

/// The step in sector `i` of `disk` (see the `scribble` guest program).
fn step_at(disk: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(disk[i * 512..i * 512 + 8].try_into().unwrap())
}

/// A consistent point: sector 0 holds the last sector's step or one more, and no middle
/// sector is ahead of sector 0. Returns sector 0's step.
fn scribble_step(disk: &[u8], sectors: usize) -> Result<u64, String> {
    let (first, last) = (step_at(disk, 0), step_at(disk, sectors - 1));
    let ahead = (1..sectors - 1).find(|&i| step_at(disk, i) > first);
    if (first == last || first == last + 1) && ahead.is_none() {
        Ok(first)
    } else {
        Err(format!(
            "not one point in time: sector 0 has step {first}, sector {} has {last}, a middle sector ahead: {ahead:?}",
            sectors - 1
        ))
    }
}

#[test]
fn a_running_guest_is_captured_at_one_consistent_point() {
    if !require_all(&[("/dev/kvm (read-write)", have_kvm())]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let prog = guest_program(tmp.path(), "scribble");
    let sectors = 4096;
    let boot = format!("kernel={},cmdline=sectors={sectors}", prog.display());
    ig(
        s,
        &[
            "vm", "create", "w1", "--mem", "64M", "--disk", "32M", "--boot", &boot, "--engine",
            "bundled",
        ],
    );
    ig(s, &["vm", "start", "w1"]);
    let _running = GuestGuard::new(s, "w1");
    let console = || std::fs::read_to_string(s.join("guests/w1/console.log")).unwrap_or_default();
    wait_until(
        "the guest to write 20000 steps",
        Duration::from_secs(120),
        || console().contains("scribble step 20000"),
        console,
    );
    let mut last_step = 0;
    for round in 0..6 {
        let (out, row) = capture(s, "w1");
        assert_eq!(
            out.contains("read in full"),
            round == 0,
            "round {round}: {out}"
        );
        let disk = exported(s, "w1:disk0", tmp.path());
        let step =
            scribble_step(&disk, sectors).unwrap_or_else(|e| panic!("round {round}: {e}\n{out}"));
        assert!(
            step > last_step,
            "round {round}: step {step} after {last_step}"
        );
        last_step = step;
        eprintln!(
            "round {round}: step {step}, read {}, writes held {} ms",
            row["read_bytes"], row["pause_ms"]
        );
        // The next capture must see later writes: wait until the guest has written on (a
        // starved vCPU may not have, on a loaded host).
        let next = (step / 10000 + 1) * 10000;
        wait_until(
            &format!("the guest to write step {next}"),
            Duration::from_secs(120),
            || console().contains(&format!("scribble step {next}")),
            console,
        );
        if round > 0 {
            // Only the blocks the guest wrote since: at most the scribbled 2 MiB.
            assert!(
                row["read_bytes"].as_u64().unwrap() <= (sectors as u64) * 512,
                "round {round}: {row}"
            );
        }
    }
    assert!(
        console().contains("scribble step"),
        "the guest kept running"
    );
    ig(s, &["vm", "stop", "w1", "--force"]);
}

/// A shell loop for the QEMU guest: the `scribble` pattern (see the guest program), one dd
/// per sector write, O_DIRECT so every step reaches the disk in order.
fn scribble_script(sectors: usize) -> String {
    format!(
        "i=1; (while [ ! -e /tmp/stop ]; do for s in 0 $((1 + i % {m})) {last}; do \
         printf '%08x' $i | busybox dd of=/dev/vda bs=512 seek=$s conv=sync,notrunc oflag=direct 2>/dev/null; \
         done; i=$((i+1)); done; sync; echo LOOP-STOPPED) &\n",
        m = sectors - 2,
        last = sectors - 1
    )
}

/// Sector `i`'s step as the shell loop writes it (8 hex digits).
fn hex_step_at(disk: &[u8], i: usize) -> u64 {
    let s = String::from_utf8_lossy(&disk[i * 512..i * 512 + 8]).into_owned();
    u64::from_str_radix(s.trim_matches(char::from(0)), 16).unwrap_or(0)
}

#[test]
fn a_running_qemu_guest_is_captured_from_a_point_in_time_view() {
    if !require_all(&[
        ("qemu-system-x86_64", have("qemu-system-x86_64")),
        ("qemu-img (qemu-utils)", have("qemu-img")),
        ("apt-get (fetch-boot-files)", have("apt-get")),
        ("root", is_root()),
    ]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let boot = fetch_boot_files(tmp.path(), "IGNITE-CAPTURE-MARKER");
    let initrd = tmp.path().join("agent.img");
    run(Command::new(ignite_bin())
        .args(["netboot", "build-initramfs", "--output"])
        .arg(&initrd));
    let spec = format!(
        "kernel={},initrd={},cmdline=console=ttyS0 ignite.selfcheck=1 ignite.after=shell",
        boot.join("debian/vmlinuz").display(),
        initrd.display()
    );
    ig(
        s,
        &[
            "vm", "create", "q1", "--mem", "512M", "--disk", "16M", "--boot", &spec, "--engine",
            "qemu",
        ],
    );
    ig(s, &["vm", "start", "q1"]);
    let _running = GuestGuard::new(s, "q1");
    let log = || {
        strip_ansi(&std::fs::read_to_string(s.join("guests/q1/console.log")).unwrap_or_default())
    };
    let stop = || {
        let _ = Command::new(ignite_bin())
            .args(["vm", "stop", "q1", "--force"])
            .env("IGNITE_STATE_DIR", s)
            .output();
    };
    wait_until(
        "the agent's self-check and its shell's prompt",
        Duration::from_secs(300),
        || {
            let l = log();
            l.find("IGNITE-AGENT-SELFCHECK-OK")
                .is_some_and(|i| l[i..].contains("/ # "))
        },
        || tail(&log(), 40),
    );
    let sectors = 2048;
    let mut console =
        std::os::unix::net::UnixStream::connect(s.join("guests/q1/console.sock")).unwrap();
    std::io::Write::write_all(&mut console, scribble_script(sectors).as_bytes()).unwrap();
    let image = s.join("guests/q1/disk0.img");
    wait_until(
        "the shell loop to write",
        Duration::from_secs(120),
        || hex_step_at(&std::fs::read(&image).unwrap(), sectors - 1) >= 3,
        || tail(&log(), 40),
    );
    let mut last = 0;
    for round in 0..3 {
        let (out, row) = capture(s, "q1");
        assert_eq!(
            out.contains("read in full"),
            round == 0,
            "round {round}: {out}"
        );
        let disk = exported(s, "q1:disk0", tmp.path());
        let (first, end) = (hex_step_at(&disk, 0), hex_step_at(&disk, sectors - 1));
        let ahead = (1..sectors - 1).find(|&i| hex_step_at(&disk, i) > first);
        if !(first == end || first == end + 1) || ahead.is_some() {
            stop();
            panic!("round {round}: not one point in time: sector 0 step {first}, last {end}, middle ahead at {ahead:?}\n{out}");
        }
        assert!(first > last, "round {round}: step {first} after {last}");
        last = first;
        eprintln!(
            "round {round}: step {first}, read {}, paused {} ms",
            row["read_bytes"], row["pause_ms"]
        );
        if round > 0 {
            // Only what the bitmap marked: the loop's few sectors (64 KiB granularity).
            assert!(
                row["read_bytes"].as_u64().unwrap() <= 1 << 20,
                "round {round}: {row}"
            );
        }
    }
    // Quiet now: the capture equals the disk byte for byte.
    std::io::Write::write_all(&mut console, b"touch /tmp/stop\n").unwrap();
    wait_until(
        "the loop to stop",
        Duration::from_secs(60),
        || log().contains("LOOP-STOPPED"),
        || tail(&log(), 60),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (out, _) = capture(s, "q1");
    assert!(!out.contains("read in full"), "{out}");
    let disk = exported(s, "q1:disk0", tmp.path());
    stop();
    assert_eq!(
        disk,
        std::fs::read(&image).unwrap(),
        "the last capture differs from the disk"
    );
}
