//! Support code for the workspace's end-to-end tests (and the install benchmark): finding the
//! `ignite` binary, prerequisites that skip locally and fail under CI, running programs, the
//! cached real-data fixtures; [`lab`] (network namespaces and `ignite server`), [`site`]
//! (a network-install site and QEMU guests with real firmware), [`container`] (a
//! throwaway Debian booted with systemd-nspawn) and [`browser`] (headless Chromium over
//! WebDriver, for the web console).

pub mod browser;
pub mod container;
pub mod lab;
pub mod site;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use lab::{fetch_boot_files, Lab, Server, SERVER_IP};

/// How every test guest's CPU is emulated (TCG: the KVM here cannot run Linux at speed).
///
/// `-icount`: the guest's clock counts the instructions it ran (8 ns each, about the host's
/// pace for one guest on a quiet core) and runs with the host's only while the guest idles.
/// Without it a guest starved by a busy host (ten emulated guests beside a build on two
/// cores) sees its own timeouts expire: systemd's 90 s wait for a disk dropped installed
/// systems into emergency mode. It costs CPU: a Debian boot 11% more (77 to 86 CPU
/// seconds), capture_net's four tests 40% more (318 to 474: its guests move hundreds of
/// megabytes over their NICs, and QEMU's own system time doubled). RDRAND seeds the guest
/// kernel's random pool at boot: without an entropy source but interrupts its crng took
/// minutes to initialize on a busy host, and anything asking for random bytes early (a DHCP
/// client's xid) waited that long.
pub const EMULATED_CPU: [&str; 6] = [
    "-accel",
    "tcg",
    "-icount",
    "shift=3,sleep=on",
    "-cpu",
    "qemu64,+rdrand",
];

/// True under `.ci/run`, where every prerequisite is installed and a missing one is a failure.
pub fn in_ci() -> bool {
    std::env::var("IGNITE_CI").is_ok_and(|v| v == "1")
}

/// `true` when nothing is missing; otherwise says what is (one line) and returns `false` so the
/// test skips — or panics under `IGNITE_CI=1`, where every prerequisite must be present.
pub fn skip_unless(missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("needs {}", missing.join(", "));
    if in_ci() {
        panic!("prerequisite missing under IGNITE_CI=1: {msg}");
    }
    eprintln!("skipped: {msg}");
    false
}

/// One prerequisite: `ok`, or skip (fail in CI) naming `what`.
pub fn require(ok: bool, what: &str) -> bool {
    skip_unless(if ok { vec![] } else { vec![what.to_string()] })
}

/// Several prerequisites at once, each `(what, ok)`.
pub fn require_all(checks: &[(&str, bool)]) -> bool {
    skip_unless(
        checks
            .iter()
            .filter(|c| !c.1)
            .map(|c| c.0.to_string())
            .collect(),
    )
}

/// Root (network namespaces, loop devices) and each of `tools` on the PATH.
pub fn require_tools(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_string());
    }
    for t in tools {
        if which(t).is_none() {
            missing.push(format!("`{t}` (scripts/setup installs it)"));
        }
    }
    skip_unless(missing)
}

/// `/dev/kvm`, readable and writable.
pub fn have_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn have(cmd: &str) -> bool {
    which(cmd).is_some()
}

/// The program's path: `tool` itself if it names a path, else the first match on the
/// system directories (tests run with a reduced PATH under some harnesses).
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).exists().then(|| PathBuf::from(tool));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').chain([
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]);
    let found = dirs.map(|d| Path::new(d).join(tool)).find(|p| p.is_file());
    found
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `ignite` binary of this build (`cargo test --workspace` builds it beside the tests;
/// `IGNITE_BIN` overrides).
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

/// Runs `cmd`; panics with its output unless it succeeds.
pub fn run_output(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`; its stdout (panics with its output unless it succeeds).
pub fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_output(cmd).stdout).into_owned()
}

/// A bash script's stdout (`set -e` semantics are the script's own).
pub fn sh(script: &str) -> String {
    run(Command::new("bash").arg("-c").arg(script))
}

/// `ignite ARGS`, its stdout.
pub fn ignite(args: &[&str]) -> String {
    run(Command::new(ignite_bin()).args(args))
}

pub fn ignite_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ignite(args)).unwrap()
}

/// A command for `ignite`, to add arguments to.
pub fn ignite_cmd<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(ignite_bin());
    c.args(args);
    c
}

/// Runs `scripts/fixtures/NAME` (cached) and returns the paths it prints.
pub fn fixture(name: &str) -> Vec<PathBuf> {
    let script = repo_root().join("scripts/fixtures").join(name);
    run(&mut Command::new(&script))
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Polls `f` every 50 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_until(what, timeout, f, String::new)
}

/// As [`wait_for`], and on timeout the panic also carries `seen()`: what the test saw (a
/// guest's console tail, the server log), so a failure in CI explains itself.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    seen: impl FnOnce() -> String,
) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}\n{}", seen());
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parses `KEY=value` lines (as `env` prints them).
pub fn env_file(p: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), for files to compare byte by byte.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `text` without terminal control sequences (OVMF's console positions the cursor before
/// every character a UEFI program prints).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// A random 64-bit value (for unique file names), from the standard library's hasher keys.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    h.finish()
}

/// Stops defined guest `name` of state dir `state` when dropped (`ignite vm stop --force`),
/// so a failing test leaves no guest running behind it.
pub struct GuestGuard {
    pub state: PathBuf,
    pub name: String,
}

impl GuestGuard {
    pub fn new(state: &Path, name: &str) -> GuestGuard {
        GuestGuard {
            state: state.to_path_buf(),
            name: name.to_string(),
        }
    }
}

impl Drop for GuestGuard {
    fn drop(&mut self) {
        let _ = Command::new(ignite_bin())
            .args(["vm", "stop", &self.name, "--force"])
            .env("IGNITE_STATE_DIR", &self.state)
            .output();
    }
}

/// The release (`uname -r`) a Debian bzImage names in its setup header: the version string
/// the header points to, up to its first space.
pub fn bzimage_version(kernel: &[u8]) -> String {
    let off = u16::from_le_bytes([kernel[0x20e], kernel[0x20f]]) as usize + 0x200;
    let text = &kernel[off..off + 64];
    let end = text.iter().position(|&b| b == 0 || b == b' ').unwrap();
    String::from_utf8_lossy(&text[..end]).into_owned()
}
