//! A throwaway Debian system booted with its own systemd: an overlay over a root tree (the
//! golden fixture, which stays untouched), `chroot` into it before boot, then
//! `systemd-nspawn -b` with a private network. Commands run inside through `nsenter` into the
//! container's init, which needs no systemd-machined on the host (a host without systemd
//! has none: there nspawn runs with `--register=no --keep-unit`). Dropping it powers the container off and removes the overlay; a panicking
//! test gets the container's journal printed first.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{run, run_output, wait_until};

/// A writable copy-on-write view of `lower` (mounted at `merged`), removed when dropped.
pub struct Overlay {
    pub merged: PathBuf,
    dir: PathBuf,
}

impl Overlay {
    /// Mounts the view in `dir` (which must be empty or missing).
    pub fn new(lower: &Path, dir: &Path) -> Overlay {
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged));
        Overlay {
            merged,
            dir: dir.to_path_buf(),
        }
    }

    /// `args` run in the tree with `chroot`, as a package's install step would.
    pub fn chroot(&self, args: &[&str]) -> String {
        run(Command::new("chroot")
            .arg(&self.merged)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A container booted from a tree with `systemd-nspawn -b` (see the module doc).
pub struct Container {
    nspawn: Child,
    /// Our pid of the container's init.
    leader: u32,
    console: PathBuf,
}

impl Container {
    /// Boots `root`; returns once its init runs and answers `systemctl`. Its console goes
    /// to `console`.
    pub fn boot(root: &Path, name: &str, console: &Path) -> Container {
        let out = File::create(console).unwrap();
        let mut nspawn = Command::new("systemd-nspawn");
        // On a host run by systemd, nspawn asks it for a scope of its own (and registers
        // the machine); without one there is no bus to ask, and it stays in our cgroup.
        if !Path::new("/run/systemd/system").is_dir() {
            nspawn.args(["--register=no", "--keep-unit"]);
        }
        let nspawn = nspawn
            .args(["--quiet", "--boot", "--private-network", "--machine", name])
            .arg("--directory")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot run systemd-nspawn");
        let mut c = Container {
            leader: 0,
            nspawn,
            console: console.to_path_buf(),
        };
        let pid = c.nspawn.id();
        let mut leader = None;
        wait_until(
            "the container's init",
            Duration::from_secs(60),
            || {
                leader = init_below(pid);
                leader.is_some()
            },
            || c.console_text(),
        );
        c.leader = leader.unwrap();
        wait_until(
            "systemd in the container to answer",
            Duration::from_secs(60),
            || {
                c.try_exec(&["systemctl", "--no-pager", "show", "-p", "Version"])
                    .is_ok()
            },
            || c.console_text(),
        );
        c
    }

    pub fn console_text(&self) -> String {
        crate::strip_ansi(&std::fs::read_to_string(&self.console).unwrap_or_default())
    }

    /// `nsenter` into every namespace of the container's init.
    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.leader.to_string(), "-a"]);
        c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }

    /// `args` run inside; stdout, or stdout+stderr as the error when it fails.
    pub fn try_exec(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .enter()
            .args(args)
            .output()
            .map_err(|e| format!("cannot run nsenter: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{args:?}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `args` run inside; panics (with the output) unless they succeed.
    pub fn exec(&self, args: &[&str]) -> String {
        self.try_exec(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `args` run on the host's programs inside the container's network namespace only
    /// (e.g. the host's `curl` against a service in the container).
    pub fn in_netns(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(
            &run_output(
                Command::new("nsenter")
                    .args(["-t", &self.leader.to_string(), "-n"])
                    .args(args),
            )
            .stdout,
        )
        .into_owned()
    }

    /// `args` run inside the mount namespace of process `pid` of the container (e.g. a
    /// sandboxed service's view of the file system), as root with every capability.
    pub fn in_mounts_of(&self, pid: u32, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.host_pid(pid).to_string(), "-m"])
            .args(args)
            .output()
            .expect("cannot run nsenter")
    }

    /// The host's pid of the container's process `pid`.
    pub fn host_pid(&self, pid: u32) -> u32 {
        descendants(self.leader)
            .into_iter()
            .find(|p| ns_pids(*p).last() == Some(&pid))
            .unwrap_or_else(|| panic!("no process {pid} in the container"))
    }

    /// The journal of `unit` (all of it, with priorities as `journalctl -o short` shows).
    pub fn journal(&self, unit: &str) -> String {
        self.try_exec(&["journalctl", "--no-pager", "-u", unit])
            .unwrap_or_else(|e| e)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- container journal ---\n{}",
                self.try_exec(&["journalctl", "--no-pager", "-b", "-n", "300"])
                    .unwrap_or_else(|e| e)
            );
        }
        let _ = self.try_exec(&["systemctl", "--no-block", "poweroff"]);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("the container did not power off within 60 s; killing systemd-nspawn");
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The pids (in each pid namespace, outermost first) of process `pid`.
fn ns_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every descendant of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                all.push(c);
                todo.push(c);
            }
        }
    }
    all
}

/// The container's init below `pid`: the descendant that is pid 1 of its own namespace.
fn init_below(pid: u32) -> Option<u32> {
    descendants(pid).into_iter().find(|p| {
        let ns = ns_pids(*p);
        ns.len() > 1 && ns.last() == Some(&1)
    })
}
