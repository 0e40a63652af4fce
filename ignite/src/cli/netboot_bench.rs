//! `ignite netboot bench`: Ignite against the usual peers, side by side in one run, on the
//! same input, inside throw-away network namespaces (root needed). Prints the ratios.
//!
//! - `tftp`: a file served over a veth pair by Ignite, tftpd-hpa and dnsmasq, fetched with
//!   atftp (default options; blksize 1468 + windowsize 16; N clients at once).
//! - `dhcp`: perfdhcp (kea-admin) DORA exchanges per second against Ignite and dnsmasq.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ignite_recovery::process::output as sh;
use rustix::process::Signal;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// TFTP throughput: Ignite vs tftpd-hpa vs dnsmasq.
    Tftp {
        /// File size in MiB.
        #[arg(long, default_value_t = 100)]
        size_mb: usize,
        /// Concurrent clients in the many-clients column.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Runs per cell; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// DHCP DORA exchanges per second: Ignite vs dnsmasq, measured by perfdhcp.
    Dhcp {
        /// Seconds per perfdhcp run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rate perfdhcp tries to reach (exchanges/s).
        #[arg(long, default_value_t = 10000)]
        rate: u32,
        /// Distinct simulated clients (MACs).
        #[arg(long, default_value_t = 30000)]
        macs: u32,
    },
}

pub fn run(a: BenchArgs) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("benchmarks create network namespaces: run as root");
    }
    match a.what {
        BenchWhat::Tftp {
            size_mb,
            clients,
            runs,
        } => tftp(size_mb, clients, runs.max(1)),
        BenchWhat::Dhcp {
            seconds,
            rate,
            macs,
        } => dhcp(seconds, rate, macs),
    }
}

fn need(tools: &[&str]) -> Result<()> {
    for t in tools {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).is_file());
        if !found {
            bail!("`{t}` is not installed; install the packages in scripts/deps/netboot.apt");
        }
    }
    Ok(())
}

/// A server namespace (veth `s0`, 10.77.0.1/16) and a client namespace (`c0`, 10.77.0.50/16)
/// joined by a veth pair; deleted on drop with every process started in them.
struct Pair {
    server: String,
    client: String,
    children: Vec<Child>,
}

impl Pair {
    fn new() -> Result<Pair> {
        let base = format!("ign-nb-bench-{}", std::process::id());
        let p = Pair {
            server: format!("{base}-s"),
            client: format!("{base}-c"),
            children: Vec::new(),
        };
        for ns in [&p.server, &p.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            sh(Command::new("ip").args(["netns", "add", ns]))?;
            sh(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        sh(Command::new("ip").args([
            "link", "add", "s0", "netns", &p.server, "type", "veth", "peer", "name", "c0", "netns",
            &p.client,
        ]))?;
        sh(Command::new("ip").args(["-n", &p.server, "addr", "add", "10.77.0.1/16", "dev", "s0"]))?;
        sh(Command::new("ip").args([
            "-n",
            &p.client,
            "addr",
            "add",
            "10.77.0.50/16",
            "dev",
            "c0",
        ]))?;
        sh(Command::new("ip").args(["-n", &p.server, "link", "set", "s0", "up"]))?;
        sh(Command::new("ip").args(["-n", &p.client, "link", "set", "c0", "up"]))?;
        Ok(p)
    }

    fn cmd(ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]);
        c
    }

    /// Starts a server in the server namespace and waits until it listens on `ip`:`port`/udp.
    fn serve(&mut self, mut cmd: Command, ip: &str, port: u16, log: &Path) -> Result<()> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        self.children.push(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            let ss = sh(Self::cmd(&self.server, "ss").args(["-ulnH"]))?;
            // ss shows device-bound sockets as addr%dev:port.
            if ss
                .lines()
                .any(|l| l.contains(ip) && l.contains(&format!(":{port} ")))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "server {cmd:?} did not listen on {ip}:{port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    }

    /// Stops the servers started so far (SIGTERM, then wait).
    fn stop_servers(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = kill(c.id() as i32, Signal::TERM);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // `ip netns exec` may leave the server itself behind if it forked; kill what runs
        // in our own namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.server])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // A process inside the namespace this benchmark created.
                    let _ = kill(pid, Signal::KILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop_servers();
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let date = sh(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    format!("{cpu}, {cores} cores; {}", date.trim())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Column {
    name: &'static str,
    opts: &'static [&'static str],
    clients: usize,
}

fn tftp(size_mb: usize, clients: usize, runs: usize) -> Result<()> {
    need(&["atftp", "in.tftpd", "dnsmasq", "ss", "ip"])?;
    let work = tempdir()?;
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    let size = size_mb << 20;
    let data: Vec<u8> = {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v = Vec::with_capacity(size + 8);
        while v.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(size);
        v
    };
    std::fs::write(root.join("big.bin"), &data)?;
    let columns = [
        Column {
            name: "default options",
            opts: &[],
            clients: 1,
        },
        Column {
            name: "blksize 1468 + windowsize 16",
            opts: &["blksize 1468", "windowsize 16"],
            clients: 1,
        },
        Column {
            name: "clients at once, default",
            opts: &[],
            clients,
        },
    ];
    let exe = std::env::current_exe()?;
    // All three run at once, each on its own address, and the runs interleave them, so
    // load from anything else on the machine hits all of them alike.
    let servers = [
        ("ignite", "10.77.0.1"),
        ("tftpd-hpa", "10.77.0.2"),
        ("dnsmasq", "10.77.0.3"),
    ];
    let mut pair = Pair::new()?;
    for ip in ["10.77.0.2/16", "10.77.0.3/16"] {
        sh(Command::new("ip").args(["-n", &pair.server, "addr", "add", ip, "dev", "s0"]))?;
    }
    for (server, ip) in servers {
        let log = work.join(format!("{server}.log"));
        let cmd = match server {
            "ignite" => ignite_server(&pair, &exe, "10.77.1.0-10.77.1.200", &work, &root)?,
            "tftpd-hpa" => {
                let mut c = Pair::cmd(&pair.server, "in.tftpd");
                c.args([
                    "--foreground",
                    "--address",
                    &format!("{ip}:69"),
                    "--user",
                    "root",
                    "--secure",
                ])
                .arg(&root);
                c
            }
            _ => {
                let mut c = Pair::cmd(&pair.server, "dnsmasq");
                c.args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--port=0",
                    "--enable-tftp",
                    "--bind-interfaces",
                    "--user=root",
                ])
                .arg(format!("--listen-address={ip}"))
                .arg(format!("--tftp-root={}", root.display()))
                .arg(format!("--pid-file={}", work.join("dnsmasq.pid").display()));
                c
            }
        };
        pair.serve(cmd, ip, 69, &log)?;
    }
    let mut samples = vec![vec![Vec::new(); columns.len()]; servers.len()];
    for _ in 0..runs {
        for (ci, col) in columns.iter().enumerate() {
            for (si, (server, ip)) in servers.iter().enumerate() {
                let outs: Vec<PathBuf> = (0..col.clients)
                    .map(|i| work.join(format!("out{i}")))
                    .collect();
                let t = Instant::now();
                let mut kids = Vec::new();
                for o in &outs {
                    let mut c = Pair::cmd(&pair.client, "atftp");
                    for opt in col.opts {
                        c.args(["--option", opt]);
                    }
                    c.args(["-g", "-r", "big.bin", "-l"]).arg(o).arg(ip);
                    kids.push(c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?);
                }
                for k in kids {
                    let out = k.wait_with_output()?;
                    if !out.status.success() {
                        bail!(
                            "atftp against {server} ({}) failed: {}",
                            col.name,
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                for o in &outs {
                    if std::fs::read(o)? != data {
                        bail!(
                            "{server} ({}): the fetched file differs from the original",
                            col.name
                        );
                    }
                    std::fs::remove_file(o)?;
                }
                let rate = (size * col.clients) as f64 / secs / 1e6;
                eprintln!("{server:<10} {:<32} {rate:8.1} MB/s", col_name(col));
                samples[si][ci].push(rate);
            }
        }
    }
    pair.stop_servers();
    let results: Vec<Vec<f64>> = samples
        .into_iter()
        .map(|cols| cols.into_iter().map(median).collect())
        .collect();
    println!(
        "### TFTP: {size_mb} MiB over a veth pair, atftp client, median of {runs} runs (MB/s)\n"
    );
    println!("Machine: {}\n", machine());
    let mut header = "| server |".to_string();
    for c in &columns {
        header += &format!(" {} |", col_name(c));
    }
    println!("{header}\n|---|{}", "---|".repeat(columns.len()));
    for (si, (s, _)) in servers.iter().enumerate() {
        let mut row = format!("| {s} |");
        for v in &results[si] {
            row += &format!(" {v:.1} |");
        }
        println!("{row}");
    }
    let mut row = "| **Ignite / best peer** |".to_string();
    for ((ours, hpa), dnsmasq) in results[0].iter().zip(&results[1]).zip(&results[2]) {
        row += &format!(" **{:.2}x** |", ours / hpa.max(*dnsmasq));
    }
    println!("{row}");
    Ok(())
}

fn col_name(c: &Column) -> String {
    if c.clients > 1 {
        format!("{} {}", c.clients, c.name)
    } else {
        c.name.to_string()
    }
}

/// The benchmark's scratch directory (test files, server state), removed when dropped,
/// also when the benchmark fails half-way.
struct WorkDir(PathBuf);

impl std::ops::Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<WorkDir> {
    let p = std::env::temp_dir().join(format!("ignite-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(WorkDir(p))
}

/// Runs perfdhcp from the client namespace; returns (exchanges/s, its output).
fn perfdhcp(pair: &Pair, seconds: u32, rate: u32, macs: u32) -> Result<(f64, String)> {
    let out = Pair::cmd(&pair.client, "perfdhcp")
        .args([
            "-4",
            "-l",
            "c0",
            "-r",
            &rate.to_string(),
            "-R",
            &macs.to_string(),
            "-p",
            &seconds.to_string(),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Rate: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse::<f64>().ok())
        .with_context(|| {
            format!(
                "perfdhcp printed no rate: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok((rate, text))
}

/// `ignite server` in the pair's server namespace, state under `work`, quiet.
fn ignite_server(
    pair: &Pair,
    exe: &Path,
    dhcp_range: &str,
    work: &Path,
    boot_dir: &Path,
) -> Result<Command> {
    let mut c = Pair::cmd(&pair.server, exe.to_str().context("exe path")?);
    c.args(["server", "--interface", "s0", "--http-port", "18080"])
        .args(["--dhcp-range", dhcp_range])
        .arg("--state-dir")
        .arg(work.join("state"))
        .arg("--boot-dir")
        .arg(boot_dir)
        .env("RUST_LOG", "warn");
    Ok(c)
}

fn dhcp(seconds: u32, rate: u32, macs: u32) -> Result<()> {
    need(&["perfdhcp", "dnsmasq", "ss", "ip"])?;
    let work = tempdir()?;
    let exe = std::env::current_exe()?;
    let mut pair = Pair::new()?;
    let mut rates = Vec::new();
    for server in ["ignite", "dnsmasq"] {
        let log = work.join(format!("{server}.log"));
        let cmd = if server == "ignite" {
            ignite_server(&pair, &exe, "10.77.1.0-10.77.250.255", &work, &work)?
        } else {
            let mut c = Pair::cmd(&pair.server, "dnsmasq");
            c.args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=s0",
                "--bind-interfaces",
                "--user=root",
            ])
            .args([
                "--dhcp-range=10.77.1.0,10.77.250.255,255.255.0.0,1h",
                "--dhcp-lease-max=1000000",
                "--no-ping",
            ])
            .arg(format!(
                "--dhcp-leasefile={}",
                work.join("dnsmasq.leases").display()
            ))
            .arg(format!("--pid-file={}", work.join("dnsmasq.pid").display()));
            c
        };
        pair.serve(cmd, "", 67, &log)?;
        let (r, text) = perfdhcp(&pair, seconds, rate, macs)?;
        let drops = text
            .lines()
            .filter(|l| l.starts_with("drops ratio"))
            .map(|l| l.trim_start_matches("drops ratio:").trim().to_string())
            .collect::<Vec<_>>()
            .join(" / ");
        eprintln!("{server:<8} {r:10.0} DORA/s (drops DO/RA: {drops})");
        pair.stop_servers();
        rates.push(r);
    }
    let persisted = crate::state::State::open(&work.join("state"))?
        .lease_store()?
        .all()
        .len();
    let dnsmasq_leases = std::fs::read_to_string(work.join("dnsmasq.leases"))
        .unwrap_or_default()
        .lines()
        .count();
    println!("### DHCP: perfdhcp DORA exchanges/s over a veth pair ({seconds} s, target rate {rate}/s, {macs} MACs)\n");
    println!("Machine: {}\n", machine());
    println!("| server | DORA/s | leases on disk after the run |\n|---|---|---|");
    println!("| ignite | {:.0} | {persisted} (SQLite, WAL) |", rates[0]);
    println!(
        "| dnsmasq (--no-ping) | {:.0} | {dnsmasq_leases} (lease file) |",
        rates[1]
    );
    println!(
        "| **Ignite / dnsmasq** | **{:.2}x** | |",
        rates[0] / rates[1]
    );
    Ok(())
}

/// kill(2) on a process id read from a child handle or `ip netns pids`.
fn kill(pid: i32, sig: Signal) -> rustix::io::Result<()> {
    match rustix::process::Pid::from_raw(pid) {
        Some(p) => rustix::process::kill_process(p, sig),
        None => Ok(()),
    }
}
