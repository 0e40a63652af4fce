//! The agent as the initramfs `/init` (PID 1): mount the kernel file systems, load the
//! modules, wait for a disk and the boot NIC, DHCP, then install (or capture) as the kernel
//! command line says and reboot — or, on failure, report it and leave a shell on the console.
//!
//! Kernel command line: `ignite.server=URL ignite.mac=MAC ignite.token=T`, optionally
//! `ignite.action=capture` (capture the disks as the token says instead of installing) or
//! `ignite.action=recover-media ignite.snapshot=NAME@ID [ignite.yes]` (no network: see
//! [`super::media`]), and
//! `ignite.after=reboot|poweroff|shell` and `ignite.selfcheck=1` (load modules, look for a
//! disk, run each tool, print [`SELFCHECK_OK`], no network, no install).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ignite_profiles::ClientFacts;

use ignite_recovery::steps::mount::mount;
use ignite_recovery::{facts, runner, source, Phase, Source};

use super::{dhcp, modules, netif};

/// Printed on the console when the self-check passes.
pub const SELFCHECK_OK: &str = "IGNITE-AGENT-SELFCHECK-OK";
const DEVICE_WAIT: Duration = Duration::from_secs(20);

/// `ignite.*` options of the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootArgs {
    pub server: Option<String>,
    pub mac: Option<String>,
    pub token: Option<String>,
    /// `install` (the default) or `capture`.
    pub action: Option<String>,
    pub after: After,
    pub selfcheck: bool,
    /// `ignite.baseline-tar=URL`: extract with `curl | tar` instead (the install benchmark).
    pub baseline_tar: Option<String>,
    /// `ignite.snapshot=NAME@ID`: the capture recovery media restore.
    pub snapshot: Option<String>,
    /// `ignite.yes`: restore from recovery media without asking on the console.
    pub yes: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum After {
    #[default]
    Reboot,
    Poweroff,
    Shell,
}

pub fn parse_cmdline(text: &str) -> BootArgs {
    let kv: HashMap<&str, &str> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("ignite."))
        .filter_map(|w| w.split_once('='))
        .collect();
    BootArgs {
        server: kv.get("server").map(|s| s.to_string()),
        mac: kv.get("mac").map(|s| s.to_string()),
        token: kv.get("token").map(|s| s.to_string()),
        action: kv.get("action").map(|s| s.to_string()),
        after: match kv.get("after").copied() {
            Some("poweroff") => After::Poweroff,
            Some("shell") => After::Shell,
            _ => After::Reboot,
        },
        selfcheck: kv.get("selfcheck").is_some_and(|v| *v == "1"),
        baseline_tar: kv.get("baseline-tar").map(|s| s.to_string()),
        snapshot: kv.get("snapshot").map(|s| s.to_string()),
        yes: text.split_whitespace().any(|w| w == "ignite.yes"),
    }
}

fn say(text: &str) {
    eprintln!("ignite-agent: {text}");
}

/// /proc, /sys, /dev (devtmpfs), /dev/pts and /run, as the kernel leaves none of them.
fn mount_kernel_fs() -> Result<()> {
    for (src, dir, ty) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("devpts", "/dev/pts", "devpts"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        std::fs::create_dir_all(dir)?;
        mount(src, Path::new(dir), Some(ty), 0, "")?;
    }
    if Path::new("/sys/firmware/efi/efivars").is_dir() {
        let _ = mount(
            "efivarfs",
            Path::new("/sys/firmware/efi/efivars"),
            Some("efivarfs"),
            0,
            "",
        );
    }
    Ok(())
}

fn kernel_release() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string())
}

fn wait_for_disks() -> Result<Vec<ignite_profiles::DiskFact>> {
    let start = Instant::now();
    loop {
        let disks = facts::disks(Path::new("/sys/block"));
        if !disks.is_empty() {
            return Ok(disks);
        }
        if start.elapsed() > DEVICE_WAIT {
            bail!("no disk appeared within {} s; does the machine have a disk the initramfs has a driver for?", DEVICE_WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_nic(mac: &str) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Some(n) = netif::by_mac(mac) {
            return Ok(n);
        }
        if start.elapsed() > DEVICE_WAIT {
            bail!(
                "no network interface with MAC {mac} appeared within {} s",
                DEVICE_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Modules loaded, disks seen, tools run: proves an initramfs fits its kernel.
fn selfcheck() -> Result<()> {
    let disks = wait_for_disks()?;
    for d in &disks {
        say(&format!(
            "disk {} {} bytes serial {:?}",
            d.path, d.size, d.serial
        ));
    }
    for (tool, arg) in [
        ("mke2fs", "-V"),
        ("mkfs.xfs", "-V"),
        ("mkfs.vfat", "--help"),
        ("mkswap", "--version"),
        ("sh", "-c true"),
    ] {
        let mut cmd = Command::new(tool);
        cmd.args(arg.split(' '));
        let out = cmd.output().with_context(|| format!("cannot run {tool}"))?;
        // mkfs.vfat --help exits 1 after printing its usage; running at all is the check.
        if out.status.code().is_none() {
            bail!("{tool} was killed: {}", out.status);
        }
        say(&format!("tool {tool} runs"));
    }
    let mut nics: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    nics.sort();
    if nics.is_empty() {
        bail!("no network interface: the NIC driver did not load");
    }
    say(&format!("network interfaces: {}", nics.join(" ")));
    Ok(())
}

/// The network install server for these boot arguments.
fn connect(args: &BootArgs) -> Result<Box<dyn Source>> {
    let (Some(server), Some(mac), Some(token)) = (&args.server, &args.mac, &args.token) else {
        bail!("the kernel command line lacks ignite.server=, ignite.mac= or ignite.token=; boot the agent from `ignite server`");
    };
    Ok(Box::new(source::Http::new(server, mac, token)))
}

/// Brings `nic` (and lo) up and configures it by DHCP.
pub fn bring_up(nic: &str, timeout: Duration) -> Result<dhcp::Lease> {
    netif::up("lo")?;
    netif::up(nic)?;
    let lease = dhcp::lease(nic, &netif::mac_of(nic)?, timeout)
        .with_context(|| format!("DHCP on {nic}"))?;
    netif::configure(nic, lease.ip, lease.mask, lease.router)?;
    say(&format!(
        "{nic}: {} netmask {} router {:?}",
        lease.ip, lease.mask, lease.router
    ));
    Ok(lease)
}

/// A recovery (boot action `recover`): disks and NIC, DHCP, then each disk of the capture
/// written back over this machine's disks in order, only the blocks that differ; the server
/// hears every phase, and a failure.
pub fn recover(args: &BootArgs) -> Result<()> {
    use ignite_recovery::recover::recover_disk;
    let (Some(server), Some(mac), Some(token)) = (&args.server, &args.mac, &args.token) else {
        bail!("the kernel command line lacks ignite.server=, ignite.mac= or ignite.token=; boot the agent from `ignite server`");
    };
    let disks = wait_for_disks()?;
    let nic = wait_for_nic(mac)?;
    let lease = bring_up(&nic, Duration::from_secs(60))?;
    let http = source::Http::new(server, mac, token);
    http.report(&Phase::Booted {
        ip: lease.ip.to_string(),
    })?;
    let result = (|| -> Result<u64> {
        let plan = http.recover_plan()?;
        if plan.disks.len() > disks.len() {
            bail!(
                "capture {} has {} disk(s); this machine has {} ({})",
                plan.capture,
                plan.disks.len(),
                disks.len(),
                disks
                    .iter()
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        // Every disk is checked for size before the first is written.
        for (d, disk) in plan.disks.iter().zip(&disks) {
            if disk.size < d.size {
                bail!(
                    "{} holds {} bytes; disk {} of capture {} needs {} ({} bytes or more works); nothing was written",
                    disk.path, disk.size, d.index, plan.capture, d.size, d.size
                );
            }
        }
        let total: u64 = plan.disks.iter().map(|d| d.size).sum();
        let mut before = 0;
        let mut written = 0;
        for (d, disk) in plan.disks.iter().zip(&disks) {
            let blocks = http.image(d)?;
            let mut last = Instant::now();
            let r = recover_disk(
                Path::new(&disk.path),
                d,
                &blocks,
                &http.chunk_source(),
                &mut |done, _| {
                    if last.elapsed() > Duration::from_secs(5) {
                        last = Instant::now();
                        let _ = http.report(&Phase::Extracting {
                            done: before + done,
                            total,
                        });
                    }
                },
            )?;
            let line = format!(
                "recovered disk {} of {} onto {}: {} blocks, {} already as captured, {} fetched, {} zeroed, {} bytes written",
                d.index, plan.capture, disk.path, r.blocks, r.same, r.fetched, r.zeroed, r.bytes_written
            );
            say(&line);
            let _ = http.log(&line);
            before += d.size;
            written += r.bytes_written;
        }
        Ok(written)
    })();
    match result {
        Ok(bytes) => {
            http.report(&Phase::Extracted { bytes })?;
            http.report(&Phase::Done)?;
            Ok(())
        }
        Err(e) => {
            let _ = http.report(&Phase::Failed {
                error: format!("{e:#}"),
                log_tail: String::new(),
            });
            Err(e)
        }
    }
}

/// The install once the machine is up: disk and NIC, DHCP, then the plan from the server.
pub fn install(args: &BootArgs) -> Result<()> {
    let mac = args
        .mac
        .clone()
        .context("the kernel command line has no ignite.mac=")?;
    let disks = wait_for_disks()?;
    let nic = wait_for_nic(&mac)?;
    let lease = bring_up(&nic, Duration::from_secs(60))?;
    let mut server = connect(args)?;
    if let Some(url) = &args.baseline_tar {
        server = Box::new(source::CurlTar {
            server,
            url: url.clone(),
        });
    }
    server.report(&Phase::Booted {
        ip: lease.ip.to_string(),
    })?;
    let facts = ClientFacts {
        mac,
        disks,
        hostname: None,
    };
    runner::install(server.as_ref(), &facts, Path::new("/run/ignite/target"))
}

/// A capture of this machine (boot action `capture`): disks and NIC, DHCP, then what the
/// token says to capture, sent to the server.
pub fn capture(args: &BootArgs) -> Result<()> {
    use ignite_recovery::capture::{files::Rules, remote};
    let (Some(server), Some(mac), Some(token)) = (&args.server, &args.mac, &args.token) else {
        bail!("the kernel command line lacks ignite.server=, ignite.mac= or ignite.token=; boot the agent from `ignite server`");
    };
    let disks = wait_for_disks()?;
    let nic = wait_for_nic(mac)?;
    bring_up(&nic, Duration::from_secs(60))?;
    let client = remote::Client::new(server, token);
    let job = remote::Job {
        machine: remote::Machine::Agent {
            mac: mac.clone(),
            disks,
        },
        kind: None,
        rules: Rules::default(),
    };
    let f = remote::with_progress(Duration::from_secs(10), |p| {
        remote::capture(&client, &job, p)
    })?;
    say(&format!(
        "capture done: {}@{} ({}), {} bytes read, {} new, {} on the wire",
        f.name,
        &f.record[..12.min(f.record.len())],
        f.kind,
        f.read_bytes,
        f.new_bytes,
        f.wire_bytes
    ));
    Ok(())
}

fn finish(after: After) -> ! {
    use rustix::system::{reboot, RebootCommand};
    rustix::fs::sync();
    let result = match after {
        After::Shell => shell(),
        After::Poweroff => reboot(RebootCommand::PowerOff),
        After::Reboot => reboot(RebootCommand::Restart),
    };
    if let Err(e) = result {
        say(&format!("cannot {after:?}: {e}"));
    }
    shell()
}

/// The rescue shell on the console, forever (PID 1 must not exit).
fn shell() -> ! {
    loop {
        let r = Command::new("/usr/bin/sh")
            .env("PATH", "/usr/sbin:/usr/bin")
            .status();
        if let Err(e) = r {
            say(&format!("cannot start the rescue shell: {e}"));
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// Entry point as PID 1.
pub fn main() -> ! {
    // SAFETY: setting PATH before any thread starts.
    unsafe { std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") };
    if let Err(e) = mount_kernel_fs() {
        say(&format!("cannot mount the kernel file systems: {e:#}"));
        shell();
    }
    let args = parse_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let result = kernel_release().and_then(|r| {
        let (n, failed) = modules::load_all(&Path::new("/lib/modules").join(&r))?;
        say(&format!("kernel {r}: {n} modules loaded"));
        for f in failed {
            say(&format!("module not loaded: {f}"));
        }
        if args.selfcheck {
            selfcheck()?;
            say(SELFCHECK_OK);
            Ok(())
        } else if args.action.as_deref() == Some("capture") {
            capture(&args)
        } else if args.action.as_deref() == Some("recover") {
            recover(&args)
        } else if args.action.as_deref() == Some(ignite_recovery::media::ACTION) {
            super::media::recover_media(args.snapshot.as_deref(), args.yes, &wait_for_disks)
        } else {
            install(&args)
        }
    });
    match result {
        Ok(()) => finish(args.after),
        Err(e) => {
            say(&format!("FAILED: {e:#}"));
            say("leaving a shell on the console");
            shell()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let a = parse_cmdline("BOOT_IMAGE=x console=ttyS0 ignite.server=http://10.0.0.1:8080 ignite.mac=52:54:00:00:00:01 ignite.token=abc ignite.after=poweroff quiet\n");
        assert_eq!(a.server.as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(a.mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!(a.token.as_deref(), Some("abc"));
        assert_eq!(a.after, After::Poweroff);
        assert_eq!(a.action, None);
        assert_eq!(
            parse_cmdline("ignite.action=capture").action.as_deref(),
            Some("capture")
        );
        assert!(!a.selfcheck);
        assert_eq!(parse_cmdline("ignite.selfcheck=1").after, After::Reboot);
        assert!(parse_cmdline("ignite.selfcheck=1").selfcheck);
        let m = parse_cmdline("ignite.action=recover-media ignite.snapshot=web1@0a1b ignite.yes");
        assert_eq!(m.snapshot.as_deref(), Some("web1@0a1b"));
        assert!(m.yes);
        assert!(!a.yes);
    }
}
