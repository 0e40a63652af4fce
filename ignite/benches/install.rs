//! Install time of the golden image: Ignite's agent (chunks over the install API, verified,
//! several in flight) against `curl | tar` of the same image as a plain tarball served by
//! `python3 -m http.server`, inside the same guest: same initramfs, same profile, same
//! partitioning and formatting — only the extract step differs (the agent runs the
//! baseline pipeline itself when the kernel line says `ignite.baseline-tar=URL`).
//! One guest, then four at once, in QEMU under software emulation in a network namespace.
//!
//! Run as root: `cargo bench -p ignite --bench install [-- --guests N] [--rounds R]`
//! (default: 1 guest, then 4; 3 rounds of each method, alternating which goes first, since
//! one round's times vary by seconds — SSH host keys are generated in an emulated CPU).
//! Prints per-phase medians, the CPU seconds each guest's QEMU spent (the cost of the work
//! whatever else the shared host runs: wall times on a busy 2-core machine mean little),
//! the serving process's CPU time per round, and the ratios.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ignite_e2e::site::*;
use ignite_e2e::*;

const BASELINE_PORT: u16 = 8000;

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Ignite,
    CurlTar,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Ignite => "ignite",
            Method::CurlTar => "curl|tar",
        }
    }
}

/// Seconds each install spent per phase, from the server's timeline.
#[derive(Default, Clone)]
struct Times {
    boot: f64,
    prepare: f64,
    extract: f64,
    configure: f64,
    total: f64,
    bytes: u64,
    /// CPU seconds the guest's QEMU used in the extract and over the whole install: what
    /// the work cost, whatever else the host was running.
    extract_cpu: f64,
    total_cpu: f64,
    /// The agent's log line for the extract (write and sync times).
    extract_log: String,
}

/// A guest's QEMU CPU seconds, sampled: (Unix time in seconds, CPU seconds).
type CpuSamples = Vec<(f64, f64)>;

/// CPU seconds at Unix time `t`, interpolated between samples.
fn cpu_at(samples: &CpuSamples, t: f64) -> f64 {
    let i = samples.partition_point(|&(at, _)| at < t);
    match (i.checked_sub(1).map(|j| samples[j]), samples.get(i)) {
        (Some((t0, c0)), Some(&(t1, c1))) if t1 > t0 => c0 + (c1 - c0) * (t - t0) / (t1 - t0),
        (_, Some(&(_, c))) | (Some((_, c)), None) => c,
        (None, None) => 0.0,
    }
}

fn times(site: &Site, name: &str, cpu: &CpuSamples) -> Times {
    let show: serde_json::Value =
        serde_json::from_str(&site.ignite(&["client", "show", name, "--json"])).unwrap();
    let at = |phase: &str| -> f64 {
        show["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == phase)
            .and_then(|p| p["time_ms"].as_i64())
            .unwrap_or_else(|| panic!("{name} never reported {phase}: {show:#}")) as f64
            / 1000.0
    };
    let first_step = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["time"].as_i64())
        .min()
        .unwrap() as f64;
    let bytes = show["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "extracted")
        .and_then(|p| p["bytes"].as_u64())
        .unwrap_or(0);
    Times {
        boot: at("booted") - first_step,
        prepare: at("formatted") - at("booted"),
        extract: at("extracted") - at("formatted"),
        configure: at("done") - at("extracted"),
        total: at("done") - first_step,
        bytes,
        extract_cpu: cpu_at(cpu, at("extracted")) - cpu_at(cpu, at("formatted")),
        total_cpu: cpu_at(cpu, at("done")) - cpu_at(cpu, first_step),
        extract_log: site
            .ignite(&["client", "log", name])
            .lines()
            .find(|l| l.contains("extracted "))
            .unwrap_or("(no extract line in the log)")
            .trim()
            .to_string(),
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Installs on `n` guests at once with `method`; returns each guest's times and the CPU
/// seconds of the process serving the image (ignite server, or the baseline's web server
/// `http_pid`) over the round.
fn round(
    site: &Site,
    lab: &Lab,
    method: Method,
    n: u8,
    first: u8,
    http_pid: u32,
) -> (Vec<Times>, f64) {
    let args = match method {
        Method::Ignite => "ignite.after=poweroff".to_string(),
        Method::CurlTar => format!(
            "ignite.after=poweroff ignite.baseline-tar=http://{SERVER_IP}:{BASELINE_PORT}/root.tar"
        ),
    };
    let server = site.server(lab, &args);
    let serving = match method {
        Method::Ignite => server.pid(),
        Method::CurlTar => http_pid,
    };
    let cpu0 = cpu_seconds(serving);
    let mut guests = Vec::new();
    for i in 0..n {
        let k = first + i;
        site.client(
            &format!("52:54:00:78:00:{k:02x}"),
            &format!("g{k}"),
            "bench",
        );
        guests.push(Guest::start(
            lab,
            site.tmp.path(),
            k,
            Firmware::Bios,
            4 << 30,
            2,
        ));
    }
    let t = Instant::now();
    let mut samples: Vec<CpuSamples> = vec![Vec::new(); guests.len()];
    while !guests.iter_mut().all(|g| g.exited()) {
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "round did not finish:\n{}",
            site.ignite(&["client", "list"])
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        for (g, s) in guests.iter_mut().zip(&mut samples) {
            if !g.exited() {
                s.push((now, cpu_seconds(g.pid())));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let cpu = cpu_seconds(serving) - cpu0;
    let times = guests
        .iter()
        .zip(&samples)
        .map(|(g, s)| times(site, &g.name, s))
        .collect();
    (times, cpu)
}

/// Every guest's times over all rounds, and the serving CPU per round.
type Results = (Vec<Times>, Vec<f64>);

/// The median of `f` over `v`.
fn median<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    let mut x: Vec<f64> = v.iter().map(f).collect();
    x.sort_by(f64::total_cmp);
    let m = x.len() / 2;
    if x.len() % 2 == 1 {
        x[m]
    } else {
        (x[m - 1] + x[m]) / 2.0
    }
}

fn arg(name: &str) -> Option<u8> {
    let v = std::env::args().skip_while(|a| a != name).nth(1)?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}")),
    )
}

fn main() {
    let guests: Vec<u8> = match arg("--guests") {
        Some(n) => vec![n],
        None => vec![1, 4],
    };
    let rounds = arg("--rounds").unwrap_or(3);
    if !require_tools(&["qemu-system-x86_64", "ip", "python3", "debootstrap"]) {
        return;
    }
    let site = Site::new(&[("bench", profile(&[]))]);
    let golden = fixture("golden");
    let mut lab = Lab::new("bench");
    let http = Lab::cmd(&lab.ns, "python3")
        .args([
            "-m",
            "http.server",
            &BASELINE_PORT.to_string(),
            "--bind",
            SERVER_IP,
        ])
        .arg("--directory")
        .arg(golden[1].parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server");
    let http_pid = lab.adopt(http);
    let mut results: BTreeMap<(u8, &str), Results> = BTreeMap::new();
    let mut next = 0x20;
    for &n in &guests {
        for r in 0..rounds {
            let order = if r % 2 == 0 {
                [Method::Ignite, Method::CurlTar]
            } else {
                [Method::CurlTar, Method::Ignite]
            };
            for method in order {
                eprintln!("round {}/{rounds}: {n} guest(s), {}", r + 1, method.name());
                let (times, cpu) = round(&site, &lab, method, n, next, http_pid);
                for t in &times {
                    eprintln!("  {}", t.extract_log);
                    eprintln!(
                        "  boot {:.1} prepare {:.1} extract {:.1} configure {:.1} total {:.1}; guest cpu extract {:.1} total {:.1}; serving cpu {cpu:.1} s",
                        t.boot, t.prepare, t.extract, t.configure, t.total, t.extract_cpu, t.total_cpu
                    );
                }
                next += n;
                let e = results.entry((n, method.name())).or_default();
                e.0.extend(times);
                e.1.push(cpu);
            }
        }
    }
    println!("golden image install (QEMU tcg guests, 2 vCPUs and 1 GiB each, BIOS; seconds, median over {rounds} rounds)");
    println!(
        "{:<8} {:<9} {:>6} {:>8} {:>8} {:>10} {:>7} {:>8} {:>11} {:>11} {:>11}",
        "guests",
        "method",
        "boot",
        "prepare",
        "extract",
        "configure",
        "total",
        "MB/s",
        "extract cpu",
        "install cpu",
        "serving cpu"
    );
    for ((n, m), (t, cpu)) in &results {
        let mbs = median(t, |x| x.bytes as f64 / 1e6 / x.extract);
        println!(
            "{:<8} {:<9} {:>6.1} {:>8.1} {:>8.1} {:>10.1} {:>7.1} {:>8.1} {:>10.1}s {:>10.1}s {:>10.1}s",
            n,
            m,
            median(t, |x| x.boot),
            median(t, |x| x.prepare),
            median(t, |x| x.extract),
            median(t, |x| x.configure),
            median(t, |x| x.total),
            mbs,
            median(t, |x| x.extract_cpu),
            median(t, |x| x.total_cpu),
            median(cpu, |c| *c)
        );
    }
    for &n in &guests {
        let i = &results[&(n, "ignite")].0;
        let b = &results[&(n, "curl|tar")].0;
        println!(
            "{n} guest(s), curl|tar/ignite (above 1: Ignite faster or cheaper): time extract x{:.2}, install x{:.2}; guest cpu extract x{:.2}, install x{:.2}",
            median(b, |x| x.extract) / median(i, |x| x.extract),
            median(b, |x| x.total) / median(i, |x| x.total),
            median(b, |x| x.extract_cpu) / median(i, |x| x.extract_cpu),
            median(b, |x| x.total_cpu) / median(i, |x| x.total_cpu),
        );
    }
}
