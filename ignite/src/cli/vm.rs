//! `ignite vm`: run the bundled monitor in the foreground.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ignite_vmm::{
    config, DiskConfig, KernelImage, NetConfig, SerialTarget, StopReason, Vm, VmConfig,
};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a VM in the foreground until it powers off, resets or fails.
    Run(RunArgs),
}

#[derive(Parser)]
struct RunArgs {
    /// Kernel: a Linux bzImage or a 64-bit ELF image (e.g. a guest test program).
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    cmdline: String,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, default_value = "512M", value_parser = config::parse_size)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Disk image: PATH or PATH,ro (repeatable); AVIO virtio-blk.
    #[arg(long = "disk", value_parser = DiskConfig::parse)]
    disks: Vec<DiskConfig>,
    /// NIC: tap=NAME or bridge=BR, optionally ,mac=M (repeatable); AVIO virtio-net.
    #[arg(long = "net")]
    nets: Vec<String>,
    /// Serial console: stdio, null or file:PATH.
    #[arg(long, default_value = "stdio", value_parser = SerialTarget::parse)]
    serial: SerialTarget,
    /// Stop the VM after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
}

impl Args {
    pub fn run(self) -> anyhow::Result<()> {
        match self.cmd {
            Cmd::Run(a) => run(a),
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    if !a.kernel.is_file() {
        bail!(
            "kernel {}: no such file; pass --kernel with a bzImage or ELF image",
            a.kernel.display()
        );
    }
    let nets = a
        .nets
        .iter()
        .enumerate()
        .map(|(i, s)| NetConfig::parse(s, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    if is_linux_kernel(&a.kernel) {
        match ignite_vmm::hwcheck::measure() {
            Ok(s) if !s.hardware_assisted() => tracing::warn!("{}", s.describe()),
            Ok(s) => tracing::debug!("{}", s.describe()),
            Err(e) => tracing::warn!("hardware virtualization check failed: {e}"),
        }
    }
    let cfg = VmConfig {
        kernel: KernelImage::Path(a.kernel),
        initrd: a.initrd,
        cmdline: a.cmdline,
        mem_bytes: a.mem,
        cpus: a.cpus,
        disks: a.disks,
        nets,
        serial: a.serial,
    };
    let vm = Vm::new(&cfg)?;
    let out = vm
        .run(a.timeout.map(Duration::from_secs))
        .context("running the VM")?;
    eprintln!(
        "ignite: VM stopped after {:.2}s: {}",
        out.elapsed.as_secs_f64(),
        out.reason
    );
    match out.reason {
        StopReason::TestExit(0) | StopReason::Reset | StopReason::PowerOff => Ok(()),
        r => bail!("{r}"),
    }
}

/// A bzImage (not an ELF guest program): the hardware check matters only for a general OS.
fn is_linux_kernel(p: &std::path::Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic != *b"\x7fELF"
}
