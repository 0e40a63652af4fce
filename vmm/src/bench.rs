//! `ignite vm bench`: virtio-blk sequential throughput measured from a guest test program at
//! CPL3 (blkbench), side by side in the same run with a host thread doing the same I/O on the
//! same image file directly — the physical limit the monitor is measured against.

use crate::config::{DiskConfig, DEFAULT_TRACK_GRANULARITY};
use crate::error::Result;
use crate::guest::{run_program, ProgramRun};
use crate::{Mark, StopReason};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// One `ignite vm bench` row: the guest's phase and the same I/O done directly by the host.
#[derive(Clone, Debug)]
pub struct Row {
    pub guest: Phase,
    pub host_secs: f64,
    pub host_cpu_secs: f64,
}

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

impl Row {
    pub fn host_mbps(&self) -> f64 {
        self.guest.bytes as f64 / MIB / self.host_secs
    }
    pub fn host_cpu_per_gib(&self) -> f64 {
        self.host_cpu_secs / (self.guest.bytes as f64 / GIB)
    }
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu() -> Duration {
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

/// Writes the benchmark image in full and syncs it, so that guest and host both overwrite
/// allocated blocks (a sparse file would charge block allocation to whoever writes first).
fn write_image(image: &Path, size: u64) -> std::io::Result<()> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(image)?;
    let chunk = vec![0x5au8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk.len() as u64) as usize;
        f.write_all_at(&chunk[..n], off)?;
        off += n as u64;
    }
    f.sync_all()
}

/// A guest program's run, failing unless it passed.
fn run_passing(run: ProgramRun) -> Result<crate::guest::ProgramResult> {
    let name = run.name;
    let r = run_program(run)?;
    if r.outcome.reason != StopReason::TestExit(0) {
        return Err(crate::Error::Bench(format!(
            "{name}: {}: {}",
            r.outcome.reason,
            r.last_line()
        )));
    }
    Ok(r)
}

/// The benchmark disk: the image with change tracking on, as guests normally have it.
fn bench_disk(image: &Path) -> DiskConfig {
    DiskConfig {
        path: image.to_owned(),
        read_only: false,
        direct: false,
        track_changes: Some(DEFAULT_TRACK_GRANULARITY),
    }
}

/// Runs the benchmark on an image in `dir`. `total_1m`/`total_4k`: bytes per phase.
/// `irq_wait`: the guest sleeps until the queue interrupt instead of spinning on the ring.
pub fn run(dir: &Path, total_1m: u64, total_4k: u64, irq_wait: bool) -> Result<Vec<Row>> {
    let image = dir.join(format!("ignite-vm-bench-{}.img", std::process::id()));
    write_image(&image, total_1m.max(total_4k))?;
    let _cleanup = scopeguard(&image);
    let mut run = ProgramRun::new("blkbench");
    run.mem_bytes = 128 << 20;
    run.disks = vec![bench_disk(&image)];
    let wait = if irq_wait { "irq" } else { "poll" };
    run.args = format!("total1m={total_1m} total4k={total_4k} wait={wait}");
    run.timeout = Duration::from_secs(600);
    let r = run_passing(run)?;
    let phases = disk_phases(&r.outcome.marks, total_1m, total_4k)?;
    let mut rows = Vec::new();
    for (guest, &(_, _, write, bs, depth)) in phases.into_iter().zip(&DISK_PHASES) {
        let (host_secs, host_cpu_secs) = host_direct(&image, write, bs, depth, guest.bytes)?;
        rows.push(Row {
            guest,
            host_secs,
            host_cpu_secs,
        });
    }
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
            r.guest.name,
            r.guest.mbps(),
            r.host_mbps(),
            r.guest.mbps() / r.host_mbps(),
            r.guest.cpu_per_gib(),
            r.host_cpu_per_gib(),
            r.guest.exits_per_mib(),
            if r.guest.kvm_exits.is_some() {
                ""
            } else {
                " (monitor only)"
            },
            r.guest.user_exits as f64 / (r.guest.bytes as f64 / MIB),
        );
    }
    s
}

/// The 1-minute load average (other work on the machine skews every number).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
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

/// One phase of a guest benchmark program, between its two marks.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub bytes: u64,
    pub secs: f64,
    /// Monitor process CPU time (user + system, all threads) during the phase.
    pub cpu_secs: f64,
    pub user_exits: u64,
    pub kvm_exits: Option<u64>,
}

impl Phase {
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / MIB / self.secs
    }
    pub fn cpu_per_gib(&self) -> f64 {
        self.cpu_secs / (self.bytes as f64 / GIB)
    }
    pub fn exits_per_mib(&self) -> f64 {
        self.kvm_exits.unwrap_or(self.user_exits) as f64 / (self.bytes as f64 / MIB)
    }
}

/// The four disk phases both disk benchmark programs bracket with marks: (name, first mark,
/// write, request size, requests blkbench keeps in flight).
const DISK_PHASES: [(&str, u32, bool, usize, usize); 4] = [
    ("disk write 1 MiB", 11, true, 1 << 20, 8),
    ("disk write 4 KiB", 21, true, 4096, 64),
    ("disk read 1 MiB", 31, false, 1 << 20, 8),
    ("disk read 4 KiB", 41, false, 4096, 64),
];

/// The phase `name` of `bytes` between marks `start` and `start + 1`.
pub(crate) fn phase(marks: &[Mark], name: &'static str, start: u32, bytes: u64) -> Result<Phase> {
    let mark = |v: u32| marks.iter().find(|m| m.value == v);
    let (Some(a), Some(b)) = (mark(start), mark(start + 1)) else {
        return Err(crate::Error::Bench(format!("phase {name} left no marks")));
    };
    Ok(Phase {
        name,
        bytes,
        secs: (b.at - a.at).as_secs_f64(),
        cpu_secs: (b.cpu - a.cpu).as_secs_f64(),
        user_exits: b.exits - a.exits,
        kvm_exits: b.kvm_exits.zip(a.kvm_exits).map(|(b, a)| b - a),
    })
}

fn disk_phases(marks: &[Mark], total_1m: u64, total_4k: u64) -> Result<Vec<Phase>> {
    DISK_PHASES
        .iter()
        .map(|&(name, start, _, bs, _)| {
            let bytes = if bs == 1 << 20 { total_1m } else { total_4k };
            phase(marks, name, start, bytes)
        })
        .collect()
}

/// AVIO (virtio-blk, `blkbench`) and VIO (IDE PIO, `idebench`) on the same image file in
/// one run, each guest sleeping until its device interrupt: (avio, vio) phases.
pub fn avio_vio_disk(dir: &Path, total_1m: u64, total_4k: u64) -> Result<(Vec<Phase>, Vec<Phase>)> {
    let image = dir.join(format!("ignite-vm-avio-vio-{}.img", std::process::id()));
    write_image(&image, total_1m.max(total_4k))?;
    let _cleanup = scopeguard(&image);
    let mut out = Vec::new();
    for (program, vio) in [("blkbench", false), ("idebench", true)] {
        let mut run = ProgramRun::new(program);
        run.mem_bytes = 128 << 20;
        if vio {
            run.vio_disks = vec![bench_disk(&image)];
        } else {
            run.disks = vec![bench_disk(&image)];
        }
        run.args = format!("total1m={total_1m} total4k={total_4k} wait=irq");
        run.timeout = Duration::from_secs(1800);
        let r = run_passing(run)?;
        out.push(disk_phases(&r.outcome.marks, total_1m, total_4k)?);
    }
    let vio = out.pop().unwrap_or_default();
    let avio = out.pop().unwrap_or_default();
    Ok((avio, vio))
}

/// The ISO row of `avio-vio`: `cdbench` reads `total` bytes of a CD image sequentially,
/// once through the ATAPI drive on IDE (VIO) and once through a virtio-scsi CD-ROM LUN
/// (AVIO), same image file, each guest sleeping until its interrupt; each run's checksum of
/// what it read is checked against the image's. (avio, vio) phases.
pub fn avio_vio_iso(dir: &Path, image_size: u64, total: u64) -> Result<(Phase, Phase)> {
    const CMD: u64 = 1 << 20;
    if image_size == 0 || !image_size.is_multiple_of(CMD) || !total.is_multiple_of(CMD) {
        return Err(crate::Error::Bench(format!(
            "ISO read: image size {image_size} and total {total} must be multiples of 1 MiB"
        )));
    }
    let image = dir.join(format!("ignite-vm-avio-vio-{}.iso", std::process::id()));
    write_image(&image, image_size)?;
    let _cleanup = scopeguard(&image);
    // The image is 0x5a throughout (write_image): what every byte read must fold into.
    let mib = vec![0x5au8; 1 << 20];
    let want = (0..total >> 20).fold(crate::guest::FNV1A_START, |h, _| {
        crate::guest::fnv1a(h, &mib)
    });
    let mut out = Vec::new();
    for bus in [crate::config::MediaBus::Avio, crate::config::MediaBus::Vio] {
        let mut run = ProgramRun::new("cdbench");
        run.mem_bytes = 128 << 20;
        run.drives = vec![crate::config::DriveConfig {
            kind: crate::config::DriveKind::Cdrom,
            bus,
            medium: Some(crate::scsi::MediumConfig {
                path: image.clone(),
                read_only: true,
            }),
        }];
        let name = if bus == crate::config::MediaBus::Vio {
            "vio"
        } else {
            "avio"
        };
        run.args = format!("bus={name} total={total}");
        run.timeout = Duration::from_secs(1800);
        let r = run_passing(run)?;
        let line = format!("cdbench: {total} bytes fnv1a {want:08x}");
        if !r.serial.contains(&line) {
            return Err(crate::Error::Bench(format!(
                "cdbench {name}: the data read is not the image's (want {line:?}, got {:?})",
                r.last_line()
            )));
        }
        out.push(phase(&r.outcome.marks, "ISO read (CD-ROM)", 71, total)?);
    }
    let vio = out.pop().expect("two runs");
    let avio = out.pop().expect("two runs");
    Ok((avio, vio))
}

/// Markdown table of AVIO vs VIO rows and the summary line
/// `AVIO/VIO: bandwidth xMIN, cpu per byte xMAX` (least favourable row of each).
pub fn avio_vio_table(avio: &[Phase], vio: &[Phase]) -> String {
    let mut s = String::from(
        "| phase | AVIO MB/s | VIO MB/s | AVIO/VIO bandwidth | AVIO CPU s/GiB | VIO CPU s/GiB | AVIO/VIO CPU per byte | AVIO exits/MiB | VIO exits/MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let (mut min_bw, mut max_cpu) = (f64::INFINITY, 0f64);
    for (a, v) in avio.iter().zip(vio) {
        let bw = a.mbps() / v.mbps();
        let cpu = a.cpu_per_gib() / v.cpu_per_gib();
        min_bw = min_bw.min(bw);
        max_cpu = max_cpu.max(cpu);
        // Three significant digits at least: VIO rows can be far below 1 MB/s.
        let mb = |x: f64| {
            if x >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.4}")
            }
        };
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.3} | {:.6} | {:.1} | {:.1} |\n",
            a.name,
            mb(a.mbps()),
            mb(v.mbps()),
            bw,
            a.cpu_per_gib(),
            v.cpu_per_gib(),
            cpu,
            a.exits_per_mib(),
            v.exits_per_mib(),
        );
    }
    s += &format!("\nAVIO/VIO: bandwidth x{min_bw:.1}, cpu per byte x{max_cpu:.4}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &'static str, secs: f64, cpu: f64) -> Phase {
        Phase {
            name,
            bytes: 1 << 30,
            secs,
            cpu_secs: cpu,
            user_exits: 10,
            kvm_exits: None,
        }
    }

    #[test]
    fn avio_vio_summary_takes_the_least_favourable_rows() {
        let avio = [p("a", 1.0, 0.5), p("b", 1.0, 0.1)];
        let vio = [p("a", 10.0, 5.0), p("b", 3.0, 0.4)];
        let t = avio_vio_table(&avio, &vio);
        assert!(
            t.trim_end()
                .ends_with("AVIO/VIO: bandwidth x3.0, cpu per byte x0.2500"),
            "{t}"
        );
    }
}
