//! Shared removable media through the real binary (issue 14): the media library, a guest's
//! CD-ROM changed while it runs on the bundled monitor (the guest program `atapi` waits,
//! polling GET EVENT STATUS NOTIFICATION as Linux's sr does, for the host to eject its ISO and
//! insert another), and a tape's single owner with `--take`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ignite_e2e::{ignite_bin, wait_for, GuestGuard};

fn ignite(state: &Path, args: &[&str]) -> Output {
    Command::new(ignite_bin())
        .args(args)
        .env("IGNITE_STATE_DIR", state)
        .output()
        .expect("run ignite")
}

fn ok(state: &Path, args: &[&str]) -> String {
    let o = ignite(state, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "ignite {args:?} failed:\n{out}{err}");
    out.into_owned()
}

fn fails(state: &Path, args: &[&str], needle: &str) {
    let o = ignite(state, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "ignite {args:?}: {err}");
    assert!(
        err.contains(needle),
        "ignite {args:?}: error lacks {needle:?}: {err}"
    );
}

/// A CD image of `blocks` blocks, every byte `seed`.
fn iso(dir: &Path, name: &str, blocks: usize, seed: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![seed; blocks * 2048]).unwrap();
    p
}

fn console_log(state: &Path, name: &str) -> String {
    std::fs::read_to_string(state.join("guests").join(name).join("console.log")).unwrap_or_default()
}

fn wait_console(state: &Path, name: &str, needle: &str) {
    wait_for(
        &format!("{needle:?} on {name}'s console"),
        Duration::from_secs(60),
        || console_log(state, name).contains(needle),
    );
}

fn drives(state: &Path, guest: &str) -> Value {
    serde_json::from_str(&ok(state, &["vm", "media", "drives", guest, "--json"])).unwrap()
}

#[test]
fn library_ownership_and_a_cd_changed_while_the_guest_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let a = iso(tmp.path(), "first.iso", 40, 1);
    let b = iso(tmp.path(), "second.iso", 77, 2);
    ok(s, &["media", "add", a.to_str().unwrap()]);
    ok(s, &["media", "add", b.to_str().unwrap(), "--name", "two"]);
    let tape = tmp.path().join("nightly.tap");
    ok(s, &["media", "add", tape.to_str().unwrap()]);
    assert!(tape.exists(), "a new tape file is created blank");
    fails(
        s,
        &["media", "add", a.to_str().unwrap(), "--name", "again"],
        "already in the library as first",
    );

    // Tapes: one holder at a time; --take moves the tape; removal waits for the eject.
    for g in ["t1", "t2"] {
        ok(
            s,
            &[
                "vm",
                "create",
                g,
                "--mem",
                "64M",
                "--boot",
                "net",
                "--net",
                "bridge=br-none",
                "--engine",
                "bundled",
                "--tape",
                "--cdrom",
            ],
        );
    }
    ok(s, &["vm", "media", "insert", "t1", "nightly"]);
    fails(
        s,
        &["vm", "media", "insert", "t2", "nightly"],
        "tape nightly is in guest t1's drive st0",
    );
    let out = ok(s, &["vm", "media", "insert", "t2", "nightly", "--take"]);
    assert!(out.contains("taken from guest t1's drive st0"), "{out}");
    // Drives: the CD-ROM first, then the tape.
    assert_eq!(drives(s, "t1")[1]["drive"], "st0");
    assert_eq!(drives(s, "t1")[1]["medium"], Value::Null);
    assert_eq!(drives(s, "t2")[1]["medium"], "nightly");
    fails(s, &["media", "remove", "nightly"], "guest t2's drive st0");
    fails(
        s,
        &["vm", "media", "insert", "t2", "two", "--drive", "st0"],
        "cannot take this medium",
    );
    fails(
        s,
        &[
            "vm",
            "create",
            "t3",
            "--mem",
            "64M",
            "--boot",
            "net",
            "--net",
            "bridge=br-none",
            "--tape",
            "nightly",
        ],
        "tape nightly is in guest t2's drive st0",
    );
    ok(s, &["vm", "media", "eject", "t2"]);
    ok(s, &["media", "remove", "nightly"]);
    let list: Value = serde_json::from_str(&ok(s, &["media", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    if !ignite_e2e::require_all(&[("/dev/kvm (read-write)", ignite_e2e::have_kvm())]) {
        return;
    }
    let prog = tmp.path().join("atapi.elf");
    std::fs::write(&prog, ignite_vmm::guest::program("atapi").unwrap()).unwrap();
    let boot = format!("kernel={},cmdline=unit=0 swap=1", prog.display());
    ok(
        s,
        &[
            "vm",
            "create",
            "cd1",
            "--mem",
            "64M",
            "--boot",
            &boot,
            "--engine",
            "bundled",
            "--disk-bus",
            "vio",
            "--cdrom",
            "first",
        ],
    );
    // An ISO is shared: the same one in two guests' drives at once.
    ok(s, &["vm", "media", "insert", "t1", "first"]);
    let _guard = GuestGuard::new(s, "cd1");
    ok(s, &["vm", "start", "cd1"]);
    wait_console(s, "cd1", "swap: eject now");
    let out = ok(s, &["vm", "media", "eject", "cd1"]);
    assert!(
        out.contains("first ejected from guest cd1's drive cd0 (the guest sees it go)"),
        "{out}"
    );
    wait_console(s, "cd1", "swap: insert now");
    let out = ok(s, &["vm", "media", "insert", "cd1", "two"]);
    assert!(
        out.contains("running: the guest sees the medium change"),
        "{out}"
    );
    wait_console(s, "cd1", "PASS");
    let log = console_log(s, "cd1");
    // The second image: 77 blocks, its first block all 2s.
    let h = ignite_vmm::guest::fnv1a(ignite_vmm::guest::FNV1A_START, &[2; 2048]);
    let want = format!("swap: 77 blocks, first block fnv1a {h:08x}");
    assert!(log.contains(&want), "want {want:?}:\n{log}");
    assert_eq!(
        drives(s, "cd1")[0]["medium"],
        "two",
        "the library follows the change"
    );
}

#[test]
fn qemu_engine_cdrom_changes_through_qmp_and_refuses_tapes() {
    if !ignite_e2e::require_tools(&["qemu-system-x86_64"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let a = iso(tmp.path(), "a.iso", 16, 1);
    let b = iso(tmp.path(), "b.iso", 32, 2);
    ok(s, &["media", "add", a.to_str().unwrap()]);
    ok(s, &["media", "add", b.to_str().unwrap()]);
    // An empty disk: SeaBIOS finds nothing to boot and waits, with QEMU (and QMP) running.
    for bus in ["vio", "avio"] {
        let name = format!("q{bus}");
        ok(
            s,
            &[
                "vm",
                "create",
                &name,
                "--mem",
                "64M",
                "--disk",
                "1M",
                "--disk-bus",
                bus,
                "--engine",
                "qemu",
                "--cdrom",
                "a",
            ],
        );
        let _guard = GuestGuard::new(s, &name);
        ok(s, &["vm", "start", &name]);
        let out = ok(s, &["vm", "media", "insert", &name, "b"]);
        assert!(
            out.contains("running: the guest sees the medium change"),
            "{out}"
        );
        let out = ok(s, &["vm", "media", "eject", &name]);
        assert!(out.contains("b ejected"), "{out}");
        ok(s, &["vm", "media", "insert", &name, "a"]);
        assert_eq!(drives(s, &name)[0]["medium"], "a");
        ok(s, &["vm", "stop", &name, "--force"]);
    }
    ok(
        s,
        &[
            "vm", "create", "qtape", "--mem", "64M", "--disk", "1M", "--engine", "qemu", "--tape",
        ],
    );
    fails(
        s,
        &["vm", "start", "qtape"],
        "QEMU has no virtual tape device",
    );
}

/// The tape backup, on the bundled monitor with guest programs: guest `a` writes
/// records and filemarks on its tape and keeps it; guest `b` waits with an empty drive;
/// `vm media insert b nightly --take` takes the tape from the running `a` (whose program sees
/// it go) and puts it into the running `b`, which reads back what `a` wrote.
#[test]
fn a_tape_moves_between_running_guests_with_take() {
    if !ignite_e2e::require_all(&[("/dev/kvm (read-write)", ignite_e2e::have_kvm())]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = &tmp.path().join("state");
    let cd = iso(tmp.path(), "cd.iso", 64, 3);
    ok(s, &["media", "add", cd.to_str().unwrap()]);
    let tape = tmp.path().join("nightly.tap");
    ok(s, &["media", "add", tape.to_str().unwrap()]);
    let prog = tmp.path().join("vscsi.elf");
    std::fs::write(&prog, ignite_vmm::guest::program("vscsi").unwrap()).unwrap();
    for (g, mode, medium) in [("a", "hold", "nightly"), ("b", "read", "")] {
        let boot = format!("kernel={},cmdline=luns=2 tape={mode}", prog.display());
        let tape_arg = format!("--tape={medium}");
        let mut args = vec![
            "vm", "create", g, "--mem", "128M", "--boot", &boot, "--engine", "bundled",
        ];
        args.extend(["--disk-bus", "avio", "--cdrom", "cd"]);
        if medium.is_empty() {
            args.push("--tape");
        } else {
            args.push(&tape_arg);
        }
        ok(s, &args);
    }
    let (_ga, _gb) = (GuestGuard::new(s, "a"), GuestGuard::new(s, "b"));
    ok(s, &["vm", "start", "a"]);
    wait_console(s, "a", "vscsi: holding the tape");
    ok(s, &["vm", "start", "b"]);
    wait_console(s, "b", "vscsi: waiting for a tape");
    fails(
        s,
        &["vm", "media", "insert", "b", "nightly"],
        "tape nightly is in guest a's drive st0",
    );
    let out = ok(s, &["vm", "media", "insert", "b", "nightly", "--take"]);
    assert!(
        out.contains("taken from guest a's drive st0 (ejected while it runs)"),
        "{out}"
    );
    wait_console(s, "a", "vscsi: the tape was taken");
    wait_console(s, "b", "vscsi: read the tape back");
    wait_console(s, "b", "PASS");
    assert!(
        !console_log(s, "b").contains("FAIL"),
        "{}",
        console_log(s, "b")
    );
    assert_eq!(drives(s, "b")[1]["medium"], "nightly");
    assert_eq!(drives(s, "a")[1]["medium"], Value::Null);
}
