//! What the monitor's integration tests share: prerequisite checks (ignite-e2e's `require`:
//! skip locally with a one-line reason, fail under IGNITE_CI=1) and guest program runs.

#![allow(dead_code)]

use ignite_vmm::guest::{run_program, ProgramResult, ProgramRun};

/// True when the prerequisite holds; otherwise prints why the test is skipped (or panics in
/// CI) through the project's one `require`.
pub fn require(what: &str, ok: Result<(), String>) -> bool {
    match ok {
        Ok(()) => true,
        Err(why) => ignite_e2e::require(false, &format!("{what} ({why})")),
    }
}

pub fn kvm() -> bool {
    require(
        "/dev/kvm",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(|_| ())
            .map_err(|e| e.to_string()),
    )
}

pub fn root() -> bool {
    require(
        "root",
        if unsafe { libc::geteuid() } == 0 {
            Ok(())
        } else {
            Err("not running as root".into())
        },
    )
}

/// Runs a program and asserts it passed, showing its serial output otherwise.
pub fn expect_pass(run: ProgramRun) -> ProgramResult {
    let name = run.name;
    let r = run_program(run).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        r.passed(),
        "{name}: {} after {:?} (fault info {:x?})\n--- serial ---\n{}",
        r.outcome.reason,
        r.outcome.elapsed,
        r.outcome.fault_info,
        r.serial
    );
    r
}

/// A scratch directory removed on drop.
pub fn tempdir() -> vmm_sys_util::tempdir::TempDir {
    vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-vmm-test").expect("temp dir")
}

/// A disk image of `size` bytes filled with `byte`.
pub fn image(dir: &std::path::Path, name: &str, size: usize, byte: u8) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![byte; size]).expect("write image");
    p
}
