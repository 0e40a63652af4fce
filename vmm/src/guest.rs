//! The guest test programs (vmm/guest), built by build.rs and embedded in the monitor so that
//! `ignite vm selftest` needs no files beside the binary.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// ELF image of the guest program `name`.
pub fn program(name: &str) -> Option<&'static [u8]> {
    PROGRAMS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
}

/// A kernel image for `name`; panics only for names not built (a programming error).
pub fn image(name: &str) -> crate::KernelImage {
    crate::KernelImage::Bytes {
        name: format!("guest program {name}"),
        data: program(name)
            .unwrap_or_else(|| panic!("no guest program {name:?} in vmm/guest/src/bin")),
    }
}

use crate::config::{DiskConfig, DriveConfig, NetConfig, SerialTarget, SharedBuffer, VmConfig};
use crate::devices::StopReason;
use crate::vm::{RunOutcome, Vm};
use std::time::Duration;

/// One run of a guest test program.
pub struct ProgramRun {
    pub name: &'static str,
    /// Test parameters for the program (`key=value` words).
    pub args: String,
    pub mem_bytes: u64,
    pub cpus: u8,
    pub disks: Vec<DiskConfig>,
    /// Disks on the IDE controller (VIO).
    pub vio_disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    /// NE2000 NICs (VIO).
    pub vio_nets: Vec<NetConfig>,
    /// CD-ROM and tape drives.
    pub drives: Vec<DriveConfig>,
    pub timeout: Duration,
}

impl ProgramRun {
    pub fn new(name: &'static str) -> ProgramRun {
        ProgramRun {
            name,
            args: String::new(),
            mem_bytes: 64 << 20,
            cpus: 1,
            disks: Vec::new(),
            vio_disks: Vec::new(),
            nets: Vec::new(),
            vio_nets: Vec::new(),
            drives: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

pub struct ProgramResult {
    pub outcome: RunOutcome,
    pub serial: String,
}

impl ProgramResult {
    pub fn passed(&self) -> bool {
        self.outcome.reason == StopReason::TestExit(0)
    }
    /// The last line the program printed (its verdict, or what it was doing).
    pub fn last_line(&self) -> &str {
        self.serial
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    }
}

/// Boots guest program `run.name` and waits for its verdict on the test port.
pub fn run_program(run: ProgramRun) -> crate::Result<ProgramResult> {
    let buf = SharedBuffer::default();
    let mut cfg = VmConfig::new(image(run.name));
    cfg.cmdline = format!("mem={} {}", run.mem_bytes, run.args);
    cfg.mem_bytes = run.mem_bytes;
    cfg.cpus = run.cpus;
    cfg.disks = run.disks;
    cfg.vio_disks = run.vio_disks;
    cfg.nets = run.nets;
    cfg.vio_nets = run.vio_nets;
    cfg.drives = run.drives;
    cfg.serial = SerialTarget::Buffer(buf.clone());
    let vm = Vm::new(&cfg)?;
    let outcome = vm.run(Some(run.timeout))?;
    Ok(ProgramResult {
        outcome,
        serial: buf.contents().replace('\r', ""),
    })
}

/// FNV-1a (32-bit) offset basis: the hash of nothing.
pub const FNV1A_START: u32 = 0x811c_9dc5;

/// FNV-1a (32-bit) of `data` continuing from `h`: what the guest programs print over the data
/// they read, for the host to compare.
pub fn fnv1a(h: u32, data: &[u8]) -> u32 {
    data.iter()
        .fold(h, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// The line the `netbooted` program prints for an initrd of these bytes.
pub fn netbooted_initrd_line(data: &[u8]) -> String {
    let h = fnv1a(FNV1A_START, data);
    format!("initrd: {} bytes fnv1a {h:08x}", data.len())
}

/// Writes a CD image of `blocks` 2048-byte blocks, each different (its LBA and `seed` mixed
/// in), for the CD-ROM programs; returns the line `atapi` prints after reading it whole.
pub fn write_test_iso(path: &std::path::Path, blocks: u32, seed: u8) -> std::io::Result<String> {
    let mut data = vec![0u8; blocks as usize * 2048];
    for (i, b) in data.iter_mut().enumerate() {
        *b = ((i / 2048) as u8).wrapping_mul(31) ^ (i as u8) ^ seed;
    }
    std::fs::write(path, &data)?;
    Ok(format!(
        "{blocks} blocks fnv1a {:08x}",
        fnv1a(FNV1A_START, &data)
    ))
}
