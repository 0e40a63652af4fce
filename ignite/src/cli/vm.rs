//! `ignite vm`: run the bundled monitor in the foreground; defined guests (`create`, `start`, ...)
//! are in `guests`.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ignite_vmm::{DiskConfig, KernelImage, NetConfig, SerialTarget, StopReason, Vm, VmConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Guest(super::guests::Cmd),
    /// Media in a guest's CD-ROM and tape drives: insert, eject (also while it runs).
    #[command(subcommand)]
    Media(super::media::VmCmd),
    /// Run a VM in the foreground until it powers off, resets or fails.
    Run(RunArgs),
    /// Run every guest test program (one VM each) and print one line per program.
    Selftest {
        /// Directory for scratch disk images.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// virtio-blk sequential throughput from a guest program vs a host process on the same image.
    Bench(BenchArgs),
    /// Time from VM start to the boot marker (init writes 123 to port 0x3f0), Linux guests.
    Boottime {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: Option<PathBuf>,
        #[arg(long, default_value = "console=ttyS0 reboot=k panic=1 quiet")]
        cmdline: String,
        #[arg(long, default_value = "512M", value_parser = ignite_profiles::parse_bytes)]
        mem: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum BenchWhich {
    /// AVIO (virtio-blk, virtio-net) vs VIO (IDE PIO, NE2000) disk I/O on the same image file
    /// and bulk frames both ways on the same tap, from guest programs in one run: MB/s,
    /// monitor CPU per GiB, VM exits per MiB and the ratios. Needs root (the network part
    /// runs in a network namespace of its own).
    AvioVio {
        /// Directory for the benchmark image.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Bytes moved per 1 MiB-transfer phase (VIO writes cost one exit per 16-bit word:
        /// about 20 s per MiB where an exit costs 44 µs).
        #[arg(long, default_value = "2M", value_parser = ignite_profiles::parse_bytes)]
        size_1m: u64,
        /// Bytes moved per 4 KiB-transfer phase.
        #[arg(long, default_value = "512K", value_parser = ignite_profiles::parse_bytes)]
        size_4k: u64,
        /// Bytes AVIO sends and receives per network phase, in 1514-byte frames.
        #[arg(long, default_value = "64M", value_parser = ignite_profiles::parse_bytes)]
        net_size: u64,
        /// Bytes VIO sends and receives per network phase (its sends cost an exit per 32-bit
        /// word: some 20 s per MiB where an exit costs 44 µs).
        #[arg(long, default_value = "1M", value_parser = ignite_profiles::parse_bytes)]
        vio_net_size: u64,
        /// Bytes read per ISO phase (a CD image of this size, read once through each bus).
        #[arg(long, default_value = "16M", value_parser = ignite_profiles::parse_bytes)]
        iso_size: u64,
    },
}

#[derive(Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    which: Option<BenchWhich>,
    /// Directory for the benchmark image (its file system is what is measured).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bytes moved per 1 MiB-request phase.
    #[arg(long, default_value = "512M", value_parser = ignite_profiles::parse_bytes)]
    size_1m: u64,
    /// Bytes moved per 4 KiB-request phase.
    #[arg(long, default_value = "64M", value_parser = ignite_profiles::parse_bytes)]
    size_4k: u64,
    /// Also write the results (with machine and date) to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Parser)]
struct RunArgs {
    /// Kernel: a Linux bzImage or a 64-bit ELF image (e.g. a guest test program).
    #[arg(long, required_unless_present = "boot", conflicts_with = "boot")]
    kernel: Option<PathBuf>,
    /// `net`: the monitor netboots like PXE firmware on the first NIC (DHCP, then TFTP/HTTP
    /// boot file or iPXE script naming kernel, initrd and command line).
    #[arg(long, value_parser = ["net"], conflicts_with = "initrd")]
    boot: Option<String>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    cmdline: String,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, default_value = "512M", value_parser = ignite_profiles::parse_bytes)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Disk image: PATH[,ro][,direct] (repeatable); AVIO virtio-blk, change tracking on writable disks.
    #[arg(long = "disk", value_parser = DiskConfig::parse)]
    disks: Vec<DiskConfig>,
    /// Disk image on the emulated IDE controller (VIO): PATH[,ro][,direct] (repeatable, at most 4).
    #[arg(long = "vio-disk", value_parser = DiskConfig::parse)]
    vio_disks: Vec<DiskConfig>,
    /// NIC: tap=NAME or bridge=BR, optionally ,mac=M (repeatable); AVIO virtio-net.
    #[arg(long = "net")]
    nets: Vec<String>,
    /// NIC on the emulated NE2000 model (VIO): tap=NAME or bridge=BR, optionally ,mac=M (repeatable, at most 4).
    #[arg(long = "vio-net")]
    vio_nets: Vec<String>,
    /// A CD-ROM or tape drive: cd|tape[,vio|avio][,medium=PATH][,ro] (repeatable; CD-ROMs
    /// default to VIO, ATAPI on IDE; tapes are AVIO, virtio-scsi).
    #[arg(long = "drive", value_parser = ignite_vmm::DriveConfig::parse)]
    drives: Vec<ignite_vmm::DriveConfig>,
    /// Serial console: stdio (stdin is forwarded), null, file:PATH or unix:PATH (a socket).
    #[arg(long, default_value = "stdio", value_parser = SerialTarget::parse)]
    serial: SerialTarget,
    /// Stop the VM after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
}

impl Args {
    pub fn run(self) -> anyhow::Result<()> {
        match self.cmd {
            Cmd::Guest(c) => c.run(),
            Cmd::Media(c) => c.run(),
            Cmd::Run(a) => run(a),
            Cmd::Selftest { dir } => selftest(dir),
            Cmd::Bench(a) => bench(a),
            Cmd::Boottime {
                kernel,
                initrd,
                cmdline,
                mem,
                timeout,
            } => boottime(kernel, initrd, cmdline, mem, timeout),
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let kernel = match a.kernel {
        Some(k) if !k.is_file() => bail!(
            "kernel {}: no such file; pass --kernel with a bzImage or ELF image",
            k.display()
        ),
        Some(k) => KernelImage::Path(k),
        None => KernelImage::Net,
    };
    let nets = a
        .nets
        .iter()
        .enumerate()
        .map(|(i, s)| NetConfig::parse(s, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let vio_nets = a
        .vio_nets
        .iter()
        .enumerate()
        .map(|(i, s)| NetConfig::parse(s, nets.len() + i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    if matches!(&kernel, KernelImage::Path(k) if is_linux_kernel(k)) {
        match ignite_vmm::hwcheck::measure() {
            Ok(s) if !s.hardware_assisted() => tracing::warn!("{}", s.describe()),
            Ok(s) => tracing::debug!("{}", s.describe()),
            Err(e) => tracing::warn!("hardware virtualization check failed: {e}"),
        }
    }
    let cfg = VmConfig {
        kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        mem_bytes: a.mem,
        cpus: a.cpus,
        disks: a.disks,
        vio_disks: a.vio_disks,
        vio_nets,
        nets,
        drives: a.drives,
        serial_input: matches!(a.serial, SerialTarget::Stdout),
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

fn scratch_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let d = dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ignite-vm-{}", std::process::id())));
    std::fs::create_dir_all(&d)
        .with_context(|| format!("cannot create scratch directory {}", d.display()))?;
    Ok(d)
}

fn selftest(dir: Option<PathBuf>) -> anyhow::Result<()> {
    use ignite_vmm::selftest::Verdict;
    std::fs::metadata("/dev/kvm")
        .context("/dev/kvm is missing; the selftest needs KVM (load kvm_intel/kvm_amd)")?;
    let d = scratch_dir(dir)?;
    let lines = ignite_vmm::selftest::run(&d);
    let _ = std::fs::remove_dir_all(&d);
    let mut failed = 0;
    for l in &lines {
        let (tag, msg) = match &l.verdict {
            Verdict::Pass(m) => ("PASS", m),
            Verdict::Fail(m) => {
                failed += 1;
                ("FAIL", m)
            }
            Verdict::Skip(m) => ("SKIP", m),
        };
        println!(
            "{tag} {:<10} {:>6.2}s  {msg}",
            l.program,
            l.elapsed.as_secs_f64()
        );
    }
    if failed > 0 {
        bail!("{failed} of {} guest programs failed", lines.len());
    }
    Ok(())
}

fn avio_vio(
    dir: Option<PathBuf>,
    size_1m: u64,
    size_4k: u64,
    net_sizes: (u64, u64),
    iso_size: u64,
) -> anyhow::Result<()> {
    use ignite_vmm::bench;
    if size_1m < 1 << 20
        || size_4k < 4096
        || !size_1m.is_multiple_of(1 << 20)
        || !size_4k.is_multiple_of(4096)
    {
        bail!("--size-1m must be a multiple of 1M and --size-4k a multiple of 4K");
    }
    if iso_size == 0 || !iso_size.is_multiple_of(1 << 20) || iso_size > 4 << 30 {
        bail!("--iso-size must be a multiple of 1M up to 4G (e.g. --iso-size 16M)");
    }
    let (net_size, vio_net_size) = net_sizes;
    if ![net_size, vio_net_size]
        .iter()
        .all(|s| (64 << 10..=4 << 30).contains(s))
    {
        bail!("--net-size and --vio-net-size must be between 64K and 4G (e.g. --net-size 64M)");
    }
    let d = scratch_dir(dir)?;
    let load_before = bench::load_average();
    let (mut avio, mut vio) =
        bench::avio_vio_disk(&d, size_1m, size_4k).context("AVIO vs VIO disk benchmark")?;
    let (iso_avio, iso_vio) =
        bench::avio_vio_iso(&d, iso_size, iso_size).context("AVIO vs VIO ISO read benchmark")?;
    avio.push(iso_avio);
    vio.push(iso_vio);
    let _ = std::fs::remove_dir(&d);
    let (net_avio, net_vio) = ignite_vmm::netbench::avio_vio_net(net_size, vio_net_size)
        .context("AVIO vs VIO network benchmark")?;
    avio.extend(net_avio);
    vio.extend(net_vio);
    println!(
        "date: {}\nmachine: {}\nload average: {load_before} before, {} after\n\
         image: a file in {} ({} KiB per 1 MiB phase, {} KiB per 4 KiB phase), written and synced first; AVIO = virtio-blk (blkbench, \
         8 x 1 MiB / 64 x 4 KiB in flight), VIO = IDE PIO (idebench, one command at a time, \
         READ/WRITE MULTIPLE EXT, 16-sector DRQ blocks); both sleep until their interrupt\n\
         ISO read: a {} KiB CD image read once whole (cdbench; AVIO = virtio-scsi CD-ROM LUN, READ(10) of 1 MiB, \
         4 in flight, VIO = ATAPI CD-ROM on IDE, READ(10) of 64 KiB per PACKET in 32 KiB PIO chunks), \
         every byte checksummed by the guest and checked by the host\n\
         network: {} (AVIO) and {} (VIO) frames of {} bytes each way through one tap to a raw socket on its host side \
         (netbench; AVIO = virtio-net, window {}, VIO = NE2000 remote DMA, window {}); \
         every frame counted and checksummed by its receiver; the peer's CPU time is not counted\n",
        bench::utc_now(),
        bench::machine(),
        bench::load_average(),
        d.display(),
        size_1m >> 10,
        size_4k >> 10,
        iso_size >> 10,
        net_size.div_ceil(ignite_vmm::netbench::FRAME as u64),
        vio_net_size.div_ceil(ignite_vmm::netbench::FRAME as u64),
        ignite_vmm::netbench::FRAME,
        ignite_vmm::netbench::AVIO_FLOW.window,
        ignite_vmm::netbench::VIO_FLOW.window,
    );
    print!("{}", bench::avio_vio_table(&avio, &vio));
    Ok(())
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use ignite_vmm::bench;
    if let Some(BenchWhich::AvioVio {
        dir,
        size_1m,
        size_4k,
        net_size,
        vio_net_size,
        iso_size,
    }) = a.which
    {
        return avio_vio(dir, size_1m, size_4k, (net_size, vio_net_size), iso_size);
    }
    let d = scratch_dir(a.dir)?;
    let speed = ignite_vmm::hwcheck::measure().context("hardware virtualization check")?;
    let load_before = bench::load_average();
    let mut tables = String::new();
    for (irq, title) in [
        (
            true,
            "guest sleeps in HLT until the MSI-X interrupt (a real driver's way)",
        ),
        (false, "guest spins on the used ring (no interrupts)"),
    ] {
        let rows = bench::run(&d, a.size_1m, a.size_4k, irq).context("virtio-blk benchmark")?;
        let table = bench::table(&rows);
        println!("{title}\n{table}");
        if let Some(r) = rows.iter().find(|r| r.guest.name == "disk read 1 MiB") {
            println!(
                "read 1 MiB: guest {:.0} MB/s = {:.0}% of host-direct {:.0} MB/s (goal: at least 70%)\n",
                r.guest.mbps(),
                100.0 * r.guest.mbps() / r.host_mbps(),
                r.host_mbps()
            );
        }
        tables += &format!("### {title}\n\n{table}\n");
    }
    let load = format!("{load_before} before, {} after", bench::load_average());
    println!("hardware check: {}", speed.describe());
    println!("load average: {load}");
    if let Some(out) = a.out {
        let md = format!(
            "# ignite-vmm benchmarks\n\n\
             ## virtio-blk sequential I/O from a guest program at CPL3 vs a host process (`ignite vm bench`)\n\n\
             - date: {}\n- machine: {} (1-minute load average {})\n- KVM: {}\n- image: {} ({} MiB per 1 MiB phase, {} MiB per 4 KiB phase), \
             written in full and synced before the run, page cache warm for guest and host alike; change tracking on (64 KiB)\n\
             - guest: `blkbench`, 8 x 1 MiB or 64 x 4 KiB requests in flight; \
             host-direct: one thread, pread/pwrite of the same sizes over the same number of buffers, same file\n\
             - CPU s/GiB: monitor process user+system time (getrusage) per GiB moved; host: the thread's\n\
             - exits/MiB: every VM exit KVM counted (binary stats), else those reaching the monitor; \
             to monitor/MiB: exits handled in userspace\n\n{}",
            bench::utc_now(),
            bench::machine(),
            load,
            speed.describe(),
            d.display(),
            a.size_1m >> 20,
            a.size_4k >> 20,
            tables
        );
        std::fs::write(&out, md).with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    let _ = std::fs::remove_dir(&d);
    Ok(())
}

fn boottime(
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    mem: u64,
    timeout: u64,
) -> anyhow::Result<()> {
    if !kernel.is_file() {
        bail!(
            "kernel {}: no such file; pass --kernel with a bzImage",
            kernel.display()
        );
    }
    let speed = ignite_vmm::hwcheck::measure().context("hardware virtualization check")?;
    if !speed.hardware_assisted() {
        println!("not measured: {}", speed.describe());
        return Ok(());
    }
    let mut cfg = VmConfig::new(KernelImage::Path(kernel));
    cfg.initrd = initrd;
    cfg.cmdline = cmdline;
    cfg.mem_bytes = mem;
    cfg.serial = SerialTarget::Null;
    let out = Vm::new(&cfg)?.run(Some(Duration::from_secs(timeout)))?;
    match out.marks.iter().find(|m| m.value == 123) {
        Some(m) => {
            println!(
                "boot to init marker: {:.1} ms (VM then stopped: {})",
                m.at.as_secs_f64() * 1e3,
                out.reason
            );
            Ok(())
        }
        None => bail!(
            "no boot marker on port 0x3f0 before the VM stopped ({}); does init write 123 there?",
            out.reason
        ),
    }
}
