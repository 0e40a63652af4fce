//! Running programs of the installed system inside it (chroot), with this machine's /proc,
//! /sys and /dev bound in: hooks, ssh-keygen, useradd, grub-install.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};

use super::mount::Target;
use crate::log::Log;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `cmd` (a program of the installed system) chrooted into the target.
pub fn run(target: &mut Target, cmd: &mut Command, log: &mut Log) -> Result<String> {
    // A C string made before the fork: the child may not allocate.
    let root = std::ffi::CString::new(target.root().as_os_str().as_encoded_bytes())?;
    cmd.env("PATH", PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive");
    // SAFETY: chroot and chdir are async-signal-safe; `root` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::chroot(root.as_c_str())?;
            rustix::process::chdir(c"/")?;
            Ok(())
        });
    }
    let binds = target.bind_system()?;
    let out = log.run(cmd);
    target.unbind(binds)?;
    out
}

/// The `Hook` step: a shell command in the installed system; a failure names the hook.
pub fn hook(target: &mut Target, index: usize, command: &str, log: &mut Log) -> Result<()> {
    run(target, Command::new("/bin/sh").args(["-c", command]), log)
        .with_context(|| format!("hook {index} (`{command}`) failed"))?;
    Ok(())
}
