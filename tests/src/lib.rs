//! Support code for the workspace-level end-to-end tests: finding the `ignite` binary,
//! prerequisites that skip locally and fail under CI, and the cached real-data fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// True under `.ci/run`, where every prerequisite is installed and a missing one is a failure.
pub fn in_ci() -> bool {
    std::env::var("IGNITE_CI").is_ok_and(|v| v == "1")
}

/// Returns false (after saying why) when a prerequisite is missing locally; panics in CI.
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        if in_ci() {
            panic!("prerequisite missing under IGNITE_CI=1: {what}");
        }
        eprintln!("skipped: {what}");
    }
    ok
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `ignite` binary of this build (`cargo test --workspace` builds it beside the tests).
pub fn ignite_bin() -> PathBuf {
    if let Ok(p) = std::env::var("IGNITE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/..
    let bin = dir.join("ignite");
    assert!(
        bin.exists(),
        "{} not built; run `cargo test --workspace` or set IGNITE_BIN",
        bin.display()
    );
    bin
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn sh(script: &str) -> String {
    String::from_utf8_lossy(&run(Command::new("bash").arg("-c").arg(script)).stdout).into_owned()
}

/// Runs `scripts/fixtures/NAME` (cached) and returns the paths it prints.
pub fn fixture(name: &str) -> Vec<PathBuf> {
    let script = repo_root().join("scripts/fixtures").join(name);
    let out = run(&mut Command::new(&script));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

pub fn ignite(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(Command::new(ignite_bin()).args(args)).stdout).into_owned()
}

pub fn ignite_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ignite(args)).unwrap()
}
