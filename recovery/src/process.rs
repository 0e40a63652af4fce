//! Running the helper programs every machine-side step needs (losetup, ip, mkfs, ...).

use anyhow::{bail, Context, Result};

/// Runs `cmd` and returns its stdout; on a non-zero exit, an error carrying its stderr.
pub fn output(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
