//! A capture proven to boot (`--verify-boot`): cloned into a throwaway guest whose NICs sit on
//! an isolated bridge (no uplink, no address: the clone reaches nothing and nothing reaches
//! it), started, watched on its serial console until a marker appears (by default a login
//! prompt), then stopped and removed. The verdict, with the console's last lines, goes into
//! the capture's history. A backup that was never booted is a hope, not a backup.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ignite_archive::{Progress, Store};

use super::restore::{restore_guest, CloneAs};
use super::{supervisor, Paths};
use crate::state::State;

/// The bridge test restores run on, made when missing.
pub const ISOLATED_BRIDGE: &str = "ignite-verify";

/// What a boot must show, and how long it may take.
#[derive(Debug, Clone)]
pub struct BootCheck {
    /// Text on the serial console that means "booted".
    pub marker: String,
    pub timeout: Duration,
}

impl Default for BootCheck {
    fn default() -> Self {
        BootCheck {
            marker: "login:".into(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// Console lines kept in a verdict.
const TAIL_LINES: usize = 15;

/// Clones capture `spec` (history row `history`) into a throwaway guest, boots it and
/// records the verdict: `boots in N s: LINE` or `does not boot: WHY` and the console's tail.
/// An error is returned only when the test itself could not run (the verdict says so too).
pub fn verify_boot(
    state_dir: &Path,
    state: &State,
    store: Arc<Store>,
    history: i64,
    spec: &str,
    check: &BootCheck,
) -> Result<String> {
    let source = spec.split('@').next().unwrap_or(spec);
    let name = throwaway_name(source, history);
    let verdict = match run(state_dir, state, store, spec, &name, check) {
        Ok(v) => v,
        Err(e) => format!("not verified: {e:#}"),
    };
    // Whatever happened, the throwaway guest goes.
    let _ = supervisor::stop(state_dir, &name, true, Duration::from_secs(30));
    if state.guest(&name).is_ok() {
        if let Err(e) = super::remove(state_dir, &name, false) {
            tracing::warn!("test restore {name}: cannot remove it: {e:#}");
        }
    }
    state.capture_boot_checked(history, &verdict)?;
    match verdict.strip_prefix("not verified: ") {
        Some(why) => anyhow::bail!("{spec}: the boot test could not run: {why}"),
        None => Ok(verdict),
    }
}

/// `SOURCE-verify-ID`, cut to the guest name limit from the source's end.
fn throwaway_name(source: &str, history: i64) -> String {
    let suffix = format!("-verify-{history}");
    let keep = 32usize.saturating_sub(suffix.len()).min(source.len());
    format!("{}{suffix}", &source[..keep])
}

fn run(
    state_dir: &Path,
    state: &State,
    store: Arc<Store>,
    spec: &str,
    name: &str,
    check: &BootCheck,
) -> Result<String> {
    isolated_bridge()?;
    let clone = CloneAs {
        hostname: name.to_string(),
        macs: Vec::new(),
        bridge: Some(ISOLATED_BRIDGE.to_string()),
    };
    restore_guest(
        state_dir,
        state,
        store,
        spec,
        name,
        Some(&clone),
        None,
        &Progress::default(),
    )
    .context("the test restore failed")?;
    let started = Instant::now();
    supervisor::start(state_dir, name).context("the test guest did not start")?;
    let paths = Paths::new(state_dir, name);
    let console = || std::fs::read(paths.console_log()).unwrap_or_default();
    let running = || {
        super::control::status(&paths.control())
            .ok()
            .flatten()
            .is_some()
    };
    Ok(watch(
        console,
        running,
        check,
        started,
        Duration::from_millis(500),
    ))
}

/// Polls the console until the marker shows on a whole line (ended, or not growing any more:
/// a login prompt waits without a newline), the guest stops, or the time is up; the verdict.
fn watch(
    console: impl Fn() -> Vec<u8>,
    running: impl Fn() -> bool,
    check: &BootCheck,
    started: Instant,
    poll: Duration,
) -> String {
    let booted = |line: &str| {
        format!(
            "boots in {} s: {}",
            started.elapsed().as_secs(),
            printable(line).trim()
        )
    };
    let mut before = Vec::new();
    loop {
        let seen = console();
        let text = String::from_utf8_lossy(&seen);
        let settled = seen == before;
        let found = text
            .split_inclusive('\n')
            .find(|l| l.contains(&check.marker) && (l.ends_with('\n') || settled));
        if let Some(line) = found {
            return booted(line);
        }
        let why = if !running() {
            format!(
                "the guest stopped after {} s without {:?} on its console",
                started.elapsed().as_secs(),
                check.marker
            )
        } else if started.elapsed() > check.timeout {
            format!(
                "no {:?} on the console within {} s",
                check.marker,
                check.timeout.as_secs()
            )
        } else {
            before = seen;
            std::thread::sleep(poll);
            continue;
        };
        // What the guest printed before it stopped counts.
        let text = String::from_utf8_lossy(&console()).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains(&check.marker)) {
            return booted(line);
        }
        return format!(
            "does not boot: {why}; console tail:\n{}",
            console_tail(&text)
        );
    }
}

/// The console's last lines, terminal escapes and control characters removed.
fn console_tail(text: &str) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(printable)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// `s` without ANSI escape sequences and control characters (a console log is raw bytes).
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte; other escapes: ESC and one character.
            if chars.next_if_eq(&'[').is_some() {
                for p in chars.by_ref() {
                    if ('@'..='~').contains(&p) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Makes the isolated bridge if it is missing: up, with no address and no other port.
fn isolated_bridge() -> Result<()> {
    if Path::new("/sys/class/net").join(ISOLATED_BRIDGE).exists() {
        return Ok(());
    }
    let ip = |args: &[&str]| {
        ignite_recovery::process::output(std::process::Command::new("ip").args(args))
            .with_context(|| format!("cannot make the isolated bridge {ISOLATED_BRIDGE}"))
    };
    if let Err(e) = ip(&["link", "add", ISOLATED_BRIDGE, "type", "bridge"]) {
        // Another test restore made it meanwhile.
        if !Path::new("/sys/class/net").join(ISOLATED_BRIDGE).exists() {
            return Err(e);
        }
    }
    ip(&["link", "set", ISOLATED_BRIDGE, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throwaway_names_are_valid_and_distinct() {
        let long = "a-very-long-guest-name-of-thirty-two";
        for (source, id) in [("web1", 7), (long, 123456)] {
            let n = throwaway_name(source, id);
            super::super::check_name(&n).unwrap();
            assert!(n.ends_with(&format!("-verify-{id}")), "{n}");
        }
        assert_ne!(throwaway_name(long, 1), throwaway_name(long, 2));
    }

    fn check(marker: &str, secs: u64) -> BootCheck {
        BootCheck {
            marker: marker.into(),
            timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_marker_counts_on_a_whole_line() {
        use std::cell::Cell;
        // A half-written line is not taken; once it ends it is.
        let polls = Cell::new(0);
        let console = || {
            polls.set(polls.get() + 1);
            match polls.get() {
                1 => b"Booting\nREADY host=a mach".to_vec(),
                _ => b"Booting\nREADY host=a machine-id=1 end\nmore".to_vec(),
            }
        };
        let v = watch(
            console,
            || true,
            &check("READY", 60),
            Instant::now(),
            Duration::ZERO,
        );
        assert!(v.starts_with("boots in "), "{v}");
        assert!(v.ends_with(": READY host=a machine-id=1 end"), "{v}");
        // A prompt that waits without a newline counts once the console stops growing.
        let v = watch(
            || b"\x1b[0mDebian GNU/Linux 12 web1 ttyS0\n\nweb1 login: ".to_vec(),
            || true,
            &check("login:", 60),
            Instant::now(),
            Duration::ZERO,
        );
        assert_eq!(v, "boots in 0 s: web1 login:");
    }

    #[test]
    fn no_marker_is_a_verdict_with_the_console_tail() {
        let panic = b"Loading Linux\nKernel panic - not syncing: VFS: Unable to mount root fs\n";
        let v = watch(
            || panic.to_vec(),
            || false,
            &check("login:", 60),
            Instant::now(),
            Duration::ZERO,
        );
        assert!(
            v.starts_with("does not boot: the guest stopped after 0 s without \"login:\""),
            "{v}"
        );
        assert!(v.ends_with("console tail:\nLoading Linux\nKernel panic - not syncing: VFS: Unable to mount root fs"), "{v}");
        let started = Instant::now() - Duration::from_secs(61);
        let v = watch(
            || b"GRUB loading.\n".to_vec(),
            || true,
            &check("login:", 60),
            started,
            Duration::ZERO,
        );
        assert!(
            v.starts_with("does not boot: no \"login:\" on the console within 60 s"),
            "{v}"
        );
        assert!(v.ends_with("GRUB loading."), "{v}");
        // A guest that printed the marker and powered off at once has booted.
        let v = watch(
            || b"x\nREADY\n".to_vec(),
            || false,
            &check("READY", 60),
            Instant::now(),
            Duration::ZERO,
        );
        assert!(v.starts_with("boots"), "{v}");
    }

    #[test]
    fn console_text_is_made_printable() {
        let raw = "\u{1b}[0;32m  OK  \u{1b}[0m] Started ssh.\r\n\u{1b}c\u{7}web1 login: ";
        assert_eq!(printable("\u{1b}[0;32m  OK  \u{1b}[0m] x\r"), "  OK  ] x");
        assert_eq!(console_tail(raw), "  OK  ] Started ssh.\nweb1 login: ");
        let many: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let tail = console_tail(&many);
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.ends_with("line 39"));
    }
}
