//! Test support: prerequisites that skip locally and fail under `IGNITE_CI=1`.

use std::process::Command;

pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        if std::env::var("IGNITE_CI").is_ok_and(|v| v == "1") {
            panic!("prerequisite missing under IGNITE_CI=1: {what}");
        }
        eprintln!("skipped: needs {what}");
    }
    ok
}

/// `tool` on PATH (Debian package `package`, listed in scripts/deps).
pub fn require_tool(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    require(found, &format!("`{tool}` (apt package {package})"))
}

/// Runs `cmd`, panics with its output on failure, returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
