//! Guest definitions and their lifecycle (`ignite vm create/start/stop/...`).
//!
//! A definition ([`definition`]) lives in the server state database (`crate::state::guests`); each guest owns the directory
//! `<state>/guests/NAME/` holding the disk images created for it and, while it runs, its
//! supervisor's files: `supervisor.pid`, `control.sock` (JSON lines, `control`),
//! `console.sock` (the serial console, one client at a time) and `console.log` (everything
//! the console printed). A running guest is one detached supervisor process running one
//! engine: the bundled monitor or QEMU (`qemu`). Nothing outside this module knows which.

pub mod capture;
pub mod control;
pub mod definition;
pub mod instant;
pub mod instant_files;
pub mod qemu;
pub mod qemu_capture;
pub mod restore;
pub mod supervisor;
pub mod verify_boot;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Whether an error on a socket means its other end closed it: the supervisor or QEMU on it
/// ended meanwhile (a guest stopping under a status query or a `quit`).
pub fn peer_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

pub use definition::{
    check_name, normalize_mac, Boot, Bus, Definition, Disk, Engine, EngineChoice, Firmware, Nic,
    MAX_VIO_DISKS,
};

/// Removes guest `name` (refused while it runs) and its directory; with `keep_disks`, the
/// disk images it owns stay (returned) and only its runtime files go.
pub fn remove(state_dir: &Path, name: &str, keep_disks: bool) -> Result<Vec<PathBuf>> {
    let state = crate::state::State::open(state_dir)?;
    let rec = state.guest(name)?;
    let paths = Paths::new(state_dir, name);
    if let Some(s) = control::status(&paths.control())? {
        bail!(
            "guest {name} is running (pid {}); stop it first with `ignite vm stop {name}`",
            s.pid
        );
    }
    state.remove_guest(name)?;
    let owned = rec.def.disks.iter().filter(|d| d.owned);
    if keep_disks {
        for p in [paths.console_log(), paths.supervisor_log()] {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(paths.boot_files());
        return Ok(owned.map(|d| d.path.clone()).collect());
    }
    if paths.dir.exists() {
        std::fs::remove_dir_all(&paths.dir).with_context(|| {
            format!("guest directory {}: cannot remove it", paths.dir.display())
        })?;
    }
    Ok(Vec::new())
}

/// `<state>/guests/NAME`.
pub fn guest_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("guests").join(name)
}

/// The files of a guest's directory.
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(state_dir: &Path, name: &str) -> Paths {
        Paths {
            dir: guest_dir(state_dir, name),
        }
    }
    /// The files of the guest directory `dir`.
    pub fn new_at(dir: &Path) -> Paths {
        Paths {
            dir: dir.to_path_buf(),
        }
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("supervisor.pid")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// The UEFI variable store of a `--firmware uefi` guest (a copy of OVMF's template).
    pub fn uefi_vars(&self) -> PathBuf {
        self.dir.join("OVMF_VARS.fd")
    }
    /// Kernel and initramfs read from the guest disk's /boot (bundled engine, --boot disk).
    pub fn boot_files(&self) -> PathBuf {
        self.dir.join("boot")
    }
}

/// Starts `cmd` in a session of its own, so that it outlives the command that started it
/// (a guest's supervisor, an instant restore's server) and no terminal signal reaches it.
pub fn spawn_detached(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; the child only execs afterwards.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// This `ignite` binary, to run again as a guest's supervisor or an instant restore's
/// server. A long-running server whose binary a package upgrade replaced sees its own path
/// as "PATH (deleted)": the binary now at PATH is the one to run.
pub fn ignite_exe() -> std::io::Result<std::path::PathBuf> {
    std::env::current_exe().map(replaced_by)
}

fn replaced_by(exe: std::path::PathBuf) -> std::path::PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) if !exe.exists() => std::path::PathBuf::from(path),
        _ => exe,
    }
}

#[cfg(test)]
mod exe_tests {
    use super::*;

    #[test]
    fn a_replaced_binary_is_run_from_its_path() {
        let p = |s: &str| std::path::PathBuf::from(s);
        assert_eq!(
            replaced_by(p("/usr/bin/ignite (deleted)")),
            p("/usr/bin/ignite")
        );
        let me = std::env::current_exe().unwrap();
        assert_eq!(replaced_by(me.clone()), me);
    }
}
