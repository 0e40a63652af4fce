//! The agent as the initramfs `/init` (PID 1): mount the kernel file systems, load the
//! modules the devices ask for, wait for the boot NIC, DHCP, report `booted`, wait for a
//! disk, then install (or capture) as the kernel command line says and reboot — or, on
//! failure, report it and leave a shell on the console. Every failure after DHCP is reported
//! to the server with the console's tail; before it the agent has no way to the server, and
//! the server marks the install `agent silent` (see `server::install_api`).
//!
//! Kernel command line: `ignite.server=URL ignite.mac=MAC ignite.token=T` (with
//! `ignite.tls=PIN` when URL is `https://`: see `ignite_recovery::tls`), optionally
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

use ignite_recovery::api_client::Endpoint;
use ignite_recovery::steps::mount::mount;
use ignite_recovery::{facts, runner, source, Phase, Source};

use super::modules::Modules;
use super::{dhcp, hw, netif};

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
    /// `ignite.tls=SHA256`: the pin of an HTTPS server's authority.
    pub tls: Option<String>,
}

impl BootArgs {
    /// The server, this machine's MAC and its token, which every networked job needs.
    fn job(&self) -> Result<(Endpoint, &str, &str)> {
        let (Some(server), Some(mac), Some(token)) = (&self.server, &self.mac, &self.token) else {
            bail!("the kernel command line lacks ignite.server=, ignite.mac= or ignite.token=; boot the agent from `ignite server`");
        };
        Ok((Endpoint::new(server, self.tls.as_deref())?, mac, token))
    }
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
        tls: kv.get("tls").map(|s| s.to_string()),
    }
}

/// What the agent said on the console, newest last: sent with a failure report.
static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// Console lines kept for the failure report.
const SAID_KEPT: usize = 40;

fn say(text: &str) {
    eprintln!("ignite-agent: {text}");
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.len() >= SAID_KEPT {
        said.remove(0);
    }
    said.push(text.to_string());
}

fn said() -> String {
    SAID.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
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

/// Polls `found` for up to [`DEVICE_WAIT`], loading the drivers new devices ask for
/// between polls.
fn wait_for<T>(mods: &mut Modules, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        for m in mods.poll(Path::new("/sys/bus")) {
            say(&format!("loaded {m}"));
        }
        if let Some(x) = found() {
            return Some(x);
        }
        if start.elapsed() > DEVICE_WAIT {
            for f in std::mem::take(&mut mods.failed) {
                say(&format!("module not loaded: {f}"));
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Disks count once the list has held still this long: disks behind several controllers (or
/// a driver loaded for a second one) appear one after another, and a plan for several disks
/// must see them all.
const DISKS_SETTLE: Duration = Duration::from_secs(1);

fn wait_for_disks(mods: &mut Modules) -> Result<Vec<ignite_profiles::DiskFact>> {
    let read = || facts::disks(Path::new("/sys/block"));
    let mut seen: Vec<String> = Vec::new();
    let mut still_since = Instant::now();
    let settled = wait_for(mods, || {
        let disks = read();
        let paths: Vec<String> = disks.iter().map(|d| d.path.clone()).collect();
        if paths != seen {
            seen = paths;
            still_since = Instant::now();
        }
        (!disks.is_empty() && still_since.elapsed() >= DISKS_SETTLE).then_some(disks)
    });
    // A list still changing at the limit is still a list of disks.
    match settled.or_else(|| Some(read()).filter(|d| !d.is_empty())) {
        Some(d) => Ok(d),
        None => bail!(
            "no disk appeared within {} s; {}",
            DEVICE_WAIT.as_secs(),
            hw::diagnose(&hw::pci_devices(Path::new("/sys/bus/pci/devices")), 0x01)
        ),
    }
}

fn wait_for_nic(mods: &mut Modules, mac: &str) -> Result<String> {
    match wait_for(mods, || netif::by_mac(mac)) {
        Some(n) => Ok(n),
        None => bail!(
            "no network interface with MAC {mac} appeared within {} s; {}",
            DEVICE_WAIT.as_secs(),
            hw::diagnose(&hw::pci_devices(Path::new("/sys/bus/pci/devices")), 0x02)
        ),
    }
}

/// Modules loaded, disks seen, tools run: proves an initramfs fits its kernel.
fn selfcheck(mods: &mut Modules) -> Result<()> {
    let disks = wait_for_disks(mods)?;
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
    let (server, mac, token) = args.job()?;
    Ok(Box::new(source::Http::new(&server, mac, token)))
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

/// A recovery (boot action `recover`): the NIC, DHCP, then (reported from here on) the disks
/// and each disk of the capture written back over this machine's disks in order, only the
/// blocks that differ.
pub fn recover(args: &BootArgs, mods: &mut Modules) -> Result<()> {
    use ignite_recovery::recover::recover_disk;
    let (server, mac, token) = args.job()?;
    let nic = wait_for_nic(mods, mac)?;
    let lease = bring_up(&nic, Duration::from_secs(60))?;
    let http = source::Http::new(&server, mac, token);
    http.report(&Phase::Booted {
        ip: lease.ip.to_string(),
    })?;
    let result = (|| -> Result<u64> {
        let disks = wait_for_disks(mods)?;
        let plan = http.recover_plan()?;
        ignite_recovery::recover::check_fits(&plan, &disks)?;
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
            if let Err(r) = http.report(&Phase::Failed {
                error: format!("{e:#}"),
                log_tail: said(),
            }) {
                say(&format!("cannot report the failure: {r:#}"));
            }
            Err(e.context("reported to the server"))
        }
    }
}

/// The install once the machine is up: the NIC, DHCP, then (reported from here on) a disk
/// and the plan from the server.
pub fn install(args: &BootArgs, mods: &mut Modules) -> Result<()> {
    let mac = args
        .mac
        .clone()
        .context("the kernel command line has no ignite.mac=")?;
    let nic = wait_for_nic(mods, &mac)?;
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
    let disks = match wait_for_disks(mods) {
        Ok(d) => d,
        Err(e) => {
            let error = format!("{e:#}");
            if let Err(r) = server.report(&Phase::Failed {
                error,
                log_tail: said(),
            }) {
                say(&format!("cannot report the failure: {r:#}"));
            }
            return Err(e.context("reported to the server"));
        }
    };
    for d in &disks {
        say(&format!("disk {} {} bytes", d.path, d.size));
    }
    let facts = ClientFacts {
        mac,
        disks,
        hostname: None,
    };
    runner::install(server.as_ref(), &facts, Path::new("/run/ignite/target"))
}

/// A capture of this machine (boot action `capture`): disks and NIC, DHCP, then what the
/// token says to capture, sent to the server.
pub fn capture(args: &BootArgs, mods: &mut Modules) -> Result<()> {
    use ignite_recovery::capture::{files::Rules, remote};
    let (server, mac, token) = args.job()?;
    let nic = wait_for_nic(mods, mac)?;
    bring_up(&nic, Duration::from_secs(60))?;
    let disks = wait_for_disks(mods)?;
    let client = remote::Client::new(&server, token);
    let job = remote::Job {
        machine: remote::Machine::Agent {
            mac: mac.to_string(),
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
        let mut mods = Modules::open(&Path::new("/lib/modules").join(&r))?;
        mods.load_always();
        mods.poll(Path::new("/sys/bus"));
        say(&format!(
            "kernel {r}: {} modules loaded: {}",
            mods.loaded.len(),
            mods.loaded.join(" ")
        ));
        if args.selfcheck {
            selfcheck(&mut mods)?;
            say(SELFCHECK_OK);
            Ok(())
        } else if args.action.as_deref() == Some("capture") {
            capture(&args, &mut mods)
        } else if args.action.as_deref() == Some("recover") {
            recover(&args, &mut mods)
        } else if args.action.as_deref() == Some(ignite_recovery::media::ACTION) {
            let mods = std::cell::RefCell::new(&mut mods);
            super::media::recover_media(
                args.snapshot.as_deref(),
                args.yes,
                &|| wait_for_disks(&mut mods.borrow_mut()),
                &|| {
                    for m in mods.borrow_mut().poll(Path::new("/sys/bus")) {
                        say(&format!("loaded {m}"));
                    }
                },
            )
        } else {
            install(&args, &mut mods)
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
