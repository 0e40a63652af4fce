//! `ignite vm bench`: virtio-blk sequential throughput measured from a guest test program at
//! CPL3 (blkbench), side by side in the same run with a host thread doing the same I/O on the
//! same image file directly — the physical limit the monitor is measured against.

use crate::config::{DiskConfig, DEFAULT_TRACK_GRANULARITY};
use crate::error::Result;
use crate::guest::{run_program, ProgramRun};
use crate::StopReason;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Row {
    pub name: &'static str,
    pub bytes: u64,
    pub secs: f64,
    /// Monitor process CPU time (all threads) during the phase.
    pub cpu_secs: f64,
    /// Exits that reached the monitor.
    pub user_exits: u64,
    /// All exits KVM counted, where available.
    pub kvm_exits: Option<u64>,
    pub host_secs: f64,
    pub host_cpu_secs: f64,
}

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

impl Row {
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / MIB / self.secs
    }
    pub fn host_mbps(&self) -> f64 {
        self.bytes as f64 / MIB / self.host_secs
    }
    pub fn cpu_per_gib(&self) -> f64 {
        self.cpu_secs / (self.bytes as f64 / GIB)
    }
    pub fn host_cpu_per_gib(&self) -> f64 {
        self.host_cpu_secs / (self.bytes as f64 / GIB)
    }
    pub fn exits_per_mib(&self) -> f64 {
        self.kvm_exits.unwrap_or(self.user_exits) as f64 / (self.bytes as f64 / MIB)
    }
}

fn thread_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The same sequential I/O from a host thread, cycling through `depth` buffers like the
/// guest does (so both touch the same amount of memory): (seconds, CPU seconds).
fn host_direct(
    image: &Path,
    write: bool,
    bs: usize,
    depth: usize,
    total: u64,
) -> std::io::Result<(f64, f64)> {
    let f = OpenOptions::new().read(true).write(write).open(image)?;
    let mut ring = vec![0u8; bs * depth];
    for (i, b) in ring.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    let (t, c) = (Instant::now(), thread_cpu());
    let mut off = 0;
    let mut i = 0;
    while off < total {
        let buf = &mut ring[(i % depth) * bs..(i % depth + 1) * bs];
        i += 1;
        if write {
            f.write_all_at(buf, off)?;
        } else {
            f.read_exact_at(buf, off)?;
        }
        off += bs as u64;
    }
    Ok((t.elapsed().as_secs_f64(), (thread_cpu() - c).as_secs_f64()))
}

/// Runs the benchmark on an image in `dir`. `total_1m`/`total_4k`: bytes per phase.
pub fn run(dir: &Path, total_1m: u64, total_4k: u64) -> Result<Vec<Row>> {
    let image = dir.join(format!("ignite-vm-bench-{}.img", std::process::id()));
    let size = total_1m.max(total_4k);
    std::fs::write(&image, b"")?;
    OpenOptions::new().write(true).open(&image)?.set_len(size)?;
    let cleanup = scopeguard(&image);
    let mut run = ProgramRun::new("blkbench");
    run.mem_bytes = 128 << 20;
    run.disks = vec![DiskConfig {
        path: image.clone(),
        read_only: false,
        track_changes: Some(DEFAULT_TRACK_GRANULARITY),
    }];
    run.args = format!("total1m={total_1m} total4k={total_4k}");
    run.timeout = Duration::from_secs(600);
    let r = run_program(run)?;
    if r.outcome.reason != StopReason::TestExit(0) {
        return Err(crate::Error::Memory(format!(
            "blkbench: {}: {}",
            r.outcome.reason,
            r.last_line()
        )));
    }
    let marks = r.outcome.marks;
    let mark = |v: u32| marks.iter().find(|m| m.value == v).cloned();
    // (name, first mark, write, request size, requests in flight as in blkbench, bytes)
    let phases: [(&str, u32, bool, usize, usize, u64); 4] = [
        ("write 1 MiB", 11, true, 1 << 20, 8, total_1m),
        ("write 4 KiB", 21, true, 4096, 64, total_4k),
        ("read 1 MiB", 31, false, 1 << 20, 8, total_1m),
        ("read 4 KiB", 41, false, 4096, 64, total_4k),
    ];
    let mut rows = Vec::new();
    for (name, start, write, bs, depth, total) in phases {
        let (Some(a), Some(b)) = (mark(start), mark(start + 1)) else {
            return Err(crate::Error::Memory(format!(
                "blkbench: phase {name} left no marks"
            )));
        };
        let (hs, hc) = host_direct(&image, write, bs, depth, total)?;
        rows.push(Row {
            name,
            bytes: total,
            secs: (b.at - a.at).as_secs_f64(),
            cpu_secs: (b.cpu - a.cpu).as_secs_f64(),
            user_exits: b.exits - a.exits,
            kvm_exits: b.kvm_exits.zip(a.kvm_exits).map(|(b, a)| b - a),
            host_secs: hs,
            host_cpu_secs: hc,
        });
    }
    drop(cleanup);
    Ok(rows)
}

struct Cleanup(std::path::PathBuf);
fn scopeguard(p: &Path) -> Cleanup {
    Cleanup(p.to_owned())
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(crate::change_tracking::ChangeTracker::map_path(&self.0));
    }
}

/// Markdown table of the rows with the guest/host ratios.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| phase | guest MB/s | host-direct MB/s | guest/host | monitor CPU s/GiB | host CPU s/GiB | exits/MiB | to monitor/MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.3} | {:.3} | {:.1}{} | {:.2} |\n",
            r.name,
            r.mbps(),
            r.host_mbps(),
            r.mbps() / r.host_mbps(),
            r.cpu_per_gib(),
            r.host_cpu_per_gib(),
            r.exits_per_mib(),
            if r.kvm_exits.is_some() {
                ""
            } else {
                " (monitor only)"
            },
            r.user_exits as f64 / (r.bytes as f64 / MIB),
        );
    }
    s
}

/// One line about this machine: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// Current UTC date and time, `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: gmtime_r writes into the struct we own.
    unsafe { libc::gmtime_r(&t, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}
