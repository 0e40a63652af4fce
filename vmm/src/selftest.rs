//! `ignite vm selftest`: every guest test program, each in its own VM, with the host-side
//! checks that go with it; one line per program.

use crate::change_tracking::ChangeTracker;
use crate::config::{DiskConfig, NetBackend, NetConfig};
use crate::guest::{run_program, ProgramResult, ProgramRun};
use crate::netns::Netns;
use std::path::Path;
use std::time::Duration;

pub enum Verdict {
    Pass(String),
    Fail(String),
    Skip(String),
}

pub struct Line {
    pub program: &'static str,
    pub verdict: Verdict,
    pub elapsed: Duration,
}

fn image(
    dir: &Path,
    name: &str,
    size: usize,
    byte: u8,
) -> std::result::Result<std::path::PathBuf, String> {
    let p = dir.join(name);
    std::fs::write(&p, vec![byte; size]).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

fn disk(p: &Path, ro: bool) -> DiskConfig {
    DiskConfig {
        path: p.to_owned(),
        read_only: ro,
        direct: false,
        track_changes: (!ro).then_some(crate::config::DEFAULT_TRACK_GRANULARITY),
    }
}

fn verdict(
    r: crate::Result<ProgramResult>,
    host_check: impl FnOnce(&ProgramResult) -> Option<String>,
) -> (Verdict, Duration) {
    match r {
        Err(e) => (Verdict::Fail(e.to_string()), Duration::ZERO),
        Ok(r) if !r.passed() => (
            Verdict::Fail(format!("{}: {}", r.outcome.reason, r.last_line())),
            r.outcome.elapsed,
        ),
        Ok(r) => match host_check(&r) {
            Some(why) => (Verdict::Fail(why), r.outcome.elapsed),
            None => {
                let summary = r
                    .serial
                    .lines()
                    .rev()
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                (Verdict::Pass(summary), r.outcome.elapsed)
            }
        },
    }
}

fn one(dir: &Path, program: &'static str) -> std::result::Result<(Verdict, Duration), String> {
    let mut run = ProgramRun::new(program);
    // SAFETY: geteuid has no preconditions.
    if matches!(program, "net" | "ne2k" | "netbench") && unsafe { libc::geteuid() } != 0 {
        return Ok((
            Verdict::Skip("needs root for a network namespace and a tap".into()),
            Duration::ZERO,
        ));
    }
    Ok(match program {
        "hello" | "pci_enum" | "blk" | "dirty" => {
            let a = image(dir, &format!("{program}.img"), 4 << 20, 0)?;
            let ro = image(dir, &format!("{program}-ro.img"), 1 << 20, 0x5a)?;
            match program {
                "pci_enum" => {
                    run.disks = vec![disk(&a, false), disk(&ro, true)];
                    run.args = "expect=1af4:1042,1af4:1042".into();
                }
                "blk" => {
                    run.disks = vec![disk(&a, false), disk(&ro, true)];
                    run.args = format!("sectors={} id={program}.img ro=1", (4 << 20) / 512);
                }
                "dirty" => {
                    run.disks = vec![disk(&a, false)];
                    run.args = "writes=5+1,511+2,2560+128 zero=5120+128".into();
                }
                _ => {}
            }
            verdict(run_program(run), |_| {
                if program != "dirty" {
                    return None;
                }
                let set = ChangeTracker::load(&a).ok()?;
                let marked: Vec<u64> = (0..set.regions()).filter(|&r| set.is_marked(r)).collect();
                (marked != [0, 3, 4, 20, 40]).then(|| {
                    format!("change map marks regions {marked:?}, expected [0, 3, 4, 20, 40]")
                })
            })
        }
        "net" => {
            let ns = Netns::new("selftest")?;
            ns.ip(&["link", "add", "ignbr0", "type", "bridge"])?;
            ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "ignbr0"])?;
            ns.ip(&["link", "set", "ignbr0", "up"])?;
            run.nets = vec![NetConfig {
                backend: NetBackend::Bridge("ignbr0".into()),
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            }];
            run.args = "ip=10.77.0.2 peer=10.77.0.1".into();
            run.timeout = Duration::from_secs(30);
            let r = ns.run(move || run_program(run))?;
            verdict(r, |_| None)
        }
        "ide" => {
            // Two sparse 200 GiB disks on the primary channel: LBA48 above 2^28 sectors.
            let size = 200u64 << 30;
            let mut disks = Vec::new();
            for i in 0..2 {
                let p = dir.join(format!("ide{i}.img"));
                let f = std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                f.set_len(size)
                    .and_then(|_| {
                        std::os::unix::fs::FileExt::write_all_at(
                            &f,
                            format!("VIODISK{i}").as_bytes(),
                            0,
                        )
                    })
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                disks.push(disk(&p, false));
            }
            run.vio_disks = disks;
            run.args = format!("disks=2 sectors={}", size / 512);
            verdict(run_program(run), |_| None)
        }
        "manydisks" => {
            let mut disks = Vec::new();
            for i in 0..128 {
                let p = dir.join(format!("many{i}.img"));
                let mut data = vec![0u8; 4096];
                data[..7].copy_from_slice(format!("MANY{i:03}").as_bytes());
                std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
                disks.push(disk(&p, true));
            }
            run.disks = disks;
            run.mem_bytes = 128 << 20;
            run.args = "disks=128".into();
            verdict(run_program(run), |_| None)
        }
        "ne2k" => {
            let ns = Netns::new("selftest-ne2k")?;
            ns.ip(&["link", "add", "ignbr0", "type", "bridge"])?;
            ns.ip(&["addr", "add", "10.76.0.1/24", "dev", "ignbr0"])?;
            ns.ip(&["link", "set", "ignbr0", "up"])?;
            run.vio_nets = vec![NetConfig {
                backend: NetBackend::Bridge("ignbr0".into()),
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x57],
            }];
            run.args = "ip=10.76.0.2 peer=10.76.0.1 mac=52:54:00:12:34:57".into();
            run.timeout = Duration::from_secs(30);
            let r = ns.run(move || run_program(run))?;
            verdict(r, |_| None)
        }
        "netbench" => {
            // Both NIC models, 64 KiB each way, every frame counted and checksummed.
            let started = std::time::Instant::now();
            match crate::netbench::avio_vio_net(64 << 10, 64 << 10) {
                Ok((avio, _)) => (
                    Verdict::Pass(format!(
                        "virtio-net and NE2000: {} bytes each way, verified",
                        avio[0].bytes
                    )),
                    started.elapsed(),
                ),
                Err(e) => (Verdict::Fail(e.to_string()), started.elapsed()),
            }
        }
        "idebench" => {
            let a = image(dir, "idebench.img", 1 << 20, 0)?;
            run.vio_disks = vec![disk(&a, false)];
            // No 1 MiB phase: VIO writes cost one exit per word (~20 s per MiB on nested KVM).
            run.args = "total1m=0 total4k=8192 wait=irq".into();
            verdict(run_program(run), |r| {
                (r.outcome.marks.len() != 8)
                    .then(|| format!("{} marks, expected 8", r.outcome.marks.len()))
            })
        }
        "blkbench" => {
            let a = image(dir, "bench.img", 8 << 20, 0)?;
            run.disks = vec![disk(&a, false)];
            run.mem_bytes = 128 << 20;
            run.args = "total1m=8M total4k=2M".into();
            verdict(run_program(run), |r| {
                (r.outcome.marks.len() != 8)
                    .then(|| format!("{} marks, expected 8", r.outcome.marks.len()))
            })
        }
        "console" => {
            use std::io::{Read, Write};
            let sock = dir.join("console.sock");
            let mut cfg = crate::VmConfig::new(crate::guest::image("console"));
            cfg.mem_bytes = 64 << 20;
            cfg.cmdline = "expect=hello-guest".into();
            cfg.serial = crate::SerialTarget::Unix(sock.clone());
            let vm = crate::Vm::new(&cfg).map_err(|e| e.to_string())?;
            let runner = std::thread::spawn(move || vm.run(Some(Duration::from_secs(30))));
            let mut conn = std::os::unix::net::UnixStream::connect(&sock)
                .map_err(|e| format!("console socket: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            conn.write_all(b"hello-guest\n")
                .map_err(|e| e.to_string())?;
            let mut seen = String::new();
            let mut buf = [0u8; 256];
            while !seen.contains("PASS") && !seen.contains("FAIL") {
                match conn.read(&mut buf) {
                    Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                    _ => break,
                }
            }
            let out = runner
                .join()
                .map_err(|_| "VM thread panicked".to_string())?
                .map_err(|e| e.to_string())?;
            let r = ProgramResult {
                outcome: out,
                serial: seen.replace('\r', ""),
            };
            verdict(Ok(r), |r| {
                (!r.serial.contains("got: hello-guest"))
                    .then(|| "input did not arrive over the socket".into())
            })
        }
        // Bounded here; the capture tests run it without end while they capture.
        "scribble" => {
            let a = image(dir, "scribble.img", 1 << 20, 0)?;
            run.disks = vec![disk(&a, false)];
            run.args = "sectors=64 steps=3000".into();
            verdict(run_program(run), |_| {
                let data = std::fs::read(&a).ok()?;
                let at =
                    |s: usize| u64::from_le_bytes(data[s * 512..s * 512 + 8].try_into().unwrap());
                let (first, middle, last) = (at(0), at(1 + 3000 % 62), at(63));
                (first != 3000 || middle != 3000 || last != 3000).then(|| {
                    format!(
                        "sectors 0, middle, 63 hold steps {first}, {middle}, {last}; expected 3000"
                    )
                })
            })
        }
        "atapi" | "vscsi" => {
            let iso = dir.join(format!("{program}.iso"));
            let read = crate::guest::write_test_iso(&iso, 64, 9)
                .map_err(|e| format!("{}: {e}", iso.display()))?;
            let medium = |path, read_only| Some(crate::scsi::MediumConfig { path, read_only });
            let drive = |kind, bus, medium| crate::config::DriveConfig { kind, bus, medium };
            use crate::config::{DriveKind, MediaBus};
            let want = if program == "atapi" {
                run.drives = vec![drive(DriveKind::Cdrom, MediaBus::Vio, medium(iso, true))];
                format!("atapi: {read}")
            } else {
                let tape = image(dir, "vscsi.tap", 0, 0)?;
                run.drives = vec![
                    drive(DriveKind::Cdrom, MediaBus::Avio, medium(iso, true)),
                    drive(DriveKind::Tape, MediaBus::Avio, medium(tape, false)),
                ];
                run.mem_bytes = 128 << 20;
                format!("vscsi: cd {read}")
            };
            verdict(run_program(run), |r| {
                (!r.serial.contains(&want)).then(|| format!("no {want:?}: the data read differs"))
            })
        }
        "cdbench" => {
            // Both buses, 2 MiB each, every byte checksummed.
            let started = std::time::Instant::now();
            match crate::bench::avio_vio_iso(dir, 2 << 20, 2 << 20) {
                Ok((avio, vio)) => (
                    Verdict::Pass(format!(
                        "virtio-scsi and ATAPI: {} bytes each, verified ({:.1} and {:.0} exits per MiB)",
                        avio.bytes,
                        avio.exits_per_mib(),
                        vio.exits_per_mib()
                    )),
                    started.elapsed(),
                ),
                Err(e) => (Verdict::Fail(e.to_string()), started.elapsed()),
            }
        }
        // Booted directly here; the network boot tests serve it over DHCP/TFTP/HTTP.
        "netbooted" => {
            run.args = "from=selftest".into();
            verdict(run_program(run), |r| {
                (!r.serial.contains("cmdline: mem=") || !r.serial.contains("initrd: none"))
                    .then(|| "did not report its command line and no initrd".to_string())
            })
        }
        other => (
            Verdict::Skip(format!("no selftest scenario for {other}")),
            Duration::ZERO,
        ),
    })
}

/// Runs every guest program; `dir` holds scratch disk images.
pub fn run(dir: &Path) -> Vec<Line> {
    crate::guest::PROGRAMS
        .iter()
        .map(|(program, _)| {
            let (verdict, elapsed) =
                one(dir, program).unwrap_or_else(|e| (Verdict::Fail(e), Duration::ZERO));
            Line {
                program,
                verdict,
                elapsed,
            }
        })
        .collect()
}
